//! The device's hybrid logical clock (docs/PROTOCOL.md §8): the clock of every local write,
//! kept across restarts, and what this device learned of other devices' wall clocks.
//!
//! - Every local write (add, edit, import, delete, conflict resolution) takes its clock with
//!   `Device::write_clock`: later than the device's clock *and* than every clock the device
//!   has merged for what it writes, so an edit made after seeing a value always replaces it and
//!   wins, even if that value came from a device whose date is years ahead.
//! - Received clocks are observed with the skew bound ([`MAX_CLOCK_OFFSET_MS`]): a clock more
//!   than 24 hours ahead of this device's wall clock is merged but not adopted.
//! - The clock's state is stored with every write and after every pull, and restored when the
//!   device opens (`HlcClock::restore`): monotonic even if the wall clock goes backwards.
//! - Each operation batch states its writer's wall clock when it was sealed; a pull compares it
//!   with this device's and keeps the last difference per device ([`ClockSkew`]), which
//!   `kith device list` shows as "device X's clock is N days ahead".

use std::collections::BTreeMap;

use kith_protocol::DeviceId;
use kith_protocol::hlc::{Hlc, MAX_CLOCK_OFFSET_MS};
use kith_protocol::proto;
use prost::Message;
use serde::Serialize;

use crate::device::{Device, meta, now_ms};
use crate::error::Result;
use crate::store::TreeName;

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// What this device last measured of another device's wall clock: the difference between the
/// time that device stated when it sealed its latest envelope pulled here and this device's
/// clock when it pulled it.
///
/// Delivery delay only makes a device look *behind*, so a device that looks ahead by more than
/// [`MAX_CLOCK_OFFSET_MS`] has a wrong date (or this device has); one that looks behind may
/// simply have been offline, and is not reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ClockSkew {
    /// How far ahead of this device's wall clock the device's clock was (ms; negative: behind,
    /// or delivered late).
    pub ahead_ms: i64,
    /// When this device measured it (its own wall clock, ms since the Unix epoch).
    pub measured_at_ms: u64,
}

impl ClockSkew {
    /// The skew of a batch stated as written at `written_at_ms` and pulled at `now_ms`.
    pub fn measure(written_at_ms: u64, now_ms: u64) -> Self {
        let ahead = i128::from(written_at_ms) - i128::from(now_ms);
        Self {
            ahead_ms: ahead.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64,
            measured_at_ms: now_ms,
        }
    }

    /// Whether the device's clock is more than [`MAX_CLOCK_OFFSET_MS`] ahead, so this device's
    /// clock does not adopt its clocks (docs/PROTOCOL.md §8).
    pub fn is_beyond_offset(&self) -> bool {
        self.ahead_ms > MAX_CLOCK_OFFSET_MS as i64
    }

    /// Days ahead, to the nearest day (0 if not ahead): a device set ten years ahead reads as
    /// 3650 days whatever the seconds between its write and this pull.
    pub fn days_ahead(&self) -> u64 {
        (self.ahead_ms.max(0) as u64).saturating_add(DAY_MS / 2) / DAY_MS
    }

    /// "device NAME's clock is N days ahead of this device's", if it is beyond the bound.
    pub fn warning(&self, device_name: &str) -> Option<String> {
        self.is_beyond_offset().then(|| {
            let days = self.days_ahead();
            let unit = if days == 1 { "day" } else { "days" };
            format!(
                "device {device_name}'s clock is {days} {unit} ahead of this device's: \
                 its clocks are merged but not adopted (fix its date and time)"
            )
        })
    }

    fn encode(&self) -> [u8; 16] {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.ahead_ms.to_be_bytes());
        bytes[8..].copy_from_slice(&self.measured_at_ms.to_be_bytes());
        bytes
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        Some(Self {
            ahead_ms: i64::from_be_bytes(bytes.get(..8)?.try_into().ok()?),
            measured_at_ms: u64::from_be_bytes(bytes.get(8..16)?.try_into().ok()?),
        })
    }
}

fn skew_key(device: &DeviceId) -> Vec<u8> {
    [meta::CLOCK_SKEW_PREFIX, device.as_bytes().as_slice()].concat()
}

impl Device {
    /// The clock of a local write that must be later than `floor`, the greatest clock this
    /// device has merged for what it writes (`RecordState::latest_clock_of` for the fields of
    /// an upsert, `RecordState::latest_clock` for a delete, `None` for a new record). Not
    /// persisted here: callers persist once per commit with `Device::persist_clock`.
    pub(crate) fn write_clock(&self, floor: Option<Hlc>) -> Result<Hlc> {
        Ok(self.state().clock.tick_after(now_ms(), floor)?)
    }

    /// Moves the clock past a received clock, unless it is more than [`MAX_CLOCK_OFFSET_MS`]
    /// ahead of `now_ms`.
    pub(crate) fn observe_clock(&self, clock: &Hlc, now_ms: u64) {
        self.state().clock.observe(clock, now_ms);
    }

    /// Stores the clock's state, so that after a restart it never runs behind a clock this
    /// device already used or adopted, even if the wall clock went backwards.
    pub(crate) fn persist_clock(&self) -> Result<()> {
        let state = self.state().clock.to_persist();
        self.inner.store.put(
            TreeName::Meta,
            meta::CLOCK,
            &state.to_proto().encode_to_vec(),
        )?;
        Ok(())
    }

    /// Keeps the latest skew measured for each device.
    pub(crate) fn persist_clock_skews(&self, skews: &BTreeMap<DeviceId, ClockSkew>) -> Result<()> {
        for (device, skew) in skews {
            self.inner
                .store
                .put(TreeName::Meta, &skew_key(device), &skew.encode())?;
        }
        Ok(())
    }

    /// What this device last measured of `device`'s wall clock; `None` if it never pulled an
    /// envelope of that device stating its time (or `device` is this one).
    pub fn clock_skew(&self, device: &DeviceId) -> Result<Option<ClockSkew>> {
        Ok(self
            .inner
            .store
            .get(TreeName::Meta, &skew_key(device))?
            .and_then(|bytes| ClockSkew::decode(&bytes)))
    }
}

/// The stored clock state of a device, if any and valid.
pub(crate) fn stored_clock(store: &crate::store::LocalStore) -> Result<Option<Hlc>> {
    Ok(store
        .get(TreeName::Meta, meta::CLOCK)?
        .and_then(|bytes| proto::Hlc::decode(bytes.as_slice()).ok())
        .and_then(|wire| Hlc::from_proto(&wire).ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skew_is_reported_only_beyond_the_bound_and_in_whole_days() {
        let now = 1_800_000_000_000;
        let ten_years = ClockSkew::measure(now + 3_650 * DAY_MS - 5_000, now);
        assert_eq!(ten_years.days_ahead(), 3_650);
        assert_eq!(
            ten_years.warning("phone").as_deref(),
            Some(
                "device phone's clock is 3650 days ahead of this device's: its clocks are \
                 merged but not adopted (fix its date and time)"
            )
        );
        let at_bound = ClockSkew::measure(now + MAX_CLOCK_OFFSET_MS, now);
        assert_eq!(at_bound.warning("phone"), None);
        let just_past = ClockSkew::measure(now + MAX_CLOCK_OFFSET_MS + 1, now);
        assert!(
            just_past
                .warning("phone")
                .unwrap()
                .contains("is 1 day ahead")
        );
        let late = ClockSkew::measure(now - 90 * DAY_MS, now);
        assert_eq!((late.days_ahead(), late.warning("laptop")), (0, None));
        let extreme = ClockSkew::measure(u64::MAX, 0);
        assert_eq!(extreme.ahead_ms, i64::MAX);
        assert_eq!(ClockSkew::decode(&extreme.encode()), Some(extreme));
        assert_eq!(ClockSkew::decode(&[0; 15]), None);
    }
}
