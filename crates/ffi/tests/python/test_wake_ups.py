"""Wake-up notifications through the generated Python bindings: a real kith-relay process
configured with a push gateway (`KITH_RELAY_PUSH_GATEWAY`, as an operator sets it) that is a
small HTTP server in this test. A device registers an opaque token; when the other device
pushes, the gateway receives a POST whose body is the token and nothing else; after
unregistering, no more. A relay without a gateway refuses registration as `Unsupported`.

Run by `cargo test -p kith-ffi --test bindings`."""

import asyncio
import base64
import json
import os
import unittest

import kith
from support import MemoryKeyStorage, PushGateway, RelayProcess, RelayTestCase, link

# Bounds on waits (a busy machine), never expectations of speed.
WAIT = 30
# The relay's interval between two wake-ups of one device (seconds).
INTERVAL = 1


class WakeUps(RelayTestCase):
    def relay_settings(self):
        # The gateway is set up before the relay: the operator's settings name its URL.
        self.gateway = PushGateway()
        self.addCleanup(self.gateway.stop)
        return {
            "KITH_RELAY_PUSH_GATEWAY": self.gateway.url,
            "KITH_RELAY_PUSH_INTERVAL_SECS": str(INTERVAL),
        }

    async def wait_for_gateway(self, timeout):
        """The gateway's next request, waited for off the event loop."""
        return await asyncio.to_thread(self.gateway.next, timeout)

    async def edit_and_push(self, device, name):
        await device.add_contact(kith.ContactInput(name=name))
        self.assertGreaterEqual((await device.sync()).pushed, 1)

    async def test_a_push_wakes_the_other_device_with_its_token_alone(self):
        a = (await kith.create_account(self.home("a"), self.config, "a", None, MemoryKeyStorage())).device
        b = await link(a, self.home("b"), self.config, "b", MemoryKeyStorage())
        self.addAsyncCleanup(a.close)
        self.addAsyncCleanup(b.close)
        # Opaque bytes, as a gateway's encrypted token is (not text, not base64).
        token_a = bytes([0, 255]) + b"sealed-for-the-gateway-" + os.urandom(16)
        token_b = b"token of b"
        await a.register_push_target(token_a)
        await b.register_push_target(token_b)

        await self.edit_and_push(b, "Ada Lovelace")
        request = await self.wait_for_gateway(WAIT)
        self.assertIsNotNone(request, "the gateway was not called after b pushed")
        method, path, headers, body = request
        self.assertEqual((method, path), ("POST", "/_kith/wake"))
        self.assertIn("application/json", headers.lower())
        # The body is the token of the device to wake and nothing else.
        self.assertEqual(json.loads(body), {"token": base64.b64encode(token_a).decode()})
        # No id of the account or its devices, in hex or base64, in the body or the headers.
        everything = headers + body.decode()
        for hex_id in (a.account_id(), a.device_id(), b.device_id()):
            self.assertNotIn(hex_id[:8], everything.lower())
            self.assertNotIn(base64.b64encode(bytes.fromhex(hex_id))[:8].decode(), everything)

        # A unregisters: b's pushes wake it no more. a's push then wakes b (the control: the
        # gateway path still works), and nothing for a arrives, however long we wait for it.
        await a.unregister_push_target()
        await self.edit_and_push(b, "Grace Hopper")
        await self.edit_and_push(a, "Alan Turing")
        seen = []
        while True:
            request = await self.wait_for_gateway(WAIT)
            self.assertIsNotNone(request, "the control wake-up of b never came")
            seen.append(json.loads(request[3])["token"])
            if seen[-1] == base64.b64encode(token_b).decode():
                break
        seen += [json.loads(r[3])["token"] for r in await asyncio.to_thread(self.gateway.drain, INTERVAL + 3)]
        self.assertNotIn(base64.b64encode(token_a).decode(), seen, "a was woken after unregistering")

    async def test_a_relay_without_a_gateway_refuses_registration_as_unsupported(self):
        plain = RelayProcess(os.path.join(self.work, "plain-relay"))
        self.addCleanup(plain.stop)
        a = (await kith.create_account(self.home("a"), plain.config(), "a", None, MemoryKeyStorage())).device
        self.addAsyncCleanup(a.close)
        with self.assertRaises(kith.KithError.Relay) as caught:
            await a.register_push_target(b"token")
        self.assertEqual(caught.exception.code, "Unsupported")
        self.assertFalse(caught.exception.transient)
        self.assertIn("push gateway", caught.exception.reason)
        # The token's bounds are checked before anything is sent.
        for token in (b"", bytes(1025)):
            with self.assertRaises(kith.KithError.InvalidInput):
                await a.register_push_target(token)
        self.assertIsNone(self.gateway.next(0))


if __name__ == "__main__":
    unittest.main()
