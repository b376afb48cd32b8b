//! The connection to a relay: QUIC (quinn) with TLS 1.3, the server pinned by the SHA-256 of its
//! public key (or, from older stores, of its whole certificate) or verified against CA roots, ALPN `kith/1`, one bidirectional stream
//! per request, each frame a 4-byte big-endian length and a protobuf message.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kith_protocol::auth::{CHALLENGE_LEN, EXPORTER_LEN, sign_relay_auth};
use kith_protocol::encoding::labels;
use kith_protocol::keys::DeviceSigningKey;
use kith_protocol::proto::{self, request, response};
use kith_protocol::{AccountId, DeviceId};
pub use kith_tls::ALPN;
use prost::Message;
use rustls::pki_types::CertificateDer;
use tokio::net::lookup_host;

/// Largest response frame the client accepts (pull pages are bounded by the relay far below).
pub const MAX_RESPONSE_FRAME: u32 = 32 * 1024 * 1024;
/// Bytes reserved for a response body before any arrive; the buffer grows with what arrives.
const RESPONSE_PREALLOC: usize = 64 * 1024;
/// How long a device waits for the relay's first answer when connecting: a relay that is down
/// gives no quick refusal over UDP, so this bounds how long a device waits to learn it is
/// offline. A healthy relay answers within one round trip; five seconds leaves room for a few
/// lost packets on a poor network while a person still learns within seconds that the relay
/// is not there. Once anything came back, the handshake has until [`HANDSHAKE_TIMEOUT`].
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a handshake may take in all once the relay has answered (its handshake data
/// arrived within [`CONNECT_TIMEOUT`]): on a lossy, slow link (a poor mobile network) the rest
/// of the relay's flight can take several retransmissions, each waiting longer than the last.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a single request may take before it is abandoned.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long [`RelayConnection::close`] waits for its close to be sent before returning (the
/// connection's draining period is not waited for).
pub const CLOSE_FLUSH: Duration = Duration::from_millis(20);

/// How the client decides to trust the relay's certificate.
#[derive(Clone, PartialEq, Eq)]
pub enum RelayTrust {
    /// Accept a certificate whose public key (DER SubjectPublicKeyInfo) has this SHA-256 — the
    /// `key sha256` kith-relay prints, kept across renewals with the same key — or, for a pin
    /// of an older release, whose whole DER encoding has it (`certificate sha256`; replaced by
    /// the key pin after the first authenticated connection, see docs/PROTOCOL.md §12).
    PinnedSha256([u8; 32]),
    /// Accept a certificate matching any of these pins (as [`RelayTrust::PinnedSha256`]): the
    /// relay's key and the next one its operator will rotate to.
    PinSet(Vec<[u8; 32]>),
    /// Verify the chain against these DER-encoded CA certificates (e.g. a configured CA).
    CaRoots(Vec<Vec<u8>>),
    /// Verify the chain against the system's CA bundle (read at each connection: `SSL_CERT_FILE`
    /// or the first of [`SYSTEM_CA_FILES`] that exists).
    SystemRoots,
}

impl std::fmt::Debug for RelayTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RelayTrust::PinnedSha256(pin) => write!(f, "PinnedSha256({})", hex::encode(pin)),
            RelayTrust::PinSet(pins) => write!(f, "PinSet({})", pins_to_hex(pins)),
            RelayTrust::CaRoots(roots) => write!(f, "CaRoots({} certificates)", roots.len()),
            RelayTrust::SystemRoots => write!(f, "SystemRoots"),
        }
    }
}

/// Pins as hex, separated by commas: how they are written on the command line and stored.
pub fn pins_to_hex(pins: &[[u8; 32]]) -> String {
    pins.iter().map(hex::encode).collect::<Vec<_>>().join(",")
}

/// Where the system CA bundle is looked for, after `SSL_CERT_FILE`: Debian and Ubuntu, Fedora
/// and RHEL, openSUSE, Alpine and macOS, Homebrew.
pub const SYSTEM_CA_FILES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
    "/usr/local/etc/openssl/cert.pem",
];

/// The CA certificates of a PEM file (`--relay-ca FILE`), DER-encoded.
pub fn read_ca_file(path: &std::path::Path) -> Result<Vec<Vec<u8>>, NetError> {
    use rustls::pki_types::pem::PemObject;
    let roots = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| NetError::Setup(format!("CA file {}: {e}", path.display())))?;
    if roots.is_empty() {
        return Err(NetError::Setup(format!(
            "CA file {} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(roots.into_iter().map(|der| der.to_vec()).collect())
}

/// The system's CA certificates (see [`RelayTrust::SystemRoots`]).
fn system_roots() -> Result<rustls::RootCertStore, NetError> {
    let path = std::env::var_os("SSL_CERT_FILE")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            SYSTEM_CA_FILES
                .iter()
                .map(std::path::Path::new)
                .find(|path| path.is_file())
                .map(std::path::Path::to_path_buf)
        })
        .ok_or_else(|| {
            NetError::Setup(
                "no system CA bundle found: set SSL_CERT_FILE, or give the relay's CA as a file"
                    .into(),
            )
        })?;
    let mut store = rustls::RootCertStore::empty();
    let (added, _unusable) =
        store.add_parsable_certificates(read_ca_file(&path)?.into_iter().map(CertificateDer::from));
    if added == 0 {
        return Err(NetError::Setup(format!(
            "no usable CA certificate in {}",
            path.display()
        )));
    }
    Ok(store)
}

/// Where the relay is and how to trust it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayTarget {
    /// `host:port`.
    pub address: String,
    /// Certificate trust.
    pub trust: RelayTrust,
}

impl RelayTarget {
    /// A relay pinned by the hex SHA-256 of its key (`key sha256`, as `kith-relay` prints it)
    /// or of its whole certificate (`certificate sha256`, the older pin); several pins
    /// separated by commas make a [`RelayTrust::PinSet`].
    pub fn pinned(address: impl Into<String>, pins_hex: &str) -> Result<Self, NetError> {
        let mut pins = Vec::new();
        for one in pins_hex.split(',') {
            let mut pin = [0u8; 32];
            hex::decode_to_slice(one.trim(), &mut pin).map_err(|_| NetError::BadPin)?;
            if !pins.contains(&pin) {
                pins.push(pin);
            }
        }
        let trust = match pins.as_slice() {
            [one] => RelayTrust::PinnedSha256(*one),
            _ => RelayTrust::PinSet(pins),
        };
        Ok(Self {
            address: address.into(),
            trust,
        })
    }
}

/// Why talking to the relay failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// A certificate pin is not 64 hex characters.
    #[error(
        "the relay's pin must be 64 hex characters (the `key sha256` kith-relay prints), or \
         several separated by commas"
    )]
    BadPin,
    /// The relay address did not resolve.
    #[error("cannot resolve relay address {0}")]
    Resolve(String),
    /// TLS or QUIC setup failed locally.
    #[error("cannot set up the QUIC client: {0}")]
    Setup(String),
    /// No connection could be established: the relay did not answer the handshake within
    /// [`CONNECT_TIMEOUT`], or refused it.
    #[error("cannot reach the relay at {address}: {reason}")]
    Unreachable {
        /// The relay's address.
        address: String,
        /// What happened (no answer, refused, certificate mismatch …).
        reason: String,
    },
    /// An established connection was lost or failed.
    #[error("connection to the relay failed: {0}")]
    Connection(String),
    /// The relay answered with an error.
    #[error("relay refused the request: {code:?}: {message}")]
    Relay {
        /// The relay's error code.
        code: proto::ErrorCode,
        /// The relay's explanation.
        message: String,
    },
    /// The relay's answer could not be decoded or was not the expected kind.
    #[error("unexpected answer from the relay: {0}")]
    Protocol(String),
    /// A request took longer than [`REQUEST_TIMEOUT`].
    #[error("the relay did not answer in time")]
    Timeout,
}

impl NetError {
    /// A lost or failed connection, described with its causes: quinn's stream errors say only
    /// "connection lost" and keep the reason (reset, timed out, closed by the relay) as their
    /// source.
    fn connection(error: &dyn std::error::Error) -> Self {
        let mut text = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            if !text.ends_with(&cause_text) {
                text.push_str(": ");
                text.push_str(&cause_text);
            }
            source = cause.source();
        }
        NetError::Connection(text)
    }

    /// The relay's error code, if the relay refused the request.
    pub fn relay_code(&self) -> Option<proto::ErrorCode> {
        match self {
            NetError::Relay { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether retrying later may succeed (connection trouble, storage pressure, rate limits, a
    /// revocation of this device under way that may yet be abandoned).
    /// An unreachable relay counts: it may come back, which a watcher waits for; a one-shot
    /// command should not ([`NetError::is_retryable_now`]).
    pub fn is_transient(&self) -> bool {
        match self {
            NetError::Connection(_) | NetError::Timeout | NetError::Unreachable { .. } => true,
            NetError::Relay { code, .. } => matches!(
                code,
                proto::ErrorCode::Storage
                    | proto::ErrorCode::RateLimited
                    | proto::ErrorCode::ShuttingDown
                    | proto::ErrorCode::DeviceFenced
                    | proto::ErrorCode::PushWindowFull
            ),
            _ => false,
        }
    }
}

impl NetError {
    /// Whether retrying at once, within the few seconds a person waits for a command, may
    /// succeed: a dropped connection or a busy relay, but not a relay that did not answer
    /// at all (retrying that only makes the person wait longer for the same answer).
    pub fn is_retryable_now(&self) -> bool {
        self.is_transient() && !matches!(self, NetError::Unreachable { .. })
    }
}

fn client_config(trust: &RelayTrust) -> Result<quinn::ClientConfig, NetError> {
    let tls = match trust {
        RelayTrust::PinnedSha256(pin) => kith_tls::pinned_client_config(*pin),
        RelayTrust::PinSet(pins) => kith_tls::pinned_set_client_config(pins.clone()),
        RelayTrust::SystemRoots => kith_tls::ca_client_config(system_roots()?),
        RelayTrust::CaRoots(roots) => {
            let mut store = rustls::RootCertStore::empty();
            for der in roots {
                store
                    .add(CertificateDer::from(der.clone()))
                    .map_err(|e| NetError::Setup(format!("bad CA certificate: {e}")))?;
            }
            kith_tls::ca_client_config(store)
        }
    }
    .map_err(|e| NetError::Setup(e.to_string()))?;
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| NetError::Setup(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(10)));
    // Larger datagrams where the path to the relay carries them (kith_net::MAX_UDP_PAYLOAD).
    kith_net::probe_udp_payload(&mut transport, kith_net::MAX_UDP_PAYLOAD);
    transport.max_idle_timeout(Some(
        Duration::from_secs(60)
            .try_into()
            .map_err(|_| NetError::Setup("idle timeout".into()))?,
    ));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// Whether a client endpoint's socket has received anything yet: the relay's sign of life,
/// which tells a relay that is down (nothing comes back) from a slow, lossy link (something
/// does, the rest of the handshake is retransmitted).
#[derive(Debug, Default)]
struct Heard(std::sync::atomic::AtomicBool);

impl Heard {
    fn get(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A client endpoint bound to `bind` whose socket notes in `heard` that a datagram arrived.
fn heard_endpoint(bind: SocketAddr, heard: Arc<Heard>) -> Result<quinn::Endpoint, NetError> {
    let setup = |e: std::io::Error| NetError::Setup(e.to_string());
    let runtime: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
    let socket = runtime
        .wrap_udp_socket(std::net::UdpSocket::bind(bind).map_err(setup)?)
        .map_err(setup)?;
    quinn::Endpoint::new_with_abstract_socket(
        quinn::EndpointConfig::default(),
        None,
        Arc::new(kith_net::socket::InspectedSocket::new(socket, heard)),
        runtime,
    )
    .map_err(setup)
}

impl kith_net::socket::Inspect for Heard {
    fn received(&self, _: &[std::io::IoSliceMut<'_>], meta: &mut [quinn::udp::RecvMeta]) {
        if !meta.is_empty() {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// An open QUIC connection to a relay.
#[derive(Debug, Clone)]
pub struct RelayConnection {
    connection: quinn::Connection,
    endpoint: quinn::Endpoint,
}

impl RelayConnection {
    /// Connects to the relay and completes the TLS handshake.
    pub async fn connect(target: &RelayTarget) -> Result<Self, NetError> {
        let remote = resolve(&target.address).await?;
        let bind: SocketAddr = if remote.is_ipv6() {
            "[::]:0"
                .parse()
                .map_err(|_| NetError::Setup("bind address".into()))?
        } else {
            "0.0.0.0:0"
                .parse()
                .map_err(|_| NetError::Setup("bind address".into()))?
        };
        let heard = Arc::new(Heard::default());
        let mut endpoint = heard_endpoint(bind, heard.clone())?;
        endpoint.set_default_client_config(client_config(&target.trust)?);
        // The host as written (a DNS name or an IP address, checked against the certificate's
        // SANs when trusting a CA); a pinned certificate is matched by its hash alone.
        let server_name = target
            .address
            .rsplit_once(':')
            .map(|(host, _)| host.trim_start_matches('[').trim_end_matches(']'))
            .filter(|host| !host.is_empty())
            .unwrap_or("kith-relay");
        let unreachable = |reason: String| NetError::Unreachable {
            address: target.address.clone(),
            reason,
        };
        let mut connecting = endpoint
            .connect(remote, server_name)
            .map_err(|e| unreachable(e.to_string()))?;
        let failed = |e: quinn::ConnectionError| match NetError::connection(&e) {
            NetError::Connection(text) => unreachable(text),
            other => other,
        };
        // A relay that sends nothing back within CONNECT_TIMEOUT is taken for down; one that
        // answered gets until HANDSHAKE_TIMEOUT to finish the handshake.
        let started = tokio::time::Instant::now();
        let connection = match tokio::time::timeout(CONNECT_TIMEOUT, &mut connecting).await {
            Ok(connected) => connected.map_err(failed)?,
            Err(_) if !heard.get() => {
                return Err(unreachable(format!(
                    "no answer within {} s",
                    CONNECT_TIMEOUT.as_secs()
                )));
            }
            Err(_) => tokio::time::timeout_at(started + HANDSHAKE_TIMEOUT, connecting)
                .await
                .map_err(|_| {
                    unreachable(format!(
                        "the relay answered, but the handshake did not complete within {} s",
                        HANDSHAKE_TIMEOUT.as_secs()
                    ))
                })?
                .map_err(failed)?,
        };
        Ok(Self {
            connection,
            endpoint,
        })
    }

    /// The certificate the relay presented (end entity), for replacing a pin of the whole
    /// certificate with the key pin.
    pub fn peer_certificate(&self) -> Option<CertificateDer<'static>> {
        self.connection
            .peer_identity()?
            .downcast::<Vec<CertificateDer<'static>>>()
            .ok()?
            .into_iter()
            .next()
    }

    /// Sends one request on a fresh stream and reads its single response.
    pub async fn request(&self, kind: request::Kind) -> Result<response::Kind, NetError> {
        self.request_within(kind, REQUEST_TIMEOUT).await
    }

    /// [`RelayConnection::request`] abandoned after `timeout` instead of [`REQUEST_TIMEOUT`]
    /// (a request the relay holds open, such as a waiting take of a pairing slot).
    pub async fn request_within(
        &self,
        kind: request::Kind,
        timeout: Duration,
    ) -> Result<response::Kind, NetError> {
        tokio::time::timeout(timeout, self.request_inner(kind))
            .await
            .map_err(|_| NetError::Timeout)?
    }

    /// Opens the request's stream now and sends and answers it in the background: several
    /// requests sent one after another are in flight at once, their streams opened in the
    /// order of the calls (the order in which the relay appends pipelined pushes,
    /// docs/PROTOCOL.md §12). [`InFlight::answer`] waits for the answer; dropping the
    /// [`InFlight`] abandons the request.
    pub async fn send(&self, kind: request::Kind) -> Result<InFlight, NetError> {
        let (mut send, mut recv) = self
            .connection
            .open_bi()
            .await
            .map_err(|e| NetError::connection(&e))?;
        let task = tokio::spawn(tokio::time::timeout(REQUEST_TIMEOUT, async move {
            write_frame(&mut send, &proto::Request { kind: Some(kind) }).await?;
            send.finish().map_err(|e| NetError::connection(&e))?;
            let response = read_response(&mut recv).await?;
            response.ok_or_else(|| NetError::Connection("stream closed without an answer".into()))
        }));
        Ok(InFlight(task))
    }

    async fn request_inner(&self, kind: request::Kind) -> Result<response::Kind, NetError> {
        let (mut send, mut recv) = self
            .connection
            .open_bi()
            .await
            .map_err(|e| NetError::connection(&e))?;
        write_frame(&mut send, &proto::Request { kind: Some(kind) }).await?;
        send.finish().map_err(|e| NetError::connection(&e))?;
        let response = read_response(&mut recv).await?;
        response.ok_or_else(|| NetError::Connection("stream closed without an answer".into()))
    }

    /// Opens a subscription: the relay sends a notification whenever another device pushes.
    pub async fn subscribe(&self) -> Result<Subscription, NetError> {
        let (mut send, recv) = self
            .connection
            .open_bi()
            .await
            .map_err(|e| NetError::connection(&e))?;
        write_frame(
            &mut send,
            &proto::Request {
                kind: Some(request::Kind::Subscribe(proto::Subscribe {})),
            },
        )
        .await?;
        Ok(Subscription { _send: send, recv })
    }

    /// Authenticates this connection as `device` of `account` (challenge bound to the session).
    pub async fn authenticate(
        &self,
        account: &AccountId,
        device_key: &DeviceSigningKey,
    ) -> Result<(), NetError> {
        let (device, signature) = self.answer_challenge(account, device_key).await?;
        expect_ok(
            self.request(request::Kind::Authenticate(proto::Authenticate {
                account_id: account.as_bytes().to_vec(),
                device_id: device.as_bytes().to_vec(),
                signature,
            }))
            .await?,
        )
    }

    /// Creates an account from its first roster and authenticates this connection as `device`.
    pub async fn create_account(
        &self,
        account: &AccountId,
        roster: Vec<u8>,
        device_key: &DeviceSigningKey,
        registration_token: Option<String>,
    ) -> Result<(), NetError> {
        let (device, signature) = self.answer_challenge(account, device_key).await?;
        expect_ok(
            self.request(request::Kind::CreateAccount(proto::CreateAccount {
                roster,
                device_id: device.as_bytes().to_vec(),
                signature,
                registration_token: registration_token.unwrap_or_default(),
            }))
            .await?,
        )
    }

    /// Joins an account as a device restored from the recovery bundle: `roster` (signed by the
    /// current account key) adds `device_key`'s device; authenticates the connection as it.
    pub async fn recover_account(
        &self,
        account: &AccountId,
        roster: Vec<u8>,
        device_key: &DeviceSigningKey,
    ) -> Result<(), NetError> {
        let (device, signature) = self.answer_challenge(account, device_key).await?;
        expect_ok(
            self.request(request::Kind::RecoverDevice(proto::RecoverDevice {
                roster,
                device_id: device.as_bytes().to_vec(),
                signature,
            }))
            .await?,
        )
    }

    /// Asks for a challenge and signs it, bound to this TLS session, as `device_key`'s device
    /// of `account`: the device id and signature every authenticating request carries.
    async fn answer_challenge(
        &self,
        account: &AccountId,
        device_key: &DeviceSigningKey,
    ) -> Result<(DeviceId, Vec<u8>), NetError> {
        let (nonce, exporter) = self.challenge().await?;
        let device = device_key.device_id();
        let signature = sign_relay_auth(device_key, &exporter, &nonce, account, &device);
        Ok((device, signature.to_bytes().to_vec()))
    }

    async fn challenge(&self) -> Result<([u8; CHALLENGE_LEN], [u8; EXPORTER_LEN]), NetError> {
        let response = self
            .request(request::Kind::GetChallenge(proto::GetChallenge {}))
            .await?;
        let response::Kind::Challenge(challenge) = response else {
            return Err(NetError::Protocol("expected a challenge".into()));
        };
        let nonce = <[u8; CHALLENGE_LEN]>::try_from(challenge.nonce.as_slice())
            .map_err(|_| NetError::Protocol("challenge nonce has the wrong length".into()))?;
        let mut exporter = [0u8; EXPORTER_LEN];
        self.connection
            .export_keying_material(&mut exporter, labels::RELAY_AUTH_EXPORTER.as_bytes(), b"")
            .map_err(|_| NetError::Protocol("TLS exporter unavailable".into()))?;
        Ok((nonce, exporter))
    }

    /// Closes the connection politely: the relay is told at once, so it frees the connection
    /// instead of keeping it until its idle timeout.
    ///
    /// The close is sent within the first few milliseconds; waiting for the whole draining
    /// period (three probe timeouts, about 100 ms on loopback) would only add to every
    /// command's run time, so the wait is bounded by [`CLOSE_FLUSH`].
    pub async fn close(&self) {
        self.connection.close(0u32.into(), b"bye");
        let _ = tokio::time::timeout(CLOSE_FLUSH, self.endpoint.wait_idle()).await;
    }
}

/// Notifications from the relay that another device of the account pushed.
#[derive(Debug)]
pub struct Subscription {
    _send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl Subscription {
    /// Waits for the next notification; `None` when the relay closed the subscription.
    pub async fn next(&mut self) -> Result<Option<proto::Notification>, NetError> {
        loop {
            match read_response(&mut self.recv).await? {
                None => return Ok(None),
                Some(response::Kind::Notification(note)) => return Ok(Some(note)),
                // The relay confirms the subscription with `Ok` before any notification.
                Some(response::Kind::Ok(_)) => continue,
                Some(_) => return Err(NetError::Protocol("expected a notification".into())),
            }
        }
    }
}

/// Interprets an answer that should be `Ok`.
pub fn expect_ok(response: response::Kind) -> Result<(), NetError> {
    match response {
        response::Kind::Ok(_) => Ok(()),
        _ => Err(NetError::Protocol("expected ok".into())),
    }
}

async fn resolve(address: &str) -> Result<SocketAddr, NetError> {
    lookup_host(address)
        .await
        .map_err(|_| NetError::Resolve(address.to_string()))?
        .next()
        .ok_or_else(|| NetError::Resolve(address.to_string()))
}

async fn write_frame(
    send: &mut quinn::SendStream,
    message: &proto::Request,
) -> Result<(), NetError> {
    kith_net::write_frame(send, kith_net::encode_frame(message).into())
        .await
        .map_err(|e| NetError::connection(&e))
}

/// A request sent with [`RelayConnection::send`], in flight until its answer is taken;
/// abandoned when dropped.
#[derive(Debug)]
pub struct InFlight(
    tokio::task::JoinHandle<Result<Result<response::Kind, NetError>, tokio::time::error::Elapsed>>,
);

impl InFlight {
    /// Waits for the answer (at most [`REQUEST_TIMEOUT`] after the request was sent).
    pub async fn answer(mut self) -> Result<response::Kind, NetError> {
        match (&mut self.0).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(NetError::Timeout),
            Err(join) => Err(NetError::Connection(format!("request task ended: {join}"))),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads one response frame; `Ok(None)` at a clean end of stream. Relay errors become
/// [`NetError::Relay`]. The body buffer grows as bytes arrive, not by the announced length.
async fn read_response(recv: &mut quinn::RecvStream) -> Result<Option<response::Kind>, NetError> {
    let body = match kith_net::read_frame_bytes(recv, MAX_RESPONSE_FRAME, RESPONSE_PREALLOC).await {
        Ok(Some(body)) => body,
        Ok(None) => return Ok(None),
        Err(kith_net::ReadError::TooLarge { len, .. }) => {
            return Err(NetError::Protocol(format!(
                "response frame of {len} bytes exceeds the limit"
            )));
        }
        Err(e @ kith_net::ReadError::Io(_)) => return Err(NetError::connection(&e)),
        Err(e) => return Err(NetError::Connection(e.to_string())),
    };
    let response = proto::Response::decode(body)
        .map_err(|_| NetError::Protocol("undecodable response".into()))?;
    match response.kind {
        Some(response::Kind::Error(error)) => Err(NetError::Relay {
            code: proto::ErrorCode::try_from(error.code).unwrap_or(proto::ErrorCode::Unspecified),
            message: error.message,
        }),
        Some(kind) => Ok(Some(kind)),
        None => Err(NetError::Protocol("empty response".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_connection_says_why() {
        let lost = quinn::ReadError::ConnectionLost(quinn::ConnectionError::Reset);
        let NetError::Connection(text) = NetError::connection(&lost) else {
            panic!("not a connection error");
        };
        assert_eq!(text, "connection lost: reset by peer");
        // A cause already in the message is not repeated.
        let timed_out = quinn::ConnectionError::TimedOut;
        assert_eq!(
            NetError::connection(&timed_out).to_string(),
            "connection to the relay failed: timed out"
        );
    }
}
