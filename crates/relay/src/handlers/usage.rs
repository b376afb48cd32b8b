//! `GetUsage`: the account's storage use against its quota.

use kith_protocol::proto::{Usage, response};

use super::{Reply, authorized, respond};
use crate::state::{Conn, Shared};

pub(crate) fn handle(shared: &Shared, conn: &Conn) -> Reply {
    let (account, _device) = authorized(shared, conn)?;
    let limits = &shared.config.bounds;
    let inner = account.lock();
    let usage = Usage {
        bytes_used: inner.bytes_used(),
        bytes_quota: limits.max_account_bytes,
        devices: inner.roster.device_count() as u64,
        devices_max: u64::from(limits.max_devices_per_account),
        envelopes: inner.envelopes,
    };
    drop(inner);
    respond(response::Kind::Usage(usage))
}
