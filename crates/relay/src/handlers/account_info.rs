//! `GetAccountInfo` (since 0.2.0): what the relay holds for the device's account — its usage
//! against its quotas, each device stream's bounds and size, the day a device was last active —
//! which is all its operator sees of it too (`kith account info`).

use kith_protocol::proto::{AccountInfo, StreamUsage, response};

use super::usage::usage_of;
use super::{Reply, authorized, respond};
use crate::state::{Conn, Shared};

pub(crate) fn handle(shared: &Shared, conn: &Conn) -> Reply {
    let (account, _device) = authorized(shared, conn)?;
    let inner = account.lock();
    let mut streams: Vec<StreamUsage> = inner
        .streams
        .iter()
        .map(|(device, meta)| StreamUsage {
            device_id: device.as_bytes().to_vec(),
            first_seq: meta.first_seq,
            last_seq: meta.last_seq,
            envelopes: meta.envelopes,
            bytes: meta.bytes,
        })
        .collect();
    streams.sort_by(|a, b| a.device_id.cmp(&b.device_id));
    let info = AccountInfo {
        usage: Some(usage_of(&inner, &shared.config.bounds)),
        bytes_quota_set: inner.settings.max_bytes.is_some(),
        devices_max_set: inner.settings.max_devices.is_some(),
        sealed_key_bytes: inner.sealed_key_bytes,
        streams,
        last_active_day: inner.active_day,
        roster_version: inner.roster.version(),
    };
    drop(inner);
    respond(response::Kind::AccountInfo(info))
}
