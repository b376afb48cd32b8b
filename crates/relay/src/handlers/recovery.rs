//! `PutRecoveryBundle` (authenticated) and `GetRecoveryBundle` (not authenticated: the person
//! has lost every device; the 32-byte lookup id derived from the recovery key is the only
//! credential, so lookups are rate-limited per source address).
//!
//! A lookup id belongs to the account that stored a bundle under it first: another account's
//! `PutRecoveryBundle` under it is refused with `SLOT_EXISTS` (an ex-device knows the lookup id
//! and the recovery PSK, and could otherwise plant a bundle of an account of its own there).

use std::time::Instant;

use kith_protocol::limits::MAX_BUNDLE_BYTES;
use kith_protocol::proto::{
    ErrorCode, GetRecoveryBundle, PutRecoveryBundle, RecoveryBundle, response,
};

use super::{Reply, authorized, durable, id32, ok, respond};
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
            return Err(RequestError::new(
                ErrorCode::UnknownAccount,
                "the account was deleted",
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
    if !shared
        .lookup_limiter
        .check(&conn.remote.ip(), Instant::now())
    {
        return Err(RequestError::new(
            ErrorCode::RateLimited,
            "too many lookups; wait a minute",
        ));
    }
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
    }))
}
