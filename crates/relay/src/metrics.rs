//! What the relay counts, and the HTTP listener that serves it (`metrics_listen`): Prometheus
//! text at `/metrics`, a health check at `/healthz`.
//!
//! [`Metrics`] is one struct of counters, gauges and histograms, made by the server and
//! passed to where things happen (the accept loop, the one request dispatch point, the group
//! commit). Every label value is a `&'static str` chosen by the relay — a request kind, an
//! error code, a limit's name — so no account id, device id or address can become a label
//! (privacy promise 6, docs/PROTOCOL.md §11): the types do not allow it.
//!
//! The listener is meant for a local scraper (the default address is loopback). It speaks just
//! enough HTTP/1.1 for Prometheus and health checkers: one `GET` per connection, a request head
//! of at most [`MAX_HEAD_BYTES`], read within [`HTTP_TIMEOUT`], at most [`MAX_HTTP_CONNECTIONS`]
//! at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::error::RequestError;
use crate::state::Shared;

/// A label set: names and values fixed in the relay's code (never an id or an address).
type Labels<const N: usize> = [(&'static str, &'static str); N];

/// Largest HTTP request head the listener reads.
pub const MAX_HEAD_BYTES: usize = 4096;
/// Time a client of the listener has to send its request and take the answer.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP connections served at once; more wait in the kernel's backlog.
pub const MAX_HTTP_CONNECTIONS: usize = 16;
/// How long `/healthz` waits for the store to confirm a flush before answering 503.
pub const HEALTH_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The relay's metrics (see the crate README's "Monitor" section for each one's meaning).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    connections: Counter,
    connections_refused: Family<Labels<1>, Counter>,
    handshakes: Family<Labels<1>, Counter>,
    retries: Counter,
    initials_dropped: Counter,
    authentications: Family<Labels<2>, Counter>,
    requests: Family<Labels<2>, Counter>,
    bad_frames: Counter,
    push_envelopes: Counter,
    push_bytes: Counter,
    pull_envelopes: Counter,
    pull_bytes: Counter,
    push_ack_seconds: Histogram,
    commit_batch_size: Histogram,
    commit_flush_seconds: Histogram,
    commit_failures: Counter,
    rate_limited: Family<Labels<1>, Counter>,
    connections_open: Gauge,
    requests_in_flight: Gauge,
    subscriptions: Gauge,
    cached_accounts: Gauge,
    accounts: Gauge,
    device_streams: Gauge,
    store_envelopes: Gauge,
    store_envelope_bytes: Gauge,
    store_disk_bytes: Gauge,
    /// Held while the store totals are read (a scan of the store's index): scrapes that
    /// arrive meanwhile serve the last totals instead of starting another scan.
    store_reading: tokio::sync::Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Which rate limit refused something (the `limit` label of `kith_relay_rate_limited`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// A device's request rate (`requests_per_second`, `request_burst`).
    Device,
    /// Unauthenticated lookups of a source address (`lookups_per_minute`).
    Lookup,
    /// Failed authentications of a source address (`auth_failures_per_minute`).
    Authentication,
    /// New connections above `retry_above_handshakes_per_second` (answered with a Retry).
    Handshake,
    /// A pull that found no room in the pull budget within `pull_wait_secs`.
    PullBudget,
}

impl Limit {
    fn label(self) -> &'static str {
        match self {
            Limit::Device => "device",
            Limit::Lookup => "lookup",
            Limit::Authentication => "authentication",
            Limit::Handshake => "handshake",
            Limit::PullBudget => "pull_budget",
        }
    }
}

/// How a QUIC handshake ended (the `result` label of `kith_relay_handshakes_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// The connection was established.
    Ok,
    /// TLS or QUIC refused it (a wrong ALPN, a bad certificate, a closed peer).
    Failed,
    /// It did not finish within `handshake_timeout_secs`.
    TimedOut,
}

/// The `result` label of a request: `OK`, or the error code's name as in `relay.proto` without
/// its `ERROR_CODE_` prefix (`RATE_LIMITED`, `BAD_SIGNATURE`, …).
pub fn result_label<T>(result: &Result<T, RequestError>) -> &'static str {
    match result {
        Ok(_) => "OK",
        Err(err) => {
            let name = err.code.as_str_name();
            name.strip_prefix("ERROR_CODE_").unwrap_or(name)
        }
    }
}

impl Metrics {
    /// Every metric at zero, registered under `kith_relay_`.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kith_relay");
        macro_rules! register {
            ($metric:expr, $name:literal, $help:literal) => {{
                let metric = $metric;
                registry.register($name, $help, metric.clone());
                metric
            }};
        }
        // Buckets from 1 ms to about 16 s: a loopback push acks in a few ms, a slow disk's
        // fsync in hundreds.
        let seconds = || Histogram::new(exponential_buckets(0.001, 2.0, 15));
        Self {
            connections: register!(
                Counter::default(),
                "connections",
                "QUIC connections established (handshake completed)"
            ),
            connections_refused: register!(
                Family::default(),
                "connections_refused",
                "Connections refused before their handshake, by the limit that refused them"
            ),
            handshakes: register!(
                Family::default(),
                "handshakes",
                "QUIC/TLS handshakes by result (ok, failed, timed_out)"
            ),
            retries: register!(
                Counter::default(),
                "retries",
                "QUIC Retry packets sent (new connections above the handshake rate)"
            ),
            initials_dropped: register!(
                Counter::default(),
                "initials_dropped",
                "Initial packets of new connections dropped unanswered as the socket was read: \
                 their source address was refused by a per-address limit within \
                 refused_address_quiet"
            ),
            authentications: register!(
                Family::default(),
                "authentications",
                "Authentication attempts (Authenticate, CreateAccount, RecoverDevice) by kind and result"
            ),
            requests: register!(
                Family::default(),
                "requests",
                "Requests answered, by kind and result (OK or the error code)"
            ),
            bad_frames: register!(
                Counter::default(),
                "bad_frames",
                "Request frames too large, truncated or undecodable"
            ),
            push_envelopes: register!(
                Counter::default(),
                "push_envelopes",
                "Envelopes acknowledged to pushing devices"
            ),
            push_bytes: register!(
                Counter::default(),
                "push_bytes",
                "Envelope bytes acknowledged to pushing devices"
            ),
            pull_envelopes: register!(
                Counter::default(),
                "pull_envelopes",
                "Envelopes served in pull pages"
            ),
            pull_bytes: register!(
                Counter::default(),
                "pull_bytes",
                "Envelope bytes served in pull pages"
            ),
            push_ack_seconds: register!(
                seconds(),
                "push_ack_seconds",
                "Time from a decoded push to its acknowledgement (durable), in seconds"
            ),
            commit_batch_size: register!(
                Histogram::new(exponential_buckets(1.0, 2.0, 12)),
                "commit_batch_size",
                "Writes made durable by one group-commit flush"
            ),
            commit_flush_seconds: register!(
                seconds(),
                "commit_flush_seconds",
                "Time of one group-commit flush (fsync of the envelope log and index), in seconds"
            ),
            commit_failures: register!(
                Counter::default(),
                "commit_failures",
                "Group-commit flushes that failed (writes refused until one succeeds)"
            ),
            rate_limited: register!(
                Family::default(),
                "rate_limited",
                "Requests or connections refused by a rate limit, by limit"
            ),
            connections_open: register!(
                Gauge::default(),
                "connections_open",
                "Connections open now (handshake completed)"
            ),
            requests_in_flight: register!(
                Gauge::default(),
                "requests_in_flight",
                "Request streams being served now (subscriptions included)"
            ),
            subscriptions: register!(
                Gauge::default(),
                "subscriptions",
                "Subscriptions being served now"
            ),
            cached_accounts: register!(
                Gauge::default(),
                "cached_accounts",
                "Accounts held in memory"
            ),
            accounts: register!(Gauge::default(), "accounts", "Accounts stored"),
            device_streams: register!(
                Gauge::default(),
                "device_streams",
                "Device streams stored (devices that pushed at least once)"
            ),
            store_envelopes: register!(Gauge::default(), "store_envelopes", "Envelopes stored"),
            store_envelope_bytes: register!(
                Gauge::default(),
                "store_envelope_bytes",
                "Envelope bytes stored"
            ),
            store_disk_bytes: register!(
                Gauge::default(),
                "store_disk_bytes",
                "Bytes of the embedded store's files on disk (0 with PostgreSQL)"
            ),
            registry,
            store_reading: tokio::sync::Mutex::new(()),
        }
    }

    /// A connection that passed the limits completed its handshake, or did not.
    pub fn handshake(&self, result: Handshake) {
        let label = match result {
            Handshake::Ok => "ok",
            Handshake::Failed => "failed",
            Handshake::TimedOut => "timed_out",
        };
        self.handshakes.get_or_create(&[("result", label)]).inc();
        if result == Handshake::Ok {
            self.connections.inc();
        }
    }

    /// A new connection was refused before its handshake by `limit` (`max_connections`,
    /// `max_connections_per_address`, `handshakes_per_address`).
    pub fn connection_refused(&self, limit: &'static str) {
        self.connections_refused
            .get_or_create(&[("limit", limit)])
            .inc();
    }

    /// `count` Initial packets of new connections from an address in its quiet period were
    /// dropped unanswered (`crate::gate`).
    pub fn initials_dropped(&self, count: u64) {
        self.initials_dropped.inc_by(count);
    }

    /// A QUIC Retry was sent (the handshake rate was exceeded).
    pub fn retry_sent(&self) {
        self.retries.inc();
        self.rate_limited(Limit::Handshake);
    }

    /// A rate limit refused something.
    pub fn rate_limited(&self, limit: Limit) {
        self.rate_limited
            .get_or_create(&[("limit", limit.label())])
            .inc();
    }

    /// A request frame could not be read or decoded.
    pub fn bad_frame(&self) {
        self.bad_frames.inc();
    }

    /// A request of `kind` was answered with `result`.
    pub fn request<T>(&self, kind: &'static str, result: &Result<T, RequestError>) {
        let result = result_label(result);
        self.requests
            .get_or_create(&[("kind", kind), ("result", result)])
            .inc();
        if matches!(kind, "authenticate" | "create_account" | "recover_device") {
            self.authentications
                .get_or_create(&[("kind", kind), ("result", result)])
                .inc();
        }
    }

    /// A push of `envelopes` envelopes (`bytes` bytes) was acknowledged `latency` after it was
    /// decoded.
    pub fn push_acked(&self, envelopes: usize, bytes: usize, latency: Duration) {
        self.push_envelopes.inc_by(envelopes as u64);
        self.push_bytes.inc_by(bytes as u64);
        self.push_ack_seconds.observe(latency.as_secs_f64());
    }

    /// A pull page of `envelopes` envelopes (`bytes` envelope bytes) was served.
    pub fn pulled(&self, envelopes: usize, bytes: usize) {
        self.pull_envelopes.inc_by(envelopes as u64);
        self.pull_bytes.inc_by(bytes as u64);
    }

    /// One group-commit flush answered `waiters` writes in `took`; `ok` is whether it succeeded.
    pub fn group_commit(&self, waiters: usize, took: Duration, ok: bool) {
        self.commit_batch_size.observe(waiters as f64);
        self.commit_flush_seconds.observe(took.as_secs_f64());
        if !ok {
            self.commit_failures.inc();
        }
    }

    /// The metrics in the Prometheus/OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }

    /// Sets the gauges from the running relay: live counts, and store totals (a scan of the
    /// store's index, on a blocking thread; one at a time).
    pub(crate) async fn refresh(&self, shared: &Arc<Shared>) {
        let live = &shared.live;
        let gauge = |g: &Gauge, n: usize| g.set(i64::try_from(n).unwrap_or(i64::MAX));
        gauge(&self.connections_open, live.connections.get());
        gauge(&self.requests_in_flight, live.requests.get());
        gauge(&self.subscriptions, live.subscriptions.get());
        gauge(&self.cached_accounts, shared.accounts.len());
        let Ok(_reading) = self.store_reading.try_lock() else {
            return;
        };
        let (store, db) = (shared.store.clone(), crate::db_dir(&shared.config.data_dir));
        let postgres = shared.config.store.postgres_url().is_some();
        let read = tokio::task::spawn_blocking(move || {
            let disk = if postgres { 0 } else { dir_bytes(&db) };
            store.stats().map(|stats| (stats, disk))
        })
        .await;
        match read {
            Ok(Ok((stats, disk))) => {
                let gauge = |g: &Gauge, n: u64| g.set(i64::try_from(n).unwrap_or(i64::MAX));
                gauge(&self.accounts, stats.accounts);
                gauge(&self.device_streams, stats.streams);
                gauge(&self.store_envelopes, stats.envelopes);
                gauge(&self.store_envelope_bytes, stats.envelope_bytes);
                gauge(&self.store_disk_bytes, disk);
            }
            Ok(Err(err)) => tracing::warn!(error = %err, "reading store totals for metrics failed"),
            Err(err) => tracing::warn!(error = %err, "reading store totals for metrics panicked"),
        }
    }
}

/// Bytes of the files below `dir` (0 for what cannot be read).
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => dir_bytes(&entry.path()),
            Ok(kind) if kind.is_file() => entry.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// Binds the metrics listener (before the relay reports itself started, so a bad address
/// fails the start).
pub(crate) async fn bind(addr: SocketAddr) -> Result<TcpListener, crate::RelayError> {
    TcpListener::bind(addr)
        .await
        .map_err(crate::RelayError::io(format!(
            "bind the metrics listener {addr}"
        )))
}

/// Serves `/metrics` and `/healthz` until the relay stops (the task is aborted at shutdown).
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HTTP_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                tracing::debug!(error = %err, "metrics listener accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(HTTP_TIMEOUT, answer(stream, &shared)).await;
            drop(permit);
        });
    }
}

/// What a request to the listener asked for.
#[derive(Debug, PartialEq, Eq)]
enum Asked {
    Metrics,
    Health,
    NotFound,
    BadMethod,
    Malformed,
}

/// Reads one request head and classifies it; `None` when the peer sent no complete head.
async fn read_head(stream: &mut TcpStream) -> Option<(Asked, bool)> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            break;
        }
        if head.len() >= MAX_HEAD_BYTES {
            return Some((Asked::Malformed, false));
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    Some(classify(&head))
}

/// The request line's method and path: `(what, is HEAD)`.
fn classify(head: &[u8]) -> (Asked, bool) {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = std::str::from_utf8(line)
        .unwrap_or("")
        .trim_end_matches('\r');
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return (Asked::Malformed, false);
    };
    if !version.starts_with("HTTP/1.") {
        return (Asked::Malformed, false);
    }
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return (Asked::BadMethod, false);
    }
    let path = target.split('?').next().unwrap_or(target);
    let asked = match path {
        "/metrics" => Asked::Metrics,
        "/healthz" => Asked::Health,
        _ => Asked::NotFound,
    };
    (asked, head_only)
}

/// Whether the relay serves: not shutting down, and the store makes a write durable (a
/// group-commit flush, the path every push waits on) within [`HEALTH_FLUSH_TIMEOUT`].
pub(crate) async fn healthy(shared: &Shared) -> Result<(), &'static str> {
    if *shared.shutdown.borrow() {
        return Err("shutting down");
    }
    match tokio::time::timeout(HEALTH_FLUSH_TIMEOUT, shared.commit.durable()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err("the store cannot flush"),
        Err(_) => Err("the store did not flush in time"),
    }
}

async fn answer(mut stream: TcpStream, shared: &Arc<Shared>) {
    let Some((asked, head_only)) = read_head(&mut stream).await else {
        return;
    };
    let (status, content_type, body) = match asked {
        Asked::Metrics => {
            shared.metrics.refresh(shared).await;
            (
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                shared.metrics.encode(),
            )
        }
        Asked::Health => match healthy(shared).await {
            Ok(()) => ("200 OK", "text/plain; charset=utf-8", "ok\n".to_owned()),
            Err(why) => (
                "503 Service Unavailable",
                "text/plain; charset=utf-8",
                format!("{why}\n"),
            ),
        },
        Asked::NotFound => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found: try /metrics or /healthz\n".to_owned(),
        ),
        Asked::BadMethod => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET\n".to_owned(),
        ),
        Asked::Malformed => (
            "400 Bad Request",
            "text/plain; charset=utf-8",
            "bad request\n".to_owned(),
        ),
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
         cache-control: no-store\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        response.extend_from_slice(body.as_bytes());
    }
    let _ = stream.write_all(&response).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use kith_protocol::proto::ErrorCode;

    #[test]
    fn requests_are_classified_by_method_and_path() {
        assert_eq!(
            classify(b"GET /metrics HTTP/1.1\r\n\r\n"),
            (Asked::Metrics, false)
        );
        assert_eq!(
            classify(b"HEAD /healthz HTTP/1.0\r\n\r\n"),
            (Asked::Health, true)
        );
        assert_eq!(
            classify(b"GET /healthz?x=1 HTTP/1.1\r\n\r\n"),
            (Asked::Health, false)
        );
        assert_eq!(
            classify(b"GET / HTTP/1.1\r\n\r\n"),
            (Asked::NotFound, false)
        );
        assert_eq!(
            classify(b"POST /metrics HTTP/1.1\r\n\r\n"),
            (Asked::BadMethod, false)
        );
        assert_eq!(classify(b"GET /metrics\r\n\r\n"), (Asked::Malformed, false));
        assert_eq!(classify(b"\xff\xfe\r\n\r\n"), (Asked::Malformed, false));
        assert_eq!(
            classify(b"GET /metrics SMTP\r\n\r\n"),
            (Asked::Malformed, false)
        );
    }

    #[test]
    fn results_are_named_by_their_wire_code() {
        assert_eq!(result_label(&Ok::<(), RequestError>(())), "OK");
        let limited = RequestError::new(ErrorCode::RateLimited, "slow down");
        assert_eq!(result_label(&Err::<(), _>(limited)), "RATE_LIMITED");
    }

    #[test]
    fn the_text_names_every_family_and_counts() {
        let metrics = Metrics::new();
        metrics.request("push", &Ok::<(), RequestError>(()));
        metrics.request(
            "authenticate",
            &Err::<(), _>(RequestError::new(
                ErrorCode::BadSignature,
                "authentication failed",
            )),
        );
        metrics.push_acked(3, 300, Duration::from_millis(4));
        metrics.rate_limited(Limit::Lookup);
        let text = metrics.encode();
        assert!(
            text.contains("kith_relay_requests_total{kind=\"push\",result=\"OK\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "kith_relay_authentications_total{kind=\"authenticate\",result=\"BAD_SIGNATURE\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("kith_relay_push_envelopes_total 3"), "{text}");
        assert!(text.contains("kith_relay_push_bytes_total 300"), "{text}");
        assert!(
            text.contains("kith_relay_push_ack_seconds_count 1"),
            "{text}"
        );
        assert!(
            text.contains("kith_relay_rate_limited_total{limit=\"lookup\"} 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
