use super::*;
use crate::ids::DeviceId;
use crate::record::{FieldWrite, value};

fn device(byte: u8) -> DeviceId {
    DeviceId::from_bytes([byte; 16])
}

fn clock(wall_ms: u64, dev: u8) -> Hlc {
    Hlc::new(wall_ms, 0, device(dev))
}

fn id(byte: u8) -> RecordId {
    RecordId::from_bytes([byte; 16])
}

fn set(key: FieldKey, value: proto::FieldValue, replaces: &[Hlc]) -> FieldWrite {
    FieldWrite::set(key, value, replaces.iter().copied()).unwrap()
}

fn upsert(record: u8, at: Hlc, writes: Vec<FieldWrite>) -> Operation {
    Operation::upsert(id(record), at, writes).unwrap()
}

fn name(record: u8, at: Hlc, text: &str, replaces: &[Hlc]) -> Operation {
    upsert(
        record,
        at,
        vec![set(FieldKey::name(), value::text(text), replaces)],
    )
}

#[test]
fn apply_reports_the_record_only_when_its_state_changed() {
    let mut state = ContactSet::new();
    let op = name(1, clock(5, 1), "Ada", &[]);
    assert_eq!(state.apply(&op), Some(id(1)));
    assert_eq!(state.apply(&op), None, "a duplicate changes nothing");
    let edit = name(1, clock(6, 1), "Ada L", &[clock(5, 1)]);
    assert_eq!(state.apply(&edit), Some(id(1)));
    assert_eq!(state.apply(&op), None, "a superseded write changes nothing");
    let empty = Operation::upsert(id(2), clock(7, 1), []).unwrap();
    assert_eq!(state.apply(&empty), None);
    assert!(state.get(&id(2)).is_none(), "no empty record is stored");
    let ops = [edit.clone(), name(3, clock(8, 1), "Bob", &[])];
    assert_eq!(state.apply_all(&ops), BTreeSet::from([id(3)]));
}

#[test]
fn a_removal_hides_the_field_and_the_record_when_it_was_the_last() {
    let mut state = ContactSet::new();
    state.apply(&name(1, clock(5, 1), "Ada", &[]));
    assert!(state.get(&id(1)).unwrap().is_live());
    let remove = FieldWrite::remove(FieldKey::name(), [clock(5, 1)]);
    state.apply(&upsert(1, clock(6, 1), vec![remove]));
    let record = state.get(&id(1)).unwrap();
    assert_eq!(record.value(&FieldKey::name()), None);
    assert!(!record.is_live());
    assert_eq!(state.contact(&id(1)), None);
    assert_eq!(state.contacts().count(), 0);
    assert_eq!(record.replaces(&FieldKey::name()), vec![clock(6, 1)]);
}

#[test]
fn a_concurrent_removal_and_edit_are_a_conflict() {
    let mut state = ContactSet::new();
    let email = FieldKey::email("a@x").unwrap();
    let first = upsert(
        1,
        clock(1, 1),
        vec![set(email.clone(), value::email("a@x", ""), &[])],
    );
    let removed = upsert(
        1,
        clock(5, 1),
        vec![FieldWrite::remove(email.clone(), [clock(1, 1)])],
    );
    let relabelled = value::email("a@x", "work");
    let edited = upsert(
        1,
        clock(4, 2),
        vec![set(email.clone(), relabelled.clone(), &[clock(1, 1)])],
    );
    state.apply_all([&first, &removed, &edited]);
    let record = state.get(&id(1)).unwrap();
    assert!(!record.is_live(), "the removal has the greater clock");
    let conflicts = record.conflicts();
    assert_eq!(conflicts.len(), 1);
    assert_eq!(conflicts[0].key, &email);
    assert_eq!(
        conflicts[0].winner,
        Head {
            clock: clock(5, 1),
            value: None
        }
    );
    assert_eq!(
        conflicts[0].others,
        [Head {
            clock: clock(4, 2),
            value: Some(&relabelled)
        }]
    );
}

#[test]
fn heads_with_equal_values_are_not_a_conflict() {
    let mut state = ContactSet::new();
    state.apply(&name(1, clock(5, 1), "Ada", &[]));
    state.apply(&name(1, clock(5, 2), "Ada", &[]));
    let record = state.get(&id(1)).unwrap();
    assert_eq!(record.field(&FieldKey::name()).unwrap().heads().count(), 2);
    assert!(record.conflicts().is_empty());
}

#[test]
fn a_reused_clock_converges_on_the_greater_value() {
    // Only a faulty device writes two values under one clock; replicas must still agree.
    let a = name(1, clock(5, 1), "Ada", &[]);
    let b = name(1, clock(5, 1), "Bob", &[]);
    let removal = upsert(
        1,
        clock(5, 1),
        vec![FieldWrite::remove(FieldKey::name(), [])],
    );
    let orders = [
        [&a, &b, &removal],
        [&b, &removal, &a],
        [&removal, &a, &b],
        [&removal, &b, &a],
    ];
    let states: Vec<ContactSet> = orders
        .iter()
        .map(|order| {
            let mut state = ContactSet::new();
            state.apply_all(order.iter().copied());
            state
        })
        .collect();
    for state in &states {
        assert_eq!(state, &states[0]);
    }
    let shown = states[0].contact(&id(1)).unwrap();
    let (ada, bob) = (
        value::text("Ada").encode_to_vec(),
        value::text("Bob").encode_to_vec(),
    );
    assert_eq!(shown.name(), Some(if ada > bob { "Ada" } else { "Bob" }));
}

#[test]
fn a_delete_forgets_what_it_hides_and_ignores_older_writes() {
    let mut state = ContactSet::new();
    state.apply(&name(1, clock(5, 1), "Ada", &[]));
    let note = set(FieldKey::note(), value::text("secret"), &[]);
    state.apply(&upsert(1, clock(6, 2), vec![note]));
    state.apply(&name(1, clock(7, 1), "Ada L", &[clock(5, 1)]));
    assert_eq!(
        state.apply(&Operation::delete(id(1), clock(10, 3))),
        Some(id(1))
    );
    let record = state.get(&id(1)).unwrap();
    assert!(
        record.fields().is_empty(),
        "heads and superseded clocks are dropped"
    );
    assert_eq!(record.deleted_at(), Some(clock(10, 3)));
    let wire = record.to_proto().encode_to_vec();
    assert!(!wire.windows(6).any(|w| w == b"secret"), "the note is gone");
    // Late writes at or below the tombstone change nothing.
    assert_eq!(state.apply(&name(1, clock(10, 3), "Late", &[])), None);
    assert_eq!(state.apply(&name(1, clock(9, 9), "Late", &[])), None);
    assert_eq!(state.apply(&Operation::delete(id(1), clock(8, 1))), None);
    assert_eq!(state.get(&id(1)).unwrap().fields().len(), 0);
    assert_eq!(state.len(), 1, "the tombstone stays");
    assert!(!state.is_empty());
    assert_eq!(state.contacts().count(), 0);
}

#[test]
fn latest_clock_covers_heads_superseded_and_tombstones() {
    let mut state = ContactSet::new();
    assert_eq!(state.latest_clock(), None);
    state.apply(&name(1, clock(5, 1), "Ada", &[]));
    state.apply(&Operation::delete(id(2), clock(9, 1)));
    assert_eq!(state.latest_clock(), Some(clock(9, 1)));
    // A write whose only trace is as a superseded clock.
    state.apply(&name(1, clock(20, 2), "Ada", &[clock(15, 3)]));
    state.apply(&name(1, clock(12, 1), "Ada", &[clock(5, 1)]));
    assert_eq!(state.latest_clock(), Some(clock(20, 2)));
    let mut other = ContactSet::new();
    other.apply(&name(3, clock(30, 1), "Old", &[]));
    other.apply(&upsert(
        3,
        clock(31, 1),
        vec![set(FieldKey::name(), value::text("x"), &[clock(30, 1)])],
    ));
    other.apply(&Operation::delete(id(3), clock(25, 1)));
    assert_eq!(other.latest_clock(), Some(clock(31, 1)));
}

#[test]
fn wire_state_is_normalized_on_the_way_in() {
    let head = |at: Hlc, text: &str| proto::StoredWrite {
        clock: Some(at.to_proto()),
        value: Some(value::text(text).encode_to_vec()),
    };
    let wire = proto::RecordState {
        record_id: id(1).as_bytes().to_vec(),
        deleted_at: Some(clock(3, 1).to_proto()),
        fields: vec![
            proto::FieldState {
                key: "name".into(),
                heads: vec![
                    head(clock(2, 1), "hidden"),
                    head(clock(5, 1), "old"),
                    head(clock(6, 1), "new"),
                ],
                superseded: vec![clock(5, 1).to_proto(), clock(1, 1).to_proto()],
            },
            proto::FieldState {
                key: "name".into(),
                heads: vec![head(clock(6, 2), "other")],
                superseded: vec![],
            },
        ],
        extension_fields: vec![],
    };
    let record = RecordState::from_proto(&wire).unwrap();
    let field = record.field(&FieldKey::name()).unwrap();
    let clocks: Vec<Hlc> = field.heads().map(|h| h.clock).collect();
    assert_eq!(clocks, [clock(6, 1), clock(6, 2)]);
    // (5, 1) is implied by its writer's later head (6, 1): nothing left to keep.
    assert!(field.superseded().is_empty(), "{:?}", field.superseded());
    assert_eq!(RecordState::from_proto(&record.to_proto()), Ok(record));
}

fn valid_wire() -> proto::RecordState {
    let mut state = ContactSet::new();
    state.apply(&name(1, clock(5, 1), "Ada", &[clock(1, 2)]));
    state.get(&id(1)).unwrap().to_proto()
}

#[test]
fn stored_record_id_must_be_16_bytes() {
    let mut wire = valid_wire();
    wire.record_id = vec![1; 17];
    assert!(matches!(
        RecordState::from_proto(&wire),
        Err(MergeError::InvalidRecordId(IdLengthError {
            actual: 17,
            ..
        }))
    ));
}

#[test]
fn stored_clocks_must_be_valid() {
    let bad = proto::Hlc {
        wall_ms: Hlc::MAX_WALL_MS + 1,
        counter: 0,
        device_id: vec![1; 16],
    };
    let mut deleted = valid_wire();
    deleted.deleted_at = Some(bad.clone());
    let mut head = valid_wire();
    head.fields[0].heads[0].clock = Some(bad.clone());
    let mut superseded = valid_wire();
    superseded.fields[0].superseded[0] = bad;
    for wire in [deleted, head, superseded] {
        assert!(matches!(
            RecordState::from_proto(&wire),
            Err(MergeError::InvalidClock(
                HlcError::WallTimeOutOfRange { .. }
            ))
        ));
    }
}

#[test]
fn stored_write_needs_a_clock() {
    let mut wire = valid_wire();
    wire.fields[0].heads[0].clock = None;
    let err = RecordState::from_proto(&wire).unwrap_err();
    assert_eq!(
        err,
        MergeError::MissingClock {
            field: FieldKind::Name
        }
    );
    assert_eq!(err.to_string(), "stored name write has no clock");
}

#[test]
fn stored_keys_and_values_are_checked() {
    let mut wire = valid_wire();
    wire.fields[0].key = "Nickname".into();
    assert!(matches!(
        RecordState::from_proto(&wire),
        Err(MergeError::Field(RecordError::UnknownFieldKey { .. }))
    ));
    let mut wire = valid_wire();
    wire.fields[0].heads[0].value = Some(value::date(2000, 1, 1).encode_to_vec());
    let err = RecordState::from_proto(&wire).unwrap_err();
    assert!(matches!(
        err,
        MergeError::Field(RecordError::WrongValueType { .. })
    ));
    assert_eq!(err.to_string(), "name value must be text");
}

#[test]
fn snapshot_errors_name_the_record() {
    let mut broken = valid_wire();
    broken.record_id.clear();
    let snapshot = proto::Snapshot {
        first_seq: 0,
        writer_view: None,
        records: vec![valid_wire(), broken],
        positions: vec![],
    };
    let err = ContactSet::from_snapshot(&snapshot).unwrap_err();
    assert!(matches!(
        &err,
        MergeError::InRecord { index: 1, source }
            if matches!(**source, MergeError::InvalidRecordId(_))
    ));
    assert!(
        err.to_string()
            .starts_with("record 1 of the snapshot: invalid record id")
    );
}

#[test]
fn oversized_or_malformed_snapshot_is_rejected() {
    let bytes = vec![0; MAX_PAYLOAD_BYTES + 1];
    assert_eq!(
        ContactSet::decode_snapshot(&bytes),
        Err(MergeError::SnapshotTooLarge {
            len: MAX_PAYLOAD_BYTES + 1
        })
    );
    assert!(matches!(
        ContactSet::decode_snapshot(&[0x0a, 0x09]),
        Err(MergeError::Decode(_))
    ));
}

#[test]
fn snapshot_round_trips_with_positions() {
    let mut state = ContactSet::new();
    state.apply(&name(1, clock(5, 1), "Ada", &[]));
    state.apply(&name(1, clock(6, 2), "Ada L", &[]));
    state.apply(&Operation::delete(id(2), clock(3, 1)));
    let positions = vec![proto::StreamPosition {
        device_id: vec![1; 16],
        seq: 42,
    }];
    let bytes = state.to_snapshot(positions.clone()).encode_to_vec();
    assert_eq!(ContactSet::decode_snapshot(&bytes), Ok((state, positions)));
}

#[test]
fn duplicate_and_empty_records_in_a_snapshot_are_merged_and_skipped() {
    let mut a = ContactSet::new();
    a.apply(&name(1, clock(5, 1), "Ada", &[]));
    let mut b = ContactSet::new();
    b.apply(&name(1, clock(6, 2), "Bob", &[]));
    let empty = proto::RecordState {
        record_id: id(9).as_bytes().to_vec(),
        ..Default::default()
    };
    let snapshot = proto::Snapshot {
        first_seq: 0,
        writer_view: None,
        records: vec![
            a.get(&id(1)).unwrap().to_proto(),
            empty,
            b.get(&id(1)).unwrap().to_proto(),
        ],
        positions: vec![],
    };
    let mut expected = a.clone();
    expected.merge(&b);
    assert_eq!(ContactSet::from_snapshot(&snapshot), Ok(expected));
}

// --- RecordState::decode: the stored encoding read in place (merge/reader.rs) ---

/// What `RecordState::decode` must equal on every input: prost's decoding, then `from_proto`.
fn decoded_by_prost(bytes: &[u8]) -> Result<RecordState, MergeError> {
    RecordState::from_proto(&proto::RecordState::decode(bytes)?)
}

/// Keys of every shape a stored state holds: single and multi-valued, a link, a custom value,
/// and a kind this version does not know (stored in `extension_fields`, its value opaque).
fn stored_write(field: usize, choice: usize, replaces: Vec<Hlc>) -> FieldWrite {
    let (key, value) = match field {
        0 => (
            FieldKey::name(),
            value::text(["Ada", "Bob", "Cy"][choice % 3]),
        ),
        1 => (FieldKey::company(), value::text(["", "Acme"][choice % 2])),
        2 => (
            FieldKey::email("ada@example.org").unwrap(),
            value::email("ada@example.org", ["", "work"][choice % 2]),
        ),
        3 => (FieldKey::tag("friends").unwrap(), value::tag()),
        4 => (FieldKey::merged(&id(7)), value::tag()),
        5 => (FieldKey::custom("mood").unwrap(), value::text("calm")),
        _ => (
            FieldKey::parse("future/x").unwrap(),
            value::opaque(&[0x0a, 1, choice as u8]),
        ),
    };
    if choice == 3 {
        FieldWrite::remove(key, replaces)
    } else {
        FieldWrite::set(key, value, replaces).unwrap()
    }
}

/// Records built by operations of three devices: heads, removals, superseded clocks, deletes,
/// clocks with a zero wall time or counter (fields prost leaves out).
fn stored_state() -> impl proptest::strategy::Strategy<Value = RecordState> {
    use proptest::prelude::*;
    let clock =
        (0u64..12, 0u8..3).prop_map(|(wall, dev)| Hlc::new(wall, (wall % 3) as u32, device(dev)));
    let operation = (
        clock.clone(),
        0usize..8,
        0usize..4,
        proptest::collection::vec(clock, 0..3),
    );
    (any::<u8>(), proptest::collection::vec(operation, 0..10)).prop_map(|(record, operations)| {
        let record = id(record % 2);
        let mut state = RecordState::new(record);
        for (at, field, choice, replaces) in operations {
            let operation = if field == 7 {
                Operation::delete(record, at)
            } else {
                // A write replaces only earlier clocks.
                let replaces = replaces.into_iter().filter(|r| *r < at).collect();
                Operation::upsert(record, at, [stored_write(field, choice, replaces)]).unwrap()
            };
            state.apply(&operation);
        }
        state
    })
}

/// One change to an encoding: a byte overwritten, inserted or removed, or the rest cut off
/// (also the operation batch reader's tests, `record/tests.rs`).
pub(crate) fn mutate(bytes: &mut Vec<u8>, (at, kind, byte): &(proptest::sample::Index, u8, u8)) {
    if bytes.is_empty() {
        bytes.push(*byte);
        return;
    }
    let at = at.index(bytes.len());
    match kind % 4 {
        0 => bytes[at] = *byte,
        1 => bytes.insert(at, *byte),
        2 => {
            bytes.remove(at);
        }
        _ => bytes.truncate(at),
    }
}

proptest::proptest! {
    #[test]
    fn stored_states_are_read_in_place_as_prost_reads_them(state in stored_state()) {
        let bytes = state.encode_to_vec();
        // The encoding this crate writes takes the reader, never the prost path.
        proptest::prop_assert_eq!(reader::read_record_state(&bytes), Some(state.clone()));
        proptest::prop_assert_eq!(decoded_by_prost(&bytes), Ok(state.clone()));
        proptest::prop_assert_eq!(RecordState::decode(&bytes), Ok(state));
    }

    #[test]
    fn any_changed_encoding_decodes_as_prost_decodes_it(
        state in stored_state(),
        changes in proptest::collection::vec(
            (proptest::prelude::any::<proptest::sample::Index>(), 0u8..4, proptest::prelude::any::<u8>()),
            1..4,
        ),
    ) {
        let mut bytes = state.encode_to_vec();
        for change in &changes {
            mutate(&mut bytes, change);
        }
        proptest::prop_assert_eq!(RecordState::decode(&bytes), decoded_by_prost(&bytes));
    }

    /// Two encodings one after the other are one message to protobuf (repeated fields
    /// appended, `deleted_at` and the clocks merged field by field, the last id kept): valid,
    /// but not in the order this crate writes, so the prost path decides.
    #[test]
    fn concatenated_encodings_decode_as_prost_decodes_them(a in stored_state(), b in stored_state()) {
        let mut bytes = a.encode_to_vec();
        bytes.extend_from_slice(&b.encode_to_vec());
        proptest::prop_assert_eq!(RecordState::decode(&bytes), decoded_by_prost(&bytes));
    }

    /// Moving an operation's keys and values in ([`RecordState::apply_owned`]) gives what
    /// copying them ([`RecordState::apply`]) gives: the same answer after every operation, the
    /// same state (and encoding) after all, from any starting state.
    #[test]
    fn applying_an_owned_operation_is_applying_it_borrowed(
        first in stored_state(),
        steps in proptest::collection::vec((0usize..8, 0usize..4, 0u64..14, 0u8..3, proptest::prelude::any::<bool>(), proptest::prelude::any::<bool>()), 0..12),
    ) {
        let mut borrowed = first.clone();
        let mut owned = first;
        for (field, choice, wall, dev, replace, other_record) in steps {
            let at = Hlc::new(wall, 1, device(dev));
            let replaces: Vec<Hlc> = if replace {
                borrowed
                    .fields()
                    .iter()
                    .nth(field % borrowed.fields().len().max(1))
                    .map(|(_, f)| f.heads().map(|h| h.clock).filter(|c| *c < at).collect())
                    .unwrap_or_default()
            } else {
                Vec::new()
            };
            let record = if other_record { id(7) } else { borrowed.id() };
            let operation = if field == 7 {
                Operation::delete(record, at)
            } else {
                Operation::upsert(record, at, [stored_write(field, choice, replaces)]).unwrap()
            };
            let changed = borrowed.apply(&operation);
            proptest::prop_assert_eq!(owned.apply_owned(operation), changed);
            proptest::prop_assert_eq!(&owned, &borrowed);
        }
        proptest::prop_assert_eq!(owned.encode_to_vec(), borrowed.encode_to_vec());
        proptest::prop_assert_eq!(owned.is_live(), borrowed.is_live());
    }

    /// `is_live` is kept, not walked: after any sequence of applies, merges, absorbs and
    /// decodes (links, removals and deletes included) it is what walking the fields says.
    #[test]
    fn the_kept_liveness_is_the_walked_one_after_any_change(
        first in stored_state(),
        steps in proptest::collection::vec((0u8..4, stored_state(), 0usize..8, 0usize..4, 0u64..14), 0..8),
    ) {
        let mut state = first;
        proptest::prop_assert_eq!(state.is_live(), state.walk_live());
        for (step, other, field, choice, wall) in steps {
            match step {
                0 => {
                    let at = Hlc::new(wall, 1, device((wall % 3) as u8));
                    let replaces = state
                        .fields()
                        .iter()
                        .nth(field % state.fields().len().max(1))
                        .map(|(_, f)| f.heads().map(|h| h.clock).filter(|c| *c < at).collect())
                        .unwrap_or_default();
                    let operation = if field == 7 {
                        Operation::delete(state.id(), at)
                    } else {
                        Operation::upsert(state.id(), at, [stored_write(field, choice, replaces)]).unwrap()
                    };
                    state.apply(&operation);
                }
                1 => {
                    // Built on the same record, so that the join changes something.
                    let mut same = RecordState::new(state.id());
                    same.absorb(&other);
                    state.merge(&same);
                }
                2 => state.absorb(&other),
                _ => state = RecordState::decode(&state.encode_to_vec()).unwrap(),
            }
            proptest::prop_assert_eq!(state.is_live(), state.walk_live());
            let by_prost = decoded_by_prost(&state.encode_to_vec()).unwrap();
            proptest::prop_assert_eq!(by_prost.is_live(), by_prost.walk_live());
        }
    }

    #[test]
    fn arbitrary_bytes_decode_as_prost_decodes_them(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..96)) {
        proptest::prop_assert_eq!(RecordState::decode(&bytes), decoded_by_prost(&bytes));
    }
}

#[test]
fn stored_states_in_another_valid_order_are_decided_by_prost() {
    let mut record = RecordState::new(id(1));
    record.apply(&name(1, clock(5, 1), "Ada", &[clock(1, 2)]));
    record.apply(&upsert(
        1,
        clock(6, 2),
        vec![set(
            FieldKey::parse("future/x").unwrap(),
            value::opaque(&[1]),
            &[],
        )],
    ));
    let wire = record.to_proto();
    // `extension_fields` before `fields`; an unknown field; the same key listed twice.
    let mut reordered = proto::RecordState {
        fields: vec![],
        ..wire.clone()
    }
    .encode_to_vec();
    reordered.extend(
        proto::RecordState {
            fields: wire.fields.clone(),
            ..Default::default()
        }
        .encode_to_vec(),
    );
    let mut unknown = record.encode_to_vec();
    unknown.extend([0x28, 1]); // field 5, varint 1
    let twice = proto::RecordState {
        fields: [wire.fields.clone(), wire.fields.clone()].concat(),
        ..wire.clone()
    }
    .encode_to_vec();
    for bytes in [reordered, unknown, twice] {
        assert_eq!(reader::read_record_state(&bytes), None);
        assert_eq!(RecordState::decode(&bytes), Ok(record.clone()));
    }
}

#[test]
fn a_malformed_stored_state_is_a_typed_error() {
    let bytes = valid_wire().encode_to_vec();
    // Cut short; a length far beyond the input (nothing is allocated for it); a group.
    let mut huge = bytes.clone();
    huge.extend([
        0x1a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
    ]);
    let mut group = bytes.clone();
    group.extend([0x1b]);
    for bad in [&bytes[..bytes.len() - 1], &huge, &group] {
        assert!(matches!(
            RecordState::decode(bad),
            Err(MergeError::Decode(_))
        ));
    }
    // Well-formed protobuf that `from_proto` refuses: the same error from `decode`.
    let mut wire = valid_wire();
    wire.fields[0].key = "Nickname".into();
    let bytes = wire.encode_to_vec();
    assert!(matches!(
        RecordState::decode(&bytes),
        Err(MergeError::Field(RecordError::UnknownFieldKey { .. }))
    ));
}
