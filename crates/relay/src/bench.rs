//! `kith-relay bench`: D devices, each in its own account, push N envelopes in batches through
//! real QUIC connections on loopback, then pull them back; optionally hold many idle
//! authenticated connections. Prints envelopes/s, MB/s, ack latency percentiles and the relay's
//! peak RSS (when the tool started the relay itself), and how much the store grew on disk per
//! 100,000 envelopes. `--store postgres://…` runs the relay on PostgreSQL, `--relays N` runs N
//! relays on that one database with the devices spread over them. `--churn N` measures
//! something else: N short connections one after another (see [`churn`]). `--abuse` runs the
//! push phase twice, alone and beside an abusive client from 127.0.0.2 (see [`abuse`]), each
//! device pulling back what it pushed, and compares the honest p99 latencies.

mod abuse;
mod churn;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use kith_protocol::encoding::labels;
use kith_protocol::ids::AccountId;
use kith_protocol::keys::{AccountSigningKey, DeviceAgreementKey, DeviceSigningKey, system_rng};
use kith_protocol::proto;
use kith_relay::client::{RelayClient, shared_endpoint_up_to};
use kith_relay::tls::SHARED_IDENTITY_FILES;
use kith_relay::wire;
use prost::Message;

/// Load-test parameters.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Simulated devices, each in its own account, each on its own connection
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// Envelopes each device pushes
    #[arg(long, default_value_t = 1000)]
    envelopes: u64,
    /// Envelopes per push
    #[arg(long, default_value_t = 100)]
    batch: u64,
    /// Payload bytes per envelope (the ciphertext is Padmé-padded; the encoded envelope adds
    /// ~180 bytes of header, tag and signature)
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Pushes each device keeps in flight (acknowledged in order), as `kith-client` does
    #[arg(long, default_value_t = 4)]
    window: usize,
    /// Pull requests each device keeps in flight in the pull phase (pages of --pull-page)
    #[arg(long, default_value_t = 4)]
    pull_window: usize,
    /// Envelopes per pull page in the pull phase
    #[arg(long, default_value_t = 1000)]
    pull_page: u32,
    /// Target total push rate in envelopes/s (0 = as fast as acks allow)
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Idle authenticated connections to open after the push/pull phases (RSS measurement)
    #[arg(long, default_value_t = 0)]
    idle_connections: usize,
    /// Use a running relay at this address instead of starting one (needs --cert-sha256)
    #[arg(long)]
    relay: Option<SocketAddr>,
    /// Certificate fingerprint of --relay
    #[arg(long)]
    cert_sha256: Option<String>,
    /// Process id of --relay, to report its CPU time and RSS
    #[arg(long)]
    relay_pid: Option<u32>,
    /// Metrics listener of --relay (its `metrics_listen`), read in abuse mode
    #[arg(long)]
    relay_metrics: Option<SocketAddr>,
    /// Store of the relay the tool starts: `sled` or a PostgreSQL connection string
    /// (`postgres://…`, see README.md "PostgreSQL") [default: sled]
    #[arg(long)]
    store: Option<String>,
    /// Data directory for the relay the tool starts [default: a temporary directory]; with
    /// --relays N, relay i > 1 uses DATA-i
    #[arg(long)]
    data: Option<PathBuf>,
    /// Relays the tool starts on one --store (PostgreSQL only beyond 1), sharing the first
    /// one's certificate, key and reset key; the devices are spread over them in turn
    #[arg(long, default_value_t = 1)]
    relays: usize,
    /// Client UDP endpoints the connections are spread over
    #[arg(long, default_value_t = 4)]
    endpoints: usize,
    /// Largest UDP payload the tool's connections send and accept (1452: an Ethernet path,
    /// whatever loopback would carry) [default: kith_net::MAX_UDP_PAYLOAD, 6550]
    #[arg(long, default_value_t = kith_net::MAX_UDP_PAYLOAD)]
    max_udp_payload: u16,
    /// Churn mode: set up --accounts accounts, then run this many sequential connect,
    /// authenticate, push, pull, close cycles, reporting the relay's RSS as it goes (0: only
    /// set up the accounts and report). Replaces the push/pull phases.
    #[arg(long)]
    churn: Option<u64>,
    /// Churn mode: accounts the relay holds (one device each; created unless an earlier run
    /// on the same --data created them)
    #[arg(long, default_value_t = 1000)]
    accounts: usize,
    /// Churn mode: the cycles go round the first this-many accounts [default: all]
    #[arg(long, default_value_t = 0)]
    active: usize,
    /// Churn mode: print the relay's RSS every this-many cycles
    #[arg(long, default_value_t = 1000)]
    report_every: u64,
    /// Churn mode: seed of the accounts' keys (the same seed finds the same accounts)
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Churn mode: cycles do not push (connect, authenticate, pull, close), to tell memory
    /// kept per connection from memory kept per envelope stored
    #[arg(long)]
    no_push: bool,
    /// Abuse mode: run the push phase (each device pulling back each batch it pushed, --envelopes
    /// per device per round) in rounds alone and beside an abusive client from a loopback
    /// address of its own (127.0.0.2, then .3, … : every abused round meets a fresh abuser), and
    /// compare the honest latencies. Method: one warm-up round (not counted), then --rounds
    /// pairs of one round alone and one beside the abuser, in alternating order (alone first,
    /// then beside first, …) so that a drift of the machine weighs on both; each pair's p99
    /// ratio, then the p50/p90/p99 of all rounds alone pooled against all rounds beside
    /// pooled, and the pooled p99 ratio with a 90% interval from resampling the pairs. The last
    /// line, `honest p99, pooled over N pairs: …`, is the answer. The relay keeps its default
    /// per-address and pre-authentication limits
    #[arg(long)]
    abuse: bool,
    /// Abuse mode: pairs of rounds (one alone, one beside the abuser). A round at 20,000
    /// envelopes/s of 100 devices x 1,000 takes 5 s; a pair with the abuser's set-up about 16 s
    #[arg(long, default_value_t = 6)]
    rounds: usize,
    /// Abuse mode: unauthenticated connections the abuser keeps open
    #[arg(long, default_value_t = 1000)]
    abuse_idle: usize,
    /// Abuse mode: pulls the abuser never reads
    #[arg(long, default_value_t = 30)]
    abuse_stalled: usize,
    /// Abuse mode: streams sending oversized frames back to back
    #[arg(long, default_value_t = 16)]
    abuse_flooders: usize,
    /// Abuse mode: run the abuser's tasks on the honest devices' runtime (as before the fifth
    /// session) instead of a thread and runtime of its own, to show what that costs the
    /// honest devices' figures
    #[arg(long)]
    abuse_same_runtime: bool,
    /// Abuse mode: once the relay refuses the abuser's address, send its attempts as the
    /// recorded datagrams of an earlier attempt of its QUIC client instead of making each
    /// with the client (less of the abuser's CPU on the shared cores; on a loaded host the
    /// relay admitted many of them as half-open handshakes: BENCHMARKS.md, finding 7, tenth
    /// session)
    #[arg(long)]
    abuse_replay: bool,
    /// Abuse mode: the CPU priority of the abuser's thread: `low` (nice 19), `normal`, or a nice
    /// value from 0 to 19. `low` models the attacker's own machine: only its datagrams reach the
    /// relay's, while here it shares the cores with the relay and the honest devices, which at
    /// equal priority waited behind it for a CPU; `normal` runs it at the tool's priority, as
    /// before the eleventh session. On a host loaded by other work at nice 19, `low` can starve
    /// the abuser (a smaller abuse: compare its counts); a nice value between the tool's and 19
    /// (the tool at nice 0, the abuser at 10) keeps it below the relay and the honest devices
    /// and above the rest. Not applied with --abuse-same-runtime
    #[arg(long, default_value = "low")]
    abuser_priority: abuse::AbuserPriority,
}

/// One account with `devices` devices; returns the account id and the signed genesis roster.
fn genesis(devices: &[DeviceSigningKey]) -> (AccountId, Vec<u8>) {
    let account_key = AccountSigningKey::generate(&mut system_rng());
    let roster = genesis_with(&account_key, devices);
    (account_key.public().account_id(), roster)
}

/// The signed genesis roster of `account_key`'s account with `devices`.
fn genesis_with(account_key: &AccountSigningKey, devices: &[DeviceSigningKey]) -> Vec<u8> {
    let account = account_key.public().account_id();
    let entries = devices
        .iter()
        .map(|key| proto::DeviceEntry {
            device_id: key.device_id().as_bytes().to_vec(),
            signing_key: key.public().to_bytes().to_vec(),
            agreement_key: DeviceAgreementKey::generate(&mut system_rng())
                .public()
                .to_bytes(),
            added_at_ms: 0,
            added_in_epoch: 1,
            name_nonce: vec![0; 24],
            encrypted_name: vec![0; 32],
        })
        .collect();
    let body = proto::RosterBody {
        format_version: 1,
        account_id: account.as_bytes().to_vec(),
        version: 1,
        genesis_key: account_key.public().to_bytes().to_vec(),
        key_chain: vec![],
        epoch: 1,
        devices: entries,
        removed: vec![],
        created_at_ms: 0,
        prev_roster_hash: Vec::new(),
    }
    .encode_to_vec();
    let signature = account_key
        .sign(labels::ROSTER_SIGNATURE, &[&body])
        .to_bytes()
        .to_vec();
    proto::SignedRoster { body, signature }.encode_to_vec()
}

/// An envelope with a valid header and an opaque (random-looking) body; the relay does not
/// verify envelope signatures, so none is computed.
fn envelope(
    account: &AccountId,
    device: &kith_protocol::ids::DeviceId,
    seq: u64,
    body: &[u8],
) -> Vec<u8> {
    kith_protocol::envelope::unsealed_for_relay(account, device, seq, body.to_vec())
}

/// The ciphertext length of a `size`-byte payload (the relay checks the framing).
fn ciphertext_len(size: usize) -> usize {
    kith_protocol::envelope::ciphertext_len(size)
}

/// The relay processes the tool started (killed when dropped) and their temporary data.
struct SpawnedRelays {
    children: Vec<Child>,
    dir: Option<tempfile::TempDir>,
    /// Each relay's metrics listener, where the tool asked for one (abuse mode).
    metrics: Vec<Option<SocketAddr>>,
}

impl Drop for SpawnedRelays {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// (peak RSS, current RSS) in KiB of a process, from /proc.
fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        };
        Some((field("VmHWM:")?, field("VmRSS:")?))
    }
}

/// CPU seconds (user + system, every thread) a process has used, from /proc (`self` or a pid).
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name: state is index 0, utime 11, stime 12.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    // /proc reports clock ticks of USER_HZ, which is 100 on Linux.
    Some((ticks(11)? + ticks(12)?) / 100.0)
}

/// Wall time and the CPU time of the relay and of this tool over one phase: the machine is
/// shared, so a figure means something only next to what each side spent.
struct Meter {
    relay_pids: Vec<u32>,
    start: Instant,
    relay_cpu: Option<f64>,
    own_cpu: Option<f64>,
}

/// CPU seconds of every relay process together (`None` without any, or if one is gone).
fn relays_cpu(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter()
        .map(|pid| cpu_seconds(&pid.to_string()))
        .sum::<Option<f64>>()
}

impl Meter {
    fn start(relay_pids: &[u32]) -> Self {
        Self {
            relay_pids: relay_pids.to_vec(),
            start: Instant::now(),
            relay_cpu: relays_cpu(relay_pids),
            own_cpu: cpu_seconds("self"),
        }
    }

    fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// "relay CPU 1.20 s = 12.0 µs/envelope (0.60 cores); load tool CPU ..."
    fn cpu_report(&self, envelopes: u64) -> String {
        let wall = self.start.elapsed().as_secs_f64();
        let line = |name: &str, before: Option<f64>, now: Option<f64>| match (before, now) {
            (Some(before), Some(now)) => {
                let used = now - before;
                format!(
                    "{name} CPU {used:.2} s = {:.1} us/envelope ({:.2} cores)",
                    used * 1e6 / envelopes.max(1) as f64,
                    used / wall
                )
            }
            _ => format!("{name} CPU unknown"),
        };
        format!(
            "{}; {}",
            line(
                if self.relay_pids.len() > 1 {
                    "relays"
                } else {
                    "relay"
                },
                self.relay_cpu,
                relays_cpu(&self.relay_pids)
            ),
            line("load tool", self.own_cpu, cpu_seconds("self"))
        )
    }
}

/// Starts `--relays` relays on `--store`: the first on its data directory, the others on
/// their own with copies of the first one's [`SHARED_IDENTITY_FILES`] (README.md, "PostgreSQL:
/// several relays, one database"). Returns them with
/// their addresses and the certificate pin they share.
fn spawn_relays(args: &BenchArgs) -> Result<(SpawnedRelays, Vec<SocketAddr>, [u8; 32])> {
    let count = args.relays.max(1);
    let shared_store = args
        .store
        .as_deref()
        .is_some_and(kith_relay::store::postgres::is_postgres_url);
    if count > 1 && !shared_store {
        bail!("--relays above 1 needs a shared --store postgres://…");
    }
    if count > 1 && (args.churn.is_some() || args.abuse) {
        bail!("--churn and --abuse measure one relay: leave --relays at 1");
    }
    let (dir, data) = match &args.data {
        Some(data) => (None, data.clone()),
        None => {
            let dir = tempfile::tempdir()?;
            let path = dir.path().join("relay");
            (Some(dir), path)
        }
    };
    let mut relays = SpawnedRelays {
        children: Vec::new(),
        dir,
        metrics: Vec::new(),
    };
    let (mut addrs, mut first_pin) = (Vec::new(), None);
    for i in 0..count {
        let dir = if i == 0 {
            data.clone()
        } else {
            let mut name = data.clone().into_os_string();
            name.push(format!("-{}", i + 1));
            let dir = PathBuf::from(name);
            std::fs::create_dir_all(&dir)?;
            for file in SHARED_IDENTITY_FILES {
                std::fs::copy(data.join(file), dir.join(file))
                    .with_context(|| format!("copying {file} to {}", dir.display()))?;
            }
            dir
        };
        let (child, addr, pin, metrics) = spawn_relay(args, &dir)?;
        relays.children.push(child);
        relays.metrics.push(metrics);
        if *first_pin.get_or_insert(pin) != pin {
            bail!("relay {} serves another certificate than relay 1", i + 1);
        }
        addrs.push(addr);
    }
    let pin = first_pin.ok_or_else(|| anyhow!("no relay"))?;
    Ok((relays, addrs, pin))
}

/// Starts one relay process on `data`; returns it, its address, its certificate pin and (in
/// abuse mode, which reads the relay's counts) its metrics listener.
fn spawn_relay(
    args: &BenchArgs,
    data: &std::path::Path,
) -> Result<(Child, SocketAddr, [u8; 32], Option<SocketAddr>)> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .args([
            "--requests-per-second",
            "1000000",
            "--request-burst",
            "1000000",
        ])
        .args([
            "--max-account-bytes",
            "1099511627776",
            "--max-connections",
            "100000",
        ])
        .args(["--lookups-per-minute", "1000000"])
        .args(
            args.store
                .iter()
                .flat_map(|store| ["--store", store.as_str()]),
        )
        // Every simulated device speaks from 127.0.0.1: lift the per-address bounds, except in
        // abuse mode, which measures them (the abuser speaks from 127.0.0.2).
        .args(if args.abuse {
            &["--metrics-listen", "127.0.0.1:0"][..]
        } else {
            &[
                "--max-connections-per-address",
                "1000000",
                "--retry-above-handshakes-per-second",
                "1000000",
                // A busy machine serves pulls and reads requests late; the tool measures rates,
                // not the refusals.
                "--pull-wait-secs",
                "600",
                "--request-timeout-secs",
                "600",
            ][..]
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the relay")?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let (mut addr, mut pin, mut metrics) = (None, None, None);
    while addr.is_none() || pin.is_none() || (args.abuse && metrics.is_none()) {
        let Some(line) = lines.next() else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the relay exited");
        };
        let line = line?;
        if let Some(rest) = line.strip_prefix("listening on ") {
            addr = Some(rest.parse()?);
        } else if let Some(rest) = line.strip_prefix("certificate sha256 ") {
            pin = Some(parse_pin(rest)?);
        } else if let Some(rest) = line.strip_prefix("metrics on http://") {
            metrics = Some(rest.trim_end_matches("/metrics").parse()?);
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Ok((
        child,
        addr.ok_or_else(|| anyhow!("no address"))?,
        pin.ok_or_else(|| anyhow!("no pin"))?,
        metrics,
    ))
}

fn parse_pin(text: &str) -> Result<[u8; 32]> {
    let mut pin = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut pin).context("certificate fingerprint")?;
    Ok(pin)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

struct Device {
    client: RelayClient,
    account: AccountId,
    key: DeviceSigningKey,
}

fn print_rss(relay_pids: &[u32], when: &str) {
    for (i, pid) in relay_pids.iter().enumerate() {
        if let Some((peak, now)) = rss_kib(*pid) {
            let relay = if relay_pids.len() > 1 {
                format!("relay {}", i + 1)
            } else {
                "relay".to_owned()
            };
            println!(
                "{relay} RSS {when}: {} MB (peak {} MB)",
                now / 1024,
                peak / 1024
            );
        }
    }
}

/// Where the store's size on disk is read: a PostgreSQL database (`pg_database_size`, WAL
/// excluded) or the data directory of a sled relay the tool started.
enum StoreSize {
    Postgres(String),
    Dir(PathBuf),
    Unknown,
}

impl StoreSize {
    fn of(args: &BenchArgs, relays: Option<&SpawnedRelays>) -> Self {
        match args.store.as_deref() {
            Some(url) if kith_relay::store::postgres::is_postgres_url(url) => {
                Self::Postgres(url.to_owned())
            }
            _ if relays.is_some() => match (&args.data, relays.and_then(|r| r.dir.as_ref())) {
                (Some(data), _) => Self::Dir(data.clone()),
                (None, Some(dir)) => Self::Dir(dir.path().join("relay")),
                (None, None) => Self::Unknown,
            },
            _ => Self::Unknown,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Self::Postgres(_) => "the PostgreSQL database",
            Self::Dir(_) => "the data directory",
            Self::Unknown => "the store",
        }
    }

    /// Bytes on disk now, if they can be read.
    fn bytes(&self) -> Option<u64> {
        match self {
            Self::Postgres(url) => {
                let url = url.clone();
                // The synchronous client runs a runtime of its own: not on the tool's threads.
                let size = std::thread::spawn(move || -> Result<i64> {
                    let mut client = postgres::Client::connect(&url, postgres::NoTls)?;
                    Ok(client
                        .query_one("SELECT pg_database_size(current_database())", &[])?
                        .get(0))
                })
                .join()
                .ok()?;
                match size {
                    Ok(size) => u64::try_from(size).ok(),
                    Err(err) => {
                        eprintln!("store size unknown: {err}");
                        None
                    }
                }
            }
            Self::Dir(dir) => Some(dir_bytes(dir)),
            Self::Unknown => None,
        }
    }
}

/// Bytes of the files under `dir` (0 for what cannot be read).
fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => dir_bytes(&entry.path()),
            Ok(_) => entry.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}

/// Latencies of one push round: push acknowledgements, and (when pulling back) pulls.
struct RoundLatencies {
    push: Vec<Duration>,
    pull: Vec<Duration>,
}

/// Every device pushes its prepared batches of `batch` envelopes (paced by `interval` if set)
/// and, with `pull_back`, pulls back each batch right after it was acknowledged. Prints the
/// figures; returns the sorted latencies.
async fn push_round(
    devices: &[Arc<Device>],
    prepared: Vec<Vec<Bytes>>,
    interval: Option<Duration>,
    batch: u64,
    window: usize,
    pull_back: bool,
    relay_pids: &[u32],
) -> Result<RoundLatencies> {
    let pull_back = pull_back.then_some(batch);
    let meter = Meter::start(relay_pids);
    let start = meter.start;
    let mut tasks = Vec::new();
    let mut pushed_bytes = 0u64;
    for (i, (device, pushes)) in devices.iter().cloned().zip(prepared).enumerate() {
        pushed_bytes += pushes.iter().map(|p| p.len() as u64).sum::<u64>();
        tasks.push(tokio::spawn(async move {
            let mut push = Vec::with_capacity(pushes.len());
            let mut pull = Vec::with_capacity(pushes.len());
            let id = device.key.device_id().as_bytes().to_vec();
            // Spread paced devices over the interval so they do not push in lockstep.
            let offset = interval.map(|iv| iv.mul_f64(i as f64 / 97.0 % 1.0));
            // Up to `window` pushes in flight, their streams opened in seq order, their
            // acknowledgements taken in the same order (as `kith-client` does).
            let mut in_flight = std::collections::VecDeque::with_capacity(window);
            let mut frames = pushes.into_iter().enumerate().peekable();
            loop {
                while in_flight.len() < window.max(1) {
                    let Some((b, frame)) = frames.next() else {
                        break;
                    };
                    if let (Some(iv), Some(offset)) = (interval, offset) {
                        let due = start + offset + iv * b as u32;
                        tokio::time::sleep_until(due.into()).await;
                    }
                    in_flight.push_back((Instant::now(), device.client.send_frame(frame).await?));
                    if interval.is_some() {
                        // Paced: the next push is due later; take what has been answered.
                        break;
                    }
                }
                let Some((sent, request)) = in_flight.pop_front() else {
                    break;
                };
                let last = request.push_ack().await?;
                push.push(sent.elapsed());
                if let Some(batch) = pull_back {
                    let cursor = proto::Cursor {
                        device_id: id.clone(),
                        after_seq: last - batch,
                    };
                    let sent = Instant::now();
                    let page = device
                        .client
                        .pull_shared(vec![cursor], batch as u32, 0)
                        .await?;
                    pull.push(sent.elapsed());
                    if page.envelopes.len() as u64 != batch {
                        bail!("pulled back {} of {batch}", page.envelopes.len());
                    }
                }
            }
            anyhow::Ok(RoundLatencies { push, pull })
        }));
    }
    let (mut push, mut pull) = (Vec::new(), Vec::new());
    let mut pushes = 0u64;
    for task in tasks {
        let round = task.await??;
        pushes += round.push.len() as u64;
        push.extend(round.push);
        pull.extend(round.pull);
    }
    let push_time = meter.elapsed();
    push.sort_unstable();
    pull.sort_unstable();
    let total = pushes * batch;
    println!(
        "push: {total} envelopes in {:.2} s = {:.0} envelopes/s, {:.1} MB/s; ack latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        push_time.as_secs_f64(),
        total as f64 / push_time.as_secs_f64(),
        pushed_bytes as f64 / push_time.as_secs_f64() / 1e6,
        percentile(&push, 0.50).as_secs_f64() * 1e3,
        percentile(&push, 0.99).as_secs_f64() * 1e3,
        push.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
    if !pull.is_empty() {
        println!(
            "pull back: {} pages = {:.0} envelopes/s; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            pull.len(),
            total as f64 / push_time.as_secs_f64(),
            percentile(&pull, 0.50).as_secs_f64() * 1e3,
            percentile(&pull, 0.99).as_secs_f64() * 1e3,
            pull.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        );
    }
    println!("push: {}", meter.cpu_report(total));
    Ok(RoundLatencies { push, pull })
}

/// Abuse mode: `--rounds` pairs of rounds of the same honest workload, one alone and one beside
/// the abuser, after an unmeasured warm-up round; the pooled latencies of all rounds alone are
/// compared with those of all rounds beside the abuser (see [`AbuseSummary`]). The pairs
/// alternate their order (alone first, then beside first, …) so that a drift of the machine
/// over the run weighs on both conditions alike. Besides the honest latencies each round prints
/// what explains them: how late the tool's own runtime ran (a probe timer), what the relay
/// counted (handshakes completed, connections refused before their handshake, Retry packets,
/// bad frames), what the abuser saw, and the UDP datagrams the kernel dropped.
#[allow(clippy::too_many_arguments)]
async fn abuse_rounds(
    args: &BenchArgs,
    devices: &[Arc<Device>],
    body: &[u8],
    interval: Option<Duration>,
    addr: SocketAddr,
    pin: [u8; 32],
    relay_pid: Option<u32>,
    metrics: Option<SocketAddr>,
    endpoints: &[quinn::Endpoint],
) -> Result<()> {
    let pairs = args.rounds.max(1);
    // Fail before the first round, not in the middle of the run.
    abuse::source(pairs - 1)?;
    let relay_counts = || async {
        match metrics {
            Some(addr) => abuse::RelayCounts::read(addr).await.unwrap_or_else(|e| {
                eprintln!("relay metrics unreadable: {e:#}");
                abuse::RelayCounts::default()
            }),
            None => abuse::RelayCounts::default(),
        }
    };
    let honest: Vec<SocketAddr> = endpoints
        .iter()
        .filter_map(|e| e.local_addr().ok())
        .collect();
    let connections: Vec<&quinn::Connection> =
        devices.iter().map(|d| d.client.connection()).collect();
    let plan = abuse::Abuse {
        idle: args.abuse_idle,
        stalled: args.abuse_stalled,
        flooders: args.abuse_flooders,
        replay: args.abuse_replay,
    };
    let relay_pids = Vec::from_iter(relay_pid);
    let batches = args.envelopes / args.batch;
    let mut next_batch = 0;
    // One honest round of `batches` pushes per device (and their pull-backs), with the counts
    // that explain it; `abuser` names the abused round's index.
    let mut honest_round = async |name: String, abuser: Option<usize>| -> Result<RoundLatencies> {
        // Built before the clock starts, one round at a time (all rounds at once would hold
        // gigabytes): the tool shares the machine with the relay.
        let prepared = prepare_pushes(devices, args.batch, next_batch, batches, body);
        next_batch += batches;
        let abuser = match abuser {
            Some(index) => {
                let source = abuse::source(index)?;
                let placement = if args.abuse_same_runtime {
                    abuse::Placement::SameRuntime
                } else {
                    abuse::Placement::Thread(args.abuser_priority)
                };
                let abuser = abuse::start(plan, source, addr, pin, placement).await?;
                // Let the abuser reach its steady state (connections up to the address's cap,
                // pulls stalled) before the honest round starts.
                tokio::time::sleep(Duration::from_secs(3)).await;
                println!(
                    "{name}: beside an abuser from {source}, {} ({} idle unauthenticated \
                     connections wanted, {} open; {} stalled pulls; {} oversized-frame streams)",
                    match (placement, abuser.nice()) {
                        (abuse::Placement::SameRuntime, _) =>
                            "on the honest devices' runtime".to_owned(),
                        (abuse::Placement::Thread(priority), Some(nice)) => format!(
                            "on a thread and runtime of its own at {priority}: its thread's nice \
                             value {nice}"
                        ),
                        (abuse::Placement::Thread(priority), None) =>
                            format!("on a thread and runtime of its own at {priority}"),
                    },
                    plan.idle,
                    abuser.stats.counts().idle_open,
                    plan.stalled,
                    plan.flooders
                );
                Some(abuser)
            }
            None => {
                println!("{name}: honest devices alone");
                None
            }
        };
        let before = abuser.as_ref().map(|a| a.stats.counts());
        let (tool_cpu, abuser_cpu) = (
            cpu_seconds("self"),
            abuser.as_ref().and_then(|a| a.cpu_seconds()),
        );
        let (counts, udp, lost, probe) = (
            relay_counts().await,
            abuse::udp_drops(),
            abuse::lost_packets(&connections),
            abuse::LagProbe::start(),
        );
        let started = Instant::now();
        let latencies = push_round(
            devices,
            prepared,
            interval,
            args.batch,
            args.window,
            true,
            &relay_pids,
        )
        .await?;
        let took = started.elapsed().as_secs_f64();
        print_tool_cpu(
            &name,
            took,
            tool_cpu.zip(cpu_seconds("self")),
            abuser.as_ref().map(|a| abuser_cpu.zip(a.cpu_seconds())),
        );
        let seen = abuser
            .as_ref()
            .zip(before)
            .map(|(a, b)| a.stats.counts() - b);
        let (lag_p99, lag_max) = probe.finish().await;
        println!(
            "load tool, {name}: its runtime woke a 1 ms timer late by p99 {:.2} ms, max {:.2} ms",
            lag_p99.as_secs_f64() * 1e3,
            lag_max.as_secs_f64() * 1e3
        );
        print_relay_counts_if(metrics, &name, &counts, &relay_counts().await);
        abuse::print_udp_drops(&name, &udp, addr, &honest);
        println!(
            "honest connections, {name}: {} packets declared lost and sent again",
            abuse::lost_packets(&connections) - lost
        );
        if let (Some(abuser), Some(seen)) = (abuser, seen) {
            abuser.stop().await;
            println!(
                "abuser, {name} ({took:.2} s): {} idle connections open at the end; {} \
                 connection attempts ({} sent as recorded datagrams, {} of those admitted by \
                 the relay): {} refused before any handshake, {} completed a \
                 handshake, {} not answered within {} ms, {} failed otherwise; {} established connections closed by the \
                 relay; {} stalled pulls sent; {} oversized frames sent",
                seen.idle_open,
                seen.attempts,
                seen.replayed,
                seen.replayed_admitted,
                seen.refused,
                seen.established,
                seen.unanswered,
                abuse::ANSWER_WAIT.as_millis(),
                seen.failed,
                seen.closed,
                seen.stalled_sent,
                seen.oversized_sent,
            );
        }
        // Whatever a round left behind (the abuser's closing connections, the relay's queues)
        // settles before the next round starts, alone or not.
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok(latencies)
    };

    // The first round on fresh accounts and a fresh store is slower than the ones after it
    // (in earlier single-pair runs the round alone, which came first, was then the slow one):
    // it is run, printed and left out.
    let run = Instant::now();
    honest_round("warm-up round (not counted)".to_owned(), None).await?;
    let mut summary = AbuseSummary::default();
    for pair in 0..pairs {
        let beside_first = pair % 2 == 1;
        let (mut alone, mut beside) = (None, None);
        for second in [false, true] {
            if second == beside_first {
                let name = format!("pair {}, alone", pair + 1);
                alone = Some(honest_round(name, None).await?);
            } else {
                let name = format!("pair {}, beside the abuser", pair + 1);
                beside = Some(honest_round(name, Some(pair)).await?);
            }
        }
        if let (Some(alone), Some(beside)) = (alone, beside) {
            summary.pairs.push(PairLatencies {
                beside_first,
                alone,
                beside,
            });
        }
    }
    println!(
        "rounds: the warm-up and {pairs} pairs took {:.0} s",
        run.elapsed().as_secs_f64()
    );
    summary.print();
    Ok(())
}

/// The load tool's CPU over one abuse-mode round (`tool`: its CPU seconds at the start and
/// the end), split between the abuser's thread (`abuser`, when there is an abuser: its
/// thread's seconds at the start and the end, `None` inside on the honest devices' runtime)
/// and the rest (the honest devices and the tool). The abuser shares the machine's cores with
/// the relay and the honest devices; on a real deployment it would not be on the relay's
/// machine, so its share is what the tool's placement adds to the comparison.
fn print_tool_cpu(
    round: &str,
    wall: f64,
    tool: Option<(f64, f64)>,
    abuser: Option<Option<(f64, f64)>>,
) {
    let Some((start, end)) = tool else {
        return;
    };
    let all = end - start;
    let cores = |seconds: f64| seconds / wall.max(1e-9);
    match abuser {
        None => println!(
            "load tool CPU, {round}: {all:.2} s ({:.2} cores), the honest devices and the tool",
            cores(all)
        ),
        Some(Some((start, end))) => {
            let own = end - start;
            println!(
                "load tool CPU, {round}: {all:.2} s ({:.2} cores), of which the abuser's thread \
                 {own:.2} s ({:.2} cores) and the honest devices and the tool {:.2} s ({:.2} cores)",
                cores(all),
                cores(own),
                all - own,
                cores(all - own)
            );
        }
        Some(None) => println!(
            "load tool CPU, {round}: {all:.2} s ({:.2} cores), the abuser's share unknown (it \
             runs on the honest devices' runtime)",
            cores(all)
        ),
    }
}

/// One pair of abuse-mode rounds.
struct PairLatencies {
    /// Whether the round beside the abuser ran first.
    beside_first: bool,
    alone: RoundLatencies,
    beside: RoundLatencies,
}

/// The pairs of an abuse-mode run, and what they say together.
///
/// One round's p99 is the 10th-largest of its 1,000 push acknowledgements (100 devices, 10
/// pushes each): a single-digit-millisecond tail that moved from 3 to 14 ms between identical
/// runs on a quiet host. The estimate is therefore the ratio of the p99 of all rounds beside
/// the abuser pooled to that of all rounds alone pooled, with an interval from resampling the
/// pairs (a bootstrap over pairs: the latencies inside a round are not independent draws).
#[derive(Default)]
struct AbuseSummary {
    pairs: Vec<PairLatencies>,
}

/// Which latencies of a round: its push acknowledgements or its pull-backs.
type LatencyKind = fn(&RoundLatencies) -> &[Duration];

/// Bootstrap resamples of the pairs for the interval of the pooled ratio.
const BOOTSTRAP_RESAMPLES: usize = 2000;

impl AbuseSummary {
    /// The latencies of one kind (push or pull) of the chosen pairs, pooled and sorted: (alone,
    /// beside).
    fn pooled(&self, pairs: &[usize], kind: LatencyKind) -> (Vec<Duration>, Vec<Duration>) {
        let (mut alone, mut beside) = (Vec::new(), Vec::new());
        for &i in pairs {
            alone.extend_from_slice(kind(&self.pairs[i].alone));
            beside.extend_from_slice(kind(&self.pairs[i].beside));
        }
        alone.sort_unstable();
        beside.sort_unstable();
        (alone, beside)
    }

    /// The pooled p99 ratio (beside ÷ alone) and its 5–95 % bootstrap interval over pairs.
    fn ratio(&self, kind: LatencyKind) -> (f64, f64, f64) {
        let all: Vec<usize> = (0..self.pairs.len()).collect();
        let ratio = |pairs: &[usize]| {
            let (alone, beside) = self.pooled(pairs, kind);
            ms(percentile(&beside, 0.99)) / ms(percentile(&alone, 0.99)).max(1e-9)
        };
        let estimate = ratio(&all);
        // A fixed seed: the same latencies give the same interval.
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut resampled: Vec<f64> = (0..BOOTSTRAP_RESAMPLES)
            .map(|_| {
                let pick: Vec<usize> = (0..all.len())
                    .map(|_| (splitmix64(&mut rng) % all.len() as u64) as usize)
                    .collect();
                ratio(&pick)
            })
            .collect();
        resampled.sort_unstable_by(f64::total_cmp);
        let at = |p: f64| resampled[((resampled.len() - 1) as f64 * p).round() as usize];
        (estimate, at(0.05), at(0.95))
    }

    fn print(&self) {
        let n = self.pairs.len();
        println!("pairs ({n}; honest p99 alone -> beside the abuser):");
        for (i, pair) in self.pairs.iter().enumerate() {
            let p99 = |l: &[Duration]| ms(percentile(l, 0.99));
            let (push_a, push_b) = (p99(&pair.alone.push), p99(&pair.beside.push));
            let (pull_a, pull_b) = (p99(&pair.alone.pull), p99(&pair.beside.pull));
            println!(
                "  pair {} ({}): push {push_a:.2} -> {push_b:.2} ms ({:.2}x); pull {pull_a:.2} -> \
                 {pull_b:.2} ms ({:.2}x)",
                i + 1,
                if pair.beside_first {
                    "beside first"
                } else {
                    "alone first"
                },
                push_b / push_a.max(1e-9),
                pull_b / pull_a.max(1e-9),
            );
        }
        let all: Vec<usize> = (0..n).collect();
        let kinds: [(&str, LatencyKind); 2] =
            [("push ack", |r| &r.push), ("pull-back", |r| &r.pull)];
        let mut line = Vec::new();
        for (name, kind) in kinds {
            let (alone, beside) = self.pooled(&all, kind);
            let q = |l: &[Duration], p| ms(percentile(l, p));
            println!(
                "pooled {name} ({} alone, {} beside): p50 {:.2} -> {:.2} ms ({:.2}x), p90 \
                 {:.2} -> {:.2} ms ({:.2}x), p99 {:.2} -> {:.2} ms ({:.2}x)",
                alone.len(),
                beside.len(),
                q(&alone, 0.50),
                q(&beside, 0.50),
                q(&beside, 0.50) / q(&alone, 0.50).max(1e-9),
                q(&alone, 0.90),
                q(&beside, 0.90),
                q(&beside, 0.90) / q(&alone, 0.90).max(1e-9),
                q(&alone, 0.99),
                q(&beside, 0.99),
                q(&beside, 0.99) / q(&alone, 0.99).max(1e-9),
            );
            let (ratio, low, high) = self.ratio(kind);
            let within = self
                .pairs
                .iter()
                .filter(|pair| {
                    let (a, b) = (kind(&pair.alone), kind(&pair.beside));
                    ms(percentile(b, 0.99)) <= 2.0 * ms(percentile(a, 0.99))
                })
                .count();
            line.push(format!(
                "{name} {:.2} ms alone, {:.2} ms beside the abuser ({ratio:.2}x, 90% interval \
                 {low:.2}-{high:.2}x; pairs within 2x: {within}/{n})",
                q(&alone, 0.99),
                q(&beside, 0.99),
            ));
        }
        println!(
            "honest p99, pooled over {n} pairs: {}; {}",
            line[0], line[1]
        );
    }
}

/// A step of the splitmix64 generator (the bootstrap's resampling; no crate needed).
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A duration in milliseconds.
fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Every device's push frames of batches `first..first + count` (`batch` envelopes of `body`
/// each, seqs following on from the batches before).
fn prepare_pushes(
    devices: &[Arc<Device>],
    batch: u64,
    first: u64,
    count: u64,
    body: &[u8],
) -> Vec<Vec<Bytes>> {
    devices
        .iter()
        .map(|device| {
            let id = device.key.device_id();
            (first..first + count)
                .map(|b| {
                    let seq = b * batch + 1;
                    let envelopes: Vec<Bytes> = (seq..seq + batch)
                        .map(|s| Bytes::from(envelope(&device.account, &id, s, body)))
                        .collect();
                    wire::push_frame(&wire::Push { envelopes })
                })
                .collect()
        })
        .collect()
}

/// [`abuse::print_relay_counts`] when the relay's metrics are readable.
fn print_relay_counts_if(
    metrics: Option<SocketAddr>,
    round: &str,
    before: &abuse::RelayCounts,
    after: &abuse::RelayCounts,
) {
    if metrics.is_some() {
        abuse::print_relay_counts(round, before, after);
    }
}

pub async fn run(args: BenchArgs) -> Result<()> {
    if args.batch == 0 || args.devices == 0 || !args.envelopes.is_multiple_of(args.batch) {
        bail!("--envelopes must be a multiple of --batch, both and --devices nonzero");
    }
    let (relays, addrs, pin) = match (&args.relay, &args.cert_sha256) {
        (Some(addr), Some(pin)) => (None, vec![*addr], parse_pin(pin)?),
        (Some(_), None) => bail!("--relay needs --cert-sha256"),
        _ => {
            let (relays, addrs, pin) = spawn_relays(&args)?;
            (Some(relays), addrs, pin)
        }
    };
    let relay_pids: Vec<u32> = match &relays {
        Some(relays) => relays.children.iter().map(Child::id).collect(),
        None => args.relay_pid.into_iter().collect(),
    };
    let relay_pid = relay_pids.first().copied();
    let addr = addrs[0];
    if let Some(cycles) = args.churn {
        let churn = churn::Churn {
            cycles,
            accounts: args.accounts,
            active: args.active,
            report_every: args.report_every,
            seed: args.seed,
            size: args.size,
            push: !args.no_push,
        };
        return churn::run(churn, addr, pin, relay_pid).await;
    }
    let endpoints: Vec<quinn::Endpoint> = (0..args.endpoints.max(1))
        .map(|_| shared_endpoint_up_to(pin, args.max_udp_payload))
        .collect::<Result<_, _>>()?;

    // Setup: one account per device.
    let mut devices = Vec::with_capacity(args.devices);
    for i in 0..args.devices {
        let key = DeviceSigningKey::generate(&mut system_rng());
        let (account, roster) = genesis(std::slice::from_ref(&key));
        let client = RelayClient::connect_with(
            endpoints[i % endpoints.len()].clone(),
            addrs[i % addrs.len()],
        )
        .await?;
        client.create_account(roster, &key, &account, None).await?;
        devices.push(Arc::new(Device {
            client,
            account,
            key,
        }));
    }
    // Push. A ciphertext has a Padmé length plus the tag (the relay checks the framing).
    let body: Vec<u8> = (0..ciphertext_len(args.size))
        .map(|i| (i * 131 % 251) as u8)
        .collect();
    let interval = (args.rate > 0).then(|| {
        Duration::from_secs_f64(args.batch as f64 * args.devices as f64 / args.rate as f64)
    });
    println!(
        "{} devices x {} envelopes of {} B ciphertext in batches of {}{}{}{}",
        args.devices,
        args.envelopes,
        args.size,
        args.batch,
        if args.rate > 0 {
            format!(", paced at {} envelopes/s", args.rate)
        } else {
            String::new()
        },
        if addrs.len() > 1 {
            format!(", over {} relays on one database", addrs.len())
        } else {
            String::new()
        },
        if args.abuse {
            format!(
                " each round; a warm-up round, then {} pairs of rounds alone and beside the abuser",
                args.rounds.max(1)
            )
        } else {
            String::new()
        }
    );
    if args.abuse {
        let metrics = relays
            .as_ref()
            .and_then(|relays| relays.metrics.first().copied().flatten())
            .or(args.relay_metrics);
        return abuse_rounds(
            &args, &devices, &body, interval, addr, pin, relay_pid, metrics, &endpoints,
        )
        .await;
    }
    // The envelopes are built before the clock starts: the tool shares the machine with the
    // relay, and what it spends building requests is not the relay's cost.
    let prepared = prepare_pushes(&devices, args.batch, 0, args.envelopes / args.batch, &body);
    let store_size = StoreSize::of(&args, relays.as_ref());
    let size_before = store_size.bytes();
    push_round(
        &devices,
        prepared,
        interval,
        args.batch,
        args.window,
        false,
        &relay_pids,
    )
    .await?;
    print_rss(&relay_pids, "after push");
    let total = args.devices as u64 * args.envelopes;
    if let (Some(before), Some(after)) = (size_before, store_size.bytes()) {
        let grown = after.saturating_sub(before);
        println!(
            "store: {} grew {grown} bytes for {total} envelopes = {:.0} bytes per 100,000 envelopes",
            store_size.name(),
            grown as f64 * 100_000.0 / total.max(1) as f64
        );
    }
    // Pull.
    let meter = Meter::start(&relay_pids);
    let mut tasks = Vec::new();
    let (window, page, envelopes) = (
        args.pull_window.max(1),
        args.pull_page.max(1),
        args.envelopes,
    );
    for device in devices.iter().cloned() {
        tasks.push(tokio::spawn(async move {
            let id = device.key.device_id().as_bytes().to_vec();
            // Pages are asked for ahead, `window` at once, each from where the one before it
            // will end (the tool knows how many envelopes each device pushed); a page cut short
            // by the relay's byte bound is followed by a request for the rest.
            let mut ranges: std::collections::VecDeque<(u64, u64)> = (0..envelopes)
                .step_by(page as usize)
                .map(|after| (after, (envelopes - after).min(u64::from(page))))
                .collect();
            let mut in_flight = std::collections::VecDeque::with_capacity(window);
            let (mut count, mut bytes) = (0u64, 0u64);
            loop {
                while in_flight.len() < window {
                    let Some((after, want)) = ranges.pop_front() else {
                        break;
                    };
                    let cursor = proto::Cursor {
                        device_id: id.clone(),
                        after_seq: after,
                    };
                    let request = device
                        .client
                        .send_pull(vec![cursor], want as u32, 0)
                        .await?;
                    in_flight.push_back((after, want, request));
                }
                let Some((after, want, request)) = in_flight.pop_front() else {
                    break;
                };
                let page = request.pull_page().await?;
                let served = page.envelopes.len() as u64;
                if served == 0 || served > want {
                    bail!("asked for {want} envelopes after {after}, got {served}");
                }
                for (i, e) in page.envelopes.iter().enumerate() {
                    if e.seq != after + 1 + i as u64 {
                        bail!(
                            "envelope {} served where {} was due",
                            e.seq,
                            after + 1 + i as u64
                        );
                    }
                    bytes += e.envelope.len() as u64;
                }
                if served < want {
                    ranges.push_front((after + served, want - served));
                }
                count += served;
            }
            anyhow::Ok((count, bytes))
        }));
    }
    let (mut pulled, mut pulled_bytes) = (0, 0);
    for task in tasks {
        let (c, b) = task.await??;
        pulled += c;
        pulled_bytes += b;
    }
    let pull_time = meter.elapsed();
    if pulled != total {
        bail!("pulled {pulled} envelopes, pushed {total}");
    }
    println!(
        "pull: {pulled} envelopes in {:.2} s = {:.0} envelopes/s, {:.1} MB/s",
        pull_time.as_secs_f64(),
        pulled as f64 / pull_time.as_secs_f64(),
        pulled_bytes as f64 / pull_time.as_secs_f64() / 1e6,
    );
    println!("pull: {}", meter.cpu_report(pulled));
    print_rss(&relay_pids, "after push/pull");
    // Idle authenticated connections: accounts of up to 50 devices each.
    if args.idle_connections > 0 {
        let start = Instant::now();
        let mut idle = Vec::with_capacity(args.idle_connections);
        let mut left = args.idle_connections;
        let mut n = 0usize;
        while left > 0 {
            let keys: Vec<DeviceSigningKey> = (0..left.min(50))
                .map(|_| DeviceSigningKey::generate(&mut system_rng()))
                .collect();
            let (account, roster) = genesis(&keys);
            let mut connects = Vec::new();
            for (i, key) in keys.into_iter().enumerate() {
                let endpoint = endpoints[n % endpoints.len()].clone();
                n += 1;
                let roster = (i == 0).then(|| roster.clone());
                connects.push(async move {
                    let client = RelayClient::connect_with(endpoint, addr).await?;
                    if let Some(roster) = roster {
                        client.create_account(roster, &key, &account, None).await?;
                    }
                    anyhow::Ok((client, key))
                });
            }
            let mut batch = Vec::new();
            for connect in connects {
                batch.push(connect.await?);
            }
            for (client, key) in batch.iter().skip(1) {
                client.authenticate(key, &account).await?;
            }
            left -= batch.len();
            idle.extend(batch.into_iter().map(|(client, _)| client));
        }
        println!(
            "idle: {} authenticated connections open after {:.2} s",
            idle.len(),
            start.elapsed().as_secs_f64()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        print_rss(
            &relay_pids,
            &format!("with {} idle connections", idle.len()),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Options of `kith-relay bench` alone, as the command line gives them.
    #[derive(Debug, clap::Parser)]
    struct Bench {
        #[command(flatten)]
        args: BenchArgs,
    }

    /// `--abuser-priority` defaults to the lowest priority and takes `normal` and nice values.
    #[test]
    fn the_abusers_priority_defaults_to_low_and_parses_every_form() {
        use clap::Parser;
        let priority = |extra: &[&str]| {
            Bench::try_parse_from(["bench", "--abuse"].iter().chain(extra))
                .map(|bench| bench.args.abuser_priority)
        };
        assert_eq!(priority(&[]).unwrap(), abuse::AbuserPriority::LOW);
        assert_eq!(
            priority(&["--abuser-priority", "low"]).unwrap(),
            abuse::AbuserPriority::Nice(19)
        );
        assert_eq!(
            priority(&["--abuser-priority", "normal"]).unwrap(),
            abuse::AbuserPriority::Normal
        );
        assert_eq!(
            priority(&["--abuser-priority", "10"]).unwrap(),
            abuse::AbuserPriority::Nice(10)
        );
        assert!(priority(&["--abuser-priority", "20"]).is_err());
        assert!(priority(&["--abuser-priority", "-1"]).is_err());
    }
}
