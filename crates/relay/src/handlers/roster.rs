//! `PutRoster` and `GetRoster`.
//!
//! A new roster must have a greater version (else `ROSTER_ROLLBACK`) and verify with the stored
//! roster as its predecessor: signed by the current account key, or by a rotation signed by it
//! (else `ROSTER_INVALID`). Verification runs outside the account lock; the swap re-checks that
//! the predecessor is still current.

use std::sync::Arc;

use kith_protocol::limits::MAX_ROSTER_BYTES;
use kith_protocol::proto::{self, ErrorCode, PutRoster, RosterResponse, response};
use prost::Message;

use super::{Reply, authorized, durable, ok, respond};
use crate::error::RequestError;
use crate::state::{Account, Conn, Shared, short};
use kith_protocol::roster::VerifiedRoster;

/// The version a signed roster claims, read before verifying so a rollback gets its own code.
fn claimed_version(bytes: &[u8]) -> Result<u64, RequestError> {
    let invalid = |_| RequestError::new(ErrorCode::RosterInvalid, "roster does not decode");
    let signed = proto::SignedRoster::decode(bytes).map_err(invalid)?;
    Ok(proto::RosterBody::decode(signed.body.as_slice())
        .map_err(invalid)?
        .version)
}

pub(crate) async fn put(shared: &Shared, conn: &Conn, req: PutRoster) -> Reply {
    let (account, _device) = authorized(shared, conn)?;
    replace(shared, &account, &req.roster, |_| Ok(())).await?;
    ok()
}

/// Replaces the account's roster with `bytes` if it verifies with the stored roster as its
/// predecessor and passes `check`; durable when it returns.
pub(crate) async fn replace(
    shared: &Shared,
    account: &Account,
    bytes: &[u8],
    check: impl FnOnce(&VerifiedRoster) -> Result<(), RequestError>,
) -> Result<Arc<VerifiedRoster>, RequestError> {
    if bytes.len() > MAX_ROSTER_BYTES {
        return Err(RequestError::new(
            ErrorCode::RosterInvalid,
            "roster too large",
        ));
    }
    let version = claimed_version(bytes)?;
    let current = account.roster();
    if version <= current.version() {
        return Err(RequestError::new(
            ErrorCode::RosterRollback,
            format!("version must exceed the stored {}", current.version()),
        ));
    }
    let next = VerifiedRoster::verify(bytes, Some(&account.id), Some(&current))
        .map_err(|e| RequestError::new(ErrorCode::RosterInvalid, e.to_string()))?;
    if next.device_count() > shared.config.limits.max_devices_per_account as usize {
        return Err(RequestError::new(
            ErrorCode::TooManyDevices,
            "too many devices",
        ));
    }
    check(&next)?;
    let next = Arc::new(next);
    {
        let mut inner = account.lock();
        if inner.deleted {
            return Err(RequestError::new(
                ErrorCode::UnknownAccount,
                "the account was deleted",
            ));
        }
        if !Arc::ptr_eq(&inner.roster, &current) {
            return Err(RequestError::new(
                ErrorCode::RosterRollback,
                "the roster changed meanwhile; fetch it and retry",
            ));
        }
        shared
            .store
            .put_roster(&account.id, next.encoded())
            .map_err(RequestError::storage)?;
        inner.roster = next.clone();
    }
    durable(shared).await?;
    tracing::info!(account = %short(account.id.as_bytes()), version, "roster updated");
    Ok(next)
}

pub(crate) fn get(shared: &Shared, conn: &Conn) -> Reply {
    let (account, _device) = authorized(shared, conn)?;
    respond(response::Kind::Roster(RosterResponse {
        roster: account.roster().encoded().to_vec(),
    }))
}
