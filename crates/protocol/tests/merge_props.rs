//! Property tests of the record CRDT (docs/PROTOCOL.md §8): every delivery order converges,
//! merge is a join, concurrent edits stay visible as conflicts until a write that saw them
//! replaces them, and a delete hides exactly the writes it saw. Devices whose wall clocks are
//! skewed (past and future, within and beyond `MAX_CLOCK_OFFSET_MS`) still converge, and every
//! write wins over everything its device had merged.

use std::collections::{BTreeMap, BTreeSet};

mod common;
use common::{SimDevice, deliver, sim_device_id as device};

use kith_protocol::hlc::{Hlc, HlcClock, MAX_CLOCK_OFFSET_MS};
use kith_protocol::merge::{Conflict, ContactSet, Head, RecordState};
use kith_protocol::proto;
use kith_protocol::record::{FieldKey, FieldWrite, Operation, value};
use kith_protocol::{DeviceId, RecordId};
use proptest::prelude::*;
use proptest::sample::Index;
use prost::Message;

const DEVICES: usize = 3;
const RECORDS: u8 = 3;
const FIELDS: usize = 4;
/// Value choice meaning "remove the field".
const REMOVE: usize = 3;

fn record(n: u8) -> RecordId {
    RecordId::from_bytes([n; 16])
}

fn key(field: usize) -> FieldKey {
    match field {
        0 => FieldKey::name(),
        1 => FieldKey::company(),
        2 => FieldKey::email("ada@example.org").unwrap(),
        _ => FieldKey::tag("friends").unwrap(),
    }
}

fn field_value(field: usize, choice: usize) -> Option<proto::FieldValue> {
    (choice != REMOVE).then(|| match field {
        0 => value::text(["Ada", "Bob", "Cy"][choice]),
        1 => value::text(["Acme", "Initech", "Hooli"][choice]),
        2 => value::email("Ada@Example.org", ["", "work", "home"][choice]),
        _ => value::tag(),
    })
}

fn write(field: usize, choice: usize, replaces: Vec<Hlc>) -> FieldWrite {
    match field_value(field, choice) {
        Some(value) => FieldWrite::set(key(field), value, replaces).unwrap(),
        None => FieldWrite::remove(key(field), replaces),
    }
}

fn state_of<'a>(operations: impl IntoIterator<Item = &'a Operation>) -> ContactSet {
    let mut state = ContactSet::new();
    state.apply_all(operations);
    state
}

/// `operations` reordered by `keys` (one per operation, cycled), plus the duplicates listed.
fn delivery<'a>(
    operations: &'a [Operation],
    keys: &[u32],
    duplicates: &[Index],
) -> Vec<&'a Operation> {
    let mut order: Vec<(u32, usize)> = (0..operations.len())
        .map(|i| (keys.get(i % keys.len().max(1)).copied().unwrap_or(0), i))
        .collect();
    order.sort();
    let mut delivered: Vec<&Operation> = order.iter().map(|(_, i)| &operations[*i]).collect();
    if !operations.is_empty() {
        for duplicate in duplicates {
            let at = duplicate.index(delivered.len() + 1);
            delivered.insert(at, &operations[duplicate.index(operations.len())]);
        }
    }
    delivered
}

// ---------------------------------------------------------------------------------------------
// A simulated account: three devices writing, deleting and receiving each other's streams.

#[derive(Debug, Clone)]
enum Action {
    /// Write one field; replace every head this device sees, or only the winner.
    Write {
        device: usize,
        record: u8,
        field: usize,
        choice: usize,
        replace_all: bool,
        advance_ms: u64,
    },
    Delete {
        device: usize,
        record: u8,
        advance_ms: u64,
    },
    /// Receive the next `count` operations of `from`'s stream, in order.
    Receive {
        device: usize,
        from: usize,
        count: usize,
    },
}

type Device = SimDevice<DEVICES>;

impl Device {
    /// The device's clock never adopts anything beyond the bound of its own wall time.
    fn clock_is_bounded(&self) -> bool {
        self.clock.last().wall_ms() <= self.now_ms + MAX_CLOCK_OFFSET_MS
    }
}

/// Runs `actions`; every write takes its clock with `tick_after` over what its device merged
/// for the fields it writes (for a delete, the whole record), and must then be what its device
/// shows, whatever the clocks it has seen.
fn simulate(actions: &[Action], start_ms: [u64; DEVICES]) -> Vec<Device> {
    let mut devices = Device::fleet(|n| start_ms[n]);
    for action in actions {
        match *action {
            Action::Write {
                device,
                record: r,
                field,
                choice,
                replace_all,
                advance_ms,
            } => {
                let me = &mut devices[device];
                me.now_ms += advance_ms;
                let replaces = match me.state.get(&record(r)) {
                    Some(state) if replace_all => state.replaces(&key(field)),
                    Some(state) => state
                        .field(&key(field))
                        .and_then(|field| field.winner())
                        .map(|head| head.clock)
                        .into_iter()
                        .collect(),
                    None => Vec::new(),
                };
                let floor = me
                    .state
                    .get(&record(r))
                    .and_then(|state| state.latest_clock_of([&key(field)]));
                let clock = me.clock.tick_after(me.now_ms, floor).unwrap();
                // The clock is later than every clock of the field, so every replaced clock is
                // earlier and the write is the one shown.
                let operation =
                    Operation::upsert(record(r), clock, [write(field, choice, replaces)]).unwrap();
                me.state.apply(&operation);
                let shown = me.state.get(&record(r)).and_then(|s| s.value(&key(field)));
                assert_eq!(shown, field_value(field, choice).as_ref(), "{operation:?}");
                me.log.push(operation);
            }
            Action::Delete {
                device,
                record: r,
                advance_ms,
            } => {
                let me = &mut devices[device];
                me.delete(record(r), advance_ms);
                let deleted = me.state.get(&record(r)).expect("a tombstone");
                assert!(deleted.fields().is_empty(), "the delete hides all it saw");
            }
            Action::Receive {
                device,
                from,
                count,
            } => deliver(&mut devices, device, from, count),
        }
        assert!(devices.iter().all(Device::clock_is_bounded));
    }
    devices
}

fn action() -> impl Strategy<Value = Action> {
    let d = 0..DEVICES;
    prop_oneof![
        6 => (d.clone(), 0..RECORDS, 0..FIELDS, 0..=REMOVE, any::<bool>(), 0..3u64).prop_map(
            |(device, record, field, choice, replace_all, advance_ms)| Action::Write {
                device, record, field, choice, replace_all, advance_ms,
            }
        ),
        1 => (d.clone(), 0..RECORDS, 0..3u64)
            .prop_map(|(device, record, advance_ms)| Action::Delete { device, record, advance_ms }),
        4 => (d.clone(), d, 1..6usize)
            .prop_map(|(device, from, count)| Action::Receive { device, from, count }),
    ]
}

/// Histories whose devices start at nearly the same time, or at the true time plus a random
/// skew each ([`skew_ms`]).
fn history() -> impl Strategy<Value = (Vec<Action>, [u64; DEVICES])> {
    let start_ms = prop_oneof![
        prop::array::uniform3(0u64..20),
        prop::array::uniform3(skew_ms())
            .prop_map(|skews| skews.map(|s| NOW_MS.saturating_add_signed(s))),
    ];
    (prop::collection::vec(action(), 1..80), start_ms)
}

/// Delivers to every device the rest of every other device's stream, in order.
fn receive_everything(devices: &mut [Device]) {
    for n in 0..devices.len() {
        for from in 0..devices.len() {
            if from != n {
                let rest = devices[from].log[devices[n].cursors[from]..].to_vec();
                devices[n].receive(&rest);
            }
        }
    }
}

const DAY_MS: u64 = 24 * 60 * 60 * 1000;
/// The true time of the simulated account (November 2023).
const NOW_MS: u64 = 1_700_000_000_000;

/// A device's wall-clock error: small, within the bound or beyond it, behind or ahead (up to
/// ten years, as a phone whose date was reset wrongly).
fn skew_ms() -> impl Strategy<Value = i64> {
    let (day, bound) = (DAY_MS as i64, MAX_CLOCK_OFFSET_MS as i64);
    prop_oneof![
        -20i64..20,
        -bound..=bound,
        (bound + 1)..3_650 * day,
        -3_650 * day..-bound,
        Just(bound),
        Just(bound + 1),
    ]
}

// ---------------------------------------------------------------------------------------------
// Arbitrary operations, not produced by honest clocks: clocks collide, replaces point anywhere.

fn arb_clock() -> impl Strategy<Value = Hlc> {
    (0u64..6, 0u32..2, 0..DEVICES).prop_map(|(wall, counter, d)| Hlc::new(wall, counter, device(d)))
}

fn arb_operation() -> impl Strategy<Value = Operation> {
    let writes = prop::collection::vec(
        (
            0..FIELDS,
            0..=REMOVE,
            prop::collection::btree_set(arb_clock(), 0..3),
        ),
        0..3,
    );
    (0..2u8, arb_clock(), prop::option::weighted(0.85, writes)).prop_map(|(r, clock, writes)| {
        let Some(writes) = writes else {
            return Operation::delete(record(r), clock);
        };
        let by_key: BTreeMap<usize, FieldWrite> = writes
            .into_iter()
            .map(|(field, choice, replaces)| {
                let earlier = replaces.into_iter().filter(|r| *r < clock).collect();
                (field, write(field, choice, earlier))
            })
            .collect();
        Operation::upsert(record(r), clock, by_key.into_values()).unwrap()
    })
}

// ---------------------------------------------------------------------------------------------
// The merge rule stated over a whole set of operations at once (docs/PROTOCOL.md §8), written
// independently of the incremental code: a visible write is a head unless some write replaces
// its clock or its writer wrote the same field again later (a later clock of that writer is
// known, as a write or as a replaced clock).

type Heads = BTreeMap<Hlc, Option<proto::FieldValue>>;
/// Where a write lands: record and field.
type At = (RecordId, FieldKey);

fn specified_heads(operations: &[Operation]) -> BTreeMap<At, Heads> {
    use kith_protocol::record::OperationKind;
    let mut deleted_at: BTreeMap<RecordId, Hlc> = BTreeMap::new();
    for op in operations {
        if matches!(op.kind(), OperationKind::Delete) {
            let at = deleted_at.entry(op.record()).or_insert(op.clock());
            *at = (*at).max(op.clock());
        }
    }
    let visible = |id: &RecordId, clock: &Hlc| deleted_at.get(id).is_none_or(|d| clock > d);
    let mut writes: BTreeMap<At, Vec<(Hlc, Option<proto::FieldValue>)>> = BTreeMap::new();
    let mut known: BTreeMap<At, BTreeSet<Hlc>> = BTreeMap::new();
    let mut replaced: BTreeMap<At, BTreeSet<Hlc>> = BTreeMap::new();
    for op in operations {
        let OperationKind::Upsert(list) = op.kind() else {
            continue;
        };
        for w in list {
            let at = (op.record(), w.key().clone());
            writes
                .entry(at.clone())
                .or_default()
                .push((op.clock(), w.value().cloned()));
            known.entry(at.clone()).or_default().insert(op.clock());
            known
                .entry(at.clone())
                .or_default()
                .extend(w.replaces().iter().copied());
            replaced
                .entry(at)
                .or_default()
                .extend(w.replaces().iter().copied());
        }
    }
    let mut heads: BTreeMap<At, Heads> = BTreeMap::new();
    for (at, list) in writes {
        for (clock, value) in list {
            let later_of_writer = known[&at]
                .iter()
                .any(|k| k.device() == clock.device() && *k > clock);
            if !visible(&at.0, &clock) || replaced[&at].contains(&clock) || later_of_writer {
                continue;
            }
            // A faulty writer's reused clock keeps the greater value (None first, then bytes).
            let rank = |v: &Option<proto::FieldValue>| v.as_ref().map(Message::encode_to_vec);
            let field = heads.entry(at.clone()).or_default();
            match field.get(&clock) {
                Some(kept) if rank(kept) >= rank(&value) => {}
                _ => {
                    field.insert(clock, value);
                }
            }
        }
    }
    heads
}

fn heads_of(state: &ContactSet) -> BTreeMap<At, Heads> {
    let mut heads = BTreeMap::new();
    for record in state.records() {
        for (key, field) in record.fields() {
            let field_heads: Heads = field
                .heads()
                .map(|head| (head.clock, head.value.cloned()))
                .collect();
            if !field_heads.is_empty() {
                heads.insert((record.id(), key.clone()), field_heads);
            }
        }
    }
    heads
}

/// At most one clock per writer in each field (a head or a superseded clock), however many
/// times the field was written.
fn clocks_per_writer_are_bounded(state: &ContactSet) -> Result<(), TestCaseError> {
    for record in state.records() {
        for (key, field) in record.fields() {
            let mut writers: BTreeMap<DeviceId, usize> = BTreeMap::new();
            let clocks = field
                .heads()
                .map(|head| head.clock)
                .chain(field.superseded().iter().copied());
            for clock in clocks {
                *writers.entry(clock.device()).or_default() += 1;
            }
            prop_assert!(
                writers.values().all(|n| *n == 1),
                "{key}: {writers:?} in {field:?}"
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn merged_heads_are_the_specified_heads_and_clocks_stay_bounded(
        (actions, start_ms) in history(),
        operations in prop::collection::vec(arb_operation(), 0..40),
    ) {
        let devices = simulate(&actions, start_ms);
        let honest: Vec<Operation> = devices.iter().flat_map(|d| d.log.clone()).collect();
        for ops in [&honest, &operations] {
            let state = state_of(ops.iter());
            prop_assert_eq!(heads_of(&state), specified_heads(ops));
            clocks_per_writer_are_bounded(&state)?;
        }
        for d in &devices {
            clocks_per_writer_are_bounded(&d.state)?;
        }
    }

    #[test]
    fn any_delivery_order_converges(
        (actions, start_ms) in history(),
        keys in prop::collection::vec(any::<u32>(), 1..96),
        duplicates in prop::collection::vec(any::<Index>(), 0..16),
    ) {
        let mut devices = simulate(&actions, start_ms);
        let operations: Vec<Operation> = devices.iter().flat_map(|d| d.log.clone()).collect();
        let reference = state_of(&operations);

        let shuffled = state_of(delivery(&operations, &keys, &duplicates));
        prop_assert_eq!(&shuffled, &reference);

        // Merging the devices' partial states, in either direction, is the same state.
        let mut merged = ContactSet::new();
        for d in devices.iter().rev() {
            merged.merge(&d.state);
        }
        prop_assert_eq!(&merged, &reference);

        // Each device, after receiving the rest of every stream in order, agrees, and no
        // device's clock adopted anything beyond the bound of its wall time.
        receive_everything(&mut devices);
        for d in &devices {
            prop_assert_eq!(&d.state, &reference);
            prop_assert!(d.clock_is_bounded());
        }
    }

    #[test]
    fn arbitrary_operations_converge_in_any_order(
        operations in prop::collection::vec(arb_operation(), 0..40),
        keys in prop::collection::vec(any::<u32>(), 1..48),
        duplicates in prop::collection::vec(any::<Index>(), 0..16),
    ) {
        let reference = state_of(&operations);
        prop_assert_eq!(state_of(delivery(&operations, &keys, &duplicates)), reference.clone());
        let reversed = state_of(operations.iter().rev());
        prop_assert_eq!(reversed, reference);
    }

    #[test]
    fn apply_reports_exactly_the_records_that_changed(
        operations in prop::collection::vec(arb_operation(), 0..40),
    ) {
        let mut state = ContactSet::new();
        for operation in &operations {
            let before = state.get(&operation.record()).cloned();
            let changed = state.apply(operation);
            let after = state.get(&operation.record()).cloned();
            prop_assert_eq!(changed.is_some(), before != after);
            prop_assert!(changed.is_none_or(|id| id == operation.record()));
        }
    }

    #[test]
    fn merge_is_commutative_associative_idempotent(
        operations in prop::collection::vec(arb_operation(), 0..30),
        masks in prop::collection::vec(1u8..8, 30),
    ) {
        let part = |bit: u8| -> Vec<&Operation> {
            operations.iter().zip(&masks).filter(|(_, m)| *m & bit != 0).map(|(o, _)| o).collect()
        };
        let (ops_a, ops_b, ops_c) = (part(1), part(2), part(4));
        let (a, b, c) = (
            state_of(ops_a.iter().copied()),
            state_of(ops_b.iter().copied()),
            state_of(ops_c.iter().copied()),
        );
        let join = |x: &ContactSet, y: &ContactSet| {
            let mut joined = x.clone();
            joined.merge(y);
            joined
        };
        prop_assert_eq!(join(&a, &b), join(&b, &a));
        prop_assert_eq!(join(&join(&a, &b), &c), join(&a, &join(&b, &c)));
        prop_assert_eq!(join(&a, &a), a.clone());
        prop_assert_eq!(a.clone().merge(&a), BTreeSet::new());
        // Merging states is applying the union of their operations.
        prop_assert_eq!(join(&a, &b), state_of(ops_a.iter().chain(&ops_b).copied()));

        // The reported ids are exactly the records whose state changed.
        let mut merged = a.clone();
        let changed = merged.merge(&b);
        let ids: BTreeSet<RecordId> = a.records().chain(b.records()).map(|r| r.id()).collect();
        for id in ids {
            prop_assert_eq!(changed.contains(&id), a.get(&id) != merged.get(&id));
        }
    }

    #[test]
    fn state_round_trips_through_a_snapshot(
        (actions, start_ms) in history(),
        seq in any::<u64>(),
    ) {
        let devices = simulate(&actions, start_ms);
        let operations: Vec<Operation> = devices.iter().flat_map(|d| d.log.clone()).collect();
        let state = state_of(&operations);
        for record in state.records() {
            let parsed = RecordState::from_proto(&record.to_proto());
            prop_assert_eq!(parsed.as_ref(), Ok(record));
        }
        let device_id = device(0).as_bytes().to_vec();
        let positions = vec![proto::StreamPosition { device_id, seq }];
        let bytes = state.to_snapshot(positions.clone()).encode_to_vec();
        prop_assert_eq!(ContactSet::decode_snapshot(&bytes), Ok((state, positions)));
    }

    #[test]
    fn concurrent_edits_keep_the_conflict(
        wall_a in 1u64..100,
        wall_b in 1u64..100,
        (dev_a, dev_b) in (0..DEVICES, 0..DEVICES).prop_filter("two devices", |(a, b)| a != b),
        order in Just(vec![0usize, 1, 2]).prop_shuffle(),
    ) {
        let id = record(1);
        let name = FieldKey::name();
        let dev_c = 3 - dev_a - dev_b;
        let mut clock_a = HlcClock::new(device(dev_a));
        let mut clock_b = HlcClock::new(device(dev_b));
        let mut clock_c = HlcClock::new(device(dev_c));

        // Everyone saw the first value; then A and B edit without seeing each other.
        let first = Operation::upsert(id, clock_c.tick(0), [write(0, 2, vec![])]).unwrap();
        clock_a.observe(&first.clock(), 0);
        clock_b.observe(&first.clock(), 0);
        let edit = |clock: &mut HlcClock, wall_ms, choice| {
            Operation::upsert(id, clock.tick(wall_ms), [write(0, choice, vec![first.clock()])])
                .unwrap()
        };
        let edit_a = edit(&mut clock_a, wall_a, 0);
        let edit_b = edit(&mut clock_b, wall_b, 1);
        let ops = [&first, &edit_a, &edit_b];
        let state = state_of(order.iter().map(|i| ops[*i]));
        prop_assert_eq!(&state, &state_of(ops));

        // The winner is the greater clock: wall time, then counter, then device id.
        let (winner, loser, winner_choice) = if edit_a.clock() > edit_b.clock() {
            (&edit_a, &edit_b, 0)
        } else {
            (&edit_b, &edit_a, 1)
        };
        let loser_choice = 1 - winner_choice;
        let shown = state.contact(&id).unwrap();
        prop_assert_eq!(shown.name(), Some(["Ada", "Bob"][winner_choice]));
        let record = state.get(&id).unwrap();
        let winner_value = field_value(0, winner_choice);
        let loser_value = field_value(0, loser_choice);
        prop_assert_eq!(
            record.conflicts(),
            vec![Conflict {
                key: &name,
                winner: Head { clock: winner.clock(), value: winner_value.as_ref() },
                others: vec![Head { clock: loser.clock(), value: loser_value.as_ref() }],
            }]
        );

        // C saw both. Replacing only the winner keeps the loser: the conflict stays.
        clock_c.observe(&edit_a.clock(), 200);
        clock_c.observe(&edit_b.clock(), 200);
        let partial =
            Operation::upsert(id, clock_c.tick(200), [write(0, 2, vec![winner.clock()])]).unwrap();
        let mut kept = state.clone();
        kept.apply(&partial);
        let conflicts = kept.get(&id).unwrap().conflicts();
        prop_assert_eq!(conflicts.len(), 1);
        prop_assert_eq!(conflicts[0].winner.clock, partial.clock());
        let others: Vec<Hlc> = conflicts[0].others.iter().map(|head| head.clock).collect();
        prop_assert_eq!(others, vec![loser.clock()]);

        // Replacing every head clears it, whichever value is kept, in any delivery order.
        for choice in [loser_choice, 2] {
            let replaces = record.replaces(&name);
            prop_assert_eq!(replaces.len(), 2);
            let resolve =
                Operation::upsert(id, clock_c.tick(200), [write(0, choice, replaces)]).unwrap();
            let mut resolved = state.clone();
            resolved.apply(&resolve);
            let resolved_record = resolved.get(&id).unwrap();
            prop_assert!(resolved_record.conflicts().is_empty());
            prop_assert_eq!(resolved_record.field(&name).unwrap().heads().count(), 1);
            let shown = resolved.contact(&id).unwrap();
            prop_assert_eq!(shown.name(), Some(["Ada", "Bob", "Cy"][choice]));
            let resolve_first = state_of([&resolve, &edit_b, &first, &edit_a]);
            prop_assert_eq!(resolve_first, resolved);
        }
    }

    #[test]
    fn delete_then_later_upsert_resurrects_only_newer_fields(
        before in prop::collection::vec((0..FIELDS, 0..REMOVE), 0..6),
        after in prop::collection::btree_map(0..FIELDS, 0..REMOVE, 0..FIELDS),
        keys in prop::collection::vec(any::<u32>(), 1..16),
    ) {
        let id = record(1);
        let mut writer = HlcClock::new(device(0));
        let mut deleter = HlcClock::new(device(1));
        let mut reviver = HlcClock::new(device(2));
        let mut operations: Vec<Operation> = before
            .iter()
            .map(|&(field, choice)| {
                Operation::upsert(id, writer.tick(10), [write(field, choice, vec![])]).unwrap()
            })
            .collect();
        // The deleter saw every earlier write (they are all in the log before it).
        for operation in &operations {
            deleter.observe(&operation.clock(), 50);
        }
        let delete = Operation::delete(id, deleter.tick(50));
        reviver.observe(&delete.clock(), 60);
        let revived = Operation::upsert(
            id,
            reviver.tick(60),
            after.iter().map(|(&field, &choice)| write(field, choice, vec![])),
        )
        .unwrap();
        operations.push(delete.clone());
        operations.push(revived);

        let state = state_of(delivery(&operations, &keys, &[]));
        prop_assert_eq!(&state, &state_of(&operations));
        let record = state.get(&id).unwrap();
        prop_assert_eq!(record.deleted_at(), Some(delete.clock()));
        prop_assert_eq!(record.is_live(), !after.is_empty());
        for field in 0..FIELDS {
            let expected = after.get(&field).and_then(|&choice| field_value(field, choice));
            prop_assert_eq!(record.value(&key(field)).cloned(), expected);
            // What the delete hid is forgotten, not just hidden.
            if let Some(state) = record.field(&key(field)) {
                prop_assert!(state.heads().all(|h| h.clock > delete.clock()));
                prop_assert!(state.superseded().iter().all(|c| *c > delete.clock()));
            }
        }
        prop_assert!(record.conflicts().is_empty());
    }

    /// Devices with skewed clocks (up to ten years behind or ahead; every history-based test
    /// above also runs with them) write, delete and receive in any interleaving; every write is
    /// the value its device then shows (checked in `simulate`). Then, having merged
    /// everything, any device edits any field, including fields a far-future device wrote
    /// last, and its edit replaces every head and wins.
    #[test]
    fn with_skewed_clocks_every_edit_after_a_merge_wins(
        actions in prop::collection::vec(action(), 1..80),
        skews in prop::array::uniform3(skew_ms()),
    ) {
        let mut devices = simulate(&actions, skews.map(|s| NOW_MS.saturating_add_signed(s)));
        receive_everything(&mut devices);
        let reference = devices[0].state.clone();
        for me in &mut devices {
            for r in 0..RECORDS {
                let floor = reference.get(&record(r)).and_then(|s| s.latest_clock_of([&key(1)]));
                let clock = me.clock.tick_after(me.now_ms, floor).unwrap();
                let replaces = reference.get(&record(r)).map(|s| s.replaces(&key(1)));
                let edit = Operation::upsert(
                    record(r),
                    clock,
                    [write(1, 2, replaces.unwrap_or_default())],
                )
                .unwrap();
                let mut after = reference.clone();
                after.apply(&edit);
                let shown = after.get(&record(r)).and_then(|s| s.value(&key(1)));
                let expected = field_value(1, 2);
                prop_assert_eq!(shown, expected.as_ref());
                let field = after.get(&record(r)).and_then(|s| s.field(&key(1))).unwrap();
                prop_assert_eq!(field.heads().count(), 1, "the edit replaced every head");
            }
        }
    }
}
