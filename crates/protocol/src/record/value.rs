//! Field values: the checks a value passes against its key, its codec, and builders for
//! `proto::FieldValue`s.

use prost::Message;

use crate::limits::{MAX_OPAQUE_VALUE_BYTES, MAX_TEXT_BYTES};
use crate::proto;
use crate::proto::field_value::Value;

use super::{FieldKey, FieldKind, RecordError};

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
pub(super) fn check_contents(field: FieldKind, value: &Value) -> Result<(), RecordError> {
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
    let field = key.kind();
    if field == FieldKind::Unknown {
        if bytes.len() > MAX_OPAQUE_VALUE_BYTES {
            return Err(RecordError::TextTooLong {
                field,
                len: bytes.len(),
            });
        }
        return Ok(opaque(bytes));
    }
    let decoded = proto::FieldValue::decode(bytes)?;
    let value = match decoded.value {
        Some(Value::Opaque(_)) => {
            return Err(RecordError::WrongValueType {
                field,
                expected: field.expected_value(),
            });
        }
        None if field == FieldKind::Custom && !bytes.is_empty() => opaque(bytes),
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

// --- Builders ---

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

/// The verbatim encoding of a value this version cannot read (see [`decode_value`]).
pub fn opaque(bytes: &[u8]) -> proto::FieldValue {
    wrap(Value::Opaque(bytes.to_vec()))
}

/// The value of a present tag: `flag: true`.
pub fn tag() -> proto::FieldValue {
    wrap(Value::Flag(true))
}
