use proptest::prelude::*;

use super::*;
use std::collections::BTreeMap;

use prost::Message;

use crate::contact::Source;
use crate::hlc::Hlc;
use crate::ids::DeviceId;
use crate::ids::RecordId;
use crate::proto;
use crate::proto::field_value::Value;

fn device(byte: u8) -> DeviceId {
    DeviceId::from_bytes([byte; 16])
}

fn clock(wall_ms: u64) -> Hlc {
    Hlc::new(wall_ms, 0, device(1))
}

fn record_id() -> RecordId {
    RecordId::from_bytes([7; 16])
}

fn invalid_key(key: &str) -> KeyProblem {
    match FieldKey::parse(key) {
        Err(RecordError::InvalidFieldKey { problem, .. }) => problem,
        other => panic!("{key:?}: expected an invalid key, got {other:?}"),
    }
}

fn name_op(wall_ms: u64, name: &str) -> Operation {
    let write = FieldWrite::set(FieldKey::name(), value::text(name), []).unwrap();
    Operation::upsert(record_id(), clock(wall_ms), [write]).unwrap()
}

#[test]
fn every_documented_key_parses_and_keeps_its_text() {
    let keys = [
        ("name", FieldKind::Name),
        ("company", FieldKind::Company),
        ("title", FieldKind::Title),
        ("birthday", FieldKind::Birthday),
        ("note", FieldKind::Note),
        ("email/ada@example.org", FieldKind::Email),
        ("phone/+441234567890", FieldKind::Phone),
        ("url/https://example.org/in/ada", FieldKind::Url),
        ("handle/github:AdaL", FieldKind::Handle),
        ("tag/close friends", FieldKind::Tag),
        ("source/linkedin", FieldKind::Source(SourceKind::LinkedIn)),
        ("source/facebook", FieldKind::Source(SourceKind::Facebook)),
        ("source/imessage", FieldKind::Source(SourceKind::IMessage)),
        (
            "source/address-book",
            FieldKind::Source(SourceKind::AddressBook),
        ),
        ("source/vcard", FieldKind::Source(SourceKind::VCard)),
        ("source/calendar", FieldKind::Source(SourceKind::Calendar)),
        ("source/mail", FieldKind::Source(SourceKind::Mail)),
        ("source/twitter", FieldKind::Source(SourceKind::Twitter)),
        ("custom/Favourite colour", FieldKind::Custom),
    ];
    for (text, kind) in keys {
        let key = FieldKey::parse(text).unwrap();
        assert_eq!(key.as_str(), text);
        assert_eq!(key.kind(), kind, "{text}");
    }
    assert_eq!(
        FieldKey::parse("handle/github:AdaL").unwrap().detail(),
        Some("github:AdaL")
    );
    assert_eq!(FieldKey::name().detail(), None);
    assert_eq!(FieldKey::source(SourceKind::VCard).detail(), None);
}

#[test]
fn constructors_normalize() {
    assert_eq!(
        FieldKey::email("  Ada@Example.ORG\n").unwrap().as_str(),
        "email/ada@example.org"
    );
    assert_eq!(
        FieldKey::phone("020 7946 0958").unwrap_err(),
        RecordError::InvalidFieldKey {
            field: FieldKind::Phone,
            problem: KeyProblem::NotE164
        },
        "a national number cannot be normalized without its country",
    );
    assert_eq!(
        FieldKey::phone("+1 (555) 010-9999").unwrap().as_str(),
        "phone/+15550109999"
    );
    assert_eq!(
        FieldKey::handle(" GitHub ", " AdaL ").unwrap().as_str(),
        "handle/github:AdaL"
    );
    assert_eq!(
        FieldKey::url(" https://x.org/a ").unwrap().as_str(),
        "url/https://x.org/a"
    );
    assert_eq!(
        FieldKey::tag(" close friends ").unwrap().as_str(),
        "tag/close friends"
    );
    assert_eq!(FieldKey::custom(" Pet ").unwrap().as_str(), "custom/Pet");
    assert_eq!(
        FieldKey::source(SourceKind::AddressBook).as_str(),
        "source/address-book"
    );
}

#[test]
fn keys_order_as_their_text() {
    let mut keys = [
        FieldKey::tag("a").unwrap(),
        FieldKey::email("b@x").unwrap(),
        FieldKey::name(),
        FieldKey::company(),
    ];
    keys.sort();
    let texts: Vec<&str> = keys.iter().map(FieldKey::as_str).collect();
    assert_eq!(texts, ["company", "email/b@x", "name", "tag/a"]);
}

#[test]
fn field_key_too_long_is_rejected_before_anything_else() {
    let key = format!("custom/{}", "a".repeat(MAX_TEXT_BYTES));
    assert_eq!(
        FieldKey::parse(&key),
        Err(RecordError::FieldKeyTooLong { len: key.len() })
    );
    assert_eq!(
        FieldKey::custom(&"a".repeat(MAX_TEXT_BYTES)),
        Err(RecordError::FieldKeyTooLong { len: key.len() })
    );
    let garbage = "\u{0}".repeat(MAX_TEXT_BYTES + 1);
    assert!(matches!(
        FieldKey::parse(&garbage),
        Err(RecordError::FieldKeyTooLong { .. })
    ));
}

#[test]
fn unknown_key_shows_only_a_short_prefix() {
    let err = FieldKey::parse("alice.smith@example.org").unwrap_err();
    assert_eq!(
        err,
        RecordError::UnknownFieldKey {
            key_prefix: "alice.smith@".into()
        }
    );
    assert!(!err.to_string().contains("example"));
    // A source of a newer version is a key of a kind this version does not know.
    assert_eq!(
        FieldKey::parse("source/myspace").map(|key| key.kind()),
        Ok(FieldKind::Unknown)
    );
    assert_eq!(
        FieldKey::parse("source/MySpace"),
        Err(RecordError::UnknownFieldKey {
            key_prefix: "source/MySpa".into()
        })
    );
    assert!(matches!(
        FieldKey::parse("source"),
        Err(RecordError::UnknownFieldKey { .. })
    ));
    assert!(matches!(
        FieldKey::parse("Name"),
        Err(RecordError::UnknownFieldKey { .. })
    ));
    // Cut at a character boundary: 5 two-byte characters fit in 12 bytes, not 6.5.
    let err = FieldKey::parse(&"é".repeat(20)).unwrap_err();
    assert_eq!(
        err,
        RecordError::UnknownFieldKey {
            key_prefix: "é".repeat(6)
        }
    );
    let err = FieldKey::parse(&format!("a{}", "é".repeat(20))).unwrap_err();
    assert_eq!(
        err,
        RecordError::UnknownFieldKey {
            key_prefix: format!("a{}", "é".repeat(5))
        }
    );
}

#[test]
fn each_key_problem_is_named() {
    use KeyProblem::*;
    let cases = [
        ("name/x", UnexpectedSuffix),
        ("birthday/", UnexpectedSuffix),
        ("email", EmptySuffix),
        ("email/", EmptySuffix),
        ("tag/ friends", NotTrimmed),
        ("custom/pet ", NotTrimmed),
        ("custom/a\u{0}b", ControlCharacter),
        ("tag/a\nb", ControlCharacter),
        ("email/ada @x.org", Whitespace),
        ("url/https://x.org/a b", Whitespace),
        ("handle/github:ada l", Whitespace),
        ("email/Ada@x.org", NotLowercase),
        ("handle/GitHub:ada", NotLowercase),
        ("email/ada.x.org", NotEmailAddress),
        ("phone/441234", NotE164),
        ("phone/+0441234", NotE164),
        ("phone/+", NotE164),
        ("phone/+1234567890123456", NotE164),
        ("phone/+44 1234", NotE164),
        ("handle/github", NotServiceHandle),
        ("handle/:ada", NotServiceHandle),
        ("handle/github:", NotServiceHandle),
        ("handle/git*hub:ada", InvalidService),
        ("handle/gïthub:ada", InvalidService),
    ];
    for (key, problem) in cases {
        assert_eq!(invalid_key(key), problem, "{key:?}");
    }
    assert!(
        FieldKey::parse("phone/+123456789012345").is_ok(),
        "15 digits"
    );
    assert!(FieldKey::parse("handle/x.com_2-b:ada").is_ok());
}

#[test]
fn key_errors_name_the_field_and_problem_only() {
    let err = FieldKey::parse("email/Ada.Lovelace@Example.org").unwrap_err();
    assert_eq!(err.to_string(), "invalid email key: is not lowercase");
    let err = FieldKey::email("ada lovelace@example.org").unwrap_err();
    assert_eq!(err.to_string(), "invalid email key: contains whitespace");
}

#[test]
fn empty_value_is_rejected() {
    let empty = proto::FieldValue { value: None };
    assert_eq!(
        FieldKey::name().check_value(&empty),
        Err(RecordError::EmptyValue {
            field: FieldKind::Name
        })
    );
}

#[test]
fn each_field_takes_only_its_value_type() {
    let wrong = [
        (FieldKey::name(), value::date(1990, 1, 1)),
        (FieldKey::birthday(), value::text("1 Jan")),
        (FieldKey::email("a@x").unwrap(), value::text("a@x")),
        (FieldKey::phone("+1555").unwrap(), value::text("+1555")),
        (FieldKey::url("x.org").unwrap(), value::text("x.org")),
        (FieldKey::handle("x", "a").unwrap(), value::text("a")),
        (FieldKey::tag("a").unwrap(), value::text("a")),
        (
            FieldKey::tag("a").unwrap(),
            proto::FieldValue {
                value: Some(Value::Flag(false)),
            },
        ),
        (FieldKey::source(SourceKind::LinkedIn), value::text("x")),
        (
            FieldKey::source(SourceKind::Facebook),
            Source::VCard(proto::VCardSource { uid: "u".into() }).to_value(),
        ),
    ];
    for (key, value) in wrong {
        assert_eq!(
            key.check_value(&value),
            Err(RecordError::WrongValueType {
                field: key.kind(),
                expected: key.kind().expected_value()
            }),
            "{key}"
        );
    }
    let err = FieldKey::tag("a").unwrap().check_value(&value::text("a"));
    assert_eq!(err.unwrap_err().to_string(), "tag value must be flag true");
    for value in [value::text("x"), value::date(0, 2, 29), value::tag()] {
        assert_eq!(FieldKey::custom("any").unwrap().check_value(&value), Ok(()));
    }
}

#[test]
fn element_values_must_match_their_key() {
    let key = FieldKey::email("ada@example.org").unwrap();
    assert_eq!(
        key.check_value(&value::email("Ada@Example.org", "work")),
        Ok(())
    );
    let err = key
        .check_value(&value::email("bob@example.org", "work"))
        .unwrap_err();
    assert_eq!(
        err,
        RecordError::ValueDoesNotMatchKey {
            field: FieldKind::Email
        }
    );
    assert!(!err.to_string().contains("bob"));
    let phone = FieldKey::phone("+15550109999").unwrap();
    assert_eq!(
        phone.check_value(&value::phone("+1 555 010 9999", "")),
        Ok(())
    );
    assert!(phone.check_value(&value::phone("5550109999", "")).is_err());
    let url = FieldKey::url("https://x.org").unwrap();
    assert!(url.check_value(&value::url("https://y.org", "")).is_err());
    let handle = FieldKey::handle("github", "ada").unwrap();
    assert_eq!(handle.check_value(&value::handle("GitHub", "ada")), Ok(()));
    assert_eq!(
        handle.check_value(&value::handle("github", "Ada")),
        Err(RecordError::ValueDoesNotMatchKey {
            field: FieldKind::Handle
        })
    );
}

#[test]
fn long_strings_anywhere_in_a_value_are_rejected() {
    let long = "x".repeat(MAX_TEXT_BYTES + 1);
    assert_eq!(
        FieldKey::note().check_value(&value::text(long.clone())),
        Err(RecordError::TextTooLong {
            field: FieldKind::Note,
            len: long.len()
        })
    );
    assert!(
        FieldKey::note()
            .check_value(&value::text("x".repeat(MAX_TEXT_BYTES)))
            .is_ok()
    );
    let key = FieldKey::email("a@x").unwrap();
    assert!(matches!(
        key.check_value(&value::email("a@x", long.clone())),
        Err(RecordError::TextTooLong { .. })
    ));
    let linkedin = Source::LinkedIn(proto::LinkedInSource {
        position: long,
        ..Default::default()
    });
    assert!(matches!(
        FieldKey::source(SourceKind::LinkedIn).check_value(&linkedin.to_value()),
        Err(RecordError::TextTooLong { .. })
    ));
}

#[test]
fn dates_must_be_calendar_dates() {
    let birthday = FieldKey::birthday();
    for (year, month, day) in [(2024, 2, 29), (0, 2, 29), (2000, 2, 29), (1999, 12, 31)] {
        assert_eq!(
            birthday.check_value(&value::date(year, month, day)),
            Ok(()),
            "{year}-{month}-{day}"
        );
    }
    for (year, month, day) in [
        (2023, 2, 29),
        (1900, 2, 29),
        (2024, 4, 31),
        (2024, 0, 1),
        (2024, 13, 1),
        (2024, 1, 0),
        (10_000, 1, 1),
    ] {
        assert_eq!(
            birthday.check_value(&value::date(year, month, day)),
            Err(RecordError::InvalidDate {
                field: FieldKind::Birthday
            }),
            "{year}-{month}-{day}"
        );
    }
    let linkedin = Source::LinkedIn(proto::LinkedInSource {
        connected_on: Some(proto::Date::default()),
        ..Default::default()
    });
    assert_eq!(
        FieldKey::source(SourceKind::LinkedIn).check_value(&linkedin.to_value()),
        Err(RecordError::InvalidDate {
            field: FieldKind::Source(SourceKind::LinkedIn)
        })
    );
}

#[test]
fn operation_needs_a_16_byte_record_id() {
    let mut wire = name_op(5, "Ada").to_proto();
    wire.record_id.pop();
    let err = Operation::from_proto(&wire).unwrap_err();
    assert!(matches!(
        err,
        RecordError::InvalidRecordId(IdLengthError { actual: 15, .. })
    ));
}

#[test]
fn operation_needs_a_valid_clock() {
    let mut wire = name_op(5, "Ada").to_proto();
    wire.clock = None;
    assert_eq!(Operation::from_proto(&wire), Err(RecordError::MissingClock));
    let mut wire = name_op(5, "Ada").to_proto();
    if let Some(clock) = wire.clock.as_mut() {
        clock.device_id = vec![1; 17];
    }
    assert!(matches!(
        Operation::from_proto(&wire),
        Err(RecordError::InvalidClock(HlcError::InvalidDeviceId(_)))
    ));
    let mut wire = name_op(5, "Ada").to_proto();
    if let Some(proto::operation::Kind::Upsert(upsert)) = wire.kind.as_mut() {
        upsert.writes[0].replaces = Some(proto::Hlc {
            wall_ms: 1,
            counter: 0,
            device_id: vec![],
        });
    }
    assert!(matches!(
        Operation::from_proto(&wire),
        Err(RecordError::InvalidClock(HlcError::InvalidDeviceId(_)))
    ));
}

#[test]
fn operation_needs_a_kind() {
    let mut wire = name_op(5, "Ada").to_proto();
    wire.kind = None;
    assert_eq!(
        Operation::from_proto(&wire),
        Err(RecordError::MissingOperationKind)
    );
}

#[test]
fn a_key_written_twice_is_rejected() {
    let a = FieldWrite::set(FieldKey::name(), value::text("A"), []).unwrap();
    let b = FieldWrite::remove(FieldKey::name(), []);
    assert_eq!(
        Operation::upsert(record_id(), clock(5), [a, b]),
        Err(RecordError::DuplicateFieldKey {
            field: FieldKind::Name
        })
    );
    // On the wire, repeating a key with the same value is how several clocks are replaced;
    // a different value is an error.
    let mut wire = name_op(5, "Ada").to_proto();
    if let Some(proto::operation::Kind::Upsert(upsert)) = wire.kind.as_mut() {
        let mut other = upsert.writes[0].clone();
        other.value = Some(value::text("Bob").encode_to_vec());
        upsert.writes.push(other);
    }
    assert_eq!(
        Operation::from_proto(&wire),
        Err(RecordError::DuplicateFieldKey {
            field: FieldKind::Name
        })
    );
}

#[test]
fn replacing_several_clocks_uses_one_wire_write_each() {
    let replaced = [clock(1), clock(2), Hlc::new(2, 0, device(9))];
    let write = FieldWrite::set(FieldKey::name(), value::text("Ada"), replaced).unwrap();
    let op = Operation::upsert(record_id(), clock(5), [write]).unwrap();
    let wire = op.to_proto();
    let Some(proto::operation::Kind::Upsert(upsert)) = &wire.kind else {
        panic!("not an upsert");
    };
    assert_eq!(upsert.writes.len(), 3);
    assert!(upsert.writes.iter().all(|w| w.key == "name"));
    assert_eq!(Operation::from_proto(&wire), Ok(op));
}

#[test]
fn a_write_must_replace_only_earlier_clocks() {
    for replaced in [clock(5), clock(6)] {
        let write = FieldWrite::remove(FieldKey::note(), [clock(1), replaced]);
        assert_eq!(
            Operation::upsert(record_id(), clock(5), [write]),
            Err(RecordError::ReplacesNotEarlier {
                field: FieldKind::Note
            })
        );
    }
}

#[test]
fn too_many_writes_are_rejected_as_encoded() {
    let replaces = (0..MAX_WRITES_PER_OPERATION as u64 + 1).map(clock);
    let write = FieldWrite::remove(FieldKey::name(), replaces);
    assert_eq!(
        Operation::upsert(record_id(), clock(1_000_000), [write]),
        Err(RecordError::TooManyWrites {
            count: MAX_WRITES_PER_OPERATION + 1
        })
    );
    let writes = (0..MAX_WRITES_PER_OPERATION)
        .map(|i| FieldWrite::remove(FieldKey::tag(&i.to_string()).unwrap(), []));
    assert!(Operation::upsert(record_id(), clock(1), writes).is_ok());

    let mut wire = name_op(5, "Ada").to_proto();
    if let Some(proto::operation::Kind::Upsert(upsert)) = wire.kind.as_mut() {
        let write = upsert.writes[0].clone();
        upsert.writes = vec![write; MAX_WRITES_PER_OPERATION + 1];
    }
    assert_eq!(
        Operation::from_proto(&wire),
        Err(RecordError::TooManyWrites {
            count: MAX_WRITES_PER_OPERATION + 1
        })
    );
}

#[test]
fn too_many_operations_are_rejected_both_ways() {
    let ops = vec![Operation::delete(record_id(), clock(1)); MAX_OPERATIONS_PER_BATCH + 1];
    assert_eq!(
        encode_batch(&ops),
        Err(RecordError::TooManyOperations {
            count: MAX_OPERATIONS_PER_BATCH + 1
        })
    );
    let wire = proto::OperationBatch {
        operations: ops.iter().map(Operation::to_proto).collect(),
        written_at_ms: 0,
        relay_moved: None,
        writer_view: None,
    };
    assert_eq!(
        decode_batch(&wire.encode_to_vec()),
        Err(RecordError::TooManyOperations {
            count: MAX_OPERATIONS_PER_BATCH + 1
        })
    );
    assert!(encode_batch(&ops[1..]).is_ok());
}

#[test]
fn oversized_batch_is_rejected_before_decoding() {
    let bytes = vec![0xff; MAX_PAYLOAD_BYTES + 1];
    assert_eq!(
        decode_batch(&bytes),
        Err(RecordError::BatchTooLarge {
            len: MAX_PAYLOAD_BYTES + 1
        })
    );
    let note = "x".repeat(MAX_TEXT_BYTES);
    let ops: Vec<Operation> = (0..MAX_PAYLOAD_BYTES / MAX_TEXT_BYTES + 1)
        .map(|i| {
            let write = FieldWrite::set(FieldKey::note(), value::text(&note), []).unwrap();
            Operation::upsert(record_id(), clock(i as u64), [write]).unwrap()
        })
        .collect();
    assert!(matches!(
        encode_batch(&ops),
        Err(RecordError::BatchTooLarge { .. })
    ));
}

#[test]
fn malformed_protobuf_is_a_decode_error() {
    assert!(matches!(
        decode_batch(&[0x0a, 0x05, 0x01]),
        Err(RecordError::Decode(_))
    ));
}

#[test]
fn batch_errors_name_the_operation() {
    let mut wire = proto::OperationBatch {
        operations: vec![name_op(1, "Ada").to_proto(), name_op(2, "Ada").to_proto()],
        written_at_ms: 7,
        relay_moved: None,
        writer_view: None,
    };
    wire.operations[1].clock = None;
    let err = decode_batch(&wire.encode_to_vec()).unwrap_err();
    assert_eq!(
        err,
        RecordError::InOperation {
            index: 1,
            source: Box::new(RecordError::MissingClock)
        }
    );
    assert_eq!(
        err.to_string(),
        "operation 1 of the batch: operation has no clock"
    );
    assert!(std::error::Error::source(&err).is_some());
}

#[test]
fn an_empty_batch_round_trips() {
    assert_eq!(decode_batch(&encode_batch(&[]).unwrap()), Ok(vec![]));
    assert_eq!(decode_batch(&[]), Ok(vec![]));
}

fn text() -> impl Strategy<Value = String> {
    "\\PC{0,8}"
}

fn arb_clock(walls: std::ops::Range<u64>) -> impl Strategy<Value = Hlc> {
    (walls, 0u32..3, 0u8..4).prop_map(|(wall, counter, d)| Hlc::new(wall, counter, device(d)))
}

fn arb_field() -> impl Strategy<Value = (FieldKey, proto::FieldValue)> {
    prop_oneof![
        text().prop_map(|t| (FieldKey::name(), value::text(t))),
        text().prop_map(|t| (FieldKey::note(), value::text(t))),
        (0u32..3000, 1u32..=12, 1u32..=28)
            .prop_map(|(y, m, d)| (FieldKey::birthday(), value::date(y, m, d))),
        ("[a-zA-Z]{1,5}@[a-z]{1,5}\\.org", text()).prop_map(|(address, label)| (
            FieldKey::email(&address).unwrap(),
            value::email(address, label)
        )),
        ("\\+[1-9][0-9]{1,12}", text()).prop_map(|(number, label)| (
            FieldKey::phone(&number).unwrap(),
            value::phone(number, label)
        )),
        ("https://[a-z]{1,6}\\.org/[a-z]{0,4}", text())
            .prop_map(|(url, label)| (FieldKey::url(&url).unwrap(), value::url(url, label))),
        ("[a-z]{1,6}", "[A-Za-z0-9_]{1,8}").prop_map(|(service, handle)| (
            FieldKey::handle(&service, &handle).unwrap(),
            value::handle(service, handle)
        )),
        "[a-z][a-z ]{0,6}[a-z]".prop_map(|tag| (FieldKey::tag(&tag).unwrap(), value::tag())),
        (text(), text(), prop::option::of((1u32..=12, 1u32..=28))).prop_map(
            |(company, position, date)| {
                let source = Source::LinkedIn(proto::LinkedInSource {
                    profile_url: "https://linkedin.example/in/x".into(),
                    connected_on: date.map(|(month, day)| proto::Date {
                        year: 2020,
                        month,
                        day,
                    }),
                    company,
                    position,
                });
                (FieldKey::source(SourceKind::LinkedIn), source.to_value())
            }
        ),
        (any::<u64>(), any::<u64>(), any::<i64>()).prop_map(|(sent, received, first)| {
            let source = Source::IMessage(proto::IMessageSource {
                handle: "+15550100".into(),
                sent,
                received,
                first_unix: first,
                last_unix: first.saturating_add(1),
                group_chats: 2,
            });
            (FieldKey::source(SourceKind::IMessage), source.to_value())
        }),
        ("[A-Za-z]{1,6}", text())
            .prop_map(|(name, t)| (FieldKey::custom(&name).unwrap(), value::text(t))),
    ]
}

fn arb_write() -> impl Strategy<Value = FieldWrite> {
    (
        arb_field(),
        any::<bool>(),
        prop::collection::btree_set(arb_clock(0..1_000), 0..3),
    )
        .prop_map(|((key, value), remove, replaces)| {
            if remove {
                FieldWrite::remove(key, replaces)
            } else {
                FieldWrite::set(key, value, replaces).unwrap()
            }
        })
}

fn arb_operation() -> impl Strategy<Value = Operation> {
    (
        any::<[u8; 16]>(),
        arb_clock(1_000..2_000),
        prop::option::of(prop::collection::vec(arb_write(), 0..6)),
    )
        .prop_map(|(id, clock, writes)| {
            let id = RecordId::from_bytes(id);
            match writes {
                None => Operation::delete(id, clock),
                Some(writes) => {
                    let unique: BTreeMap<FieldKey, FieldWrite> =
                        writes.into_iter().map(|w| (w.key().clone(), w)).collect();
                    Operation::upsert(id, clock, unique.into_values()).unwrap()
                }
            }
        })
}

proptest! {
    #[test]
    fn operation_round_trips_through_proto(op in arb_operation()) {
        prop_assert_eq!(Operation::from_proto(&op.to_proto()), Ok(op));
    }

    #[test]
    fn batch_encoding_is_prosts_byte_for_byte(
        ops in prop::collection::vec(arb_operation(), 0..8),
        written_at_ms in prop_oneof![Just(0u64), any::<u64>()],
    ) {
        let prost_bytes = proto::OperationBatch {
            operations: ops.iter().map(Operation::to_proto).collect(),
            written_at_ms,
            relay_moved: None,
            writer_view: None,
        }
        .encode_to_vec();
        prop_assert_eq!(encode_batch_written_at(&ops, written_at_ms).unwrap(), prost_bytes);
        if written_at_ms == 0 {
            prop_assert_eq!(encode_batch(&ops).unwrap(), encode_batch_written_at(&ops, 0).unwrap());
        }
    }

    #[test]
    fn batches_of_operations_only_concatenate_into_the_encoding_of_all(
        first in prop::collection::vec(arb_operation(), 0..6),
        second in prop::collection::vec(arb_operation(), 0..6),
        written_at_ms in prop_oneof![Just(0u64), any::<u64>()],
    ) {
        let (a, b) = (encode_batch(&first).unwrap(), encode_batch(&second).unwrap());
        prop_assert_eq!(operations_only_count(&a), Some(first.len()));
        prop_assert_eq!(operations_only_count(&b), Some(second.len()));
        let mut joined = [a.as_slice(), b.as_slice()].concat();
        append_written_at(&mut joined, written_at_ms);
        let all: Vec<Operation> = first.iter().chain(&second).cloned().collect();
        prop_assert_eq!(&joined, &encode_batch_written_at(&all, written_at_ms).unwrap());
        // A batch with any other field, or cut short, is not one of operations only.
        if written_at_ms != 0 {
            prop_assert_eq!(operations_only_count(&joined), None);
        }
        if !a.is_empty() {
            prop_assert_eq!(operations_only_count(&a[..a.len() - 1]), None);
        }
    }

    #[test]
    fn record_state_encoding_is_prosts_byte_for_byte(
        ops in prop::collection::vec(arb_operation(), 0..12),
    ) {
        // Every operation on one record: heads, superseded clocks, removals and deletes.
        let id = RecordId::from_bytes([7; 16]);
        let mut state = crate::merge::RecordState::new(id);
        for op in &ops {
            let op = match op.kind() {
                OperationKind::Delete => Operation::delete(id, op.clock()),
                OperationKind::Upsert(writes) => {
                    Operation::upsert(id, op.clock(), writes.clone()).unwrap()
                }
            };
            state.apply(&op);
            prop_assert_eq!(state.encode_to_vec(), state.to_proto().encode_to_vec());
        }
    }

    #[test]
    fn record_state_encoded_into_a_buffer_follows_what_it_held(
        ops in prop::collection::vec(arb_operation(), 0..12),
        held in prop::collection::vec(any::<u8>(), 0..40),
    ) {
        // A sealed record is encoded after its nonce, in the sealed buffer: the bytes after
        // what the buffer held are the encoding, and what it held is untouched.
        let id = RecordId::from_bytes([7; 16]);
        let mut state = crate::merge::RecordState::new(id);
        for op in &ops {
            let op = match op.kind() {
                OperationKind::Delete => Operation::delete(id, op.clock()),
                OperationKind::Upsert(writes) => {
                    Operation::upsert(id, op.clock(), writes.clone()).unwrap()
                }
            };
            state.apply(&op);
            let mut buf = held.clone();
            state.encode_into(&mut buf);
            prop_assert_eq!(&buf[..held.len()], &held[..]);
            prop_assert_eq!(&buf[held.len()..], &state.to_proto().encode_to_vec()[..]);
        }
    }

    #[test]
    fn batch_round_trips_through_bytes(
        ops in prop::collection::vec(arb_operation(), 0..8),
        written_at_ms in any::<u64>(),
    ) {
        let bytes = encode_batch(&ops).unwrap();
        prop_assert_eq!(decode_batch(&bytes), Ok(ops.clone()));
        prop_assert_eq!(decode_batch_written_at(&bytes), Ok((ops.clone(), None)));
        let stamped = encode_batch_written_at(&ops, written_at_ms).unwrap();
        let stated = (written_at_ms != 0).then_some(written_at_ms);
        prop_assert_eq!(decode_batch_written_at(&stamped), Ok((ops.clone(), stated)));
        prop_assert_eq!(decode_batch(&stamped), Ok(ops));
    }

    #[test]
    fn constructed_keys_parse_back(text in "\\PC{0,12}", other in "\\PC{0,6}") {
        let keys = [
            FieldKey::email(&text),
            FieldKey::phone(&text),
            FieldKey::url(&text),
            FieldKey::handle(&other, &text),
            FieldKey::tag(&text),
            FieldKey::custom(&text),
        ];
        for key in keys.into_iter().flatten() {
            prop_assert_eq!(FieldKey::parse(key.as_str()), Ok(key.clone()));
        }
    }

    #[test]
    fn parsed_keys_are_their_own_normal_form(key in "[a-z]{1,8}(/\\PC{0,10})?") {
        if let Ok(parsed) = FieldKey::parse(&key) {
            prop_assert_eq!(parsed.as_str(), key.as_str());
            let rebuilt = match (parsed.kind(), parsed.detail()) {
                (FieldKind::Email, Some(d)) => FieldKey::email(d),
                (FieldKind::Url, Some(d)) => FieldKey::url(d),
                (FieldKind::Tag, Some(d)) => FieldKey::tag(d),
                (FieldKind::Custom, Some(d)) => FieldKey::custom(d),
                _ => Ok(parsed.clone()),
            };
            prop_assert_eq!(rebuilt, Ok(parsed));
        }
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let _ = decode_batch(&bytes);
    }

    #[test]
    fn decoding_corrupted_batches_never_panics(
        ops in prop::collection::vec(arb_operation(), 1..4),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut bytes = encode_batch(&ops).unwrap();
        for (index, byte) in flips {
            let i = index.index(bytes.len());
            bytes[i] ^= byte;
        }
        if let Ok(decoded) = decode_batch(&bytes) {
            // Whatever decodes is valid: it encodes again.
            prop_assert!(encode_batch(&decoded).is_ok());
        }
    }
}

#[test]
fn concurrent_histories_are_joined_not_conflicting() {
    use crate::history::{join_mail, mail_message_hash, sketch_count, sketch_insert};
    use crate::merge::ContactSet;
    let history = |messages: &[&str]| {
        let mut mail = proto::MailSource::default();
        for message in messages {
            let mut one = proto::MailSource::default();
            let mut sent = proto::CountSketch::default();
            sketch_insert(&mut sent, mail_message_hash(message));
            one.sent = Some(sent);
            mail = join_mail(&mail, &one);
        }
        proto::FieldValue {
            value: Some(Value::Mail(mail)),
        }
    };
    let key = FieldKey::source(SourceKind::Mail);
    // Two devices import overlapping mailboxes without seeing each other's write.
    let a = FieldWrite::set(key.clone(), history(&["<1@x>", "<2@x>"]), []).unwrap();
    let b = FieldWrite::set(key.clone(), history(&["<2@x>", "<3@x>"]), []).unwrap();
    let op_a = Operation::upsert(record_id(), Hlc::new(5, 0, device(1)), [a]).unwrap();
    let op_b = Operation::upsert(record_id(), Hlc::new(6, 0, device(2)), [b]).unwrap();
    for order in [[&op_a, &op_b], [&op_b, &op_a]] {
        let mut set = ContactSet::new();
        for op in order {
            set.apply(op);
        }
        let contact = set.contact(&record_id()).unwrap();
        let [Source::Mail(mail)] = contact.sources() else {
            panic!("{:?}", contact.sources())
        };
        assert_eq!(
            sketch_count(mail.sent.as_ref().unwrap()),
            3,
            "message 2 counts once"
        );
    }
}

#[test]
fn histories_beyond_their_bounds_are_rejected() {
    let sketch = proto::CountSketch {
        hashes: (0..=crate::history::SKETCH_K as u64).collect(),
        saturated: false,
    };
    let too_big = proto::FieldValue {
        value: Some(Value::Mail(proto::MailSource {
            sent: Some(sketch),
            ..Default::default()
        })),
    };
    let unsorted = proto::FieldValue {
        value: Some(Value::Mail(proto::MailSource {
            received: Some(proto::CountSketch {
                hashes: vec![2, 1],
                saturated: false,
            }),
            ..Default::default()
        })),
    };
    for value in [too_big, unsorted] {
        assert_eq!(
            FieldKey::source(SourceKind::Mail).check_value(&value),
            Err(RecordError::HistoryOutOfBounds {
                field: FieldKind::Source(SourceKind::Mail)
            })
        );
    }
    let wrong_type = value::text("x");
    assert!(
        FieldKey::source(SourceKind::Calendar)
            .check_value(&wrong_type)
            .is_err()
    );
}

#[test]
fn contact_view_shows_every_kind_of_field() {
    use crate::merge::ContactSet;
    let linkedin = Source::LinkedIn(proto::LinkedInSource {
        profile_url: "https://linkedin.example/in/ada".into(),
        ..Default::default()
    });
    let book = Source::AddressBook(proto::AddressBookSource {
        name: "Ada L".into(),
    });
    let writes = [
        FieldWrite::set(FieldKey::name(), value::text("Ada"), []),
        FieldWrite::set(FieldKey::company(), value::text("Engines"), []),
        FieldWrite::set(FieldKey::title(), value::text("Analyst"), []),
        FieldWrite::set(FieldKey::birthday(), value::date(1815, 12, 10), []),
        FieldWrite::set(FieldKey::note(), value::text("met at a salon"), []),
        FieldWrite::set(FieldKey::email("b@x").unwrap(), value::email("B@x", ""), []),
        FieldWrite::set(
            FieldKey::email("a@x").unwrap(),
            value::email("a@x", "home"),
            [],
        ),
        FieldWrite::set(
            FieldKey::phone("+1555").unwrap(),
            value::phone("+1555", ""),
            [],
        ),
        FieldWrite::set(FieldKey::url("x.org").unwrap(), value::url("x.org", ""), []),
        FieldWrite::set(
            FieldKey::handle("gh", "ada").unwrap(),
            value::handle("gh", "ada"),
            [],
        ),
        FieldWrite::set(FieldKey::tag("friend").unwrap(), value::tag(), []),
        Ok(FieldWrite::remove(FieldKey::tag("gone").unwrap(), [])),
        FieldWrite::set(
            FieldKey::source(SourceKind::LinkedIn),
            linkedin.to_value(),
            [],
        ),
        FieldWrite::set(
            FieldKey::source(SourceKind::AddressBook),
            book.to_value(),
            [],
        ),
        FieldWrite::set(FieldKey::custom("pet").unwrap(), value::date(0, 1, 2), []),
    ];
    let writes: Vec<FieldWrite> = writes.into_iter().map(Result::unwrap).collect();
    let op = Operation::upsert(record_id(), clock(1), writes).unwrap();
    let mut set = ContactSet::new();
    set.apply(&op);
    let contact = set.contact(&record_id()).unwrap();
    assert_eq!(contact.id(), record_id());
    assert_eq!(contact.name(), Some("Ada"));
    assert_eq!(contact.company(), Some("Engines"));
    assert_eq!(contact.title(), Some("Analyst"));
    assert_eq!(contact.note(), Some("met at a salon"));
    assert_eq!(
        contact.birthday(),
        Some(&proto::Date {
            year: 1815,
            month: 12,
            day: 10
        })
    );
    let emails: Vec<&str> = contact
        .emails()
        .iter()
        .map(|e| e.address.as_str())
        .collect();
    assert_eq!(emails, ["a@x", "B@x"], "by key, original case kept");
    assert_eq!(contact.phones().len(), 1);
    assert_eq!(contact.urls().len(), 1);
    assert_eq!(contact.handles()[0].handle, "ada");
    assert_eq!(contact.tags(), ["friend"], "a removed tag is not shown");
    assert_eq!(contact.sources(), [book, linkedin]);
    assert_eq!(contact.custom().get("pet"), Some(&value::date(0, 1, 2)));
}

// --- decode_batch_parts: the writers' encoding read in place (record/reader.rs) ---

/// A batch as writers seal it: operations, a stated wall clock, the writer's view appended as
/// field 4, and sometimes a relay-move notice (field 3, which `kith relay move` sends alone).
fn arb_batch() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(arb_operation(), 0..6),
        prop_oneof![Just(0u64), any::<u64>()],
        any::<bool>(),
        prop::option::of(("[a-z.:0-9]{0,12}", prop::collection::vec(any::<u8>(), 0..3))),
        prop::collection::vec((any::<u8>(), 0u64..9), 0..3),
    )
        .prop_map(|(ops, written_at_ms, with_view, moved, heads)| {
            let mut bytes = proto::OperationBatch {
                operations: ops.iter().map(Operation::to_proto).collect(),
                written_at_ms,
                relay_moved: moved.map(|(address, pin)| proto::RelayMoved {
                    from_address: address.clone(),
                    from_cert_sha256: pin,
                    to_address: address,
                    to_cert_sha256: vec![],
                }),
                writer_view: None,
            }
            .encode_to_vec();
            if with_view {
                let view = proto::WriterView {
                    roster_version: 3,
                    roster_hash: vec![9; 32],
                    heads: heads
                        .into_iter()
                        .map(|(device, seq)| proto::StreamPosition {
                            device_id: vec![device; 16],
                            seq,
                        })
                        .collect(),
                };
                prost::encoding::message::encode(4, &view, &mut bytes);
            }
            bytes
        })
}

proptest! {
    #[test]
    fn sealed_batches_are_read_in_place_as_prost_reads_them(bytes in arb_batch()) {
        let by_prost = decode_batch_parts_with_prost(&bytes);
        prop_assert!(by_prost.is_ok());
        // The encoding writers produce takes the reader, never the prost path.
        prop_assert_eq!(reader::read_batch(&bytes).ok_or(()), by_prost.clone().map_err(|_| ()));
        prop_assert_eq!(decode_batch_parts(&bytes), by_prost);
    }

    #[test]
    fn any_changed_batch_decodes_as_prost_decodes_it(
        bytes in arb_batch(),
        changes in prop::collection::vec((any::<prop::sample::Index>(), 0u8..4, any::<u8>()), 1..4),
    ) {
        let mut bytes = bytes;
        for change in &changes {
            crate::merge::tests::mutate(&mut bytes, change);
        }
        prop_assert_eq!(decode_batch_parts(&bytes), decode_batch_parts_with_prost(&bytes));
    }

    /// Two batches one after the other are one message to protobuf (operations appended, the
    /// later clock, notice and view kept or merged): valid, but not in the order writers
    /// produce unless the first holds operations only, so mostly the prost path decides.
    #[test]
    fn concatenated_batches_decode_as_prost_decodes_them(a in arb_batch(), b in arb_batch()) {
        let bytes = [a, b].concat();
        prop_assert_eq!(decode_batch_parts(&bytes), decode_batch_parts_with_prost(&bytes));
    }

    #[test]
    fn arbitrary_bytes_decode_as_batches_as_prost_decodes_them(bytes in prop::collection::vec(any::<u8>(), 0..96)) {
        prop_assert_eq!(decode_batch_parts(&bytes), decode_batch_parts_with_prost(&bytes));
    }
}

#[test]
fn batches_in_another_valid_order_are_decided_by_prost() {
    let ops = vec![
        name_op(5, "Ada"),
        Operation::delete(RecordId::from_bytes([8; 16]), clock(6)),
    ];
    let wire: Vec<proto::Operation> = ops.iter().map(Operation::to_proto).collect();
    let batch = |operations: Vec<proto::Operation>, written_at_ms| {
        proto::OperationBatch {
            operations,
            written_at_ms,
            relay_moved: None,
            writer_view: None,
        }
        .encode_to_vec()
    };
    // The clock before the operations; an unknown field; the clock stated twice (the last
    // counts); a delete carrying an unknown field.
    let clock_first = [batch(vec![], 7), batch(wire.clone(), 0)].concat();
    let mut unknown = batch(wire.clone(), 7);
    unknown.extend([0x28, 1]); // field 5, varint 1
    let mut twice = batch(wire.clone(), 1);
    twice.extend(batch(vec![], 7));
    let mut odd_delete = Vec::new();
    prost::encoding::message::encode(1, &wire[0], &mut odd_delete);
    let delete_op = wire[1].encode_to_vec();
    // The delete's empty `Delete` (field 4, length 0) replaced by one holding field 1 = 1.
    let op = [&delete_op[..delete_op.len() - 2], &[0x22, 2, 0x08, 1]].concat();
    prost::encoding::encode_key(
        1,
        prost::encoding::WireType::LengthDelimited,
        &mut odd_delete,
    );
    prost::encoding::encode_varint(op.len() as u64, &mut odd_delete);
    odd_delete.extend(&op);
    for bytes in [&clock_first, &unknown, &twice, &odd_delete] {
        assert_eq!(reader::read_batch(bytes), None, "{bytes:?}");
        assert_eq!(
            decode_batch_parts(bytes),
            decode_batch_parts_with_prost(bytes)
        );
        assert!(decode_batch_parts(bytes).is_ok());
    }
    assert_eq!(decode_batch_written_at(&twice), Ok((ops.clone(), Some(7))));
    assert_eq!(decode_batch(&odd_delete), Ok(ops));
}
