//! A slow, lossy network between a device and its relay: the handshake that hears from the
//! relay at once but completes only seconds later (lost and retransmitted packets on a poor
//! mobile link) must not be mistaken for a relay that is down.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kith_client::net::{RelayConnection, RelayTarget};
use kith_protocol::proto::{self, request, response};
use kith_relay::{Relay, RelayConfig};
use tokio::net::UdpSocket;
use tokio::sync::Mutex;

/// A UDP relay between devices and the real relay, on loopback. Datagrams from devices go
/// through at once; of the relay's answers to each device, the first goes through at once and
/// the following ones are held back until `hold` has passed since it (then sent, in order,
/// with everything after): what a device sees when most of the relay's handshake flight is
/// lost and arrives only after retransmissions.
struct HoldingProxy {
    address: SocketAddr,
}

impl HoldingProxy {
    async fn start(relay: SocketAddr, hold: Duration) -> Self {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let address = front.local_addr().unwrap();
        let uplinks: Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>> = Arc::default();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            loop {
                let Ok((n, device)) = front.recv_from(&mut buf).await else {
                    return;
                };
                let uplink = {
                    let mut uplinks = uplinks.lock().await;
                    match uplinks.get(&device) {
                        Some(uplink) => uplink.clone(),
                        None => {
                            let uplink = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
                            uplink.connect(relay).await.unwrap();
                            uplinks.insert(device, uplink.clone());
                            tokio::spawn(answers(uplink.clone(), front.clone(), device, hold));
                            uplink
                        }
                    }
                };
                let _ = uplink.send(&buf[..n]).await;
            }
        });
        Self { address }
    }
}

/// Carries the relay's answers on `uplink` back to `device`, holding back all but the first
/// until `hold` after it.
async fn answers(
    uplink: Arc<UdpSocket>,
    front: Arc<UdpSocket>,
    device: SocketAddr,
    hold: Duration,
) {
    let mut buf = vec![0u8; 65_536];
    let mut first_at: Option<Instant> = None;
    let mut held: Vec<Vec<u8>> = Vec::new();
    loop {
        let wait = match first_at {
            Some(at) if !held.is_empty() => (at + hold).saturating_duration_since(Instant::now()),
            _ => Duration::from_secs(3600),
        };
        tokio::select! {
            received = uplink.recv(&mut buf) => {
                let Ok(n) = received else { return };
                match first_at {
                    None => {
                        first_at = Some(Instant::now());
                        let _ = front.send_to(&buf[..n], device).await;
                    }
                    Some(at) if at.elapsed() < hold => held.push(buf[..n].to_vec()),
                    Some(_) => {
                        for datagram in held.drain(..) {
                            let _ = front.send_to(&datagram, device).await;
                        }
                        let _ = front.send_to(&buf[..n], device).await;
                    }
                }
            }
            () = tokio::time::sleep(wait) => {
                for datagram in held.drain(..) {
                    let _ = front.send_to(&datagram, device).await;
                }
            }
        }
    }
}

/// The relay answers at once, but the rest of its handshake reaches the device only 6.5 s
/// later (longer than the 5 s a device waits for a relay that gives no sign of life): the
/// connection is made, and a device is created through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_that_hears_from_the_relay_but_completes_slowly_is_not_given_up() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(RelayConfig::for_tests(dir.path().join("relay")))
        .await
        .unwrap();
    let pin = hex::encode(relay.cert_sha256());
    let hold = Duration::from_millis(6_500);
    assert!(hold > kith_client::net::CONNECT_TIMEOUT);

    let proxy = HoldingProxy::start(relay.local_addr(), hold).await;
    let target = RelayTarget::pinned(proxy.address.to_string(), &pin).unwrap();
    let started = Instant::now();
    let connection = RelayConnection::connect(&target)
        .await
        .expect("a slow handshake completes");
    assert!(
        started.elapsed() >= hold,
        "the proxy held the relay's flight back for {hold:?}, yet the handshake took {:?}",
        started.elapsed()
    );
    connection.close().await;

    // The same through a device's own connection: `kith init` on a slow network.
    let proxy = HoldingProxy::start(relay.local_addr(), hold).await;
    let target = RelayTarget::pinned(proxy.address.to_string(), &pin).unwrap();
    let (device, _) = kith_client::Device::create(&dir.path().join("a"), target, "phone", None)
        .await
        .expect("the account is created over the slow network");
    device.sync().await.unwrap();
    relay.shutdown().await.unwrap();
}

/// The relay's flight reaches the device only 12 s later: longer than the relay's handshake
/// timeout once was (10 s, while the device waits up to 30 s), so the relay abandoned a
/// handshake the device was still completing, and the device reported the relay unreachable.
/// The relay's default gives a handshake at least as long as a device waits for one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_waits_for_a_slow_handshake_as_long_as_the_device_does() {
    let dir = tempfile::tempdir().unwrap();
    let config = RelayConfig::for_tests(dir.path().join("relay"));
    let relay_waits = config.bounds.handshake_timeout;
    let relay = Relay::start(config).await.unwrap();
    let pin = hex::encode(relay.cert_sha256());
    let hold = Duration::from_secs(12);
    assert!(hold < kith_client::net::HANDSHAKE_TIMEOUT);

    let proxy = HoldingProxy::start(relay.local_addr(), hold).await;
    let target = RelayTarget::pinned(proxy.address.to_string(), &pin).unwrap();
    let started = Instant::now();
    let connection = RelayConnection::connect(&target)
        .await
        .expect("a handshake slower than 10 s completes");
    assert!(started.elapsed() >= hold);
    // The relay kept the connection: a request on it is answered.
    let answer = connection
        .request(request::Kind::GetChallenge(proto::GetChallenge {}))
        .await
        .expect("the relay answers on the connection whose handshake was slow");
    assert!(matches!(answer, response::Kind::Challenge(_)), "{answer:?}");
    connection.close().await;
    relay.shutdown().await.unwrap();
    assert!(
        relay_waits >= kith_client::net::HANDSHAKE_TIMEOUT,
        "the relay gives up on a handshake ({relay_waits:?}) before a device does ({:?})",
        kith_client::net::HANDSHAKE_TIMEOUT
    );
}
