//! Importers: read real export files and turn them into source-neutral contacts.
//!
//! Each importer takes the least it needs: Kith promises its users that nothing more of an export
//! than this table names is read, kept or synced.
//!
//! | source | module | reads |
//! |---|---|---|
//! | LinkedIn `Connections.csv` | [`linkedin`] | name, profile URL, e-mail, company, position, connected-on |
//! | Facebook `your_friends.json` / `friends.json` | [`facebook`] | name, friend-since |
//! | macOS Messages `chat.db` | [`imessage`] | per handle: messages sent and received in one-to-one chats, first and last date, group chats shared — never text, attributed bodies, subjects or attachments |
//! | macOS Contacts `AddressBook-v22.abcddb` | [`address_book`] | only the name stored for a phone number or e-mail address |
//! | vCard 2.1, 3.0, 4.0 | [`vcard`] | name, e-mails, phones, URLs, social profiles, company, title, birthday, note, UID |
//! | iCalendar `.ics`, Google Takeout zip | [`calendar`] | per attendee: e-mail, `CN` name, and each meeting's start, end, title and other attendees — never descriptions, locations or attachments |
//! | mbox (Gmail Takeout, Thunderbird, Apple Mail) | [`mail`] | the header block only: `From`, `To`, `Cc`, `Date`, `Subject`, `Message-ID` and the bulk-mail markers — never a body |
//! | Twitter/X archive zip | [`twitter`] | account ids you follow and that follow you, names from mentions in your own tweets — never direct messages |
//!
//! Every importer returns an [`ImportReport`]: the contacts it found, the rows or records it
//! skipped (with their line, row or entry number) and the fields it left out. A file of the wrong
//! kind is one [`ImportError::WrongKind`], never a thousand row errors. Everything is bounded by
//! [`ImportOptions`]: file size, field length, number of records, number of values per field and
//! number of problems listed. No input makes an importer panic (property-tested with random bytes),
//! and no error or log line carries contact data.

use std::collections::BTreeSet;
use std::fmt;
use std::io::Read;
use std::path::Path;

use kith_protocol::proto;
use kith_protocol::record::FieldKey;

/// Defines a whole-file format's `import` (from a path) and `import_reader` (from a reader) over
/// its `import_bytes` and `KIND`, so that every such format reads files and readers under the
/// same size limit. `$what` completes "Imports … from a path".
macro_rules! whole_file_entry_points {
    ($what:literal) => {
        #[doc = concat!("Imports ", $what, " from a path.")]
        pub fn import(
            path: &std::path::Path,
            opts: &$crate::import::ImportOptions,
        ) -> Result<$crate::import::ImportReport, $crate::import::ImportError> {
            import_bytes(
                &$crate::import::read_file(path, opts.max_file_bytes, KIND)?,
                opts,
            )
        }

        #[doc = concat!(
            "Imports ", $what, " from a reader (read to its end, at most ",
            "[`ImportOptions::max_file_bytes`](crate::import::ImportOptions::max_file_bytes))."
        )]
        pub fn import_reader(
            reader: impl std::io::Read,
            opts: &$crate::import::ImportOptions,
        ) -> Result<$crate::import::ImportReport, $crate::import::ImportError> {
            import_bytes(
                &$crate::import::read_bounded(reader, opts.max_file_bytes, KIND)?,
                opts,
            )
        }
    };
}

pub mod address_book;
mod archive;
pub mod calendar;
pub mod facebook;
pub mod imessage;
pub mod linkedin;
pub mod mail;
pub mod phone;
pub mod twitter;
pub mod vcard;

mod sqlite;
pub(crate) mod text;

#[doc(hidden)]
pub mod testing;

pub use phone::Region;

/// The source a contact was imported from: the protocol's
/// [`SourceKind`](kith_protocol::record::SourceKind), whose `source/…` field holds what that
/// source says ([`Provenance`]).
pub use kith_protocol::record::SourceKind as Source;

/// What a source says about a contact, as its `source/…` field stores it: the protocol's
/// [`Source`](kith_protocol::contact::Source), whose `kind()` is the [`Source`] and `to_value()`
/// the field's value. Only the `*Source` messages of `records.proto` can be held here, so a
/// provenance is always a valid value of its `source/…` field.
pub use kith_protocol::contact::Source as Provenance;

contact_card_record! {
    /// One contact as a source describes it, before it is merged with anything else.
    ///
    /// E-mail addresses are as written (trimmed); field keys and identities lowercase them.
    /// Phone numbers are always E.164.
    #[derive(Debug, Clone, PartialEq)]
    pub struct ImportedContact {
        /// The normalized identity of this contact within its source, from which the client
        /// derives the record id (`docs/PROTOCOL.md` §2.1): a LinkedIn profile URL, a lowercased
        /// e-mail address, an E.164 phone number, Facebook's `name|timestamp`, a vCard UID or
        /// `name|first e-mail or phone`.
        pub source_identity: String,
    } card {
        /// What the source says about the contact (its `source/…` field).
        pub provenance: Provenance,
        /// Set when the name was taken from the macOS Contacts database (iMessage import with
        /// an address book): the `source/address-book` field.
        pub address_book: Option<proto::AddressBookSource>,
        /// Record this contact only on a record that exists for another reason (one of its
        /// [`identities`](Self::identities) is known): a one-way Twitter follow.
        pub only_if_known: bool,
    }
}

impl ImportedContact {
    /// A contact with only an identity and a provenance.
    pub fn new(source_identity: String, provenance: Provenance) -> Self {
        ImportedContact {
            source_identity,
            name: None,
            emails: Vec::new(),
            phones: Vec::new(),
            urls: Vec::new(),
            handles: Vec::new(),
            company: None,
            title: None,
            birthday: None,
            note: None,
            provenance,
            address_book: None,
            only_if_known: false,
        }
    }

    /// The source this contact came from.
    pub fn source(&self) -> Source {
        self.provenance.kind()
    }

    /// Every normalized identity the client uses to unify contacts across sources, sorted and
    /// without duplicates: `email:<lowercased>`, `phone:<E.164>`, `linkedin:<profile URL>` (from
    /// any URL that is a LinkedIn profile), plus `facebook:<identity>` or `vcard:<identity>` for
    /// sources whose own identity is none of those.
    pub fn identities(&self) -> Vec<String> {
        let mut out = BTreeSet::new();
        for email in &self.emails {
            out.insert(format!("email:{}", email.address.to_lowercase()));
        }
        for phone in &self.phones {
            out.insert(format!("phone:{}", phone.e164));
        }
        for url in &self.urls {
            if let Some(profile) = linkedin::normalize_profile_url(&url.url) {
                out.insert(format!("linkedin:{profile}"));
            }
        }
        match &self.provenance {
            Provenance::LinkedIn(source) => {
                if let Some(profile) = linkedin::normalize_profile_url(&source.profile_url) {
                    out.insert(format!("linkedin:{profile}"));
                }
            }
            Provenance::Facebook(_) | Provenance::VCard(_) => {
                out.insert(format!("{}:{}", self.source(), self.source_identity));
            }
            Provenance::Twitter(source) => {
                out.insert(format!("twitter:{}", source.account_id));
            }
            Provenance::IMessage(_)
            | Provenance::AddressBook(_)
            | Provenance::Calendar(_)
            | Provenance::Mail(_) => {}
        }
        for handle in &self.handles {
            if handle.service == "twitter" {
                out.insert(format!("twitter-handle:{}", handle.handle.to_lowercase()));
            }
        }
        out.into_iter().collect()
    }

    /// The field writes that record this contact, keyed as in `docs/PROTOCOL.md` §8.
    pub fn field_writes(&self) -> Vec<(String, proto::FieldValue)> {
        use proto::field_value::Value;
        fn value(v: Value) -> proto::FieldValue {
            proto::FieldValue { value: Some(v) }
        }
        let mut out = Vec::new();
        if let Some(name) = &self.name {
            out.push(("name".to_owned(), value(Value::Text(name.clone()))));
        }
        if let Some(company) = &self.company {
            out.push(("company".to_owned(), value(Value::Text(company.clone()))));
        }
        if let Some(title) = &self.title {
            out.push(("title".to_owned(), value(Value::Text(title.clone()))));
        }
        if let Some(birthday) = &self.birthday {
            out.push(("birthday".to_owned(), value(Value::Date(*birthday))));
        }
        if let Some(note) = &self.note {
            out.push(("note".to_owned(), value(Value::Text(note.clone()))));
        }
        for email in &self.emails {
            out.push((
                format!("email/{}", email.address.to_lowercase()),
                value(Value::Email(email.clone())),
            ));
        }
        for phone in &self.phones {
            out.push((
                format!("phone/{}", phone.e164),
                value(Value::Phone(phone.clone())),
            ));
        }
        for url in &self.urls {
            out.push((format!("url/{}", url.url), value(Value::Url(url.clone()))));
        }
        for handle in &self.handles {
            out.push((
                format!("handle/{}:{}", handle.service, handle.handle),
                value(Value::Handle(handle.clone())),
            ));
        }
        out.push((
            FieldKey::source(self.source()).as_str().to_owned(),
            self.provenance.to_value(),
        ));
        if let Some(address_book) = &self.address_book {
            out.push((
                FieldKey::source(Source::AddressBook).as_str().to_owned(),
                value(Value::AddressBook(address_book.clone())),
            ));
        }
        out
    }

    /// Adds what `other` (a second row for the same identity) knows and this contact lacks.
    pub(crate) fn absorb(&mut self, other: ImportedContact, max_values: usize) {
        fill(&mut self.name, other.name);
        fill(&mut self.company, other.company);
        fill(&mut self.title, other.title);
        fill(&mut self.birthday, other.birthday);
        fill(&mut self.note, other.note);
        for email in other.emails {
            text::push_email(&mut self.emails, email, max_values);
        }
        for phone in other.phones {
            text::push_unique(&mut self.phones, phone, max_values, |a, b| a.e164 == b.e164);
        }
        for url in other.urls {
            text::push_unique(&mut self.urls, url, max_values, |a, b| a.url == b.url);
        }
        for handle in other.handles {
            text::push_unique(&mut self.handles, handle, max_values, |a, b| {
                a.service == b.service && a.handle == b.handle
            });
        }
    }
}

fn fill<T>(slot: &mut Option<T>, other: Option<T>) {
    if slot.is_none() {
        *slot = other;
    }
}

/// A row or record that was left out, and why. Reasons never quote contact data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedRow {
    /// Where it is: the 1-based line where the row or card starts (CSV, vCard), the 1-based
    /// entry number in the friends list (Facebook), or the `ROWID` (SQLite databases).
    pub line: usize,
    /// What was wrong with it.
    pub reason: String,
}

/// A field of an imported row or record that was left out (the rest of the row was kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DroppedField {
    /// Where it is, numbered as in [`SkippedRow::line`].
    pub line: usize,
    /// The field or property name as the file calls it (e.g. `Connected On`, `TEL`).
    pub field: String,
    /// What was wrong with it.
    pub reason: String,
}

/// What an import produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImportReport {
    /// The contacts found, one per source identity (duplicates are merged).
    pub contacts: Vec<ImportedContact>,
    /// Rows or records that were left out.
    pub skipped: Vec<SkippedRow>,
    /// Fields that were left out of otherwise imported rows.
    pub dropped: Vec<DroppedField>,
    /// Problems beyond [`ImportOptions::max_reported_problems`]: counted, not listed.
    pub unlisted_problems: usize,
}

impl ImportReport {
    /// Logs how many contacts and skipped rows the import found (`what`: "imported LinkedIn
    /// connections"; counts only, never a name or a value) and returns the report.
    pub(crate) fn logged(self, what: &'static str) -> Self {
        tracing::info!(
            contacts = self.contacts.len(),
            skipped = self.skipped.len(),
            "{what}"
        );
        self
    }

    pub(crate) fn skip(&mut self, opts: &ImportOptions, line: usize, reason: impl Into<String>) {
        if self.skipped.len() + self.dropped.len() < opts.max_reported_problems {
            self.skipped.push(SkippedRow {
                line,
                reason: reason.into(),
            });
        } else {
            self.unlisted_problems = self.unlisted_problems.saturating_add(1);
        }
    }

    pub(crate) fn drop_field(
        &mut self,
        opts: &ImportOptions,
        line: usize,
        field: &str,
        reason: impl Into<String>,
    ) {
        if self.skipped.len() + self.dropped.len() < opts.max_reported_problems {
            let field = text::truncate_chars(field, 64);
            self.dropped.push(DroppedField {
                line,
                field,
                reason: reason.into(),
            });
        } else {
            self.unlisted_problems = self.unlisted_problems.saturating_add(1);
        }
    }
}

/// Limits and settings shared by every importer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportOptions {
    /// Largest file (CSV, JSON, vCard) read into memory. Default 256 MiB.
    pub max_file_bytes: u64,
    /// Largest SQLite database opened. SQLite pages through the file, so memory does not grow
    /// with it, and a heavy Messages user's `chat.db` is several GiB. Default 16 GiB.
    pub max_database_bytes: u64,
    /// Largest file read as a stream (an mbox): memory does not grow with it. Default 64 GiB.
    pub max_stream_bytes: u64,
    /// Most contacts (or handles, or address-book entries) one import may produce; more is
    /// [`ImportError::TooManyRecords`]. Default 1,000,000.
    pub max_records: usize,
    /// Longest value of one field, in bytes after decoding; a longer value is dropped. Default
    /// 16 KiB, and never more than the protocol's text limit allows.
    pub max_field_bytes: usize,
    /// Most values of one multi-valued field (e-mails, phones, URLs, handles) per contact.
    /// Default 100.
    pub max_values_per_field: usize,
    /// Most skipped rows and dropped fields listed in a report; the rest are only counted.
    /// Default 10,000.
    pub max_reported_problems: usize,
    /// Region assumed for phone numbers written without a country code. Default `US`.
    pub default_region: Region,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            max_file_bytes: 256 * 1024 * 1024,
            max_database_bytes: 16 * 1024 * 1024 * 1024,
            max_stream_bytes: 64 * 1024 * 1024 * 1024,
            max_records: 1_000_000,
            max_field_bytes: 16 * 1024,
            max_values_per_field: 100,
            max_reported_problems: 10_000,
            default_region: Region::default(),
        }
    }
}

impl ImportOptions {
    /// The field limit actually applied: the configured one, capped so that a field key plus
    /// its value stays within `kith_protocol::limits::MAX_TEXT_BYTES`.
    pub(crate) fn field_limit(&self) -> usize {
        self.max_field_bytes
            .min(kith_protocol::limits::MAX_TEXT_BYTES / 2)
    }
}

export_enum! {
    /// The exports there is an importer for (`kith import KIND`, the app bindings' import kinds).
    ///
    /// The variants' documentation is also `kith import --help`'s text (with the `clap` feature,
    /// which derives `clap::ValueEnum`). Each is read by the module of its name
    /// ([`linkedin`], [`facebook`], [`imessage`], [`vcard`], [`calendar`], [`mail`], [`twitter`]).
    /// The variants are defined in `mirror.rs`, which the app bindings' copy shares.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    #[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
    pub enum Export
}

/// Reads the export at `path` with its importer. `me` is the person's own addresses (mail and
/// calendar); `address_book` the macOS address book database that names iMessage handles.
pub fn read_export(
    kind: Export,
    path: &Path,
    address_book: Option<&Path>,
    me: &[String],
    opts: &ImportOptions,
) -> Result<ImportReport, ImportError> {
    match kind {
        Export::Calendar => calendar::import(path, me, calendar::now_unix(), opts),
        Export::Mail => mail::import(path, me, opts),
        Export::Twitter => twitter::import(path, opts),
        Export::Linkedin => linkedin::import(path, opts),
        Export::Facebook => facebook::import(path, opts),
        Export::Imessage => imessage::import(path, address_book, opts),
        Export::Vcard => vcard::import(path, opts),
    }
}

/// The kind of file an importer expects; named in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// LinkedIn `Connections.csv`.
    LinkedInConnections,
    /// Facebook `your_friends.json` or `friends.json`.
    FacebookFriends,
    /// macOS Messages `chat.db`.
    MessagesDatabase,
    /// macOS Contacts `AddressBook-v22.abcddb`.
    ContactsDatabase,
    /// vCard (`.vcf`).
    VCard,
    /// iCalendar (`.ics`) or a zip of them.
    Calendar,
    /// mbox.
    Mbox,
    /// Twitter/X archive zip.
    TwitterArchive,
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileKind::LinkedInConnections => "LinkedIn Connections.csv",
            FileKind::FacebookFriends => "Facebook friends JSON file",
            FileKind::MessagesDatabase => "Messages chat.db",
            FileKind::ContactsDatabase => "Contacts AddressBook-v22.abcddb",
            FileKind::VCard => "vCard file",
            FileKind::Calendar => "iCalendar file (.ics) or a zip of them",
            FileKind::Mbox => "mbox file",
            FileKind::TwitterArchive => "Twitter archive zip",
        })
    }
}

/// Why an import failed as a whole. Never carries contact data: at most a row number and a
/// field name.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// The file could not be read.
    #[error("cannot read the {kind}: {source}")]
    Io {
        /// The file being read.
        kind: FileKind,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is over the configured size limit.
    #[error("the {kind} is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The file being read.
        kind: FileKind,
        /// The limit in force.
        limit: u64,
    },
    /// The file is not the kind the importer reads (one error for the whole file).
    #[error("this is not a {expected}: {reason}")]
    WrongKind {
        /// What the importer expected.
        expected: FileKind,
        /// What gave it away.
        reason: String,
    },
    /// The file holds more records than the configured limit.
    #[error("the {kind} holds more than {limit} records")]
    TooManyRecords {
        /// The file being read.
        kind: FileKind,
        /// The limit in force.
        limit: usize,
    },
    /// SQLite failed while reading a database.
    #[error("cannot read the {kind}: {source}")]
    Database {
        /// The database being read.
        kind: FileKind,
        /// SQLite's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// The mail importer was given none of the owner's addresses.
    #[error("the owner's e-mail address is needed (--me EMAIL) to tell sent mail from received")]
    MissingOwner,
    /// A phone region that is not a known two-letter country code.
    #[error("unknown phone region: expected a two-letter country code such as \"US\"")]
    UnknownRegion,
}

/// Reads a whole file, refusing one over `limit` bytes before reading it.
pub(crate) fn read_file(path: &Path, limit: u64, kind: FileKind) -> Result<Vec<u8>, ImportError> {
    read_bounded(open_file(path, limit, kind)?, limit, kind)
}

/// Opens the file at `path` to be read by an importer, refusing one larger than `limit`
/// before anything is read.
pub(crate) fn open_file(
    path: &Path,
    limit: u64,
    kind: FileKind,
) -> Result<std::fs::File, ImportError> {
    let io = |source| ImportError::Io { kind, source };
    let file = std::fs::File::open(path).map_err(io)?;
    if file.metadata().map_err(io)?.len() > limit {
        return Err(ImportError::TooLarge { kind, limit });
    }
    Ok(file)
}

/// Refuses bytes handed to an importer directly (`import_bytes`) that exceed
/// [`ImportOptions::max_file_bytes`], as a file of that size would have been.
pub(crate) fn check_size(
    bytes: &[u8],
    opts: &ImportOptions,
    kind: FileKind,
) -> Result<(), ImportError> {
    if bytes.len() as u64 > opts.max_file_bytes {
        return Err(ImportError::TooLarge {
            kind,
            limit: opts.max_file_bytes,
        });
    }
    Ok(())
}

/// Reads a reader to its end, failing as soon as it yields more than `limit` bytes.
pub(crate) fn read_bounded(
    reader: impl Read,
    limit: u64,
    kind: FileKind,
) -> Result<Vec<u8>, ImportError> {
    let mut bytes = Vec::new();
    reader
        .take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|source| ImportError::Io { kind, source })?;
    if bytes.len() as u64 > limit {
        return Err(ImportError::TooLarge { kind, limit });
    }
    Ok(bytes)
}
