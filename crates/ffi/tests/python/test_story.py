"""The whole story of an app, driven through the generated Python bindings against a real
kith-relay process on loopback: two devices, link, sync, watch, edit, conflict, import,
revoke, recover, errors, and that no secret reaches the home directories when the keys live
in the app's key storage.

Run by `cargo test -p kith-ffi --test bindings` (crates/ffi/tests/bindings.rs), which
generates the `kith` module and sets KITH_RELAY_BIN."""

import asyncio
import contextlib
import io
import os
import threading
import unittest

import kith
import example
from support import MemoryKeyStorage, RelayTestCase, files_under, secret_parts

# Realistic waits: a sync over loopback takes well under a second; these bound a hang.
WAIT = 60

VCARD = (
    "BEGIN:VCARD\r\nVERSION:3.0\r\nFN:Grace Hopper\r\nEMAIL:grace@example.org\r\n"
    "ORG:Navy\r\nEND:VCARD\r\n"
    "BEGIN:VCARD\r\nVERSION:3.0\r\nFN:Alan Turing\r\nTEL:+44 20 7946 0000\r\nEND:VCARD\r\n"
)


class Recorder(kith.ChangeListener):
    """A watch listener that records what it hears, from the bindings' threads."""

    def __init__(self):
        self.changed = set()
        self.syncs = 0
        self.stopped = []
        self.lock = threading.Condition()

    def on_sync(self, result):
        with self.lock:
            self.syncs += 1
            self.changed.update(result.changed)
            self.lock.notify_all()

    def on_stopped(self, error):
        with self.lock:
            self.stopped.append(error)
            self.lock.notify_all()

    async def wait_for(self, predicate):
        def check():
            with self.lock:
                return self.lock.wait_for(lambda: predicate(self), WAIT)

        ok = await asyncio.get_running_loop().run_in_executor(None, check)
        if not ok:
            raise AssertionError("the watch listener did not hear the change in time")


class Story(RelayTestCase):
    def assert_no_secret_in(self, home, storage):
        """The device's secrets are in `storage` only: no key file, and no file under the home
        holds any of the secret keys' bytes."""
        self.assertFalse(os.path.exists(os.path.join(home, "device.key")))
        parts = secret_parts(storage.blob)
        for path in files_under(home):
            with open(path, "rb") as f:
                data = f.read()
            for part in parts:
                self.assertNotIn(part, data, f"a device secret is written in {path}")

    async def test_the_whole_story(self):
        keys_a, keys_b, keys_c = MemoryKeyStorage(), MemoryKeyStorage(), MemoryKeyStorage()

        # Device A creates the account; the secrets go to the app's key storage, once.
        created = await kith.create_account(self.home("a"), self.config, "phone", None, keys_a)
        a = created.device
        recovery_key = created.recovery_key
        self.assertTrue(recovery_key.strip())
        self.assertEqual(keys_a.saves, 1)
        self.assertNotIn(recovery_key, repr(created))
        info = a.account_info()
        self.assertEqual(info.device_name, "phone")
        self.assertEqual([d.this_device for d in info.devices], [True])

        ada = await a.add_contact(
            kith.ContactInput(name="Ada Lovelace", email="ada@example.org", phone="+44 20 7946 0958")
        )
        self.assertEqual(a.contact(ada[:8]).emails[0].address, "ada@example.org")
        self.assertEqual(a.contact(ada).phones[0].number, "+442079460958")
        report = await a.sync()
        self.assertGreaterEqual(report.pushed, 1)

        # Device B links: it shows its code, A approves it, B joins and syncs.
        request = await kith.LinkRequest.start(self.home("b"), self.config, "laptop", keys_b)
        code = request.code()
        self.assertTrue(code)
        b, approval = await asyncio.wait_for(
            asyncio.gather(request.complete(WAIT), a.approve_link(code)), WAIT * 2
        )
        self.assertEqual(approval.device_id, b.device_id())
        self.assertEqual(b.account_id(), a.account_id())
        self.assertEqual([c.name for c in b.contacts()], ["Ada Lovelace"])
        with self.assertRaises(kith.KithError.Usage):
            await request.complete(1)
        await a.sync()
        self.assertEqual(len(a.devices()), 2)

        # B watches; A's edit reaches it through the relay's notification.
        recorder = Recorder()
        watcher = b.watch(recorder)
        # Stopped whatever happens: a listener called while the interpreter exits would crash it.
        self.addAsyncCleanup(watcher.stop)
        await recorder.wait_for(lambda r: r.syncs >= 1)
        self.assertTrue(
            await a.edit_contact(ada, kith.ContactInput(company="Analytical Engines"), kith.ContactRemovals())
        )
        await a.sync()
        await recorder.wait_for(lambda r: ada in r.changed)
        self.assertEqual(b.contact(ada).company, "Analytical Engines")
        await watcher.stop()
        self.assertEqual(recorder.stopped, [None])

        # A conflict: both devices set the note before either syncs.
        await a.edit_contact(ada, kith.ContactInput(note="met at the Royal Society"), kith.ContactRemovals())
        await b.edit_contact(ada, kith.ContactInput(note="wrote the first program"), kith.ContactRemovals())
        await a.sync()
        await b.sync()
        await a.sync()
        for device in (a, b):
            conflicts = [c for c in device.conflicts() if c.contact_id == ada]
            self.assertEqual([c.field for c in conflicts], ["note"])
            self.assertEqual(
                {conflicts[0].winner, conflicts[0].other},
                {"met at the Royal Society", "wrote the first program"},
            )
        await b.resolve_conflict(ada, "note", "wrote the first program")
        await b.sync()
        await a.sync()
        for device in (a, b):
            self.assertEqual(device.conflicts(), [])
            self.assertEqual(device.contact(ada).note, "wrote the first program")

        # Clearing and removing.
        self.assertTrue(
            await a.edit_contact(
                ada,
                kith.ContactInput(),
                kith.ContactRemovals(clear=[kith.ClearableField.COMPANY], phones=["+44 20 7946 0958"]),
            )
        )
        self.assertIsNone(a.contact(ada).company)
        self.assertEqual(a.contact(ada).phones, [])
        self.assertFalse(
            await a.edit_contact(ada, kith.ContactInput(name="Ada Lovelace"), kith.ContactRemovals())
        )

        # Imports, from bytes and from a file path; searching what they brought.
        imported = await a.import_bytes(kith.ImportKind.VCARD, VCARD.encode(), [])
        self.assertEqual((imported.found, imported.added), (2, 2))
        path = os.path.join(self.work, "contacts.vcf")
        with open(path, "w") as f:
            f.write(VCARD)
        again = await a.import_file(kith.ImportKind.VCARD, path, [], None)
        self.assertEqual((again.added, again.unchanged), (0, 2))
        grace = a.search("grace")
        self.assertEqual([c.name for c in grace], ["Grace Hopper"])
        self.assertEqual(grace[0].sources, ["vcard"])
        self.assertEqual([c.name for c in a.search("7946 0000")], ["Alan Turing"])
        await a.delete_contact(grace[0].id)
        await a.sync()
        await b.sync()
        self.assertEqual(sorted(c.name for c in b.contacts()), ["Ada Lovelace", "Alan Turing"])

        # A revokes B: B's next sync fails as revoked, with the CLI's message and hint.
        epoch = a.account_info().epoch
        await a.revoke_device(b.device_id()[:8])
        self.assertEqual(a.account_info().epoch, epoch + 1)
        with self.assertRaises(kith.KithError.Revoked) as caught:
            await b.sync()
        self.assertEqual(
            caught.exception.reason,
            "this device was removed from the account; it can no longer read or write",
        )
        self.assertIn("kith device request", caught.exception.hint)
        # A relaunched app (a new connection) is refused at authentication, and remembers it.
        await b.close()
        with self.assertRaises(kith.KithError.Revoked):
            await b.sync()
        self.assertTrue(b.account_info().revoked)
        after = await a.add_contact(kith.ContactInput(name="Written after the revocation"))
        await a.sync()

        # Every device lost: C recovers the account from the recovery key.
        c = await kith.recover_account(self.home("c"), self.config, recovery_key, "new phone", keys_c)
        self.assertEqual(c.account_id(), a.account_id())
        names = sorted(x.name for x in c.contacts())
        self.assertEqual(names, ["Ada Lovelace", "Alan Turing", "Written after the revocation"])
        self.assertEqual(c.contact(ada).note, "wrote the first program")
        self.assertEqual(c.contact(after).name, "Written after the revocation")
        self.assertEqual(len(c.devices()), 2)  # A and C; B was removed

        # Reopening a device from its key storage, as an app does at every launch.
        reopened = kith.open_device(self.home("c"), keys_c)
        self.assertEqual(reopened.device_id(), c.device_id())
        self.assertEqual(len(reopened.contacts()), 3)

        # Compaction and the relay's figures.
        compacted = await a.compact()
        self.assertGreaterEqual(compacted.snapshot_envelopes, 1)
        usage = await a.relay_usage()
        self.assertEqual(usage.devices, 2)

        # No secret in any home, nor anywhere else the test wrote to (the relay's data
        # included): the keys live only in the app's key storage; without it the home cannot
        # be opened.
        for home, keys in (("a", keys_a), ("b", keys_b), ("c", keys_c)):
            self.assert_no_secret_in(self.home(home), keys)
            self.assert_no_secret_in(self.work, keys)
            with self.assertRaises(kith.KithError.NotInitialized):
                kith.open_device(self.home(home), None)

        # Deleting the account: the relay forgets it, so no device can sync any more.
        await a.delete_account()
        with self.assertRaises(kith.KithError):
            await c.sync()
        for device in (a, b, c, reopened):
            await device.close()

    async def test_errors_have_the_cli_categories_and_messages(self):
        with self.assertRaises(kith.KithError.Usage) as caught:
            await kith.create_account(
                self.home("x"), kith.RelayConfig(address="no-port", cert_sha256=self.relay.pin), "x", None, None
            )
        self.assertIn("--relay must be HOST:PORT", caught.exception.reason)
        with self.assertRaises(kith.KithError.Usage):
            await kith.create_account(
                self.home("x"), kith.RelayConfig(address=self.relay.address, cert_sha256="abc"), "x", None, None
            )
        with self.assertRaises(kith.KithError.NotInitialized) as caught:
            kith.open_device(self.home("nothing"), MemoryKeyStorage())
        self.assertIn("no Kith device in", caught.exception.reason)

        keys = MemoryKeyStorage()
        created = await kith.create_account(self.home("a"), self.config, "a", None, keys)
        device = created.device
        with self.assertRaises(kith.KithError.AlreadyInitialized):
            await kith.create_account(self.home("a"), self.config, "a", None, keys)
        with self.assertRaises(kith.KithError.UnknownContact) as caught:
            device.contact("abcd")
        self.assertIn("kith contacts list", caught.exception.hint)
        with self.assertRaises(kith.KithError.InvalidInput):
            device.contact("not an id")
        with self.assertRaises(kith.KithError.Usage):
            await device.add_contact(kith.ContactInput(email="nameless@example.org"))
        with self.assertRaises(kith.KithError.Usage):
            await device.import_bytes(kith.ImportKind.MAIL, b"", [])
        with self.assertRaises(kith.KithError.Import):
            await device.import_file(kith.ImportKind.VCARD, self.home("missing.vcf"), [], None)
        with self.assertRaises(kith.KithError.UnknownDevice):
            await device.revoke_device(device.device_id())
        with self.assertRaises(kith.KithError.Recovery):
            await kith.recover_account(
                self.home("r"), self.config, created.recovery_key[:-4] + "aaaa", "r", None
            )

        # A relay that is gone: a network error, marked transient, with the CLI's hint.
        self.relay.stop()
        with self.assertRaises(kith.KithError.Network) as caught:
            await device.sync()
        self.assertTrue(caught.exception.transient)
        self.assertIn("kith-relay is running", caught.exception.hint)
        await device.close()

    async def test_a_key_storage_failure_is_a_key_store_error(self):
        class Broken(kith.KeyStorage):
            def load(self):
                raise kith.KithError.KeyStore("the keychain is locked", None)

            def save(self, secrets):
                raise kith.KithError.KeyStore("the keychain is locked", None)

        with self.assertRaises(kith.KithError.KeyStore) as caught:
            kith.open_device(self.home("a"), Broken())
        self.assertIn("the keychain is locked", caught.exception.reason)
        # Saving fails after the relay accepted the account: nothing is left in the home.
        with self.assertRaises(kith.KithError.KeyStore):

            class SaveFails(Broken):
                def load(self):
                    return None

            await kith.create_account(self.home("b"), self.config, "b", None, SaveFails())
        self.assertFalse(os.path.exists(self.home("b")))

    async def test_the_readme_example_runs(self):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            company = await example.main(self.config, self.work)
        self.assertEqual(company, "Analytical Engines")
        self.assertIn("linked", out.getvalue())


if __name__ == "__main__":
    unittest.main()
