//! `CreateAccount`: stores the first roster and authenticates the connection as its device.
//! The roster may be of any version: a device rebuilding its account on a relay that lost it
//! presents the roster it trusts (docs/PROTOCOL.md §13.1).

use kith_protocol::ids::DeviceId;
use kith_protocol::limits::MAX_ROSTER_BYTES;
use kith_protocol::proto::{CreateAccount, ErrorCode};
use sha2::{Digest, Sha256};

use super::{Reply, durable, ok, take_challenge, verify_roster_device};
use crate::config::RegistrationMode;
use crate::error::RequestError;
use crate::state::{Conn, Shared, lock, pseudonym};
use kith_protocol::roster::VerifiedRoster;

pub(crate) async fn handle(shared: &Shared, conn: &Conn, req: CreateAccount) -> Reply {
    let nonce = take_challenge(shared, conn)?;
    // The token first: without one, nothing is decoded or verified (a roster check and a
    // signature check are the expensive part, and an outsider must not get them for free).
    let token_hash: Option<[u8; 32]> = match shared.config.registration {
        RegistrationMode::Open => None,
        RegistrationMode::Token => {
            let hash: [u8; 32] = Sha256::digest(req.registration_token.trim().as_bytes()).into();
            if req.registration_token.is_empty() || !consume_token(shared, &hash)? {
                return Err(RequestError::new(
                    ErrorCode::RegistrationClosed,
                    "a valid, unused registration token is required",
                ));
            }
            Some(hash)
        }
    };
    let created = create(shared, conn, &req, &nonce).await;
    if let (Err(_), Some(hash)) = (&created, token_hash) {
        // Give the token back: it created nothing.
        shared
            .store
            .add_registration_token(&hash)
            .map_err(RequestError::storage)?;
    }
    created
}

/// Verifies the first roster and the device's signature, and stores the account.
async fn create(shared: &Shared, conn: &Conn, req: &CreateAccount, nonce: &[u8; 32]) -> Reply {
    if req.roster.len() > MAX_ROSTER_BYTES {
        return Err(RequestError::new(
            ErrorCode::RosterInvalid,
            "roster too large",
        ));
    }
    let roster = VerifiedRoster::verify(&req.roster, None, None)
        .map_err(|e| RequestError::new(ErrorCode::RosterInvalid, e.to_string()))?;
    // Any verified roster may create the account, not only version 1: a device rebuilds its
    // account on a relay that lost it with the roster it trusts (docs/PROTOCOL.md §13.1). Only
    // a holder of the account key chain can sign one, and devices that trust a newer roster
    // store it over this one (or report a fork if it does not extend theirs).
    if roster.device_count() > shared.config.bounds.max_devices_per_account as usize {
        return Err(RequestError::new(
            ErrorCode::TooManyDevices,
            "too many devices",
        ));
    }
    let account_id = roster.account_id();
    let device = DeviceId::from_slice(&req.device_id)
        .map_err(|_| RequestError::invalid("device_id must be 16 bytes"))?;
    verify_roster_device(shared, conn, &roster, nonce, &device, &req.signature)?;
    if shared
        .store
        .was_deleted(&account_id)
        .map_err(RequestError::storage)?
    {
        // A device that missed the deletion must not bring the account back.
        return Err(RequestError::account_deleted());
    }
    if shared
        .accounts
        .get(shared.store.as_ref(), &account_id)?
        .is_some()
    {
        return Err(RequestError::new(
            ErrorCode::AccountExists,
            "the account exists",
        ));
    }
    let created = shared
        .store
        .create_account(&account_id, roster.encoded())
        .map_err(RequestError::storage)?;
    if !created {
        return Err(RequestError::new(
            ErrorCode::AccountExists,
            "the account exists",
        ));
    }
    durable(shared).await?;
    shared.accounts.insert_new(roster);
    *lock(&conn.device) = Some((account_id, device));
    tracing::info!(account = %pseudonym(account_id.as_bytes()), "account created");
    ok()
}

/// Consumes a token from the store, or from the inbox directory that `kith-relay token create`
/// writes to while the relay runs (removing the file is the atomic, single-use step).
fn consume_token(shared: &Shared, hash: &[u8; 32]) -> Result<bool, RequestError> {
    if shared
        .store
        .consume_registration_token(hash)
        .map_err(RequestError::storage)?
    {
        return Ok(true);
    }
    Ok(std::fs::remove_file(shared.token_inbox.join(hex::encode(hash))).is_ok())
}
