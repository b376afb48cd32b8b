//! A minimal relay client for tests and the load tool: connect with the certificate pinned by
//! SHA-256, one request per stream, typed helpers for the common requests.
//!
//! Applications use `kith-client`, which verifies everything the relay returns; this client
//! verifies nothing beyond the TLS pin.

use std::net::SocketAddr;
use std::sync::Arc;

use kith_protocol::auth::sign_relay_auth;
use kith_protocol::encoding::labels::RELAY_AUTH_EXPORTER;
use kith_protocol::ids::AccountId;
use kith_protocol::keys::DeviceSigningKey;
use kith_protocol::proto::{
    self, Cursor, ErrorCode, Notification, Pull, PullResponse, Push, Request, Response, request,
    response,
};

use bytes::Bytes;
use prost::Message;

use crate::tls::{self, TlsError};
use crate::wire;
use kith_net::{ReadError, encode_frame, read_frame_bytes, read_message, write_message};

/// A request sent by [`RelayClient::send_frame`], in flight until its answer is taken;
/// abandoned when dropped.
#[derive(Debug)]
pub struct InFlight(tokio::task::JoinHandle<Result<Bytes, RelayClientError>>);

impl InFlight {
    /// The body of the response frame.
    pub async fn answer(mut self) -> Result<Bytes, RelayClientError> {
        (&mut self.0)
            .await
            .map_err(|_| RelayClientError::Unexpected("request task ended"))?
    }

    /// Whether the answer has arrived (or the request failed).
    pub fn is_finished(&self) -> bool {
        self.0.is_finished()
    }

    /// The acknowledged last seq of a push.
    pub async fn push_ack(self) -> Result<u64, RelayClientError> {
        push_ack(self.answer().await?)
    }

    /// The page of a pull.
    pub async fn pull_page(self) -> Result<wire::PullResponse, RelayClientError> {
        pull_page(self.answer().await?)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Writes one request frame on a fresh stream and reads the response frame's body.
async fn exchange(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    frame: Bytes,
) -> Result<Bytes, RelayClientError> {
    // The relay may stop reading early (an oversized frame) and still answer: read the
    // response even when the write fails.
    let written = send.write_chunk(frame).await;
    let _ = send.finish();
    match read_frame_bytes(&mut recv, MAX_RESPONSE_BYTES, RESPONSE_PREALLOC).await {
        Ok(Some(body)) => Ok(body),
        Ok(None) => Err(match written {
            Err(e) => RelayClientError::Frame(ReadError::Io(e.into())),
            Ok(()) => RelayClientError::Unexpected("stream ended without a response"),
        }),
        Err(e) => Err(e.into()),
    }
}

/// The acknowledged last seq in a push's response body.
fn push_ack(body: Bytes) -> Result<u64, RelayClientError> {
    match Response::decode(body)
        .map_err(|e| RelayClientError::Frame(ReadError::Decode(e)))?
        .kind
    {
        Some(response::Kind::PushAck(ack)) => Ok(ack.last_seq),
        other => Err(refused(other)),
    }
}

/// An encoded pull request frame.
fn pull_frame(cursors: Vec<Cursor>, max_envelopes: u32, max_bytes: u32) -> Bytes {
    let request = Request {
        kind: Some(request::Kind::Pull(Pull {
            cursors,
            max_envelopes,
            max_bytes,
        })),
    };
    Bytes::from(encode_frame(&request))
}

/// A pull's response body, the page decoded without copying the envelopes.
fn pull_page(body: Bytes) -> Result<wire::PullResponse, RelayClientError> {
    let decode_error = |e| RelayClientError::Frame(ReadError::Decode(e));
    match wire::pull_payload(&body) {
        Some(payload) => wire::PullResponse::decode(payload).map_err(decode_error),
        None => match Response::decode(body).map_err(decode_error)?.kind {
            Some(response::Kind::Pull(_)) => Err(RelayClientError::Unexpected(
                "pull page in an unusual encoding",
            )),
            other => Err(refused(other)),
        },
    }
}

/// Largest response frame the client accepts.
pub const MAX_RESPONSE_BYTES: u32 = 16 * 1024 * 1024;
/// Bytes reserved for a response before it arrives (a pull page of the default size fits).
const RESPONSE_PREALLOC: usize = 4 * 1024 * 1024;

/// Client failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayClientError {
    /// TLS configuration.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Socket setup.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// Connecting failed.
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The connection failed.
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// Writing a request failed.
    #[error("write: {0}")]
    Write(#[from] quinn::WriteError),
    /// A response frame was bad.
    #[error("frame: {0}")]
    Frame(#[from] ReadError),
    /// The relay refused the request.
    #[error("relay refused: {code:?}: {message}")]
    Refused {
        /// Error code.
        code: ErrorCode,
        /// The relay's message.
        message: String,
    },
    /// The relay answered with something unexpected.
    #[error("unexpected response: {0}")]
    Unexpected(&'static str),
}

impl RelayClientError {
    /// The relay's error code, if the relay refused.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            RelayClientError::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// A connection to a relay.
#[derive(Debug)]
pub struct RelayClient {
    endpoint: quinn::Endpoint,
    connection: quinn::Connection,
}

fn refused(kind: Option<response::Kind>) -> RelayClientError {
    match kind {
        Some(response::Kind::Error(err)) => RelayClientError::Refused {
            code: ErrorCode::try_from(err.code).unwrap_or(ErrorCode::Unspecified),
            message: err.message,
        },
        Some(_) => RelayClientError::Unexpected("another response kind"),
        None => RelayClientError::Unexpected("empty response"),
    }
}

impl RelayClient {
    /// Connects to `addr`, trusting only the certificate with SHA-256 `cert_sha256`.
    pub async fn connect(
        addr: SocketAddr,
        cert_sha256: [u8; 32],
    ) -> Result<Self, RelayClientError> {
        let bind: SocketAddr = if addr.is_ipv6() {
            "[::]:0".parse()
        } else {
            "0.0.0.0:0".parse()
        }
        .map_err(|_| RelayClientError::Unexpected("bind address"))?;
        let mut endpoint = quinn::Endpoint::client(bind)?;
        endpoint.set_default_client_config(tls::client_config(cert_sha256)?);
        Self::connect_with(endpoint, addr).await
    }

    /// Connects to `addr` from a socket bound to `bind` (a test or the load tool speaking
    /// from another loopback address, such as 127.0.0.2, to exercise per-address limits).
    pub async fn connect_from(
        bind: SocketAddr,
        addr: SocketAddr,
        cert_sha256: [u8; 32],
    ) -> Result<Self, RelayClientError> {
        let mut endpoint = quinn::Endpoint::client(bind)?;
        endpoint.set_default_client_config(tls::client_config(cert_sha256)?);
        Self::connect_with(endpoint, addr).await
    }

    /// Connects through an existing client endpoint (many connections can share one socket).
    pub async fn connect_with(
        endpoint: quinn::Endpoint,
        addr: SocketAddr,
    ) -> Result<Self, RelayClientError> {
        let connection = endpoint.connect(addr, "localhost")?.await?;
        Ok(Self {
            endpoint,
            connection,
        })
    }

    /// The QUIC connection.
    pub fn connection(&self) -> &quinn::Connection {
        &self.connection
    }

    /// The TLS exporter value that device authentication signs.
    pub fn exporter(&self) -> Result<[u8; 32], RelayClientError> {
        let mut out = [0u8; 32];
        self.connection
            .export_keying_material(&mut out, RELAY_AUTH_EXPORTER.as_bytes(), b"")
            .map_err(|_| RelayClientError::Unexpected("exporter"))?;
        Ok(out)
    }

    /// Sends one request on a new stream and reads one response.
    pub async fn call(&self, kind: request::Kind) -> Result<Response, RelayClientError> {
        let body = self
            .call_frame(Bytes::from(encode_frame(&Request { kind: Some(kind) })))
            .await?;
        Response::decode(body).map_err(|e| RelayClientError::Frame(ReadError::Decode(e)))
    }

    /// Sends one encoded request frame (length prefix included) on a new stream, without
    /// copying it, and returns the body of the response frame.
    pub async fn call_frame(&self, frame: Bytes) -> Result<Bytes, RelayClientError> {
        let (send, recv) = self.connection.open_bi().await?;
        exchange(send, recv, frame).await
    }

    /// Opens a stream now and sends `frame` on it and reads the answer in the background:
    /// requests sent one after another are in flight at once, their streams opened in the
    /// order of the calls (what a pipelining device does, docs/PROTOCOL.md §12).
    pub async fn send_frame(&self, frame: Bytes) -> Result<InFlight, RelayClientError> {
        let (send, recv) = self.connection.open_bi().await?;
        Ok(InFlight(tokio::spawn(exchange(send, recv, frame))))
    }

    /// Pushes a pre-encoded push request frame (see [`wire::push_frame`]); returns the
    /// acknowledged last seq.
    pub async fn push_frame(&self, frame: Bytes) -> Result<u64, RelayClientError> {
        push_ack(self.call_frame(frame).await?)
    }

    /// Pulls one page, decoded without copying the envelopes out of the response frame.
    pub async fn pull_shared(
        &self,
        cursors: Vec<Cursor>,
        max_envelopes: u32,
        max_bytes: u32,
    ) -> Result<wire::PullResponse, RelayClientError> {
        pull_page(
            self.call_frame(pull_frame(cursors, max_envelopes, max_bytes))
                .await?,
        )
    }

    /// [`RelayClient::pull_shared`] sent now, answered in the background: see
    /// [`RelayClient::send_frame`]; [`InFlight::pull_page`] takes the page.
    pub async fn send_pull(
        &self,
        cursors: Vec<Cursor>,
        max_envelopes: u32,
        max_bytes: u32,
    ) -> Result<InFlight, RelayClientError> {
        self.send_frame(pull_frame(cursors, max_envelopes, max_bytes))
            .await
    }

    /// Sends a request; an `Error` response becomes [`RelayClientError::Refused`].
    pub async fn request(&self, kind: request::Kind) -> Result<response::Kind, RelayClientError> {
        match self.call(kind).await?.kind {
            Some(response::Kind::Error(err)) => Err(refused(Some(response::Kind::Error(err)))),
            Some(kind) => Ok(kind),
            None => Err(RelayClientError::Unexpected("empty response")),
        }
    }

    /// Asks for a challenge.
    pub async fn challenge(&self) -> Result<[u8; 32], RelayClientError> {
        match self
            .request(request::Kind::GetChallenge(proto::GetChallenge {}))
            .await?
        {
            response::Kind::Challenge(c) => <[u8; 32]>::try_from(c.nonce.as_slice())
                .map_err(|_| RelayClientError::Unexpected("nonce")),
            other => Err(refused(Some(other))),
        }
    }

    /// Expects `Ok`.
    pub async fn expect_ok(&self, kind: request::Kind) -> Result<(), RelayClientError> {
        match self.request(kind).await? {
            response::Kind::Ok(_) => Ok(()),
            other => Err(refused(Some(other))),
        }
    }

    /// Authenticates as `key`'s device of `account`.
    pub async fn authenticate(
        &self,
        key: &DeviceSigningKey,
        account: &AccountId,
    ) -> Result<(), RelayClientError> {
        let nonce = self.challenge().await?;
        let device = key.device_id();
        let signature = sign_relay_auth(key, &self.exporter()?, &nonce, account, &device);
        self.expect_ok(request::Kind::Authenticate(proto::Authenticate {
            account_id: account.as_bytes().to_vec(),
            device_id: device.as_bytes().to_vec(),
            signature: signature.to_bytes().to_vec(),
        }))
        .await
    }

    /// Creates an account from its first roster, authenticating as `key`'s device.
    pub async fn create_account(
        &self,
        roster: Vec<u8>,
        key: &DeviceSigningKey,
        account: &AccountId,
        registration_token: Option<&str>,
    ) -> Result<(), RelayClientError> {
        let nonce = self.challenge().await?;
        let device = key.device_id();
        let signature = sign_relay_auth(key, &self.exporter()?, &nonce, account, &device);
        self.expect_ok(request::Kind::CreateAccount(proto::CreateAccount {
            roster,
            device_id: device.as_bytes().to_vec(),
            signature: signature.to_bytes().to_vec(),
            registration_token: registration_token.unwrap_or_default().to_owned(),
        }))
        .await
    }

    /// Pushes encoded envelopes; returns the acknowledged last seq.
    pub async fn push(&self, envelopes: Vec<Vec<u8>>) -> Result<u64, RelayClientError> {
        match self
            .request(request::Kind::Push(Push { envelopes }))
            .await?
        {
            response::Kind::PushAck(ack) => Ok(ack.last_seq),
            other => Err(refused(Some(other))),
        }
    }

    /// Pulls one page.
    pub async fn pull(
        &self,
        cursors: Vec<Cursor>,
        max_envelopes: u32,
        max_bytes: u32,
    ) -> Result<PullResponse, RelayClientError> {
        match self
            .request(request::Kind::Pull(Pull {
                cursors,
                max_envelopes,
                max_bytes,
            }))
            .await?
        {
            response::Kind::Pull(page) => Ok(page),
            other => Err(refused(Some(other))),
        }
    }

    /// Subscribes to pushes of the account's other devices.
    pub async fn subscribe(&self) -> Result<Subscription, RelayClientError> {
        let (mut send, mut recv) = self.connection.open_bi().await?;
        write_message(
            &mut send,
            &Request {
                kind: Some(request::Kind::Subscribe(proto::Subscribe {})),
            },
        )
        .await
        .map_err(|e| RelayClientError::Frame(ReadError::Io(e)))?;
        match read_message::<Response, _>(&mut recv, MAX_RESPONSE_BYTES)
            .await?
            .and_then(|r| r.kind)
        {
            Some(response::Kind::Ok(_)) => Ok(Subscription { _send: send, recv }),
            other => Err(refused(other)),
        }
    }

    /// Closes the connection and waits for the close to reach the relay.
    pub async fn close(self) {
        self.connection.close(0u32.into(), b"bye");
        self.endpoint.wait_idle().await;
    }
}

/// An open subscription.
#[derive(Debug)]
pub struct Subscription {
    _send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl Subscription {
    /// The next notification; `Ok(None)` when the relay ended the subscription cleanly, an
    /// error when it ended it with an error (account deleted, shutting down).
    pub async fn next(&mut self) -> Result<Option<Notification>, RelayClientError> {
        match read_message::<Response, _>(&mut self.recv, MAX_RESPONSE_BYTES).await? {
            None => Ok(None),
            Some(Response {
                kind: Some(response::Kind::Notification(n)),
            }) => Ok(Some(n)),
            Some(other) => Err(refused(other.kind)),
        }
    }
}

/// Shares one client endpoint (one UDP socket) among many connections, as the load tool does.
pub fn shared_endpoint(cert_sha256: [u8; 32]) -> Result<quinn::Endpoint, RelayClientError> {
    shared_endpoint_up_to(cert_sha256, kith_net::MAX_UDP_PAYLOAD)
}

/// [`shared_endpoint`] whose datagrams, sent and accepted, are at most `max_udp_payload` bytes
/// (1,452: an Ethernet path, whatever the path to the relay would carry).
pub fn shared_endpoint_up_to(
    cert_sha256: [u8; 32],
    max_udp_payload: u16,
) -> Result<quinn::Endpoint, RelayClientError> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let sock = socket2::SockRef::from(&socket);
    let _ = sock.set_recv_buffer_size(4 * 1024 * 1024);
    let _ = sock.set_send_buffer_size(4 * 1024 * 1024);
    let mut endpoint = quinn::Endpoint::new(
        kith_net::endpoint_config(max_udp_payload),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )?;
    endpoint.set_default_client_config(tls::client_config_up_to(cert_sha256, max_udp_payload)?);
    Ok(endpoint)
}
