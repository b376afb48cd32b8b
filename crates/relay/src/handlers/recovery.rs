//! `PutRecoveryBundle` (authenticated) and `GetRecoveryBundle` (not authenticated: the person
//! has lost every device; the 32-byte lookup id derived from the recovery key is the only
//! credential, so lookups are rate-limited per source address).
//!
//! A lookup id belongs to the account that stored a bundle under it first: another account's
//! `PutRecoveryBundle` under it is refused with `SLOT_EXISTS` (an ex-device knows the lookup id
//! and the recovery PSK, and could otherwise plant a bundle of an account of its own there).
//!
//! An account has one bundle. Storing it under a new lookup id (a rotated recovery key) must
//! name the current one in `replaces_lookup_id`, else it is refused with `RECOVERY_ROTATED`:
//! a device that missed the rotation cannot bring the old key back by re-sealing under it; it
//! fetches the account's bundle (an authenticated `GetRecoveryBundle` with an empty lookup id)
//! for the new sealing material instead.

use kith_protocol::limits::MAX_BUNDLE_BYTES;
use kith_protocol::proto::{
    ErrorCode, GetRecoveryBundle, PutRecoveryBundle, RecoveryBundle, response,
};

use super::{Reply, authorized, check_lookup_budget, durable, id32, ok, respond};
use crate::error::RequestError;
use crate::state::{Conn, Shared};

pub(crate) async fn put(shared: &Shared, conn: &Conn, req: PutRecoveryBundle) -> Reply {
    let (account, _device) = authorized(shared, conn)?;
    let lookup_id = id32(&req.lookup_id, "lookup_id")?;
    if req.bundle.is_empty() || req.bundle.len() > MAX_BUNDLE_BYTES {
        return Err(RequestError::invalid("bundle size out of range"));
    }
    {
        let inner = account.lock();
        if inner.deleted {
            return Err(RequestError::account_deleted());
        }
        // Under the account's lock: no other put of this account runs between the check and
        // the swap.
        let current = shared
            .store
            .recovery_lookup_id(&account.id)
            .map_err(RequestError::storage)?;
        if let Some(current) = current
            && current != lookup_id
            && req.replaces_lookup_id.as_slice() != current.as_slice()
        {
            return Err(RequestError::new(
                ErrorCode::RecoveryRotated,
                "the account's recovery bundle is under another lookup id",
            ));
        }
        let stored = shared
            .store
            .put_recovery_bundle(&lookup_id, &account.id, &req.bundle)
            .map_err(RequestError::storage)?;
        if !stored {
            return Err(RequestError::new(
                ErrorCode::SlotExists,
                "the lookup id belongs to another account",
            ));
        }
    }
    durable(shared).await?;
    ok()
}

pub(crate) async fn get(shared: &Shared, conn: &Conn, req: GetRecoveryBundle) -> Reply {
    if req.lookup_id.is_empty() {
        return get_own(shared, conn).await;
    }
    check_lookup_budget(shared, conn)?;
    let lookup_id = id32(&req.lookup_id, "lookup_id")?;
    let (account, bundle) = shared
        .store
        .recovery_bundle(&lookup_id)
        .map_err(RequestError::storage)?
        .ok_or_else(|| RequestError::new(ErrorCode::NotFound, "no such recovery bundle"))?;
    let roster = match shared.accounts.get(shared.store.as_ref(), &account)? {
        Some(loaded) => super::roster::durable_roster(shared, &loaded)
            .await?
            .encoded()
            .to_vec(),
        None => Vec::new(),
    };
    respond(response::Kind::RecoveryBundle(RecoveryBundle {
        bundle,
        account_id: account.as_bytes().to_vec(),
        roster,
        lookup_id: lookup_id.to_vec(),
    }))
}

/// The authenticated account's own bundle, whatever its lookup id (a device checking it, or
/// learning of a rotation it missed). Not rate-limited: it reveals nothing but the account's
/// own record to its own device.
async fn get_own(shared: &Shared, conn: &Conn) -> Reply {
    let (account, _device) = authorized(shared, conn)?;
    let not_found = || RequestError::new(ErrorCode::NotFound, "the account has no recovery bundle");
    let lookup_id = shared
        .store
        .recovery_lookup_id(&account.id)
        .map_err(RequestError::storage)?
        .ok_or_else(not_found)?;
    let (owner, bundle) = shared
        .store
        .recovery_bundle(&lookup_id)
        .map_err(RequestError::storage)?
        .ok_or_else(not_found)?;
    if owner != account.id {
        return Err(not_found());
    }
    let roster = super::roster::durable_roster(shared, &account)
        .await?
        .encoded()
        .to_vec();
    respond(response::Kind::RecoveryBundle(RecoveryBundle {
        bundle,
        account_id: account.id.as_bytes().to_vec(),
        roster,
        lookup_id: lookup_id.to_vec(),
    }))
}
