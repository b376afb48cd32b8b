//! macOS Contacts (`AddressBook-v22.abcddb`): only the name stored for a phone number or e-mail
//! address.
//!
//! Used to name the handles of an iMessage import ([`super::imessage::import`]), and on its own
//! ([`import`]) to give one contact per card that has a name and a phone number or e-mail.
//! Reads first and last names, phone numbers and e-mail addresses — no organization, note,
//! address, birthday, image or anything else on the card; SQLite refuses every other column on
//! the importer's connection (see [`READ_COLUMNS`]).
//!
//! Phone numbers are normalized to E.164 with [`ImportOptions::default_region`] for numbers
//! written without a country code, so `(415) 555-0100` on a card names the `chat.db` handle
//! `+14155550100`. When two cards share a number or address, the card stored first names it.
//! Problems are reported with the card's `Z_PK`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use kith_protocol::proto;

use super::sqlite;
use super::{
    FileKind, ImportError, ImportOptions, ImportReport, ImportedContact, Provenance, phone, text,
};

const KIND: FileKind = FileKind::ContactsDatabase;

/// Every `(table, column)` the importer reads; SQLite refuses any other column on the
/// importer's connection.
pub const READ_COLUMNS: &[(&str, &str)] = &[
    ("ZABCDRECORD", "Z_PK"),
    ("ZABCDRECORD", "ZFIRSTNAME"),
    ("ZABCDRECORD", "ZLASTNAME"),
    ("ZABCDPHONENUMBER", "ZOWNER"),
    ("ZABCDPHONENUMBER", "ZFULLNUMBER"),
    ("ZABCDEMAILADDRESS", "ZOWNER"),
    ("ZABCDEMAILADDRESS", "ZADDRESS"),
];

/// Every statement the importer runs, in order.
pub const QUERIES: &[&str] = &[RECORDS, PHONES, EMAILS];

const RECORDS: &str =
    "SELECT r.Z_PK, r.ZFIRSTNAME, r.ZLASTNAME FROM ZABCDRECORD AS r ORDER BY r.Z_PK";
const PHONES: &str = "SELECT p.ZOWNER, p.ZFULLNUMBER FROM ZABCDPHONENUMBER AS p";
const EMAILS: &str = "SELECT e.ZOWNER, e.ZADDRESS FROM ZABCDEMAILADDRESS AS e";

/// Names from the Contacts database, looked up by phone number or e-mail address.
#[derive(Debug, Clone, Default)]
pub struct AddressBook {
    cards: Vec<Card>,
    by_phone: HashMap<String, usize>,
    by_email: HashMap<String, usize>,
    problems: ImportReport,
}

#[derive(Debug, Clone)]
struct Card {
    name: String,
    phones: Vec<String>,
    emails: Vec<String>,
}

impl AddressBook {
    /// The name stored for an E.164 phone number.
    pub fn name_for_phone(&self, e164: &str) -> Option<&str> {
        self.by_phone
            .get(e164)
            .and_then(|&i| self.cards.get(i))
            .map(|c| c.name.as_str())
    }

    /// The name stored for an e-mail address (compared ignoring case).
    pub fn name_for_email(&self, address: &str) -> Option<&str> {
        self.by_email
            .get(&address.to_lowercase())
            .and_then(|&i| self.cards.get(i))
            .map(|c| c.name.as_str())
    }

    /// How many cards have a name and at least one phone number or e-mail address.
    pub fn len(&self) -> usize {
        self.cards.len()
    }

    /// Whether no card has a name and a phone number or e-mail address.
    pub fn is_empty(&self) -> bool {
        self.cards.is_empty()
    }

    /// One contact per card, identified by its first phone number (else e-mail address).
    pub fn into_report(self) -> ImportReport {
        let mut report = self.problems;
        for card in self.cards {
            let identity = card
                .phones
                .first()
                .or(card.emails.first())
                .cloned()
                .unwrap_or_default();
            let mut contact = ImportedContact::new(
                identity,
                Provenance::AddressBook(proto::AddressBookSource {
                    name: card.name.clone(),
                }),
            );
            contact.name = Some(card.name);
            contact.phones = card
                .phones
                .into_iter()
                .map(|e164| proto::Phone {
                    e164,
                    label: String::new(),
                })
                .collect();
            contact.emails = card
                .emails
                .into_iter()
                .map(|address| proto::Email {
                    address,
                    label: String::new(),
                })
                .collect();
            report.contacts.push(contact);
        }
        report
    }
}

/// Imports the Contacts database as one contact per named card with a phone or e-mail.
pub fn import(path: &Path, opts: &ImportOptions) -> Result<ImportReport, ImportError> {
    let report = load(path, opts)?.into_report();
    Ok(report.logged("imported Contacts names"))
}

/// Reads the names stored for phone numbers and e-mail addresses.
pub fn load(path: &Path, opts: &ImportOptions) -> Result<AddressBook, ImportError> {
    let conn = sqlite::open_read_only(path, KIND, opts, READ_COLUMNS)?;
    let db = |e| sqlite::db_error(KIND, e);
    let limit = opts.field_limit();
    let mut problems = ImportReport::default();

    let mut names: BTreeMap<i64, String> = BTreeMap::new();
    {
        let mut stmt = sqlite::prepare(&conn, KIND, RECORDS)?;
        let mut rows = stmt.query([]).map_err(db)?;
        while let Some(row) = rows.next().map_err(db)? {
            let Some(key) = sqlite::int(row.get_ref(0).map_err(db)?) else {
                continue;
            };
            let first = sqlite::text(row.get_ref(1).map_err(db)?, limit).and_then(text::clean_line);
            let last = sqlite::text(row.get_ref(2).map_err(db)?, limit).and_then(text::clean_line);
            let name = match (first, last) {
                (Some(f), Some(l)) => format!("{f} {l}"),
                (Some(n), None) | (None, Some(n)) => n,
                (None, None) => continue,
            };
            if names.len() >= opts.max_records {
                return Err(ImportError::TooManyRecords {
                    kind: KIND,
                    limit: opts.max_records,
                });
            }
            names.insert(key, name);
        }
    }

    let mut phones: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    let mut emails: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for (sql, field) in [(PHONES, "ZFULLNUMBER"), (EMAILS, "ZADDRESS")] {
        let mut stmt = sqlite::prepare(&conn, KIND, sql)?;
        let mut rows = stmt.query([]).map_err(db)?;
        while let Some(row) = rows.next().map_err(db)? {
            let Some(owner) = sqlite::int(row.get_ref(0).map_err(db)?) else {
                continue;
            };
            if !names.contains_key(&owner) {
                continue;
            }
            let raw = sqlite::text(row.get_ref(1).map_err(db)?, limit);
            let line = usize::try_from(owner).unwrap_or(0);
            let (target, value) = if field == "ZFULLNUMBER" {
                (
                    &mut phones,
                    raw.and_then(|r| phone::to_e164(r, opts.default_region)),
                )
            } else {
                (
                    &mut emails,
                    raw.and_then(text::email_address).map(|a| a.to_lowercase()),
                )
            };
            let Some(value) = value else {
                if raw.is_some_and(|r| !r.trim().is_empty()) {
                    problems.drop_field(opts, line, field, "not a phone number or e-mail address");
                }
                continue;
            };
            let list = target.entry(owner).or_default();
            if !list.contains(&value) {
                if list.len() >= opts.max_values_per_field {
                    problems.drop_field(opts, line, field, "too many values on one card");
                } else {
                    list.push(value);
                }
            }
        }
    }
    drop(conn);

    let mut book = AddressBook {
        problems,
        ..AddressBook::default()
    };
    for (key, name) in names {
        let phones = phones.remove(&key).unwrap_or_default();
        let emails = emails.remove(&key).unwrap_or_default();
        if phones.is_empty() && emails.is_empty() {
            continue;
        }
        let index = book.cards.len();
        for p in &phones {
            book.by_phone.entry(p.clone()).or_insert(index);
        }
        for e in &emails {
            book.by_email.entry(e.clone()).or_insert(index);
        }
        book.cards.push(Card {
            name,
            phones,
            emails,
        });
    }
    Ok(book)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_itself_refuses_to_read_anything_but_names_numbers_and_addresses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/imessage/AddressBook-v22.abcddb");
        let conn =
            sqlite::open_read_only(&path, KIND, &ImportOptions::default(), READ_COLUMNS).unwrap();
        for sql in QUERIES {
            assert!(conn.prepare(sql).is_ok(), "{sql}");
        }
        for sql in [
            "SELECT * FROM ZABCDRECORD",
            "SELECT ZORGANIZATION FROM ZABCDRECORD",
            "SELECT ZJOBTITLE FROM ZABCDRECORD",
            "SELECT ZLABEL FROM ZABCDPHONENUMBER",
        ] {
            assert!(conn.prepare(sql).is_err(), "{sql} was allowed");
        }
    }
}
