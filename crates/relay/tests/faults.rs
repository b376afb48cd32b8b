//! Fault injection against a real relay (issue 6): `kill -9` during concurrent pushes, a full
//! disk (injected through the `Store` trait, and a real size-limited tmpfs when run as root),
//! and abusive clients — stalled handshakes, idle connections, requests that never finish,
//! too many streams, oversized and endless frames, request floods — cut off while a
//! well-behaved client keeps being served.
//!
//! Everything runs on loopback and every loop is bounded in count and time. The tests take a
//! shared lock so that they run one at a time: the latency bounds are measured on a 2-core
//! machine shared with other builds, and must not also compete with each other.
//!
//! Latency bound: a well-behaved client doing one push and one pull every 25 ms must see a p99
//! request latency of at most [`LATENCY_BOUND`] (500 ms) while an abuser runs. Unloaded, the
//! same round trips take about 1 ms in a debug build; the bound leaves room for a busy
//! machine while still catching an abuser that stalls the relay (every timeout below is ≥ 1 s).
//!
//! Knobs: `KITH_FAULT_SEED` replays the kill -9 schedule of a failed run (the seed is printed),
//! `KITH_FAULT_ROUNDS` sets its number of kills (default 20).

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::faulty_store::{FaultyStore, INJECTED};
use common::latency::{LatencyReport, WellBehaved};
use common::process::RelayProcess;
use common::rng::{SplitMix64, mix, seed_from_env};
use common::{TestAccount, TestRelay, envelope, envelope_with, envelopes};
use kith_protocol::ids::DeviceId;
use kith_protocol::proto::{self, Cursor, ErrorCode, StreamInfo, request, response};
use kith_relay::client::{ClientError, RelayClient};
use kith_relay::frame::{encode_frame, read_message};
use kith_relay::store::SledStore;
use kith_relay::{Relay, RelayConfig};

/// One test at a time (see the module docs).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// p99 request latency a well-behaved client must see while an abuser runs.
const LATENCY_BOUND: Duration = Duration::from_millis(500);
/// The well-behaved client's pace: one push and one pull per tick.
const GOOD_INTERVAL: Duration = Duration::from_millis(25);

/// Runs `body` with the serial lock held and a time bound.
async fn serial<F: std::future::Future<Output = ()>>(bound: Duration, body: F) {
    let _guard = SERIAL.lock().await;
    let started = Instant::now();
    tokio::time::timeout(bound, body)
        .await
        .unwrap_or_else(|_| panic!("test exceeded its bound of {bound:?}"));
    println!("took {:?}", started.elapsed());
}

fn code<T: std::fmt::Debug>(result: Result<T, ClientError>) -> ErrorCode {
    match result {
        Err(err) => err.code().unwrap_or_else(|| panic!("not a refusal: {err}")),
        Ok(value) => panic!("expected a refusal, got {value:?}"),
    }
}

/// Every envelope of the account, per device, in the order served, and the streams' bounds.
async fn pull_account(
    client: &RelayClient,
) -> (HashMap<DeviceId, Vec<(u64, Vec<u8>)>>, Vec<StreamInfo>) {
    let mut cursors: HashMap<Vec<u8>, u64> = HashMap::new();
    let mut streams: HashMap<DeviceId, Vec<(u64, Vec<u8>)>> = HashMap::new();
    for _page in 0..10_000 {
        let page = client
            .pull(
                cursors
                    .iter()
                    .map(|(device_id, &after_seq)| Cursor {
                        device_id: device_id.clone(),
                        after_seq,
                    })
                    .collect(),
                0,
                0,
            )
            .await
            .unwrap();
        for stored in page.envelopes {
            let device = DeviceId::from_slice(&stored.device_id).unwrap();
            cursors.insert(stored.device_id, stored.seq);
            streams
                .entry(device)
                .or_default()
                .push((stored.seq, stored.envelope));
        }
        if !page.more {
            return (streams, page.streams);
        }
    }
    panic!("pull did not end");
}

// ---------------------------------------------------------------------------------------------
// kill -9 during concurrent pushes
// ---------------------------------------------------------------------------------------------

/// One device's stream as its writer knows it.
struct Writer {
    account: Arc<TestAccount>,
    device_index: usize,
    /// Highest seq the relay acknowledged (or that survived a restart).
    acked: u64,
    /// Highest seq ever sent in a push.
    attempted: u64,
}

impl Writer {
    fn device(&self) -> DeviceId {
        self.account.device(self.device_index).device_id()
    }

    /// The envelope this writer sends at `seq`: size and contents depend on the seed, the
    /// device and the seq, so the verifier can recompute every byte.
    fn envelope(&self, seed: u64, seq: u64) -> Vec<u8> {
        expected_envelope(&self.account, self.device_index, seed, seq)
    }
}

fn expected_envelope(account: &TestAccount, device_index: usize, seed: u64, seq: u64) -> Vec<u8> {
    let device = account.device(device_index).device_id();
    let h = mix(seed ^ mix(u64::from_le_bytes(
        device.as_bytes()[..8].try_into().unwrap(),
    )) ^ seq);
    envelope_with(
        &account.id,
        &device,
        seq,
        32 + (h % 300) as usize,
        (h >> 32) as u8,
    )
}

/// Connects and authenticates as the writer's device.
async fn connect_writer(relay: &RelayProcess, writer: &Writer) -> RelayClient {
    let client = relay.connect().await;
    client
        .authenticate(writer.account.device(writer.device_index), &writer.account.id)
        .await
        .unwrap();
    client
}

/// After a restart: each writer's stream is exactly seqs 1..=L, byte-identical to what the
/// writer sent, with every acknowledged seq present (L ≥ acked) and nothing it never sent
/// (L ≤ attempted). Returns how many streams kept an unacknowledged batch.
async fn verify_after_restart(relay: &RelayProcess, writers: &mut [Writer], seed: u64) -> usize {
    let mut unacked_kept = 0;
    let mut by_account: HashMap<_, Vec<usize>> = HashMap::new();
    for (i, writer) in writers.iter().enumerate() {
        by_account.entry(writer.account.id).or_default().push(i);
    }
    for indices in by_account.values() {
        let client = connect_writer(relay, &writers[indices[0]]).await;
        let (streams, infos) = pull_account(&client).await;
        assert!(
            streams.len() <= indices.len() && infos.len() <= indices.len(),
            "streams of unknown devices appeared"
        );
        for &i in indices {
            let writer = &mut writers[i];
            let device = writer.device();
            let stored = streams.get(&device).map_or(&[][..], Vec::as_slice);
            for (at, (seq, bytes)) in stored.iter().enumerate() {
                assert_eq!(*seq, at as u64 + 1, "writer {i}: the stream has a gap");
                assert!(
                    *bytes == writer.envelope(seed, *seq),
                    "writer {i}: envelope {seq} is not what was sent"
                );
            }
            let last = stored.len() as u64;
            assert!(
                last >= writer.acked,
                "writer {i}: acknowledged up to {}, found up to {last}",
                writer.acked
            );
            assert!(
                last <= writer.attempted,
                "writer {i}: found {last}, more than the {} ever sent",
                writer.attempted
            );
            let info = infos
                .iter()
                .find(|s| s.device_id == device.as_bytes())
                .map_or((0, 0), |s| (s.first_seq, s.last_seq));
            assert_eq!(
                info,
                (u64::from(last > 0), last),
                "writer {i}: stream bounds"
            );
            if last > writer.acked {
                unacked_kept += 1;
            }
            writer.acked = last;
            writer.attempted = last;
        }
    }
    unacked_kept
}

/// After verification: a resent unacknowledged-but-kept batch is acknowledged again, a push
/// beyond last + 1 is a gap, and last + 1 is accepted.
async fn check_next_push(client: &RelayClient, writer: &mut Writer, seed: u64) {
    let last = writer.acked;
    if last > 0 {
        let resend = (last.saturating_sub(3).max(1)..=last)
            .map(|s| writer.envelope(seed, s))
            .collect();
        assert_eq!(client.push(resend).await.unwrap(), last, "identical resend");
    }
    assert_eq!(
        code(client.push(vec![writer.envelope(seed, last + 2)]).await),
        ErrorCode::SeqGap
    );
    assert_eq!(
        client
            .push(vec![writer.envelope(seed, last + 1)])
            .await
            .unwrap(),
        last + 1,
        "the relay accepts last + 1 after a restart"
    );
    writer.acked = last + 1;
    writer.attempted = last + 1;
}

/// Writers push as fast as they can; rate limits are not what this test is about.
const UNLIMITED_RATE: &[&str] = &["--requests-per-second", "100000", "--request-burst", "100000"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_push_survives_kill_9_at_random_points() {
    serial(Duration::from_secs(180), async {
        let seed = seed_from_env("KITH_FAULT_SEED");
        let rounds: u64 = std::env::var("KITH_FAULT_ROUNDS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(20);
        let mut rng = SplitMix64::new(seed);
        let dir = tempfile::tempdir().unwrap();
        // Two accounts of two devices: four writers, each with its own connection.
        let accounts: Vec<Arc<TestAccount>> =
            (0..2).map(|_| Arc::new(TestAccount::new(2))).collect();
        let mut writers: Vec<Writer> = accounts
            .iter()
            .flat_map(|account| {
                (0..2).map(|device_index| Writer {
                    account: account.clone(),
                    device_index,
                    acked: 0,
                    attempted: 0,
                })
            })
            .collect();
        {
            let relay = RelayProcess::spawn(dir.path(), &[]);
            for account in &accounts {
                account.create(&relay.connect().await).await;
            }
        }
        let started = Instant::now();
        let (mut total_kept, mut total_acked_at_kill) = (0, 0u64);
        for round in 0..rounds {
            let mut relay = RelayProcess::spawn(dir.path(), UNLIMITED_RATE);
            total_kept += verify_after_restart(&relay, &mut writers, seed).await;
            let mut clients = Vec::new();
            for writer in writers.iter_mut() {
                let client = connect_writer(&relay, writer).await;
                check_next_push(&client, writer, seed).await;
                clients.push(client);
            }
            // Concurrent pushes of random batches, then kill -9 after a random delay.
            let mut tasks = Vec::new();
            let mut progress = Vec::new();
            for (w, (writer, client)) in writers.iter().zip(clients).enumerate() {
                let acked = Arc::new(AtomicU64::new(writer.acked));
                let attempted = Arc::new(AtomicU64::new(writer.attempted));
                progress.push((acked.clone(), attempted.clone()));
                let account = writer.account.clone();
                let device_index = writer.device_index;
                let mut batch_rng = SplitMix64::new(seed ^ mix(round << 8 | w as u64));
                tasks.push(tokio::spawn(async move {
                    let mut next = acked.load(Ordering::SeqCst) + 1;
                    for _ in 0..100_000 {
                        let n = batch_rng.range(1, 16);
                        let batch = (next..next + n)
                            .map(|s| expected_envelope(&account, device_index, seed, s))
                            .collect();
                        attempted.store(next + n - 1, Ordering::SeqCst);
                        match client.push(batch).await {
                            Ok(last) => {
                                assert_eq!(last, next + n - 1, "ack of the whole batch");
                                acked.store(last, Ordering::SeqCst);
                                next = last + 1;
                            }
                            // A dead relay cannot refuse: a refusal is a bug.
                            Err(err) if err.code().is_some() => panic!("push refused: {err}"),
                            Err(_) => return, // the relay died
                        }
                    }
                }));
            }
            let delay = Duration::from_millis(rng.range(0, 300));
            tokio::time::sleep(delay).await;
            relay.kill9();
            // QUIC notices a dead peer only at the idle timeout; no ack can come from a dead
            // process, so what the writers recorded is final. Stop them, keeping their panics.
            for task in tasks {
                task.abort();
                if let Err(join) = task.await {
                    if join.is_panic() {
                        std::panic::resume_unwind(join.into_panic());
                    }
                }
            }
            let mut acked_now = 0;
            for (writer, (acked, attempted)) in writers.iter_mut().zip(progress) {
                let (was, acked) = (writer.acked, acked.load(Ordering::SeqCst));
                writer.acked = acked;
                writer.attempted = attempted.load(Ordering::SeqCst);
                acked_now += acked - was;
            }
            total_acked_at_kill += acked_now;
            println!(
                "round {round}: kill -9 after {delay:?}, {acked_now} envelopes acknowledged this round"
            );
        }
        let relay = RelayProcess::spawn(dir.path(), UNLIMITED_RATE);
        total_kept += verify_after_restart(&relay, &mut writers, seed).await;
        let total: u64 = writers.iter().map(|w| w.acked).sum();
        println!(
            "{rounds} kills in {:?}: {total} envelopes stored, {total_acked_at_kill} acknowledged \
             during push phases, {total_kept} streams kept an unacknowledged batch",
            started.elapsed()
        );
        assert!(total_acked_at_kill > 0, "no push was acknowledged before a kill");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// A full disk
// ---------------------------------------------------------------------------------------------

/// What a client is told when the relay cannot store.
const STORAGE_MESSAGE: &str = "the relay could not store durably; retry later";

fn assert_storage_refusal<T: std::fmt::Debug>(result: Result<T, ClientError>, what: &str) {
    match result {
        Err(ClientError::Refused { code, message }) => {
            assert_eq!(code, ErrorCode::Storage, "{what}: {message}");
            assert_eq!(message, STORAGE_MESSAGE, "{what}");
        }
        other => panic!("{what}: expected a storage refusal, got {other:?}"),
    }
}

/// Starts the in-process relay on `dir` in front of a [`FaultyStore`].
async fn relay_on_faulty_store(
    dir: &Path,
) -> (kith_relay::RelayHandle, Arc<FaultyStore>, SocketAddr, [u8; 32]) {
    let config = RelayConfig::for_tests(dir);
    let sled = SledStore::open(
        &kith_relay::db_dir(dir),
        config.cache_bytes,
        config.store_value_bytes as usize,
    )
    .unwrap();
    let store = Arc::new(FaultyStore::new(sled));
    let handle = Relay::start_with_store(config, store.clone()).await.unwrap();
    let (addr, pin) = (handle.local_addr(), handle.cert_sha256());
    (handle, store, addr, pin)
}

/// The whole stream of the client's own device: seqs and bytes.
async fn own_stream(client: &RelayClient, device: &DeviceId) -> Vec<(u64, Vec<u8>)> {
    let (mut streams, _) = pull_account(client).await;
    streams.remove(device).unwrap_or_default()
}

fn expected_stream(account: &TestAccount, last: u64, size: usize) -> Vec<(u64, Vec<u8>)> {
    let device = account.device(0).device_id();
    (1..=last)
        .map(|s| (s, envelope(&account.id, &device, s, size)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_writes_and_flushes_give_storage_errors_and_lose_nothing() {
    serial(Duration::from_secs(60), async {
        let dir = tempfile::tempdir().unwrap();
        let (handle, store, addr, pin) = relay_on_faulty_store(dir.path()).await;
        let (a, b) = (TestAccount::new(1), TestAccount::new(1));
        let (da, db) = (a.device(0).device_id(), b.device(0).device_id());
        let client_a = RelayClient::connect(addr, pin).await.unwrap();
        a.create(&client_a).await;
        let client_b = RelayClient::connect(addr, pin).await.unwrap();
        b.create(&client_b).await;
        assert_eq!(client_a.push(envelopes(&a.id, &da, 1, 10, 300)).await.unwrap(), 10);
        assert_eq!(client_b.push(envelopes(&b.id, &db, 1, 5, 300)).await.unwrap(), 5);

        // The disk is full: every write fails.
        store.fail_writes_after(0);
        let batch = envelopes(&a.id, &da, 11, 5, 300);
        assert_storage_refusal(client_a.push(batch.clone()).await, "push on a full disk");
        // The same connection keeps working for reads, and nothing of the batch is visible.
        assert_eq!(own_stream(&client_a, &da).await, expected_stream(&a, 10, 300));
        client_a
            .request(request::Kind::GetUsage(proto::GetUsage {}))
            .await
            .unwrap();
        // Other accounts: new connections authenticate and read; their writes fail alike.
        let client_b2 = RelayClient::connect(addr, pin).await.unwrap();
        client_b2.authenticate(b.device(0), &b.id).await.unwrap();
        assert_eq!(own_stream(&client_b2, &db).await, expected_stream(&b, 5, 300));
        assert_storage_refusal(
            client_b.push(envelopes(&b.id, &db, 6, 1, 300)).await,
            "another account's push",
        );
        let c = TestAccount::new(1);
        let client_c = RelayClient::connect(addr, pin).await.unwrap();
        assert_storage_refusal(
            client_c
                .create_account(c.roster(), c.device(0), &c.id, None)
                .await,
            "account creation",
        );

        // Space is freed: the same push now succeeds, and so does everything else.
        store.heal();
        assert_eq!(client_a.push(batch).await.unwrap(), 15);
        assert_eq!(client_b.push(envelopes(&b.id, &db, 6, 1, 300)).await.unwrap(), 6);
        c.create(&client_c).await;

        // fsync fails: the write reached the store but is not durable, so no ack; resending
        // the same batch once flushing works is acknowledged (an identical retransmit).
        store.fail_flushes(true);
        let batch = envelopes(&a.id, &da, 16, 5, 300);
        assert_storage_refusal(client_a.push(batch.clone()).await, "push when fsync fails");
        assert_storage_refusal(client_a.push(batch.clone()).await, "resend when fsync fails");
        store.heal();
        assert_eq!(client_a.push(batch).await.unwrap(), 20);

        // The disk fills up after two more writes.
        store.fail_writes_after(2);
        assert_eq!(client_a.push(envelopes(&a.id, &da, 21, 1, 300)).await.unwrap(), 21);
        assert_eq!(client_a.push(envelopes(&a.id, &da, 22, 1, 300)).await.unwrap(), 22);
        assert_storage_refusal(
            client_a.push(envelopes(&a.id, &da, 23, 1, 300)).await,
            "push after the budget",
        );
        store.heal();
        assert!(store.injected() >= 6, "{} failures injected", store.injected());

        // Nothing acknowledged was lost: restart on the same data with the plain store.
        for client in [client_a, client_b, client_b2, client_c] {
            client.close().await;
        }
        handle.shutdown().await.unwrap();
        drop(store);
        let relay = Relay::start(RelayConfig::for_tests(dir.path())).await.unwrap();
        let client = RelayClient::connect(relay.local_addr(), relay.cert_sha256())
            .await
            .unwrap();
        client.authenticate(a.device(0), &a.id).await.unwrap();
        assert_eq!(own_stream(&client, &da).await, expected_stream(&a, 22, 300));
        assert_eq!(client.push(envelopes(&a.id, &da, 23, 1, 300)).await.unwrap(), 23);
        let client = RelayClient::connect(relay.local_addr(), relay.cert_sha256())
            .await
            .unwrap();
        client.authenticate(b.device(0), &b.id).await.unwrap();
        assert_eq!(own_stream(&client, &db).await, expected_stream(&b, 6, 300));
        relay.shutdown().await.unwrap();
    })
    .await;
}

/// A size-limited tmpfs mounted for the test and unmounted on drop, however the test ends.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it); `Err` says why not.
    fn mount(size: &str) -> Result<Self, String> {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().next().map(str::to_owned));
        if uid.as_deref() != Some("0") {
            return Err(format!("not running as root (uid {uid:?})"));
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount refused: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Resizes the filesystem (growing it is the operator freeing space); `false` if refused
    /// (shrinking below what is used).
    fn resize(&self, size: &str) -> bool {
        std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.path())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Something still holds it (a relay that refused to die): detach it lazily.
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

fn assert_no_panic(relay: &RelayProcess, what: &str) {
    let stderr = relay.stderr();
    assert!(
        !stderr.contains("panicked"),
        "{what}: the relay panicked:\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_full_disk_gives_storage_errors_and_loses_nothing() {
    serial(Duration::from_secs(90), async {
        let tmpfs = match Tmpfs::mount("2m") {
            Ok(tmpfs) => tmpfs,
            Err(why) => {
                println!("SKIPPED a_real_full_disk_gives_storage_errors_and_loses_nothing: {why}");
                return;
            }
        };
        let data = tmpfs.path().join("relay");
        let flags: &[&str] = &["--cache-bytes", "1048576", "--requests-per-second", "100000"];
        let mut relay = RelayProcess::spawn(&data, flags);
        let (a, b) = (TestAccount::new(1), TestAccount::new(1));
        let (da, db) = (a.device(0).device_id(), b.device(0).device_id());
        let client_a = relay.connect().await;
        a.create(&client_a).await;
        let client_b = relay.connect().await;
        b.create(&client_b).await;
        assert_eq!(client_b.push(envelopes(&b.id, &db, 1, 3, 1000)).await.unwrap(), 3);
        // Fill the disk: 20 KiB pushes until one is refused (2 MiB fill in ~100).
        let mut acked = 0u64;
        let mut refusal = None;
        for _ in 0..1000 {
            match client_a.push(envelopes(&a.id, &da, acked + 1, 20, 1000)).await {
                Ok(last) => acked = last,
                Err(err) => {
                    refusal = Some(err);
                    break;
                }
            }
        }
        let refusal = refusal.expect("2 MiB never filled up");
        println!("disk full after {acked} envelopes: {refusal}");
        assert_eq!(refusal.code(), Some(ErrorCode::Storage), "{refusal}");
        assert!(relay.is_running(), "the relay died on a full disk");
        assert_no_panic(&relay, "on a full disk");
        // Reads still work on both connections, and what is stored is a prefix of what was sent
        // that holds everything acknowledged.
        let stored = own_stream(&client_a, &da).await;
        assert!(stored.len() as u64 >= acked);
        assert_eq!(stored, expected_stream(&a, stored.len() as u64, 1000));
        assert_eq!(own_stream(&client_b, &db).await, expected_stream(&b, 3, 1000));
        // Pushes keep failing cleanly (not hanging, not crashing) while the disk is full.
        for _ in 0..3 {
            let result = client_b.push(envelopes(&b.id, &db, 4, 20, 1000)).await;
            if let Err(err) = &result {
                assert_eq!(err.code(), Some(ErrorCode::Storage), "{err}");
            }
        }
        assert_no_panic(&relay, "pushing on a full disk");

        // Space is freed while the relay runs. sled keeps the write error it hit (pushes stay
        // refused, cleanly, until a restart); a backend that recovers would accept them.
        assert!(tmpfs.resize("16m"), "grow the tmpfs");
        let mut recovered_in_place = false;
        for attempt in 0..3 {
            let last_b = own_stream(&client_b, &db).await.len() as u64;
            match client_b.push(envelopes(&b.id, &db, last_b + 1, 1, 1000)).await {
                Ok(_) => recovered_in_place = true,
                Err(err) => assert_eq!(err.code(), Some(ErrorCode::Storage), "{attempt}: {err}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!("after freeing space without a restart, pushes succeed: {recovered_in_place}");
        assert_no_panic(&relay, "after space was freed");
        relay.kill9();

        // Restart on the full disk: the relay starts and serves everything acknowledged, or
        // refuses to start with a clear error — never a panic.
        let full_again = tmpfs.resize("2m");
        let restarted = if full_again {
            RelayProcess::try_spawn(&data, flags).map(Some)
        } else {
            println!("could not shrink the tmpfs again; restart on a full disk not tried");
            Ok(None)
        };
        match restarted {
            Ok(None) => {}
            Ok(Some(relay)) => {
                let client = relay.connect().await;
                client.authenticate(a.device(0), &a.id).await.unwrap();
                let stored = own_stream(&client, &da).await;
                assert!(stored.len() as u64 >= acked, "acknowledged data lost");
                assert_eq!(stored, expected_stream(&a, stored.len() as u64, 1000));
                assert_no_panic(&relay, "restarted on a full disk");
            }
            Err(why) => {
                println!("the relay refused to start on the full disk: {why}");
                assert!(!why.contains("panicked"), "{why}");
            }
        }

        // Space is freed: restart, everything acknowledged reads back, the next push lands.
        assert!(tmpfs.resize("16m"), "grow the tmpfs");
        let relay = RelayProcess::spawn(&data, flags);
        let client = relay.connect().await;
        client.authenticate(a.device(0), &a.id).await.unwrap();
        let stored = own_stream(&client, &da).await;
        assert!(stored.len() as u64 >= acked, "acknowledged data lost");
        assert_eq!(stored, expected_stream(&a, stored.len() as u64, 1000));
        let last = stored.len() as u64;
        assert_eq!(
            client.push(envelopes(&a.id, &da, last + 1, 20, 1000)).await.unwrap(),
            last + 20
        );
        let client = relay.connect().await;
        client.authenticate(b.device(0), &b.id).await.unwrap();
        let stored_b = own_stream(&client, &db).await;
        assert!(stored_b.len() >= 3);
        assert_eq!(stored_b, expected_stream(&b, stored_b.len() as u64, 1000));
        assert_no_panic(&relay, "after space was freed");
        drop(relay);
        drop(tmpfs);
    })
    .await;
}
