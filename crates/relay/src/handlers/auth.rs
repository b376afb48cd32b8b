//! `GetChallenge` and `Authenticate` (docs/PROTOCOL.md §10).

use kith_protocol::auth::verify_relay_auth;
use kith_protocol::ids::{AccountId, DeviceId};
use kith_protocol::proto::{Authenticate, Challenge, ErrorCode, response};

use super::{Reply, check_device, ok, respond};
use crate::error::RequestError;
use crate::state::{Conn, Shared, lock, short};

/// A fresh random challenge for this connection, replacing any earlier one.
pub(crate) fn get_challenge(conn: &Conn) -> Reply {
    let mut nonce = [0u8; 32];
    getrandom::fill(&mut nonce).map_err(|_| RequestError::internal("no randomness"))?;
    *lock(&conn.challenge) = Some(nonce);
    respond(response::Kind::Challenge(Challenge {
        nonce: nonce.to_vec(),
    }))
}

/// Checks the device's signature over (exporter, challenge, account, device) with its key in
/// the account's current roster, then marks the connection authenticated as that device.
pub(crate) fn authenticate(shared: &Shared, conn: &Conn, req: Authenticate) -> Reply {
    let nonce = conn
        .take_challenge()
        .ok_or_else(|| RequestError::new(ErrorCode::NoChallenge, "request a challenge first"))?;
    let account_id = AccountId::from_slice(&req.account_id)
        .map_err(|_| RequestError::invalid("account_id must be 32 bytes"))?;
    let device = DeviceId::from_slice(&req.device_id)
        .map_err(|_| RequestError::invalid("device_id must be 16 bytes"))?;
    let account = shared
        .accounts
        .get(shared.store.as_ref(), &account_id)?
        .ok_or_else(|| {
            RequestError::new(ErrorCode::UnknownAccount, "the account does not exist")
        })?;
    let roster = account.roster();
    check_device(&roster, &device)?;
    let key = roster
        .device(&device)
        .ok_or_else(|| RequestError::new(ErrorCode::UnknownDevice, "device not in roster"))?
        .signing_key();
    verify_relay_auth(
        key,
        &conn.exporter()?,
        &nonce,
        &account_id,
        &device,
        &req.signature,
    )
    .map_err(|_| RequestError::new(ErrorCode::BadSignature, "authentication signature"))?;
    *lock(&conn.device) = Some((account_id, device));
    tracing::debug!(
        account = %short(account_id.as_bytes()),
        device = %short(device.as_bytes()),
        remote = %conn.remote,
        "authenticated"
    );
    ok()
}
