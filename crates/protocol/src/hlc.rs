//! Hybrid logical clocks (docs/PROTOCOL.md §8).
//!
//! An [`Hlc`] is `(wall_ms, counter, device)`, ordered lexicographically, so two clocks are equal
//! only if the same device issued them, and every pair of writes has a winner. Each device owns
//! one [`HlcClock`]: [`HlcClock::tick`] stamps a local operation, [`HlcClock::observe`] moves the
//! clock past a remote operation so that a later local edit always wins over what it has seen.
//!
//! There is no system clock here: the caller passes the current wall-clock time in
//! milliseconds, so tests are deterministic and a clock that jumps backwards cannot make the
//! device's own clocks go backwards.
//!
//! # Skew bound
//!
//! A remote clock more than [`MAX_CLOCK_OFFSET_MS`] (24 hours) ahead of the receiver's wall
//! clock is merged like any other (the merge never looks at wall time, so every replica still
//! converges) but is **not adopted** by the receiver's [`HlcClock`]: one device with a wrong
//! date cannot drag the clocks of the whole account into the future. A local write that must
//! supersede such a clock still gets a later one, for that write only:
//! [`HlcClock::tick_after`] takes the [`successor`](Hlc::successor) of the greatest clock known
//! for what it writes.
//!
//! ```
//! use kith_protocol::DeviceId;
//! use kith_protocol::hlc::{Hlc, HlcClock, MAX_CLOCK_OFFSET_MS};
//!
//! let mut phone = HlcClock::new(DeviceId::from_bytes([1; 16]));
//! let mut laptop = HlcClock::new(DeviceId::from_bytes([2; 16]));
//! let edit = laptop.tick(5_000);
//! assert!(phone.observe(&edit, 1_000));
//! // The phone's wall clock is behind, yet its next edit is ordered after the laptop's.
//! assert!(phone.tick(1_000) > edit);
//!
//! // A clock ten years ahead is not adopted...
//! let future = Hlc::new(1_000 + 3_650 * 86_400_000, 0, DeviceId::from_bytes([3; 16]));
//! assert!(!phone.observe(&future, 1_000));
//! assert!(phone.tick(1_000) < future);
//! // ...but a write that replaces it is later, and the phone's own clock stays where it was.
//! let fix = phone.tick_after(1_000, Some(future))?;
//! assert!(fix > future);
//! assert!(phone.tick(1_000).wall_ms() < 1_000 + MAX_CLOCK_OFFSET_MS);
//! # Ok::<(), kith_protocol::hlc::HlcError>(())
//! ```

use std::fmt;

use crate::ids::{DeviceId, IdLengthError};
use crate::proto;

/// How far ahead of a device's wall clock a received clock may be and still be adopted by the
/// device's [`HlcClock`]: 24 hours.
///
/// Large enough that no correctly set device ever exceeds it (time zones are not part of Unix
/// time; NTP keeps clocks within seconds; a phone without network drifts by minutes a month),
/// so honest clocks always follow the plain HLC rules. Small enough that a device with a wrong
/// date (a reset phone showing 1970 or 2036, or a malicious member) moves nobody's clock more
/// than a day ahead; clocks within it catch up with real time within a day. CockroachDB uses
/// the same idea with 500 ms, because it needs linearizable transactions; contact edits only
/// need "an edit made after seeing a value wins over it", which [`HlcClock::tick_after`] keeps
/// whatever the skew. See docs/PROTOCOL.md §8.
pub const MAX_CLOCK_OFFSET_MS: u64 = 24 * 60 * 60 * 1000;

/// Why a clock from the wire was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HlcError {
    /// The clock's device id is not 16 bytes.
    #[error("clock has an invalid device id: {0}")]
    InvalidDeviceId(#[from] IdLengthError),
    /// The wall-clock part is beyond [`Hlc::MAX_WALL_MS`].
    #[error("clock wall time {wall_ms} ms exceeds the maximum {max} ms", max = Hlc::MAX_WALL_MS)]
    WallTimeOutOfRange {
        /// The wall time received.
        wall_ms: u64,
    },
    /// A write must be later than `floor`, the greatest clock there is: no clock is later.
    #[error(
        "no clock is later than {floor}, written by device {device}: it holds the greatest clock there is",
        device = floor.device()
    )]
    NoLaterClock {
        /// The greatest known clock of what is written.
        floor: Hlc,
    },
}

/// A hybrid logical clock timestamp: `(wall_ms, counter, device)`, ordered lexicographically.
///
/// The derived order compares the fields in declaration order, which is the protocol's order.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Hlc {
    wall_ms: u64,
    counter: u32,
    device: DeviceId,
}

impl Hlc {
    /// Largest wall time accepted from the wire: `2^48 − 1` ms, about the year 10889.
    ///
    /// Bounding it keeps a faulty device from pushing every other device's clock to the end of
    /// the `u64` range, where it could no longer advance.
    pub const MAX_WALL_MS: u64 = (1 << 48) - 1;

    /// A clock from its parts.
    ///
    /// ```
    /// use kith_protocol::{DeviceId, hlc::Hlc};
    /// let device = DeviceId::from_bytes([7; 16]);
    /// assert!(Hlc::new(10, 0, device) < Hlc::new(10, 1, device));
    /// ```
    pub const fn new(wall_ms: u64, counter: u32, device: DeviceId) -> Self {
        Self {
            wall_ms,
            counter,
            device,
        }
    }

    /// Milliseconds since the Unix epoch, as the issuing device saw them (or later).
    pub const fn wall_ms(&self) -> u64 {
        self.wall_ms
    }

    /// Orders clocks with the same wall time.
    pub const fn counter(&self) -> u32 {
        self.counter
    }

    /// The device that issued the clock; breaks ties between devices.
    pub const fn device(&self) -> DeviceId {
        self.device
    }

    /// The least clock of `device` greater than this one: the same wall time and the next
    /// counter (or the next millisecond once the counter is exhausted). `None` only for the
    /// greatest clocks there are (wall [`Hlc::MAX_WALL_MS`], counter `u32::MAX`).
    ///
    /// ```
    /// use kith_protocol::{DeviceId, hlc::Hlc};
    /// let (low, high) = (DeviceId::from_bytes([1; 16]), DeviceId::from_bytes([9; 16]));
    /// let seen = Hlc::new(5_000, 7, high);
    /// assert_eq!(seen.successor(low), Some(Hlc::new(5_000, 8, low)));
    /// assert!(seen.successor(low).unwrap() > seen);
    /// assert_eq!(Hlc::new(Hlc::MAX_WALL_MS, u32::MAX, high).successor(low), None);
    /// ```
    pub fn successor(&self, device: DeviceId) -> Option<Hlc> {
        match self.counter.checked_add(1) {
            Some(counter) => Some(Hlc::new(self.wall_ms, counter, device)),
            None if self.wall_ms < Self::MAX_WALL_MS => Some(Hlc::new(self.wall_ms + 1, 0, device)),
            None => None,
        }
    }

    /// How far this clock's wall time is ahead of `now_ms` (0 if it is not ahead).
    pub const fn ahead_of(&self, now_ms: u64) -> u64 {
        self.wall_ms.saturating_sub(now_ms)
    }

    /// Whether this clock is more than [`MAX_CLOCK_OFFSET_MS`] ahead of `now_ms`, so an
    /// [`HlcClock`] at that wall time does not adopt it.
    pub const fn is_beyond_offset(&self, now_ms: u64) -> bool {
        self.ahead_of(now_ms) > MAX_CLOCK_OFFSET_MS
    }

    /// The wire form.
    pub fn to_proto(&self) -> proto::Hlc {
        proto::Hlc {
            wall_ms: self.wall_ms,
            counter: self.counter,
            device_id: self.device.as_bytes().to_vec(),
        }
    }

    /// Parses the wire form: the device id must be 16 bytes and the wall time at most
    /// [`Hlc::MAX_WALL_MS`].
    ///
    /// ```
    /// use kith_protocol::{DeviceId, hlc::Hlc};
    /// let clock = Hlc::new(1_700_000_000_000, 3, DeviceId::from_bytes([7; 16]));
    /// assert_eq!(Hlc::from_proto(&clock.to_proto()), Ok(clock));
    /// ```
    pub fn from_proto(wire: &proto::Hlc) -> Result<Self, HlcError> {
        Self::from_wire_parts(wire.wall_ms, wire.counter, &wire.device_id)
    }

    /// [`Hlc::from_proto`] of the fields as read from the wire, borrowed.
    pub(crate) fn from_wire_parts(
        wall_ms: u64,
        counter: u32,
        device_id: &[u8],
    ) -> Result<Self, HlcError> {
        if wall_ms > Self::MAX_WALL_MS {
            return Err(HlcError::WallTimeOutOfRange { wall_ms });
        }
        let device = DeviceId::from_slice(device_id)?;
        Ok(Self::new(wall_ms, counter, device))
    }
}

impl fmt::Display for Hlc {
    /// `wall_ms.counter@device`, e.g. `1700000000000.3@0707…07`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}@{}", self.wall_ms, self.counter, self.device)
    }
}

/// One device's clock generator.
///
/// Every clock it issues is greater than every clock it issued or adopted before, whatever
/// the wall time passed in; it adopts every observed clock at most [`MAX_CLOCK_OFFSET_MS`]
/// ahead of the wall time. Persist [`last`](Self::last) with every write, and after a restart
/// create a new one and [`observe`](Self::observe) it before issuing anything: the clock then
/// stays monotonic even if the wall clock went backwards between runs (by up to the bound; a
/// device whose date was corrected by more starts again from its wall clock, and its writes
/// still supersede its own earlier ones through [`tick_after`](Self::tick_after)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HlcClock {
    device: DeviceId,
    wall_ms: u64,
    counter: u32,
    /// A restored state too far ahead of the wall clock to adopt: persisted again, and adopted
    /// once the wall clock is within the bound of it.
    parked: Option<Hlc>,
}

impl HlcClock {
    /// A fresh clock for `device`.
    pub const fn new(device: DeviceId) -> Self {
        Self {
            device,
            wall_ms: 0,
            counter: 0,
            parked: None,
        }
    }

    /// The device this clock stamps.
    pub const fn device(&self) -> DeviceId {
        self.device
    }

    /// A new clock for a local operation at wall time `now_ms`.
    ///
    /// Strictly greater than every clock issued or observed so far. If `now_ms` is behind the
    /// last clock (the wall clock went backwards, or a remote device is ahead), the wall part
    /// stays and the counter increments; if the counter is exhausted the wall part moves on by
    /// one millisecond. `now_ms` is capped at [`Hlc::MAX_WALL_MS`].
    ///
    /// ```
    /// use kith_protocol::{DeviceId, hlc::HlcClock};
    /// let mut clock = HlcClock::new(DeviceId::from_bytes([1; 16]));
    /// let first = clock.tick(2_000);
    /// let second = clock.tick(1_000); // wall clock went backwards
    /// assert!(second > first);
    /// assert_eq!((second.wall_ms(), second.counter()), (2_000, 1));
    /// ```
    pub fn tick(&mut self, now_ms: u64) -> Hlc {
        if let Some(parked) = self.parked
            && !parked.is_beyond_offset(now_ms)
        {
            self.parked = None;
            self.observe(&parked, now_ms);
        }
        let now_ms = now_ms.min(Hlc::MAX_WALL_MS);
        if now_ms > self.wall_ms {
            self.wall_ms = now_ms;
            self.counter = 0;
        } else if let Some(next) = self.counter.checked_add(1) {
            self.counter = next;
        } else {
            // 2^32 clocks in one millisecond: borrow the next millisecond. Saturates at the end
            // of the u64 range, which no real wall time (and no decoded clock) comes near.
            self.wall_ms = self.wall_ms.saturating_add(1);
            self.counter = 0;
        }
        Hlc::new(self.wall_ms, self.counter, self.device)
    }

    /// A clock for a local write that must be later than `floor`, the greatest clock known
    /// for what it writes (every clock of the fields it writes and the record's deletion clock,
    /// `RecordState::latest_clock_of`; for a delete, every clock of the record).
    ///
    /// It is [`tick`](Self::tick)`(now_ms)`, or the [`successor`](Hlc::successor) of `floor`
    /// if that is not later. The successor is adopted only within [`MAX_CLOCK_OFFSET_MS`] of
    /// `now_ms`, like an observed clock: superseding a far-future value moves this one write
    /// into the future, not every later write of the device. Fails only if `floor` is the
    /// greatest clock there is ([`HlcError::NoLaterClock`]).
    ///
    /// ```
    /// use kith_protocol::{DeviceId, hlc::{Hlc, HlcClock}};
    /// let me = DeviceId::from_bytes([1; 16]);
    /// let mut clock = HlcClock::new(me);
    /// assert_eq!(clock.tick_after(50, None)?, Hlc::new(50, 0, me));
    /// let seen = Hlc::new(90, 4, DeviceId::from_bytes([2; 16]));
    /// assert_eq!(clock.tick_after(60, Some(seen))?, Hlc::new(90, 5, me));
    /// assert_eq!(clock.tick(60), Hlc::new(90, 6, me), "within the bound: adopted");
    /// # Ok::<(), kith_protocol::hlc::HlcError>(())
    /// ```
    pub fn tick_after(&mut self, now_ms: u64, floor: Option<Hlc>) -> Result<Hlc, HlcError> {
        let local = self.tick(now_ms);
        let Some(floor) = floor.filter(|floor| *floor >= local) else {
            return Ok(local);
        };
        let later = floor
            .successor(self.device)
            .ok_or(HlcError::NoLaterClock { floor })?;
        self.observe(&later, now_ms);
        Ok(later)
    }

    /// The greatest clock issued or adopted so far (wall time 0 for a new clock).
    pub const fn last(&self) -> Hlc {
        Hlc::new(self.wall_ms, self.counter, self.device)
    }

    /// What a device persists so that its clock survives a restart: [`last`](Self::last), or
    /// the state [`restore`](Self::restore)d from a run whose wall clock was further ahead, if
    /// that is greater.
    pub fn to_persist(&self) -> Hlc {
        self.last()
            .max(self.parked.unwrap_or(Hlc::new(0, 0, self.device)))
    }

    /// Restores a state persisted by an earlier run ([`to_persist`](Self::to_persist)). Within
    /// [`MAX_CLOCK_OFFSET_MS`] of `now_ms` it is adopted, so the clock stays monotonic across
    /// restarts even if the wall clock went backwards. Further ahead (the device's date was
    /// wrong, then corrected), it is kept aside and persisted again, and adopted once the wall
    /// clock comes within the bound of it: the device writes at the right time meanwhile.
    /// Returns whether it was adopted.
    ///
    /// ```
    /// use kith_protocol::{DeviceId, hlc::{HlcClock, MAX_CLOCK_OFFSET_MS}};
    /// let me = DeviceId::from_bytes([1; 16]);
    /// let mut first_run = HlcClock::new(me);
    /// let written = first_run.tick(10_000_000);
    /// // The next run's wall clock is an hour behind: its clocks are still later.
    /// let mut next_run = HlcClock::new(me);
    /// assert!(next_run.restore(first_run.to_persist(), 10_000_000 - 3_600_000));
    /// assert!(next_run.tick(10_000_000 - 3_600_000) > written);
    /// ```
    pub fn restore(&mut self, stored: Hlc, now_ms: u64) -> bool {
        if self.observe(&stored, now_ms) {
            return true;
        }
        self.parked = self.parked.max(Some(stored));
        false
    }

    /// Moves this clock past `remote`, so the next [`tick`](Self::tick) is greater than it,
    /// unless `remote` is more than [`MAX_CLOCK_OFFSET_MS`] ahead of `now_ms` (the wall time
    /// now). Returns whether the clock is now at or past `remote`: `false` means `remote` was
    /// too far ahead and is not adopted.
    ///
    /// Call it for every operation received, before issuing the next local one.
    pub fn observe(&mut self, remote: &Hlc, now_ms: u64) -> bool {
        if (remote.wall_ms, remote.counter) <= (self.wall_ms, self.counter) {
            return true;
        }
        if remote.is_beyond_offset(now_ms) {
            return false;
        }
        self.wall_ms = remote.wall_ms;
        self.counter = remote.counter;
        true
    }
}

#[cfg(test)]
mod tests;
