//! The account as the relay holds it: [`Device::account_info`] (what `kith account info`
//! prints) — usage against quotas, each device stream's size, the day a device was last active:
//! exactly what the relay's operator can see of the account, and no more.

use kith_protocol::ids::DeviceId;
use kith_protocol::proto::{self, ErrorCode, request, response};

use crate::device::Device;
use crate::error::{ClientError, Result};
use crate::net::{NetError, RelayConnection};

/// What the relay holds for this account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountInfo {
    /// Bytes stored on the relay (envelopes and sealed keys).
    pub bytes_used: u64,
    /// Bytes the account may store.
    pub bytes_quota: u64,
    /// Devices in the relay's roster.
    pub devices: u64,
    /// Devices the account may have.
    pub devices_max: u64,
    /// Envelopes stored.
    pub envelopes: u64,
    /// What only relays of 0.2.0 and later tell (`None` from an older relay, which knows only
    /// the figures above).
    pub detail: Option<AccountDetail>,
}

/// The part of [`AccountInfo`] a 0.1.0 relay cannot tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountDetail {
    /// The operator set `bytes_quota` for this account (not the relay's default).
    pub bytes_quota_set: bool,
    /// The operator set `devices_max` for this account.
    pub devices_max_set: bool,
    /// Of the bytes used, bytes of sealed epoch keys.
    pub sealed_key_bytes: u64,
    /// Each device stream the relay stores.
    pub streams: Vec<StreamInfo>,
    /// Days since 1970-01-01 (UTC) a device of the account was last active; `None`: never.
    pub last_active_day: Option<u32>,
    /// The relay's roster version.
    pub roster_version: u64,
}

/// A day counted from 1970-01-01 (UTC) as `YYYY-MM-DD` (the relay's last active day, as
/// `kith account info` and the app bindings show it); the number itself for a day past the
/// calendar's range.
pub fn day_text(day: u32) -> String {
    i32::try_from(day)
        .ok()
        .and_then(chrono::NaiveDate::from_epoch_days)
        .map_or_else(|| day.to_string(), |date| date.to_string())
}

/// One device stream on the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    /// The device that writes it.
    pub device: DeviceId,
    /// Lowest seq stored (0 while empty).
    pub first_seq: u64,
    /// Highest seq written.
    pub last_seq: u64,
    /// Envelopes stored.
    pub envelopes: u64,
    /// Bytes stored.
    pub bytes: u64,
}

impl NetError {
    /// Whether the relay does not know the request: it is of an older release. A relay of
    /// 0.2.0 or later says `UNSUPPORTED`; 0.1.0, which predates that code, answers
    /// a request kind it does not know as an empty request (docs/PROTOCOL.md §12).
    pub fn is_unsupported_request(&self) -> bool {
        match self {
            NetError::Relay { code, message } => {
                *code == ErrorCode::Unsupported
                    || (*code == ErrorCode::Malformed && message == "empty request")
            }
            _ => false,
        }
    }
}

impl Device {
    /// What the relay holds for this account. From a relay older than 0.2.0 only the usage
    /// figures ([`AccountInfo::detail`] is `None`).
    pub async fn account_info(&self) -> Result<AccountInfo> {
        let mut slot = self.inner.connection.lock().await;
        let connection = self.connection(&mut slot).await?.clone();
        drop(slot);
        account_info(&connection).await
    }
}

impl AccountInfo {
    fn new(usage: &proto::Usage, detail: Option<AccountDetail>) -> Self {
        AccountInfo {
            bytes_used: usage.bytes_used,
            bytes_quota: usage.bytes_quota,
            devices: usage.devices,
            devices_max: usage.devices_max,
            envelopes: usage.envelopes,
            detail,
        }
    }
}

async fn account_info(connection: &RelayConnection) -> Result<AccountInfo> {
    let unexpected = || ClientError::from(NetError::Protocol("expected account info".into()));
    match connection
        .request(request::Kind::GetAccountInfo(proto::GetAccountInfo {}))
        .await
    {
        Ok(response::Kind::AccountInfo(info)) => {
            let usage = info.usage.ok_or_else(unexpected)?;
            let streams = info
                .streams
                .iter()
                .map(|s| {
                    Ok(StreamInfo {
                        device: DeviceId::from_slice(&s.device_id).map_err(|_| unexpected())?,
                        first_seq: s.first_seq,
                        last_seq: s.last_seq,
                        envelopes: s.envelopes,
                        bytes: s.bytes,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(AccountInfo::new(
                &usage,
                Some(AccountDetail {
                    bytes_quota_set: info.bytes_quota_set,
                    devices_max_set: info.devices_max_set,
                    sealed_key_bytes: info.sealed_key_bytes,
                    streams,
                    last_active_day: (info.last_active_day > 0).then_some(info.last_active_day),
                    roster_version: info.roster_version,
                }),
            ))
        }
        Ok(_) => Err(unexpected()),
        Err(e) if e.is_unsupported_request() => Ok(AccountInfo::new(
            &crate::sync::usage(connection).await?,
            None,
        )),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::day_text;

    #[test]
    fn the_relays_last_active_day_is_a_utc_date() {
        assert_eq!(day_text(0), "1970-01-01");
        assert_eq!(day_text(20_428), "2025-12-06");
        // Past what a date can hold: the number, not a panic (it comes from the relay).
        assert_eq!(day_text(u32::MAX), u32::MAX.to_string());
    }
}
