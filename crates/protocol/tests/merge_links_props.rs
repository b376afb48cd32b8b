//! Property tests of merging records that are one person (docs/PROTOCOL.md §8.4): devices
//! import (write fields), edit, delete, merge and unmerge records in random interleavings,
//! receiving each other's operations in random orders; every device ends with the same groups
//! and the same merged contacts, and those are the ones a reference model computes from the
//! whole set of operations at once.

use std::collections::{BTreeMap, BTreeSet};

mod common;
use common::{SimDevice, deliver};

use kith_protocol::RecordId;
use kith_protocol::hlc::Hlc;
use kith_protocol::merge::{ContactSet, Groups, RecordState};
use kith_protocol::record::{FieldKey, FieldKind, FieldWrite, Operation, OperationKind, value};
use proptest::prelude::*;

const DEVICES: usize = 3;
const RECORDS: u8 = 4;

fn record(n: u8) -> RecordId {
    RecordId::from_bytes([n + 1; 16])
}

/// What one device does; records are named by their ids (`record(0..RECORDS)`).
#[derive(Debug, Clone)]
enum Action {
    /// Set a field of a record (an import or an edit).
    Write {
        device: usize,
        record: RecordId,
        field: u8,
        text: u8,
    },
    /// Delete a record.
    Delete { device: usize, record: RecordId },
    /// Merge two records (links both sides, removes `distinct`).
    Merge {
        device: usize,
        a: RecordId,
        b: RecordId,
    },
    /// Unmerge two records (removes the links, marks them distinct).
    Unmerge {
        device: usize,
        a: RecordId,
        b: RecordId,
    },
    /// Receive the next `count` operations of another device's stream.
    Receive {
        device: usize,
        from: usize,
        count: usize,
    },
}

fn action() -> impl Strategy<Value = Action> {
    let d = 0..DEVICES;
    let r = (0..RECORDS).prop_map(record);
    prop_oneof![
        3 => (d.clone(), r.clone(), 0u8..3, 0u8..3)
            .prop_map(|(device, record, field, text)| Action::Write { device, record, field, text }),
        1 => (d.clone(), r.clone()).prop_map(|(device, record)| Action::Delete { device, record }),
        3 => (d.clone(), r.clone(), r.clone()).prop_map(|(device, a, b)| Action::Merge { device, a, b }),
        1 => (d.clone(), r.clone(), r.clone()).prop_map(|(device, a, b)| Action::Unmerge { device, a, b }),
        3 => (d.clone(), d, 1usize..6).prop_map(|(device, from, count)| Action::Receive { device, from, count }),
    ]
}

fn key(field: u8) -> FieldKey {
    match field {
        0 => FieldKey::name(),
        1 => FieldKey::email("ana@example.org").unwrap(),
        _ => FieldKey::company(),
    }
}

fn field_value(field: u8, text: u8) -> kith_protocol::proto::FieldValue {
    match field {
        1 => value::email("ana@example.org", ["", "work", "home"][text as usize]),
        _ => value::text(["Ana", "Bea", "Cy"][text as usize]),
    }
}

type Device = SimDevice<DEVICES>;

impl Device {
    /// An upsert of `writes` on record `id`, later than every clock of the record.
    fn upsert(&mut self, id: RecordId, writes: Vec<FieldWrite>) {
        if writes.is_empty() {
            return;
        }
        self.now_ms += 1;
        let floor = self.state.get(&id).and_then(RecordState::latest_clock);
        let clock = self.clock.tick_after(self.now_ms, floor).unwrap();
        let op = Operation::upsert(id, clock, writes).unwrap();
        self.state.apply(&op);
        self.log.push(op);
    }

    fn replaces(&self, id: RecordId, key: &FieldKey) -> Vec<Hlc> {
        self.state
            .get(&id)
            .map(|s| s.replaces(key))
            .unwrap_or_default()
    }

    fn link(&mut self, a: RecordId, b: RecordId, merge: bool) {
        for (this, that) in [(a, b), (b, a)] {
            let merged = FieldKey::merged(&that);
            let distinct = FieldKey::distinct(&that);
            let (set, remove) = if merge {
                (merged, distinct)
            } else {
                (distinct, merged)
            };
            let writes = vec![
                FieldWrite::set(set.clone(), value::tag(), self.replaces(this, &set)).unwrap(),
                FieldWrite::remove(remove.clone(), self.replaces(this, &remove)),
            ];
            self.upsert(this, writes);
        }
    }
}

fn simulate(actions: &[Action]) -> Vec<Device> {
    let mut devices = Device::fleet(|n| 1_000 + n as u64);
    for action in actions {
        match *action {
            Action::Write {
                device,
                record,
                field,
                text,
            } => {
                let me = &mut devices[device];
                let key = key(field);
                let write = FieldWrite::set(
                    key.clone(),
                    field_value(field, text),
                    me.replaces(record, &key),
                )
                .unwrap();
                me.upsert(record, vec![write]);
            }
            Action::Delete { device, record } => devices[device].delete(record, 1),
            Action::Merge { device, a, b } | Action::Unmerge { device, a, b } if a == b => {
                let _ = device;
            }
            Action::Merge { device, a, b } => devices[device].link(a, b, true),
            Action::Unmerge { device, a, b } => devices[device].link(a, b, false),
            Action::Receive {
                device,
                from,
                count,
            } => deliver(&mut devices, device, from, count),
        }
    }
    devices
}

/// The reference: from the whole set of operations, each field's visible value is the write
/// with the greatest clock among those no other write replaced, no later write of the same
/// device to the same field superseded, and no delete of the record hid; links and groups
/// follow the definition of §8.4 literally (a fixed point of "same group as a linked record").
fn reference(
    ops: &[Operation],
) -> (
    BTreeMap<RecordId, RecordId>,
    BTreeMap<RecordId, BTreeMap<String, String>>,
) {
    let mut deleted: BTreeMap<RecordId, Hlc> = BTreeMap::new();
    let mut replaced: BTreeSet<(RecordId, String, Hlc)> = BTreeSet::new();
    for op in ops {
        match op.kind() {
            OperationKind::Delete => {
                let at = deleted.entry(op.record()).or_insert(op.clock());
                *at = (*at).max(op.clock());
            }
            OperationKind::Upsert(writes) => {
                for write in writes {
                    for clock in write.replaces() {
                        replaced.insert((op.record(), write.key().as_str().to_string(), *clock));
                    }
                }
            }
        }
    }
    // Every surviving write: (record, key) → clock → value (None = removed).
    let mut heads: BTreeMap<(RecordId, String), BTreeMap<Hlc, Option<String>>> = BTreeMap::new();
    for op in ops {
        let OperationKind::Upsert(writes) = op.kind() else {
            continue;
        };
        if deleted.get(&op.record()).is_some_and(|d| op.clock() <= *d) {
            continue;
        }
        for write in writes {
            let name = write.key().as_str().to_string();
            if replaced.contains(&(op.record(), name.clone(), op.clock())) {
                continue;
            }
            let later_own = ops.iter().any(|other| {
                other.record() == op.record()
                    && other.clock().device() == op.clock().device()
                    && other.clock() > op.clock()
                    && matches!(other.kind(), OperationKind::Upsert(w) if w.iter().any(|w| w.key() == write.key()))
            });
            if later_own {
                continue;
            }
            let shown = write.value().map(|v| format!("{v:?}"));
            heads
                .entry((op.record(), name))
                .or_default()
                .insert(op.clock(), shown);
        }
    }
    let visible = |id: RecordId, key: &str| -> bool {
        heads
            .get(&(id, key.to_string()))
            .and_then(|h| h.values().next_back())
            .is_some_and(Option::is_some)
    };
    let ids: Vec<RecordId> = (0..RECORDS).map(record).collect();
    let live = |id: RecordId| {
        heads.iter().any(|((r, key), h)| {
            *r == id
                && !FieldKey::parse(key).unwrap().kind().is_link()
                && h.values().next_back().is_some_and(Option::is_some)
        })
    };
    let linked = |a: RecordId, b: RecordId| {
        a != b
            && visible(a, FieldKey::merged(&b).as_str())
            && visible(b, FieldKey::merged(&a).as_str())
            && !visible(a, FieldKey::distinct(&b).as_str())
            && !visible(b, FieldKey::distinct(&a).as_str())
    };
    // Label every record with the smallest id reachable, until nothing changes.
    let mut label: BTreeMap<RecordId, RecordId> = ids.iter().map(|id| (*id, *id)).collect();
    loop {
        let mut changed = false;
        for a in &ids {
            for b in &ids {
                if linked(*a, *b) && label[b] < label[a] {
                    label.insert(*a, label[b]);
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    let mut survivor = BTreeMap::new();
    for id in &ids {
        let members: Vec<RecordId> = ids
            .iter()
            .filter(|m| label[m] == label[id])
            .copied()
            .collect();
        let chosen = members
            .iter()
            .find(|m| live(**m))
            .or(members.first())
            .copied()
            .unwrap();
        survivor.insert(*id, chosen);
    }
    // The merged contact's visible fields: per key, the greatest head across the members.
    let mut views: BTreeMap<RecordId, BTreeMap<String, String>> = BTreeMap::new();
    for id in &ids {
        if survivor[id] != *id || !ids.iter().any(|m| survivor[m] == *id && live(*m)) {
            continue;
        }
        let mut fields: BTreeMap<String, (Hlc, Option<String>)> = BTreeMap::new();
        for ((r, key), h) in &heads {
            if survivor[r] != *id || FieldKey::parse(key).unwrap().kind().is_link() {
                continue;
            }
            let (clock, value) = h.iter().next_back().unwrap();
            let entry = fields.entry(key.clone()).or_insert((*clock, value.clone()));
            if *clock > entry.0 {
                *entry = (*clock, value.clone());
            }
        }
        views.insert(
            *id,
            fields
                .into_iter()
                .filter_map(|(k, (_, v))| v.map(|v| (k, v)))
                .collect(),
        );
    }
    (survivor, views)
}

/// What a device shows: each record's survivor, and each contact's visible fields.
fn shown(
    state: &ContactSet,
) -> (
    BTreeMap<RecordId, RecordId>,
    BTreeMap<RecordId, BTreeMap<String, String>>,
) {
    let groups: Groups = state.groups();
    let survivor = (0..RECORDS)
        .map(record)
        .map(|id| (id, groups.survivor(&id)))
        .collect();
    let mut views = BTreeMap::new();
    for id in (0..RECORDS).map(record) {
        if !groups.is_survivor(&id) {
            continue;
        }
        let Some(view) = state.merged_record(&groups, &id) else {
            continue;
        };
        if !view.is_live() {
            continue;
        }
        assert_eq!(view.id(), id);
        let fields: BTreeMap<String, String> = view
            .values()
            .filter(|(key, _)| !key.kind().is_link())
            .map(|(key, v)| (key.as_str().to_string(), format!("{v:?}")))
            .collect();
        views.insert(id, fields);
    }
    (survivor, views)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_device_shows_the_groups_and_contacts_of_the_reference(
        actions in proptest::collection::vec(action(), 1..40),
        order in proptest::collection::vec(any::<u32>(), 1..60),
    ) {
        let devices = simulate(&actions);
        let all: Vec<Operation> = devices.iter().flat_map(|d| d.log.clone()).collect();
        let expected = reference(&all);
        // Deliver everything to a fresh replica in a shuffled order, and to every device.
        let mut keyed: Vec<(u32, usize)> =
            (0..all.len()).map(|i| (order[i % order.len()], i)).collect();
        keyed.sort();
        let mut shuffled = ContactSet::new();
        for (_, i) in &keyed {
            shuffled.apply(&all[*i]);
        }
        prop_assert_eq!(&shown(&shuffled), &expected);
        for device in &devices {
            let mut state = device.state.clone();
            state.apply_all(all.iter());
            prop_assert_eq!(&state, &shuffled);
            prop_assert_eq!(&shown(&state), &expected);
        }
    }
}

#[test]
fn concurrent_merges_converge_on_the_smallest_id() {
    let (a, b, c) = (record(0), record(1), record(2));
    let mut devices = simulate(&[]);
    for (n, id) in [a, b, c].into_iter().enumerate() {
        let write = FieldWrite::set(FieldKey::name(), value::text(format!("P{n}")), []).unwrap();
        devices[0].upsert(id, vec![write]);
    }
    let base = devices[0].log.clone();
    for device in &mut devices[1..] {
        device.state.apply_all(base.iter());
    }
    // Device 1 merges B into A while device 2 merges C into B, and device 0 merges A into B.
    devices[1].link(b, a, true);
    devices[2].link(c, b, true);
    devices[0].link(a, b, true);
    let all: Vec<Operation> = devices.iter().flat_map(|d| d.log.clone()).collect();
    let mut forward = ContactSet::new();
    forward.apply_all(all.iter());
    let mut backward = ContactSet::new();
    backward.apply_all(all.iter().rev());
    assert_eq!(forward, backward);
    let groups = forward.groups();
    assert_eq!(groups.members(&c), vec![a, b, c]);
    assert_eq!(groups.survivor(&c), a);
    assert_eq!(forward.merged_contacts().len(), 1);
}

#[test]
fn a_delete_concurrent_with_a_merge_leaves_what_the_survivor_had() {
    let (a, b) = (record(0), record(1));
    let mut devices = simulate(&[]);
    let name = |text: &str| FieldWrite::set(FieldKey::name(), value::text(text), []).unwrap();
    devices[0].upsert(a, vec![name("Ana")]);
    let phone = FieldKey::phone("+34600000001").unwrap();
    let write = FieldWrite::set(phone.clone(), value::phone("+34600000001", ""), []).unwrap();
    devices[0].upsert(b, vec![name("Ana G"), write]);
    let base = devices[0].log.clone();
    devices[1].state.apply_all(base.iter());
    // Device 0 deletes B; device 1, not knowing, merges B into A.
    let floor = devices[0].state.get(&b).and_then(RecordState::latest_clock);
    let clock = devices[0].clock.tick_after(10_000, floor).unwrap();
    let delete = Operation::delete(b, clock);
    devices[0].state.apply(&delete);
    devices[0].log.push(delete);
    devices[1].link(a, b, true);
    let all: Vec<Operation> = devices.iter().flat_map(|d| d.log.clone()).collect();
    for order in [all.clone(), all.iter().rev().cloned().collect()] {
        let mut state = ContactSet::new();
        state.apply_all(order.iter());
        let contacts = state.merged_contacts();
        assert_eq!(contacts.len(), 1, "{contacts:?}");
        assert_eq!(contacts[0].id(), a, "A survives");
        assert_eq!(contacts[0].name(), Some("Ana"));
        assert!(contacts[0].phones().is_empty(), "what came from B is gone");
    }
}

#[test]
fn an_edit_of_a_merged_record_arriving_after_the_merge_shows_on_the_survivor() {
    let (a, b) = (record(0), record(1));
    let mut devices = simulate(&[]);
    let set = |key: FieldKey, text: &str| FieldWrite::set(key, value::text(text), []).unwrap();
    devices[0].upsert(a, vec![set(FieldKey::name(), "Ana")]);
    devices[0].upsert(b, vec![set(FieldKey::name(), "Ana G")]);
    let base = devices[0].log.clone();
    devices[1].state.apply_all(base.iter());
    devices[0].link(a, b, true);
    devices[1].upsert(b, vec![set(FieldKey::company(), "Acme")]);
    let mut state = devices[0].state.clone();
    state.apply_all(devices[1].log.iter());
    let contacts = state.merged_contacts();
    assert_eq!(contacts.len(), 1);
    assert_eq!(contacts[0].id(), a);
    assert_eq!(contacts[0].company(), Some("Acme"));
    assert!(matches!(FieldKey::merged(&a).kind(), FieldKind::Merged));
}
