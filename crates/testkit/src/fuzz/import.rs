//! The importers' fuzz target bodies (`kith_client::import`).
//!
//! Each `pub fn name(data: &[u8]) -> bool` here is the whole body of the cargo-fuzz target
//! `fuzz/fuzz_targets/name.rs`, and `crates/testkit/tests/fuzz_corpus_import.rs` runs every file of
//! `fuzz/corpus/name/` through the same function on the stable toolchain. A body returns
//! whether the importer accepted the input; it panics only on a bug: a panic in an importer, a
//! bound of [`ImportOptions`] exceeded, a contact that the client could not record as one valid
//! operation (a field key or value the protocol refuses, two writes of one key), or message
//! text found in what the iMessage importer returned.
//!
//! The SQLite targets write their database to a directory of the system's temporary directory
//! (one per process and thread, reused from input to input).

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use kith_protocol::hlc::Hlc;
use kith_protocol::ids::{DeviceId, RecordId};
use kith_protocol::record::{FieldKey, FieldWrite, Operation};
use rusqlite::Connection;
use rusqlite::types::Value;

use kith_client::import::{
    ImportOptions, ImportReport, address_book, calendar, facebook, imessage, linkedin, mail,
    twitter, vcard,
};

pub use super::corpus::{Body, Seed};

/// Every importer target: its name (the fuzz target and corpus directory) and its body.
pub const TARGETS: &[(&str, Body)] = &[
    ("linkedin", linkedin),
    ("facebook", facebook),
    ("vcard", vcard),
    ("imessage", imessage),
    ("imessage_rows", imessage_rows),
    ("mail", mail),
    ("calendar", calendar),
    ("twitter", twitter),
];

/// The owner's address the mail and calendar targets use.
const FUZZ_OWNER: &str = "me@example.com";

/// "Now" for the calendar target: 2030-01-01T00:00:00Z, fixed so runs are reproducible.
const FUZZ_NOW: i64 = 1_893_456_000;

/// Bounds small enough that fuzz inputs reach them.
fn options() -> ImportOptions {
    ImportOptions {
        max_file_bytes: 1 << 20,
        max_database_bytes: 1 << 24,
        max_records: 64,
        max_field_bytes: 1024,
        max_values_per_field: 8,
        max_reported_problems: 32,
        ..ImportOptions::default()
    }
}

/// Checks what an importer returned: within its bounds, and every contact recordable by the
/// client as one valid upsert (what `Device::import` builds from it).
fn check_report(report: &ImportReport, opts: &ImportOptions) {
    assert!(
        report.contacts.len() <= opts.max_records,
        "too many contacts"
    );
    assert!(
        report.skipped.len() + report.dropped.len() <= opts.max_reported_problems,
        "too many problems listed"
    );
    let device = DeviceId::from_bytes([1; 16]);
    for contact in &report.contacts {
        for count in [
            contact.emails.len(),
            contact.phones.len(),
            contact.urls.len(),
            contact.handles.len(),
        ] {
            assert!(count <= opts.max_values_per_field, "too many values");
        }
        let _ = contact.identities();
        let mut writes = Vec::new();
        for (key, value) in contact.field_writes() {
            let parsed = FieldKey::parse(&key)
                .unwrap_or_else(|e| panic!("importer wrote an invalid field key {key:?}: {e}"));
            let write = FieldWrite::set(parsed, value, [])
                .unwrap_or_else(|e| panic!("importer wrote an invalid value for {key:?}: {e}"));
            writes.push(write);
        }
        let clock = Hlc::new(1, 0, device);
        if let Err(e) = Operation::upsert(RecordId::from_bytes([2; 16]), clock, writes) {
            panic!("an imported contact is not one valid operation: {e}");
        }
    }
}

fn check(
    result: Result<ImportReport, kith_client::import::ImportError>,
    opts: &ImportOptions,
) -> bool {
    match result {
        Ok(report) => {
            check_report(&report, opts);
            true
        }
        Err(_) => false,
    }
}

/// LinkedIn `Connections.csv`.
pub fn linkedin(data: &[u8]) -> bool {
    let opts = options();
    check(linkedin::import_bytes(data, &opts), &opts)
}

/// Facebook friends JSON.
pub fn facebook(data: &[u8]) -> bool {
    let opts = options();
    check(facebook::import_bytes(data, &opts), &opts)
}

/// mbox files (header blocks only).
pub fn mail(data: &[u8]) -> bool {
    let opts = options();
    check(
        mail::import_bytes(data, &[FUZZ_OWNER.to_owned()], &opts),
        &opts,
    )
}

/// iCalendar files (or zips of them), expanded up to a fixed now.
pub fn calendar(data: &[u8]) -> bool {
    let opts = options();
    check(
        calendar::import_bytes(data, &[FUZZ_OWNER.to_owned()], FUZZ_NOW, &opts),
        &opts,
    )
}

/// Twitter archive zips.
pub fn twitter(data: &[u8]) -> bool {
    let opts = options();
    check(twitter::import_bytes(data, &opts), &opts)
}

/// vCard files.
pub fn vcard(data: &[u8]) -> bool {
    let opts = options();
    check(vcard::import_bytes(data, &opts), &opts)
}

// ---------------------------------------------------------------------------------------------
// SQLite databases

/// This thread's scratch directory.
fn scratch_dir() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static DIR: RefCell<Option<PathBuf>> = const { RefCell::new(None) };
    }
    DIR.with(|dir| {
        dir.borrow_mut()
            .get_or_insert_with(|| {
                let n = NEXT.fetch_add(1, Ordering::Relaxed);
                let path =
                    std::env::temp_dir().join(format!("kith-fuzz-{}-{n}", std::process::id()));
                std::fs::create_dir_all(&path).unwrap_or_else(|e| {
                    panic!(
                        "cannot create the scratch directory {}: {e}",
                        path.display()
                    )
                });
                path
            })
            .clone()
    })
}

/// Removes a database and whatever SQLite may have left beside it, so that no state carries
/// over from one input to the next.
fn remove_database(path: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(name));
    }
}

/// Text written to every column the importers must never read. It must not appear in what they
/// return.
const CANARY: &str = "kith-fuzz-canary-message-text";

/// `chat.db` and the Contacts database from raw bytes: the input is written to a file and
/// opened by the iMessage importer and by the Contacts importer.
pub fn imessage(data: &[u8]) -> bool {
    let opts = options();
    let path = scratch_dir().join("raw.db");
    remove_database(&path);
    if let Err(e) = std::fs::write(&path, data) {
        panic!("cannot write {}: {e}", path.display());
    }
    let chat = check(imessage::import(&path, None, &opts), &opts);
    let contacts = check(address_book::import(&path, &opts), &opts);
    chat || contacts
}

/// `chat.db` built by the harness: the real schema, with rows (and, for any column, values of
/// any SQLite type) taken from the input, plus a Contacts database to name the handles. Every
/// message's text, subject and attributed body hold a canary, which must not appear in the
/// report.
pub fn imessage_rows(data: &[u8]) -> bool {
    let opts = options();
    let dir = scratch_dir();
    let chat_db = dir.join("chat.db");
    let contacts_db = dir.join("contacts.db");
    let mut input = Input(data);
    if build_chat_db(&chat_db, &mut input).is_err()
        || build_contacts_db(&contacts_db, &mut input).is_err()
    {
        return false;
    }
    match imessage::import(&chat_db, Some(&contacts_db), &opts) {
        Ok(report) => {
            check_report(&report, &opts);
            assert!(
                !format!("{report:?}").contains(CANARY),
                "message text reached the import report"
            );
            true
        }
        Err(e) => {
            assert!(!e.to_string().contains(CANARY), "message text in an error");
            false
        }
    }
}

/// The fuzz input, read front to back; zeros once it runs out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn bytes(&mut self, len: usize) -> &[u8] {
        let (taken, rest) = self.0.split_at(len.min(self.0.len()));
        self.0 = rest;
        taken
    }

    fn i64(&mut self) -> i64 {
        let mut bytes = [0u8; 8];
        let taken = self.bytes(8);
        bytes[..taken.len()].copy_from_slice(taken);
        i64::from_le_bytes(bytes)
    }

    /// A row count.
    fn count(&mut self, max: u8) -> usize {
        usize::from(self.byte() % (max + 1))
    }

    /// A column value: usually `typical`, sometimes any SQLite type.
    fn value(&mut self, typical: impl FnOnce(&mut Self) -> Value) -> Value {
        match self.byte() % 16 {
            0 => Value::Null,
            1 => Value::Integer(self.i64()),
            2 => Value::Real(f64::from_bits(self.i64() as u64)),
            3 => {
                let len = usize::from(self.byte() % 64);
                Value::Text(String::from_utf8_lossy(self.bytes(len)).into_owned())
            }
            4 => {
                let len = usize::from(self.byte() % 64);
                Value::Blob(self.bytes(len).to_vec())
            }
            _ => typical(self),
        }
    }

    fn pick<T: Clone>(&mut self, choices: &[T]) -> T {
        choices[usize::from(self.byte()) % choices.len()].clone()
    }

    /// A small row id.
    fn row_id(&mut self) -> Value {
        self.value(|input| Value::Integer(i64::from(input.byte() % 10)))
    }
}

/// Handles and numbers as Messages and Contacts store them, and some that are neither.
const ADDRESSES: &[&str] = &[
    "+14155550100",
    "+1 (415) 555-0100",
    "(415) 555-0101",
    "4155550102",
    "+442079460018",
    "020 7946 0018",
    "ada@example.com",
    "ADA@Example.COM",
    "e:grace@example.org",
    "mailto:grace@example.org",
    "urn:biz:0123456789",
    "chat123456789012",
    "+",
    "",
];

/// `message.date` values: unset, seconds and nanoseconds since 2001, and the edges.
const DATES: &[i64] = &[
    0,
    600_000_000,
    600_000_000_000_000_000,
    -1,
    i64::MAX,
    i64::MIN,
    999_999_999_999,
    1_000_000_000_000,
];

fn text_value(input: &mut Input<'_>, choices: &[&str]) -> Value {
    Value::Text(input.pick(choices).to_owned())
}

/// Set before any table: small pages, no journal, no syncing (a fuzz input's database is
/// thrown away).
const FAST_PRAGMAS: &str = "
PRAGMA page_size = 512;
PRAGMA journal_mode = OFF;
PRAGMA synchronous = OFF;
";

/// The tables of the macOS Contacts database the importer reads.
const CONTACTS_DB_SCHEMA: &str = "
CREATE TABLE ZABCDRECORD (Z_PK INTEGER PRIMARY KEY, ZFIRSTNAME VARCHAR, ZLASTNAME VARCHAR,
  ZORGANIZATION VARCHAR, ZNOTE VARCHAR);
CREATE TABLE ZABCDPHONENUMBER (Z_PK INTEGER PRIMARY KEY, ZOWNER INTEGER, ZFULLNUMBER VARCHAR);
CREATE TABLE ZABCDEMAILADDRESS (Z_PK INTEGER PRIMARY KEY, ZOWNER INTEGER, ZADDRESS VARCHAR);
";

fn create(path: &Path, schema: &str) -> rusqlite::Result<Connection> {
    remove_database(path);
    let conn = Connection::open(path)?;
    conn.execute_batch(FAST_PRAGMAS)?;
    conn.execute_batch(schema)?;
    Ok(conn)
}

/// Inserts one row; a row the schema refuses (a duplicate, a NULL in a NOT NULL column) is
/// left out, as it could not be in a real database either.
fn insert(conn: &Connection, sql: &str, values: &[Value]) -> rusqlite::Result<()> {
    match conn.execute(sql, rusqlite::params_from_iter(values)) {
        Ok(_) | Err(rusqlite::Error::SqliteFailure(_, _)) => Ok(()),
        Err(e) => Err(e),
    }
}

fn build_chat_db(path: &Path, input: &mut Input<'_>) -> rusqlite::Result<()> {
    let conn = create(path, crate::apple_db::CHAT_DB_SCHEMA)?;
    for _ in 0..input.count(8) {
        let row = [
            input.row_id(),
            input.value(|i| text_value(i, ADDRESSES)),
            input.value(|i| text_value(i, &["iMessage", "SMS", "RCS"])),
        ];
        insert(
            &conn,
            "INSERT INTO handle (ROWID, id, service) VALUES (?1, ?2, ?3)",
            &row,
        )?;
    }
    for n in 0..input.count(6) {
        let row = [
            input.row_id(),
            Value::Text(format!("chat-{n}")),
            input.value(|i| Value::Integer(i.pick(&[43, 45, 45, 42]))),
        ];
        insert(
            &conn,
            "INSERT INTO chat (ROWID, guid, style) VALUES (?1, ?2, ?3)",
            &row,
        )?;
    }
    for _ in 0..input.count(12) {
        let row = [input.row_id(), input.row_id()];
        insert(
            &conn,
            "INSERT INTO chat_handle_join (chat_id, handle_id) VALUES (?1, ?2)",
            &row,
        )?;
    }
    for n in 0..input.count(24) {
        let row = [
            input.row_id(),
            Value::Text(format!("message-{n}")),
            Value::Text(CANARY.to_owned()),
            Value::Text(CANARY.to_owned()),
            Value::Blob(CANARY.as_bytes().to_vec()),
            input.value(|i| Value::Integer(i.pick(DATES))),
            input.value(|i| Value::Integer(i64::from(i.byte() % 2))),
            input.value(|i| Value::Integer(i.pick(&[0, 0, 2000, 3001]))),
            input.value(|i| Value::Integer(i.pick(&[0, 0, 1, 2]))),
        ];
        insert(
            &conn,
            "INSERT INTO message (ROWID, guid, text, subject, attributedBody, date, is_from_me, \
             associated_message_type, item_type) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            &row,
        )?;
    }
    for _ in 0..input.count(24) {
        let row = [input.row_id(), input.row_id()];
        insert(
            &conn,
            "INSERT INTO chat_message_join (chat_id, message_id) VALUES (?1, ?2)",
            &row,
        )?;
    }
    conn.execute(
        "INSERT INTO attachment (filename, transfer_name) VALUES (?1, ?1)",
        [CANARY],
    )?;
    Ok(())
}

fn build_contacts_db(path: &Path, input: &mut Input<'_>) -> rusqlite::Result<()> {
    let conn = create(path, CONTACTS_DB_SCHEMA)?;
    for _ in 0..input.count(6) {
        let row = [
            input.row_id(),
            input.value(|i| text_value(i, &["Ada", "Grace", "Émilie", " ", ""])),
            input.value(|i| text_value(i, &["Lovelace", "Hopper", "du Châtelet"])),
            Value::Text(CANARY.to_owned()),
            Value::Text(CANARY.to_owned()),
        ];
        insert(
            &conn,
            "INSERT INTO ZABCDRECORD (Z_PK, ZFIRSTNAME, ZLASTNAME, ZORGANIZATION, ZNOTE) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
            &row,
        )?;
    }
    for table in [
        "ZABCDPHONENUMBER (ZOWNER, ZFULLNUMBER)",
        "ZABCDEMAILADDRESS (ZOWNER, ZADDRESS)",
    ] {
        for _ in 0..input.count(6) {
            let row = [input.row_id(), input.value(|i| text_value(i, ADDRESSES))];
            insert(&conn, &format!("INSERT INTO {table} VALUES (?1, ?2)"), &row)?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// seeds

/// Inputs for `imessage_rows` that build a database with every kind of row, and the same
/// databases as raw files for `imessage`. (The text importers' seeds are trimmed copies of the
/// test fixtures, written by `tests/fuzz_corpus_import.rs`.)
pub fn seeds() -> Vec<Seed> {
    // Handles (three), chats (one-to-one and group), members, messages (sent, received, a
    // tapback, seconds and nanoseconds), joins, then a Contacts record with a phone and e-mail.
    let rows: Vec<u8> = vec![
        3, // handles
        5, 1, 5, 0, 5, 0, // ROWID 1, +14155550100, iMessage
        5, 2, 5, 6, 5, 1, // ROWID 2, ada@example.com, SMS
        5, 3, 5, 4, 5, 0, // ROWID 3, +442079460018, iMessage
        2, // chats
        5, 1, 5, 1, // ROWID 1, style 45
        5, 2, 5, 0, // ROWID 2, style 43
        4, // chat_handle_join
        5, 1, 5, 1, 5, 2, 5, 1, 5, 2, 5, 2, 5, 2, 5, 3, //
        4, // messages
        5, 1, 5, 1, 5, 1, 5, 0, 5, 0, // sent, seconds
        5, 2, 5, 2, 5, 0, 5, 0, 5, 0, // received, nanoseconds
        5, 3, 5, 2, 5, 0, 5, 2, 5, 0, // tapback
        5, 4, 5, 1, 5, 1, 5, 0, 5, 0, // group message
        4, // chat_message_join
        5, 1, 5, 1, 5, 1, 5, 2, 5, 1, 5, 3, 5, 2, 5, 4, //
        1, // Contacts records
        5, 1, 5, 0, 5, 0, // Z_PK 1, Ada Lovelace
        1, 5, 1, 5, 0, // a phone: owner 1, +14155550100
        1, 5, 1, 5, 6, // an e-mail: owner 1, ada@example.com
    ];
    let mut seeds = vec![Seed {
        target: "imessage_rows",
        name: "valid-rows".into(),
        bytes: rows.clone(),
    }];
    let dir = scratch_dir();
    let (chat_db, contacts_db) = (dir.join("seed-chat.db"), dir.join("seed-contacts.db"));
    let mut input = Input(&rows);
    if build_chat_db(&chat_db, &mut input).is_ok()
        && build_contacts_db(&contacts_db, &mut input).is_ok()
    {
        for (name, path) in [
            ("valid-chat-db", &chat_db),
            ("valid-contacts-db", &contacts_db),
        ] {
            if let Ok(bytes) = std::fs::read(path) {
                seeds.push(Seed {
                    target: "imessage",
                    name: name.into(),
                    bytes,
                });
            }
        }
    }
    remove_database(&chat_db);
    remove_database(&contacts_db);
    seeds
}
