"""The relay's view of the account through the generated Python bindings (what `kith account
info` shows), against a real kith-relay process whose operator sets quotas and suspends the
account with `kith-relay admin`.

Run by `cargo test -p kith-ffi --test bindings`."""

import datetime
import unittest

import kith
from support import MemoryKeyStorage, RelayTestCase, link


class RelayAccount(RelayTestCase):
    async def test_usage_quotas_streams_and_suspension(self):
        a = (await kith.create_account(self.home("a"), self.config, "a", None, MemoryKeyStorage())).device
        b = await link(a, self.home("b"), self.config, "b", MemoryKeyStorage())
        self.addAsyncCleanup(a.close)
        self.addAsyncCleanup(b.close)
        for name in ("Ada Lovelace", "Grace Hopper", "Alan Turing"):
            await a.add_contact(kith.ContactInput(name=name))
        await a.sync()
        await b.add_contact(kith.ContactInput(name="Written on b"))
        await b.sync()

        info = await a.relay_account_info()
        self.assertEqual(info.relay_address, self.relay.address)
        self.assertEqual((info.devices, info.bytes_quota_set, info.devices_max_set), (2, False, False))
        self.assertGreater(info.bytes_used, 0)
        self.assertGreater(info.bytes_quota, info.bytes_used)
        self.assertGreaterEqual(info.devices_max, 2)
        self.assertGreaterEqual(info.roster_version, 2)  # the link added a device
        self.assertLessEqual(info.sealed_key_bytes, info.bytes_used)
        # Both devices were active today (UTC; yesterday's date if the test ran over midnight).
        today = datetime.datetime.now(datetime.timezone.utc).date()
        self.assertIn(info.last_active_day, {today.isoformat(), (today - datetime.timedelta(days=1)).isoformat()})
        # One stream per device, holding what each pushed.
        streams = {s.device_id: s for s in info.streams}
        self.assertEqual(set(streams), {a.device_id(), b.device_id()})
        self.assertTrue(all(s.last_seq >= 1 and s.bytes > 0 for s in info.streams))
        self.assertEqual(sum(s.envelopes for s in info.streams), info.envelopes)
        self.assertLessEqual(sum(s.bytes for s in info.streams), info.bytes_used)
        # Both devices see the same account; the usage figures are relay_usage's.
        self.assertEqual((await b.relay_account_info()).streams, info.streams)
        usage = await a.relay_usage()
        self.assertEqual(
            (usage.bytes_used, usage.bytes_quota, usage.devices, usage.devices_max, usage.envelopes),
            (info.bytes_used, info.bytes_quota, info.devices, info.devices_max, info.envelopes),
        )

        # A push from a grows its stream and the account's figures, and nothing else.
        await a.add_contact(kith.ContactInput(name="Katherine Johnson"))
        await a.sync()
        after = await a.relay_account_info()
        grown = {s.device_id: s for s in after.streams}
        self.assertGreater(grown[a.device_id()].last_seq, streams[a.device_id()].last_seq)
        self.assertEqual(grown[b.device_id()], streams[b.device_id()])
        self.assertGreater(after.envelopes, info.envelopes)
        self.assertGreater(after.bytes_used, info.bytes_used)

        # The operator sets this account's quotas: the devices learn them, marked as set.
        account = a.account_id()
        self.relay.admin("accounts", "quota", account, "--bytes", "5000000", "--devices", "3")
        info = await a.relay_account_info()
        self.assertEqual((info.bytes_quota, info.bytes_quota_set), (5000000, True))
        self.assertEqual((info.devices_max, info.devices_max_set), (3, True))

        # A suspended account cannot ask: a Relay error with the CLI's message and hint.
        self.relay.admin("accounts", "suspend", account)
        with self.assertRaises(kith.KithError.Relay) as caught:
            await a.relay_account_info()
        self.assertEqual(caught.exception.code, "AccountSuspended")
        self.assertFalse(caught.exception.transient)
        self.assertIn("suspended this account", caught.exception.hint)
        self.relay.admin("accounts", "unsuspend", account)
        self.assertEqual((await a.relay_account_info()).bytes_quota, 5000000)

        # The local view is separate and needs no relay.
        local = a.account_info()
        self.assertEqual((local.account_id, local.device_id), (account, a.device_id()))
        self.relay.stop()
        self.assertEqual(len(a.account_info().devices), 2)
        with self.assertRaises(kith.KithError.Network):
            await a.relay_account_info()


if __name__ == "__main__":
    unittest.main()
