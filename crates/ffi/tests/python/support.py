"""What the tests of the kith bindings share: a real kith-relay process on loopback, an
in-memory key store standing in for the platform keychain, and a stand-in push gateway."""

import asyncio
import http.server
import json
import os
import queue
import subprocess
import tempfile
import threading
import time
import unittest

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

    def __init__(self, data_dir, listen="127.0.0.1:0", settings=None):
        """`settings`: more `KITH_RELAY_*` environment variables, as an operator sets them
        (`{"KITH_RELAY_PUSH_GATEWAY": url}` …)."""
        self.binary = os.environ["KITH_RELAY_BIN"]
        self.data_dir = data_dir
        self.process = subprocess.Popen(
            [self.binary, "serve", "--listen", listen, "--data", data_dir],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=dict(os.environ, RUST_LOG="warn", **(settings or {})),
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

    def admin(self, *args):
        """`kith-relay admin ARGS --json` against this running relay, as its operator runs
        it (through the control socket in its data directory); the parsed answer."""
        output = subprocess.run(
            [self.binary, "admin", *args, "--json", "--data", self.data_dir],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if output.returncode != 0:
            raise RuntimeError(f"kith-relay admin {' '.join(args)} failed: {output.stderr}")
        return json.loads(output.stdout)

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.drain.join(10)
        self.process.stdout.close()


class RelayTestCase(unittest.IsolatedAsyncioTestCase):
    """A test with its own temporary directory and a kith-relay process serving from it
    (`self.relay`, `self.config`); `relay_settings()` gives the relay's extra environment."""

    def relay_settings(self):
        return None

    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.work = self.dir.name
        self.relay = RelayProcess(os.path.join(self.work, "relay"), settings=self.relay_settings())
        self.config = self.relay.config()

    def tearDown(self):
        self.relay.stop()
        self.dir.cleanup()

    def home(self, name):
        return os.path.join(self.work, name)


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


class PushGateway:
    """A stand-in push gateway (crates/ffi/README.md, "Wake-up notifications"): an HTTP
    server on 127.0.0.1 that records every request the relay makes and answers 200."""

    def __init__(self):
        received = queue.Queue()
        self.received = received

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                received.put((self.command, self.path, str(self.headers), body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        host, port = self.server.server_address[:2]
        self.url = f"http://{host}:{port}/_kith/wake"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def next(self, timeout):
        """The next request (method, path, headers, body); None if none came in `timeout` s."""
        try:
            return self.received.get(timeout=timeout)
        except queue.Empty:
            return None

    def drain(self, timeout):
        """Every request that arrives within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        out = []
        while (left := deadline - time.monotonic()) > 0:
            request = self.next(left)
            if request is not None:
                out.append(request)
        return out

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


async def link(approver, home, relay, name, keystore, wait=60):
    """A new device in `home` joins `approver`'s account: it shows its link code, the approver
    approves it (as a person scanning the QR code would), and it completes."""
    request = await kith.LinkRequest.start(home, relay, name, keystore)
    device, _approval = await asyncio.wait_for(
        asyncio.gather(request.complete(wait), approver.approve_link(request.code())), wait * 2
    )
    return device
