//! `kith-relay bench --abuse`: an abusive client beside the honest devices, speaking from a
//! loopback address of its own (127.0.0.2 in the first abused round, 127.0.0.3 in the second,
//! …) so that the relay's per-address limits meet it and not the honest devices on 127.0.0.1,
//! and every abused round meets an abuser the relay has not seen before (the same abuse each
//! round: a full per-address handshake burst, as in the first). It keeps, for as long as it
//! runs:
//! - `idle` unauthenticated connections open (reconnecting whenever the relay closes one, or
//!   refuses it, after a short pause);
//! - `stalled` pulls of a 2.5 MB account that never read their answers (each re-sent when the
//!   relay gives up on it);
//! - a flood of oversized frames: request frames announcing more than `max_frame_bytes`, as
//!   fast as the relay answers them, on `flooders` connections (each reconnecting whenever the
//!   relay closes it: at its first oversized frame).
//!
//! The abuser runs on a thread and a tokio runtime of its own. In the honest devices' runtime
//! its hundreds of tasks, waking together and each building a TLS ClientHello (an ML-KEM-768
//! key pair) per attempt, queued the honest tasks behind them for tens of milliseconds: the
//! tool measured its own run queue, not the relay (BENCHMARKS.md, finding 7, fifth session).
//! On a thread of its own the operating system shares the cores between it and the honest
//! devices as between two processes. Every ClientHello carries the same key shares
//! ([`ReplayedShares`]), as a client flooding the relay would send: the relay receives what it
//! received before, and the abuser spends about half the CPU it did on the cores it shares
//! with the relay.
//!
//! The abuser's thread runs at the lowest CPU priority (nice 19, [`AbuserPriority::LOW`]; the
//! default): in a real attack the attacker's CPU is on the attacker's machine and only its
//! datagrams reach the relay's, but here it shares two cores with the relay and the honest
//! devices, and at the same priority the relay's workers waited behind it for a CPU
//! (BENCHMARKS.md, finding 7, ninth and tenth sessions). At nice 19 it takes the CPU the others
//! leave. [`AbuserPriority::Normal`] (`--abuser-priority normal`) runs it at the tool's own
//! priority, as before, so that both can be reported.
//!
//! With [`Abuse::replay`] (`--abuse-replay`; off by default), its QUIC client makes the
//! attempts as before until the relay refuses one (the address is at its cap). From then on,
//! until the relay shows room again (a connection of the abuser's ended, or the relay
//! admitted a recorded attempt), every attempt is sent as the datagrams of an attempt its
//! QUIC client made earlier ([`recorded`]): the same Initial datagrams, answered by the same
//! refusal, without a QUIC connection's set-up and teardown in the abuser for each.

mod recorded;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Result, anyhow};
use bytes::Bytes;
use kith_protocol::frame::encode_frame;
use kith_protocol::keys::{DeviceSigningKey, system_rng};
use kith_protocol::proto::{self, Request, request};
use kith_relay::client::{RelayClient, RelayClientError};
use kith_relay::tls;
use tokio::sync::watch;

use recorded::{Answer, Recorded, Replayer};

/// What the abuser does.
#[derive(Debug, Clone, Copy)]
pub struct Abuse {
    /// Unauthenticated connections to keep open.
    pub idle: usize,
    /// Pulls that never read their answers.
    pub stalled: usize,
    /// Streams sending oversized frames back to back.
    pub flooders: usize,
    /// Send refused attempts as recorded datagrams ([`recorded`]; off by default: on a loaded
    /// host the relay admitted hundreds of them per round as half-open handshakes, a
    /// different abuse: BENCHMARKS.md, finding 7, tenth session).
    pub replay: bool,
}

/// The CPU priority of the abuser's thread (`--abuser-priority`: `low`, `normal`, or a nice
/// value from 0 to 19).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbuserPriority {
    /// This nice value; [`AbuserPriority::LOW`], nice 19 (the lowest), by default: the abuser
    /// takes the CPU that the relay and the honest devices leave, as an attacker's client on a
    /// machine of its own takes none of theirs.
    Nice(i32),
    /// The tool's own priority, as every thread of the tool ran before the eleventh session.
    Normal,
}

impl AbuserPriority {
    /// The lowest priority, `--abuser-priority low`.
    pub const LOW: AbuserPriority = AbuserPriority::Nice(19);
}

impl std::str::FromStr for AbuserPriority {
    type Err = String;
    fn from_str(text: &str) -> std::result::Result<Self, String> {
        match text {
            "low" => Ok(AbuserPriority::LOW),
            "normal" => Ok(AbuserPriority::Normal),
            _ => match text.parse::<i32>() {
                Ok(nice) if (0..=19).contains(&nice) => Ok(AbuserPriority::Nice(nice)),
                _ => Err(format!(
                    "`{text}`: low, normal, or a nice value from 0 to 19"
                )),
            },
        }
    }
}

impl std::fmt::Display for AbuserPriority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AbuserPriority::Nice(19) => f.write_str("low priority (nice 19)"),
            AbuserPriority::Nice(nice) => write!(f, "nice {nice}"),
            AbuserPriority::Normal => f.write_str("the tool's priority"),
        }
    }
}

/// Sets the calling thread's CPU priority to `priority` (a thread's nice value is its own on
/// Linux: `setpriority` on its thread id leaves the process's other threads as they are). A
/// nice value below the thread's own needs the privilege to raise a priority.
#[cfg(target_os = "linux")]
fn set_thread_priority(priority: AbuserPriority) -> Result<()> {
    if let AbuserPriority::Nice(nice) = priority {
        rustix::process::setpriority_process(Some(rustix::thread::gettid()), nice)
            .map_err(|e| anyhow!("abuser's thread at nice {nice}: {e}"))?;
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn set_thread_priority(priority: AbuserPriority) -> Result<()> {
    if let AbuserPriority::Nice(_) = priority {
        anyhow::bail!(
            "--abuser-priority other than normal needs Linux (a thread's own nice value)"
        );
    }
    Ok(())
}

/// The nice value of thread `tid` of this process (`/proc/self/task/<tid>/stat`, field 19).
pub fn thread_nice(tid: &str) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    // Fields 3 onwards follow the command name's closing parenthesis (a name may hold spaces).
    let (_, fields) = stat.rsplit_once(')')?;
    fields.split_whitespace().nth(19 - 3)?.parse().ok()
}

/// Counts of what the abuser did.
#[derive(Debug, Default)]
pub struct AbuseStats {
    /// Unauthenticated connections open now.
    pub idle_open: AtomicU64,
    /// Connection attempts (idle and flooding connections; the set-up's are not counted).
    pub attempts: AtomicU64,
    /// Attempts sent as recorded datagrams (the abuser held as many connections as the relay
    /// admits from one address), counted in `attempts` too.
    pub replayed: AtomicU64,
    /// Recorded attempts the relay answered with a handshake or a Retry instead of a
    /// refusal (it had room): each is left half-open, and is not sent again.
    pub replayed_admitted: AtomicU64,
    /// Attempts whose handshake completed: each cost the relay a TLS handshake.
    pub established: AtomicU64,
    /// Attempts the relay refused before any handshake (QUIC `CONNECTION_REFUSED`).
    pub refused: AtomicU64,
    /// Attempts that failed otherwise (a handshake that timed out or broke).
    pub failed: AtomicU64,
    /// Attempts the relay did not answer within [`ANSWER_WAIT`] (its quiet period after a
    /// refusal drops them unanswered); the abuser tries again at once, so that the relay's
    /// silence does not slow it down.
    pub unanswered: AtomicU64,
    /// Established connections the relay closed (not authenticated in time, too many bad
    /// frames).
    pub closed: AtomicU64,
    /// Stalled pulls sent.
    pub stalled_sent: AtomicU64,
    /// Oversized frames sent.
    pub oversized_sent: AtomicU64,
}

impl AbuseStats {
    /// The counts now, in the order of [`AbuseCounts`].
    pub fn counts(&self) -> AbuseCounts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        AbuseCounts {
            idle_open: get(&self.idle_open),
            attempts: get(&self.attempts),
            replayed: get(&self.replayed),
            replayed_admitted: get(&self.replayed_admitted),
            established: get(&self.established),
            refused: get(&self.refused),
            failed: get(&self.failed),
            unanswered: get(&self.unanswered),
            closed: get(&self.closed),
            stalled_sent: get(&self.stalled_sent),
            oversized_sent: get(&self.oversized_sent),
        }
    }
}

/// A snapshot of [`AbuseStats`].
#[derive(Debug, Clone, Copy, Default)]
pub struct AbuseCounts {
    pub idle_open: u64,
    pub attempts: u64,
    pub replayed: u64,
    pub replayed_admitted: u64,
    pub established: u64,
    pub refused: u64,
    pub failed: u64,
    pub unanswered: u64,
    pub closed: u64,
    pub stalled_sent: u64,
    pub oversized_sent: u64,
}

impl std::ops::Sub for AbuseCounts {
    type Output = AbuseCounts;
    fn sub(self, earlier: AbuseCounts) -> AbuseCounts {
        AbuseCounts {
            idle_open: self.idle_open,
            attempts: self.attempts - earlier.attempts,
            replayed: self.replayed - earlier.replayed,
            replayed_admitted: self.replayed_admitted - earlier.replayed_admitted,
            established: self.established - earlier.established,
            refused: self.refused - earlier.refused,
            failed: self.failed - earlier.failed,
            unanswered: self.unanswered - earlier.unanswered,
            closed: self.closed - earlier.closed,
            stalled_sent: self.stalled_sent - earlier.stalled_sent,
            oversized_sent: self.oversized_sent - earlier.oversized_sent,
        }
    }
}

/// A running abuser: its counts, and its thread until [`Abuser::stop`].
pub struct Abuser {
    /// What it did so far.
    pub stats: Arc<AbuseStats>,
    stop: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Its UDP endpoints, closed by [`Abuser::stop`].
    endpoints: Vec<quinn::Endpoint>,
    /// Its thread's id (`/proc/self/task/<tid>`), when it runs on a thread of its own.
    tid: Option<String>,
}

impl Abuser {
    /// The nice value its thread runs at; `None` on the honest devices' runtime.
    pub fn nice(&self) -> Option<i32> {
        thread_nice(self.tid.as_ref()?)
    }

    /// CPU seconds (user + system) the abuser's thread has used: everything the abuser does
    /// (its TLS client work, its sockets' system calls), apart from the honest devices' and
    /// the tool's own. `None` on the honest devices' runtime (`--abuse-same-runtime`).
    pub fn cpu_seconds(&self) -> Option<f64> {
        let tid = self.tid.as_ref()?;
        super::cpu_seconds(&format!("self/task/{tid}"))
    }

    /// Closes every abuser connection (the relay is told, so that none of them lingers into
    /// the next round until its idle timeout), then stops every abuser task and waits for its
    /// thread.
    pub async fn stop(mut self) {
        for endpoint in &self.endpoints {
            endpoint.close(0u32.into(), b"");
        }
        // The endpoints' drivers run on the abuser's runtime, still up: they send the closes.
        for endpoint in &self.endpoints {
            let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
        }
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

/// The abuser of abused round `round` (0, 1, …) speaks from 127.0.0.(2 + `round`): a source
/// the relay has not met before, whose per-address budgets are full, in every round.
pub fn source(round: usize) -> Result<std::net::IpAddr> {
    let last = u8::try_from(round + 2)
        .ok()
        .filter(|last| *last < 255)
        .ok_or_else(|| anyhow!("at most 253 abused rounds (one loopback address each)"))?;
    Ok(std::net::Ipv4Addr::new(127, 0, 0, last).into())
}

fn endpoint(source: std::net::IpAddr, client: &quinn::ClientConfig) -> Result<quinn::Endpoint> {
    let mut endpoint = quinn::Endpoint::client(SocketAddr::new(source, 0))?;
    endpoint.set_default_client_config(client.clone());
    Ok(endpoint)
}

/// The abuser's QUIC client configuration: an honest client's ([`tls::client_config`]: the
/// same TLS 1.3 ClientHello, key shares, transport parameters and keep-alives) except that
/// every ClientHello carries the same key shares ([`ReplayedShares`]).
fn client_config(pin: [u8; 32]) -> Result<quinn::ClientConfig> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.kx_groups.insert(0, replayed_shares()?);
    let mut crypto = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(kith_tls::PinnedCertVerifier::new(pin)))
        .with_no_client_auth();
    crypto.alpn_protocols = vec![kith_tls::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(crypto)
        .map_err(|e| anyhow!("abuser TLS: {e}"))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(tls::client_transport(kith_net::MAX_UDP_PAYLOAD));
    Ok(config)
}

/// The abuser's X25519MLKEM768 (the group `kith_tls::X25519MLKEM768` speaks, in the same
/// encoding): one ML-KEM-768 key pair and one X25519 key, made once per run of the tool and
/// offered in every ClientHello, as a client flooding a relay with connection attempts would
/// do. An honest client makes fresh ones for each connection, which took most of the abuser's
/// CPU (an ML-KEM-768 key generation and an X25519 base-point multiplication per attempt,
/// ~1,200 attempts a second, ten to fifteen times the relay's own cost of the abuse:
/// BENCHMARKS.md, finding 7, ninth session) on the two cores it shares with the relay. The
/// relay receives the same datagrams either way (it refuses most attempts at their first
/// packet, before reading the ClientHello); a connection it accepts completes its handshake
/// as any other.
struct ReplayedShares {
    decapsulation: MlKemDecapsulationKey,
    x25519: x25519_dalek::StaticSecret,
    x25519_public: [u8; 32],
    /// The ML-KEM encapsulation key, then the X25519 public key.
    share: Vec<u8>,
}

type MlKemDecapsulationKey = <ml_kem::MlKem768 as ml_kem::kem::Kem>::DecapsulationKey;

impl std::fmt::Debug for ReplayedShares {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReplayedShares")
    }
}

static SHARES: std::sync::OnceLock<ReplayedShares> = std::sync::OnceLock::new();

/// The tool's [`ReplayedShares`], made at first use.
fn replayed_shares() -> Result<&'static ReplayedShares> {
    if let Some(shares) = SHARES.get() {
        return Ok(shares);
    }
    let decapsulation =
        <MlKemDecapsulationKey as ml_kem::Generate>::try_generate_from_rng(&mut getrandom::SysRng)
            .map_err(|e| anyhow!("abuser ML-KEM key: {e}"))?;
    let mut secret = zeroize::Zeroizing::new([0u8; 32]);
    getrandom::fill(&mut secret[..]).map_err(|e| anyhow!("abuser X25519 key: {e}"))?;
    let x25519 = x25519_dalek::StaticSecret::from(*secret);
    let x25519_public = x25519_dalek::PublicKey::from(&x25519).to_bytes();
    let mut share = ml_kem::KeyExport::to_bytes(decapsulation.encapsulation_key()).to_vec();
    share.extend_from_slice(&x25519_public);
    // Another thread may have made them first: either is fine.
    let _ = SHARES.set(ReplayedShares {
        decapsulation,
        x25519,
        x25519_public,
        share,
    });
    SHARES
        .get()
        .ok_or_else(|| anyhow!("abuser key shares missing"))
}

/// An X25519 shared secret with the server's `public` key, refused when it is all zeros (as
/// the provider's X25519 refuses it).
fn x25519_secret(
    secret: &x25519_dalek::StaticSecret,
    public: &[u8],
) -> Result<x25519_dalek::SharedSecret, rustls::Error> {
    let public: [u8; 32] = public
        .try_into()
        .map_err(|_| rustls::Error::PeerMisbehaved(rustls::PeerMisbehaved::InvalidKeyShare))?;
    let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(public));
    if !shared.was_contributory() {
        return Err(rustls::Error::PeerMisbehaved(
            rustls::PeerMisbehaved::InvalidKeyShare,
        ));
    }
    Ok(shared)
}

impl rustls::crypto::SupportedKxGroup for ReplayedShares {
    fn start(&self) -> Result<Box<dyn rustls::crypto::ActiveKeyExchange>, rustls::Error> {
        let shares = SHARES
            .get()
            .ok_or_else(|| rustls::Error::General("abuser key shares missing".into()))?;
        Ok(Box::new(ReplayedExchange(shares)))
    }

    fn ffdhe_group(&self) -> Option<rustls::ffdhe_groups::FfdheGroup<'static>> {
        None
    }

    fn name(&self) -> rustls::NamedGroup {
        rustls::NamedGroup::X25519MLKEM768
    }

    fn usable_for_version(&self, version: rustls::ProtocolVersion) -> bool {
        version == rustls::ProtocolVersion::TLSv1_3
    }
}

/// One ClientHello's key exchange with the [`ReplayedShares`].
struct ReplayedExchange(&'static ReplayedShares);

impl rustls::crypto::ActiveKeyExchange for ReplayedExchange {
    fn complete(
        self: Box<Self>,
        server_share: &[u8],
    ) -> Result<rustls::crypto::SharedSecret, rustls::Error> {
        use ml_kem::Decapsulate;
        let invalid = rustls::Error::PeerMisbehaved(rustls::PeerMisbehaved::InvalidKeyShare);
        if server_share.len() != kith_tls::MLKEM768_CIPHERTEXT_LEN + kith_tls::X25519_LEN {
            return Err(invalid);
        }
        let (ciphertext, x25519) = server_share.split_at(kith_tls::MLKEM768_CIPHERTEXT_LEN);
        let post_quantum = zeroize::Zeroizing::new(
            self.0
                .decapsulation
                .decapsulate_slice(ciphertext)
                .map_err(|_| invalid)?,
        );
        let classical = x25519_secret(&self.0.x25519, x25519)?;
        // ML-KEM's secret first, then X25519's (draft-ietf-tls-ecdhe-mlkem §3).
        let mut secret = zeroize::Zeroizing::new(Vec::with_capacity(64));
        secret.extend_from_slice(&post_quantum);
        secret.extend_from_slice(classical.as_bytes());
        Ok(rustls::crypto::SharedSecret::from(&secret[..]))
    }

    fn hybrid_component(&self) -> Option<(rustls::NamedGroup, &[u8])> {
        Some((rustls::NamedGroup::X25519, &self.0.x25519_public))
    }

    fn complete_hybrid_component(
        self: Box<Self>,
        server_share: &[u8],
    ) -> Result<rustls::crypto::SharedSecret, rustls::Error> {
        let classical = x25519_secret(&self.0.x25519, server_share)?;
        Ok(rustls::crypto::SharedSecret::from(
            &classical.as_bytes()[..],
        ))
    }

    fn pub_key(&self) -> &[u8] {
        &self.0.share
    }

    fn ffdhe_group(&self) -> Option<rustls::ffdhe_groups::FfdheGroup<'static>> {
        None
    }

    fn group(&self) -> rustls::NamedGroup {
        rustls::NamedGroup::X25519MLKEM768
    }
}

/// Where the abuser runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// On a thread and runtime of its own, at this priority.
    Thread(AbuserPriority),
    /// On the caller's runtime (the honest devices'), at its priority.
    SameRuntime,
}

/// Starts the abuser, speaking from `source`, where `placement` says; it runs until
/// [`Abuser::stop`]. Returns once its stalled pulls are in flight and its other tasks started.
pub async fn start(
    abuse: Abuse,
    source: std::net::IpAddr,
    addr: SocketAddr,
    pin: [u8; 32],
    placement: Placement,
) -> Result<Abuser> {
    let stats = Arc::new(AbuseStats::default());
    let (stop, stopped) = watch::channel(false);
    let priority = match placement {
        Placement::Thread(priority) => priority,
        Placement::SameRuntime => {
            let endpoints = run(abuse, source, addr, pin, stats.clone(), stopped).await?;
            return Ok(Abuser {
                stats,
                stop,
                thread: None,
                endpoints,
                tid: None,
            });
        }
    };
    let (ready, is_ready) = tokio::sync::oneshot::channel();
    let thread_stats = stats.clone();
    let thread = std::thread::Builder::new()
        .name("abuser".into())
        .spawn(move || {
            // "<pid>/task/<tid>": this thread's own CPU account.
            let tid = std::fs::read_link("/proc/thread-self")
                .ok()
                .and_then(|path| {
                    path.file_name()
                        .and_then(|name| name.to_str())
                        .map(str::to_owned)
                });
            // Before the runtime: its threads (tokio's blocking pool) inherit the priority.
            if let Err(e) = set_thread_priority(priority) {
                let _ = ready.send(Err(e));
                return;
            }
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = ready.send(Err(anyhow!("abuser runtime: {e}")));
                    return;
                }
            };
            runtime.block_on(async move {
                let mut stopped = stopped;
                let started = run(abuse, source, addr, pin, thread_stats, stopped.clone()).await;
                let ok = started.is_ok();
                let _ = ready.send(started.map(|endpoints| (endpoints, tid)));
                if ok {
                    let _ = stopped.wait_for(|stop| *stop).await;
                }
            });
        })?;
    let (endpoints, tid) = is_ready
        .await
        .map_err(|_| anyhow!("the abuser's thread ended"))??;
    Ok(Abuser {
        stats,
        stop,
        thread: Some(thread),
        endpoints,
        tid,
    })
}

/// Sets up the abuser's account and starts its tasks on the current (the abuser's) runtime;
/// returns its endpoints.
async fn run(
    abuse: Abuse,
    source: std::net::IpAddr,
    addr: SocketAddr,
    pin: [u8; 32],
    stats: Arc<AbuseStats>,
    stopped: watch::Receiver<bool>,
) -> Result<Vec<quinn::Endpoint>> {
    let client = client_config(pin)?;
    let endpoints: Vec<quinn::Endpoint> = (0..8)
        .map(|_| endpoint(source, &client))
        .collect::<Result<_>>()?;
    // One recorded attempt for each task that makes attempts, and some to spare.
    let tasks = abuse.idle + abuse.flooders;
    let mut recordings = if abuse.replay {
        recorded::record(source, &client, tasks + SPARE_RECORDINGS).await?
    } else {
        Vec::new()
    };
    let replayer = Replayer::bind(source, addr).await?;
    tokio::spawn(replayer.clone().read_answers(stopped.clone()));
    let attempts = Arc::new(Attempts {
        addr,
        stats: stats.clone(),
        stopped: stopped.clone(),
        full: Arc::new(AtomicBool::new(false)),
        replayer,
        spares: std::sync::Mutex::new(recordings.split_off(tasks.min(recordings.len()))),
    });
    let mut recordings = recordings.into_iter();
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
        let live = attempts.enter();
        client.authenticate(&key, &account).await?;
        let held = Arc::new((client, live));
        for _ in 0..per_connection.min(abuse.stalled - c * per_connection) {
            tokio::spawn(stalled_pull(held.clone(), stats.clone(), stopped.clone()));
        }
    }
    for i in 0..abuse.flooders {
        tokio::spawn(flood(
            endpoints[i % endpoints.len()].clone(),
            attempts.clone(),
            recordings.next(),
        ));
    }
    for i in 0..abuse.idle {
        tokio::spawn(idle_connection(
            endpoints[i % endpoints.len()].clone(),
            attempts.clone(),
            recordings.next(),
        ));
    }
    Ok(endpoints)
}

/// Recorded attempts kept for the tasks whose own was admitted by the relay (and so is not
/// sent again).
const SPARE_RECORDINGS: usize = 64;

/// How long an attempt waits for the relay's answer (a completed handshake or a refusal)
/// before the abuser makes its next attempt: about the pause after a refusal, so that an
/// abuser the relay does not answer sends new connections as often as one it refuses. The
/// attempt is not given up: it goes on waiting, for up to [`STRAGGLER_WAIT`], beside the next
/// ones (a handshake slowed by a busy machine still completes, and is held as an idle
/// connection).
pub const ANSWER_WAIT: Duration = Duration::from_millis(500);

/// How long an attempt that was not answered within [`ANSWER_WAIT`] goes on waiting: the
/// relay's handshake timeout.
const STRAGGLER_WAIT: Duration = Duration::from_secs(10);

/// How one connection attempt of the abuser's ended.
enum Attempt {
    /// Established, with its place among the connections the abuser holds.
    Established(RelayClient, Live),
    /// Refused, or failed otherwise: pause before the next.
    Refused,
    /// No answer within [`ANSWER_WAIT`]: the next at once (this one waits on by itself).
    Unanswered,
}

/// What the abuser's connection attempts share.
struct Attempts {
    addr: SocketAddr,
    stats: Arc<AbuseStats>,
    stopped: watch::Receiver<bool>,
    /// Whether the relay refused the QUIC client's last attempt, and has shown no room since
    /// (no connection of the abuser's ended, no recorded attempt was admitted): attempts are
    /// replayed while it is set.
    full: Arc<AtomicBool>,
    replayer: Arc<Replayer>,
    /// Recorded attempts not given to a task yet.
    spares: std::sync::Mutex<Vec<Recorded>>,
}

/// One of the connections the abuser holds: when it ends, the relay has room for another
/// ([`Attempts::full`] is cleared).
struct Live(Arc<AtomicBool>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl Attempts {
    /// Whether the relay refused the last attempt of the QUIC client and has shown no room
    /// since.
    fn full(&self) -> bool {
        self.full.load(Ordering::SeqCst)
    }

    /// A connection held, which shows the relay's room again when it ends.
    fn enter(&self) -> Live {
        Live(self.full.clone())
    }

    /// One connection attempt: replayed from `recording` while the relay refuses the abuser
    /// ([`Attempts::full`]), made by the QUIC client otherwise (or when no recorded attempt is
    /// left). One not answered within [`ANSWER_WAIT`] is left to
    /// wait on its own (and, if it connects, to be held open like an idle connection).
    async fn attempt(
        self: &Arc<Self>,
        endpoint: &quinn::Endpoint,
        recording: &mut Option<Recorded>,
    ) -> Attempt {
        let stats = &self.stats;
        stats.attempts.fetch_add(1, Ordering::Relaxed);
        if recording.is_some() && self.full() {
            return self.replay(recording).await;
        }
        let mut connect = Box::pin(RelayClient::connect_with(endpoint.clone(), self.addr));
        tokio::select! {
            result = &mut connect => return self.outcome(result),
            _ = tokio::time::sleep(ANSWER_WAIT) => {}
        }
        stats.unanswered.fetch_add(1, Ordering::Relaxed);
        let (attempts, stats, mut stopped) = (self.clone(), stats.clone(), self.stopped.clone());
        tokio::spawn(async move {
            let result = tokio::select! {
                result = tokio::time::timeout(STRAGGLER_WAIT, connect) => result,
                _ = stopped.wait_for(|stop| *stop) => return,
            };
            let Ok(result) = result else {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                return;
            };
            if let Attempt::Established(client, live) = attempts.outcome(result) {
                hold(client, live, &stats, &mut stopped).await;
            }
        });
        Attempt::Unanswered
    }

    /// Sends `recording`'s datagrams again and counts the relay's answer. A recording the
    /// relay admitted is replaced by a spare (or by none: the task's attempts are then made
    /// by the QUIC client).
    async fn replay(&self, recording: &mut Option<Recorded>) -> Attempt {
        let Some(attempt) = recording.as_ref() else {
            return Attempt::Refused;
        };
        let stats = &self.stats;
        stats.replayed.fetch_add(1, Ordering::Relaxed);
        match self.replayer.attempt(attempt, ANSWER_WAIT).await {
            Ok(Some(Answer::Refused)) => {
                stats.refused.fetch_add(1, Ordering::Relaxed);
                Attempt::Refused
            }
            Ok(Some(Answer::Handshake | Answer::Retry)) => {
                stats.replayed_admitted.fetch_add(1, Ordering::Relaxed);
                self.full.store(false, Ordering::SeqCst);
                *recording = match self.spares.lock() {
                    Ok(mut spares) => spares.pop(),
                    Err(_) => None,
                };
                Attempt::Refused
            }
            Ok(None) => {
                stats.unanswered.fetch_add(1, Ordering::Relaxed);
                Attempt::Unanswered
            }
            Err(_) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                Attempt::Refused
            }
        }
    }

    /// Counts how a connection attempt of the QUIC client ended.
    fn outcome(&self, result: Result<RelayClient, RelayClientError>) -> Attempt {
        let stats = &self.stats;
        match result {
            Ok(client) => {
                stats.established.fetch_add(1, Ordering::Relaxed);
                Attempt::Established(client, self.enter())
            }
            Err(RelayClientError::Connection(quinn::ConnectionError::ConnectionClosed(close)))
                if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
            {
                stats.refused.fetch_add(1, Ordering::Relaxed);
                self.full.store(true, Ordering::SeqCst);
                Attempt::Refused
            }
            Err(_) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                Attempt::Refused
            }
        }
    }
}

/// Holds an established connection, doing nothing, until the relay closes it or the abuser
/// stops.
async fn hold(
    client: RelayClient,
    live: Live,
    stats: &AbuseStats,
    stopped: &mut watch::Receiver<bool>,
) {
    stats.idle_open.fetch_add(1, Ordering::Relaxed);
    tokio::select! {
        _ = client.connection().closed() => {
            stats.closed.fetch_add(1, Ordering::Relaxed);
        }
        _ = stopped.wait_for(|stop| *stop) => {}
    }
    stats.idle_open.fetch_sub(1, Ordering::Relaxed);
    client.connection().close(0u32.into(), b"");
    drop(live);
}

/// How often an idle task that is refused tries again.
const IDLE_PERIOD: Duration = Duration::from_millis(500);

/// How often a flooder that is refused tries again.
const FLOOD_PERIOD: Duration = Duration::from_millis(100);

/// Waits until `period` after `started` (an attempt's start), or until the abuser stops. The
/// period runs from the attempt's start, not from the answer (as it did until the eleventh
/// session), so that an abuser whose thread reads the relay's answers late — at low priority it
/// waits for a CPU — does not make fewer attempts for that alone. (An abuser starved of CPU
/// makes fewer all the same: BENCHMARKS.md, finding 7, eleventh session.)
async fn pace(
    started: tokio::time::Instant,
    period: Duration,
    stopped: &mut watch::Receiver<bool>,
) {
    let next = started + period;
    if next <= tokio::time::Instant::now() {
        return;
    }
    tokio::select! {
        _ = tokio::time::sleep_until(next) => {}
        _ = stopped.wait_for(|stop| *stop) => {}
    }
}

async fn idle_connection(
    endpoint: quinn::Endpoint,
    attempts: Arc<Attempts>,
    mut recording: Option<Recorded>,
) {
    let mut stopped = attempts.stopped.clone();
    while !*stopped.borrow() {
        let started = tokio::time::Instant::now();
        match attempts.attempt(&endpoint, &mut recording).await {
            Attempt::Established(client, live) => {
                hold(client, live, &attempts.stats, &mut stopped).await;
                // A connection held for a while: a pause, as after a refusal.
                pace(tokio::time::Instant::now(), IDLE_PERIOD, &mut stopped).await;
            }
            Attempt::Refused => pace(started, IDLE_PERIOD, &mut stopped).await,
            Attempt::Unanswered => {}
        }
    }
}

/// A pull whose answer is never read, sent again whenever the relay resets it.
async fn stalled_pull(
    held: Arc<(RelayClient, Live)>,
    stats: Arc<AbuseStats>,
    mut stopped: watch::Receiver<bool>,
) {
    let client = &held.0;
    let frame = Bytes::from(encode_frame(&Request {
        kind: Some(request::Kind::Pull(proto::Pull::default())),
    }));
    while !*stopped.borrow() {
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
            _ = stopped.wait_for(|stop| *stop) => {}
        }
    }
}

/// Oversized request frames back to back: each announces one byte more than the largest
/// frame the relay takes and sends a little of it. When the relay closes the connection (at
/// the first such frame), the flooder connects again and goes on.
async fn flood(
    endpoint: quinn::Endpoint,
    attempts: Arc<Attempts>,
    mut recording: Option<Recorded>,
) {
    let mut stopped = attempts.stopped.clone();
    let stats = &attempts.stats;
    let max = kith_relay::Bounds::default().max_frame_bytes;
    let mut frame = (max + 1).to_be_bytes().to_vec();
    frame.extend_from_slice(&[0u8; 16 * 1024]);
    let frame = Bytes::from(frame);
    while !*stopped.borrow() {
        let started = tokio::time::Instant::now();
        let (client, _live) = match attempts.attempt(&endpoint, &mut recording).await {
            Attempt::Established(client, live) => (client, live),
            Attempt::Unanswered => continue,
            Attempt::Refused => {
                pace(started, FLOOD_PERIOD, &mut stopped).await;
                continue;
            }
        };
        while !*stopped.borrow() {
            // Counted when sent: the relay closes the connection at the frame (since the
            // seventh session) instead of answering it.
            stats.oversized_sent.fetch_add(1, Ordering::Relaxed);
            if client.call_frame(frame.clone()).await.is_err() {
                stats.closed.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
    }
}

/// What the relay counted (its `/metrics`), for the counts that explain an abused round.
#[derive(Debug, Clone, Default)]
pub struct RelayCounts {
    samples: std::collections::HashMap<String, f64>,
}

impl RelayCounts {
    /// Reads the relay's metrics listener at `addr` (plain HTTP/1.1, one GET).
    pub async fn read(addr: SocketAddr) -> Result<Self> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")
            .await?;
        let mut text = String::new();
        stream.read_to_string(&mut text).await?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, body)| body)
            .ok_or_else(|| anyhow!("metrics: no HTTP body"))?;
        let samples = body
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (name, value) = line.rsplit_once(' ')?;
                Some((name.to_owned(), value.parse().ok()?))
            })
            .collect();
        Ok(Self { samples })
    }

    /// A sample by its full name (labels included), 0 when absent.
    pub fn get(&self, name: &str) -> f64 {
        self.samples.get(name).copied().unwrap_or(0.0)
    }

    /// `self - earlier` for one sample.
    pub fn delta(&self, earlier: &Self, name: &str) -> u64 {
        (self.get(name) - earlier.get(name)).max(0.0) as u64
    }

    /// The `p`-quantile of the relay's push acknowledgement time between two readings, in
    /// milliseconds, as the upper bound of its histogram bucket (`None` without pushes).
    pub fn push_ack_quantile_ms(&self, earlier: &Self, p: f64) -> Option<f64> {
        let prefix = "kith_relay_push_ack_seconds_bucket{le=\"";
        let mut buckets: Vec<(f64, f64)> = self
            .samples
            .iter()
            .filter_map(|(name, value)| {
                let le = name.strip_prefix(prefix)?.strip_suffix("\"}")?;
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((bound, value - earlier.get(name)))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let total = buckets.last()?.1;
        if total <= 0.0 {
            return None;
        }
        buckets
            .iter()
            .find(|(_, count)| *count >= total * p)
            .map(|(bound, _)| bound * 1e3)
    }
}

/// The relay's counts over one round, printed on one line.
pub fn print_relay_counts(round: &str, before: &RelayCounts, after: &RelayCounts) {
    let d = |name: &str| after.delta(before, name);
    let p99 = after
        .push_ack_quantile_ms(before, 0.99)
        .map_or("-".to_owned(), |ms| format!("<= {ms:.0} ms"));
    println!(
        "relay, {round}: handshakes completed {}, failed {}, timed out {}; refused before the \
         handshake: {} at the address's cap, {} past the address's handshake budget, {} at the \
         connection limit; Initial packets dropped unanswered in an address's quiet period {}; \
         Retry sent {}; bad frames {}; pulls refused for the pull budget {}; relay-side push ack \
         p99 {p99}",
        d("kith_relay_handshakes_total{result=\"ok\"}"),
        d("kith_relay_handshakes_total{result=\"failed\"}"),
        d("kith_relay_handshakes_total{result=\"timed_out\"}"),
        d("kith_relay_connections_refused_total{limit=\"max_connections_per_address\"}"),
        d("kith_relay_connections_refused_total{limit=\"handshakes_per_address\"}"),
        d("kith_relay_connections_refused_total{limit=\"max_connections\"}"),
        d("kith_relay_initials_dropped_total"),
        d("kith_relay_retries_total"),
        d("kith_relay_bad_frames_total"),
        d("kith_relay_rate_limited_total{limit=\"pull_budget\"}"),
    );
}

/// UDP datagrams the kernel dropped, per local socket address (the `drops` column of
/// /proc/net/udp: datagrams that found the socket's receive buffer full); empty where it
/// cannot be read.
pub fn udp_drops() -> std::collections::HashMap<SocketAddr, u64> {
    let Ok(table) = std::fs::read_to_string("/proc/net/udp") else {
        return Default::default();
    };
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (ip, port) = fields.get(1)?.split_once(':')?;
            // The address is the kernel's u32 in host order (little-endian here), the port
            // big-endian.
            let ip = std::net::Ipv4Addr::from(u32::from_str_radix(ip, 16).ok()?.swap_bytes());
            let port = u16::from_str_radix(port, 16).ok()?;
            let drops = fields.last()?.parse().ok()?;
            Some((SocketAddr::from((ip, port)), drops))
        })
        .collect()
}

/// Datagrams dropped between two [`udp_drops`] readings, on the relay's socket, on the honest
/// devices' sockets (`honest`), on the abusers' (loopback addresses other than 127.0.0.1) and
/// on any other.
pub fn print_udp_drops(
    round: &str,
    before: &std::collections::HashMap<SocketAddr, u64>,
    relay: SocketAddr,
    honest: &[SocketAddr],
) {
    let (mut on_relay, mut on_honest, mut on_abuser, mut other) = (0, 0, 0, 0);
    for (socket, drops) in udp_drops() {
        let new = drops.saturating_sub(before.get(&socket).copied().unwrap_or(0));
        if socket == relay {
            on_relay += new;
        } else if honest.contains(&socket) {
            on_honest += new;
        } else if socket.ip().is_loopback() && socket.ip() != std::net::Ipv4Addr::LOCALHOST {
            on_abuser += new;
        } else {
            other += new;
        }
    }
    println!(
        "kernel, {round}: UDP datagrams dropped for a full receive buffer: {on_relay} on the \
         relay's socket, {on_honest} on the honest devices', {on_abuser} on the abuser's, \
         {other} on other sockets of the machine"
    );
}

/// Packets the honest devices' connections declared lost (and so sent again), over all.
pub fn lost_packets(connections: &[&quinn::Connection]) -> u64 {
    connections
        .iter()
        .map(|c| c.stats().path.lost_packets)
        .sum()
}

/// How late the tool's own runtime wakes a 1 ms timer: when the honest devices' tasks wait
/// for a worker, their latencies are the tool's, not the relay's.
pub struct LagProbe {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Vec<Duration>>,
}

impl LagProbe {
    /// Starts probing on the current runtime.
    pub fn start() -> Self {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut lags = Vec::new();
            let tick = Duration::from_millis(1);
            while !*stopped.borrow() {
                let asked = std::time::Instant::now();
                tokio::select! {
                    _ = tokio::time::sleep(tick) => {}
                    _ = stopped.changed() => break,
                }
                lags.push(asked.elapsed().saturating_sub(tick));
            }
            lags
        });
        Self { stop, task }
    }

    /// Stops; returns (p99, max) of the lateness.
    pub async fn finish(self) -> (Duration, Duration) {
        let _ = self.stop.send(true);
        let mut lags = self.task.await.unwrap_or_default();
        lags.sort_unstable();
        (
            super::percentile(&lags, 0.99),
            lags.last().copied().unwrap_or_default(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key exchange group a connection's handshake agreed on.
    fn group(connection: &quinn::Connection) -> rustls::NamedGroup {
        connection
            .handshake_data()
            .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
            .map(|data| data.negotiated_key_exchange_group)
            .expect("handshake data")
    }

    /// The abuser's connections are real ones: with the same key shares in every ClientHello,
    /// each handshake with the relay completes with X25519MLKEM768 (a wrong decapsulation or
    /// combination would fail the handshake's Finished check) and carries requests, so its idle
    /// connections and stalled pulls are what an honest client's would be.
    #[tokio::test]
    async fn the_abusers_replayed_key_shares_complete_handshakes_with_the_relay() {
        let dir = tempfile::tempdir().unwrap();
        let relay =
            kith_relay::Relay::start(kith_relay::config::RelayConfig::for_tests(dir.path()))
                .await
                .unwrap();
        let client = client_config(relay.key_sha256()).unwrap();
        let source = std::net::Ipv4Addr::LOCALHOST.into();
        let mut shares = Vec::new();
        for _ in 0..2 {
            let connection =
                RelayClient::connect_with(endpoint(source, &client).unwrap(), relay.local_addr())
                    .await
                    .unwrap();
            assert_eq!(
                group(connection.connection()),
                rustls::NamedGroup::X25519MLKEM768
            );
            connection.challenge().await.unwrap();
            shares.push(replayed_shares().unwrap().share.clone());
        }
        assert_eq!(
            shares[0].len(),
            kith_tls::MLKEM768_ENCAPSULATION_KEY_LEN + kith_tls::X25519_LEN
        );
        assert_eq!(shares[0], shares[1], "one key share for every attempt");
        relay.shutdown().await.unwrap();
    }

    /// The abuser's thread runs at the priority asked, read back from
    /// `/proc/self/task/<tid>/stat` (field 19): nice 19 at [`AbuserPriority::LOW`] whatever the
    /// thread that started it runs at, and that thread's own nice value at
    /// [`AbuserPriority::Normal`]; the starting thread keeps its own.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_abusers_thread_runs_at_the_priority_asked() {
        // The abuser's thread inherits the nice value of the thread that starts it (this
        // test's): put that below 19 where allowed (as root, as CI runs), so that a thread left
        // at its inherited priority is told from one set to 19. (Under `nice -n 19` without the
        // privilege, Low and Normal cannot be told apart here.)
        let _ = rustix::process::setpriority_process(None, 0);
        let own = rustix::process::getpriority_process(None).unwrap();
        if own == 19 {
            eprintln!("this test's thread runs at nice {own}: Low is not told from Normal here");
        }
        let dir = tempfile::tempdir().unwrap();
        let relay =
            kith_relay::Relay::start(kith_relay::config::RelayConfig::for_tests(dir.path()))
                .await
                .unwrap();
        let plan = Abuse {
            idle: 1,
            stalled: 0,
            flooders: 0,
            replay: false,
        };
        for (priority, expected) in [(AbuserPriority::LOW, 19), (AbuserPriority::Normal, own)] {
            let abuser = start(
                plan,
                std::net::Ipv4Addr::LOCALHOST.into(),
                relay.local_addr(),
                relay.key_sha256(),
                Placement::Thread(priority),
            )
            .await
            .unwrap();
            assert!(
                abuser.tid.is_some(),
                "the abuser runs on a thread of its own"
            );
            assert_eq!(abuser.nice(), Some(expected), "{priority:?}");
            assert_eq!(
                rustix::process::getpriority_process(None).unwrap(),
                own,
                "the thread that started the abuser keeps its priority"
            );
            abuser.stop().await;
        }
        relay.shutdown().await.unwrap();
    }

    /// A refused task's next attempt comes one period after the start of its last, however
    /// late the refusal was read: once the period has passed since the attempt started, the
    /// pause is over at once (a pause counted from the answer would wait a full period more),
    /// so an abuser slowed by its low priority keeps its rate. Polled once, without a clock.
    #[tokio::test]
    async fn the_next_attempt_keeps_the_period_from_the_last_ones_start() {
        fn over_at_once(pause: impl std::future::Future<Output = ()>) -> bool {
            let mut pause = std::pin::pin!(pause);
            let mut context = std::task::Context::from_waker(std::task::Waker::noop());
            pause.as_mut().poll(&mut context).is_ready()
        }
        let (_stop, mut stopped) = watch::channel(false);
        for period in [IDLE_PERIOD, FLOOD_PERIOD] {
            let now = tokio::time::Instant::now();
            // Refused, and the refusal read, a period or more after the attempt started.
            assert!(over_at_once(pace(now - period, period, &mut stopped)));
            assert!(over_at_once(pace(now - period * 3, period, &mut stopped)));
            // Refused at once: the pause lasts the period.
            assert!(!over_at_once(pace(now, period, &mut stopped)));
        }
    }

    /// A recorded attempt is, to the relay, the attempt the abuser's QUIC client made: with
    /// room, the relay reads its ClientHello and answers with its handshake; at the address's
    /// cap, it refuses it before any handshake exactly as it refuses the client's own next
    /// attempt.
    #[tokio::test]
    async fn recorded_attempts_are_answered_as_the_clients_own() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = kith_relay::config::RelayConfig::for_tests(dir.path());
        config.bounds.max_connections_per_address = 1;
        let relay = kith_relay::Relay::start(config).await.unwrap();
        let client = client_config(relay.key_sha256()).unwrap();
        let source: std::net::IpAddr = std::net::Ipv4Addr::LOCALHOST.into();
        let recordings = recorded::record(source, &client, 2).await.unwrap();
        assert_eq!(recordings.len(), 2);
        // Recorded as sent: Initial datagrams of at least 1,200 bytes (RFC 9000 §14.1).
        for datagram in recordings.iter().flat_map(Recorded::datagrams) {
            assert_eq!(datagram[0] & 0xf0, 0xc0, "an Initial packet");
            assert!(datagram.len() >= 1200, "{} bytes", datagram.len());
        }
        let replayer = Replayer::bind(source, relay.local_addr()).await.unwrap();
        let (_stop, stopped) = watch::channel(false);
        tokio::spawn(replayer.clone().read_answers(stopped));
        let wait = Duration::from_secs(10);

        // Room for one connection: the relay starts a handshake for the first recording.
        let answer = replayer.attempt(&recordings[0], wait).await.unwrap();
        assert_eq!(answer, Some(Answer::Handshake));
        assert_eq!(relay.handshakes_started(), 1);
        assert_eq!(relay.connections_refused(), 0);

        // That half-open connection fills the address: the client's own attempt is refused,
        // and so is the second recording, neither with a handshake.
        let Err(refused) =
            RelayClient::connect_with(endpoint(source, &client).unwrap(), relay.local_addr()).await
        else {
            panic!("the client's own attempt was admitted past the cap");
        };
        assert!(
            matches!(
                &refused,
                RelayClientError::Connection(quinn::ConnectionError::ConnectionClosed(close))
                    if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED
            ),
            "{refused:?}"
        );
        // (A ClientHello's second datagram may arrive after the first was refused, and be
        // refused again: at least one refusal each.)
        let refused_before = relay.connections_refused();
        assert!(refused_before >= 1);
        let answer = replayer.attempt(&recordings[1], wait).await.unwrap();
        assert_eq!(answer, Some(Answer::Refused));
        assert!(relay.connections_refused() > refused_before);
        assert_eq!(relay.handshakes_started(), 1);
        relay.shutdown().await.unwrap();
    }
}
