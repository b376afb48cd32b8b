//! Wake-up notifications (docs/PROTOCOL.md §12.1, issue 16 item 4): a real relay on loopback
//! POSTs to a stand-in push gateway (an HTTP server on 127.0.0.1) when another device pushes.
//! The gateway must receive the registered token and nothing else; wake-ups are coalesced per
//! device, retried when the gateway fails, and never sent to a device after its revocation or
//! unregistration.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kith_client::net::RelayTarget;
use kith_client::{ClientError, ContactFields, Device};
use kith_relay::config::PushConfig;
use kith_relay::{Relay, RelayConfig, RelayHandle};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// One request the gateway received.
#[derive(Debug, Clone)]
struct Received {
    head: String,
    body: Vec<u8>,
}

/// A stand-in push gateway: records every request, answers with the scripted statuses (200
/// once they run out).
struct Gateway {
    url: String,
    received: mpsc::UnboundedReceiver<Received>,
    script: Arc<Mutex<VecDeque<u16>>>,
}

impl Gateway {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/_kith/wake", listener.local_addr().unwrap());
        let (tx, received) = mpsc::unbounded_channel();
        let script = Arc::new(Mutex::new(VecDeque::new()));
        let answers = script.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let tx = tx.clone();
                let status = answers.lock().unwrap().pop_front().unwrap_or(200);
                tokio::spawn(async move {
                    let mut data = Vec::new();
                    let mut chunk = [0u8; 1024];
                    let (head, body) = loop {
                        let n = stream.read(&mut chunk).await.unwrap();
                        assert!(n > 0, "the relay closed before sending a whole request");
                        data.extend_from_slice(&chunk[..n]);
                        let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
                            continue;
                        };
                        let head = String::from_utf8(data[..end].to_vec()).unwrap();
                        let length: usize = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap())
                            })
                            .expect("a Content-Length header");
                        if data.len() >= end + 4 + length {
                            break (head, data[end + 4..end + 4 + length].to_vec());
                        }
                    };
                    let reason = if status == 200 { "OK" } else { "Nope" };
                    let answer = format!(
                        "HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    );
                    stream.write_all(answer.as_bytes()).await.unwrap();
                    let _ = tx.send(Received { head, body });
                });
            }
        });
        Self {
            url,
            received,
            script,
        }
    }

    /// The next request, waiting up to 30 s (a busy machine).
    async fn next(&mut self) -> Received {
        tokio::time::timeout(Duration::from_secs(30), self.received.recv())
            .await
            .expect("the gateway received a request in time")
            .unwrap()
    }

    /// Every request that arrives within `wait`.
    async fn drain(&mut self, wait: Duration) -> Vec<Received> {
        let mut all = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Some(r)) = tokio::time::timeout_at(deadline, self.received.recv()).await {
            all.push(r);
        }
        all
    }
}

/// The body a wake-up for `token` must have: the token and nothing else.
fn wake_body(token: &str) -> Vec<u8> {
    use base64::Engine as _;
    format!(
        "{{\"token\":\"{}\"}}",
        base64::engine::general_purpose::STANDARD.encode(token)
    )
    .into_bytes()
}

struct World {
    dir: TempDir,
    relay: RelayHandle,
}

impl World {
    async fn new(push: Option<PushConfig>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = RelayConfig::for_tests(dir.path().join("relay"));
        config.bounds.lookups_per_minute = 10_000;
        config.push = push;
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
        Device::create(&self.home(name), self.target(), name, None)
            .await
            .unwrap()
            .0
    }

    async fn link(&self, approver: &Device, name: &str) -> Device {
        kith_e2e::link(approver, &self.home(name), self.target(), name).await
    }
}

fn push_config(gateway: &Gateway, interval: Duration) -> PushConfig {
    let mut config = PushConfig::new(gateway.url.parse().unwrap());
    config.interval = interval;
    config.first_retry = Duration::from_millis(200);
    config
}

async fn write_and_push(device: &Device, name: &str) {
    device
        .add_contact(&ContactFields {
            name: Some(name.into()),
            ..Default::default()
        })
        .await
        .unwrap();
    device.sync().await.unwrap();
}

#[tokio::test]
async fn a_push_wakes_the_other_devices_with_their_token_and_nothing_else() {
    let mut gateway = Gateway::start().await;
    let world = World::new(Some(push_config(&gateway, Duration::from_secs(1)))).await;
    let a = world.first_device("a").await;
    let b = world.link(&a, "b").await;
    a.register_push_target(b"token-of-a").await.unwrap();
    b.register_push_target(b"token-of-b").await.unwrap();
    // Linking pushed nothing yet that wakes anyone: the gateway is quiet until a push.
    write_and_push(&a, "Ada Lovelace").await;
    let wake = gateway.next().await;
    assert_eq!(
        wake.body,
        wake_body("token-of-b"),
        "only b is woken, by its token"
    );
    assert!(wake.head.starts_with("POST /_kith/wake HTTP/1.1\r\n"));
    assert!(
        wake.head
            .to_ascii_lowercase()
            .contains("content-type: application/json")
    );
    // Nothing that names the account or a device, in the body or the headers.
    let everything = [wake.head.as_bytes(), &wake.body].concat();
    let text = String::from_utf8_lossy(&everything).to_ascii_lowercase();
    for id in [
        a.account_id().to_hex(),
        a.device_id().to_hex(),
        b.device_id().to_hex(),
    ] {
        assert!(!text.contains(&id[..8]), "the wake-up names an id");
    }
    // The pusher itself is not woken, and b's push wakes a.
    assert!(gateway.drain(Duration::from_millis(1500)).await.is_empty());
    write_and_push(&b, "Grace Hopper").await;
    assert_eq!(gateway.next().await.body, wake_body("token-of-a"));
    // A new registration replaces the old token: one target per device.
    b.register_push_target(b"new-token-of-b").await.unwrap();
    write_and_push(&a, "Alan Turing").await;
    assert_eq!(gateway.next().await.body, wake_body("new-token-of-b"));
    assert!(gateway.drain(Duration::from_millis(1500)).await.is_empty());
}

#[tokio::test]
async fn pushes_within_the_interval_are_coalesced_into_one_later_wake_up() {
    let mut gateway = Gateway::start().await;
    let interval = Duration::from_secs(6);
    let world = World::new(Some(push_config(&gateway, interval))).await;
    let a = world.first_device("a").await;
    let b = world.link(&a, "b").await;
    b.register_push_target(b"token-of-b").await.unwrap();
    let started = Instant::now();
    write_and_push(&a, "one").await;
    assert_eq!(gateway.next().await.body, wake_body("token-of-b"));
    for name in ["two", "three", "four"] {
        write_and_push(&a, name).await;
    }
    let pushes_took = started.elapsed();
    // The folded pushes wake b once more, when the interval ends.
    assert_eq!(gateway.next().await.body, wake_body("token-of-b"));
    let more = gateway.drain(interval + Duration::from_secs(2)).await;
    if pushes_took < interval {
        // Every push fell within the first interval: exactly one wake-up followed them.
        assert!(more.is_empty(), "{} more wake-ups", more.len());
    } else {
        // A very busy machine spread the pushes over more than one interval.
        assert!(more.len() <= 2);
    }
}

#[tokio::test]
async fn a_wake_up_the_gateway_fails_is_retried_until_it_takes_it() {
    let mut gateway = Gateway::start().await;
    let world = World::new(Some(push_config(&gateway, Duration::from_secs(1)))).await;
    let a = world.first_device("a").await;
    let b = world.link(&a, "b").await;
    b.register_push_target(b"token-of-b").await.unwrap();
    gateway.script.lock().unwrap().extend([500, 503, 429]);
    write_and_push(&a, "Ada").await;
    for _ in 0..4 {
        assert_eq!(gateway.next().await.body, wake_body("token-of-b"));
    }
    // The fourth attempt succeeded: nothing more.
    assert!(gateway.drain(Duration::from_secs(2)).await.is_empty());
    // A refusal for good (4xx) is not retried.
    gateway.script.lock().unwrap().push_back(404);
    write_and_push(&a, "Grace").await;
    assert_eq!(gateway.next().await.body, wake_body("token-of-b"));
    assert!(gateway.drain(Duration::from_secs(2)).await.is_empty());
}

#[tokio::test]
async fn nothing_is_sent_after_revocation_or_unregistration() {
    let mut gateway = Gateway::start().await;
    let world = World::new(Some(push_config(&gateway, Duration::from_secs(1)))).await;
    let a = world.first_device("a").await;
    let b = world.link(&a, "b").await;
    let c = world.link(&a, "c").await;
    b.register_push_target(b"token-of-b").await.unwrap();
    c.register_push_target(b"token-of-c").await.unwrap();
    write_and_push(&a, "before").await;
    let mut first: Vec<Vec<u8>> = vec![gateway.next().await.body, gateway.next().await.body];
    first.sort();
    assert_eq!(
        first,
        vec![wake_body("token-of-b"), wake_body("token-of-c")]
    );
    a.revoke(&b.device_id()).await.unwrap();
    // Whatever the revocation's own pushes woke, b's target is gone from here on.
    let _ = gateway.drain(Duration::from_secs(3)).await;
    // The gateway fails now: c's wake-up is retried, b's would be too if it still had one.
    gateway.script.lock().unwrap().extend([500; 2]);
    write_and_push(&a, "after revocation").await;
    // c (the control) is woken; b never again, retries included.
    assert_eq!(gateway.next().await.body, wake_body("token-of-c"));
    let late = gateway.drain(Duration::from_secs(4)).await;
    assert!(
        late.iter().all(|r| r.body != wake_body("token-of-b")),
        "a revoked device was woken"
    );
    // A revoked device cannot register again.
    assert!(b.register_push_target(b"token-of-b").await.is_err());
    // Unregistering stops the wake-ups too.
    c.unregister_push_target().await.unwrap();
    write_and_push(&a, "after unregistration").await;
    assert!(gateway.drain(Duration::from_secs(3)).await.is_empty());
}

#[tokio::test]
async fn a_relay_without_a_gateway_says_it_does_not_support_wake_ups() {
    let world = World::new(None).await;
    let a = world.first_device("a").await;
    match a.register_push_target(b"token").await {
        Err(ClientError::Unsupported(message)) => {
            assert!(message.contains("push gateway"), "{message}")
        }
        other => panic!("expected Unsupported, got {other:?}"),
    }
    // The bound is checked before anything is sent.
    assert!(matches!(
        a.register_push_target(&[7; 1025]).await,
        Err(ClientError::InvalidInput(_))
    ));
    assert!(matches!(
        a.register_push_target(b"").await,
        Err(ClientError::InvalidInput(_))
    ));
}
