//! Renewable relay certificates, through the client library: a device pins the relay's key,
//! a store of an older release holding the pin of the whole certificate is migrated to the
//! key pin on its first connection, a renewal with the same key keeps devices (and a watching
//! device's live connection) working, a new key is refused with an error that says so, and a
//! pin set lets the operator rotate to a next key. (crates/relay/tests/certs.rs runs the same
//! renewals through the real binary and `SIGHUP`; this file calls what `SIGHUP` calls.)

use std::path::{Path, PathBuf};
use std::time::Duration;

use kith_client::net::{RelayTarget, RelayTrust};
use kith_client::{ClientError, ContactFields, Device};
use kith_relay::{Relay, RelayConfig, RelayHandle};
use rcgen::KeyPair;

struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
}

impl CertFiles {
    fn new(dir: &Path) -> Self {
        Self {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        }
    }

    /// A certificate of `key` valid from `year`: two calls with one key are a renewal.
    fn write(&self, key: &KeyPair, year: i32) {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(year, 1, 1);
        std::fs::write(&self.cert, params.self_signed(key).unwrap().pem()).unwrap();
        std::fs::write(&self.key, key.serialize_pem()).unwrap();
    }
}

async fn start(dir: &Path, files: &CertFiles) -> RelayHandle {
    let mut config = RelayConfig::for_tests(dir.join("relay"));
    config.cert = Some(files.cert.clone());
    config.key = Some(files.key.clone());
    Relay::start(config).await.unwrap()
}

fn pinned(relay: &RelayHandle, pin: [u8; 32]) -> RelayTarget {
    RelayTarget {
        address: relay.local_addr().to_string(),
        trust: RelayTrust::PinnedSha256(pin),
    }
}

fn person(name: &str) -> ContactFields {
    ContactFields {
        name: Some(name.into()),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_certificate_pin_is_migrated_to_the_key_pin_which_outlives_a_renewal() {
    let dir = tempfile::tempdir().unwrap();
    let files = CertFiles::new(dir.path());
    let key = KeyPair::generate().unwrap();
    files.write(&key, 2025);
    let relay = start(dir.path(), &files).await;
    let (cert_pin, key_pin) = (relay.cert_sha256(), relay.key_sha256());
    assert_ne!(cert_pin, key_pin);

    // A device set up by an older release stored the pin of the whole certificate.
    let home = dir.path().join("a");
    let (a, _) = Device::create(&home, pinned(&relay, cert_pin), "a", None)
        .await
        .unwrap();
    a.add_contact(&person("Ada Lovelace")).await.unwrap();
    a.sync().await.unwrap();
    assert_eq!(a.relay().trust, RelayTrust::PinnedSha256(key_pin));
    a.close().await;
    drop(a);
    // Stored, not only held in memory.
    let a = Device::open(&home).unwrap();
    assert_eq!(a.relay().trust, RelayTrust::PinnedSha256(key_pin));

    // The certificate is renewed with the same key: the migrated device goes on.
    files.write(&key, 2026);
    let pins = relay.reload_certificate().unwrap();
    assert_ne!(
        pins.cert_sha256, cert_pin,
        "a renewal changes the certificate"
    );
    assert_eq!(pins.key_sha256, key_pin, "and keeps the key");
    a.add_contact(&person("Grace Hopper")).await.unwrap();
    a.close().await;
    let report = a.sync().await.unwrap();
    assert_eq!(report.pushed, 1, "{report:?}");
    assert_eq!(a.relay().trust, RelayTrust::PinnedSha256(key_pin));
    a.close().await;
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watching_device_keeps_its_connection_across_a_renewal_and_a_new_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let files = CertFiles::new(dir.path());
    let key = KeyPair::generate().unwrap();
    files.write(&key, 2025);
    let relay = start(dir.path(), &files).await;
    let target = pinned(&relay, relay.key_sha256());
    let (a, _) = Device::create(&dir.path().join("a"), target.clone(), "a", None)
        .await
        .unwrap();
    let b = kith_e2e::link(&a, &dir.path().join("b"), target, "b").await;

    // B watches: one connection, a subscription open on it.
    let (changes, mut reports) = tokio::sync::mpsc::channel(16);
    let watcher = tokio::spawn({
        let b = b.clone();
        async move { b.watch(changes).await }
    });
    reports.recv().await.unwrap();

    files.write(&key, 2026);
    relay.reload_certificate().unwrap();
    let ada = a.add_contact(&person("Ada Lovelace")).await.unwrap();
    a.sync().await.unwrap();
    // B hears of it on the connection it held before the renewal.
    let seen = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let report = reports.recv().await.unwrap();
            if report.changed.contains(&ada) {
                break;
            }
        }
    })
    .await;
    assert!(seen.is_ok(), "the watching device missed the edit");
    assert!(!watcher.is_finished());

    // Another key: a device pinning the old one refuses the relay, and says why.
    let other = KeyPair::generate().unwrap();
    files.write(&other, 2026);
    relay.reload_certificate().unwrap();
    a.close().await;
    let refused = a.sync().await.unwrap_err();
    assert!(matches!(refused, ClientError::Net(_)), "{refused:?}");
    let text = refused.to_string();
    assert!(
        text.contains("does not match the pinned SHA-256") && text.contains("kith relay set"),
        "{text}"
    );
    drop(reports);
    watcher.abort();
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_set_with_the_next_key_survives_the_rotation_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let files = CertFiles::new(dir.path());
    let current = KeyPair::generate().unwrap();
    files.write(&current, 2025);
    let relay = start(dir.path(), &files).await;
    let current_pin = relay.key_sha256();
    // The operator makes the next key ahead of time and publishes its pin beside the current.
    let next = KeyPair::generate().unwrap();
    let next_files = CertFiles::new(&dir.path().join("next"));
    std::fs::create_dir_all(dir.path().join("next")).unwrap();
    next_files.write(&next, 2026);
    let next_pin = kith_relay::tls::load_or_create(&{
        let mut config = RelayConfig::for_tests(dir.path().join("unused"));
        config.cert = Some(next_files.cert.clone());
        config.key = Some(next_files.key.clone());
        config
    })
    .unwrap()
    .pins
    .key_sha256;
    let both = format!("{},{}", hex::encode(current_pin), hex::encode(next_pin));
    let target = RelayTarget::pinned(relay.local_addr().to_string(), &both).unwrap();
    assert_eq!(
        target.trust,
        RelayTrust::PinSet(vec![current_pin, next_pin])
    );
    let home = dir.path().join("a");
    let (a, _) = Device::create(&home, target, "a", None).await.unwrap();
    a.sync().await.unwrap();
    a.close().await;

    files.write(&next, 2026);
    assert_eq!(relay.reload_certificate().unwrap().key_sha256, next_pin);
    a.add_contact(&person("Ada Lovelace")).await.unwrap();
    assert_eq!(a.sync().await.unwrap().pushed, 1);
    a.close().await;
    drop(a);
    assert_eq!(
        Device::open(&home).unwrap().relay().trust,
        RelayTrust::PinSet(vec![current_pin, next_pin]),
        "a pin set is stored as given"
    );
    relay.shutdown().await.unwrap();
}
