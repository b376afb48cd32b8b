//! The read-only typed view of a merged contact record: [`Contact`] and its [`Source`]s.
//!
//! Built from a [`RecordState`] after merging ([`crate::merge`]); nothing in `merge` or
//! `record` depends on it.

use std::collections::{BTreeMap, BTreeSet};

use crate::ids::{DeviceId, RecordId};
use crate::merge::{ContactSet, RecordState};
use crate::proto;
use crate::proto::field_value::Value;
use crate::record::{FieldKind, SourceKind};

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

/// The typed views of a [`ContactSet`] (defined here, not in `merge`, so that
/// the merge depends on no view).
impl ContactSet {
    /// The typed view of one record, `None` if it is absent or not live.
    pub fn contact(&self, id: &RecordId) -> Option<Contact> {
        self.get(id).and_then(Contact::from_record)
    }

    /// The typed views of every live record, by id.
    pub fn contacts(&self) -> impl Iterator<Item = Contact> + '_ {
        self.records().filter_map(Contact::from_record)
    }

    /// The contacts as people see them: one per group, under its survivor's id, by id.
    pub fn merged_contacts(&self) -> Vec<Contact> {
        let groups = self.groups();
        self.records()
            .map(RecordState::id)
            .filter(|id| groups.is_survivor(id))
            .filter_map(|id| self.merged_record(&groups, &id))
            .filter_map(|view| Contact::from_record(&view))
            .collect()
    }
}
