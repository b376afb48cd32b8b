//! The relay's log at `info` (its default level) holds no account id, device id or client
//! source address (docs/PROTOCOL.md §11): an end-to-end run through every kind of account event
//! (create, link, sync, revoke, a revoked device's refused sync, a failed authentication), then
//! a search of everything the relay logged for every id, in full and by its first four bytes.
//!
//! Its own test binary: the log is captured by a process-wide subscriber.

use std::io::Write;
use std::sync::{Arc, Mutex};

use kith_client::net::RelayTarget;
use kith_client::{ClientError, ContactFields, Device};
use kith_relay::{Relay, RelayConfig};

/// Everything the relay logs, formatted as `kith-relay serve` formats it.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn person(name: &str, email: &str) -> ContactFields {
    ContactFields {
        name: Some(name.into()),
        email: Some(email.into()),
        ..ContactFields::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relays_info_log_names_no_account_device_or_source_address() {
    let log = Captured::default();
    let writer = log.clone();
    // The relay's log as `kith-relay serve` writes it by default (level `info`, every target),
    // without the clients' own log, which runs in this process too.
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let relay_only = tracing_subscriber::filter::Targets::new()
        .with_default(tracing::Level::INFO)
        .with_target("kith_client", tracing::level_filters::LevelFilter::OFF);
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(move || writer.clone()),
        )
        .with(relay_only)
        .init();

    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(RelayConfig::for_tests(dir.path().join("relay")))
        .await
        .unwrap();
    let target = || {
        RelayTarget::pinned(
            relay.local_addr().to_string(),
            &hex::encode(relay.cert_sha256()),
        )
        .unwrap()
    };
    let (a, _) = Device::create(&dir.path().join("a"), target(), "a", None)
        .await
        .unwrap();
    a.add_contact(&person("Ada Lovelace", "ada@example.com"))
        .await
        .unwrap();
    a.sync().await.unwrap();
    let b = kith_e2e::link(&a, &dir.path().join("b"), target(), "b").await;
    let c = kith_e2e::link(&a, &dir.path().join("c"), target(), "c").await;
    b.add_contact(&person("Grace Hopper", "grace@example.com"))
        .await
        .unwrap();
    b.sync().await.unwrap();
    a.revoke(&c.device_id()).await.unwrap();
    a.sync().await.unwrap();
    // The revoked device is refused (logged at info, with its error code).
    c.add_contact(&person("Mallory", "mallory@example.com"))
        .await
        .unwrap();
    assert!(matches!(c.sync().await, Err(ClientError::Revoked)));
    b.sync().await.unwrap();
    // A failed authentication: a device of an account the relay never saw.
    let (stranger, key) = kith_e2e::failed_authentication(&relay, &a.account_id()).await;
    // Requests anyone can send as fast as the relay answers must not cost a log line each.
    for _ in 0..20 {
        assert!(stranger.pull(Vec::new(), 0, 0).await.is_err());
    }
    let relay_addr = relay.local_addr();
    relay.shutdown().await.unwrap();

    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("account created"),
        "the log was captured:\n{text}"
    );
    assert!(
        text.contains("roster updated"),
        "roster changes were logged:\n{text}"
    );
    assert!(
        !text.contains("code=Unauthenticated"),
        "unauthenticated refusals are logged at info:\n{text}"
    );
    let mut ids: Vec<(String, Vec<u8>)> =
        vec![("account".into(), a.account_id().as_bytes().to_vec())];
    for (name, device) in [("a", &a), ("b", &b), ("c", &c)] {
        ids.push((
            format!("device {name}"),
            device.device_id().as_bytes().to_vec(),
        ));
    }
    ids.push(("stranger".into(), key.device_id().as_bytes().to_vec()));
    for (what, id) in &ids {
        for needle in [hex::encode(id), hex::encode(&id[..4])] {
            assert!(
                !text.to_lowercase().contains(&needle),
                "the relay's log names {what} ({needle}):\n{text}"
            );
        }
    }
    // Source addresses: the only address in the log is the relay's own.
    for (n, _) in text.match_indices("127.0.0.1") {
        let rest = &text[n..];
        assert!(
            rest.starts_with(&relay_addr.to_string()),
            "the relay's log names a client address: {}",
            rest.lines().next().unwrap_or_default()
        );
    }
}
