//! The server: endpoint, accept loop, connection limit, one task per request stream, and
//! graceful shutdown — signalled through a watch channel, never polled.
//!
//! Shutdown: the accept loop stops and refuses new connections; connections stop accepting
//! streams; requests in flight finish (subscriptions end), within the grace period; the store
//! is flushed and the endpoint closed.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use kith_protocol::proto::ErrorCode;
use tokio::sync::{Semaphore, mpsc, watch};

use crate::config::RelayConfig;
use crate::error::{RelayError, RequestError};
use crate::handlers::{self, Answer, Command};
use crate::metrics::Handshake;
use crate::state::{Conn, Shared, now_ms};
use crate::store::{GroupCommit, PostgresStore, SledStore, Store, StoreChange};
use crate::tls;
use kith_net::{ReadError, encode_frame, read_frame_body, read_frame_header, write_frame};

/// QUIC application error code of a stream the relay stopped reading (bad frame).
pub const STREAM_REFUSED: u32 = 1;
/// QUIC application error code of a connection closed because it neither authenticated nor
/// kept a request in flight within `Bounds::auth_timeout`.
pub const AUTH_TIMED_OUT: u32 = 3;
/// QUIC application error code of a connection closed because it sent more than
/// [`MAX_BAD_FRAMES`] frames larger than their kind allows or undecodable.
pub const TOO_MANY_BAD_FRAMES: u32 = 4;
/// Bad frames (larger than their kind allows, undecodable) a connection may send before it is
/// closed.
pub const MAX_BAD_FRAMES: usize = 16;
/// QUIC application error code of a connection closed at a frame whose length prefix
/// announced more than `max_frame_bytes`.
pub const FRAME_TOO_LARGE: u32 = 5;
/// QUIC application error code of a request stream the relay cut off because the request did
/// not arrive, or the response was not taken, within `Bounds::request_timeout`.
pub const REQUEST_TIMED_OUT: u32 = 2;
/// How long a `ShuttingDown` answer may wait for the client's acknowledgement during shutdown.
const SHUTDOWN_ANSWER_WAIT: Duration = Duration::from_secs(1);

/// The relay: [`Relay::start`] binds and serves in the background.
#[derive(Debug)]
pub struct Relay;

/// A running relay.
#[derive(Debug)]
pub struct RelayHandle {
    local_addr: SocketAddr,
    certificate: Arc<tls::CertificateSource>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), RelayError>>,
    /// Weak: the handle must not keep the relay's state (and its flusher) alive.
    shared: Weak<Shared>,
    /// To count its connections; dropped as soon as the relay is told to stop.
    endpoint: quinn::Endpoint,
    /// Where metrics and `/healthz` are served, if configured.
    metrics_addr: Option<SocketAddr>,
}

/// What a running relay holds in memory, counted by kind (see [`RelayHandle::memory`]). Every
/// per-connection count returns to zero once the connections are gone; the per-account and
/// per-key counts stay within their bounds (`cached_accounts`, the rate limiters' refill).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryCounts {
    /// Connections quinn's endpoint still holds (including closed ones still draining).
    pub quic_connections: usize,
    /// The relay's per-connection state objects (challenge, authenticated device).
    pub connections: usize,
    /// Tasks serving a request stream (subscriptions included).
    pub requests: usize,
    /// Subscriptions being served.
    pub subscriptions: usize,
    /// Account objects alive (in the cache or held by a request).
    pub accounts: usize,
    /// Accounts in the cache.
    pub cached_accounts: usize,
    /// Accounts' notification channels (one per account while it has subscribers).
    pub notification_channels: usize,
    /// Per-device rate-limit buckets.
    pub device_buckets: usize,
    /// Per-address rate-limit buckets (unauthenticated lookups).
    pub address_buckets: usize,
    /// Bytes reserved for request frames still being received, over every connection.
    pub frame_bytes: usize,
}

impl RelayHandle {
    /// The bound UDP address (the real port when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The bound address of the metrics and `/healthz` listener (the real port when
    /// `metrics_listen` has port 0), if one is configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// SHA-256 of the whole certificate served now (`certificate sha256`: the pin of older
    /// releases, which clients still accept and replace with [`RelayHandle::key_sha256`]).
    pub fn cert_sha256(&self) -> [u8; 32] {
        self.certificate.pins().cert_sha256
    }

    /// SHA-256 of the served certificate's public key (`key sha256`): what clients pin, kept
    /// across a renewal with the same key.
    pub fn key_sha256(&self) -> [u8; 32] {
        self.certificate.pins().key_sha256
    }

    /// Reads the certificate and key files again and serves them from the next handshake on
    /// (what `SIGHUP` does); established connections are untouched. On error the certificate
    /// served so far stays.
    pub fn reload_certificate(&self) -> Result<tls::Pins, RelayError> {
        self.certificate().reload("asked")
    }

    /// What reloads the certificate, for a task of its own (the `SIGHUP` handler).
    pub fn certificate(&self) -> CertificateReloader {
        CertificateReloader(self.certificate.clone())
    }

    /// What the relay holds in memory, by kind (all zero once it has stopped).
    pub fn memory(&self) -> MemoryCounts {
        let Some(shared) = self.shared.upgrade() else {
            return MemoryCounts::default();
        };
        let live = &shared.live;
        MemoryCounts {
            quic_connections: self.endpoint.open_connections(),
            connections: live.connections.get(),
            requests: live.requests.get(),
            subscriptions: live.subscriptions.get(),
            accounts: live.accounts.get(),
            cached_accounts: shared.accounts.len(),
            notification_channels: live.channels.get(),
            device_buckets: shared.device_limiter.len(),
            address_buckets: shared.lookup_limiter.len()
                + shared.auth_limiter.len()
                + shared.address_handshakes.len()
                + shared.quiet.len(),
            frame_bytes: live.frame_bytes.get(),
        }
    }

    /// How many QUIC Retry packets the relay has sent (new connections asked to prove their
    /// source address because handshakes arrived faster than the configured rate).
    pub fn retries_sent(&self) -> usize {
        self.shared
            .upgrade()
            .map_or(0, |shared| shared.live.retries.get())
    }

    /// How many connections the relay began a TLS handshake for (every connection that passed
    /// the connection limits and the Retry check).
    pub fn handshakes_started(&self) -> usize {
        self.shared
            .upgrade()
            .map_or(0, |shared| shared.live.handshakes.get())
    }

    /// How many new connections the relay refused at their first packet, before any
    /// handshake, because a connection limit (`max_connections`,
    /// `max_connections_per_address`) was reached.
    pub fn connections_refused(&self) -> usize {
        self.shared
            .upgrade()
            .map_or(0, |shared| shared.live.refused.get())
    }

    /// How many Initial packets of new connections the relay dropped unanswered as its
    /// socket was read, because their source address was in its quiet period after a
    /// per-address limit refused it (`Bounds::refused_address_quiet`).
    pub fn initials_dropped(&self) -> u64 {
        self.shared
            .upgrade()
            .map_or(0, |shared| shared.quiet.dropped())
    }

    /// Shuts down gracefully and waits until the store is flushed.
    pub async fn shutdown(self) -> Result<(), RelayError> {
        let _ = self.shutdown.send(true);
        self.wait().await
    }

    /// Waits until the relay stops (after a shutdown).
    pub async fn wait(self) -> Result<(), RelayError> {
        // The endpoint's clone here would keep its socket and driver alive past the shutdown.
        let Self { task, endpoint, .. } = self;
        drop(endpoint);
        match task.await {
            Ok(result) => result,
            Err(join) => Err(RelayError::Io {
                what: "relay task".into(),
                source: std::io::Error::other(join.to_string()),
            }),
        }
    }

    /// A sender that starts the shutdown when `true` is sent (for signal handlers).
    pub fn shutdown_trigger(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }
}

/// Binds a UDP socket with the configured buffer sizes (the kernel may cap them at
/// `net.core.rmem_max`/`wmem_max`; the result is logged).
fn bind_socket(addr: SocketAddr, buffer: usize) -> Result<std::net::UdpSocket, RelayError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(RelayError::io("create UDP socket"))?;
    if addr.is_ipv6() {
        let _ = socket.set_only_v6(false);
    }
    let _ = socket.set_recv_buffer_size(buffer);
    let _ = socket.set_send_buffer_size(buffer);
    socket
        .bind(&addr.into())
        .map_err(RelayError::io(format!("bind {addr}")))?;
    let (recv, send) = (
        socket.recv_buffer_size().unwrap_or(0),
        socket.send_buffer_size().unwrap_or(0),
    );
    // Linux reports twice the requested size when it granted it.
    if recv < buffer || send < buffer {
        tracing::warn!(
            requested = buffer,
            recv,
            send,
            "UDP buffers smaller than requested; raise net.core.rmem_max and net.core.wmem_max"
        );
    } else {
        tracing::debug!(recv, send, "UDP socket buffers");
    }
    Ok(socket.into())
}

impl Relay {
    /// Opens the store, loads or creates the certificate, binds and starts serving.
    pub async fn start(config: RelayConfig) -> Result<RelayHandle, RelayError> {
        config.check()?;
        Self::create_dirs(&config)?;
        let store = Self::open_store(&config)?;
        Self::start_with_store(config, store).await
    }

    /// Opens the store the configuration names: sled in the data directory, or PostgreSQL
    /// (running its schema migrations).
    pub fn open_store(config: &RelayConfig) -> Result<Arc<dyn Store>, RelayError> {
        Ok(match config.store.postgres_url() {
            Some(url) => Arc::new(PostgresStore::open(
                url,
                config.store_connections,
                config.store_value_bytes as usize,
            )?),
            None => Arc::new(SledStore::open(
                &crate::db_dir(&config.data_dir),
                config.cache_bytes,
                config.store_value_bytes as usize,
            )?),
        })
    }

    fn create_dirs(config: &RelayConfig) -> Result<(), RelayError> {
        std::fs::create_dir_all(&config.data_dir).map_err(RelayError::io(format!(
            "create {}",
            config.data_dir.display()
        )))?;
        std::fs::create_dir_all(crate::token_inbox(&config.data_dir))
            .map_err(RelayError::io("create the token inbox"))?;
        Ok(())
    }

    /// [`Relay::start`] on a storage backend of the caller's: another [`Store`]
    /// implementation, or a test double in front of the real one (fault injection, a
    /// tampering relay in the adversary tests).
    pub async fn start_with_store(
        config: RelayConfig,
        store: Arc<dyn Store>,
    ) -> Result<RelayHandle, RelayError> {
        config.check()?;
        Self::create_dirs(&config)?;
        let certificate = Arc::new(tls::CertificateSource::load(&config)?);
        let server_config = tls::server_config(certificate.clone(), &config.bounds)?;
        let socket = bind_socket(config.listen, config.udp_buffer_bytes)?;
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let (endpoint_config, cid_key) = tls::endpoint_config_and_cid_key(&config)?;
        let quiet = Arc::new(crate::gate::QuietAddresses::new(
            config.bounds.refused_address_quiet,
            crate::state::MAX_LIMITER_KEYS,
            cid_key,
            metrics.clone(),
        ));
        let runtime: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
        let socket = runtime
            .wrap_udp_socket(socket)
            .map_err(RelayError::io("start the QUIC endpoint"))?;
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            endpoint_config,
            Some(server_config),
            Arc::new(crate::gate::GatedSocket::new(socket, quiet.clone())),
            runtime,
        )
        .map_err(RelayError::io("start the QUIC endpoint"))?;
        let local_addr = endpoint
            .local_addr()
            .map_err(RelayError::io("local address"))?;
        let metrics_listener = match config.metrics_listen {
            Some(addr) => Some(crate::metrics::bind(addr).await?),
            None => None,
        };
        let metrics_addr = match &metrics_listener {
            Some(listener) => Some(
                listener
                    .local_addr()
                    .map_err(RelayError::io("metrics listener address"))?,
            ),
            None => None,
        };
        let (commit, flusher) = GroupCommit::start(store.clone(), metrics.clone());
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let changes = store.changes();
        let mut shared = Shared::new(config, store.clone(), commit, shutdown_rx);
        shared.shared_store = changes.is_some();
        shared.metrics = metrics;
        shared.quiet = quiet;
        if let Some(push) = &shared.config.push {
            let waker = crate::wake::Waker::start(push, store.clone(), shared.shutdown.clone())?;
            shared.waker = Some(waker);
        }
        let shared = Arc::new(shared);
        if let Some(changes) = changes {
            tokio::spawn(apply_changes(Arc::downgrade(&shared), changes));
        }
        let (weak_shared, handle_endpoint) = (Arc::downgrade(&shared), endpoint.clone());
        let control = crate::control::listen(shared.clone())?;
        let metrics_task = metrics_listener
            .map(|listener| tokio::spawn(crate::metrics::serve(listener, shared.clone())));
        tokio::spawn(watch_certificate(
            Arc::downgrade(&certificate),
            shared.shutdown.clone(),
        ));
        let task = tokio::spawn(serve(
            endpoint,
            shared,
            store,
            flusher,
            control,
            metrics_task,
        ));
        tracing::info!(%local_addr, "relay started");
        if let Some(addr) = metrics_addr {
            tracing::info!(%addr, "serving metrics and /healthz");
        }
        Ok(RelayHandle {
            local_addr,
            certificate,
            shutdown: shutdown_tx,
            task,
            shared: weak_shared,
            endpoint: handle_endpoint,
            metrics_addr,
        })
    }
}

/// Reloads a running relay's certificate: see [`RelayHandle::reload_certificate`].
#[derive(Debug, Clone)]
pub struct CertificateReloader(Arc<tls::CertificateSource>);

impl CertificateReloader {
    /// See [`RelayHandle::reload_certificate`]; `cause` (such as `SIGHUP`) goes in the log.
    pub fn reload(&self, cause: &'static str) -> Result<tls::Pins, RelayError> {
        let pins = self.0.reload()?;
        log_reload(&pins, cause);
        Ok(pins)
    }
}

/// How often the relay looks whether its certificate or key file changed (two `stat` calls).
pub const CERTIFICATE_POLL: Duration = Duration::from_secs(2);

fn log_reload(pins: &tls::Pins, cause: &'static str) {
    tracing::info!(
        cause,
        cert_sha256 = %hex::encode(pins.cert_sha256),
        key_sha256 = %hex::encode(pins.key_sha256),
        "certificate reloaded"
    );
}

/// Reloads the certificate whenever its files change (a renewal by certbot or an ACME
/// client), until shutdown. A pair that does not fit (the certificate written, its new key
/// not yet) is refused and read again at the next change.
async fn watch_certificate(
    certificate: Weak<tls::CertificateSource>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(CERTIFICATE_POLL) => {}
            _ = shutdown.changed() => return,
        }
        let Some(certificate) = certificate.upgrade() else {
            return;
        };
        if certificate.changed() {
            match certificate.reload() {
                Ok(pins) => log_reload(&pins, "files changed"),
                Err(e) => tracing::warn!(
                    error = %e,
                    "the certificate files changed but cannot be served; keeping the current one"
                ),
            }
        }
    }
}

/// The accept loop, then the orderly shutdown.
async fn serve(
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    store: Arc<dyn Store>,
    flusher: tokio::task::JoinHandle<()>,
    control: tokio::task::JoinHandle<()>,
    metrics: Option<tokio::task::JoinHandle<()>>,
) -> Result<(), RelayError> {
    let connections = Arc::new(Semaphore::new(
        shared.config.bounds.max_connections as usize,
    ));
    // Every request task holds a clone; when all are dropped, `in_flight_rx` yields `None`.
    let (in_flight, mut in_flight_rx) = mpsc::channel::<()>(1);
    let mut shutdown = shared.shutdown.clone();
    let sweeper = tokio::spawn(sweep(shared.clone()));
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => incoming,
            _ = shutdown.changed() => break,
        };
        let Some(incoming) = incoming else { break };
        // A connection a limit will refuse is refused at its first packet: before a Retry
        // (which would cost a round trip, a token and the handshake rate's budget for a
        // connection refused anyway) and before any TLS work. One Initial packet in, one
        // small close packet out: no amplification, no state, whatever the source claims.
        let ip = incoming.remote_address().ip();
        let full = if connections.available_permits() == 0 {
            Some("max_connections")
        } else if shared.address_full(ip) {
            Some("max_connections_per_address")
        } else {
            None
        };
        if let Some(limit) = full {
            refuse(&shared, incoming, limit);
            continue;
        }
        // Above the handshake rate, a client must first prove that it receives at its source
        // address (a stateless Retry costs the relay one packet, no state): spoofed sources
        // then cost nothing, and cannot fill another address's connection slots.
        if !incoming.remote_address_validated()
            && !shared
                .handshake_limiter
                .check(&(), std::time::Instant::now())
        {
            match incoming.retry() {
                Ok(()) => {
                    shared.live.retries.bump();
                    shared.metrics.retry_sent();
                }
                Err(refused) => refused.into_incoming().ignore(),
            }
            continue;
        }
        // An address that keeps opening connections (each closed again: idle past
        // `auth_timeout`, flooding past `MAX_BAD_FRAMES`) gets a handshake at most
        // `handshakes_per_address_per_minute` after its burst, and is refused before the
        // handshake otherwise: a handshake's key exchange and signature run under the QUIC
        // endpoint's lock, where every other connection's packets wait for them. Checked after
        // the Retry, so that above the handshake rate only an address that proved it receives
        // there is counted; an address the table has no room for is not refused.
        let now = std::time::Instant::now();
        if !shared.address_handshakes.has_room(&ip, now) {
            refuse(&shared, incoming, "handshakes_per_address");
            continue;
        }
        shared.address_handshakes.check(&ip, now);
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            refuse(&shared, incoming, "max_connections");
            continue;
        };
        let Some(slot) = shared.address_slot(ip) else {
            refuse(&shared, incoming, "max_connections_per_address");
            continue;
        };
        let (shared, in_flight) = (shared.clone(), in_flight.clone());
        tokio::spawn(async move {
            connection(shared, incoming, in_flight).await;
            drop((permit, slot));
        });
    }
    tracing::info!("shutting down: finishing requests in flight");
    endpoint.set_server_config(None);
    sweeper.abort();
    control.abort();
    if let Some(metrics) = metrics {
        metrics.abort();
    }
    crate::control::remove_socket(&shared.config.data_dir);
    drop(in_flight);
    let grace = shared.config.shutdown_grace;
    if tokio::time::timeout(grace, in_flight_rx.recv())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after the grace period; closing");
    }
    endpoint.close(0u32.into(), b"shutting down");
    let flushed = store.flush().await;
    drop(shared);
    let _ = tokio::time::timeout(Duration::from_secs(1), flusher).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    flushed?;
    tracing::info!("relay stopped");
    Ok(())
}

/// Applies what other relays on the same database changed to the accounts this relay holds
/// in memory, and tells this relay's subscribers about their pushes. Ends with the relay.
async fn apply_changes(
    shared: std::sync::Weak<Shared>,
    mut changes: mpsc::UnboundedReceiver<StoreChange>,
) {
    while let Some(change) = changes.recv().await {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let store = shared.store.as_ref();
        let result = match change {
            StoreChange::Pushed {
                account,
                device,
                last_seq,
            } => shared.accounts.refresh(store, &account).map(|held| {
                if let Some(held) = held {
                    held.notify(crate::state::AccountEvent::Pushed { device, last_seq });
                }
            }),
            StoreChange::Changed { account } | StoreChange::Deleted { account } => {
                shared.accounts.refresh(store, &account).map(drop)
            }
            StoreChange::Resync => {
                // A put missed while nobody listened: waiting takes look again too.
                shared
                    .pairing_puts
                    .send_modify(|puts| *puts = puts.wrapping_add(1));
                shared
                    .accounts
                    .cached_ids()
                    .iter()
                    .try_for_each(|id| shared.accounts.refresh(store, id).map(drop))
            }
            StoreChange::PairingPut => {
                shared
                    .pairing_puts
                    .send_modify(|puts| *puts = puts.wrapping_add(1));
                Ok(())
            }
        };
        if let Err(err) = result {
            tracing::warn!(error = ?err, "applying another relay's change failed");
        }
    }
}

/// Every `sweep_interval`: drops rate-limit buckets that refilled (a device or address not
/// seen lately holds no memory) and idle accounts beyond the cache's capacity, expires
/// pairing slots, reclaims envelope-log space.
async fn sweep(shared: Arc<Shared>) {
    let mut interval = tokio::time::interval(shared.config.sweep_interval);
    loop {
        interval.tick().await;
        let now = std::time::Instant::now();
        let devices = shared.device_limiter.prune(now);
        let addresses = shared.lookup_limiter.prune(now)
            + shared.auth_limiter.prune(now)
            + shared.address_handshakes.prune(now)
            + shared.quiet.prune(now);
        shared.accounts.trim();
        tracing::trace!(devices, addresses, "rate-limit buckets kept");
        match shared.store.expire_pairing_slots(now_ms()) {
            Ok(0) => {}
            Ok(n) => tracing::debug!(expired = n, "pairing slots expired"),
            Err(err) => tracing::warn!(error = %err, "pairing slot sweep failed"),
        }
        // Reclaims the space of truncated and deleted envelopes (blocking file I/O); not
        // while an online backup copies the store.
        let _writing = shared.write_barrier.read().await;
        let store = shared.store.clone();
        match tokio::task::spawn_blocking(move || store.maintain()).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(error = %err, "store maintenance failed"),
            Err(err) => tracing::warn!(error = %err, "store maintenance panicked"),
        }
    }
}

/// Refuses a new connection at its first packet (QUIC `CONNECTION_REFUSED`), before any TLS
/// work, because `limit` is reached. A per-address limit also starts the address's quiet
/// period (`refused_address_quiet`): its next new connections are dropped as the socket is
/// read, unanswered (`crate::gate`).
fn refuse(shared: &Shared, incoming: quinn::Incoming, limit: &'static str) {
    if limit == "max_connections" {
        tracing::warn!("connection limit reached");
    } else {
        tracing::debug!("connection limit of a source address reached");
        shared
            .quiet
            .start(incoming.remote_address().ip(), std::time::Instant::now());
    }
    shared.metrics.connection_refused(limit);
    shared.live.refused.bump();
    incoming.refuse();
}

/// One connection: handshake (bounded in time), then one task per bidirectional stream.
async fn connection(shared: Arc<Shared>, incoming: quinn::Incoming, in_flight: mpsc::Sender<()>) {
    let remote = incoming.remote_address();
    // quinn reads the ClientHello and writes the whole server flight (key exchange,
    // certificate signature) inside `accept`.
    shared.live.handshakes.bump();
    let connecting = match incoming.accept() {
        Ok(connecting) => connecting,
        Err(err) => {
            tracing::debug!(%remote, error = %err, "handshake refused");
            return;
        }
    };
    // A handshake still under way when the relay shuts down is abandoned, not waited for: it
    // would hold the shutdown up to the handshake timeout.
    let mut stopping = shared.shutdown.clone();
    let handshake = tokio::time::timeout(shared.config.bounds.handshake_timeout, connecting);
    let handshake = tokio::select! {
        result = handshake => result,
        _ = stopping.changed() => return,
    };
    let connection = match handshake {
        Ok(Ok(connection)) => {
            shared.metrics.handshake(Handshake::Ok);
            connection
        }
        Ok(Err(err)) => {
            tracing::debug!(%remote, error = %err, "handshake failed");
            shared.metrics.handshake(Handshake::Failed);
            return;
        }
        Err(_) => {
            tracing::debug!(%remote, "handshake timed out");
            shared.metrics.handshake(Handshake::TimedOut);
            return;
        }
    };
    tracing::debug!(%remote, "connection established");
    let limits = &shared.config.bounds;
    let conn = Arc::new(Conn::new(
        connection.clone(),
        &shared.live,
        limits.max_frame_bytes,
    ));
    let mut shutdown = shared.shutdown.clone();
    // A connection must authenticate, or keep a request in flight, or be closed once it has
    // been idle for `auth_timeout`: idle unauthenticated connections are free to open and
    // would otherwise live as long as their keep-alives.
    let auth_timeout = limits.auth_timeout;
    let mut auth_deadline = Some(tokio::time::Instant::now() + auth_timeout);
    loop {
        let stream = tokio::select! {
            stream = connection.accept_bi() => stream,
            _ = shutdown.changed() => break,
            _ = sleep_until(auth_deadline) => {
                auth_deadline = next_auth_deadline(&conn, auth_timeout);
                if auth_deadline.is_some_and(|at| at <= tokio::time::Instant::now()) {
                    tracing::debug!(%remote, "not authenticated in time; closed");
                    connection.close(AUTH_TIMED_OUT.into(), b"authenticate in time");
                    break;
                }
                continue;
            }
        };
        match stream {
            Ok((send, recv)) => {
                let (shared, conn, in_flight) = (shared.clone(), conn.clone(), in_flight.clone());
                let live = shared.live.requests.enter();
                conn.request_started();
                tokio::spawn(async move {
                    request_stream(&shared, &conn, send, recv).await;
                    conn.request_ended();
                    drop(in_flight);
                    drop(live);
                });
            }
            Err(err) => {
                tracing::debug!(%remote, reason = %err, "connection closed");
                break;
            }
        }
    }
}

/// Sleeps until `deadline`, or for ever when there is none.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// When to look at an unauthenticated connection again: never once it authenticated; a full
/// timeout from now while a request is in flight; else `auth_timeout` after it went idle
/// (a deadline already past means: close it).
fn next_auth_deadline(conn: &Conn, auth_timeout: Duration) -> Option<tokio::time::Instant> {
    if conn.is_authenticated() {
        return None;
    }
    let now = std::time::Instant::now();
    let at = match conn.idle_since() {
        None => now + auth_timeout,
        Some(since) => since + auth_timeout,
    };
    Some(tokio::time::Instant::from_std(at))
}

/// Bytes reserved for a request frame before its data arrives (the buffer then grows as it
/// does): a push of 100 1-KiB envelopes fits, a peer announcing 4 MiB and sending nothing pins
/// only this much per stream.
const REQUEST_PREALLOC: usize = 192 * 1024;

/// Logs a refused request. Refusals an operator can act on or that a person will ask about
/// (rate limits, quotas, storage) of authenticated devices are logged at `info`; the routine
/// ones (an empty pairing slot, a stale roster, a stream conflict the client resolves) at
/// `debug`, and so is every refusal of a connection that has not authenticated: anyone can
/// send those as fast as the relay answers, and a log line each would let them fill the disk.
/// The message is the relay's own text: it never quotes the request.
fn log_refusal(conn: &Conn, err: &RequestError) {
    let routine = matches!(
        err.code,
        ErrorCode::NotFound | ErrorCode::RosterRollback | ErrorCode::SeqConflict
    ) || !conn.is_authenticated();
    if routine {
        tracing::debug!(remote = %conn.remote, code = ?err.code, reason = %err.message, "request refused");
    } else {
        // No source address at `info` (docs/PROTOCOL.md §11): it is at `debug`.
        tracing::info!(code = ?err.code, reason = %err.message, "request refused");
        tracing::debug!(remote = %conn.remote, code = ?err.code, "request refused");
    }
}

/// Reads one request frame. The announced length is taken from the connection's frame budget
/// (`max_frame_bytes`) before a byte of the body is buffered, and held, with the body, until
/// the request is answered: however many streams a peer opens, the relay buffers at most
/// `max_frame_bytes` of its requests at once (a stream waits for room within its deadline),
/// plus one more frame for the stream every earlier stream has passed (`turn`): the pushes
/// that arrived before it and wait for it may hold the whole budget.
async fn read_request(
    shared: &Shared,
    conn: &Conn,
    recv: &mut quinn::RecvStream,
    max: u32,
    turn: Option<&handlers::push::Turn<'_>>,
) -> Result<Option<(bytes::Bytes, FrameReservation)>, ReadError> {
    let Some(len) = read_frame_header(recv, max).await? else {
        return Ok(None);
    };
    let permits = u32::try_from(len).unwrap_or(u32::MAX);
    let reserve = async {
        match turn {
            Some(turn) => {
                turn.until_next().await;
                conn.frame_reserve.clone().acquire_many_owned(permits).await
            }
            None => std::future::pending().await,
        }
    };
    let permit = tokio::select! {
        biased;
        permit = conn.frame_budget.clone().acquire_many_owned(permits) => permit,
        permit = reserve => permit,
    }
    .map_err(|_| ReadError::Io(std::io::Error::other("connection closing")))?;
    let counted = shared.live.frame_bytes.enter_many(len);
    let body = read_frame_body(recv, len, REQUEST_PREALLOC).await?;
    Ok(Some((body, (permit, counted))))
}

/// A request frame's share of its connection's frame budget, and its count.
type FrameReservation = (tokio::sync::OwnedSemaphorePermit, crate::state::LiveMany);

/// Reads one request from the stream, answers it, finishes the stream.
async fn request_stream(
    shared: &Shared,
    conn: &Conn,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let max = shared.config.bounds.max_frame_bytes;
    let deadline = shared.config.bounds.request_timeout;
    let refuse = |code, message: &'static str| RequestError::new(code, message);
    // This stream's place among the connection's: pipelined pushes are appended in it.
    let mut turn = Some(conn.push_order.turn(recv.id().index()));
    // A peer that keeps its connection alive must still finish its request in time: a stalled
    // or trickling frame would otherwise hold this task and a stream slot forever.
    let reading = read_request(shared, conn, &mut recv, max, turn.as_ref());
    let Ok(read) = tokio::time::timeout(deadline, reading).await else {
        tracing::debug!(remote = %conn.remote, "request not received in time; stream reset");
        let _ = recv.stop(REQUEST_TIMED_OUT.into());
        let _ = send.reset(REQUEST_TIMED_OUT.into());
        return;
    };
    let mut reservation = None;
    let request = match read {
        Ok(Some((body, reserved))) => {
            reservation = Some(reserved);
            Command::decode(body, &shared.config.bounds)
        }
        Ok(None) => return,
        Err(ReadError::TooLarge { .. }) => {
            // More than the relay takes of any request: a client that follows the protocol
            // never sends it (its pushes stay well inside the 4 MiB default), and the relay
            // cannot skip the body without receiving it. The connection is closed at once,
            // not after `MAX_BAD_FRAMES`: a flood of these then brings one frame per
            // handshake, which the per-address handshake budget meters, instead of 17 frames
            // of data to receive and decrypt, and answers, per handshake.
            let _ = recv.stop(STREAM_REFUSED.into());
            shared.metrics.bad_frame();
            tracing::debug!(remote = %conn.remote, "frame larger than max_frame_bytes; closed");
            conn.connection
                .close(FRAME_TOO_LARGE.into(), b"frame too large");
            return;
        }
        Err(ReadError::Decode(_)) => Err(refuse(ErrorCode::Malformed, "request does not decode")),
        Err(ReadError::Truncated) => {
            Err(refuse(ErrorCode::Malformed, "stream ended inside a frame"))
        }
        // The transport failed (or a read error this release does not know): nothing to answer.
        Err(_) => return,
    };
    if !matches!(request, Ok(handlers::Command::Push(_))) {
        turn = None;
    }
    let result = match request {
        Err(err) => {
            // A bad frame: answer, and stop reading whatever else the peer sends on it. A
            // client that follows the protocol never sends one; a connection that keeps doing
            // it is a flood, and is closed: the next round costs a handshake, which the
            // per-address and Retry bounds meter.
            let _ = recv.stop(STREAM_REFUSED.into());
            shared.metrics.bad_frame();
            let bad = conn
                .bad_frames
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                + 1;
            if bad > MAX_BAD_FRAMES {
                tracing::debug!(remote = %conn.remote, "too many bad frames; closed");
                conn.connection
                    .close(TOO_MANY_BAD_FRAMES.into(), b"too many bad frames");
                return;
            }
            Err(err)
        }
        Ok(command) => {
            handlers::dispatch(shared, conn, command, &mut send, deadline, turn.take()).await
        }
    };
    drop(reservation);
    let mut shutting_down = false;
    let (frame, budget) = match result {
        Ok(Answer::Frame(frame, budget)) => (frame, budget),
        Ok(Answer::Message(response)) => (bytes::Bytes::from(encode_frame(&response)), None),
        Ok(Answer::Streamed) => {
            let _ = send.finish();
            return;
        }
        Err(err) => {
            log_refusal(conn, &err);
            shutting_down = err.code == ErrorCode::ShuttingDown;
            (bytes::Bytes::from(encode_frame(&err.to_response())), None)
        }
    };
    match tokio::time::timeout(deadline, write_frame(&mut send, frame)).await {
        Ok(Ok(())) => {
            let _ = send.finish();
            if shutting_down {
                // The endpoint closes as soon as the last request ends: let the client receive
                // why (and reconnect) instead of seeing only a lost connection.
                let _ = tokio::time::timeout(SHUTDOWN_ANSWER_WAIT, send.stopped()).await;
            }
            if let Some(budget) = budget {
                // The page stays in quinn's send buffer until the peer acknowledges it: its
                // share of the pull budget is held until then (or the stream is given up).
                if tokio::time::timeout(deadline, send.stopped())
                    .await
                    .is_err()
                {
                    tracing::debug!(remote = %conn.remote, "response not acknowledged in time; stream reset");
                    let _ = send.reset(REQUEST_TIMED_OUT.into());
                }
                drop(budget);
            }
        }
        Ok(Err(_)) => {}
        Err(_) => {
            tracing::debug!(remote = %conn.remote, "response not taken in time; stream reset");
            let _ = send.reset(REQUEST_TIMED_OUT.into());
        }
    }
}
