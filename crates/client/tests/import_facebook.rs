//! Facebook friends importer: the sample export, the older format, mojibake and bad entries.

use std::path::PathBuf;

use kith_client::import::{FileKind, ImportError, ImportOptions, Provenance, facebook};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/facebook/your_friends.json")
}

fn import(json: &str) -> Result<kith_client::import::ImportReport, ImportError> {
    facebook::import_bytes(json.as_bytes(), &ImportOptions::default())
}

fn since(contact: &kith_client::import::ImportedContact) -> i64 {
    match &contact.provenance {
        Provenance::Facebook(source) => source.friend_since_unix,
        other => panic!("wrong provenance {other:?}"),
    }
}

#[test]
fn sample_export_yields_every_friend_with_names_repaired() {
    let report = facebook::import(&fixture(), &ImportOptions::default()).unwrap();
    assert_eq!(report.contacts.len(), 30);
    assert!(report.skipped.is_empty() && report.dropped.is_empty());
    let names: Vec<&str> = report
        .contacts
        .iter()
        .filter_map(|c| c.name.as_deref())
        .collect();
    assert_eq!(names[0], "Anne-Marie Nasser");
    assert_eq!(names[1], "Seán Nguyen");
    assert!(names.contains(&"Olúwaseun Álvarez"));
    assert!(names.contains(&"Élodie De la Cruz"));
    assert!(names.contains(&"Zoë García"));
    assert!(
        !names.iter().any(|n| n.contains('Ã')),
        "no mojibake left: {names:?}"
    );
    assert_eq!(since(&report.contacts[0]), 1_565_339_085);
    assert_eq!(report.contacts[1].source_identity, "Seán Nguyen|1549151006");
    assert_eq!(
        report.contacts[1].identities(),
        vec!["facebook:Seán Nguyen|1549151006"]
    );
    let keys: Vec<String> = report.contacts[0]
        .field_writes()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, vec!["name", "source/facebook"]);
}

#[test]
fn the_older_friends_key_is_read_too() {
    let report = import(r#"{"friends": [{"name": "Ana Lima", "timestamp": 1300000000}]}"#).unwrap();
    assert_eq!(report.contacts.len(), 1);
    assert_eq!(since(&report.contacts[0]), 1_300_000_000);
}

#[test]
fn mojibake_is_repaired_only_when_it_decodes_as_utf8() {
    let report = import(
        r#"{"friends_v2": [
            {"name": "Jos\u00c3\u00a9", "timestamp": 1},
            {"name": "M\u00fcller", "timestamp": 2},
            {"name": "\u00e5\u00bc\u00a0\u00e4\u00bc\u009f", "timestamp": 3},
            {"name": "已经对", "timestamp": 4}
        ]}"#,
    )
    .unwrap();
    let names: Vec<&str> = report
        .contacts
        .iter()
        .filter_map(|c| c.name.as_deref())
        .collect();
    assert_eq!(names, vec!["José", "Müller", "张伟", "已经对"]);
}

#[test]
fn fields_beyond_name_and_timestamp_are_not_taken() {
    let report = import(
        r#"{"friends_v2": [{"name": "Ana", "timestamp": 5, "contact_info": "secret@example.com", "uri": "x"}]}"#,
    )
    .unwrap();
    assert!(!format!("{report:?}").contains("secret@example.com"));
}

#[test]
fn malformed_entries_are_skipped_with_their_position() {
    let report = import(
        r#"{"friends_v2": [
            {"name": "Ana", "timestamp": 1},
            "not an object",
            {"timestamp": 3},
            {"name": 42, "timestamp": 4},
            {"name": "   ", "timestamp": 5},
            {"name": "Bo", "timestamp": "yesterday"},
            {"name": "Cy", "timestamp": -7},
            {"name": "Di"}
        ]}"#,
    )
    .unwrap();
    let skipped: Vec<usize> = report.skipped.iter().map(|s| s.line).collect();
    assert_eq!(skipped, vec![2, 3, 4, 5]);
    let dropped: Vec<(usize, &str)> = report
        .dropped
        .iter()
        .map(|d| (d.line, d.field.as_str()))
        .collect();
    assert_eq!(dropped, vec![(6, "timestamp"), (7, "timestamp")]);
    let names: Vec<&str> = report
        .contacts
        .iter()
        .filter_map(|c| c.name.as_deref())
        .collect();
    assert_eq!(names, vec!["Ana", "Bo", "Cy", "Di"]);
    assert_eq!(
        since(&report.contacts[1]),
        0,
        "an unknown friend-since is 0"
    );
}

#[test]
fn the_same_friend_twice_is_one_contact() {
    let report = import(
        r#"{"friends_v2": [{"name": "Ana", "timestamp": 1}, {"name": "Ana", "timestamp": 1}, {"name": "Ana", "timestamp": 2}]}"#,
    )
    .unwrap();
    assert_eq!(
        report.contacts.len(),
        2,
        "same name at another time is another friend"
    );
}

#[test]
fn a_csv_file_is_one_wrong_kind_error() {
    let csv = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/linkedin/Connections.csv"),
    )
    .unwrap();
    let err = facebook::import_bytes(&csv, &ImportOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            ImportError::WrongKind {
                expected: FileKind::FacebookFriends,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn json_without_a_friends_list_is_one_wrong_kind_error() {
    for json in [
        r#"{"received_requests_v2": []}"#,
        r#"{"friends_v2": {"name": "x"}}"#,
        r#"[{"name": "Ana", "timestamp": 1}]"#,
        "42",
    ] {
        let err = import(json).unwrap_err();
        assert!(
            matches!(err, ImportError::WrongKind { .. }),
            "{json}: {err:?}"
        );
    }
}

#[test]
fn json_errors_never_quote_the_file() {
    let err = import(r#"{"friends_v2": [{"name": "PRIVATE-NAME", "timestamp": }]}"#).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("line 1"), "{message}");
    assert!(!message.contains("PRIVATE"), "{message}");
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let json = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(import(&json).is_err());
}

#[test]
fn more_friends_than_the_limit_is_one_error() {
    let opts = ImportOptions {
        max_records: 5,
        ..ImportOptions::default()
    };
    let err = facebook::import(&fixture(), &opts).unwrap_err();
    assert!(
        matches!(err, ImportError::TooManyRecords { limit: 5, .. }),
        "{err:?}"
    );
}
