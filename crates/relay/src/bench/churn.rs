//! `kith-relay bench --churn N`: N sequential connect, authenticate, push, pull, close cycles
//! over `--accounts` accounts (or the first `--active` of them), reporting the relay's RSS
//! before, every `--report-every` cycles and after. What a relay serving phones sees: each
//! reconnects many times a day, from a new UDP port, and does a little each time. Memory that
//! grows with the cycles is memory the relay keeps per connection it has ever served.
//!
//! Keys are derived from `--seed` and the account's index, so a later run on the same
//! `--data` directory finds the accounts an earlier run created (to measure a relay that
//! starts on 100,000 accounts, say) instead of creating them again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use kith_protocol::ids::AccountId;
use kith_protocol::keys::{AccountSigningKey, DeviceSigningKey};
use kith_protocol::proto::{self, ErrorCode};
use kith_relay::client::{RelayClient, shared_endpoint};
use kith_relay::wire;
use sha2::{Digest, Sha256};

use super::{envelope, genesis_with, rss_kib};

/// Connections opened at once while setting the accounts up (not part of the measurement).
const SETUP_PARALLEL: usize = 32;

/// One account of the run: one device.
struct BenchAccount {
    account: AccountId,
    account_key: AccountSigningKey,
    key: DeviceSigningKey,
    /// The stream's last seq, as the relay acknowledged it.
    last_seq: u64,
}

/// A 32-byte secret for (seed, index, role): the same run parameters give the same keys.
fn derived_secret(seed: u64, index: usize, role: &str) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(b"kith-relay bench churn v1\0");
    hash.update(seed.to_le_bytes());
    hash.update((index as u64).to_le_bytes());
    hash.update(role.as_bytes());
    hash.finalize().into()
}

fn bench_account(seed: u64, index: usize) -> Result<BenchAccount> {
    let account_key =
        AccountSigningKey::from_secret_bytes(&derived_secret(seed, index, "account"))?;
    let key = DeviceSigningKey::from_secret_bytes(&derived_secret(seed, index, "device"))?;
    Ok(BenchAccount {
        account: account_key.public().account_id(),
        account_key,
        key,
        last_seq: 0,
    })
}

/// Creates the account, or (if an earlier run on the same data did) finds its stream's last
/// seq. Returns whether it was created.
async fn set_up(client: &RelayClient, account: &mut BenchAccount) -> Result<bool> {
    let roster = genesis_with(&account.account_key, std::slice::from_ref(&account.key));
    match client
        .create_account(roster, &account.key, &account.account, None)
        .await
    {
        Ok(()) => return Ok(true),
        Err(err) if err.code() == Some(ErrorCode::AccountExists) => {}
        Err(err) => return Err(err).context("creating an account"),
    }
    client.authenticate(&account.key, &account.account).await?;
    // A cursor past the end: no envelopes, just the stream bounds.
    let page = client
        .pull(
            vec![proto::Cursor {
                device_id: account.key.device_id().as_bytes().to_vec(),
                after_seq: u64::MAX,
            }],
            1,
            0,
        )
        .await?;
    account.last_seq = page.streams.iter().map(|s| s.last_seq).max().unwrap_or(0);
    Ok(false)
}

fn rss_line(relay_pid: Option<u32>) -> String {
    match relay_pid.and_then(rss_kib) {
        Some((peak, now)) => format!(
            "relay RSS {:.1} MB (peak {:.1} MB)",
            now as f64 / 1024.0,
            peak as f64 / 1024.0
        ),
        None => "relay RSS unknown (no --relay-pid)".into(),
    }
}

/// The churn parameters (see `BenchArgs`).
pub(super) struct Churn {
    pub cycles: u64,
    pub accounts: usize,
    pub active: usize,
    pub report_every: u64,
    pub seed: u64,
    pub size: usize,
    /// Whether each cycle pushes an envelope.
    pub push: bool,
}

/// One cycle: a new client endpoint (a new UDP port, as a phone that reconnects has),
/// connect, authenticate, push one envelope, pull what is new, close. The close drains in the
/// background (its endpoint lives until it has): waiting for it would make the cycle wait out
/// quinn's drain period (three probe timeouts), not the relay.
async fn cycle(
    addr: SocketAddr,
    pin: [u8; 32],
    account: &mut BenchAccount,
    body: Option<&[u8]>,
) -> Result<()> {
    let client = RelayClient::connect(addr, pin).await?;
    client.authenticate(&account.key, &account.account).await?;
    let device = account.key.device_id();
    let Some(body) = body else {
        let cursor = proto::Cursor {
            device_id: device.as_bytes().to_vec(),
            after_seq: account.last_seq,
        };
        client.pull(vec![cursor], 0, 0).await?;
        client.connection().close(0u32.into(), b"bye");
        return Ok(());
    };
    let seq = account.last_seq + 1;
    let frame = wire::push_frame(&wire::Push {
        envelopes: vec![Bytes::from(envelope(&account.account, &device, seq, body))],
    });
    let acked = client.push_frame(frame).await?;
    if acked != seq {
        bail!("pushed seq {seq}, the relay acknowledged {acked}");
    }
    let page = client
        .pull(
            vec![proto::Cursor {
                device_id: device.as_bytes().to_vec(),
                after_seq: account.last_seq,
            }],
            0,
            0,
        )
        .await?;
    if page.envelopes.len() != 1 || page.envelopes[0].seq != seq {
        bail!(
            "the pull after seq {} did not return seq {seq}",
            account.last_seq
        );
    }
    account.last_seq = seq;
    client.connection().close(0u32.into(), b"bye");
    Ok(())
}

pub(super) async fn run(
    churn: Churn,
    addr: SocketAddr,
    pin: [u8; 32],
    relay_pid: Option<u32>,
) -> Result<()> {
    let active = if churn.active == 0 {
        churn.accounts
    } else {
        churn.active.min(churn.accounts)
    };
    println!(
        "churn: {} cycles over {active} of {} accounts (seed {}){}",
        churn.cycles,
        churn.accounts,
        churn.seed,
        if churn.push { "" } else { ", no push" }
    );
    println!("at start: {}", rss_line(relay_pid));

    // Setup: every account exists (created now, or by an earlier run on the same data).
    let start = Instant::now();
    let endpoints: Vec<quinn::Endpoint> = (0..4)
        .map(|_| shared_endpoint(pin))
        .collect::<Result<_, _>>()?;
    let mut accounts = Vec::with_capacity(churn.accounts);
    let mut created = 0usize;
    let indices: Vec<usize> = (0..churn.accounts).collect();
    for chunk in indices.chunks(SETUP_PARALLEL * 8) {
        let mut tasks = Vec::new();
        for lane in chunk.chunks(chunk.len().div_ceil(SETUP_PARALLEL)) {
            let lane = lane.to_vec();
            let endpoint = endpoints[lane[0] % endpoints.len()].clone();
            let seed = churn.seed;
            tasks.push(tokio::spawn(async move {
                let mut done = Vec::with_capacity(lane.len());
                let mut created = 0usize;
                for index in lane {
                    let mut account = bench_account(seed, index)?;
                    let client = RelayClient::connect_with(endpoint.clone(), addr).await?;
                    created += usize::from(set_up(&client, &mut account).await?);
                    client.connection().close(0u32.into(), b"bye");
                    done.push(account);
                }
                anyhow::Ok((done, created))
            }));
        }
        for task in tasks {
            let (done, n) = task.await??;
            accounts.extend(done);
            created += n;
        }
    }
    for endpoint in &endpoints {
        endpoint.wait_idle().await;
    }
    drop(endpoints);
    println!(
        "setup: {} accounts ({created} created, {} found) in {:.1} s",
        accounts.len(),
        accounts.len() - created,
        start.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!("after setup: {}", rss_line(relay_pid));

    // The cycles, one after another.
    let ciphertext_len = kith_protocol::envelope::ciphertext_len(churn.size);
    let body: Arc<[u8]> = (0..ciphertext_len).map(|i| (i * 131 % 251) as u8).collect();
    let start = Instant::now();
    let mut peak_during = 0u64;
    for i in 0..churn.cycles {
        let index = (i % active as u64) as usize;
        cycle(
            addr,
            pin,
            &mut accounts[index],
            churn.push.then_some(&*body),
        )
        .await
        .with_context(|| format!("cycle {}", i + 1))?;
        let done = i + 1;
        if let Some((_, now)) = relay_pid.and_then(rss_kib) {
            peak_during = peak_during.max(now);
        }
        if churn.report_every > 0 && done % churn.report_every == 0 {
            println!(
                "after {done} connections ({:.0}/s): {}",
                done as f64 / start.elapsed().as_secs_f64(),
                rss_line(relay_pid)
            );
        }
    }
    if churn.cycles > 0 {
        println!(
            "churn: {} connections in {:.1} s; highest relay RSS seen during the cycles {:.1} MB",
            churn.cycles,
            start.elapsed().as_secs_f64(),
            peak_during as f64 / 1024.0
        );
    }
    // Closed connections drain within a few round trips; wait well past that.
    tokio::time::sleep(Duration::from_secs(5)).await;
    println!("after: {}", rss_line(relay_pid));
    Ok(())
}
