//! Helpers shared by the protocol crate's integration tests.
#![allow(dead_code, unused_imports)]

pub use kith_testkit::new_device;
pub use kith_testkit::rng::{CounterRng, FixedRng};

/// Whether the vector tests should rewrite their files (`KITH_REGENERATE_VECTORS=1`).
pub fn regenerating() -> bool {
    std::env::var_os("KITH_REGENERATE_VECTORS").is_some_and(|v| v == "1")
}

/// Decodes hex from a vector file.
pub fn unhex(text: &str) -> Vec<u8> {
    hex::decode(text).expect("vector file holds hex")
}

/// A device of the merge property tests: its clock and wall time, the state it merged, the
/// operations it wrote (in order) and how many of each of the `N` devices' it has received.
pub struct SimDevice<const N: usize> {
    pub clock: kith_protocol::hlc::HlcClock,
    pub now_ms: u64,
    pub state: kith_protocol::merge::ContactSet,
    pub log: Vec<kith_protocol::record::Operation>,
    pub cursors: [usize; N],
}

/// The id of simulated device `n` (0-based; never the zero id).
pub fn sim_device_id(n: usize) -> kith_protocol::DeviceId {
    kith_protocol::DeviceId::from_bytes([n as u8 + 1; 16])
}

impl<const N: usize> SimDevice<N> {
    /// The `N` devices of a simulation, device `n` with id [`sim_device_id`]`(n)` and its wall
    /// clock at `start_ms(n)`.
    pub fn fleet(start_ms: impl Fn(usize) -> u64) -> Vec<Self> {
        (0..N)
            .map(|n| Self::new(sim_device_id(n), start_ms(n)))
            .collect()
    }

    /// A device that has written and received nothing, its wall clock at `now_ms`.
    pub fn new(id: kith_protocol::DeviceId, now_ms: u64) -> Self {
        Self {
            clock: kith_protocol::hlc::HlcClock::new(id),
            now_ms,
            state: kith_protocol::merge::ContactSet::new(),
            log: Vec::new(),
            cursors: [0; N],
        }
    }

    /// Advances the wall clock by `advance_ms`, then deletes `record` with a clock later than
    /// every clock of the record this device has merged: applied here and appended to the log.
    pub fn delete(&mut self, record: kith_protocol::RecordId, advance_ms: u64) {
        self.now_ms += advance_ms;
        let floor = self
            .state
            .get(&record)
            .and_then(kith_protocol::merge::RecordState::latest_clock);
        let clock = self.clock.tick_after(self.now_ms, floor).unwrap();
        let operation = kith_protocol::record::Operation::delete(record, clock);
        self.state.apply(&operation);
        self.log.push(operation);
    }

    /// Observes the clocks of `operations` (another device's) and applies them, in order.
    pub fn receive(&mut self, operations: &[kith_protocol::record::Operation]) {
        for operation in operations {
            self.clock.observe(&operation.clock(), self.now_ms);
            self.state.apply(operation);
        }
    }
}

/// Delivers to `devices[device]` the next `count` (at most) operations of `devices[from]`'s
/// log it has not received yet; nothing when they are the same device.
pub fn deliver<const N: usize>(
    devices: &mut [SimDevice<N>],
    device: usize,
    from: usize,
    count: usize,
) {
    if device == from {
        return;
    }
    let start = devices[device].cursors[from];
    let end = (start + count).min(devices[from].log.len());
    let incoming = devices[from].log[start..end].to_vec();
    devices[device].cursors[from] = end;
    devices[device].receive(&incoming);
}
