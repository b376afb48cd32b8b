//! `kith-relay bench --abuse`: an abusive client beside the honest devices, speaking from
//! 127.0.0.2 so that the relay's per-address limits meet it and not the honest devices on
//! 127.0.0.1. It keeps, for as long as it runs:
//! - `idle` unauthenticated connections open (reconnecting whenever the relay closes one, or
//!   refuses it, after a short pause);
//! - `stalled` pulls of a 2.5 MB account that never read their answers (each re-sent when the
//!   relay gives up on it);
//! - a flood of oversized frames: request frames announcing more than `max_frame_bytes`, as
//!   fast as the relay answers them, on `flooders` connections (each reconnecting whenever the
//!   relay closes it for too many bad frames).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use kith_protocol::frame::encode_frame;
use kith_protocol::keys::{DeviceSigningKey, system_rng};
use kith_protocol::proto::{self, Request, request};
use kith_relay::client::RelayClient;
use kith_relay::tls;

/// What the abuser does.
#[derive(Debug, Clone, Copy)]
pub struct Abuse {
    /// Unauthenticated connections to keep open.
    pub idle: usize,
    /// Pulls that never read their answers.
    pub stalled: usize,
    /// Streams sending oversized frames back to back.
    pub flooders: usize,
}

/// Counts of what the abuser did, and whether it should stop.
#[derive(Debug, Default)]
pub struct AbuseStats {
    stop: AtomicBool,
    /// Unauthenticated connections open now.
    pub idle_open: AtomicU64,
    /// Connections the relay refused or closed.
    pub refused: AtomicU64,
    /// Stalled pulls sent.
    pub stalled_sent: AtomicU64,
    /// Oversized frames sent.
    pub oversized_sent: AtomicU64,
}

/// The abuser's source address.
const ABUSER: &str = "127.0.0.2:0";

fn endpoint(pin: [u8; 32]) -> Result<quinn::Endpoint> {
    let mut endpoint = quinn::Endpoint::client(ABUSER.parse()?)?;
    endpoint.set_default_client_config(tls::client_config(pin)?);
    Ok(endpoint)
}

/// Starts the abuser; it runs until [`stop`] is called on the returned stats.
pub async fn start(abuse: Abuse, addr: SocketAddr, pin: [u8; 32]) -> Result<Arc<AbuseStats>> {
    let stats = Arc::new(AbuseStats::default());
    let endpoints: Vec<quinn::Endpoint> = (0..8).map(|_| endpoint(pin)).collect::<Result<_>>()?;
    // The stalled pulls' account: 125 envelopes of 20 KB, so every page is a full 2 MiB.
    let key = DeviceSigningKey::generate(&mut system_rng());
    let (account, roster) = super::genesis(std::slice::from_ref(&key));
    let owner = RelayClient::connect_with(endpoints[0].clone(), addr).await?;
    owner.create_account(roster, &key, &account, None).await?;
    let body = vec![0x5a; super::ciphertext_len(20_000)];
    let id = key.device_id();
    for batch in 0..5u64 {
        let envelopes = (batch * 25 + 1..=batch * 25 + 25)
            .map(|seq| super::envelope(&account, &id, seq, &body))
            .collect();
        owner.push(envelopes).await?;
    }
    // Stalled pulls, 15 per connection; then the flooders' connections, then the idle ones
    // (which fill the address's connection slots).
    let per_connection = 15;
    for c in 0..abuse.stalled.div_ceil(per_connection) {
        let client =
            RelayClient::connect_with(endpoints[c % endpoints.len()].clone(), addr).await?;
        client.authenticate(&key, &account).await?;
        let client = Arc::new(client);
        for _ in 0..per_connection.min(abuse.stalled - c * per_connection) {
            tokio::spawn(stalled_pull(client.clone(), stats.clone()));
        }
    }
    for i in 0..abuse.flooders {
        tokio::spawn(flood(
            endpoints[i % endpoints.len()].clone(),
            addr,
            stats.clone(),
        ));
    }
    for i in 0..abuse.idle {
        tokio::spawn(idle_connection(
            endpoints[i % endpoints.len()].clone(),
            addr,
            stats.clone(),
        ));
    }
    Ok(stats)
}

/// Tells every abuser task to stop.
pub fn stop(stats: &AbuseStats) {
    stats.stop.store(true, Ordering::Relaxed);
}

fn stopped(stats: &AbuseStats) -> bool {
    stats.stop.load(Ordering::Relaxed)
}

async fn idle_connection(endpoint: quinn::Endpoint, addr: SocketAddr, stats: Arc<AbuseStats>) {
    while !stopped(&stats) {
        match RelayClient::connect_with(endpoint.clone(), addr).await {
            Ok(client) => {
                stats.idle_open.fetch_add(1, Ordering::Relaxed);
                tokio::select! {
                    _ = client.connection().closed() => {
                        stats.refused.fetch_add(1, Ordering::Relaxed);
                    }
                    _ = until_stopped(&stats) => {}
                }
                stats.idle_open.fetch_sub(1, Ordering::Relaxed);
                client.connection().close(0u32.into(), b"");
            }
            Err(_) => {
                stats.refused.fetch_add(1, Ordering::Relaxed);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn until_stopped(stats: &AbuseStats) {
    while !stopped(stats) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A pull whose answer is never read, sent again whenever the relay resets it.
async fn stalled_pull(client: Arc<RelayClient>, stats: Arc<AbuseStats>) {
    let frame = Bytes::from(encode_frame(&Request {
        kind: Some(request::Kind::Pull(proto::Pull::default())),
    }));
    while !stopped(&stats) {
        let Ok((mut send, mut recv)) = client.connection().open_bi().await else {
            return;
        };
        if send.write_chunk(frame.clone()).await.is_err() {
            return;
        }
        let _ = send.finish();
        stats.stalled_sent.fetch_add(1, Ordering::Relaxed);
        // Never read: wait until the relay resets the stream (its request timeout).
        tokio::select! {
            _ = recv.received_reset() => {}
            _ = until_stopped(&stats) => {}
        }
    }
}

/// Oversized request frames back to back: each announces one byte more than the largest
/// frame the relay takes and sends a little of it. When the relay closes the connection (too
/// many bad frames), the flooder connects again and goes on.
async fn flood(endpoint: quinn::Endpoint, addr: SocketAddr, stats: Arc<AbuseStats>) {
    let max = kith_relay::Bounds::default().max_frame_bytes;
    let mut frame = (max + 1).to_be_bytes().to_vec();
    frame.extend_from_slice(&[0u8; 16 * 1024]);
    let frame = Bytes::from(frame);
    while !stopped(&stats) {
        let Ok(client) = RelayClient::connect_with(endpoint.clone(), addr).await else {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        while !stopped(&stats) {
            if client.call_frame(frame.clone()).await.is_err() {
                stats.refused.fetch_add(1, Ordering::Relaxed);
                break;
            }
            stats.oversized_sent.fetch_add(1, Ordering::Relaxed);
        }
    }
}
