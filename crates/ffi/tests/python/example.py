"""The main flow of an app, through the Python bindings (crates/ffi/README.md shows this file;
test_story.py runs it against a real relay)."""

import asyncio
import os

import kith


class Keychain(kith.KeyStorage):
    """Stands in for the platform keychain: one opaque blob per device."""

    def __init__(self):
        self.blob = None

    def load(self):
        return self.blob

    def save(self, secrets):
        self.blob = bytes(secrets)


class Printer(kith.ChangeListener):
    def __init__(self):
        self.changed = asyncio.Queue()
        self.loop = asyncio.get_running_loop()

    def on_sync(self, result):
        # Called on a thread of the bindings: hand over to the app's loop.
        for contact_id in result.changed:
            self.loop.call_soon_threadsafe(self.changed.put_nowait, contact_id)

    def on_stopped(self, error):
        if error is not None:
            print("watch stopped:", error)


async def main(relay: kith.RelayConfig, workdir: str) -> str:
    # The phone creates the account; the recovery key is shown once, never stored.
    phone = await kith.create_account(
        os.path.join(workdir, "phone"), relay, "phone", None, Keychain()
    )
    print("write this down:", phone.recovery_key)
    phone = phone.device
    ada = await phone.add_contact(
        kith.ContactInput(name="Ada Lovelace", email="ada@example.org")
    )
    await phone.sync()

    # The laptop asks to join; the phone approves the code (shown as a QR code in an app).
    request = await kith.LinkRequest.start(
        os.path.join(workdir, "laptop"), relay, "laptop", Keychain()
    )
    laptop, approval = await asyncio.gather(
        request.complete(60), phone.approve_link(request.code())
    )
    print("linked", approval.device_id, [c.name for c in laptop.contacts()])

    # The laptop watches; an edit on the phone reaches it without polling.
    printer = Printer()
    watcher = laptop.watch(printer)
    try:
        await phone.edit_contact(
            ada, kith.ContactInput(company="Analytical Engines"), kith.ContactRemovals()
        )
        await phone.sync()
        while await asyncio.wait_for(printer.changed.get(), 60) != ada:
            pass
    finally:
        await watcher.stop()
    company = laptop.contact(ada).company
    print("the laptop sees", company)
    return company


if __name__ == "__main__":
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as workdir:
        address, pin = sys.argv[1], sys.argv[2]
        asyncio.run(main(kith.RelayConfig(address=address, cert_sha256=pin), workdir))
