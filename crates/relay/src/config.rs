//! The relay's configuration: every limit has a documented default, a TOML key and a flag.
//!
//! [`Settings`] is what a person writes: every field optional, parsed from flags and the
//! environment (`clap`) and from a TOML file (`serde`) with the same names
//! (`--max-frame-bytes` ↔ `KITH_RELAY_MAX_FRAME_BYTES` ↔ `max_frame_bytes`; the data directory
//! is `--data`, `KITH_RELAY_DATA`, `data`). Flags win over the environment, the environment
//! over the file, the file over the defaults. [`Settings::resolve`] turns it into a
//! [`RelayConfig`], which holds no options left to decide.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Who may create an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RegistrationMode {
    /// Anyone who reaches the relay may create an account.
    Open,
    /// Creating an account consumes a single-use token from `kith-relay token create`.
    Token,
}

/// Errors of loading or checking a configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The TOML file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML file is not valid.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: Box<toml::de::Error>,
    },
    /// Two settings contradict each other, or one is out of range.
    #[error("invalid setting: {0}")]
    Invalid(String),
}

/// Where the relay keeps its data: `sled` (the embedded store in the data directory, the
/// default) or a PostgreSQL connection string (`postgres://user:password@host:port/db`).
/// Its `Debug` never shows a password.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct StoreLocation(String);

impl StoreLocation {
    /// The embedded store.
    pub fn sled() -> Self {
        Self("sled".into())
    }

    /// The connection string, if this names PostgreSQL.
    pub fn postgres_url(&self) -> Option<&str> {
        crate::store::postgres::is_postgres_url(&self.0).then_some(self.0.as_str())
    }
}

impl std::str::FromStr for StoreLocation {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let location = Self(s.to_owned());
        location.check()?;
        Ok(location)
    }
}

impl StoreLocation {
    fn check(&self) -> Result<(), ConfigError> {
        if self.0 == "sled" || self.postgres_url().is_some() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(
                "store must be `sled` or a postgres://… connection string".into(),
            ))
        }
    }
}

impl std::fmt::Debug for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.postgres_url() {
            Some(url) => match url.parse::<postgres::Config>() {
                Ok(config) => f.write_str(&crate::store::postgres::describe(&config)),
                Err(_) => f.write_str("postgres://(unparsable)"),
            },
            None => f.write_str(&self.0),
        }
    }
}

/// Default listen address: loopback, so a newcomer's first run is not exposed.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:4433";
/// Default data directory (relative to the working directory).
pub const DEFAULT_DATA_DIR: &str = "kith-relay-data";

/// Settings as written in flags or TOML; every field optional. Doc comments are `--help`.
#[derive(Debug, Clone, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// UDP address to listen on [default: 127.0.0.1:4433]
    #[arg(long, env = "KITH_RELAY_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Data directory: database, certificate, tokens [default: ./kith-relay-data]
    #[arg(long = "data", env = "KITH_RELAY_DATA")]
    #[serde(rename = "data")]
    pub data_dir: Option<PathBuf>,
    /// PEM certificate chain to serve instead of the self-signed one (needs --key)
    #[arg(long, env = "KITH_RELAY_CERT")]
    pub cert: Option<PathBuf>,
    /// PEM private key of --cert
    #[arg(long, env = "KITH_RELAY_KEY")]
    pub key: Option<PathBuf>,
    /// Who may create accounts [default: open on a loopback address, token otherwise]
    #[arg(long, value_enum, env = "KITH_RELAY_REGISTRATION")]
    pub registration: Option<RegistrationMode>,
    /// Largest request frame in bytes (4-byte length prefix excluded) [default: 4194304]
    #[arg(long, env = "KITH_RELAY_MAX_FRAME_BYTES")]
    pub max_frame_bytes: Option<u32>,
    /// Largest single encoded envelope in bytes [default: 1048576]
    #[arg(long, env = "KITH_RELAY_MAX_ENVELOPE_BYTES")]
    pub max_envelope_bytes: Option<u32>,
    /// Most envelopes in one push [default: 1000]
    #[arg(long, env = "KITH_RELAY_MAX_BATCH_ENVELOPES")]
    pub max_batch_envelopes: Option<u32>,
    /// Quota: bytes stored per account (envelopes and sealed keys) [default: 1073741824]
    #[arg(long, env = "KITH_RELAY_MAX_ACCOUNT_BYTES")]
    pub max_account_bytes: Option<u64>,
    /// Most devices in an account's roster [default: 64]
    #[arg(long, env = "KITH_RELAY_MAX_DEVICES_PER_ACCOUNT")]
    pub max_devices_per_account: Option<u32>,
    /// Most simultaneous QUIC connections [default: 4096]
    #[arg(long, env = "KITH_RELAY_MAX_CONNECTIONS")]
    pub max_connections: Option<u32>,
    /// Most concurrent request streams per connection [default: 32]
    #[arg(long, env = "KITH_RELAY_MAX_STREAMS_PER_CONNECTION")]
    pub max_streams_per_connection: Option<u32>,
    /// Sustained requests per second per device (token bucket rate) [default: 100]
    #[arg(long, env = "KITH_RELAY_REQUESTS_PER_SECOND")]
    pub requests_per_second: Option<u32>,
    /// Burst of requests per device (token bucket size) [default: 200]
    #[arg(long, env = "KITH_RELAY_REQUEST_BURST")]
    pub request_burst: Option<u32>,
    /// Close a connection after this many seconds without traffic [default: 60]
    #[arg(long, env = "KITH_RELAY_IDLE_TIMEOUT_SECS")]
    pub idle_timeout_secs: Option<u64>,
    /// Give up on a TLS handshake after this many seconds [default: 30, as long as a device
    /// waits for one on a slow network]
    #[arg(long, env = "KITH_RELAY_HANDSHAKE_TIMEOUT_SECS")]
    pub handshake_timeout_secs: Option<u64>,
    /// Cut off a request stream whose request has not fully arrived, or whose response has
    /// not been taken, after this many seconds (subscriptions: per notification) [default: 30]
    #[arg(long, env = "KITH_RELAY_REQUEST_TIMEOUT_SECS")]
    pub request_timeout_secs: Option<u64>,
    /// Seconds a pairing slot lives before it expires untaken [default: 600]
    #[arg(long, env = "KITH_RELAY_PAIRING_SLOT_TTL_SECS")]
    pub pairing_slot_ttl_secs: Option<u64>,
    /// Most live pairing slots per account [default: 16]
    #[arg(long, env = "KITH_RELAY_MAX_PAIRING_SLOTS_PER_ACCOUNT")]
    pub max_pairing_slots_per_account: Option<u32>,
    /// Envelopes in one pull page when the client asks for 0 [default: 1000]
    #[arg(long, env = "KITH_RELAY_PULL_DEFAULT_ENVELOPES")]
    pub pull_default_envelopes: Option<u32>,
    /// Most envelopes in one pull page [default: 10000]
    #[arg(long, env = "KITH_RELAY_PULL_MAX_ENVELOPES")]
    pub pull_max_envelopes: Option<u32>,
    /// Most envelope bytes in one pull page (below max-frame-bytes) [default: 2097152]
    #[arg(long, env = "KITH_RELAY_PULL_MAX_BYTES")]
    pub pull_max_bytes: Option<u32>,
    /// Most sealed epoch keys in one request [default: 256]
    #[arg(long, env = "KITH_RELAY_MAX_SEALED_KEYS_PER_REQUEST")]
    pub max_sealed_keys_per_request: Option<u32>,
    /// Unauthenticated lookups (recovery bundle, pairing slot) per minute per source address
    /// [default: 10]
    #[arg(long, env = "KITH_RELAY_LOOKUPS_PER_MINUTE")]
    pub lookups_per_minute: Option<u32>,
    /// QUIC receive window per connection in bytes: bounds the memory one peer can make the
    /// relay hold [default: 8388608]
    #[arg(long, env = "KITH_RELAY_CONNECTION_WINDOW_BYTES")]
    pub connection_window_bytes: Option<u64>,
    /// UDP socket send and receive buffer in bytes [default: 4194304]
    #[arg(long, env = "KITH_RELAY_UDP_BUFFER_BYTES")]
    pub udp_buffer_bytes: Option<usize>,
    /// sled page cache in bytes [default: 8388608]
    #[arg(long, env = "KITH_RELAY_CACHE_BYTES")]
    pub cache_bytes: Option<u64>,
    /// Largest record of the envelope log: consecutive envelopes of a push are packed into
    /// records of up to this size; a push that fits one record is one database insert (see
    /// BENCHMARKS.md) [default: 262144]
    #[arg(long, env = "KITH_RELAY_STORE_VALUE_BYTES")]
    pub store_value_bytes: Option<u32>,
    /// Where to store data: `sled` (embedded, in --data) or a PostgreSQL connection string
    /// `postgres://user:password@host:port/database` shared by several relays [default: sled]
    #[arg(long, env = "KITH_RELAY_STORE", hide_env_values = true)]
    pub store: Option<StoreLocation>,
    /// Connections to PostgreSQL each relay holds [default: 8]
    #[arg(long, env = "KITH_RELAY_STORE_CONNECTIONS")]
    pub store_connections: Option<usize>,
    /// Seconds to finish in-flight requests after a shutdown signal [default: 10]
    #[arg(long, env = "KITH_RELAY_SHUTDOWN_GRACE_SECS")]
    pub shutdown_grace_secs: Option<u64>,
    /// Idle accounts kept in memory (roster, stream bounds); beyond this the least recently
    /// used are dropped and reloaded from storage when next used [default: 4096]
    #[arg(long, env = "KITH_RELAY_CACHED_ACCOUNTS")]
    pub cached_accounts: Option<usize>,
    /// Close a connection that has not authenticated and has no request in flight after this
    /// many seconds [default: 10]
    #[arg(long, env = "KITH_RELAY_AUTH_TIMEOUT_SECS")]
    pub auth_timeout_secs: Option<u64>,
    /// Most simultaneous connections (handshakes included) from one source IP address
    /// [default: 256]
    #[arg(long, env = "KITH_RELAY_MAX_CONNECTIONS_PER_ADDRESS")]
    pub max_connections_per_address: Option<u32>,
    /// New connections per second above which the relay answers with a QUIC Retry, so that
    /// a client must prove it receives at its source address before a handshake is computed
    /// [default: 200]
    #[arg(long, env = "KITH_RELAY_RETRY_ABOVE_HANDSHAKES_PER_SECOND")]
    pub retry_above_handshakes_per_second: Option<u32>,
    /// Handshakes one source IP address may start per minute once it has used its burst (as
    /// many as its connection cap); beyond it new connections are refused before their
    /// handshake [default: 600]
    #[arg(long, env = "KITH_RELAY_HANDSHAKES_PER_ADDRESS_PER_MINUTE")]
    pub handshakes_per_address_per_minute: Option<u32>,
    /// Milliseconds for which a source IP address that a per-address limit refused is not
    /// answered: its new connections' Initial packets are dropped as they are read, before any
    /// key is derived for them (its handshakes under way go on); 0 answers every attempt with a
    /// refusal. Off by default: clients retransmit unanswered Initials (BENCHMARKS.md, finding 7,
    /// eighth session) [default: 0]
    #[arg(long, env = "KITH_RELAY_REFUSED_ADDRESS_QUIET_MS")]
    pub refused_address_quiet_ms: Option<u64>,
    /// Failed authentications (Authenticate, CreateAccount, RecoverDevice) per minute per
    /// source IP address; beyond it attempts are refused unverified [default: 30]
    #[arg(long, env = "KITH_RELAY_AUTH_FAILURES_PER_MINUTE")]
    pub auth_failures_per_minute: Option<u32>,
    /// Seconds a pull waits for room in the pull budget before it is refused as rate-limited
    /// [default: 5]
    #[arg(long, env = "KITH_RELAY_PULL_WAIT_SECS")]
    pub pull_wait_secs: Option<u64>,
    /// TCP address of the HTTP listener serving Prometheus metrics at /metrics and a health
    /// check at /healthz, e.g. 127.0.0.1:9464 [default: off]
    #[arg(long, env = "KITH_RELAY_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// URL of the push gateway (`https://…` or `http://…`) the relay POSTs wake-up
    /// notifications to; without it devices cannot register push targets (docs/PROTOCOL.md
    /// §12.1, crates/relay/README.md "Wake-up notifications") [default: none]
    #[arg(long, env = "KITH_RELAY_PUSH_GATEWAY")]
    pub push_gateway: Option<String>,
    /// PEM file of CA certificates to trust for an https push gateway instead of the built-in
    /// web roots [default: none]
    #[arg(long, env = "KITH_RELAY_PUSH_GATEWAY_CA")]
    pub push_gateway_ca: Option<PathBuf>,
    /// At most one wake-up per device per this many seconds; pushes in between are coalesced
    /// into one sent when the interval ends [default: 30]
    #[arg(long, env = "KITH_RELAY_PUSH_INTERVAL_SECS")]
    pub push_interval_secs: Option<u64>,
    /// Most devices with a wake-up waiting or recently sent that the relay tracks; beyond it
    /// new wake-ups are dropped (and counted) until room frees [default: 10000]
    #[arg(long, env = "KITH_RELAY_PUSH_QUEUE")]
    pub push_queue: Option<usize>,
    /// Attempts after the first for a wake-up the gateway did not take (connection failure,
    /// 5xx, 408, 429), with doubling waits starting at one second [default: 4]
    #[arg(long, env = "KITH_RELAY_PUSH_RETRIES")]
    pub push_retries: Option<u32>,
}

impl Settings {
    /// Reads a TOML file with the same keys as the flags (underscores for dashes).
    pub fn from_toml_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    /// `self` where set, else `lower`: flags over the file.
    pub fn or(self, lower: Settings) -> Settings {
        macro_rules! pick {
            ($($field:ident),* $(,)?) => {
                Settings { $($field: self.$field.or(lower.$field)),* }
            };
        }
        pick!(
            listen,
            data_dir,
            cert,
            key,
            registration,
            max_frame_bytes,
            max_envelope_bytes,
            max_batch_envelopes,
            max_account_bytes,
            max_devices_per_account,
            max_connections,
            max_streams_per_connection,
            requests_per_second,
            request_burst,
            idle_timeout_secs,
            handshake_timeout_secs,
            request_timeout_secs,
            pairing_slot_ttl_secs,
            max_pairing_slots_per_account,
            pull_default_envelopes,
            pull_max_envelopes,
            pull_max_bytes,
            max_sealed_keys_per_request,
            lookups_per_minute,
            connection_window_bytes,
            udp_buffer_bytes,
            cache_bytes,
            store_value_bytes,
            store,
            store_connections,
            shutdown_grace_secs,
            cached_accounts,
            auth_timeout_secs,
            max_connections_per_address,
            retry_above_handshakes_per_second,
            handshakes_per_address_per_minute,
            refused_address_quiet_ms,
            auth_failures_per_minute,
            pull_wait_secs,
            metrics_listen,
            push_gateway,
            push_gateway_ca,
            push_interval_secs,
            push_queue,
            push_retries,
        )
    }

    /// Fills in defaults and checks the result.
    pub fn resolve(self) -> Result<RelayConfig, ConfigError> {
        let d = RelayConfig::default();
        let l = &d.bounds;
        let listen = self.listen.unwrap_or(d.listen);
        let bounds = Bounds {
            max_frame_bytes: self.max_frame_bytes.unwrap_or(l.max_frame_bytes),
            max_envelope_bytes: self.max_envelope_bytes.unwrap_or(l.max_envelope_bytes),
            max_batch_envelopes: self.max_batch_envelopes.unwrap_or(l.max_batch_envelopes),
            max_account_bytes: self.max_account_bytes.unwrap_or(l.max_account_bytes),
            max_devices_per_account: self
                .max_devices_per_account
                .unwrap_or(l.max_devices_per_account),
            max_connections: self.max_connections.unwrap_or(l.max_connections),
            max_streams_per_connection: self
                .max_streams_per_connection
                .unwrap_or(l.max_streams_per_connection),
            requests_per_second: self.requests_per_second.unwrap_or(l.requests_per_second),
            request_burst: self.request_burst.unwrap_or(l.request_burst),
            idle_timeout: self
                .idle_timeout_secs
                .map_or(l.idle_timeout, Duration::from_secs),
            handshake_timeout: self
                .handshake_timeout_secs
                .map_or(l.handshake_timeout, Duration::from_secs),
            request_timeout: self
                .request_timeout_secs
                .map_or(l.request_timeout, Duration::from_secs),
            pairing_slot_ttl: self
                .pairing_slot_ttl_secs
                .map_or(l.pairing_slot_ttl, Duration::from_secs),
            max_pairing_slots_per_account: self
                .max_pairing_slots_per_account
                .unwrap_or(l.max_pairing_slots_per_account),
            pull_default_envelopes: self
                .pull_default_envelopes
                .unwrap_or(l.pull_default_envelopes),
            pull_max_envelopes: self.pull_max_envelopes.unwrap_or(l.pull_max_envelopes),
            pull_max_bytes: self.pull_max_bytes.unwrap_or(l.pull_max_bytes),
            max_sealed_keys_per_request: self
                .max_sealed_keys_per_request
                .unwrap_or(l.max_sealed_keys_per_request),
            lookups_per_minute: self.lookups_per_minute.unwrap_or(l.lookups_per_minute),
            connection_window_bytes: self
                .connection_window_bytes
                .unwrap_or(l.connection_window_bytes),
            auth_timeout: self
                .auth_timeout_secs
                .map_or(l.auth_timeout, Duration::from_secs),
            max_connections_per_address: self
                .max_connections_per_address
                .unwrap_or(l.max_connections_per_address),
            retry_above_handshakes_per_second: self
                .retry_above_handshakes_per_second
                .unwrap_or(l.retry_above_handshakes_per_second),
            handshakes_per_address_per_minute: self
                .handshakes_per_address_per_minute
                .unwrap_or(l.handshakes_per_address_per_minute),
            refused_address_quiet: self
                .refused_address_quiet_ms
                .map_or(l.refused_address_quiet, Duration::from_millis),
            auth_failures_per_minute: self
                .auth_failures_per_minute
                .unwrap_or(l.auth_failures_per_minute),
            pull_wait: self.pull_wait_secs.map_or(l.pull_wait, Duration::from_secs),
        };
        let config = RelayConfig {
            listen,
            data_dir: self.data_dir.unwrap_or(d.data_dir),
            cert: self.cert,
            key: self.key,
            registration: self.registration.unwrap_or(if listen.ip().is_loopback() {
                RegistrationMode::Open
            } else {
                RegistrationMode::Token
            }),
            bounds,
            udp_buffer_bytes: self.udp_buffer_bytes.unwrap_or(d.udp_buffer_bytes),
            cache_bytes: self.cache_bytes.unwrap_or(d.cache_bytes),
            store_value_bytes: self.store_value_bytes.unwrap_or(d.store_value_bytes),
            store: self.store.unwrap_or(d.store),
            store_connections: self.store_connections.unwrap_or(d.store_connections),
            shutdown_grace: self
                .shutdown_grace_secs
                .map_or(d.shutdown_grace, Duration::from_secs),
            cached_accounts: self.cached_accounts.unwrap_or(d.cached_accounts),
            sweep_interval: d.sweep_interval,
            metrics_listen: self.metrics_listen,
            push: match self.push_gateway {
                Some(url) => Some(PushConfig {
                    gateway: url.parse()?,
                    gateway_ca: self.push_gateway_ca,
                    interval: self
                        .push_interval_secs
                        .map_or(PushConfig::DEFAULT_INTERVAL, Duration::from_secs),
                    queue: self.push_queue.unwrap_or(PushConfig::DEFAULT_QUEUE),
                    retries: self.push_retries.unwrap_or(PushConfig::DEFAULT_RETRIES),
                    first_retry: PushConfig::FIRST_RETRY,
                }),
                None if self.push_gateway_ca.is_some()
                    || self.push_interval_secs.is_some()
                    || self.push_queue.is_some()
                    || self.push_retries.is_some() =>
                {
                    return Err(ConfigError::Invalid(
                        "the push_* settings need push_gateway".into(),
                    ));
                }
                None => None,
            },
        };
        config.check()?;
        Ok(config)
    }
}

/// Every bound the relay enforces (sizes, counts, rates, timeouts), checked against the
/// protocol's fixed bounds ([`kith_protocol::limits`]); the token buckets that enforce the rates
/// are [`crate::rate_limit`]. Defaults are the `[default: …]` of `--help`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bounds {
    /// Largest request frame (length prefix excluded).
    pub max_frame_bytes: u32,
    /// Largest encoded envelope.
    pub max_envelope_bytes: u32,
    /// Most envelopes per push.
    pub max_batch_envelopes: u32,
    /// Bytes stored per account (envelopes and sealed epoch keys).
    pub max_account_bytes: u64,
    /// Devices per roster.
    pub max_devices_per_account: u32,
    /// Simultaneous connections.
    pub max_connections: u32,
    /// Concurrent bidirectional streams per connection.
    pub max_streams_per_connection: u32,
    /// Token-bucket refill rate per device.
    pub requests_per_second: u32,
    /// Token-bucket size per device.
    pub request_burst: u32,
    /// Connection idle timeout.
    pub idle_timeout: Duration,
    /// TLS handshake timeout. At least as long as a device waits for a handshake once the
    /// relay has answered (`kith_client::net::HANDSHAKE_TIMEOUT`, 30 s): on a lossy link the
    /// handshake's retransmissions take that long, and a relay that gave up sooner would close
    /// a connection the device was still completing. Half-made handshakes are bounded in number
    /// by `max_connections_per_address` and `max_connections`, which count them.
    pub handshake_timeout: Duration,
    /// Time a peer has to send a whole request, and to take a response or notification: a
    /// request stream that stalls longer is reset, whatever keeps the connection alive.
    pub request_timeout: Duration,
    /// Pairing-slot lifetime.
    pub pairing_slot_ttl: Duration,
    /// Live pairing slots per account.
    pub max_pairing_slots_per_account: u32,
    /// Pull page size when the client asks for 0.
    pub pull_default_envelopes: u32,
    /// Largest pull page in envelopes.
    pub pull_max_envelopes: u32,
    /// Largest pull page in envelope bytes.
    pub pull_max_bytes: u32,
    /// Sealed epoch keys per put.
    pub max_sealed_keys_per_request: u32,
    /// Unauthenticated lookups per minute per source IP address.
    pub lookups_per_minute: u32,
    /// QUIC connection-level receive window.
    pub connection_window_bytes: u64,
    /// Time an unauthenticated connection may stay without a request in flight before it is
    /// closed.
    pub auth_timeout: Duration,
    /// Simultaneous connections (handshakes included) per source IP address.
    pub max_connections_per_address: u32,
    /// New connections per second (a token bucket of one second's worth) above which new
    /// connections get a QUIC Retry before their handshake.
    pub retry_above_handshakes_per_second: u32,
    /// Handshakes per minute one source IP address may start beyond its burst of
    /// `max_connections_per_address`: a client that closes and reopens connections (an
    /// unauthenticated one is closed after `auth_timeout`, a flooding one after
    /// `MAX_BAD_FRAMES`) is refused at the first packet instead of being handed a handshake
    /// (a key exchange and a signature, computed under the QUIC endpoint's lock) each time.
    pub handshakes_per_address_per_minute: u32,
    /// How long a source IP address that `max_connections_per_address` or
    /// `handshakes_per_address_per_minute` refused is not answered: the Initial packets of its
    /// new connections are dropped as the socket is read, before quinn derives a key for them
    /// or the relay builds and sends a refusal (its handshakes under way, whose packets name a
    /// connection id of the relay's, go on). Zero (the default) answers every attempt: a
    /// client that follows QUIC retransmits an unanswered Initial, so against a reconnecting
    /// client the quiet period trades each ~15 µs refusal for several ~2 µs drops and costs
    /// the relay about as much (BENCHMARKS.md, finding 7, eighth session); it pays against a
    /// sender that does not retransmit.
    pub refused_address_quiet: Duration,
    /// Failed authentications per minute per source IP address.
    pub auth_failures_per_minute: u32,
    /// Longest wait of a pull for room in the pull budget.
    pub pull_wait: Duration,
}

impl Default for Bounds {
    fn default() -> Self {
        Self {
            max_frame_bytes: 4 * 1024 * 1024,
            max_envelope_bytes: 1024 * 1024,
            max_batch_envelopes: 1000,
            max_account_bytes: 1024 * 1024 * 1024,
            max_devices_per_account: 64,
            max_connections: 4096,
            max_streams_per_connection: 32,
            requests_per_second: 100,
            request_burst: 200,
            idle_timeout: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(30),
            pairing_slot_ttl: Duration::from_secs(600),
            max_pairing_slots_per_account: 16,
            pull_default_envelopes: 1000,
            pull_max_envelopes: 10_000,
            pull_max_bytes: 2 * 1024 * 1024,
            max_sealed_keys_per_request: 256,
            lookups_per_minute: 10,
            connection_window_bytes: 8 * 1024 * 1024,
            auth_timeout: Duration::from_secs(10),
            max_connections_per_address: 256,
            retry_above_handshakes_per_second: 200,
            handshakes_per_address_per_minute: 600,
            // Off: see the field's documentation.
            refused_address_quiet: Duration::ZERO,
            auth_failures_per_minute: 30,
            pull_wait: Duration::from_secs(5),
        }
    }
}

/// A complete, checked relay configuration.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// UDP address to listen on; port 0 picks a free one (see `RelayHandle::local_addr`).
    pub listen: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    /// PEM certificate chain instead of the self-signed certificate.
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
    /// Who may create accounts.
    pub registration: RegistrationMode,
    /// Every bound: sizes, counts, rates and timeouts.
    pub bounds: Bounds,
    /// UDP socket buffer sizes.
    pub udp_buffer_bytes: usize,
    /// sled page cache.
    pub cache_bytes: u64,
    /// Largest envelope-log record when packing a pushed batch.
    pub store_value_bytes: u32,
    /// The embedded store or PostgreSQL.
    pub store: StoreLocation,
    /// Connections to PostgreSQL (unused with sled).
    pub store_connections: usize,
    /// Time to finish in-flight requests after shutdown starts.
    pub shutdown_grace: Duration,
    /// Idle accounts kept in memory (least recently used beyond this are dropped).
    pub cached_accounts: usize,
    /// How often the relay drops rate-limit buckets that refilled, expires pairing slots and
    /// reclaims envelope-log space (not a flag: tests shorten it).
    pub sweep_interval: Duration,
    /// Where to serve metrics and `/healthz` over HTTP (`None`: no listener).
    pub metrics_listen: Option<SocketAddr>,
    /// Wake-up notifications through a push gateway; `None` (the default) refuses push-target
    /// registrations with `UNSUPPORTED`.
    pub push: Option<PushConfig>,
}

/// Where and how the relay sends wake-up notifications (docs/PROTOCOL.md §12.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushConfig {
    /// The gateway's URL.
    pub gateway: crate::wake::GatewayUrl,
    /// CA certificates (PEM) for an https gateway instead of the built-in web roots.
    pub gateway_ca: Option<PathBuf>,
    /// At most one wake-up per device per interval.
    pub interval: Duration,
    /// Devices tracked (waiting or recently woken) at most.
    pub queue: usize,
    /// Attempts after the first.
    pub retries: u32,
    /// Wait before the first retry; each later one doubles it (not a flag: tests shorten it).
    pub first_retry: Duration,
}

impl PushConfig {
    /// Default coalescing interval.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
    /// Default bound of tracked devices.
    pub const DEFAULT_QUEUE: usize = 10_000;
    /// Default retries.
    pub const DEFAULT_RETRIES: u32 = 4;
    /// Wait before the first retry.
    pub const FIRST_RETRY: Duration = Duration::from_secs(1);

    /// A configuration sending to `gateway` with the defaults.
    pub fn new(gateway: crate::wake::GatewayUrl) -> Self {
        Self {
            gateway,
            gateway_ca: None,
            interval: Self::DEFAULT_INTERVAL,
            queue: Self::DEFAULT_QUEUE,
            retries: Self::DEFAULT_RETRIES,
            first_retry: Self::FIRST_RETRY,
        }
    }
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN
                .parse()
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 4433))),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            cert: None,
            key: None,
            registration: RegistrationMode::Open,
            bounds: Bounds::default(),
            udp_buffer_bytes: 4 * 1024 * 1024,
            cache_bytes: 8 * 1024 * 1024,
            store_value_bytes: 256 * 1024,
            store: StoreLocation::sled(),
            store_connections: 8,
            shutdown_grace: Duration::from_secs(10),
            cached_accounts: 4096,
            sweep_interval: Duration::from_secs(60),
            metrics_listen: None,
            push: None,
        }
    }
}

impl RelayConfig {
    /// A private relay embedded in another program (as `kith demo` runs one): a free loopback
    /// port, open registration, a small cache, data in `data_dir`, every other setting at its
    /// default. Nothing outside the machine can reach it.
    pub fn loopback(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: data_dir.into(),
            cache_bytes: 16 * 1024 * 1024,
            ..Self::default()
        }
    }

    /// A configuration for tests: [`RelayConfig::loopback`].
    pub fn for_tests(data_dir: impl Into<PathBuf>) -> Self {
        Self::loopback(data_dir)
    }

    /// Checks bounds that depend on each other.
    pub fn check(&self) -> Result<(), ConfigError> {
        let l = &self.bounds;
        let invalid = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if self.cert.is_some() != self.key.is_some() {
            return invalid("--cert and --key go together");
        }
        self.store.check()?;
        if self.store_connections == 0 {
            return invalid("store_connections must be at least 1");
        }
        if l.max_envelope_bytes as usize > kith_protocol::limits::MAX_ENVELOPE_BYTES {
            return invalid("max_envelope_bytes exceeds the protocol's envelope limit (1 MiB)");
        }
        if l.max_envelope_bytes >= l.max_frame_bytes {
            return invalid("max_envelope_bytes must be below max_frame_bytes");
        }
        if l.pull_max_bytes >= l.max_frame_bytes || l.pull_max_bytes < l.max_envelope_bytes {
            return invalid(
                "pull_max_bytes must be at least max_envelope_bytes and below max_frame_bytes",
            );
        }
        if l.max_devices_per_account == 0
            || l.max_devices_per_account as usize > kith_protocol::limits::MAX_DEVICES
        {
            return invalid("max_devices_per_account must be 1..=64");
        }
        for (value, name) in [
            (l.max_batch_envelopes, "max_batch_envelopes"),
            (l.max_connections, "max_connections"),
            (l.max_streams_per_connection, "max_streams_per_connection"),
            (l.requests_per_second, "requests_per_second"),
            (l.request_burst, "request_burst"),
            (l.pull_default_envelopes, "pull_default_envelopes"),
            (l.pull_max_envelopes, "pull_max_envelopes"),
            (l.max_sealed_keys_per_request, "max_sealed_keys_per_request"),
            (l.lookups_per_minute, "lookups_per_minute"),
            (l.max_connections_per_address, "max_connections_per_address"),
            (
                l.retry_above_handshakes_per_second,
                "retry_above_handshakes_per_second",
            ),
            (
                l.handshakes_per_address_per_minute,
                "handshakes_per_address_per_minute",
            ),
            (l.auth_failures_per_minute, "auth_failures_per_minute"),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid(format!("{name} must be at least 1")));
            }
        }
        if self.cached_accounts == 0 {
            return invalid("cached_accounts must be at least 1");
        }
        if let Some(push) = &self.push {
            if push.queue == 0 {
                return invalid("push_queue must be at least 1");
            }
            if push.retries > 16 {
                return invalid("push_retries must be at most 16");
            }
        }
        if self.sweep_interval.is_zero() {
            return invalid("sweep_interval must not be zero");
        }
        if l.idle_timeout.is_zero()
            || l.handshake_timeout.is_zero()
            || l.request_timeout.is_zero()
            || l.auth_timeout.is_zero()
            || l.pull_wait.is_zero()
        {
            return invalid("timeouts must be at least one second");
        }
        if l.connection_window_bytes < u64::from(l.max_frame_bytes) + 4 {
            return invalid("connection_window_bytes must hold at least one max-size frame");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_has_its_environment_variable() {
        use clap::Args;
        let command = Settings::augment_args(clap::Command::new("serve"));
        let mut count = 0;
        for arg in command.get_arguments() {
            let key = match arg.get_id().as_str() {
                "data_dir" => "data".to_owned(),
                id => id.to_owned(),
            };
            let env = arg.get_env().and_then(|e| e.to_str());
            assert_eq!(
                env,
                Some(format!("KITH_RELAY_{}", key.to_uppercase()).as_str()),
                "{key}"
            );
            // The same name is a key of the TOML file.
            let unknown = toml::from_str::<Settings>(&format!("{key} = {{}}"))
                .unwrap_err()
                .to_string();
            assert!(!unknown.contains("unknown field"), "{key}: {unknown}");
            count += 1;
        }
        assert_eq!(count, 45, "every setting was looked at");
    }

    #[test]
    fn defaults_are_consistent() {
        Settings::default().resolve().unwrap();
    }

    #[test]
    fn flags_win_over_file_and_file_over_defaults() {
        let file: Settings = toml::from_str(
            "max_frame_bytes = 1000000\nmax_batch_envelopes = 7\nregistration = \"token\"",
        )
        .unwrap();
        let flags = Settings {
            max_batch_envelopes: Some(9),
            ..Settings::default()
        };
        let config = Settings {
            pull_max_bytes: Some(800_000),
            max_envelope_bytes: Some(500_000),
            ..flags
        }
        .or(file)
        .resolve()
        .unwrap();
        assert_eq!(config.bounds.max_frame_bytes, 1_000_000);
        assert_eq!(config.bounds.max_batch_envelopes, 9);
        assert_eq!(config.registration, RegistrationMode::Token);
    }

    #[test]
    fn unknown_toml_keys_are_refused() {
        assert!(toml::from_str::<Settings>("max_frame = 1").is_err());
    }

    #[test]
    fn registration_defaults_to_token_off_loopback() {
        let config = Settings {
            listen: Some("0.0.0.0:4433".parse().unwrap()),
            ..Settings::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(config.registration, RegistrationMode::Token);
        assert_eq!(
            Settings::default().resolve().unwrap().registration,
            RegistrationMode::Open
        );
    }
}
