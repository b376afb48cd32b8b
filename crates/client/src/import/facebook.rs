//! Facebook "Download your information" friends list: `your_friends.json`
//! (`{"friends_v2": [{"name", "timestamp"}]}`) and the older `friends.json` (`{"friends": […]}`).
//!
//! Reads each friend's name and the time you became friends — nothing else in the entry.
//! Facebook writes every UTF-8 byte of a non-ASCII string as its own `\u00XX` escape, so "José"
//! arrives as "JosÃ©"; [`repair_mojibake`] undoes that. Entries are reported by their 1-based
//! position in the friends list. A file that is not JSON, or has no friends list, is one
//! [`ImportError::WrongKind`].

use std::borrow::Cow;
use std::collections::HashSet;

use kith_protocol::proto;
use serde_json::Value;

use super::{
    FileKind, ImportError, ImportOptions, ImportReport, ImportedContact, Provenance, check_size,
    text,
};

const KIND: FileKind = FileKind::FacebookFriends;

/// Friend-since times past this (year 3000) are not believed.
const MAX_TIMESTAMP: i64 = 32_503_680_000;

whole_file_entry_points!("a friends file");

/// Imports a friends file from its bytes.
pub fn import_bytes(bytes: &[u8], opts: &ImportOptions) -> Result<ImportReport, ImportError> {
    check_size(bytes, opts, KIND)?;
    let bytes = text::strip_utf8_bom(bytes);
    // serde_json's messages can quote the input ("invalid type: string \"…\""), so only its
    // category and position are passed on. Its recursion limit bounds nesting depth.
    let root: Value = serde_json::from_slice(bytes).map_err(|e| ImportError::WrongKind {
        expected: KIND,
        reason: format!(
            "not valid JSON ({} at line {}, column {})",
            match e.classify() {
                serde_json::error::Category::Io => "read error",
                serde_json::error::Category::Syntax => "syntax error",
                serde_json::error::Category::Data => "unexpected value",
                serde_json::error::Category::Eof => "unexpected end",
            },
            e.line(),
            e.column()
        ),
    })?;
    let friends = match &root {
        Value::Object(map) => map
            .get("friends_v2")
            .or_else(|| map.get("friends"))
            .and_then(Value::as_array),
        _ => None,
    };
    let Some(friends) = friends else {
        return Err(ImportError::WrongKind {
            expected: KIND,
            reason: "it has no `friends_v2` or `friends` list".into(),
        });
    };
    if friends.len() > opts.max_records {
        return Err(ImportError::TooManyRecords {
            kind: KIND,
            limit: opts.max_records,
        });
    }

    let mut report = ImportReport::default();
    let mut seen: HashSet<String> = HashSet::new();
    for (index, entry) in friends.iter().enumerate() {
        let row = index.saturating_add(1);
        match parse_friend(entry, row, opts, &mut report) {
            Ok(contact) => {
                if seen.insert(contact.source_identity.clone()) {
                    report.contacts.push(contact);
                }
            }
            Err(reason) => report.skip(opts, row, reason),
        }
    }
    Ok(report.logged("imported Facebook friends"))
}

fn parse_friend(
    entry: &Value,
    row: usize,
    opts: &ImportOptions,
    report: &mut ImportReport,
) -> Result<ImportedContact, &'static str> {
    let Value::Object(entry) = entry else {
        return Err("entry is not an object");
    };
    let name = match entry.get("name") {
        Some(Value::String(name)) if name.len() <= opts.field_limit() => name,
        Some(Value::String(_)) => return Err("name is too long"),
        Some(_) => return Err("name is not text"),
        None => return Err("entry has no name"),
    };
    let name = text::clean_line(&repair_mojibake(name)).ok_or("name is empty")?;
    let timestamp = match entry.get("timestamp") {
        Some(value) => {
            let ts = value.as_i64().filter(|ts| (0..=MAX_TIMESTAMP).contains(ts));
            if ts.is_none() {
                report.drop_field(opts, row, "timestamp", "not a Unix time");
            }
            ts
        }
        None => None,
    };
    let since = timestamp.unwrap_or(0);
    let mut contact = ImportedContact::new(
        format!("{name}|{since}"),
        Provenance::Facebook(proto::FacebookSource {
            friend_since_unix: since,
        }),
    );
    contact.name = Some(name);
    Ok(contact)
}

/// Undoes Facebook's double encoding: a string whose characters are all at most U+00FF and
/// whose Latin-1 bytes form valid UTF-8 is replaced by that UTF-8 text ("JosÃ©" → "José").
/// Anything else — plain ASCII, text that is already right, or bytes that are not UTF-8 — is
/// returned unchanged.
pub fn repair_mojibake(s: &str) -> Cow<'_, str> {
    if s.is_ascii() {
        return Cow::Borrowed(s);
    }
    let mut bytes = Vec::with_capacity(s.len());
    for c in s.chars() {
        match u8::try_from(u32::from(c)) {
            Ok(b) => bytes.push(b),
            Err(_) => return Cow::Borrowed(s),
        }
    }
    match String::from_utf8(bytes) {
        Ok(repaired) => Cow::Owned(repaired),
        Err(_) => Cow::Borrowed(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mojibake_is_repaired_only_when_it_decodes() {
        assert_eq!(repair_mojibake("Jos\u{c3}\u{a9}"), "José");
        assert_eq!(repair_mojibake("Se\u{c3}\u{a1}n"), "Seán");
        assert_eq!(repair_mojibake("\u{c3}\u{81}lvarez"), "Álvarez");
        assert_eq!(
            repair_mojibake("\u{e5}\u{bc}\u{a0}\u{e4}\u{bc}\u{9f}"),
            "张伟"
        );
        // Already right: chars above U+00FF, or Latin-1 that is not UTF-8.
        assert_eq!(repair_mojibake("José"), "José");
        assert_eq!(repair_mojibake("张伟"), "张伟");
        assert_eq!(repair_mojibake("Müller"), "Müller");
        assert_eq!(repair_mojibake("plain"), "plain");
    }
}
