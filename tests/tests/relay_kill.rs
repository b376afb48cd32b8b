//! The relay is killed with SIGKILL in the middle of a sync and restarted on the same data:
//! nothing a device wrote is lost, nothing is stored twice, and a device linked afterwards
//! receives every contact; the running device learns of the restart at once, from a stateless
//! reset. (tests/tests/trust.rs stops the relay gracefully instead.)
//!
//! The relay runs in a child process so that it can be killed for real: this test binary
//! starts itself again, running only the ignored helper [`relay_process`].

use std::time::{Duration, Instant};

use kith_client::net::NetError;
use kith_client::{ClientError, Device};
use kith_e2e::relay_child::RelayChild;
use kith_relay::{Relay, RelayConfig};

/// Not a test of its own: the relay process of the test below (see [`RelayChild`]).
#[test]
#[ignore = "helper process of killing_the_relay_in_the_middle_of_a_sync_loses_nothing"]
fn relay_process() {
    kith_e2e::relay_child::serve_if_asked();
}

/// Envelopes sealed and not acknowledged yet (acknowledged ones stay in the outbox, kept).
fn outbox_len(device: &Device) -> usize {
    device.unsent_for_tests().unwrap()
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
    // Pushes are pipelined: acknowledgements that arrived before the kill may still have been
    // taken by the interrupted sync after `left` was read.
    let left = outbox_len(&a);

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
