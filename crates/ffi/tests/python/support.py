"""What the tests of the kith bindings share: a real kith-relay process on loopback and an
in-memory key store standing in for the platform keychain."""

import os
import subprocess
import threading

import kith


class MemoryKeyStorage(kith.KeyStorage):
    """The app's keychain, in memory: the one place the device secrets may be."""

    def __init__(self):
        self.blob = None
        self.saves = 0

    def load(self):
        return self.blob

    def save(self, secrets):
        self.blob = bytes(secrets)
        self.saves += 1


class RelayProcess:
    """`kith-relay serve` on 127.0.0.1, as an operator runs it; its address and certificate
    pin are read from what it prints at start-up."""

    def __init__(self, data_dir, listen="127.0.0.1:0"):
        binary = os.environ["KITH_RELAY_BIN"]
        self.process = subprocess.Popen(
            [binary, "serve", "--listen", listen, "--data", data_dir],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=dict(os.environ, RUST_LOG="warn"),
            text=True,
        )
        announced = threading.Event()
        found = {}

        def drain():
            # The relay's output is read until it exits: a relay printing to a closed pipe fails.
            for line in self.process.stdout:
                if "listening on " in line:
                    found["address"] = line.split("listening on ", 1)[1].split()[0]
                if "certificate sha256 " in line:
                    found["pin"] = line.split("certificate sha256 ", 1)[1].split()[0]
                if "address" in found and "pin" in found:
                    announced.set()

        self.drain = threading.Thread(target=drain, daemon=True)
        self.drain.start()
        if not announced.wait(60):
            self.stop()
            raise RuntimeError("kith-relay did not announce its address and certificate")
        self.address = found["address"]
        self.pin = found["pin"]

    def config(self):
        return kith.RelayConfig(address=self.address, cert_sha256=self.pin)

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.drain.join(10)
        self.process.stdout.close()


def files_under(directory):
    """Every regular file under `directory` (not sockets such as a relay's control socket)."""
    for root, _dirs, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            if os.path.isfile(path):
                yield path


def secret_parts(blob):
    """The 32-byte secrets of a device's key blob (signing key, agreement key, store secret),
    whatever the blob's framing."""
    assert blob is not None and len(blob) >= 96, "the key store holds no device secrets"
    body = blob[-96:]
    return [body[i : i + 32] for i in (0, 32, 64)]
