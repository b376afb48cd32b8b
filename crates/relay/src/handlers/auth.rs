//! `GetChallenge` and `Authenticate` (docs/PROTOCOL.md §10).
//!
//! Until a signature verifies, every failure is answered alike (`BAD_SIGNATURE`, "authentication
//! failed") and costs the relay one signature check: an unknown account, a device not in the
//! roster, another account's device and a forged signature cannot be told apart, so an outsider
//! learns nothing of which accounts and devices exist. Only a removed device whose own signature
//! verified (under the key the roster's removed list keeps) is told `DEVICE_REMOVED`. Failures
//! cost a token of the source address's bucket; an address without one is refused unverified.

use std::time::Instant;

use kith_protocol::ids::{AccountId, DeviceId};
use kith_protocol::proto::{Authenticate, Challenge, ErrorCode, response};

use super::{Reply, ok, respond, take_challenge, verify_auth_signature};
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

/// Refuses an authentication attempt (Authenticate, CreateAccount, RecoverDevice) from an
/// address that spent its failures.
pub(crate) fn check_auth_budget(shared: &Shared, conn: &Conn) -> Result<(), RequestError> {
    if shared
        .auth_limiter
        .has_room(&conn.remote.ip(), Instant::now())
    {
        Ok(())
    } else {
        shared
            .metrics
            .rate_limited(crate::metrics::Limit::Authentication);
        Err(RequestError::new(
            ErrorCode::RateLimited,
            "too many failed authentications; slow down",
        ))
    }
}

/// The one answer to every authentication that did not verify; charges the source address.
pub(crate) fn auth_failed(shared: &Shared, conn: &Conn) -> RequestError {
    shared.auth_limiter.check(&conn.remote.ip(), Instant::now());
    RequestError::new(ErrorCode::BadSignature, "authentication failed")
}

/// Checks the device's signature over (exporter, challenge, account, device) with its key in
/// the account's current roster, then marks the connection authenticated as that device.
pub(crate) fn authenticate(shared: &Shared, conn: &Conn, req: Authenticate) -> Reply {
    let nonce = take_challenge(shared, conn)?;
    let account_id = AccountId::from_slice(&req.account_id)
        .map_err(|_| RequestError::invalid("account_id must be 32 bytes"))?;
    let device = DeviceId::from_slice(&req.device_id)
        .map_err(|_| RequestError::invalid("device_id must be 16 bytes"))?;
    let roster = shared
        .accounts
        .get(shared.store.as_ref(), &account_id)?
        .map(|account| account.roster());
    // The key the signature must verify under: the device's, present or removed; for anyone
    // else the decoy, which no signature verifies under.
    let (key, removed) = match roster.as_deref() {
        Some(roster) => match (roster.device(&device), roster.removed_device(&device)) {
            (Some(present), _) => (present.signing_key(), false),
            (None, Some(gone)) => (gone.signing_key(), true),
            (None, None) => (&shared.decoy_key, false),
        },
        None => (&shared.decoy_key, false),
    };
    verify_auth_signature(
        shared,
        conn,
        key,
        &nonce,
        &account_id,
        &device,
        &req.signature,
    )?;
    if std::ptr::eq(key, &shared.decoy_key) {
        return Err(auth_failed(shared, conn));
    }
    if removed {
        return Err(RequestError::new(
            ErrorCode::DeviceRemoved,
            "the device was removed from the account",
        ));
    }
    let suspended = shared
        .accounts
        .get(shared.store.as_ref(), &account_id)?
        .is_some_and(|account| account.lock().settings.suspended);
    if suspended {
        return Err(super::suspended());
    }
    *lock(&conn.device) = Some((account_id, device));
    tracing::debug!(
        account = %short(account_id.as_bytes()),
        device = %short(device.as_bytes()),
        "authenticated"
    );
    ok()
}
