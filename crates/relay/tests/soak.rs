//! Soak: a few thousand connections through one in-process relay, the ways clients really use
//! and abandon them; afterwards no per-connection structure may survive, and the per-account
//! and per-key ones must be within their bounds.
//!
//! It counts live objects (`RelayHandle::memory`) instead of measuring time or RSS, so it does
//! not flake on a busy machine: the only wait is for the relay to notice that abandoned
//! connections are gone (its idle timeout, 2 s here), bounded by the test timeout. RSS over
//! 100,000 connections is `kith-relay bench --churn` (BENCHMARKS.md).
//!
//! `KITH_SOAK_CONNECTIONS` changes the number of connections (default 2,400).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{TestAccount, TestRelay, envelope};
use kith_protocol::proto::{self, ErrorCode, request};
use kith_relay::MemoryCounts;
use kith_relay::client::{RelayClient, RelayClientError, shared_endpoint};

/// Idle accounts the relay may keep: far fewer than the accounts the soak goes through.
const CACHED_ACCOUNTS: usize = 16;
/// Accounts the connections go round.
const ACCOUNTS: usize = 120;
/// Connections run side by side (each lane runs its share one after another).
const LANES: usize = 8;

fn connections() -> usize {
    std::env::var("KITH_SOAK_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2400)
}

/// One of the ways a connection is used and left.
#[derive(Debug, Clone, Copy)]
enum Visit {
    /// Authenticate, push one envelope, pull it back, close.
    Sync,
    /// Authenticate, subscribe, and close with the subscription open.
    Subscribe,
    /// Ask for a challenge and never authenticate.
    Challenge,
    /// An unauthenticated lookup (a pairing slot that does not exist).
    Lookup,
    /// Authenticate, start a push frame and close before finishing it.
    HalfRequest,
    /// Authenticate and vanish without closing: the relay learns of it only by its idle
    /// timeout.
    Abandon,
}

const VISITS: [Visit; 6] = [
    Visit::Sync,
    Visit::Subscribe,
    Visit::Challenge,
    Visit::Lookup,
    Visit::HalfRequest,
    Visit::Abandon,
];

struct Member {
    account: TestAccount,
    /// Last seq pushed by device 0.
    last_seq: u64,
}

async fn visit(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    pin: [u8; 32],
    member: &mut Member,
    how: Visit,
) {
    // Abandoned connections get an endpoint of their own, dropped without a close: to the
    // relay the client has simply gone (a phone losing its network).
    let client = match how {
        Visit::Abandon => RelayClient::connect(addr, pin).await.unwrap(),
        _ => RelayClient::connect_with(endpoint.clone(), addr)
            .await
            .unwrap(),
    };
    let account = &member.account;
    let device = account.device(0);
    match how {
        Visit::Sync => {
            client.authenticate(device, &account.id).await.unwrap();
            let seq = member.last_seq + 1;
            let pushed = vec![envelope(&account.id, &device.device_id(), seq, 64)];
            assert_eq!(client.push(pushed).await.unwrap(), seq);
            let cursor = proto::Cursor {
                device_id: device.device_id().as_bytes().to_vec(),
                after_seq: member.last_seq,
            };
            let page = client.pull(vec![cursor], 0, 0).await.unwrap();
            assert_eq!(page.envelopes.len(), 1);
            member.last_seq = seq;
        }
        Visit::Subscribe => {
            client.authenticate(device, &account.id).await.unwrap();
            let subscription = client.subscribe().await.unwrap();
            // Closed with the subscription open: the connection's end must end it.
            client.connection().close(0u32.into(), b"bye");
            drop(subscription);
            return;
        }
        Visit::Challenge => {
            client.challenge().await.unwrap();
        }
        Visit::Lookup => {
            let take = request::Kind::TakePairingSlot(proto::TakePairingSlot {
                slot_id: vec![7; 32],
                wait_ms: 0,
            });
            let refused = client.request(take).await.unwrap_err();
            assert!(
                matches!(&refused, RelayClientError::Refused { code, .. } if *code == ErrorCode::NotFound),
                "{refused:?}"
            );
        }
        Visit::HalfRequest => {
            client.authenticate(device, &account.id).await.unwrap();
            let (mut send, recv) = client.connection().open_bi().await.unwrap();
            // A frame header announcing 1,000 bytes, and 3 of them; then the connection
            // closes under the relay's read.
            send.write_all(&[0, 0, 3, 232, 1, 2, 3]).await.unwrap();
            client.connection().close(0u32.into(), b"bye");
            drop((send, recv));
            return;
        }
        Visit::Abandon => {
            client.authenticate(device, &account.id).await.unwrap();
            drop(client);
            return;
        }
    }
    client.connection().close(0u32.into(), b"bye");
}

/// Waits until the relay's counts satisfy `done` (the relay notices closed and abandoned
/// connections asynchronously); returns the last counts either way.
async fn settle(relay: &TestRelay, done: impl Fn(&MemoryCounts) -> bool) -> MemoryCounts {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let counts = relay.handle.memory();
        if done(&counts) || std::time::Instant::now() > deadline {
            return counts;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn nothing_per_connection(c: &MemoryCounts) -> bool {
    c.quic_connections == 0 && c.connections == 0 && c.requests == 0 && c.subscriptions == 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_per_connection_state_survives_thousands_of_connections() {
    let total = connections();
    tokio::time::timeout(Duration::from_secs(600), async {
        let relay = TestRelay::start_with(|config| {
            config.cached_accounts = CACHED_ACCOUNTS;
            config.sweep_interval = Duration::from_millis(200);
            config.bounds.idle_timeout = Duration::from_secs(2);
            // Buckets refill within milliseconds, so a sweep finds every idle one full.
            config.bounds.requests_per_second = 100_000;
            config.bounds.request_burst = 50;
            config.bounds.lookups_per_minute = 1_000_000;
            // Thousands of connections from one address: its handshake bucket refills at
            // once too.
            config.bounds.handshakes_per_address_per_minute = 60_000_000;
        })
        .await;
        let (addr, pin) = (relay.handle.local_addr(), relay.handle.cert_sha256());
        assert_eq!(relay.handle.memory().connections, 0);

        // The accounts, each created on a connection of its own.
        let endpoint = shared_endpoint(pin).unwrap();
        let mut members = Vec::with_capacity(ACCOUNTS);
        for _ in 0..ACCOUNTS {
            let account = TestAccount::new(1);
            let client = RelayClient::connect_with(endpoint.clone(), addr)
                .await
                .unwrap();
            account.create(&client).await;
            client.connection().close(0u32.into(), b"bye");
            members.push(Member {
                account,
                last_seq: 0,
            });
        }

        // The soak: LANES lanes, each going through its accounts one connection at a time.
        let per_lane = total.div_ceil(LANES);
        let mut lanes = Vec::new();
        let mut members = members.into_iter();
        for lane in 0..LANES {
            let mut mine: Vec<Member> = members.by_ref().take(ACCOUNTS / LANES).collect();
            let endpoint = shared_endpoint(pin).unwrap();
            lanes.push(tokio::spawn(async move {
                for i in 0..per_lane {
                    let how = VISITS[(i + lane) % VISITS.len()];
                    let n = mine.len();
                    visit(&endpoint, addr, pin, &mut mine[i % n], how).await;
                }
                endpoint.wait_idle().await;
                mine
            }));
        }
        let mut members = Vec::new();
        for lane in lanes {
            members.extend(lane.await.unwrap());
        }
        endpoint.wait_idle().await;
        let pushed: u64 = members.iter().map(|m| m.last_seq).sum();
        assert!(pushed > 0);

        let counts = settle(&relay, |c| {
            nothing_per_connection(c)
                && c.notification_channels == 0
                && c.device_buckets == 0
                && c.accounts <= CACHED_ACCOUNTS
        })
        .await;
        eprintln!("{total} connections, {pushed} envelopes pushed; then {counts:?}");
        // Per connection: nothing at all.
        assert_eq!(
            counts.quic_connections, 0,
            "QUIC connections left: {counts:?}"
        );
        assert_eq!(counts.connections, 0, "connection states left: {counts:?}");
        assert_eq!(counts.requests, 0, "request tasks left: {counts:?}");
        assert_eq!(counts.subscriptions, 0, "subscriptions left: {counts:?}");
        // Per account: only the cache, within its bound, and no notification channel
        // without a subscriber.
        assert_eq!(counts.notification_channels, 0, "channels left: {counts:?}");
        assert!(
            counts.cached_accounts <= CACHED_ACCOUNTS,
            "{} accounts cached, bound {CACHED_ACCOUNTS}",
            counts.cached_accounts
        );
        assert_eq!(
            counts.accounts, counts.cached_accounts,
            "accounts alive outside the cache: {counts:?}"
        );
        // Per key: buckets that refilled are dropped; lookups came from one address.
        assert_eq!(counts.device_buckets, 0, "device buckets left: {counts:?}");
        assert!(counts.address_buckets <= 1, "address buckets: {counts:?}");

        // Evicted accounts come back from storage whole: every envelope pushed is served.
        for member in members.iter().step_by(7) {
            let client = relay.connect().await;
            let device = member.account.device(0);
            client
                .authenticate(device, &member.account.id)
                .await
                .unwrap();
            let page = client.pull(vec![], 0, 0).await.unwrap();
            let seqs: Vec<u64> = page.envelopes.iter().map(|e| e.seq).collect();
            assert_eq!(seqs, (1..=member.last_seq).collect::<Vec<_>>());
            client.close().await;
        }
        relay.handle.shutdown().await.unwrap();
    })
    .await
    .expect("soak timed out");
}
