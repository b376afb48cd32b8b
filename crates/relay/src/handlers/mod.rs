//! One file per request kind, and the relay's one routing table: [`Command::decode`] turns a
//! request frame into a [`Command`] once (a push on the zero-copy path), and [`dispatch`]
//! answers it with [`Command::apply`], one `match`. Each handler takes the decoded request and
//! returns the response or a [`RequestError`]; `subscribe` alone keeps its stream open, and is
//! given it.
//!
//! What several handlers check lives here, next to [`authorized`]: a device's authentication
//! signature ([`take_challenge`], [`verify_auth_signature`], [`verify_roster_device`]) and the
//! per-address budget of unauthenticated lookups
//! ([`check_lookup_budget`]).

mod account_info;
pub(crate) mod auth;
mod create_account;
pub(crate) mod delete_account;
mod epoch_keys;
mod pairing;
mod pull;
pub(crate) mod push;
mod push_target;
mod recover_device;
mod recovery;
mod roster;
pub(crate) mod subscribe;
mod truncate;
mod usage;

use std::sync::Arc;
use std::time::{Duration, Instant};

use kith_protocol::auth::verify_relay_auth;
use kith_protocol::ids::{AccountId, DeviceId};
use kith_protocol::keys::DeviceVerifyingKey;
use kith_protocol::proto::{
    self, ErrorCode, Ok as OkResponse, Request, Response, request, response,
};
use prost::Message;

use crate::error::RequestError;
use crate::metrics::Limit;
use crate::state::{Account, AccountInner, Conn, Shared, lock};
use crate::store::StreamMeta;
use crate::wire;

/// What a handler answers: a message to encode, or a frame it encoded itself (a pull page,
/// built from slices of what the store read), or nothing more (a subscription, which wrote
/// its answers on the stream itself).
#[derive(Debug)]
pub(crate) enum Answer {
    Message(Response),
    /// An encoded frame, and the shares of the pull budgets (the account's, the relay's) it
    /// holds until the peer has acknowledged it.
    Frame(bytes::Bytes, Option<[tokio::sync::OwnedSemaphorePermit; 2]>),
    /// The handler answered on the stream itself; finish it.
    Streamed,
}

/// The result of a handler.
pub(crate) type Reply = Result<Answer, RequestError>;

pub(crate) fn respond(kind: response::Kind) -> Reply {
    Ok(Answer::Message(Response { kind: Some(kind) }))
}

pub(crate) fn ok() -> Reply {
    respond(response::Kind::Ok(OkResponse {}))
}

/// A request, decoded once: one variant per kind of `relay.proto`'s `Request`, a push with its
/// envelopes as slices of the frame ([`wire::Push`]).
#[derive(Debug)]
pub(crate) enum Command {
    GetChallenge,
    Authenticate(proto::Authenticate),
    CreateAccount(proto::CreateAccount),
    PutRoster(proto::PutRoster),
    GetRoster,
    Push(wire::Push),
    Pull(proto::Pull),
    Subscribe,
    PutSealedEpochKeys(proto::PutSealedEpochKeys),
    GetSealedEpochKeys(proto::GetSealedEpochKeys),
    PutPairingSlot(proto::PutPairingSlot),
    TakePairingSlot(proto::TakePairingSlot),
    TruncateStream(proto::TruncateStream),
    PutRecoveryBundle(proto::PutRecoveryBundle),
    GetRecoveryBundle(proto::GetRecoveryBundle),
    DeleteAccount(proto::DeleteAccount),
    GetUsage,
    RecoverDevice(proto::RecoverDevice),
    RegisterPushTarget(proto::RegisterPushTarget),
    UnregisterPushTarget,
    GetAccountInfo,
}

impl Command {
    /// Bounds the request by its kind (size, list length) before decoding it (see
    /// [`wire::check_request`]), then decodes it.
    pub(crate) fn decode(
        body: bytes::Bytes,
        limits: &crate::config::Bounds,
    ) -> Result<Self, RequestError> {
        match wire::check_request(&body, limits) {
            Ok(()) => {}
            Err(wire::Unbounded::TooLarge) => {
                return Err(RequestError::new(
                    ErrorCode::FrameTooLarge,
                    "request larger than its kind allows",
                ));
            }
            Err(wire::Unbounded::TooMany(wire::REQUEST_PUSH)) => {
                return Err(RequestError::new(
                    ErrorCode::BatchTooLarge,
                    "too many envelopes in one push",
                ));
            }
            Err(wire::Unbounded::TooMany(wire::REQUEST_PUT_SEALED_EPOCH_KEYS)) => {
                return Err(RequestError::new(
                    ErrorCode::BatchTooLarge,
                    "too many sealed keys in one request",
                ));
            }
            Err(wire::Unbounded::TooMany(_)) => {
                return Err(RequestError::new(
                    ErrorCode::InvalidRequest,
                    "a list longer than the request's kind allows",
                ));
            }
            Err(wire::Unbounded::Malformed) => {
                return Err(RequestError::new(
                    ErrorCode::Malformed,
                    "a request is exactly one field",
                ));
            }
        }
        let malformed = |_| RequestError::new(ErrorCode::Malformed, "request does not decode");
        if let Some(payload) = wire::push_payload(&body) {
            if let Some(push) = wire::Push::decode_plain(&payload) {
                return Ok(Command::Push(push));
            }
            return wire::Push::decode(payload)
                .map(Command::Push)
                .map_err(malformed);
        }
        match Request::decode(&body[..]).map_err(malformed)?.kind {
            Some(kind) => Ok(Self::from(kind)),
            // A request kind of a later release (its field was skipped): say so, rather than
            // "malformed", so its sender can tell the person to update the relay (§8.1).
            None if !body.is_empty() => Err(RequestError::new(
                ErrorCode::Unsupported,
                concat!(
                    "this relay (kith-relay ",
                    env!("CARGO_PKG_VERSION"),
                    ") does not know this request; update it"
                ),
            )),
            None => Err(RequestError::new(ErrorCode::Malformed, "empty request")),
        }
    }

    /// The kind's name: the `kind` label of the request metrics, as in `relay.proto`.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Command::GetChallenge => "get_challenge",
            Command::Authenticate(_) => "authenticate",
            Command::CreateAccount(_) => "create_account",
            Command::PutRoster(_) => "put_roster",
            Command::GetRoster => "get_roster",
            Command::Push(_) => "push",
            Command::Pull(_) => "pull",
            Command::Subscribe => "subscribe",
            Command::PutSealedEpochKeys(_) => "put_sealed_epoch_keys",
            Command::GetSealedEpochKeys(_) => "get_sealed_epoch_keys",
            Command::PutPairingSlot(_) => "put_pairing_slot",
            Command::TakePairingSlot(_) => "take_pairing_slot",
            Command::TruncateStream(_) => "truncate_stream",
            Command::PutRecoveryBundle(_) => "put_recovery_bundle",
            Command::GetRecoveryBundle(_) => "get_recovery_bundle",
            Command::DeleteAccount(_) => "delete_account",
            Command::GetUsage => "get_usage",
            Command::RecoverDevice(_) => "recover_device",
            Command::RegisterPushTarget(_) => "register_push_target",
            Command::UnregisterPushTarget => "unregister_push_target",
            Command::GetAccountInfo => "get_account_info",
        }
    }

    /// Whether the request writes to the store: it then holds the write barrier shared, so an
    /// online backup sees none half done.
    fn writes(&self) -> bool {
        matches!(
            self,
            Command::CreateAccount(_)
                | Command::PutRoster(_)
                | Command::Push(_)
                | Command::PutSealedEpochKeys(_)
                | Command::PutPairingSlot(_)
                | Command::TruncateStream(_)
                | Command::PutRecoveryBundle(_)
                | Command::DeleteAccount(_)
                | Command::RecoverDevice(_)
                | Command::RegisterPushTarget(_)
                | Command::UnregisterPushTarget
        )
    }

    /// The one `match`: each kind to its handler (as mini-redis's `Command::apply`). A request
    /// that writes holds the write barrier shared while it runs.
    async fn apply(
        self,
        shared: &Shared,
        conn: &Conn,
        send: &mut quinn::SendStream,
        deadline: Duration,
        turn: Option<push::Turn<'_>>,
    ) -> Reply {
        let _writing = match self.writes() {
            true => Some(shared.write_barrier.read().await),
            false => None,
        };
        match self {
            Command::GetChallenge => auth::get_challenge(conn),
            Command::Authenticate(req) => auth::authenticate(shared, conn, req),
            Command::CreateAccount(req) => create_account::handle(shared, conn, req).await,
            Command::PutRoster(req) => roster::put(shared, conn, req).await,
            Command::GetRoster => roster::get(shared, conn).await,
            Command::Push(req) => push::handle_ordered(shared, conn, req, turn).await,
            Command::Pull(req) => pull::handle(shared, conn, req).await,
            Command::Subscribe => subscribe::run(shared, conn, send, deadline)
                .await
                .map(|()| Answer::Streamed),
            Command::PutSealedEpochKeys(req) => epoch_keys::put(shared, conn, req).await,
            Command::GetSealedEpochKeys(req) => epoch_keys::get(shared, conn, req),
            Command::PutPairingSlot(req) => pairing::put(shared, conn, req).await,
            Command::TakePairingSlot(req) => pairing::take(shared, conn, req).await,
            Command::TruncateStream(req) => truncate::handle(shared, conn, req).await,
            Command::PutRecoveryBundle(req) => recovery::put(shared, conn, req).await,
            Command::GetRecoveryBundle(req) => recovery::get(shared, conn, req).await,
            Command::DeleteAccount(req) => delete_account::handle(shared, conn, req).await,
            Command::GetUsage => usage::handle(shared, conn),
            Command::RecoverDevice(req) => recover_device::handle(shared, conn, req).await,
            Command::RegisterPushTarget(req) => push_target::register(shared, conn, req).await,
            Command::UnregisterPushTarget => push_target::unregister(shared, conn).await,
            Command::GetAccountInfo => account_info::handle(shared, conn),
        }
    }
}

impl From<request::Kind> for Command {
    fn from(kind: request::Kind) -> Self {
        use request::Kind;
        match kind {
            Kind::GetChallenge(_) => Command::GetChallenge,
            Kind::Authenticate(req) => Command::Authenticate(req),
            Kind::CreateAccount(req) => Command::CreateAccount(req),
            Kind::PutRoster(req) => Command::PutRoster(req),
            Kind::GetRoster(_) => Command::GetRoster,
            // Pushes take the zero-copy path; a push that reached the generic decoder still
            // decodes (taking its vectors, without copying them).
            Kind::Push(req) => Command::Push(wire::Push {
                envelopes: req.envelopes.into_iter().map(bytes::Bytes::from).collect(),
            }),
            Kind::Pull(req) => Command::Pull(req),
            Kind::Subscribe(_) => Command::Subscribe,
            Kind::PutSealedEpochKeys(req) => Command::PutSealedEpochKeys(req),
            Kind::GetSealedEpochKeys(req) => Command::GetSealedEpochKeys(req),
            Kind::PutPairingSlot(req) => Command::PutPairingSlot(req),
            Kind::TakePairingSlot(req) => Command::TakePairingSlot(req),
            Kind::TruncateStream(req) => Command::TruncateStream(req),
            Kind::PutRecoveryBundle(req) => Command::PutRecoveryBundle(req),
            Kind::GetRecoveryBundle(req) => Command::GetRecoveryBundle(req),
            Kind::DeleteAccount(req) => Command::DeleteAccount(req),
            Kind::GetUsage(_) => Command::GetUsage,
            Kind::RecoverDevice(req) => Command::RecoverDevice(req),
            Kind::RegisterPushTarget(req) => Command::RegisterPushTarget(req),
            Kind::UnregisterPushTarget(_) => Command::UnregisterPushTarget,
            Kind::GetAccountInfo(_) => Command::GetAccountInfo,
        }
    }
}

/// Answers a request: the relay's one routing table, and where requests are counted (by kind
/// and result, pushes by envelopes, bytes and time to the acknowledgement). A subscription is
/// given the stream (`send`) and must have each message taken within `deadline`.
pub(crate) async fn dispatch(
    shared: &Shared,
    conn: &Conn,
    command: Command,
    send: &mut quinn::SendStream,
    deadline: Duration,
    turn: Option<push::Turn<'_>>,
) -> Reply {
    let kind = command.name();
    let started = Instant::now();
    let pushed = match &command {
        Command::Push(push) => Some((
            push.envelopes.len(),
            push.envelopes.iter().map(bytes::Bytes::len).sum::<usize>(),
        )),
        _ => None,
    };
    let reply = command.apply(shared, conn, send, deadline, turn).await;
    shared.metrics.request(kind, &reply);
    if let (Some((envelopes, bytes)), Ok(_)) = (pushed, &reply) {
        shared
            .metrics
            .push_acked(envelopes, bytes, started.elapsed());
    }
    reply
}

/// The refusal of every request of a suspended account's devices.
pub(crate) fn suspended() -> RequestError {
    RequestError::new(
        ErrorCode::AccountSuspended,
        "the relay's operator suspended this account",
    )
}

/// The account and device this connection authenticated as, still present in the current
/// roster (a device removed since is refused at once), within its request rate.
pub(crate) fn authorized(
    shared: &Shared,
    conn: &Conn,
) -> Result<(Arc<Account>, DeviceId), RequestError> {
    let Some((account_id, device)) = *lock(&conn.device) else {
        return Err(RequestError::new(
            ErrorCode::Unauthenticated,
            "authenticate first",
        ));
    };
    let account = shared
        .accounts
        .get(shared.store.as_ref(), &account_id)?
        .ok_or_else(RequestError::no_account)?;
    check_device(&account.roster(), &device)?;
    {
        let mut inner = account.lock();
        if inner.settings.suspended {
            return Err(suspended());
        }
        note_activity(shared, &account_id, &mut inner);
    }
    if !shared
        .device_limiter
        .check(&(account_id, device), Instant::now())
    {
        shared.metrics.rate_limited(Limit::Device);
        return Err(RequestError::new(
            ErrorCode::RateLimited,
            "too many requests; slow down",
        ));
    }
    Ok((account, device))
}

/// Records the day a device of the account was active, once a day (the day only: all the
/// relay keeps of when an account is used). Skipped while an online backup holds writers off;
/// a later request records it.
fn note_activity(
    shared: &Shared,
    account_id: &kith_protocol::ids::AccountId,
    inner: &mut AccountInner,
) {
    let today = u32::try_from(crate::state::now_ms() / 86_400_000).unwrap_or(u32::MAX);
    if inner.active_day == today {
        return;
    }
    let Ok(_writing) = shared.write_barrier.try_read() else {
        return;
    };
    match shared.store.mark_active(account_id, today) {
        Ok(()) => inner.active_day = today,
        Err(e) => tracing::warn!(error = %e, "could not record the day of activity"),
    }
}

/// Refuses devices that are removed from, or absent in, the roster.
pub(crate) fn check_device(
    roster: &kith_protocol::roster::VerifiedRoster,
    device: &DeviceId,
) -> Result<(), RequestError> {
    if roster.device(device).is_some() {
        Ok(())
    } else if roster.is_removed(device) {
        Err(RequestError::new(
            ErrorCode::DeviceRemoved,
            "the device was removed from the account",
        ))
    } else {
        Err(RequestError::new(
            ErrorCode::UnknownDevice,
            "the device is not in the account's roster",
        ))
    }
}

/// Drops `device`'s stored envelopes before `before_seq` and takes what was dropped off the
/// account's counters; returns the stream's metadata afterwards (its last seq unchanged).
pub(crate) fn truncate_stream(
    shared: &Shared,
    inner: &mut AccountInner,
    account: &AccountId,
    device: &DeviceId,
    meta: StreamMeta,
    before_seq: u64,
) -> Result<StreamMeta, RequestError> {
    let after = shared
        .store
        .truncate(account, device, before_seq)
        .map_err(RequestError::storage)?;
    inner.envelope_bytes = inner
        .envelope_bytes
        .saturating_sub(meta.bytes - after.bytes.min(meta.bytes));
    inner.envelopes = inner
        .envelopes
        .saturating_sub(meta.envelopes - after.envelopes.min(meta.envelopes));
    Ok(after)
}

/// The connection's challenge, taken (a challenge answers one authentication), provided the
/// source address has not spent its budget of failed authentications.
pub(crate) fn take_challenge(shared: &Shared, conn: &Conn) -> Result<[u8; 32], RequestError> {
    let nonce = conn
        .take_challenge()
        .ok_or_else(|| RequestError::new(ErrorCode::NoChallenge, "request a challenge first"))?;
    auth::check_auth_budget(shared, conn)?;
    Ok(nonce)
}

/// [`verify_auth_signature`] under the key `roster` gives `device`; a device the roster does
/// not hold is refused as unknown.
pub(crate) fn verify_roster_device(
    shared: &Shared,
    conn: &Conn,
    roster: &kith_protocol::roster::VerifiedRoster,
    nonce: &[u8; 32],
    device: &DeviceId,
    signature: &[u8],
) -> Result<(), RequestError> {
    let key = roster
        .device(device)
        .ok_or_else(|| RequestError::new(ErrorCode::UnknownDevice, "device not in the roster"))?
        .signing_key();
    verify_auth_signature(
        shared,
        conn,
        key,
        nonce,
        &roster.account_id(),
        device,
        signature,
    )
}

/// Checks a device's authentication signature over (TLS exporter, challenge, account,
/// device) under `key` (docs/PROTOCOL.md §10). One that does not verify is answered as every
/// failed authentication is, and charges the source address's failure budget.
pub(crate) fn verify_auth_signature(
    shared: &Shared,
    conn: &Conn,
    key: &DeviceVerifyingKey,
    nonce: &[u8; 32],
    account: &AccountId,
    device: &DeviceId,
    signature: &[u8],
) -> Result<(), RequestError> {
    verify_relay_auth(key, &conn.exporter()?, nonce, account, device, signature)
        .map_err(|_| auth::auth_failed(shared, conn))
}

/// Takes one lookup from the source address's budget of unauthenticated lookups (a pairing
/// slot take, a recovery bundle fetch): the ids are the only credential, so they must not be
/// enumerable.
pub(crate) fn check_lookup_budget(shared: &Shared, conn: &Conn) -> Result<(), RequestError> {
    if shared
        .lookup_limiter
        .check(&conn.remote.ip(), Instant::now())
    {
        Ok(())
    } else {
        shared.metrics.rate_limited(Limit::Lookup);
        Err(RequestError::new(
            ErrorCode::RateLimited,
            "too many lookups; wait a minute",
        ))
    }
}

/// Parses a 32-byte id field.
pub(crate) fn id32(bytes: &[u8], what: &'static str) -> Result<[u8; 32], RequestError> {
    <[u8; 32]>::try_from(bytes)
        .map_err(|_| RequestError::invalid(format!("{what} must be 32 bytes")))
}

/// Waits for durability of what this request wrote.
pub(crate) async fn durable(shared: &Shared) -> Result<(), RequestError> {
    shared.commit.durable().await.map_err(RequestError::storage)
}
