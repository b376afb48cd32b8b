//! Version rules for records (docs/PROTOCOL.md §8.1): what a device does with kinds of data
//! written by a newer version, and how this version writes so that 0.1.0 readers keep going.

use kith_protocol::hlc::Hlc;
use kith_protocol::merge::{ContactSet, RecordState};
use kith_protocol::proto;
use kith_protocol::record::{
    FieldKey, FieldKind, FieldWrite, Operation, OperationKind, decode_batch, encode_batch,
    encode_value, value,
};
use kith_protocol::{DeviceId, RecordId};
use prost::Message;

fn clock(wall_ms: u64, device: u8) -> Hlc {
    Hlc::new(wall_ms, 0, DeviceId::from_bytes([device; 16]))
}

fn record() -> RecordId {
    RecordId::from_bytes([7; 16])
}

/// A `FieldValue` as a newer version encodes a value type this one does not know: field 40,
/// a nested message holding a string.
fn newer_value(text: &str) -> Vec<u8> {
    let mut inner = Vec::new();
    prost::encoding::string::encode(1, &text.to_owned(), &mut inner);
    let mut value = Vec::new();
    prost::encoding::bytes::encode(40, &inner, &mut value);
    value
}

/// The batch a newer device writes: a name (a protocol 1.0 kind) and a meeting and a custom
/// field of a type this version does not know, in the extension list.
fn newer_batch(meeting: &str) -> Vec<u8> {
    let write = |key: &str, value: Vec<u8>| proto::FieldWrite {
        key: key.to_owned(),
        value: Some(value),
        replaces: None,
    };
    let operation = proto::Operation {
        record_id: record().as_bytes().to_vec(),
        clock: Some(clock(1_000, 2).to_proto()),
        kind: Some(proto::operation::Kind::Upsert(proto::Upsert {
            writes: vec![
                write("custom/mood", newer_value("calm")),
                write("name", value::text("Ada").encode_to_vec()),
            ],
            extension_writes: vec![write("meeting/uid-1@example.org", newer_value(meeting))],
        })),
    };
    proto::OperationBatch {
        operations: vec![operation],
        written_at_ms: 0,
        relay_moved: None,
        writer_view: None,
    }
    .encode_to_vec()
}

#[test]
fn newer_field_kinds_are_decoded_and_carried_verbatim() {
    let bytes = newer_batch("standup");
    let ops = decode_batch(&bytes).expect("a newer device's batch decodes");
    let OperationKind::Upsert(writes) = ops[0].kind() else {
        panic!("an upsert")
    };
    let kinds: Vec<FieldKind> = writes.iter().map(|w| w.key().kind()).collect();
    assert_eq!(
        kinds,
        [FieldKind::Custom, FieldKind::Unknown, FieldKind::Name]
    );
    let meeting = &writes[1];
    assert_eq!(meeting.key().as_str(), "meeting/uid-1@example.org");
    assert_eq!(
        encode_value(meeting.value().unwrap()),
        newer_value("standup")
    );
    assert_eq!(
        encode_value(writes[0].value().unwrap()),
        newer_value("calm")
    );
    // Written back, the batch is the same bytes: a relayed or re-encoded write loses nothing.
    assert_eq!(encode_batch(&ops).unwrap(), bytes);
}

#[test]
fn newer_fields_survive_merge_and_snapshots() {
    let ops = decode_batch(&newer_batch("standup")).unwrap();
    let mut set = ContactSet::new();
    set.apply_all(&ops);
    let snapshot = set.to_snapshot(vec![]).encode_to_vec();
    let (restored, _) = ContactSet::decode_snapshot(&snapshot).unwrap();
    assert_eq!(restored, set);
    let state = restored.get(&record()).unwrap();
    let meeting = FieldKey::parse("meeting/uid-1@example.org").unwrap();
    assert_eq!(
        encode_value(state.value(&meeting).unwrap()),
        newer_value("standup")
    );
    // The stored state puts later kinds in `extension_fields`, which 0.1.0 skips.
    let wire = proto::RecordState::decode(state.encode_to_vec().as_slice()).unwrap();
    let keys = |fields: &[proto::FieldState]| -> Vec<String> {
        fields.iter().map(|f| f.key.clone()).collect()
    };
    assert_eq!(keys(&wire.fields), ["custom/mood", "name"]);
    assert_eq!(keys(&wire.extension_fields), ["meeting/uid-1@example.org"]);
    assert_eq!(
        RecordState::from_proto(&wire).unwrap(),
        *state,
        "the borrowed encoding and the prost one agree"
    );
    assert_eq!(state.to_proto().encode_to_vec(), state.encode_to_vec());
    // The contact shows what this release reads, and says who wrote what it cannot.
    let contact = restored.contact(&record()).unwrap();
    assert_eq!(contact.name(), Some("Ada"));
    assert!(
        contact.custom().is_empty(),
        "an unreadable custom value is not shown"
    );
    assert_eq!(
        contact
            .newer_data_from()
            .iter()
            .copied()
            .collect::<Vec<_>>(),
        [DeviceId::from_bytes([2; 16])]
    );
}

#[test]
fn newer_fields_merge_as_registers_whatever_their_value() {
    // Two devices write the meeting at different clocks: the later one wins on every device,
    // in either order, although neither value can be read.
    let later = decode_batch(&newer_batch("retro")).unwrap();
    let meeting = FieldKey::parse("meeting/uid-1@example.org").unwrap();
    let earlier = Operation::upsert(
        record(),
        clock(500, 3),
        [FieldWrite::set(meeting.clone(), value::opaque(&newer_value("standup")), []).unwrap()],
    )
    .unwrap();
    let mut a = ContactSet::new();
    a.apply(&earlier);
    a.apply_all(&later);
    let mut b = ContactSet::new();
    b.apply_all(&later);
    b.apply(&earlier);
    assert_eq!(a, b);
    assert_eq!(
        encode_value(a.get(&record()).unwrap().value(&meeting).unwrap()),
        newer_value("retro")
    );
}

#[test]
fn this_version_writes_later_kinds_where_0_1_0_skips_them() {
    let meeting = FieldKey::parse("meeting/uid-1@example.org").unwrap();
    let op = Operation::upsert(
        record(),
        clock(1_000, 1),
        [
            FieldWrite::set(FieldKey::name(), value::text("Ada"), []).unwrap(),
            FieldWrite::set(meeting, value::opaque(&newer_value("standup")), []).unwrap(),
        ],
    )
    .unwrap();
    let bytes = encode_batch(std::slice::from_ref(&op)).unwrap();
    let wire = proto::OperationBatch::decode(bytes.as_slice()).unwrap();
    let Some(proto::operation::Kind::Upsert(upsert)) = &wire.operations[0].kind else {
        panic!("an upsert")
    };
    assert_eq!(upsert.writes.len(), 1);
    assert_eq!(upsert.writes[0].key, "name");
    assert_eq!(upsert.extension_writes.len(), 1);
    // The prost encoding and the borrowed one agree byte for byte.
    assert_eq!(wire.encode_to_vec(), bytes);
    assert_eq!(
        op.to_proto().encode_to_vec(),
        wire.operations[0].encode_to_vec()
    );
}

#[test]
fn malformed_keys_and_the_opaque_marker_are_still_refused() {
    for key in ["Meeting/x", "meeting x", "1meeting", "", "source/", "a_b"] {
        assert!(FieldKey::parse(key).is_err(), "{key:?} must be refused");
    }
    // A known kind must hold a value this version can read.
    let with_values = |custom: Vec<u8>, name: Vec<u8>| {
        let mut batch = proto::OperationBatch::decode(newer_batch("x").as_slice()).unwrap();
        let Some(proto::operation::Kind::Upsert(upsert)) = &mut batch.operations[0].kind else {
            panic!("an upsert")
        };
        upsert.writes[0].value = Some(custom);
        upsert.writes[1].value = Some(name);
        batch.encode_to_vec()
    };
    let name = || value::text("Ada").encode_to_vec();
    assert!(decode_batch(&with_values(newer_value("calm"), name())).is_ok());
    assert!(decode_batch(&with_values(newer_value("calm"), newer_value("?"))).is_err());
    // The in-memory `opaque` variant is never accepted from the wire, even in `custom/…`.
    let marker = proto::FieldValue {
        value: Some(proto::field_value::Value::Opaque(b"x".to_vec())),
    };
    assert!(decode_batch(&with_values(marker.encode_to_vec(), name())).is_err());
}
