//! `GetUsage`: the account's storage use against its quota.

use kith_protocol::proto::{Usage, response};

use super::{Reply, authorized, respond};
use crate::config::Bounds;
use crate::state::{AccountInner, Conn, Shared};

pub(crate) fn handle(shared: &Shared, conn: &Conn) -> Reply {
    let (account, _device) = authorized(shared, conn)?;
    let limits = &shared.config.bounds;
    let inner = account.lock();
    let usage = usage_of(&inner, limits);
    drop(inner);
    respond(response::Kind::Usage(usage))
}

/// The account's usage against its quotas (its own where the operator set them).
pub(crate) fn usage_of(inner: &AccountInner, limits: &Bounds) -> Usage {
    Usage {
        bytes_used: inner.bytes_used(),
        bytes_quota: inner.max_bytes(limits),
        devices: inner.roster.device_count() as u64,
        devices_max: u64::from(inner.max_devices(limits)),
        envelopes: inner.envelopes,
    }
}
