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
    assert!(clock.observe(&Hlc::new(500, u32::MAX, device(2)), 500));
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
    assert!(clock.observe(&remote, 100));
    assert!(clock.tick(100) > remote);
}

#[test]
fn observe_never_moves_the_clock_back() {
    let mut clock = HlcClock::new(device(1));
    let mine = clock.tick(1_000);
    assert!(clock.observe(&Hlc::new(5, 0, device(2)), 0));
    assert!(clock.tick(0) > mine);
}

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

#[test]
fn a_clock_beyond_the_offset_is_not_adopted_but_a_write_can_supersede_it() {
    let now = 1_700_000_000_000;
    let mut clock = HlcClock::new(device(1));
    let within = Hlc::new(now + MAX_CLOCK_OFFSET_MS, 3, device(2));
    assert!(clock.observe(&within, now), "exactly at the bound: adopted");
    assert!(clock.tick(now) > within);
    let before = clock.last();
    let future = Hlc::new(now + MAX_CLOCK_OFFSET_MS + 1, 0, device(2));
    assert!(!clock.observe(&future, now));
    assert_eq!(clock.last(), before, "nothing adopted");
    let fix = clock.tick_after(now, Some(future)).unwrap();
    assert_eq!(fix, Hlc::new(future.wall_ms(), 1, device(1)));
    assert_eq!(
        clock.last().wall_ms(),
        before.wall_ms(),
        "the successor is not adopted either"
    );
    assert!(
        clock.tick(now) < future,
        "later writes keep the device's own time"
    );
    // Later wall time catches up: the same clock is then adopted as usual.
    assert!(clock.observe(&future, now + DAY_MS));
}

#[test]
fn tick_after_a_clock_of_this_device_or_at_the_end_of_time() {
    let mut clock = HlcClock::new(device(5));
    let mine = Hlc::new(10 * DAY_MS, u32::MAX, device(5));
    assert_eq!(
        clock.tick_after(0, Some(mine)),
        Ok(Hlc::new(10 * DAY_MS + 1, 0, device(5)))
    );
    let end = Hlc::new(Hlc::MAX_WALL_MS, u32::MAX, device(0));
    let err = clock.tick_after(0, Some(end)).unwrap_err();
    assert_eq!(err, HlcError::NoLaterClock { floor: end });
    assert!(err.to_string().starts_with("no clock is later than"));
    // A floor below the local clock changes nothing.
    let local = clock.tick(5 * DAY_MS);
    let next = clock.tick_after(5 * DAY_MS, Some(Hlc::new(1, 0, device(9))));
    assert_eq!(
        next,
        Ok(Hlc::new(local.wall_ms(), local.counter() + 1, device(5)))
    );
}

proptest! {
    /// A device persists `to_persist()` after each run and restores it when it starts
    /// again; its wall clock moves by a random amount between runs, backwards included.
    /// Every clock is later than every earlier one, except clocks issued beyond the bound
    /// (to supersede a far-future clock: not adopted) and, while the stored state is more
    /// than the bound ahead of the wall clock (the date was corrected backwards by more),
    /// clocks of earlier runs: the device then writes at its wall time until that catches
    /// up. A write that supersedes the device's own earlier ones (`tick_after` with the
    /// greatest as floor) is later than all of them.
    #[test]
    fn clock_is_monotonic_across_restarts(
        runs in proptest::collection::vec(
            (-(2 * DAY_MS as i64)..2 * DAY_MS as i64, 1usize..4, 0..DAY_MS),
            1..12,
        ),
    ) {
        let mut wall = 1_700_000_000_000u64;
        let mut persisted: Option<Hlc> = None;
        // Every clock issued: its run, and whether it was beyond the bound when issued.
        let mut issued: Vec<(Hlc, usize, bool)> = Vec::new();
        for (run, (jump, writes, during)) in runs.into_iter().enumerate() {
            wall = wall.saturating_add_signed(jump);
            let mut clock = HlcClock::new(device(1));
            if let Some(stored) = persisted {
                let adopted = clock.restore(stored, wall);
                prop_assert_eq!(adopted, !stored.is_beyond_offset(wall));
            }
            let parked = |now: u64| persisted.is_some_and(|p| p.is_beyond_offset(now));
            for step in 0..writes {
                // The wall clock also moves on while the device runs.
                let now = wall + during * step as u64 / 4;
                let stamp = clock.tick(now);
                prop_assert!(!stamp.is_beyond_offset(now));
                for (earlier, earlier_run, was_beyond) in &issued {
                    let exempt = *was_beyond || (*earlier_run < run && parked(now));
                    prop_assert!(stamp > *earlier || exempt, "{stamp} after {earlier}");
                }
                let greatest = issued.iter().map(|(clock, _, _)| *clock).max();
                let superseding = clock.tick_after(now, greatest).unwrap();
                prop_assert!(greatest.is_none_or(|g| superseding > g));
                prop_assert!(superseding > stamp);
                issued.push((stamp, run, false));
                issued.push((superseding, run, superseding.is_beyond_offset(now)));
            }
            persisted = Some(clock.to_persist());
        }
    }
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
                // Within the bound of any wall time passed to tick: always adopted.
                prop_assert!(clock.observe(&remote, 0));
                greatest_seen = greatest_seen.max(Some(remote));
            }
        }
    }
}
