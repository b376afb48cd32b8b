//! End-to-end tests live in `tests/tests/`; this library holds what several of them share.

use std::path::Path;
use std::time::Duration;

use kith_client::net::RelayTarget;
use kith_client::{Device, PendingLink};

/// Links a new device at `home` to `approver`'s account, the two sides run concurrently as
/// on two machines: the new device shows its code and waits, the approver approves it.
/// Waits up to 60 s for the approval and the first pull. Panics if either side fails.
pub async fn link(approver: &Device, home: &Path, relay: RelayTarget, name: &str) -> Device {
    let pending = PendingLink::new(home, relay, name).unwrap();
    let code = pending.code().to_string();
    let (linked, approved) = tokio::join!(
        pending.complete(Duration::from_secs(60)),
        approver.approve_link(&code)
    );
    approved.unwrap();
    linked.unwrap()
}

/// A stranger at `relay`'s door: a connection that tried to authenticate as a device of
/// `account` with a key of its own, and was refused. The connection stays open (unauthenticated)
/// for the caller's next attempts; the key names the device the stranger claimed to be.
pub async fn failed_authentication(
    relay: &kith_relay::RelayHandle,
    account: &kith_protocol::ids::AccountId,
) -> (
    kith_relay::client::RelayClient,
    kith_protocol::keys::DeviceSigningKey,
) {
    let stranger =
        kith_relay::client::RelayClient::connect(relay.local_addr(), relay.cert_sha256())
            .await
            .unwrap();
    let key =
        kith_protocol::keys::DeviceSigningKey::generate(&mut kith_protocol::keys::system_rng());
    assert!(stranger.authenticate(&key, account).await.is_err());
    (stranger, key)
}

/// A relay in a child process, so that a test can kill it for real (`SIGKILL`) and start it
/// again on the same address and data, as an operator's restart or a crash does.
///
/// The child is the test binary itself, running only its ignored test `relay_process`, whose
/// body is [`relay_child::serve_if_asked`]: every test binary that uses [`relay_child::RelayChild`]
/// declares that test.
pub mod relay_child {
    use std::io::{BufRead, BufReader};
    use std::net::SocketAddr;
    use std::path::Path;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use kith_client::net::RelayTarget;
    use kith_relay::{Relay, RelayConfig};

    const DIR_VAR: &str = "KITH_E2E_RELAY_DIR";
    const LISTEN_VAR: &str = "KITH_E2E_RELAY_LISTEN";

    /// The body of a test binary's ignored `relay_process` test: serves a relay on the data
    /// directory the parent named, until killed. Without that, it does nothing.
    pub fn serve_if_asked() {
        let Ok(dir) = std::env::var(DIR_VAR) else {
            return;
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let mut config = RelayConfig::for_tests(&dir);
            if let Ok(listen) = std::env::var(LISTEN_VAR) {
                config.listen = listen.parse().expect("listen address");
            }
            let relay = Relay::start(config).await.expect("relay starts");
            println!(
                "relay-ready {} {}",
                relay.local_addr(),
                // The key pin: what devices keep (an older whole-certificate pin is replaced
                // by it after the first authenticated connection, docs/PROTOCOL.md §12).
                hex::encode(relay.key_sha256())
            );
            std::future::pending::<()>().await;
        });
    }

    /// A relay in a child process; killed on drop.
    #[derive(Debug)]
    pub struct RelayChild {
        child: Child,
        /// Where it listens.
        pub addr: SocketAddr,
        /// The hex SHA-256 of its certificate.
        pub pin: String,
    }

    impl RelayChild {
        /// Starts a relay on `dir`, on `listen` if given (retrying while the port is still
        /// taken by a process being reaped).
        pub fn start(dir: &Path, listen: Option<SocketAddr>) -> RelayChild {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let mut command = Command::new(std::env::current_exe().expect("test binary"));
                command
                    .args(["relay_process", "--exact", "--ignored", "--nocapture"])
                    .args(["--test-threads", "1"])
                    .env(DIR_VAR, dir)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null());
                if let Some(listen) = listen {
                    command.env(LISTEN_VAR, listen.to_string());
                }
                let mut child = command.spawn().expect("spawn the relay process");
                let stdout = child.stdout.take().expect("stdout");
                // The first line that announces the relay (after libtest's "test
                // relay_process ... " on the same line), or None if the process ends first.
                let ready = BufReader::new(stdout)
                    .lines()
                    .map_while(Result::ok)
                    .find_map(|line| {
                        let (_, rest) = line.split_once("relay-ready ")?;
                        let (addr, pin) = rest.split_once(' ')?;
                        Some((addr.parse().ok()?, pin.to_owned()))
                    });
                match ready {
                    Some((addr, pin)) => return RelayChild { child, addr, pin },
                    None => {
                        let _ = child.kill();
                        let _ = child.wait();
                        assert!(Instant::now() < deadline, "the relay process did not start");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        }

        /// The relay as a client pins it.
        pub fn target(&self) -> RelayTarget {
            RelayTarget::pinned(self.addr.to_string(), &self.pin).expect("pin")
        }

        /// SIGKILL: no flush, no graceful close.
        pub fn kill_9(mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    impl Drop for RelayChild {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The names of the device's contacts, sorted: what a person sees in the list.
pub fn names(device: &Device) -> Vec<String> {
    let mut names: Vec<String> = device
        .contacts()
        .unwrap()
        .iter()
        .filter_map(|c| c.name().map(str::to_string))
        .collect();
    names.sort();
    names
}
