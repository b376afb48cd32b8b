//! Contact records on the wire and in the app (docs/PROTOCOL.md §8).
//!
//! - [`FieldKey`]: a validated field key (`name`, `email/<address>`, `source/linkedin`, …).
//! - [`FieldWrite`] and [`Operation`]: what a device writes, parsed from and encoded to
//!   `proto::Operation`; [`decode_batch`] is the one entry point for untrusted operation bytes.
//! - [`Contact`]: the read-only typed view of one merged record (see [`crate::merge`]).
//!
//! # Field keys and their values
//!
//! | key | value (`proto::FieldValue`) |
//! |---|---|
//! | `name`, `company`, `title`, `note` | `text` |
//! | `birthday` | `date` (year 0 = unknown) |
//! | `email/<address, trimmed and lowercased>` | `email` whose address normalizes to the key |
//! | `phone/<E.164>` | `phone` whose `e164` normalizes to the key |
//! | `url/<url, trimmed>` | `url` whose url normalizes to the key |
//! | `handle/<service, lowercased>:<handle>` | `handle` matching the key |
//! | `tag/<tag, trimmed>` | `flag: true` |
//! | `source/<linkedin, facebook, imessage, address-book or vcard>` | that source's message |
//! | `source/calendar`, `source/mail` | `calendar`, `mail`: joined, not last-writer-wins ([`crate::history`]) |
//! | `source/twitter` | `twitter` |
//! | `custom/<name, trimmed>` | any value |
//!
//! A write without a value removes the field (or the set element: `email/…`, `tag/…`). Every
//! string, key or value, is at most [`MAX_TEXT_BYTES`] long.
//!
//! # Replacing several heads at once
//!
//! A write lists every clock it replaces: after a conflict, an edit made having seen both
//! values replaces both and so clears the conflict (see [`crate::merge`]). On the wire,
//! `FieldWrite.replaces` holds one clock, so a write replacing `n > 1` clocks is encoded as `n`
//! `FieldWrite`s with the same key and value, one per replaced clock; decoding groups them back.
//! Two wire writes of the same key with different values in one operation are an error.
//!
//! ```
//! use kith_protocol::{DeviceId, RecordId};
//! use kith_protocol::hlc::HlcClock;
//! use kith_protocol::record::{FieldKey, FieldWrite, Operation, decode_batch, encode_batch, value};
//!
//! let mut clock = HlcClock::new(DeviceId::from_bytes([1; 16]));
//! let name = FieldWrite::set(FieldKey::name(), value::text("Ada Lovelace"), [])?;
//! let email = FieldWrite::set(
//!     FieldKey::email(" Ada@Example.org")?,
//!     value::email("Ada@Example.org", "work"),
//!     [],
//! )?;
//! let op = Operation::upsert(RecordId::from_bytes([9; 16]), clock.tick(1_000), [name, email])?;
//! let bytes = encode_batch(std::slice::from_ref(&op))?;
//! assert_eq!(decode_batch(&bytes)?, vec![op]);
//! # Ok::<(), kith_protocol::record::RecordError>(())
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use prost::Message;

use crate::hlc::{Hlc, HlcError};
use crate::ids::{DeviceId, IdLengthError, RecordId};
use crate::limits::{
    MAX_OPAQUE_VALUE_BYTES, MAX_OPERATIONS_PER_BATCH, MAX_PAYLOAD_BYTES, MAX_TEXT_BYTES,
    MAX_WRITES_PER_OPERATION,
};
use crate::merge::RecordState;
use crate::proto;
use crate::proto::field_value::Value;

/// How many bytes of an unknown field key an error shows: enough to recognise a field kind from
/// a newer protocol version, too few to carry a whole address or name.
const KEY_PREFIX_BYTES: usize = 12;

/// Why a field key, a field value, an operation or a batch was rejected.
///
/// Messages name the field kind and the problem, never the contact data itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The field key is longer than [`MAX_TEXT_BYTES`].
    #[error("field key is {len} bytes, more than {max}", max = MAX_TEXT_BYTES)]
    FieldKeyTooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The field key starts with no known prefix (or names no known source).
    #[error("unknown field key starting {key_prefix:?}")]
    UnknownFieldKey {
        /// At most 12 bytes of the key.
        key_prefix: String,
    },
    /// The key has a known prefix but the rest is not in canonical form.
    #[error("invalid {field} key: {problem}")]
    InvalidFieldKey {
        /// The kind of field.
        field: FieldKind,
        /// What is wrong with it.
        problem: KeyProblem,
    },
    /// A `FieldValue` with no value set (use an absent value to remove a field).
    #[error("{field} value is empty")]
    EmptyValue {
        /// The kind of field.
        field: FieldKind,
    },
    /// The value's type is not the one the field takes.
    #[error("{field} value must be {expected}")]
    WrongValueType {
        /// The kind of field.
        field: FieldKind,
        /// The value type the field takes.
        expected: &'static str,
    },
    /// The value names another element than its key (e.g. `email/a@x` holding `b@x`).
    #[error("{field} value does not match its key")]
    ValueDoesNotMatchKey {
        /// The kind of field.
        field: FieldKind,
    },
    /// A string in the value is longer than [`MAX_TEXT_BYTES`].
    #[error("{field} value holds a string of {len} bytes, more than {max}", max = MAX_TEXT_BYTES)]
    TextTooLong {
        /// The kind of field.
        field: FieldKind,
        /// The string's length in bytes.
        len: usize,
    },
    /// A calendar or mail history holds more elements than its bounds, or a sketch that is
    /// not sorted ([`crate::history`]).
    #[error("{field} value is out of bounds or not canonical")]
    HistoryOutOfBounds {
        /// The kind of field.
        field: FieldKind,
    },
    /// A date in the value is not a calendar date.
    #[error("{field} value holds an invalid date")]
    InvalidDate {
        /// The kind of field.
        field: FieldKind,
    },
    /// The operation's record id is not 16 bytes.
    #[error("invalid record id: {0}")]
    InvalidRecordId(#[from] IdLengthError),
    /// The operation has no clock.
    #[error("operation has no clock")]
    MissingClock,
    /// A clock of the operation is invalid.
    #[error("invalid clock: {0}")]
    InvalidClock(#[from] HlcError),
    /// The operation is neither an upsert nor a delete.
    #[error("operation is neither an upsert nor a delete")]
    MissingOperationKind,
    /// The same field is written twice in one operation (with different values, on the wire).
    #[error("{field} field written twice in one operation")]
    DuplicateFieldKey {
        /// The kind of field.
        field: FieldKind,
    },
    /// A write replaces a clock that is not earlier than the operation's own clock.
    #[error("{field} write replaces a clock not earlier than its own")]
    ReplacesNotEarlier {
        /// The kind of field.
        field: FieldKind,
    },
    /// More than [`MAX_WRITES_PER_OPERATION`] field writes (as encoded) in one operation.
    #[error("operation has {count} field writes, more than {max}", max = MAX_WRITES_PER_OPERATION)]
    TooManyWrites {
        /// How many.
        count: usize,
    },
    /// More than [`MAX_OPERATIONS_PER_BATCH`] operations in one batch.
    #[error("batch has {count} operations, more than {max}", max = MAX_OPERATIONS_PER_BATCH)]
    TooManyOperations {
        /// How many.
        count: usize,
    },
    /// The encoded batch is larger than [`MAX_PAYLOAD_BYTES`].
    #[error("batch is {len} bytes, more than {max}", max = MAX_PAYLOAD_BYTES)]
    BatchTooLarge {
        /// Its length in bytes.
        len: usize,
    },
    /// The batch is not a valid protobuf `OperationBatch`.
    #[error("batch does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
    /// An operation of a batch is invalid.
    #[error("operation {index} of the batch: {source}")]
    InOperation {
        /// Its position in the batch.
        index: usize,
        /// What is wrong with it.
        source: Box<RecordError>,
    },
}

/// What is wrong with a field key whose prefix is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyProblem {
    /// A single-valued field (`name`, …) followed by `/…`.
    #[error("takes no suffix")]
    UnexpectedSuffix,
    /// A multi-valued field (`email/…`, …) with nothing after the prefix.
    #[error("has an empty suffix")]
    EmptySuffix,
    /// Leading or trailing whitespace.
    #[error("is not trimmed")]
    NotTrimmed,
    /// A control character.
    #[error("contains a control character")]
    ControlCharacter,
    /// Whitespace inside an address, number, url or handle.
    #[error("contains whitespace")]
    Whitespace,
    /// An uppercase character in an e-mail address or service name.
    #[error("is not lowercase")]
    NotLowercase,
    /// An e-mail address without `@`.
    #[error("is not an e-mail address")]
    NotEmailAddress,
    /// A phone number not of the form `+` and 1–15 digits, the first non-zero.
    #[error("is not an E.164 phone number")]
    NotE164,
    /// A handle not of the form `<service>:<handle>`, both non-empty.
    #[error("is not <service>:<handle>")]
    NotServiceHandle,
    /// A service name with characters other than `a-z`, `0-9`, `.`, `_`, `-`.
    #[error("has an invalid service name")]
    InvalidService,
    /// A `merged/…` or `distinct/…` suffix that is not a record id in 32 lowercase hex digits.
    #[error("is not a record id (32 lowercase hex digits)")]
    NotRecordId,
}

/// Where a contact was imported from; each has one `source/<name>` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SourceKind {
    /// `source/linkedin`: a first-degree connection.
    LinkedIn,
    /// `source/facebook`: a friend.
    Facebook,
    /// `source/imessage`: aggregate message counts for a handle.
    IMessage,
    /// `source/address-book`: the name stored for a phone number or e-mail.
    AddressBook,
    /// `source/vcard`: an imported vCard.
    VCard,
    /// `source/calendar`: meetings with the contact (a joined history, [`crate::history`]).
    Calendar,
    /// `source/mail`: mail header statistics and recent subjects (a joined history).
    Mail,
    /// `source/twitter`: a Twitter/X account and which way you follow each other.
    Twitter,
}

impl SourceKind {
    /// Every source, in key order.
    pub const ALL: [SourceKind; 8] = [
        SourceKind::AddressBook,
        SourceKind::Calendar,
        SourceKind::Facebook,
        SourceKind::IMessage,
        SourceKind::LinkedIn,
        SourceKind::Mail,
        SourceKind::Twitter,
        SourceKind::VCard,
    ];

    /// The name after `source/` in the field key.
    pub const fn as_str(self) -> &'static str {
        match self {
            SourceKind::LinkedIn => "linkedin",
            SourceKind::Facebook => "facebook",
            SourceKind::IMessage => "imessage",
            SourceKind::AddressBook => "address-book",
            SourceKind::VCard => "vcard",
            SourceKind::Calendar => "calendar",
            SourceKind::Mail => "mail",
            SourceKind::Twitter => "twitter",
        }
    }

    /// Whether the field's heads are joined ([`crate::history::join`]) rather than the
    /// newest one shown: `source/calendar` and `source/mail`.
    pub const fn is_joined(self) -> bool {
        matches!(self, SourceKind::Calendar | SourceKind::Mail)
    }

    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}

/// The kind of a field: its key's prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FieldKind {
    /// `name`.
    Name,
    /// `company`.
    Company,
    /// `title`.
    Title,
    /// `birthday`.
    Birthday,
    /// `note`: private to its owner.
    Note,
    /// `email/<address>`.
    Email,
    /// `phone/<E.164>`.
    Phone,
    /// `url/<url>`.
    Url,
    /// `handle/<service>:<handle>`.
    Handle,
    /// `tag/<tag>`.
    Tag,
    /// `source/<name>`.
    Source(SourceKind),
    /// `custom/<name>`.
    Custom,
    /// `merged/<record id, 32 lowercase hex>`: this record and the one named are the same
    /// person (issue 11; docs/PROTOCOL.md §8.4). Later than protocol 1.0.
    Merged,
    /// `distinct/<record id, 32 lowercase hex>`: this record and the one named were separated
    /// by hand and are two people; the identity rule never merges them again (§8.4). Later
    /// than protocol 1.0.
    Distinct,
    /// A key of a kind this version does not know, written by a newer device: its values are
    /// carried verbatim, merged like any other register and never shown (docs/PROTOCOL.md §8.1).
    Unknown,
}

impl FieldKind {
    /// The key prefix: `name`, `email`, `source/linkedin`, …
    pub const fn as_str(self) -> &'static str {
        match self {
            FieldKind::Name => "name",
            FieldKind::Company => "company",
            FieldKind::Title => "title",
            FieldKind::Birthday => "birthday",
            FieldKind::Note => "note",
            FieldKind::Email => "email",
            FieldKind::Phone => "phone",
            FieldKind::Url => "url",
            FieldKind::Handle => "handle",
            FieldKind::Tag => "tag",
            FieldKind::Source(SourceKind::LinkedIn) => "source/linkedin",
            FieldKind::Source(SourceKind::Facebook) => "source/facebook",
            FieldKind::Source(SourceKind::IMessage) => "source/imessage",
            FieldKind::Source(SourceKind::AddressBook) => "source/address-book",
            FieldKind::Source(SourceKind::VCard) => "source/vcard",
            FieldKind::Source(SourceKind::Calendar) => "source/calendar",
            FieldKind::Source(SourceKind::Mail) => "source/mail",
            FieldKind::Source(SourceKind::Twitter) => "source/twitter",
            FieldKind::Custom => "custom",
            FieldKind::Merged => "merged",
            FieldKind::Distinct => "distinct",
            FieldKind::Unknown => "unknown",
        }
    }

    /// Whether the kind belongs to protocol 1.0 (Kith 0.1.0): its writes travel in
    /// `Upsert.writes` and `RecordState.fields`; every later kind travels in the extension
    /// lists, which a 0.1.0 reader skips (docs/PROTOCOL.md §8.1).
    ///
    /// The list is closed: a kind added by any later release is not in it, whatever it is.
    pub const fn is_protocol_1_0(self) -> bool {
        matches!(
            self,
            FieldKind::Name
                | FieldKind::Company
                | FieldKind::Title
                | FieldKind::Birthday
                | FieldKind::Note
                | FieldKind::Email
                | FieldKind::Phone
                | FieldKind::Url
                | FieldKind::Handle
                | FieldKind::Tag
                | FieldKind::Source(
                    SourceKind::LinkedIn
                        | SourceKind::Facebook
                        | SourceKind::IMessage
                        | SourceKind::AddressBook
                        | SourceKind::VCard
                )
                | FieldKind::Custom
        )
    }

    /// Whether keys of this kind carry a suffix (`email/<address>`, …): a set of registers.
    pub const fn is_multi_valued(self) -> bool {
        matches!(
            self,
            FieldKind::Email
                | FieldKind::Phone
                | FieldKind::Url
                | FieldKind::Handle
                | FieldKind::Tag
                | FieldKind::Custom
                | FieldKind::Merged
                | FieldKind::Distinct
        )
    }

    /// Whether the kind links records (`merged/…`, `distinct/…`) rather than describing the
    /// person: such fields are not shown and do not make a record live on their own.
    pub const fn is_link(self) -> bool {
        matches!(self, FieldKind::Merged | FieldKind::Distinct)
    }

    /// The value type this kind of field takes, as named in errors.
    pub const fn expected_value(self) -> &'static str {
        match self {
            FieldKind::Name | FieldKind::Company | FieldKind::Title | FieldKind::Note => "text",
            FieldKind::Birthday => "a date",
            FieldKind::Email => "an email",
            FieldKind::Phone => "a phone",
            FieldKind::Url => "a url",
            FieldKind::Handle => "a handle",
            FieldKind::Tag | FieldKind::Merged | FieldKind::Distinct => "flag true",
            FieldKind::Source(SourceKind::LinkedIn) => "a linkedin source",
            FieldKind::Source(SourceKind::Facebook) => "a facebook source",
            FieldKind::Source(SourceKind::IMessage) => "an imessage source",
            FieldKind::Source(SourceKind::AddressBook) => "an address book source",
            FieldKind::Source(SourceKind::VCard) => "a vcard source",
            FieldKind::Source(SourceKind::Calendar) => "a calendar source",
            FieldKind::Source(SourceKind::Mail) => "a mail source",
            FieldKind::Source(SourceKind::Twitter) => "a twitter source",
            FieldKind::Custom => "any value",
            FieldKind::Unknown => "any value (carried verbatim)",
        }
    }

    fn accepts(self, value: &Value) -> bool {
        match (self, value) {
            (FieldKind::Name | FieldKind::Company | FieldKind::Title | FieldKind::Note, v) => {
                matches!(v, Value::Text(_))
            }
            (FieldKind::Birthday, v) => matches!(v, Value::Date(_)),
            (FieldKind::Email, v) => matches!(v, Value::Email(_)),
            (FieldKind::Phone, v) => matches!(v, Value::Phone(_)),
            (FieldKind::Url, v) => matches!(v, Value::Url(_)),
            (FieldKind::Handle, v) => matches!(v, Value::Handle(_)),
            (FieldKind::Tag | FieldKind::Merged | FieldKind::Distinct, v) => {
                matches!(v, Value::Flag(true))
            }
            (FieldKind::Source(SourceKind::LinkedIn), v) => matches!(v, Value::Linkedin(_)),
            (FieldKind::Source(SourceKind::Facebook), v) => matches!(v, Value::Facebook(_)),
            (FieldKind::Source(SourceKind::IMessage), v) => matches!(v, Value::Imessage(_)),
            (FieldKind::Source(SourceKind::AddressBook), v) => {
                matches!(v, Value::AddressBook(_))
            }
            (FieldKind::Source(SourceKind::VCard), v) => matches!(v, Value::Vcard(_)),
            (FieldKind::Source(SourceKind::Calendar), v) => matches!(v, Value::Calendar(_)),
            (FieldKind::Source(SourceKind::Mail), v) => matches!(v, Value::Mail(_)),
            (FieldKind::Source(SourceKind::Twitter), v) => matches!(v, Value::Twitter(_)),
            (FieldKind::Custom, _) | (FieldKind::Unknown, Value::Opaque(_)) => true,
            (FieldKind::Unknown, _) => false,
        }
    }
}

impl fmt::Display for FieldKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A field key in canonical form (docs/PROTOCOL.md §8), ordered as its string.
///
/// Only valid keys can be held: build one with [`FieldKey::parse`] (untrusted input, must
/// already be canonical) or a constructor such as [`FieldKey::email`] (normalizes first).
///
/// ```
/// use kith_protocol::record::{FieldKey, FieldKind};
/// let key = FieldKey::email("  Ada@Example.org ")?;
/// assert_eq!(key.as_str(), "email/ada@example.org");
/// assert_eq!(key.kind(), FieldKind::Email);
/// assert_eq!(FieldKey::parse("email/ada@example.org")?, key);
/// assert!(FieldKey::parse("email/Ada@Example.org").is_err());
/// # Ok::<(), kith_protocol::record::RecordError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FieldKey {
    // `kind` is a function of `key`, so the derived order is the order of the key string.
    key: String,
    kind: FieldKind,
}

impl FieldKey {
    /// Parses an untrusted key, which must already be in canonical form.
    pub fn parse(key: &str) -> Result<Self, RecordError> {
        if key.len() > MAX_TEXT_BYTES {
            return Err(RecordError::FieldKeyTooLong { len: key.len() });
        }
        let (prefix, suffix) = match key.split_once('/') {
            Some((prefix, suffix)) => (prefix, Some(suffix)),
            None => (key, None),
        };
        let unknown = || RecordError::UnknownFieldKey {
            key_prefix: short_prefix(key),
        };
        let kind = match prefix {
            "name" => FieldKind::Name,
            "company" => FieldKind::Company,
            "title" => FieldKind::Title,
            "birthday" => FieldKind::Birthday,
            "note" => FieldKind::Note,
            "email" => FieldKind::Email,
            "phone" => FieldKind::Phone,
            "url" => FieldKind::Url,
            "handle" => FieldKind::Handle,
            "tag" => FieldKind::Tag,
            "custom" => FieldKind::Custom,
            "merged" => FieldKind::Merged,
            "distinct" => FieldKind::Distinct,
            "source" => match suffix.map(|name| (SourceKind::from_name(name), name)) {
                Some((Some(source), _)) => return Ok(Self::source(source)),
                Some((None, name)) if is_kind_name(name) => FieldKind::Unknown,
                _ => return Err(unknown()),
            },
            prefix if is_kind_name(prefix) => FieldKind::Unknown,
            _ => return Err(unknown()),
        };
        if kind == FieldKind::Unknown {
            // A newer version's key: only its shape can be checked.
            if let Some(suffix) = suffix.filter(|_| prefix != "source") {
                check_suffix(kind, suffix).map_err(|problem| RecordError::InvalidFieldKey {
                    field: kind,
                    problem,
                })?;
            }
            return Ok(Self {
                key: key.to_owned(),
                kind,
            });
        }
        match (kind.is_multi_valued(), suffix) {
            (false, None) => {}
            (false, Some(_)) => {
                return Err(RecordError::InvalidFieldKey {
                    field: kind,
                    problem: KeyProblem::UnexpectedSuffix,
                });
            }
            (true, suffix) => {
                check_suffix(kind, suffix.unwrap_or_default()).map_err(|problem| {
                    RecordError::InvalidFieldKey {
                        field: kind,
                        problem,
                    }
                })?
            }
        }
        Ok(Self {
            key: key.to_owned(),
            kind,
        })
    }

    fn single(kind: FieldKind) -> Self {
        Self {
            key: kind.as_str().to_owned(),
            kind,
        }
    }

    /// Builds `<kind>/<suffix>` from an already normalized suffix, and validates it.
    fn with_suffix(kind: FieldKind, suffix: &str) -> Result<Self, RecordError> {
        let key = format!("{}/{suffix}", kind.as_str());
        if key.len() > MAX_TEXT_BYTES {
            return Err(RecordError::FieldKeyTooLong { len: key.len() });
        }
        check_suffix(kind, suffix).map_err(|problem| RecordError::InvalidFieldKey {
            field: kind,
            problem,
        })?;
        Ok(Self { key, kind })
    }

    /// `name`.
    pub fn name() -> Self {
        Self::single(FieldKind::Name)
    }

    /// `company`.
    pub fn company() -> Self {
        Self::single(FieldKind::Company)
    }

    /// `title`.
    pub fn title() -> Self {
        Self::single(FieldKind::Title)
    }

    /// `birthday`.
    pub fn birthday() -> Self {
        Self::single(FieldKind::Birthday)
    }

    /// `note`.
    pub fn note() -> Self {
        Self::single(FieldKind::Note)
    }

    /// `email/<address>`: the address trimmed and lowercased; it must contain `@`.
    pub fn email(address: &str) -> Result<Self, RecordError> {
        Self::with_suffix(FieldKind::Email, &address.trim().to_lowercase())
    }

    /// `phone/<E.164>`: spaces, `-`, `.`, `(` and `)` are removed; the rest must be `+` and
    /// 1–15 digits. Numbers without a country code cannot be normalized here.
    pub fn phone(number: &str) -> Result<Self, RecordError> {
        let digits: String = number
            .chars()
            .filter(|c| !(c.is_whitespace() || matches!(c, '-' | '.' | '(' | ')')))
            .collect();
        Self::with_suffix(FieldKind::Phone, &digits)
    }

    /// `url/<url>`: the url trimmed; it must not contain whitespace.
    pub fn url(url: &str) -> Result<Self, RecordError> {
        Self::with_suffix(FieldKind::Url, url.trim())
    }

    /// `handle/<service>:<handle>`: the service trimmed and lowercased, the handle trimmed.
    pub fn handle(service: &str, handle: &str) -> Result<Self, RecordError> {
        let suffix = format!("{}:{}", service.trim().to_lowercase(), handle.trim());
        Self::with_suffix(FieldKind::Handle, &suffix)
    }

    /// `tag/<tag>`: the tag trimmed.
    pub fn tag(tag: &str) -> Result<Self, RecordError> {
        Self::with_suffix(FieldKind::Tag, tag.trim())
    }

    /// `source/<name>`.
    pub fn source(source: SourceKind) -> Self {
        Self::single(FieldKind::Source(source))
    }

    /// `custom/<name>`: the name trimmed.
    pub fn custom(name: &str) -> Result<Self, RecordError> {
        Self::with_suffix(FieldKind::Custom, name.trim())
    }

    /// `merged/<id>`: this record is the same person as record `id` (§8.4).
    pub fn merged(id: &RecordId) -> Self {
        Self {
            key: format!("{}/{}", FieldKind::Merged.as_str(), id.to_hex()),
            kind: FieldKind::Merged,
        }
    }

    /// `distinct/<id>`: this record and record `id` are two people (§8.4).
    pub fn distinct(id: &RecordId) -> Self {
        Self {
            key: format!("{}/{}", FieldKind::Distinct.as_str(), id.to_hex()),
            kind: FieldKind::Distinct,
        }
    }

    /// The record a `merged/…` or `distinct/…` key names; `None` for other kinds.
    pub fn linked_record(&self) -> Option<RecordId> {
        if self.kind.is_link() {
            self.detail().and_then(RecordId::from_hex)
        } else {
            None
        }
    }

    /// The key as written on the wire.
    pub fn as_str(&self) -> &str {
        &self.key
    }

    /// The kind of field.
    pub fn kind(&self) -> FieldKind {
        self.kind
    }

    /// What follows `<kind>/` for multi-valued kinds (the address, number, url,
    /// `service:handle`, tag or custom name); `None` for single-valued kinds and sources.
    pub fn detail(&self) -> Option<&str> {
        if self.kind.is_multi_valued() {
            self.key.get(self.kind.as_str().len() + 1..)
        } else {
            None
        }
    }

    /// Checks that `value` is a valid value of this field: the right type, bounded strings,
    /// calendar dates, and for `email`/`phone`/`url`/`handle` the element named by the key.
    pub fn check_value(&self, value: &proto::FieldValue) -> Result<(), RecordError> {
        let field = self.kind;
        let inner = value
            .value
            .as_ref()
            .ok_or(RecordError::EmptyValue { field })?;
        check_contents(field, inner)?;
        if !field.accepts(inner) {
            return Err(RecordError::WrongValueType {
                field,
                expected: field.expected_value(),
            });
        }
        let named = match inner {
            Value::Email(email) if field == FieldKind::Email => Self::email(&email.address),
            Value::Phone(phone) if field == FieldKind::Phone => Self::phone(&phone.e164),
            Value::Url(url) if field == FieldKind::Url => Self::url(&url.url),
            Value::Handle(handle) if field == FieldKind::Handle => {
                Self::handle(&handle.service, &handle.handle)
            }
            _ => return Ok(()),
        };
        if named.ok().as_ref() == Some(self) {
            Ok(())
        } else {
            Err(RecordError::ValueDoesNotMatchKey { field })
        }
    }
}

impl fmt::Display for FieldKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key)
    }
}

/// Whether `name` can name a field kind (or a source) of a newer version: 1 to 32 bytes of
/// lowercase ASCII letters, digits and `-`, starting with a letter. Keys of any other shape are
/// malformed, not newer.
fn is_kind_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// At most [`KEY_PREFIX_BYTES`] of `key`, cut at a character boundary.
fn short_prefix(key: &str) -> String {
    let mut end = key.len().min(KEY_PREFIX_BYTES);
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    key[..end].to_owned()
}

fn check_suffix(kind: FieldKind, suffix: &str) -> Result<(), KeyProblem> {
    if suffix.is_empty() {
        return Err(KeyProblem::EmptySuffix);
    }
    if suffix.chars().any(char::is_control) {
        return Err(KeyProblem::ControlCharacter);
    }
    if suffix.trim() != suffix {
        return Err(KeyProblem::NotTrimmed);
    }
    let has_whitespace = |text: &str| text.chars().any(char::is_whitespace);
    match kind {
        FieldKind::Email => {
            if has_whitespace(suffix) {
                Err(KeyProblem::Whitespace)
            } else if suffix.to_lowercase() != suffix {
                Err(KeyProblem::NotLowercase)
            } else if !suffix.contains('@') {
                Err(KeyProblem::NotEmailAddress)
            } else {
                Ok(())
            }
        }
        FieldKind::Phone => {
            let digits = suffix.strip_prefix('+').unwrap_or_default();
            let valid = (1..=15).contains(&digits.len())
                && digits.bytes().all(|b| b.is_ascii_digit())
                && !digits.starts_with('0');
            if valid {
                Ok(())
            } else {
                Err(KeyProblem::NotE164)
            }
        }
        FieldKind::Url => {
            if has_whitespace(suffix) {
                Err(KeyProblem::Whitespace)
            } else {
                Ok(())
            }
        }
        FieldKind::Handle => {
            let (service, _) = suffix
                .split_once(':')
                .filter(|(service, handle)| !service.is_empty() && !handle.is_empty())
                .ok_or(KeyProblem::NotServiceHandle)?;
            if has_whitespace(suffix) {
                Err(KeyProblem::Whitespace)
            } else if service.to_lowercase() != service {
                Err(KeyProblem::NotLowercase)
            } else if !service
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            {
                Err(KeyProblem::InvalidService)
            } else {
                Ok(())
            }
        }
        FieldKind::Merged | FieldKind::Distinct => {
            let hex = suffix.len() == 32
                && suffix
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if hex {
                Ok(())
            } else {
                Err(KeyProblem::NotRecordId)
            }
        }
        // Tags and custom names may contain inner spaces.
        _ => Ok(()),
    }
}

fn check_text(field: FieldKind, text: &str) -> Result<(), RecordError> {
    if text.len() > MAX_TEXT_BYTES {
        Err(RecordError::TextTooLong {
            field,
            len: text.len(),
        })
    } else {
        Ok(())
    }
}

fn check_date(field: FieldKind, date: &proto::Date) -> Result<(), RecordError> {
    let year = date.year;
    let leap = year == 0
        || (year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)));
    let days_in_month = match date.month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => 0,
    };
    if date.year <= 9999 && (1..=days_in_month).contains(&date.day) {
        Ok(())
    } else {
        Err(RecordError::InvalidDate { field })
    }
}

/// Bounds every string and checks every date inside a value, whatever its type.
fn check_contents(field: FieldKind, value: &Value) -> Result<(), RecordError> {
    let texts = |texts: &[&str]| texts.iter().try_for_each(|text| check_text(field, text));
    match value {
        Value::Text(text) => check_text(field, text),
        Value::Date(date) => check_date(field, date),
        Value::Email(email) => texts(&[&email.address, &email.label]),
        Value::Phone(phone) => texts(&[&phone.e164, &phone.label]),
        Value::Url(url) => texts(&[&url.url, &url.label]),
        Value::Handle(handle) => texts(&[&handle.service, &handle.handle]),
        Value::Linkedin(linkedin) => {
            texts(&[&linkedin.profile_url, &linkedin.company, &linkedin.position])?;
            linkedin
                .connected_on
                .as_ref()
                .map_or(Ok(()), |date| check_date(field, date))
        }
        Value::Imessage(imessage) => check_text(field, &imessage.handle),
        Value::AddressBook(address_book) => check_text(field, &address_book.name),
        Value::Vcard(vcard) => check_text(field, &vcard.uid),
        Value::Facebook(_) | Value::Flag(_) | Value::Opaque(_) => Ok(()),
        Value::Calendar(calendar) => {
            if !crate::history::calendar_is_valid(calendar) {
                return Err(RecordError::HistoryOutOfBounds { field });
            }
            for meeting in &calendar.recent {
                check_text(field, &meeting.title)?;
                for participant in &meeting.participants {
                    texts(&[&participant.email, &participant.name])?;
                }
            }
            Ok(())
        }
        Value::Mail(mail) => {
            if !crate::history::mail_is_valid(mail) {
                return Err(RecordError::HistoryOutOfBounds { field });
            }
            mail.recent
                .iter()
                .try_for_each(|subject| check_text(field, &subject.subject))
        }
        Value::Twitter(twitter) => texts(&[
            &twitter.account_id,
            &twitter.screen_name,
            &twitter.display_name,
        ]),
    }
}

/// Decodes an encoded `FieldValue` (the bytes of `FieldWrite.value` or `StoredWrite.value`)
/// for `key`, and checks it ([`FieldKey::check_value`]).
///
/// A value of an [`FieldKind::Unknown`] key is kept verbatim as [`Value::Opaque`], and so is a
/// `custom/…` value of a type this version does not know; a value of any other key must decode
/// to a type this version knows. The `opaque` variant itself is never valid on the wire.
pub fn decode_value(key: &FieldKey, bytes: &[u8]) -> Result<proto::FieldValue, RecordError> {
    let field = key.kind;
    if field == FieldKind::Unknown {
        if bytes.len() > MAX_OPAQUE_VALUE_BYTES {
            return Err(RecordError::TextTooLong {
                field,
                len: bytes.len(),
            });
        }
        return Ok(value::opaque(bytes));
    }
    let decoded = proto::FieldValue::decode(bytes)?;
    let value = match decoded.value {
        Some(Value::Opaque(_)) => {
            return Err(RecordError::WrongValueType {
                field,
                expected: field.expected_value(),
            });
        }
        None if field == FieldKind::Custom && !bytes.is_empty() => value::opaque(bytes),
        _ => decoded,
    };
    key.check_value(&value)?;
    Ok(value)
}

/// The encoding of a value as `FieldWrite.value` carries it: an opaque value's original bytes,
/// otherwise the `FieldValue` message.
pub fn encode_value(value: &proto::FieldValue) -> Vec<u8> {
    match &value.value {
        Some(Value::Opaque(bytes)) => bytes.clone(),
        _ => value.encode_to_vec(),
    }
}

/// The length of [`encode_value`]'s result, without encoding.
pub(crate) fn encoded_value_len(value: &proto::FieldValue) -> usize {
    match &value.value {
        Some(Value::Opaque(bytes)) => bytes.len(),
        _ => value.encoded_len(),
    }
}

/// Builders for `proto::FieldValue`s.
pub mod value {
    use crate::proto;
    use crate::proto::field_value::Value;

    fn wrap(value: Value) -> proto::FieldValue {
        proto::FieldValue { value: Some(value) }
    }

    /// A text value (`name`, `company`, `title`, `note`, custom fields).
    pub fn text(text: impl Into<String>) -> proto::FieldValue {
        wrap(Value::Text(text.into()))
    }

    /// A date value (`birthday`); year 0 means unknown.
    pub fn date(year: u32, month: u32, day: u32) -> proto::FieldValue {
        wrap(Value::Date(proto::Date { year, month, day }))
    }

    /// An e-mail value; the address may keep its original case.
    pub fn email(address: impl Into<String>, label: impl Into<String>) -> proto::FieldValue {
        wrap(Value::Email(proto::Email {
            address: address.into(),
            label: label.into(),
        }))
    }

    /// A phone value; `e164` must normalize to the key's number.
    pub fn phone(e164: impl Into<String>, label: impl Into<String>) -> proto::FieldValue {
        wrap(Value::Phone(proto::Phone {
            e164: e164.into(),
            label: label.into(),
        }))
    }

    /// A url value.
    pub fn url(url: impl Into<String>, label: impl Into<String>) -> proto::FieldValue {
        wrap(Value::Url(proto::Url {
            url: url.into(),
            label: label.into(),
        }))
    }

    /// A handle value.
    pub fn handle(service: impl Into<String>, handle: impl Into<String>) -> proto::FieldValue {
        wrap(Value::Handle(proto::Handle {
            service: service.into(),
            handle: handle.into(),
        }))
    }

    /// The verbatim encoding of a value this version cannot read (see [`super::decode_value`]).
    pub fn opaque(bytes: &[u8]) -> proto::FieldValue {
        wrap(Value::Opaque(bytes.to_vec()))
    }

    /// The value of a present tag: `flag: true`.
    pub fn tag() -> proto::FieldValue {
        wrap(Value::Flag(true))
    }
}

/// One field of one write: set `key` to `value` (or remove it), replacing the listed clocks.
///
/// `replaces` are the clocks of the values the writer saw: usually
/// [`RecordState::replaces`] for that key. Replacing every head clears a conflict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldWrite {
    key: FieldKey,
    value: Option<proto::FieldValue>,
    replaces: BTreeSet<Hlc>,
}

impl FieldWrite {
    /// Sets `key` to `value`; fails if the value does not fit the key
    /// ([`FieldKey::check_value`]).
    pub fn set(
        key: FieldKey,
        value: proto::FieldValue,
        replaces: impl IntoIterator<Item = Hlc>,
    ) -> Result<Self, RecordError> {
        key.check_value(&value)?;
        Ok(Self {
            key,
            value: Some(value),
            replaces: replaces.into_iter().collect(),
        })
    }

    /// Removes `key` (the field, or the set element).
    pub fn remove(key: FieldKey, replaces: impl IntoIterator<Item = Hlc>) -> Self {
        Self {
            key,
            value: None,
            replaces: replaces.into_iter().collect(),
        }
    }

    /// The field written.
    pub fn key(&self) -> &FieldKey {
        &self.key
    }

    /// The new value; `None` removes the field.
    pub fn value(&self) -> Option<&proto::FieldValue> {
        self.value.as_ref()
    }

    /// The clocks this write replaces.
    pub fn replaces(&self) -> &BTreeSet<Hlc> {
        &self.replaces
    }

    /// How many wire `FieldWrite`s this takes: one per replaced clock, at least one.
    fn wire_len(&self) -> usize {
        self.replaces.len().max(1)
    }
}

/// What an [`Operation`] does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperationKind {
    /// Writes fields; at most one write per key, sorted by key.
    Upsert(Vec<FieldWrite>),
    /// Deletes the record: hides every write with a clock up to the operation's.
    Delete,
}

/// One change to one record, stamped with one clock. Valid by construction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    record: RecordId,
    clock: Hlc,
    kind: OperationKind,
}

impl Operation {
    /// Writes fields of `record` at `clock`.
    ///
    /// Fails if a key is written twice, a write replaces a clock not earlier than `clock`, or
    /// the encoding would take more than [`MAX_WRITES_PER_OPERATION`] wire writes.
    pub fn upsert(
        record: RecordId,
        clock: Hlc,
        writes: impl IntoIterator<Item = FieldWrite>,
    ) -> Result<Self, RecordError> {
        let mut writes: Vec<FieldWrite> = writes.into_iter().collect();
        writes.sort_by(|a, b| a.key.cmp(&b.key));
        if let Some(pair) = writes.windows(2).find(|pair| pair[0].key == pair[1].key) {
            return Err(RecordError::DuplicateFieldKey {
                field: pair[0].key.kind,
            });
        }
        if let Some(write) = writes
            .iter()
            .find(|write| write.replaces.last().is_some_and(|last| *last >= clock))
        {
            return Err(RecordError::ReplacesNotEarlier {
                field: write.key.kind,
            });
        }
        let count = writes.iter().map(FieldWrite::wire_len).sum();
        if count > MAX_WRITES_PER_OPERATION {
            return Err(RecordError::TooManyWrites { count });
        }
        Ok(Self {
            record,
            clock,
            kind: OperationKind::Upsert(writes),
        })
    }

    /// Deletes `record` at `clock`: every write with a clock up to `clock` is hidden, later
    /// writes bring the record back with only their fields.
    pub fn delete(record: RecordId, clock: Hlc) -> Self {
        Self {
            record,
            clock,
            kind: OperationKind::Delete,
        }
    }

    /// The record changed.
    pub fn record(&self) -> RecordId {
        self.record
    }

    /// The operation's clock, shared by all its writes.
    pub fn clock(&self) -> Hlc {
        self.clock
    }

    /// What it does.
    pub fn kind(&self) -> &OperationKind {
        &self.kind
    }

    /// The wire form; a write replacing several clocks becomes one wire write per clock.
    pub fn to_proto(&self) -> proto::Operation {
        let kind = match &self.kind {
            OperationKind::Delete => proto::operation::Kind::Delete(proto::Delete {}),
            OperationKind::Upsert(writes) => {
                let mut upsert = proto::Upsert::default();
                for write in writes {
                    let wire = if write.key.kind.is_protocol_1_0() {
                        &mut upsert.writes
                    } else {
                        &mut upsert.extension_writes
                    };
                    let wire_write = |replaces: Option<&Hlc>| proto::FieldWrite {
                        key: write.key.key.clone(),
                        value: write.value.as_ref().map(encode_value),
                        replaces: replaces.map(Hlc::to_proto),
                    };
                    if write.replaces.is_empty() {
                        wire.push(wire_write(None));
                    } else {
                        wire.extend(write.replaces.iter().map(|r| wire_write(Some(r))));
                    }
                }
                proto::operation::Kind::Upsert(upsert)
            }
        };
        proto::Operation {
            record_id: self.record.as_bytes().to_vec(),
            clock: Some(self.clock.to_proto()),
            kind: Some(kind),
        }
    }

    /// Parses and validates the wire form.
    pub fn from_proto(wire: &proto::Operation) -> Result<Self, RecordError> {
        let record = RecordId::from_slice(&wire.record_id)?;
        let clock = Hlc::from_proto(wire.clock.as_ref().ok_or(RecordError::MissingClock)?)?;
        let upsert = match wire
            .kind
            .as_ref()
            .ok_or(RecordError::MissingOperationKind)?
        {
            proto::operation::Kind::Delete(_) => return Ok(Self::delete(record, clock)),
            proto::operation::Kind::Upsert(upsert) => upsert,
        };
        let count = upsert.writes.len() + upsert.extension_writes.len();
        if count > MAX_WRITES_PER_OPERATION {
            return Err(RecordError::TooManyWrites { count });
        }
        let mut grouped: BTreeMap<FieldKey, FieldWrite> = BTreeMap::new();
        // Both lists alike: which one a write travels in matters only to 0.1.0 readers.
        for wire_write in upsert.writes.iter().chain(&upsert.extension_writes) {
            let key = FieldKey::parse(&wire_write.key)?;
            let value = wire_write
                .value
                .as_deref()
                .map(|bytes| decode_value(&key, bytes))
                .transpose()?;
            let replaces = wire_write
                .replaces
                .as_ref()
                .map(Hlc::from_proto)
                .transpose()?;
            match grouped.get_mut(&key) {
                Some(write) if write.value == value => write.replaces.extend(replaces),
                Some(_) => return Err(RecordError::DuplicateFieldKey { field: key.kind }),
                None => {
                    let write = FieldWrite {
                        key: key.clone(),
                        value,
                        replaces: replaces.into_iter().collect(),
                    };
                    grouped.insert(key, write);
                }
            }
        }
        Self::upsert(record, clock, grouped.into_values())
    }
}

/// Encodes operations as an `OperationBatch`, the payload of an envelope, without a
/// `written_at_ms` ([`encode_batch_written_at`]).
pub fn encode_batch(operations: &[Operation]) -> Result<Vec<u8>, RecordError> {
    encode_batch_written_at(operations, 0)
}

/// Encodes operations as an `OperationBatch` stating the writer's wall clock when it sealed
/// them (`written_at_ms`, 0 = not stated), which receivers compare with theirs to report a
/// device whose date is wrong ([`decode_batch_written_at`]).
pub fn encode_batch_written_at(
    operations: &[Operation],
    written_at_ms: u64,
) -> Result<Vec<u8>, RecordError> {
    if operations.len() > MAX_OPERATIONS_PER_BATCH {
        return Err(RecordError::TooManyOperations {
            count: operations.len(),
        });
    }
    let bytes = crate::borrowed::operation_batch(operations, written_at_ms);
    if bytes.len() > MAX_PAYLOAD_BYTES {
        return Err(RecordError::BatchTooLarge { len: bytes.len() });
    }
    Ok(bytes)
}

/// Decodes and validates an `OperationBatch` from untrusted bytes.
///
/// The length is bounded before decoding ([`MAX_PAYLOAD_BYTES`]), then the operation count,
/// then each operation. Never panics.
pub fn decode_batch(bytes: &[u8]) -> Result<Vec<Operation>, RecordError> {
    decode_batch_written_at(bytes).map(|(operations, _)| operations)
}

/// [`decode_batch`], with the writer's stated wall clock when it sealed the batch (`None` if
/// not stated). Unauthenticated beyond the envelope's signature: a member can state any time.
pub fn decode_batch_written_at(bytes: &[u8]) -> Result<(Vec<Operation>, Option<u64>), RecordError> {
    decode_batch_parts(bytes).map(|(operations, written_at, _)| (operations, written_at))
}

/// What an `OperationBatch` holds: its operations, the writer's stated wall clock, and a
/// relay-move notice (docs/PROTOCOL.md §13.1).
pub type BatchParts = (Vec<Operation>, Option<u64>, Option<proto::RelayMoved>);

/// [`decode_batch_written_at`], with the batch's relay-move notice if it carries one
/// (docs/PROTOCOL.md §13.1). The notice is returned as decoded: its reader checks it.
pub fn decode_batch_parts(bytes: &[u8]) -> Result<BatchParts, RecordError> {
    if bytes.len() > MAX_PAYLOAD_BYTES {
        return Err(RecordError::BatchTooLarge { len: bytes.len() });
    }
    let batch = proto::OperationBatch::decode(bytes)?;
    if batch.operations.len() > MAX_OPERATIONS_PER_BATCH {
        return Err(RecordError::TooManyOperations {
            count: batch.operations.len(),
        });
    }
    let operations = batch
        .operations
        .iter()
        .enumerate()
        .map(|(index, operation)| {
            Operation::from_proto(operation).map_err(|err| RecordError::InOperation {
                index,
                source: Box::new(err),
            })
        })
        .collect::<Result<_, _>>()?;
    Ok((
        operations,
        (batch.written_at_ms != 0).then_some(batch.written_at_ms),
        batch.relay_moved,
    ))
}

/// Where a contact came from, with what the importer kept (the `source/…` fields).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A LinkedIn first-degree connection.
    LinkedIn(proto::LinkedInSource),
    /// A Facebook friend.
    Facebook(proto::FacebookSource),
    /// Aggregate iMessage statistics for one handle (never message text).
    IMessage(proto::IMessageSource),
    /// The address-book name stored for a phone number or e-mail.
    AddressBook(proto::AddressBookSource),
    /// An imported vCard.
    VCard(proto::VCardSource),
    /// Meetings with the contact: the join of every head of `source/calendar`.
    Calendar(proto::CalendarSource),
    /// Mail header statistics: the join of every head of `source/mail`.
    Mail(proto::MailSource),
    /// A Twitter/X account.
    Twitter(proto::TwitterSource),
}

impl Source {
    /// Which source this is.
    pub fn kind(&self) -> SourceKind {
        match self {
            Source::LinkedIn(_) => SourceKind::LinkedIn,
            Source::Facebook(_) => SourceKind::Facebook,
            Source::IMessage(_) => SourceKind::IMessage,
            Source::AddressBook(_) => SourceKind::AddressBook,
            Source::VCard(_) => SourceKind::VCard,
            Source::Calendar(_) => SourceKind::Calendar,
            Source::Mail(_) => SourceKind::Mail,
            Source::Twitter(_) => SourceKind::Twitter,
        }
    }

    /// The value of its `source/<name>` field.
    pub fn to_value(&self) -> proto::FieldValue {
        let value = match self {
            Source::LinkedIn(source) => Value::Linkedin(source.clone()),
            Source::Facebook(source) => Value::Facebook(*source),
            Source::IMessage(source) => Value::Imessage(source.clone()),
            Source::AddressBook(source) => Value::AddressBook(source.clone()),
            Source::VCard(source) => Value::Vcard(source.clone()),
            Source::Calendar(source) => Value::Calendar(source.clone()),
            Source::Mail(source) => Value::Mail(source.clone()),
            Source::Twitter(source) => Value::Twitter(source.clone()),
        };
        proto::FieldValue { value: Some(value) }
    }
}

/// The read-only typed view of one live merged record: each field's winning value.
///
/// Multi-valued fields are listed in key order. Conflicts are not shown here; read them from
/// [`RecordState::conflicts`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    id: RecordId,
    name: Option<String>,
    company: Option<String>,
    title: Option<String>,
    birthday: Option<proto::Date>,
    note: Option<String>,
    emails: Vec<proto::Email>,
    phones: Vec<proto::Phone>,
    urls: Vec<proto::Url>,
    handles: Vec<proto::Handle>,
    tags: Vec<String>,
    sources: Vec<Source>,
    custom: BTreeMap<String, proto::FieldValue>,
    newer_data_from: BTreeSet<DeviceId>,
}

impl Contact {
    /// The view of `record`, or `None` if it is not live (no visible field).
    pub fn from_record(record: &RecordState) -> Option<Self> {
        if !record.is_live() {
            return None;
        }
        let mut contact = Self {
            id: record.id(),
            name: None,
            company: None,
            title: None,
            birthday: None,
            note: None,
            emails: Vec::new(),
            phones: Vec::new(),
            urls: Vec::new(),
            handles: Vec::new(),
            tags: Vec::new(),
            sources: Vec::new(),
            custom: BTreeMap::new(),
            newer_data_from: BTreeSet::new(),
        };
        for (key, field_value) in record.values() {
            let Some(value) = &field_value.value else {
                continue;
            };
            // Values were checked against their keys on the way in; anything else is skipped.
            match (key.kind(), value) {
                (FieldKind::Name, Value::Text(text)) => contact.name = Some(text.clone()),
                (FieldKind::Company, Value::Text(text)) => contact.company = Some(text.clone()),
                (FieldKind::Title, Value::Text(text)) => contact.title = Some(text.clone()),
                (FieldKind::Note, Value::Text(text)) => contact.note = Some(text.clone()),
                (FieldKind::Birthday, Value::Date(date)) => contact.birthday = Some(*date),
                (FieldKind::Email, Value::Email(email)) => contact.emails.push(email.clone()),
                (FieldKind::Phone, Value::Phone(phone)) => contact.phones.push(phone.clone()),
                (FieldKind::Url, Value::Url(url)) => contact.urls.push(url.clone()),
                (FieldKind::Handle, Value::Handle(handle)) => {
                    contact.handles.push(handle.clone());
                }
                (FieldKind::Tag, Value::Flag(true)) => {
                    contact.tags.extend(key.detail().map(str::to_owned));
                }
                (FieldKind::Source(_), Value::Linkedin(source)) => {
                    contact.sources.push(Source::LinkedIn(source.clone()));
                }
                (FieldKind::Source(_), Value::Facebook(source)) => {
                    contact.sources.push(Source::Facebook(*source));
                }
                (FieldKind::Source(_), Value::Imessage(source)) => {
                    contact.sources.push(Source::IMessage(source.clone()));
                }
                (FieldKind::Source(_), Value::AddressBook(source)) => {
                    contact.sources.push(Source::AddressBook(source.clone()));
                }
                (FieldKind::Source(_), Value::Vcard(source)) => {
                    contact.sources.push(Source::VCard(source.clone()));
                }
                (FieldKind::Custom, Value::Opaque(_)) | (FieldKind::Unknown, _) => {}
                (FieldKind::Source(kind), _) if kind.is_joined() => {
                    // Every head counts: concurrent imports are joined, not one chosen.
                    let joined = record
                        .field(key)
                        .and_then(|field| crate::history::join_all(field.heads().map(|h| h.value)));
                    match joined.and_then(|v| v.value) {
                        Some(Value::Calendar(source)) => {
                            contact.sources.push(Source::Calendar(source));
                        }
                        Some(Value::Mail(source)) => contact.sources.push(Source::Mail(source)),
                        _ => {}
                    }
                }
                (FieldKind::Source(_), Value::Twitter(source)) => {
                    contact.sources.push(Source::Twitter(source.clone()));
                }
                (FieldKind::Custom, _) => {
                    if let Some(name) = key.detail() {
                        contact.custom.insert(name.to_owned(), field_value.clone());
                    }
                }
                _ => {}
            }
        }
        // What a newer release wrote that this one carries but cannot show (§8.1).
        for field in record.fields().values() {
            if let Some(head) = field.winner()
                && let Some(Value::Opaque(_)) = head.value.and_then(|v| v.value.as_ref())
            {
                contact.newer_data_from.insert(head.clock.device());
            }
        }
        Some(contact)
    }

    /// The devices that wrote fields of this contact in kinds this release cannot read (a newer
    /// release's): they are kept and synced, not shown. Empty when everything is shown.
    pub fn newer_data_from(&self) -> &BTreeSet<DeviceId> {
        &self.newer_data_from
    }

    /// The record's id.
    pub fn id(&self) -> RecordId {
        self.id
    }

    /// `name`.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// `company`.
    pub fn company(&self) -> Option<&str> {
        self.company.as_deref()
    }

    /// `title`.
    pub fn title(&self) -> Option<&str> {
        self.title.as_deref()
    }

    /// `birthday` (year 0 = unknown).
    pub fn birthday(&self) -> Option<&proto::Date> {
        self.birthday.as_ref()
    }

    /// `note`.
    pub fn note(&self) -> Option<&str> {
        self.note.as_deref()
    }

    /// The `email/…` values, by lowercased address.
    pub fn emails(&self) -> &[proto::Email] {
        &self.emails
    }

    /// The `phone/…` values, by number.
    pub fn phones(&self) -> &[proto::Phone] {
        &self.phones
    }

    /// The `url/…` values, by url.
    pub fn urls(&self) -> &[proto::Url] {
        &self.urls
    }

    /// The `handle/…` values, by service and handle.
    pub fn handles(&self) -> &[proto::Handle] {
        &self.handles
    }

    /// The tags present, sorted.
    pub fn tags(&self) -> &[String] {
        &self.tags
    }

    /// The `source/…` values, by key.
    pub fn sources(&self) -> &[Source] {
        &self.sources
    }

    /// The `custom/<name>` values, by name.
    pub fn custom(&self) -> &BTreeMap<String, proto::FieldValue> {
        &self.custom
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::ids::DeviceId;

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
            }
            .encode_to_vec();
            prop_assert_eq!(encode_batch_written_at(&ops, written_at_ms).unwrap(), prost_bytes);
            if written_at_ms == 0 {
                prop_assert_eq!(encode_batch(&ops).unwrap(), encode_batch_written_at(&ops, 0).unwrap());
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
}
