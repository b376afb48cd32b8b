//! The relay's metrics during a real run (issue 15 item 1): a relay on loopback with its
//! metrics listener, real devices creating an account, linking, syncing and watching, a stranger
//! failing to authenticate; the endpoint is scraped over HTTP before, during and after, and
//!
//! - the counters an operator watches move (connections, authentications by result, requests
//!   by kind and result, pushed and pulled envelopes and bytes, the ack-latency histogram, the
//!   group commit's batches and flushes, store totals, accounts and device streams);
//! - no account id, device id or client address appears anywhere in the text (privacy promise
//!   6, docs/PROTOCOL.md §11), in full or by its first four bytes.

use std::net::SocketAddr;
use std::time::Duration;

use kith_client::net::RelayTarget;
use kith_client::{ContactFields, Device};
use kith_relay::{Relay, RelayConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One HTTP GET against the metrics listener: the status line and the body.
async fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: relay\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

async fn scrape(addr: SocketAddr) -> String {
    let (status, body) = get(addr, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    body
}

/// The value of one series (`name{labels}` exactly as printed), 0 when absent.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

fn person(name: &str) -> ContactFields {
    ContactFields {
        name: Some(name.into()),
        email: Some(format!("{}@example.com", name.to_lowercase())),
        ..ContactFields::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_during_a_real_run_and_name_no_account_device_or_address() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = RelayConfig::for_tests(dir.path().join("relay"));
    config.metrics_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    let relay = Relay::start(config).await.unwrap();
    let metrics = relay.metrics_addr().expect("a metrics listener");
    let target = || {
        RelayTarget::pinned(
            relay.local_addr().to_string(),
            &hex::encode(relay.cert_sha256()),
        )
        .unwrap()
    };

    let before = scrape(metrics).await;
    assert_eq!(value(&before, "kith_relay_accounts"), 0.0, "{before}");
    assert_eq!(value(&before, "kith_relay_push_envelopes_total"), 0.0);
    let (health, body) = get(metrics, "/healthz").await;
    assert_eq!(
        (health.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", "ok\n")
    );

    // A creates the account and syncs; B links and watches; A edits and syncs again.
    let (a, _) = Device::create(&dir.path().join("a"), target(), "a", None)
        .await
        .unwrap();
    for name in ["Ada", "Grace", "Edsger"] {
        a.add_contact(&person(name)).await.unwrap();
    }
    a.sync().await.unwrap();
    let b = kith_e2e::link(&a, &dir.path().join("b"), target(), "b").await;
    let (reports, mut reported) = tokio::sync::mpsc::channel(16);
    let watcher = {
        let b = b.clone();
        tokio::spawn(async move { b.watch(reports).await })
    };
    // The watch's first sync, then one more contact from A reaching B live.
    reported.recv().await.unwrap();
    a.add_contact(&person("Barbara")).await.unwrap();
    a.sync().await.unwrap();
    loop {
        let report = tokio::time::timeout(Duration::from_secs(30), reported.recv())
            .await
            .expect("B saw A's push")
            .unwrap();
        if report.pulled > 0 {
            break;
        }
    }

    // Scraped while B's subscription is open.
    let during = scrape(metrics).await;
    assert!(
        value(&during, "kith_relay_subscriptions") >= 1.0,
        "{during}"
    );
    assert!(
        value(&during, "kith_relay_connections_open") >= 1.0,
        "{during}"
    );

    // A stranger fails to authenticate.
    let (stranger, key) = kith_e2e::failed_authentication(&relay, &a.account_id()).await;
    stranger.close().await;

    let after = scrape(metrics).await;
    for series in [
        "kith_relay_connections_total",
        "kith_relay_handshakes_total{result=\"ok\"}",
        "kith_relay_requests_total{kind=\"push\",result=\"OK\"}",
        "kith_relay_requests_total{kind=\"pull\",result=\"OK\"}",
        "kith_relay_requests_total{kind=\"put_pairing_slot\",result=\"OK\"}",
        "kith_relay_requests_total{kind=\"take_pairing_slot\",result=\"OK\"}",
        "kith_relay_authentications_total{kind=\"create_account\",result=\"OK\"}",
        // The linked device joins the account through RecoverDevice.
        "kith_relay_authentications_total{kind=\"recover_device\",result=\"OK\"}",
        "kith_relay_authentications_total{kind=\"authenticate\",result=\"BAD_SIGNATURE\"}",
        "kith_relay_push_envelopes_total",
        "kith_relay_push_bytes_total",
        "kith_relay_pull_envelopes_total",
        "kith_relay_pull_bytes_total",
        "kith_relay_push_ack_seconds_count",
        "kith_relay_commit_batch_size_count",
        "kith_relay_commit_batch_size_sum",
        "kith_relay_commit_flush_seconds_count",
        "kith_relay_store_envelopes",
        "kith_relay_store_envelope_bytes",
    ] {
        let (was, is) = (value(&before, series), value(&after, series));
        assert!(is > was, "{series} did not move ({was} → {is}):\n{after}");
    }
    assert_eq!(value(&after, "kith_relay_accounts"), 1.0, "{after}");
    assert!(
        value(&after, "kith_relay_store_disk_bytes") > 0.0,
        "{after}"
    );
    let streams = value(&after, "kith_relay_device_streams");
    assert!((1.0..=2.0).contains(&streams), "{after}");
    // Every push was acknowledged, each once: the ack histogram counts the pushes.
    assert_eq!(
        value(&after, "kith_relay_push_ack_seconds_count"),
        value(
            &after,
            "kith_relay_requests_total{kind=\"push\",result=\"OK\"}"
        )
    );

    // Nothing identifies an account, a device or a client.
    let text = format!("{before}{during}{after}").to_lowercase();
    let mut ids = vec![("account", a.account_id().as_bytes().to_vec())];
    ids.push(("device a", a.device_id().as_bytes().to_vec()));
    ids.push(("device b", b.device_id().as_bytes().to_vec()));
    ids.push(("stranger", key.device_id().as_bytes().to_vec()));
    for (what, id) in &ids {
        for needle in [hex::encode(id), hex::encode(&id[..4])] {
            assert!(
                !text.contains(&needle),
                "the metrics name {what} ({needle})"
            );
        }
    }
    assert!(!text.contains("127.0.0.1"), "the metrics name an address");
    // Label values are the relay's own words only.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        if let Some((_, labels)) = line.split_once('{') {
            let labels = labels.split('}').next().unwrap();
            for pair in labels.split(',') {
                let (_, v) = pair.split_once('=').unwrap();
                let v = v.trim_matches('"');
                let allowed =
                    |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.+".contains(c);
                assert!(
                    v.chars().all(allowed),
                    "an unexpected label value in {line}"
                );
                assert!(v.len() < 32, "a label value as long as an id: {line}");
            }
        }
    }

    watcher.abort();
    drop((a, b));
    relay.shutdown().await.unwrap();
}
