//! Certificates renewed while the relay runs, as an operator's ACME client renews them: the
//! real `kith-relay` binary serving `--cert/--key`, the files replaced, then `SIGHUP` (or no
//! signal at all: the relay notices the files change). Clients pin the key (`key sha256`), so
//! a renewal with the same key keeps them working; a new key is refused with an error that
//! says so; a connection open across the reload is never dropped.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::process::RelayProcess;
use kith_relay::client::RelayClient;
use kith_relay::tls::{fingerprint, key_sha256};
use rustls::pki_types::CertificateDer;

/// How long the relay may take to notice changed files (it looks every 2 s) or a signal.
const RELOAD_WAIT: Duration = Duration::from_secs(30);

struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
}

impl CertFiles {
    fn new(dir: &Path) -> Self {
        Self {
            cert: dir.join("fullchain.pem"),
            key: dir.join("privkey.pem"),
        }
    }

    /// Writes a certificate of `key` for localhost, valid from `year` (two calls with one
    /// key are a renewal), each file replaced by a rename as ACME clients do.
    fn write(&self, key: &rcgen::KeyPair, year: i32) -> CertificateDer<'static> {
        let cert = self.write_cert_only(key, year);
        replace(&self.key, key.serialize_pem().as_bytes());
        cert
    }

    fn write_cert_only(&self, key: &rcgen::KeyPair, year: i32) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(year, 1, 1);
        let cert = params.self_signed(key).unwrap();
        replace(&self.cert, cert.pem().as_bytes());
        cert.der().clone()
    }

    fn flags(&self) -> Vec<String> {
        vec![
            "--cert".into(),
            self.cert.display().to_string(),
            "--key".into(),
            self.key.display().to_string(),
        ]
    }
}

fn replace(path: &Path, contents: &[u8]) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn spawn(data: &Path, files: &CertFiles) -> RelayProcess {
    let flags = files.flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    RelayProcess::spawn(data, &flags)
}

/// Waits until the relay's log says `what` `count` times.
fn wait_for_log(relay: &RelayProcess, what: &str, count: usize) {
    let deadline = Instant::now() + RELOAD_WAIT;
    while relay.stderr().matches(what).count() < count {
        assert!(
            Instant::now() < deadline,
            "the relay never logged {what:?} {count} times:\n{}",
            relay.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn presented(client: &RelayClient) -> CertificateDer<'static> {
    client
        .connection()
        .peer_identity()
        .unwrap()
        .downcast::<Vec<CertificateDer<'static>>>()
        .unwrap()[0]
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_with_the_same_key_is_served_after_sighup_and_no_connection_drops() {
    let dir = tempfile::tempdir().unwrap();
    let files = CertFiles::new(dir.path());
    let key = rcgen::KeyPair::generate().unwrap();
    let first = files.write(&key, 2025);
    let relay = spawn(&dir.path().join("data"), &files);
    assert_eq!(relay.pin, fingerprint(&first), "certificate sha256 is kept");
    assert_eq!(
        Some(relay.key_pin),
        key_sha256(&first),
        "key sha256 is printed"
    );

    // A device pinning the key, connected before the renewal.
    let live = RelayClient::connect(relay.addr, relay.key_pin)
        .await
        .unwrap();
    live.challenge().await.unwrap();

    let renewed = files.write(&key, 2026);
    assert_ne!(fingerprint(&renewed), fingerprint(&first));
    relay.signal("HUP");
    wait_for_log(&relay, "cause=\"SIGHUP\"", 1);

    // The connection open across the reload still serves requests, and was never closed.
    live.challenge().await.unwrap();
    assert!(live.connection().close_reason().is_none());
    // A new connection gets the renewed certificate and its key pin still opens it.
    let fresh = RelayClient::connect(relay.addr, relay.key_pin)
        .await
        .unwrap();
    assert_eq!(presented(&fresh), renewed);
    fresh.challenge().await.unwrap();
    // The whole-certificate pin of the first certificate no longer matches: renewing really
    // changed what is served, and only the key pin survives it.
    let old_pin = RelayClient::connect(relay.addr, relay.pin).await;
    assert!(
        old_pin.is_err(),
        "the old certificate pin opened the renewed one"
    );
    live.challenge().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_key_is_noticed_without_a_signal_and_refused_by_the_old_pin_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let files = CertFiles::new(dir.path());
    let old_key = rcgen::KeyPair::generate().unwrap();
    files.write(&old_key, 2025);
    let relay = spawn(&dir.path().join("data"), &files);
    let live = RelayClient::connect(relay.addr, relay.key_pin)
        .await
        .unwrap();
    live.challenge().await.unwrap();

    // A new key, written by the renewal with no signal: the relay sees the files change.
    let new_key = rcgen::KeyPair::generate().unwrap();
    let rekeyed = files.write(&new_key, 2026);
    wait_for_log(&relay, "certificate reloaded", 1);

    let refused = RelayClient::connect(relay.addr, relay.key_pin)
        .await
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("does not match the pinned SHA-256") && refused.contains("key"),
        "{refused}"
    );
    let new_pin = key_sha256(&rekeyed).unwrap();
    RelayClient::connect(relay.addr, new_pin)
        .await
        .unwrap()
        .challenge()
        .await
        .unwrap();
    // The connection made under the old key is not dropped by the change of key.
    live.challenge().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_without_its_key_is_not_served_until_the_key_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let files = CertFiles::new(dir.path());
    let old_key = rcgen::KeyPair::generate().unwrap();
    files.write(&old_key, 2025);
    let relay = spawn(&dir.path().join("data"), &files);

    // The new certificate is in place, its key not yet: the reload is refused and the old
    // certificate stays served.
    let new_key = rcgen::KeyPair::generate().unwrap();
    let rekeyed = files.write_cert_only(&new_key, 2026);
    relay.signal("HUP");
    wait_for_log(&relay, "cannot be reloaded", 1);
    assert!(relay.stderr().contains("is not the key of the certificate"));
    RelayClient::connect(relay.addr, relay.key_pin)
        .await
        .unwrap()
        .challenge()
        .await
        .unwrap();

    // Then the key arrives, and the relay serves the pair without being told.
    replace(&files.key, new_key.serialize_pem().as_bytes());
    wait_for_log(&relay, "certificate reloaded", 1);
    let client = RelayClient::connect(relay.addr, key_sha256(&rekeyed).unwrap())
        .await
        .unwrap();
    assert_eq!(presented(&client), rekeyed);
}
