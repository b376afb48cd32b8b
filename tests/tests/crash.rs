//! Nothing is lost on a crash, and nothing is pushed twice.

use kith_client::net::{RelayConnection, RelayTarget};
use kith_client::{ContactFields, Device};
use kith_protocol::proto::{self, request, response};
use kith_relay::{Relay, RelayConfig};

fn person(name: &str) -> ContactFields {
    ContactFields {
        name: Some(name.into()),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_made_while_the_relay_is_down_survive_a_restart_of_the_device() {
    let dir = tempfile::tempdir().unwrap();
    let relay_dir = dir.path().join("relay");
    let relay = Relay::start(RelayConfig::for_tests(&relay_dir))
        .await
        .unwrap();
    let addr = relay.local_addr();
    let target = RelayTarget::pinned(addr.to_string(), &hex::encode(relay.cert_sha256())).unwrap();
    let home = dir.path().join("a");
    let (a, _) = Device::create(&home, target.clone(), "a", None)
        .await
        .unwrap();
    relay.shutdown().await.unwrap();

    for i in 0..5 {
        a.add_contact(&person(&format!("Offline {i}")))
            .await
            .unwrap();
    }
    assert!(a.sync_once().await.is_err(), "no relay: sync fails");
    // The process "crashes": the device is dropped without any further call.
    drop(a);

    let mut config = RelayConfig::for_tests(&relay_dir);
    config.listen = addr;
    let relay = Relay::start(config).await.unwrap();
    let a = Device::open(&home).unwrap();
    assert_eq!(a.contacts().unwrap().len(), 5, "local edits survived");
    a.sync().await.unwrap();

    let b = kith_e2e::link(&a, &dir.path().join("b"), target, "b").await;
    assert_eq!(b.contacts().unwrap().len(), 5);
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_whose_acknowledgement_was_lost_is_retried_and_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(RelayConfig::for_tests(dir.path().join("relay")))
        .await
        .unwrap();
    let target = RelayTarget::pinned(
        relay.local_addr().to_string(),
        &hex::encode(relay.cert_sha256()),
    )
    .unwrap();
    let home = dir.path().join("a");
    let (a, _) = Device::create(&home, target.clone(), "a", None)
        .await
        .unwrap();
    for i in 0..3 {
        a.add_contact(&person(&format!("Person {i}")))
            .await
            .unwrap();
    }
    // Seal and push on a connection of our own, then "crash" before the client records the
    // acknowledgement: the relay has the envelopes, the client's outbox still holds them.
    let envelopes = a.seal_pending_for_tests().unwrap();
    assert_eq!(envelopes.len(), 1);
    let account = a.account_id();
    drop(a);
    let a = Device::open(&home).unwrap();
    let secrets = kith_client::keystore::KeyStore::load(&kith_client::keystore::FileKeyStore::new(
        home.join("device.key"),
    ))
    .unwrap()
    .unwrap();
    let raw = RelayConnection::connect(&target).await.unwrap();
    raw.authenticate(&account, &secrets.signing_key)
        .await
        .unwrap();
    let ack = raw
        .request(request::Kind::Push(proto::Push {
            envelopes: envelopes.clone(),
        }))
        .await
        .unwrap();
    assert!(matches!(
        ack,
        response::Kind::PushAck(proto::PushAck { last_seq: 1 })
    ));

    // The device retries the same envelope: acknowledged again, stored once.
    let report = a.sync().await.unwrap();
    assert_eq!(report.pushed, 1);
    let usage = a.usage().await.unwrap();
    assert_eq!(usage.envelopes, 1, "stored exactly once");
    // And a second sync pushes nothing.
    assert_eq!(a.sync().await.unwrap().pushed, 0);
    relay.shutdown().await.unwrap();
}
