//! Revocation at the edges: a device revoked while it is pushing, as a stolen phone that keeps
//! syncing would be (issue 10, finding 1), and recovery after a linked device revoked the one
//! that created the account (finding 2). Real relay on loopback, real clients.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kith_client::net::RelayTarget;
use kith_client::{ClientError, ContactFields, Device};
use kith_e2e::names;
use kith_relay::{Relay, RelayConfig, RelayHandle};
use tempfile::TempDir;

struct World {
    dir: TempDir,
    relay: RelayHandle,
}

impl World {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = RelayConfig::for_tests(dir.path().join("relay"));
        // Every round links three devices, each taking its pairing slot from this address.
        config.bounds.lookups_per_minute = 10_000;
        let relay = Relay::start(config).await.unwrap();
        Self { dir, relay }
    }

    fn target(&self) -> RelayTarget {
        RelayTarget::pinned(
            self.relay.local_addr().to_string(),
            &hex::encode(self.relay.cert_sha256()),
        )
        .unwrap()
    }

    fn home(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    async fn first_device(&self, name: &str) -> Device {
        self.first_device_and_recovery_key(name).await.0
    }

    async fn first_device_and_recovery_key(&self, name: &str) -> (Device, String) {
        let (device, key) = Device::create(&self.home(name), self.target(), name, None)
            .await
            .unwrap();
        (device, key.0.to_string())
    }

    async fn link(&self, approver: &Device, name: &str) -> Device {
        kith_e2e::link(approver, &self.home(name), self.target(), name).await
    }
}

fn person(name: &str) -> ContactFields {
    ContactFields {
        name: Some(name.into()),
        ..Default::default()
    }
}

/// Adds a contact and syncs, again and again, until the device learns it was revoked or
/// `stop` is set. Returns the contacts the relay acknowledged. Transient errors (a relay asking
/// it to wait) are retried, anything else fails the test.
async fn push_until_revoked(device: Device, stop: Arc<AtomicBool>) -> Vec<String> {
    let mut written = Vec::new();
    let mut acknowledged = 0;
    for i in 0.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let name = format!("{} {i:04}", device.device_name());
        device.add_contact(&person(&name)).await.unwrap();
        written.push(name);
        match device.sync_once().await {
            // Everything written so far was pushed and acknowledged.
            Ok(_) => acknowledged = written.len(),
            Err(ClientError::Revoked) => break,
            Err(e) if e.is_transient() => tokio::time::sleep(Duration::from_millis(5)).await,
            Err(e) => panic!("the pushing device failed with {e}"),
        }
    }
    written.truncate(acknowledged);
    written
}

/// A device pushing in a loop is revoked by another, at a different moment in each round.
/// Afterwards the revoker, the other remaining device and a device linked after the
/// revocation all sync cleanly and agree on every contact, and none of them holds a contact
/// the revoked device wrote after its removal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_device_while_it_pushes_leaves_every_other_device_syncing() {
    const ROUNDS: u64 = 12;
    let world = World::new().await;
    for round in 0..ROUNDS {
        let a = world.first_device(&format!("a{round}")).await;
        a.add_contact(&person("Ada Lovelace")).await.unwrap();
        a.sync().await.unwrap();
        let b = world.link(&a, &format!("b{round}")).await;
        let c = world.link(&a, &format!("c{round}")).await;
        let stop = Arc::new(AtomicBool::new(false));
        let pusher = tokio::spawn(push_until_revoked(b.clone(), stop.clone()));
        // A different moment in every round: from right away to well into b's pushing.
        tokio::time::sleep(Duration::from_millis(round * 17 % 90)).await;
        let revoked = a.revoke(&b.device_id()).await;
        stop.store(true, Ordering::Relaxed);
        let acknowledged = pusher.await.unwrap();
        revoked.unwrap_or_else(|e| panic!("round {round}: revoking failed: {e}"));

        // An honest relay withholds nothing: no device reports envelopes another one vouched
        // for as missing, whatever moment b was revoked at (§4, "What each writer states").
        for (name, device) in [("a", &a), ("c", &c)] {
            let report = device
                .sync()
                .await
                .unwrap_or_else(|e| panic!("round {round}: {name} cannot sync: {e}"));
            assert!(
                report.withheld.is_empty(),
                "round {round}: {name}: {report:?}"
            );
        }
        let d = world.link(&a, &format!("d{round}")).await;
        for (name, device) in [("a", &a), ("c", &c), ("d", &d)] {
            let report = device
                .sync()
                .await
                .unwrap_or_else(|e| panic!("round {round}: {name} cannot sync: {e}"));
            assert!(
                report.withheld.is_empty(),
                "round {round}: {name}: {report:?}"
            );
        }
        let on_a = names(&a);
        assert_eq!(names(&c), on_a, "round {round}: c and a disagree");
        assert_eq!(names(&d), on_a, "round {round}: d and a disagree");
        // Whatever the relay acknowledged to b before its removal is kept: b's stream ends
        // at final_seq, and final_seq is never below an acknowledged push.
        let lost: Vec<&String> = acknowledged.iter().filter(|n| !on_a.contains(n)).collect();
        assert!(
            lost.is_empty(),
            "round {round}: acknowledged, then lost: {lost:?}"
        );
        let b_merged = on_a.iter().filter(|n| n.starts_with('b')).count();
        eprintln!(
            "round {round}: {} contacts of b acknowledged, {b_merged} merged",
            acknowledged.len()
        );
    }
}

/// The phone that created the account is stolen; the laptop linked to it revokes it, and later
/// every device is lost. The recovery key, shown once on the phone, still restores everything,
/// including what the laptop wrote after the revocation: the laptop re-sealed the recovery
/// bundle under the new account key and epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_after_a_linked_device_revoked_the_first_one_restores_everything() {
    let world = World::new().await;
    let (phone, recovery_key) = world.first_device_and_recovery_key("phone").await;
    phone.add_contact(&person("Ada Lovelace")).await.unwrap();
    phone.sync().await.unwrap();
    let laptop = world.link(&phone, "laptop").await;
    laptop.add_contact(&person("Grace Hopper")).await.unwrap();
    laptop.sync().await.unwrap();
    laptop.revoke(&phone.device_id()).await.unwrap();
    laptop
        .add_contact(&person("After the theft"))
        .await
        .unwrap();
    laptop.sync().await.unwrap();
    let expected = ["Ada Lovelace", "After the theft", "Grace Hopper"];
    assert_eq!(names(&laptop), expected);

    let restored = Device::recover(
        &world.home("restored"),
        world.target(),
        &recovery_key,
        "restored",
    )
    .await
    .unwrap_or_else(|e| panic!("recovery after the revocation failed: {e}"));
    assert_eq!(names(&restored), expected);
    // The restored device is a full member next to the laptop.
    restored.add_contact(&person("Restored")).await.unwrap();
    restored.sync().await.unwrap();
    laptop.sync().await.unwrap();
    assert_eq!(names(&laptop), names(&restored));
}
