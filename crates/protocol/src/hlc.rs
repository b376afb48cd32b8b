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
//! ```
//! use kith_protocol::DeviceId;
//! use kith_protocol::hlc::HlcClock;
//!
//! let mut phone = HlcClock::new(DeviceId::from_bytes([1; 16]));
//! let mut laptop = HlcClock::new(DeviceId::from_bytes([2; 16]));
//! let edit = laptop.tick(5_000);
//! phone.observe(&edit);
//! // The phone's wall clock is behind, yet its next edit is ordered after the laptop's.
//! assert!(phone.tick(1_000) > edit);
//! ```

use std::fmt;

use crate::ids::{DeviceId, IdLengthError};
use crate::proto;

/// Why a clock from the wire was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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
        if wire.wall_ms > Self::MAX_WALL_MS {
            return Err(HlcError::WallTimeOutOfRange {
                wall_ms: wire.wall_ms,
            });
        }
        let device = DeviceId::from_slice(&wire.device_id)?;
        Ok(Self::new(wire.wall_ms, wire.counter, device))
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
/// Every clock it issues is greater than every clock it issued or observed before, whatever
/// the wall time passed in. After a restart, create a new one and [`observe`](Self::observe) the
/// greatest clock in the local state (`ContactSet::latest_clock`) before issuing anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HlcClock {
    device: DeviceId,
    wall_ms: u64,
    counter: u32,
}

impl HlcClock {
    /// A fresh clock for `device`.
    pub const fn new(device: DeviceId) -> Self {
        Self {
            device,
            wall_ms: 0,
            counter: 0,
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

    /// Moves this clock past `remote`, so the next [`tick`](Self::tick) is greater than it.
    ///
    /// Call it for every operation received, before issuing the next local one.
    pub fn observe(&mut self, remote: &Hlc) {
        if (remote.wall_ms, remote.counter) > (self.wall_ms, self.counter) {
            self.wall_ms = remote.wall_ms;
            self.counter = remote.counter;
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn device(byte: u8) -> DeviceId {
        DeviceId::from_bytes([byte; 16])
    }

    #[test]
    fn order_is_wall_then_counter_then_device() {
        let a = Hlc::new(1, 9, device(9));
        let b = Hlc::new(2, 0, device(0));
        assert!(a < b, "wall time decides first");
        let c = Hlc::new(2, 1, device(0));
        assert!(b < c, "then the counter");
        let d = Hlc::new(2, 1, device(1));
        assert!(c < d, "then the device");
    }

    #[test]
    fn tick_follows_the_wall_clock_when_it_advances() {
        let mut clock = HlcClock::new(device(1));
        assert_eq!(clock.tick(100), Hlc::new(100, 0, device(1)));
        assert_eq!(clock.tick(100), Hlc::new(100, 1, device(1)));
        assert_eq!(clock.tick(250), Hlc::new(250, 0, device(1)));
    }

    #[test]
    fn tick_is_monotonic_when_the_wall_clock_goes_backwards() {
        let mut clock = HlcClock::new(device(1));
        let a = clock.tick(1_000);
        let b = clock.tick(10);
        let c = clock.tick(0);
        assert!(a < b && b < c);
        assert_eq!(c, Hlc::new(1_000, 2, device(1)));
    }

    #[test]
    fn counter_overflow_borrows_the_next_millisecond() {
        let mut clock = HlcClock::new(device(1));
        clock.observe(&Hlc::new(500, u32::MAX, device(2)));
        let next = clock.tick(500);
        assert_eq!(next, Hlc::new(501, 0, device(1)));
        assert!(next > Hlc::new(500, u32::MAX, device(2)));
    }

    #[test]
    fn tick_caps_the_wall_time_so_peers_can_decode_it() {
        let mut clock = HlcClock::new(device(1));
        let stamp = clock.tick(u64::MAX);
        assert_eq!(stamp.wall_ms(), Hlc::MAX_WALL_MS);
        assert_eq!(Hlc::from_proto(&stamp.to_proto()), Ok(stamp));
    }

    #[test]
    fn observe_moves_past_a_remote_clock_with_a_greater_device() {
        let mut clock = HlcClock::new(device(1));
        clock.tick(100);
        let remote = Hlc::new(100, 0, device(200));
        clock.observe(&remote);
        assert!(clock.tick(100) > remote);
    }

    #[test]
    fn observe_never_moves_the_clock_back() {
        let mut clock = HlcClock::new(device(1));
        let mine = clock.tick(1_000);
        clock.observe(&Hlc::new(5, 0, device(2)));
        assert!(clock.tick(0) > mine);
    }

    #[test]
    fn device_id_of_the_wrong_length_is_rejected() {
        let wire = proto::Hlc {
            wall_ms: 1,
            counter: 0,
            device_id: vec![0; 15],
        };
        let err = Hlc::from_proto(&wire).unwrap_err();
        assert!(matches!(
            err,
            HlcError::InvalidDeviceId(IdLengthError {
                expected: 16,
                actual: 15,
                ..
            })
        ));
        assert_eq!(
            err.to_string(),
            "clock has an invalid device id: DeviceId must be 16 bytes, got 15"
        );
    }

    #[test]
    fn wall_time_beyond_the_maximum_is_rejected() {
        let wire = Hlc::new(Hlc::MAX_WALL_MS + 1, 0, device(1)).to_proto();
        assert_eq!(
            Hlc::from_proto(&wire),
            Err(HlcError::WallTimeOutOfRange {
                wall_ms: Hlc::MAX_WALL_MS + 1
            })
        );
        let edge = Hlc::new(Hlc::MAX_WALL_MS, u32::MAX, device(1));
        assert_eq!(Hlc::from_proto(&edge.to_proto()), Ok(edge));
    }

    #[test]
    fn display_is_compact() {
        let clock = Hlc::new(7, 2, DeviceId::from_bytes([0xab; 16]));
        assert_eq!(clock.to_string(), format!("7.2@{}", "ab".repeat(16)));
    }

    proptest! {
        #[test]
        fn hlc_round_trips_through_proto(
            wall in 0..=Hlc::MAX_WALL_MS,
            counter in any::<u32>(),
            id in any::<[u8; 16]>(),
        ) {
            let clock = Hlc::new(wall, counter, DeviceId::from_bytes(id));
            prop_assert_eq!(Hlc::from_proto(&clock.to_proto()), Ok(clock));
        }

        #[test]
        fn clocks_only_increase(
            steps in proptest::collection::vec(
                (any::<bool>(), 0u64..2_000, 0u32..3, any::<u8>()),
                1..64,
            ),
        ) {
            let mut clock = HlcClock::new(device(0));
            let mut greatest_seen: Option<Hlc> = None;
            for (is_local, wall, counter, remote_device) in steps {
                if is_local {
                    let stamp = clock.tick(wall);
                    prop_assert!(greatest_seen.is_none_or(|seen| stamp > seen));
                    greatest_seen = Some(stamp);
                } else {
                    let remote = Hlc::new(wall, counter, device(remote_device));
                    clock.observe(&remote);
                    greatest_seen = greatest_seen.max(Some(remote));
                }
            }
        }
    }
}
