//! One file per request kind. Each handler takes the decoded request and returns the response
//! or a [`RequestError`]; `subscribe` alone keeps its stream open.

mod account_info;
pub(crate) mod auth;
mod create_account;
pub(crate) mod delete_account;
mod epoch_keys;
mod pairing;
mod pull;
pub(crate) mod push;
mod recover_device;
mod recovery;
mod roster;
pub(crate) mod subscribe;
mod truncate;
mod usage;

use std::sync::Arc;
use std::time::Instant;

use kith_protocol::ids::DeviceId;
use kith_protocol::proto::{ErrorCode, Ok as OkResponse, Response, request, response};

use crate::error::RequestError;
use crate::state::{Account, AccountInner, Conn, Shared, lock};

/// What a handler answers: a message to encode, or a frame it encoded itself (a pull page,
/// built from slices of what the store read).
#[derive(Debug)]
pub(crate) enum Answer {
    Message(Response),
    /// An encoded frame, and the shares of the pull budgets (the account's, the relay's) it
    /// holds until the peer has acknowledged it.
    Frame(bytes::Bytes, Option<[tokio::sync::OwnedSemaphorePermit; 2]>),
}

/// The result of a handler.
pub(crate) type Reply = Result<Answer, RequestError>;

pub(crate) fn respond(kind: response::Kind) -> Reply {
    Ok(Answer::Message(Response { kind: Some(kind) }))
}

pub(crate) fn ok() -> Reply {
    respond(response::Kind::Ok(OkResponse {}))
}

/// Answers every request kind except `Subscribe` (see [`subscribe::run`]). Requests that write
/// to the store hold the write barrier shared, so an online backup sees none half done.
pub(crate) async fn dispatch(shared: &Shared, conn: &Conn, kind: request::Kind) -> Reply {
    use request::Kind;
    let _writing = match &kind {
        Kind::CreateAccount(_)
        | Kind::PutRoster(_)
        | Kind::Push(_)
        | Kind::PutSealedEpochKeys(_)
        | Kind::PutPairingSlot(_)
        | Kind::TruncateStream(_)
        | Kind::PutRecoveryBundle(_)
        | Kind::DeleteAccount(_)
        | Kind::RecoverDevice(_) => Some(shared.write_barrier.read().await),
        _ => None,
    };
    match kind {
        Kind::GetChallenge(_) => auth::get_challenge(conn),
        Kind::Authenticate(req) => auth::authenticate(shared, conn, req),
        Kind::CreateAccount(req) => create_account::handle(shared, conn, req).await,
        Kind::PutRoster(req) => roster::put(shared, conn, req).await,
        Kind::GetRoster(_) => roster::get(shared, conn).await,
        Kind::Push(req) => {
            let envelopes = req.envelopes.into_iter().map(bytes::Bytes::from).collect();
            push::handle(shared, conn, crate::wire::Push { envelopes }).await
        }
        Kind::Pull(req) => pull::handle(shared, conn, req).await,
        Kind::Subscribe(_) => Err(RequestError::internal(
            "subscribe is dispatched by the server",
        )),
        Kind::PutSealedEpochKeys(req) => epoch_keys::put(shared, conn, req).await,
        Kind::GetSealedEpochKeys(req) => epoch_keys::get(shared, conn, req),
        Kind::PutPairingSlot(req) => pairing::put(shared, conn, req).await,
        Kind::TakePairingSlot(req) => pairing::take(shared, conn, req).await,
        Kind::TruncateStream(req) => truncate::handle(shared, conn, req).await,
        Kind::PutRecoveryBundle(req) => recovery::put(shared, conn, req).await,
        Kind::GetRecoveryBundle(req) => recovery::get(shared, conn, req).await,
        Kind::DeleteAccount(req) => delete_account::handle(shared, conn, req).await,
        Kind::GetUsage(_) => usage::handle(shared, conn),
        Kind::RecoverDevice(req) => recover_device::handle(shared, conn, req).await,
        Kind::GetAccountInfo(_) => account_info::handle(shared, conn),
    }
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
        .ok_or_else(|| {
            RequestError::new(ErrorCode::UnknownAccount, "the account does not exist")
        })?;
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

/// Parses a 32-byte id field.
pub(crate) fn id32(bytes: &[u8], what: &'static str) -> Result<[u8; 32], RequestError> {
    <[u8; 32]>::try_from(bytes)
        .map_err(|_| RequestError::invalid(format!("{what} must be 32 bytes")))
}

/// Waits for durability of what this request wrote.
pub(crate) async fn durable(shared: &Shared) -> Result<(), RequestError> {
    shared.commit.durable().await.map_err(RequestError::storage)
}
