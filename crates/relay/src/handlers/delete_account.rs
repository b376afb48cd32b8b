//! `DeleteAccount`: signed by the current account key over (account, roster version); purges
//! every key the account has in storage, ends its subscriptions and forgets it.
//!
//! The signature is the authorization (a person recovering without devices can delete too), so
//! the request needs no device authentication; attempts are rate-limited per source address.

use std::time::Instant;

use kith_protocol::auth::verify_account_deletion;
use kith_protocol::ids::AccountId;
use kith_protocol::proto::{DeleteAccount, ErrorCode};

use super::{Reply, durable, ok};
use crate::error::RequestError;
use crate::state::{AccountEvent, AccountInner, Conn, Shared, lock, pseudonym};

pub(crate) async fn handle(shared: &Shared, conn: &Conn, req: DeleteAccount) -> Reply {
    if !shared
        .lookup_limiter
        .check(&conn.remote.ip(), Instant::now())
    {
        return Err(RequestError::new(
            ErrorCode::RateLimited,
            "too many attempts; wait a minute",
        ));
    }
    let account_id = AccountId::from_slice(&req.account_id)
        .map_err(|_| RequestError::invalid("account_id must be 32 bytes"))?;
    let account = shared
        .accounts
        .get(shared.store.as_ref(), &account_id)?
        .ok_or_else(RequestError::no_account)?;
    {
        let mut inner = account.lock();
        if inner.deleted {
            return Err(RequestError::no_account());
        }
        let roster = inner.roster.clone();
        if req.roster_version != roster.version() {
            return Err(RequestError::invalid(format!(
                "signed for roster version {}, current is {}",
                req.roster_version,
                roster.version()
            )));
        }
        verify_account_deletion(
            roster.current_account_key(),
            &account_id,
            req.roster_version,
            &req.signature,
        )
        .map_err(|_| RequestError::new(ErrorCode::BadSignature, "deletion signature"))?;
        purge(shared, &account_id, &mut inner)?;
    }
    account.notify(AccountEvent::Deleted);
    {
        // This connection no longer speaks for a device of the deleted account.
        let mut device = lock(&conn.device);
        if device.is_some_and(|(a, _)| a == account_id) {
            *device = None;
        }
    }
    durable(shared).await?;
    tracing::info!(account = %pseudonym(account_id.as_bytes()), "account deleted");
    ok()
}

/// Deletes every key of the account in storage, remembers the deletion (a device that missed
/// it cannot create the account again) and forgets the account in memory. The caller holds the
/// account's lock and the write barrier, tells the subscribers and waits for durability.
pub(crate) fn purge(
    shared: &Shared,
    account_id: &AccountId,
    inner: &mut AccountInner,
) -> Result<(), RequestError> {
    shared
        .store
        .delete_account(account_id)
        .map_err(RequestError::storage)?;
    shared
        .store
        .mark_deleted(account_id)
        .map_err(RequestError::storage)?;
    inner.deleted = true;
    shared.accounts.remove(account_id);
    Ok(())
}
