"""Merging by hand through the generated Python bindings, against a real kith-relay process:
duplicate suggestions for people the automatic rule cannot merge (same name, name variants),
merge and unmerge reaching the other device by sync, the records a merged contact holds, and
the errors in the CLI's categories (`kith contacts merge / unmerge / duplicates`).

Run by `cargo test -p kith-ffi --test bindings`."""

import unittest

import kith
from support import MemoryKeyStorage, RelayTestCase, link


class Merging(RelayTestCase):
    async def test_suggest_merge_and_unmerge_on_two_devices(self):
        a = (await kith.create_account(self.home("a"), self.config, "a", None, MemoryKeyStorage())).device
        b = await link(a, self.home("b"), self.config, "b", MemoryKeyStorage())
        self.addAsyncCleanup(a.close)
        self.addAsyncCleanup(b.close)

        # Two records of Bob (no shared e-mail or phone), two of Ada (same name, other case).
        bob = await a.add_contact(kith.ContactInput(name="Bob Smith", email="bob@example.org"))
        robert = await a.add_contact(kith.ContactInput(name="Robert Smith", phone="+44 20 7946 0001"))
        ada = await a.add_contact(kith.ContactInput(name="Ada Lovelace"))
        ada2 = await a.add_contact(kith.ContactInput(name="ada  lovelace", company="Analytical Engines"))
        grace = await a.add_contact(kith.ContactInput(name="Grace Hopper"))
        self.assertEqual(len(a.contacts()), 5)

        suggestions = a.duplicate_suggestions()
        by_ids = {frozenset(c.id for c in s.contacts): s for s in suggestions}
        self.assertEqual(set(by_ids), {frozenset([bob, robert]), frozenset([ada, ada2])})
        variants = by_ids[frozenset([bob, robert])]
        self.assertIn("name variants (bob / robert)", variants.reason)
        self.assertEqual(
            {(c.id, c.name) for c in variants.contacts},
            {(bob, "Bob Smith"), (robert, "Robert Smith")},
        )
        self.assertTrue(by_ids[frozenset([ada, ada2])].reason.startswith("same name"))
        self.assertTrue(all(grace not in ids for ids in by_ids))

        # Merge Bob's records, by a prefix and a full id, as `kith contacts merge` takes them.
        survivor = await a.merge_contacts([bob[:8], robert])
        self.assertIn(survivor, (bob, robert))
        merged = a.contact(survivor)
        self.assertEqual([e.address for e in merged.emails], ["bob@example.org"])
        self.assertEqual([p.number for p in merged.phones], ["+442079460001"])
        self.assertEqual(a.merged_records(survivor), sorted([bob, robert]))
        self.assertEqual(a.merged_records(grace), [grace])
        self.assertEqual(len(a.contacts()), 4)
        self.assertEqual(
            [frozenset(c.id for c in s.contacts) for s in a.duplicate_suggestions()],
            [frozenset([ada, ada2])],
        )

        # The merge reaches the other device.
        await a.sync()
        await b.sync()
        self.assertEqual(len(b.contacts()), 4)
        self.assertEqual(b.merged_records(survivor), sorted([bob, robert]))

        # B separates Robert's record again; both devices show two people, and the pair is
        # no longer suggested (a person said they are two).
        separated = await b.unmerge_contact(robert)
        self.assertEqual(separated.separated, robert)
        self.assertEqual(separated.rest, bob)
        await b.sync()
        await a.sync()
        for device in (a, b):
            self.assertEqual(device.contact(bob).emails[0].address, "bob@example.org")
            self.assertEqual(device.contact(robert).phones[0].number, "+442079460001")
            self.assertEqual(device.merged_records(bob), [bob])
            self.assertEqual(len(device.contacts()), 5)
            self.assertEqual(
                [frozenset(c.id for c in s.contacts) for s in device.duplicate_suggestions()],
                [frozenset([ada, ada2])],
            )

        # A suggestion taken: both of Ada's records are one contact.
        survivor = await a.merge_contacts([ada, ada2])
        self.assertEqual(a.contact(survivor).company, "Analytical Engines")
        self.assertEqual(a.duplicate_suggestions(), [])

    async def test_merge_errors_have_the_cli_categories_and_messages(self):
        a = (await kith.create_account(self.home("a"), self.config, "a", None, MemoryKeyStorage())).device
        self.addAsyncCleanup(a.close)
        one = await a.add_contact(kith.ContactInput(name="One"))
        two = await a.add_contact(kith.ContactInput(name="Two"))

        # Fewer than two ids cannot mean anything: a usage error, as the CLI's.
        with self.assertRaises(kith.KithError.Usage):
            await a.merge_contacts([one])
        with self.assertRaises(kith.KithError.Usage):
            await a.merge_contacts([])
        # The same contact twice: the client's message, as `kith contacts merge` prints it.
        with self.assertRaises(kith.KithError.InvalidInput) as caught:
            await a.merge_contacts([one, one[:6]])
        self.assertEqual(
            caught.exception.reason,
            "give at least two different contacts to merge (these are already one)",
        )
        # An unknown id, with the CLI's hint.
        unknown = "f" * len(one)  # a whole id: no prefix lookup that could match by chance
        with self.assertRaises(kith.KithError.UnknownContact) as caught:
            await a.merge_contacts([one, unknown])
        self.assertIn("kith contacts list", caught.exception.hint)
        with self.assertRaises(kith.KithError.InvalidInput) as caught:
            await a.merge_contacts([one, "not an id"])
        self.assertIn("is not a contact id", caught.exception.reason)
        # Unmerging what is not merged.
        with self.assertRaises(kith.KithError.InvalidInput) as caught:
            await a.unmerge_contact(one)
        self.assertEqual(caught.exception.reason, f"contact {one} is not merged with another")
        with self.assertRaises(kith.KithError.UnknownContact):
            a.merged_records(unknown)
        # Nothing of it changed the contacts.
        self.assertEqual(sorted(c.id for c in a.contacts()), sorted([one, two]))


if __name__ == "__main__":
    unittest.main()
