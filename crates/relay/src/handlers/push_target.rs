//! `RegisterPushTarget` and `UnregisterPushTarget`: the device's opaque push-gateway token,
//! one per device, which the relay hands back to the gateway to wake the device when another
//! device of the account pushes (`crate::wake`, docs/PROTOCOL.md §12.1).
//!
//! A relay without a configured gateway refuses both with `UNSUPPORTED`: a registration it
//! would never use must not look like a working one.

use kith_protocol::limits::MAX_PUSH_TOKEN_BYTES;
use kith_protocol::proto::{ErrorCode, RegisterPushTarget};

use super::{Reply, authorized, durable, ok};
use crate::error::RequestError;
use crate::state::{Conn, Shared};

fn configured(shared: &Shared) -> Result<(), RequestError> {
    if shared.waker.is_some() {
        Ok(())
    } else {
        Err(RequestError::new(
            ErrorCode::Unsupported,
            "this relay sends no wake-up notifications (its operator configured no push gateway)",
        ))
    }
}

pub(crate) async fn register(shared: &Shared, conn: &Conn, req: RegisterPushTarget) -> Reply {
    configured(shared)?;
    let (account, device) = authorized(shared, conn)?;
    if req.token.is_empty() || req.token.len() > MAX_PUSH_TOKEN_BYTES {
        return Err(RequestError::invalid(format!(
            "a push token must be 1 to {MAX_PUSH_TOKEN_BYTES} bytes"
        )));
    }
    {
        // Under the account lock, like every write of the account: a roster removing this
        // device, or the account's deletion, cannot interleave and leave the target behind.
        let inner = account.lock();
        if inner.deleted {
            return Err(RequestError::account_deleted());
        }
        super::check_device(&inner.roster, &device)?;
        shared
            .store
            .put_push_target(&account.id, &device, &req.token)
            .map_err(RequestError::storage)?;
    }
    durable(shared).await?;
    ok()
}

pub(crate) async fn unregister(shared: &Shared, conn: &Conn) -> Reply {
    configured(shared)?;
    let (account, device) = authorized(shared, conn)?;
    {
        let _inner = account.lock();
        shared
            .store
            .remove_push_target(&account.id, &device)
            .map_err(RequestError::storage)?;
    }
    durable(shared).await?;
    ok()
}
