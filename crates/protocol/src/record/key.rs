//! Field keys: [`FieldKey`], its [`FieldKind`] and the [`SourceKind`]s of `source/…` keys.

use std::fmt;

use crate::ids::RecordId;
use crate::limits::MAX_TEXT_BYTES;
use crate::proto;
use crate::proto::field_value::Value;

use super::RecordError;
use super::value::check_contents;

/// How many bytes of an unknown field key an error shows: enough to recognise a field kind from
/// a newer protocol version, too few to carry a whole address or name.
const KEY_PREFIX_BYTES: usize = 12;

/// What is wrong with a field key whose prefix is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
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

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
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
