//! The relay is killed with SIGKILL in the middle of a sync and restarted on the same data:
//! nothing a device wrote is lost, nothing is stored twice, and a device linked afterwards
//! receives every contact; the running device learns of the restart at once, from a stateless
//! reset. (tests/tests/trust.rs stops the relay gracefully instead.)
//!
//! The relay runs in a child process so that it can be killed for real: this test binary
//! starts itself again, running only the ignored helper [`relay_process`].

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kith_client::net::NetError;
use kith_client::net::RelayTarget;
use kith_client::store::TreeName;
use kith_client::{ClientError, Device};
use kith_relay::{Relay, RelayConfig};

const DIR_VAR: &str = "KITH_E2E_RELAY_DIR";
const LISTEN_VAR: &str = "KITH_E2E_RELAY_LISTEN";

/// Not a test of its own: the relay process of the test below, which starts this binary with
/// `--ignored --exact relay_process` and [`DIR_VAR`] set. Without it, it does nothing.
#[test]
#[ignore = "helper process of killing_the_relay_in_the_middle_of_a_sync_loses_nothing"]
fn relay_process() {
    let Ok(dir) = std::env::var(DIR_VAR) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut config = RelayConfig::for_tests(&dir);
        if let Ok(listen) = std::env::var(LISTEN_VAR) {
            config.listen = listen.parse().unwrap();
        }
        let relay = Relay::start(config).await.unwrap();
        println!(
            "relay-ready {} {}",
            relay.local_addr(),
            hex::encode(relay.cert_sha256())
        );
        std::future::pending::<()>().await;
    });
}

/// A relay in a child process.
struct RelayChild {
    child: Child,
    addr: SocketAddr,
    pin: String,
}

impl RelayChild {
    /// Starts a relay on `dir`, on `listen` if given (retrying while the port is still taken
    /// by a process being reaped).
    fn start(dir: &Path, listen: Option<SocketAddr>) -> RelayChild {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut command = Command::new(std::env::current_exe().unwrap());
            command
                .args(["relay_process", "--exact", "--ignored", "--nocapture"])
                .args(["--test-threads", "1"])
                .env(DIR_VAR, dir)
                .stdout(Stdio::piped())
                .stderr(Stdio::null());
            if let Some(listen) = listen {
                command.env(LISTEN_VAR, listen.to_string());
            }
            let mut child = command.spawn().unwrap();
            let stdout = child.stdout.take().unwrap();
            // The first line that announces the relay (after libtest's "test relay_process
            // ... " on the same line), or None if the process ends first.
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

    fn target(&self) -> RelayTarget {
        RelayTarget::pinned(self.addr.to_string(), &self.pin).unwrap()
    }

    /// SIGKILL: no flush, no graceful close.
    fn kill_9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for RelayChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn outbox_len(device: &Device) -> usize {
    device.store().len(TreeName::Outbox).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_relay_in_the_middle_of_a_sync_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let relay_dir = dir.path().join("relay");
    let relay = RelayChild::start(&relay_dir, None);
    let (addr, target) = (relay.addr, relay.target());
    let (a, _) = Device::create(&dir.path().join("a"), target.clone(), "a", None)
        .await
        .unwrap();
    // 30 envelopes of 1,000 contacts: about six pushes of 2 MiB.
    let csv = kith_client::import::testing::generate_linkedin_csv(30_600);
    let report =
        kith_client::import::linkedin::import_bytes(csv.as_bytes(), &Default::default()).unwrap();
    let contacts = report.contacts.len();
    a.import(report).await.unwrap();
    let sealed = a.seal_pending_for_tests().unwrap().len();
    assert!(sealed >= 20, "{sealed} envelopes");

    // Kill the relay as soon as it has acknowledged the first push, while the rest are still
    // in the outbox.
    let syncing = tokio::spawn({
        let a = a.clone();
        async move { a.sync_once().await }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    while outbox_len(&a) == sealed {
        assert!(Instant::now() < deadline, "no push was acknowledged");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    relay.kill_9();
    let left = outbox_len(&a);
    assert!(left > 0, "the kill landed after the last push");

    // Restarted on the same data and address, the relay answers the interrupted connection
    // with a stateless reset (its reset key is kept in its data directory), so the device's
    // sync fails at once as a lost connection instead of waiting out its idle timeout.
    let relay = RelayChild::start(&relay_dir, Some(addr));
    let interrupted = syncing.await.unwrap();
    match &interrupted {
        Err(ClientError::Net(NetError::Connection(why))) if why.contains("reset") => {}
        other => panic!("expected a connection reset by the restarted relay, got {other:?}"),
    }
    assert!(interrupted.unwrap_err().is_transient());

    // The same device goes on: the relay holds what it acknowledged, and the device pushes
    // the rest from its outbox, identical retransmits included.
    let report = a.sync().await.unwrap();
    assert!(report.pushed >= left, "{report:?}");
    assert_eq!(outbox_len(&a), 0);
    let usage = a.usage().await.unwrap();
    assert_eq!(
        usage.envelopes, sealed as u64,
        "every envelope stored exactly once"
    );

    // A device linked now receives every contact, through chain-verified streams.
    let b = kith_e2e::link(&a, &dir.path().join("b"), target, "b").await;
    assert_eq!(b.contacts().unwrap().len(), contacts);
    assert_eq!(a.contacts().unwrap().len(), contacts);
    relay.kill_9();

    // And the in-process relay reads the same data after the kills.
    let relay = Relay::start(RelayConfig::for_tests(&relay_dir))
        .await
        .unwrap();
    relay.shutdown().await.unwrap();
}
