//! iMessage (`chat.db`) and Contacts (`AddressBook-v22.abcddb`) importers: aggregate counts
//! only, message content never read, databases never modified.

use std::path::{Path, PathBuf};

use kith_client::import::{
    FileKind, ImportError, ImportOptions, ImportReport, ImportedContact, Provenance, Region,
    address_book, imessage,
};
use kith_protocol::proto;
use kith_testkit::apple_db::sqlite_file;
use rusqlite::Connection;
use sha2::{Digest, Sha256};

mod support;
use support::find;

/// The marker the sample `chat.db` holds in every message text.
const FIXTURE_MARKER: &str = "CANARY-MESSAGE-BODY-7f3a9c";
/// The marker our own databases plant in every private column.
const MARKER: &str = "PRIVATE-MARKER-91c2e4";

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/imessage")
}

fn stats(contact: &ImportedContact) -> &proto::IMessageSource {
    match &contact.provenance {
        Provenance::IMessage(source) => source,
        other => panic!("wrong provenance {other:?}"),
    }
}

fn sha256(path: &Path) -> Vec<u8> {
    Sha256::digest(std::fs::read(path).unwrap()).to_vec()
}

/// Everything the importer hands back, as text, for marker searches.
fn everything(report: &ImportReport) -> String {
    let mut out = format!("{report:?}");
    for contact in &report.contacts {
        out.push_str(&format!(
            "{:?}{:?}",
            contact.field_writes(),
            contact.identities()
        ));
    }
    out
}

/// Copies a fixture into a fresh writable directory.
fn writable_copy(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::copy(fixtures().join(name), &path).unwrap();
    (dir, path)
}

#[test]
fn sample_chat_db_gives_counts_and_dates_per_handle() {
    let report =
        imessage::import(&fixtures().join("chat.db"), None, &ImportOptions::default()).unwrap();
    assert_eq!(report.contacts.len(), 20);
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);

    let anne = find(&report, "anne-marie.nasser0@example.com");
    assert_eq!(
        stats(anne),
        &proto::IMessageSource {
            handle: "anne-marie.nasser0@example.com".into(),
            sent: 28,
            received: 25,
            first_unix: 1_548_962_864,
            last_unix: 1_721_698_598,
            group_chats: 1,
        }
    );
    assert_eq!(anne.emails[0].address, "anne-marie.nasser0@example.com");
    assert_eq!(anne.name, None, "no address book, no name");

    let sean = stats(find(&report, "+14155551001"));
    assert_eq!((sean.sent, sean.received, sean.group_chats), (2, 4, 1));
    let sofia = stats(find(&report, "+14155551003"));
    assert_eq!((sofia.sent, sofia.received, sofia.group_chats), (27, 27, 0));
    assert_eq!(
        (sofia.first_unix, sofia.last_unix),
        (1_547_245_488, 1_725_841_283)
    );
}

#[test]
fn sample_message_text_appears_nowhere_in_the_result() {
    let report =
        imessage::import(&fixtures().join("chat.db"), None, &ImportOptions::default()).unwrap();
    assert!(!everything(&report).contains(FIXTURE_MARKER));
    assert!(!everything(&report).contains("private words"));
}

#[test]
fn address_book_names_handles_written_in_any_notation() {
    let report = imessage::import(
        &fixtures().join("chat.db"),
        Some(&fixtures().join("AddressBook-v22.abcddb")),
        &ImportOptions::default(),
    )
    .unwrap();
    // The address book stores this number as "(415) 555-1001"; chat.db as "+14155551001".
    let sean = find(&report, "+14155551001");
    assert_eq!(sean.name.as_deref(), Some("Seán Nguyen"));
    assert_eq!(
        sean.address_book,
        Some(proto::AddressBookSource {
            name: "Seán Nguyen".into()
        })
    );
    let keys: Vec<String> = sean.field_writes().into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        keys,
        vec![
            "name",
            "phone/+14155551001",
            "source/imessage",
            "source/address-book"
        ]
    );
    assert_eq!(sean.identities(), vec!["phone:+14155551001"]);
    let anne = find(&report, "anne-marie.nasser0@example.com");
    assert_eq!(anne.name.as_deref(), Some("Anne-Marie Nasser"));
    // Handles 17 and 20 are numbers the address book knows; all 20 handles get a name.
    assert_eq!(
        report.contacts.iter().filter(|c| c.name.is_some()).count(),
        20
    );
}

#[test]
fn address_book_alone_gives_one_contact_per_named_card() {
    let report = address_book::import(
        &fixtures().join("AddressBook-v22.abcddb"),
        &ImportOptions::default(),
    )
    .unwrap();
    assert_eq!(report.contacts.len(), 20);
    let sean = &report.contacts[1];
    assert_eq!(sean.name.as_deref(), Some("Seán Nguyen"));
    assert_eq!(sean.phones[0].e164, "+14155551001");
    assert_eq!(sean.emails[0].address, "se-n.nguyen1@example.org");
    assert_eq!(sean.source_identity, "+14155551001");
    assert!(
        !format!("{report:?}").contains("Pied Piper"),
        "the organization is never read"
    );
}

#[test]
fn importing_never_modifies_the_databases() {
    let (_dir, chat) = writable_copy("chat.db");
    let (_dir2, book) = writable_copy("AddressBook-v22.abcddb");
    let before = (sha256(&chat), sha256(&book));
    let mtime = std::fs::metadata(&chat).unwrap().modified().unwrap();
    imessage::import(&chat, Some(&book), &ImportOptions::default()).unwrap();
    assert_eq!((sha256(&chat), sha256(&book)), before);
    assert_eq!(std::fs::metadata(&chat).unwrap().modified().unwrap(), mtime);
    let leftovers: Vec<_> = std::fs::read_dir(chat.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        leftovers.len(),
        1,
        "no journal or WAL file created: {leftovers:?}"
    );
}

/// Nanoseconds since 2001 of `unix` seconds.
fn ns(unix: i64) -> i64 {
    (unix - 978_307_200) * 1_000_000_000
}

/// A `chat.db` with a marker in every private column:
/// - +14155550100 over iMessage (handle 1) and SMS (handle 2, written `(415) 555-0100`);
/// - friend@example.com (handle 3, written with capitals);
/// - a business-chat handle (4) that is neither phone nor e-mail;
/// - +14155550177 (handle 5) only in group chats.
fn build_chat_db(conn: &Connection) {
    conn.execute_batch(kith_testkit::apple_db::CHAT_DB_SCHEMA)
        .unwrap();
    for (rowid, id, service) in [
        (1, "+14155550100", "iMessage"),
        (2, "(415) 555-0100", "SMS"),
        (3, "Friend@Example.com", "iMessage"),
        (4, "urn:biz:0000", "iMessage"),
        (5, "+14155550177", "iMessage"),
    ] {
        conn.execute(
            "INSERT INTO handle (ROWID, id, service) VALUES (?1, ?2, ?3)",
            rusqlite::params![rowid, id, service],
        )
        .unwrap();
    }
    // chat 1: 1:1 iMessage; 2: 1:1 SMS; 3: 1:1 e-mail; 4, 5: groups; 6: 1:1 business.
    for (rowid, style, handles) in [
        (1, 45, vec![1]),
        (2, 45, vec![2]),
        (3, 45, vec![3]),
        (4, 43, vec![1, 3, 5]),
        (5, 43, vec![2, 5]),
        (6, 45, vec![4]),
    ] {
        conn.execute(
            "INSERT INTO chat (ROWID, guid, style, display_name) VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![rowid, format!("chat{rowid}"), style, MARKER],
        )
        .unwrap();
        for h in handles {
            conn.execute(
                "INSERT INTO chat_handle_join VALUES (?1, ?2)",
                rusqlite::params![rowid, h],
            )
            .unwrap();
        }
    }
    // (chat, handle, from_me, date, associated_message_type, item_type)
    let messages: Vec<(i64, i64, i64, i64, i64, i64)> = vec![
        (1, 1, 0, ns(1_704_067_200), 0, 0),    // 2024-01-01 received
        (1, 1, 0, ns(1_704_153_600), 0, 0),    // received
        (1, 1, 1, ns(1_706_745_600), 0, 0),    // 2024-02-01 sent (last)
        (1, 1, 1, ns(1_705_000_000), 0, 0),    // sent
        (1, 1, 0, ns(1_710_000_000), 2000, 0), // tapback: not counted, not dated
        (1, 1, 0, ns(1_720_000_000), 0, 1),    // group event: not counted
        (2, 2, 0, 600_000_000, 0, 0),          // SMS, seconds (old macOS): first
        (2, 0, 1, 600_000_100, 0, 0),          // SMS sent, handle_id 0 as Messages writes it
        (3, 3, 0, ns(1_650_000_000), 0, 0),    // e-mail received
        (3, 3, 0, 0, 0, 0),                    // no date: counted, not dated
        (4, 1, 0, ns(1_690_000_000), 0, 0),    // group message: not a 1:1 count
        (4, 5, 0, ns(1_690_000_100), 0, 0),
        (6, 4, 0, ns(1_690_000_200), 0, 0),
    ];
    for (i, (chat, handle, from_me, date, associated, item_type)) in
        messages.into_iter().enumerate()
    {
        let rowid = i as i64 + 1;
        conn.execute(
            "INSERT INTO message (ROWID, guid, text, handle_id, subject, attributedBody, date,
               is_from_me, associated_message_type, item_type, group_title)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            rusqlite::params![
                rowid,
                format!("guid-{rowid}"),
                format!("{MARKER} text {rowid}"),
                handle,
                format!("{MARKER} subject"),
                format!("streamtyped {MARKER} body").into_bytes(),
                date,
                from_me,
                associated,
                item_type,
                MARKER,
            ],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO chat_message_join VALUES (?1, ?2, ?3)",
            rusqlite::params![chat, rowid, date],
        )
        .unwrap();
    }
    conn.execute(
        "INSERT INTO attachment VALUES (1, ?1, ?1)",
        rusqlite::params![format!("~/Library/Messages/Attachments/{MARKER}.heic")],
    )
    .unwrap();
    conn.execute("INSERT INTO message_attachment_join VALUES (1, 1)", [])
        .unwrap();
}

#[test]
fn counts_follow_the_rules_and_private_columns_stay_unread() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.db");
    build_chat_db(&Connection::open(&path).unwrap());

    let report = imessage::import(&path, None, &ImportOptions::default()).unwrap();
    assert!(
        !everything(&report).contains(MARKER),
        "a private column leaked"
    );

    let identities: Vec<&str> = report
        .contacts
        .iter()
        .map(|c| c.source_identity.as_str())
        .collect();
    assert_eq!(
        identities,
        vec!["+14155550100", "+14155550177", "friend@example.com"]
    );
    // iMessage and SMS handles of one number are one person.
    assert_eq!(
        stats(&report.contacts[0]),
        &proto::IMessageSource {
            handle: "+14155550100".into(),
            sent: 3,
            received: 3,
            first_unix: 600_000_000 + 978_307_200,
            last_unix: 1_706_745_600,
            group_chats: 2,
        }
    );
    assert_eq!(
        stats(&report.contacts[1]),
        &proto::IMessageSource {
            handle: "+14155550177".into(),
            sent: 0,
            received: 0,
            first_unix: 0,
            last_unix: 0,
            group_chats: 2,
        }
    );
    let friend = stats(&report.contacts[2]);
    assert_eq!(
        (friend.sent, friend.received, friend.group_chats),
        (0, 2, 1)
    );
    assert_eq!(
        (friend.first_unix, friend.last_unix),
        (1_650_000_000, 1_650_000_000)
    );

    assert_eq!(report.skipped.len(), 1);
    assert_eq!(report.skipped[0].line, 4, "the business handle, by ROWID");
}

#[test]
fn a_database_messages_has_open_in_wal_mode_is_read_without_being_modified() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.db");
    let writer = Connection::open(&path).unwrap();
    writer.pragma_update(None, "journal_mode", "wal").unwrap();
    writer.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
    build_chat_db(&writer);
    // The rows are in chat.db-wal, not yet in chat.db, and the writer keeps the database open.
    let wal = dir.path().join("chat.db-wal");
    assert!(std::fs::metadata(&wal).unwrap().len() > 0);
    let before = (sha256(&path), sha256(&wal));

    let report = imessage::import(&path, None, &ImportOptions::default()).unwrap();
    assert_eq!(report.contacts.len(), 3, "rows still in the WAL are seen");
    assert_eq!((sha256(&path), sha256(&wal)), before);

    // The writer is unaffected and can go on writing.
    writer
        .execute(
            "INSERT INTO handle (id, service) VALUES ('+14155550199', 'SMS')",
            [],
        )
        .unwrap();
}

#[test]
fn the_wrong_database_is_one_wrong_kind_error() {
    let opts = ImportOptions::default();
    let err =
        imessage::import(&fixtures().join("AddressBook-v22.abcddb"), None, &opts).unwrap_err();
    assert!(
        matches!(
            err,
            ImportError::WrongKind {
                expected: FileKind::MessagesDatabase,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("table"), "{err}");

    let err = address_book::load(&fixtures().join("chat.db"), &opts).unwrap_err();
    assert!(
        matches!(
            err,
            ImportError::WrongKind {
                expected: FileKind::ContactsDatabase,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn a_file_that_is_not_sqlite_is_one_wrong_kind_error() {
    let dir = tempfile::tempdir().unwrap();
    let opts = ImportOptions::default();
    let text = dir.path().join("contacts.vcf");
    std::fs::write(&text, "BEGIN:VCARD\r\nEND:VCARD\r\n").unwrap();
    let empty = dir.path().join("empty.db");
    std::fs::write(&empty, "").unwrap();
    let mut fake = b"SQLite format 3\0".to_vec();
    fake.extend(std::iter::repeat_n(0xA5u8, 4096));
    let corrupt = dir.path().join("corrupt.db");
    std::fs::write(&corrupt, &fake).unwrap();
    for path in [&text, &empty, &dir.path().to_path_buf()] {
        let err = imessage::import(path, None, &opts).unwrap_err();
        assert!(
            matches!(err, ImportError::WrongKind { .. }),
            "{path:?}: {err:?}"
        );
    }
    // A file with SQLite's header but garbage after it: one error, whichever kind, no panic.
    assert!(imessage::import(&corrupt, None, &opts).is_err());
    let err = imessage::import(&dir.path().join("missing.db"), None, &opts).unwrap_err();
    assert!(matches!(err, ImportError::Io { .. }), "{err:?}");
}

#[test]
fn a_chat_db_lacking_a_needed_column_is_the_wrong_kind() {
    let dir = tempfile::tempdir().unwrap();
    let (path, conn) = sqlite_file(
        dir.path(),
        "chat.db",
        "CREATE TABLE handle (ROWID INTEGER PRIMARY KEY, id TEXT);
         CREATE TABLE message (ROWID INTEGER PRIMARY KEY, text TEXT);
         CREATE TABLE chat (ROWID INTEGER PRIMARY KEY, style INTEGER);
         CREATE TABLE chat_handle_join (chat_id INTEGER, handle_id INTEGER);
         CREATE TABLE chat_message_join (chat_id INTEGER, message_id INTEGER);",
    );
    drop(conn);
    let err = imessage::import(&path, None, &ImportOptions::default()).unwrap_err();
    assert!(matches!(err, ImportError::WrongKind { .. }), "{err:?}");
}

#[test]
fn a_database_over_the_size_limit_is_refused() {
    let opts = ImportOptions {
        max_database_bytes: 1024,
        ..ImportOptions::default()
    };
    let err = imessage::import(&fixtures().join("chat.db"), None, &opts).unwrap_err();
    assert!(matches!(err, ImportError::TooLarge { .. }), "{err:?}");
}

#[test]
fn more_handles_than_the_limit_is_one_error() {
    let opts = ImportOptions {
        max_records: 5,
        ..ImportOptions::default()
    };
    let err = imessage::import(&fixtures().join("chat.db"), None, &opts).unwrap_err();
    assert!(matches!(err, ImportError::TooManyRecords { .. }), "{err:?}");
}

#[test]
fn the_default_region_decides_numbers_without_a_country_code() {
    let dir = tempfile::tempdir().unwrap();
    let chat = dir.path().join("chat.db");
    let conn = Connection::open(&chat).unwrap();
    build_chat_db(&conn);
    conn.execute("UPDATE handle SET id = '+442079460018' WHERE ROWID = 1", [])
        .unwrap();
    conn.execute("UPDATE handle SET id = '020 7946 0018' WHERE ROWID = 2", [])
        .unwrap();
    drop(conn);
    let (book, conn) = sqlite_file(
        dir.path(),
        "AddressBook-v22.abcddb",
        "CREATE TABLE ZABCDRECORD (Z_PK INTEGER PRIMARY KEY, ZFIRSTNAME VARCHAR, ZLASTNAME VARCHAR,
           ZORGANIZATION VARCHAR, ZNOTE VARCHAR);
         CREATE TABLE ZABCDPHONENUMBER (Z_PK INTEGER PRIMARY KEY, ZOWNER INTEGER, ZFULLNUMBER VARCHAR);
         CREATE TABLE ZABCDEMAILADDRESS (Z_PK INTEGER PRIMARY KEY, ZOWNER INTEGER, ZADDRESS VARCHAR);
         INSERT INTO ZABCDRECORD VALUES (1, 'Ada', NULL, 'PRIVATE-MARKER-91c2e4', 'PRIVATE-MARKER-91c2e4');
         INSERT INTO ZABCDPHONENUMBER VALUES (1, 1, '020 7946 0018');
         INSERT INTO ZABCDEMAILADDRESS VALUES (1, 1, 'FRIEND@example.com');",
    );
    drop(conn);

    let gb = ImportOptions {
        default_region: "GB".parse::<Region>().unwrap(),
        ..ImportOptions::default()
    };
    let report = imessage::import(&chat, Some(&book), &gb).unwrap();
    let london = find(&report, "+442079460018");
    assert_eq!(london.name.as_deref(), Some("Ada"));
    assert_eq!(stats(london).received, 3, "both notations are one person");
    assert_eq!(
        find(&report, "friend@example.com").name.as_deref(),
        Some("Ada"),
        "e-mail addresses match ignoring case"
    );
    assert!(!everything(&report).contains(MARKER));

    // Under the US default the national number is not a valid number and is skipped.
    let report = imessage::import(&chat, Some(&book), &ImportOptions::default()).unwrap();
    assert!(report.skipped.iter().any(|s| s.line == 2));
}
