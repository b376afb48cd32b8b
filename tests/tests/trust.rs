//! Relay trust: a relay with a certificate chain from a configured CA, and a relay stopped in
//! the middle of a large sync.

use std::time::Duration;

use kith_client::net::{RelayTarget, RelayTrust};
use kith_client::{ClientError, Device};
use kith_relay::{Relay, RelayConfig};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { issuer }
    }

    fn der(&self) -> Vec<u8> {
        self.issuer.der().to_vec()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_with_a_ca_signed_chain_is_trusted_through_the_ca_only() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca.issuer)
        .unwrap();
    let cert_path = dir.path().join("relay.pem");
    let key_path = dir.path().join("relay.key");
    std::fs::write(&cert_path, format!("{}{}", leaf.pem(), ca.issuer.pem())).unwrap();
    std::fs::write(&key_path, leaf_key.serialize_pem()).unwrap();
    let mut config = RelayConfig::for_tests(dir.path().join("relay"));
    config.cert = Some(cert_path);
    config.key = Some(key_path);
    let relay = Relay::start(config).await.unwrap();
    let address = relay.local_addr().to_string();

    let trusted = RelayTarget {
        address: address.clone(),
        trust: RelayTrust::CaRoots(vec![ca.der()]),
    };
    let (device, _) = Device::create(&dir.path().join("a"), trusted, "a", None)
        .await
        .unwrap();
    device.sync().await.unwrap();

    let other_ca = Ca::new();
    let untrusted = RelayTarget {
        address,
        trust: RelayTrust::CaRoots(vec![other_ca.der()]),
    };
    let refused = Device::create(&dir.path().join("b"), untrusted, "b", None)
        .await
        .unwrap_err();
    assert!(matches!(refused, ClientError::Net(_)), "{refused}");
    relay.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_relay_in_the_middle_of_a_sync_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let relay_dir = dir.path().join("relay");
    let mut config = RelayConfig::for_tests(&relay_dir);
    config.shutdown_grace = Duration::ZERO;
    let relay = Relay::start(config).await.unwrap();
    let addr = relay.local_addr();
    let target = RelayTarget::pinned(addr.to_string(), &hex::encode(relay.cert_sha256())).unwrap();
    let (a, _) = Device::create(&dir.path().join("a"), target.clone(), "a", None)
        .await
        .unwrap();
    let csv = kith_client::import::testing::generate_linkedin_csv(6_000);
    let report =
        kith_client::import::linkedin::import_bytes(csv.as_bytes(), &Default::default()).unwrap();
    let contacts = report.contacts.len();
    a.import(report).await.unwrap();

    // Stop the relay while the push is under way; whatever it acknowledged stays, the rest is
    // retried from the outbox.
    let syncing = tokio::spawn({
        let a = a.clone();
        async move { a.sync_once().await }
    });
    tokio::time::sleep(Duration::from_millis(30)).await;
    relay.shutdown().await.unwrap();
    let _ = syncing.await.unwrap();

    let relay = loop {
        let mut config = RelayConfig::for_tests(&relay_dir);
        config.listen = addr;
        match Relay::start(config).await {
            Ok(relay) => break relay,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    a.sync().await.unwrap();
    let recovery = dir.path().join("b");
    let b = kith_e2e::link(&a, &recovery, target, "b").await;
    assert_eq!(b.contacts().unwrap().len(), contacts);
    relay.shutdown().await.unwrap();
}
