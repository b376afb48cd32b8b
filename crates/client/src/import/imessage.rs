//! macOS Messages (`~/Library/Messages/chat.db`): per handle, aggregate statistics only.
//!
//! For every phone number or e-mail address you have exchanged messages with: how many
//! messages were sent and received in one-to-one chats, the first and last of their dates, and
//! how many group chats you share. Message text, `attributedBody`, `subject` and attachments are
//! never read: the statements below name only the columns they need, and the connection's
//! authorizer makes SQLite itself refuse any other column (see [`READ_COLUMNS`]).
//!
//! Counting rules:
//! - one-to-one chats are `chat.style = 45` with exactly one handle; group chats are
//!   `style = 43`;
//! - tapbacks (`associated_message_type != 0`) and group events such as renames and joins
//!   (`item_type != 0`) are not messages;
//! - `message.date` counts nanoseconds since 2001-01-01 UTC on current macOS and seconds on old
//!   versions; each value is judged by its magnitude;
//! - the same address over iMessage and SMS (two `handle` rows) is one person: handles are keyed
//!   by their E.164 number or lowercased e-mail address.
//!
//! Skipped handles are reported with their `handle.ROWID`, skipped messages with their
//! `message.ROWID`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use kith_protocol::proto;

use super::address_book::{self, AddressBook};
use super::sqlite;
use super::{FileKind, ImportError, ImportOptions, ImportReport, ImportedContact, Provenance};

const KIND: FileKind = FileKind::MessagesDatabase;

/// Every `(table, column)` the importer reads; SQLite refuses any other column on the
/// importer's connection.
pub const READ_COLUMNS: &[(&str, &str)] = &[
    ("handle", "ROWID"),
    ("handle", "id"),
    ("chat", "ROWID"),
    ("chat", "style"),
    ("chat_handle_join", "chat_id"),
    ("chat_handle_join", "handle_id"),
    ("chat_message_join", "chat_id"),
    ("chat_message_join", "message_id"),
    ("message", "ROWID"),
    ("message", "is_from_me"),
    ("message", "date"),
    ("message", "associated_message_type"),
    ("message", "item_type"),
];

/// Every statement the importer runs, in order.
pub const QUERIES: &[&str] = &[HANDLES, CHAT_MEMBERS, ONE_TO_ONE_MESSAGES];

const HANDLES: &str = "SELECT h.ROWID, h.id FROM handle AS h";

const CHAT_MEMBERS: &str = "SELECT j.chat_id, j.handle_id, c.style \
     FROM chat_handle_join AS j JOIN chat AS c ON c.ROWID = j.chat_id \
     WHERE c.style = 43 OR c.style = 45";

const ONE_TO_ONE_MESSAGES: &str = "SELECT j.chat_id, m.ROWID, m.is_from_me, m.date, \
     m.associated_message_type, m.item_type \
     FROM chat_message_join AS j \
     JOIN chat AS c ON c.ROWID = j.chat_id \
     JOIN message AS m ON m.ROWID = j.message_id \
     WHERE c.style = 45";

/// `chat.style` of a group chat.
pub const STYLE_GROUP: i64 = 43;
/// `chat.style` of a one-to-one chat.
pub const STYLE_ONE_TO_ONE: i64 = 45;

/// Seconds from the Unix epoch to Apple's (2001-01-01T00:00:00Z).
const APPLE_EPOCH_UNIX: i64 = 978_307_200;

/// Above this magnitude a `date` is in nanoseconds: 10^12 seconds is 31,000 years, while
/// 10^12 nanoseconds is 17 minutes after 2001-01-01.
const NANOSECOND_THRESHOLD: i64 = 1_000_000_000_000;

/// Converts a `message.date` value to Unix seconds. `None` for 0 (unset) and for anything
/// before 2001 or past the year 9999.
pub fn apple_date_to_unix(date: i64) -> Option<i64> {
    let seconds = if date.unsigned_abs() >= NANOSECOND_THRESHOLD.unsigned_abs() {
        date / 1_000_000_000
    } else {
        date
    };
    if seconds <= 0 {
        return None;
    }
    let unix = seconds.checked_add(APPLE_EPOCH_UNIX)?;
    (unix < 253_402_300_800).then_some(unix)
}

/// Imports `chat.db`, naming handles from the Contacts database at `address_book` if given.
///
/// Returns one contact per person (E.164 number or lowercased e-mail address) with at least one
/// counted message in a one-to-one chat or one shared group chat, sorted by identity.
pub fn import(
    chat_db: &Path,
    address_book: Option<&Path>,
    opts: &ImportOptions,
) -> Result<ImportReport, ImportError> {
    let names = address_book
        .map(|path| address_book::load(path, opts))
        .transpose()?;
    let conn = sqlite::open_read_only(chat_db, KIND, opts, READ_COLUMNS)?;
    let mut report = ImportReport::default();
    let db = |e| sqlite::db_error(KIND, e);

    // handle ROWID -> person key
    let mut handle_person: HashMap<i64, Person> = HashMap::new();
    {
        let mut stmt = sqlite::prepare(&conn, KIND, HANDLES)?;
        let mut rows = stmt.query([]).map_err(db)?;
        while let Some(row) = rows.next().map_err(db)? {
            let Some(rowid) = sqlite::int(row.get_ref(0).map_err(db)?) else {
                continue;
            };
            let raw = sqlite::text(row.get_ref(1).map_err(db)?, opts.field_limit());
            match raw.and_then(|raw| Person::from_handle(raw, opts)) {
                Some(person) => {
                    if handle_person.len() >= opts.max_records {
                        return Err(ImportError::TooManyRecords {
                            kind: KIND,
                            limit: opts.max_records,
                        });
                    }
                    handle_person.insert(rowid, person);
                }
                None => report.skip(
                    opts,
                    usize::try_from(rowid).unwrap_or(0),
                    "handle is neither a phone number nor an e-mail address",
                ),
            }
        }
    }

    let mut stats: BTreeMap<Person, Stats> = BTreeMap::new();

    // chat ROWID -> the one person of a one-to-one chat; group chats per person.
    let mut one_to_one: HashMap<i64, Option<Person>> = HashMap::new();
    {
        let mut stmt = sqlite::prepare(&conn, KIND, CHAT_MEMBERS)?;
        let mut rows = stmt.query([]).map_err(db)?;
        while let Some(row) = rows.next().map_err(db)? {
            let chat = sqlite::int(row.get_ref(0).map_err(db)?);
            let handle = sqlite::int(row.get_ref(1).map_err(db)?);
            let style = sqlite::int(row.get_ref(2).map_err(db)?);
            let (Some(chat), Some(handle)) = (chat, handle) else {
                continue;
            };
            let Some(person) = handle_person.get(&handle) else {
                continue;
            };
            match style {
                Some(STYLE_GROUP) => {
                    stats
                        .entry(person.clone())
                        .or_default()
                        .group_chats
                        .insert(chat);
                }
                Some(STYLE_ONE_TO_ONE) => {
                    // A one-to-one chat joined to two different people is not one-to-one.
                    one_to_one
                        .entry(chat)
                        .and_modify(|slot| {
                            if slot.as_ref() != Some(person) {
                                *slot = None;
                            }
                        })
                        .or_insert_with(|| Some(person.clone()));
                }
                _ => {}
            }
        }
    }

    {
        let mut stmt = sqlite::prepare(&conn, KIND, ONE_TO_ONE_MESSAGES)?;
        let mut rows = stmt.query([]).map_err(db)?;
        while let Some(row) = rows.next().map_err(db)? {
            let chat = sqlite::int(row.get_ref(0).map_err(db)?);
            let message = sqlite::int(row.get_ref(1).map_err(db)?).unwrap_or(0);
            let from_me = sqlite::int(row.get_ref(2).map_err(db)?);
            let date = sqlite::int(row.get_ref(3).map_err(db)?);
            let associated = sqlite::int(row.get_ref(4).map_err(db)?).unwrap_or(0);
            let item_type = sqlite::int(row.get_ref(5).map_err(db)?).unwrap_or(0);
            if associated != 0 || item_type != 0 {
                continue;
            }
            let Some(Some(person)) = chat.and_then(|chat| one_to_one.get(&chat)) else {
                continue;
            };
            let Some(from_me) = from_me else {
                report.skip(
                    opts,
                    usize::try_from(message).unwrap_or(0),
                    "message has no is_from_me flag",
                );
                continue;
            };
            let entry = stats.entry(person.clone()).or_default();
            if from_me != 0 {
                entry.sent = entry.sent.saturating_add(1);
            } else {
                entry.received = entry.received.saturating_add(1);
            }
            if let Some(unix) = date.and_then(apple_date_to_unix) {
                entry.first = Some(entry.first.map_or(unix, |f| f.min(unix)));
                entry.last = Some(entry.last.map_or(unix, |l| l.max(unix)));
            }
        }
    }
    drop(conn);

    if stats.len() > opts.max_records {
        return Err(ImportError::TooManyRecords {
            kind: KIND,
            limit: opts.max_records,
        });
    }
    for (person, stats) in stats {
        if stats.sent == 0 && stats.received == 0 && stats.group_chats.is_empty() {
            continue;
        }
        report
            .contacts
            .push(person.into_contact(stats, names.as_ref()));
    }
    Ok(report.logged("imported Messages statistics"))
}

/// A person as Messages knows them: one phone number or e-mail address, however many handles
/// (iMessage, SMS) carry it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Person {
    Phone(String),
    Email(String),
}

impl Person {
    fn from_handle(raw: &str, opts: &ImportOptions) -> Option<Person> {
        let raw = raw.trim();
        if raw.contains('@') {
            super::text::email_address(raw).map(|a| Person::Email(a.to_lowercase()))
        } else {
            super::phone::to_e164(raw, opts.default_region).map(Person::Phone)
        }
    }

    fn identity(&self) -> &str {
        match self {
            Person::Phone(p) | Person::Email(p) => p,
        }
    }

    fn into_contact(self, stats: Stats, names: Option<&AddressBook>) -> ImportedContact {
        let source = proto::IMessageSource {
            handle: self.identity().to_owned(),
            sent: stats.sent,
            received: stats.received,
            first_unix: stats.first.unwrap_or(0),
            last_unix: stats.last.unwrap_or(0),
            group_chats: u64::try_from(stats.group_chats.len()).unwrap_or(u64::MAX),
        };
        let mut contact =
            ImportedContact::new(self.identity().to_owned(), Provenance::IMessage(source));
        let name = match &self {
            Person::Phone(e164) => {
                contact.phones.push(proto::Phone {
                    e164: e164.clone(),
                    label: String::new(),
                });
                names.and_then(|n| n.name_for_phone(e164))
            }
            Person::Email(address) => {
                contact.emails.push(proto::Email {
                    address: address.clone(),
                    label: String::new(),
                });
                names.and_then(|n| n.name_for_email(address))
            }
        };
        if let Some(name) = name {
            contact.name = Some(name.to_owned());
            contact.address_book = Some(proto::AddressBookSource {
                name: name.to_owned(),
            });
        }
        contact
    }
}

#[derive(Debug, Default)]
struct Stats {
    sent: u64,
    received: u64,
    first: Option<i64>,
    last: Option<i64>,
    group_chats: BTreeSet<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_in_seconds_and_nanoseconds_agree() {
        // 2024-01-01T00:00:00Z is 725,760,000 s after the Apple epoch.
        assert_eq!(apple_date_to_unix(725_760_000), Some(1_704_067_200));
        assert_eq!(
            apple_date_to_unix(725_760_000_000_000_000),
            Some(1_704_067_200)
        );
        assert_eq!(
            apple_date_to_unix(725_760_000_123_456_789),
            Some(1_704_067_200)
        );
        // Old macOS wrote seconds; 2011-01-01 then.
        assert_eq!(apple_date_to_unix(315_532_800), Some(1_293_840_000));
    }

    #[test]
    fn unset_and_impossible_dates_are_unknown() {
        assert_eq!(apple_date_to_unix(0), None);
        assert_eq!(apple_date_to_unix(-5), None);
        assert_eq!(apple_date_to_unix(i64::MIN), None);
        // The largest value is nanoseconds (year 2293): converted without overflow.
        assert_eq!(
            apple_date_to_unix(i64::MAX),
            Some(9_223_372_036 + 978_307_200)
        );
        assert_eq!(
            apple_date_to_unix(999_999_999_999),
            None,
            "31,000 years of seconds"
        );
    }

    #[test]
    fn sqlite_itself_refuses_to_read_private_columns() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/imessage/chat.db");
        let conn =
            sqlite::open_read_only(&path, KIND, &ImportOptions::default(), READ_COLUMNS).unwrap();
        for sql in QUERIES {
            assert!(conn.prepare(sql).is_ok(), "{sql}");
        }
        for sql in [
            "SELECT text FROM message",
            "SELECT * FROM message",
            "SELECT attributedBody FROM message",
            "SELECT subject FROM message",
            "SELECT ROWID FROM message WHERE text LIKE '%a%'",
            "SELECT length(text) FROM message",
            "SELECT date FROM message WHERE handle_id = 1",
            "SELECT display_name FROM chat",
            "UPDATE message SET date = 0",
            "PRAGMA query_only = 0",
            "ATTACH DATABASE ':memory:' AS other",
        ] {
            assert!(conn.prepare(sql).is_err(), "{sql} was allowed");
        }
    }

    #[test]
    fn no_statement_selects_everything_or_names_private_columns() {
        for sql in QUERIES {
            let lower = sql.to_ascii_lowercase();
            assert!(!lower.contains('*'), "{sql}");
            for private in ["text", "attributedbody", "subject", "attachment"] {
                assert!(!lower.contains(private), "{sql} names {private}");
            }
        }
        for (_, column) in READ_COLUMNS {
            let lower = column.to_ascii_lowercase();
            assert!(!["text", "attributedbody", "subject"].contains(&lower.as_str()));
        }
    }
}
