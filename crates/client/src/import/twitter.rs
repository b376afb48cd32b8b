//! Twitter/X archive ("Download an archive of your data", a zip): who you follow and who
//! follows you — never direct messages.
//!
//! The archive's `data/*.js` files each assign JSON to `window.YTD.<name>.part0`. The importer
//! opens only the members on its allow-list ([`is_allowed`]): `account.js` (your own account id,
//! so you are not your own contact), `following.js` and `follower.js` (account ids only), and
//! `tweets.js` / `tweet.js` (your own tweets, read for the names and screen names of the people
//! you mention, since follows carry ids only). Large archives split a file into `-part1`,
//! `-part2`, … members; those are read too. Every other member, `direct-messages*.js` and
//! `direct-message*` media first, is never opened or decompressed: a test archive whose
//! direct-message members are corrupt imports cleanly, and their marker text never comes out.
//!
//! - A **mutual follow** becomes a contact, its identity the account id (`twitter:<id>`).
//! - A **one-way follow** is recorded (which way) only on a contact that exists for another
//!   reason: the same account from an earlier import, or a `handle/twitter:<screen name>` from a
//!   vCard ([`ImportedContact::only_if_known`]).
//!
//! Follow entries are reported by their 1-based position in their file.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Seek};
use std::path::Path;

use kith_protocol::proto;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::archive::Archive;
use super::{
    FileKind, ImportError, ImportOptions, ImportReport, ImportedContact, Provenance, open_file,
    text,
};

const KIND: FileKind = FileKind::TwitterArchive;

/// The archive members the importer may open, by file name (under a `data/` folder), without
/// their `-partN` suffix.
pub const ALLOWED_MEMBERS: &[&str] = &["account", "following", "follower", "tweets", "tweet"];

/// Whether the importer may open the archive member at `path`: `…data/<name>.js` or
/// `…data/<name>-part<N>.js` with `<name>` in [`ALLOWED_MEMBERS`].
pub fn is_allowed(path: &str) -> bool {
    let mut parts = path.rsplit('/');
    let (Some(file), Some("data")) = (parts.next(), parts.next()) else {
        return false;
    };
    let Some(stem) = file.strip_suffix(".js") else {
        return false;
    };
    let base = match stem.rsplit_once("-part") {
        Some((base, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => base,
        _ => stem,
    };
    ALLOWED_MEMBERS.contains(&base)
}

/// Imports an archive from a path.
pub fn import(path: &Path, opts: &ImportOptions) -> Result<ImportReport, ImportError> {
    let file = open_file(path, opts.max_stream_bytes, KIND)?;
    import_reader(std::io::BufReader::new(file), opts)
}

/// Imports an archive from its bytes.
pub fn import_bytes(bytes: &[u8], opts: &ImportOptions) -> Result<ImportReport, ImportError> {
    import_reader(std::io::Cursor::new(bytes), opts)
}

/// Imports an archive from a seekable reader.
pub fn import_reader(
    reader: impl Read + Seek,
    opts: &ImportOptions,
) -> Result<ImportReport, ImportError> {
    let mut archive = Archive::open(reader, KIND)?;
    let mut members: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    for name in archive.names() {
        if !is_allowed(&name) {
            continue;
        }
        let file = name.rsplit('/').next().unwrap_or_default();
        let Some(base) = ALLOWED_MEMBERS.iter().find(|base| {
            file.starts_with(&format!("{base}.")) || file.starts_with(&format!("{base}-part"))
        }) else {
            continue;
        };
        members.entry(base).or_default().push(name);
    }
    if !members.contains_key("following") && !members.contains_key("follower") {
        return Err(ImportError::WrongKind {
            expected: KIND,
            reason: "it has no data/following.js or data/follower.js".into(),
        });
    }

    let mut report = ImportReport::default();
    let mut owner: Option<String> = None;
    for name in members.get("account").cloned().unwrap_or_default() {
        let entries: Vec<AccountEntry> = read_part(&mut archive, &name, opts)?;
        if let Some(entry) = entries.into_iter().next() {
            owner = Some(entry.account.account_id);
        }
    }
    // Ids as numbers: 300,000 of them are compared and sorted much faster than strings.
    let mut following: BTreeSet<u64> = BTreeSet::new();
    let mut followers: BTreeSet<u64> = BTreeSet::new();
    for (base, set) in [("following", &mut following), ("follower", &mut followers)] {
        for name in members.get(base).cloned().unwrap_or_default() {
            // Each entry is checked on its own, so one malformed entry is skipped, not the file.
            let entries: Vec<Box<RawValue>> = read_part(&mut archive, &name, opts)?;
            for (index, entry) in entries.iter().enumerate() {
                let entry = serde_json::from_str::<FollowEntry>(entry.get()).ok();
                match entry.and_then(|entry| entry.account_id(base)) {
                    Some(id) => {
                        set.insert(id);
                    }
                    None => report.skip(opts, index + 1, "follow entry has no numeric accountId"),
                }
                if set.len() > opts.max_records {
                    return Err(ImportError::TooManyRecords {
                        kind: KIND,
                        limit: opts.max_records,
                    });
                }
            }
        }
    }
    let mut names: BTreeMap<u64, (String, String)> = BTreeMap::new();
    for base in ["tweets", "tweet"] {
        for name in members.get(base).cloned().unwrap_or_default() {
            let entries: Vec<TweetEntry> = read_part(&mut archive, &name, opts)?;
            for mention in entries
                .iter()
                .flat_map(|entry| &entry.tweet.entities.user_mentions)
            {
                let Some(id) = account_id(&mention.id_str) else {
                    continue;
                };
                if following.contains(&id) || followers.contains(&id) {
                    names
                        .entry(id)
                        .or_insert_with(|| (mention.screen_name.clone(), mention.name.clone()));
                }
            }
        }
    }

    let limit = opts.field_limit();
    let owner = owner.as_deref().and_then(account_id);
    for &id_number in following.union(&followers) {
        if owner == Some(id_number) {
            continue;
        }
        let (screen_name, display_name) = names.remove(&id_number).unwrap_or_default();
        let screen_name = Some(screen_name)
            .filter(|s| !s.is_empty() && s.len() <= limit && valid_screen_name(s))
            .unwrap_or_default();
        let display_name = text::clean_line(&display_name)
            .filter(|n| n.len() <= limit)
            .unwrap_or_default();
        let id = id_number.to_string();
        let source = proto::TwitterSource {
            account_id: id.clone(),
            screen_name: screen_name.clone(),
            display_name: display_name.clone(),
            following: following.contains(&id_number),
            follower: followers.contains(&id_number),
        };
        let mutual = source.following && source.follower;
        let mut contact = ImportedContact::new(id, Provenance::Twitter(source));
        if !display_name.is_empty() {
            contact.name = Some(display_name);
        }
        if !screen_name.is_empty() {
            contact.handles.push(proto::Handle {
                service: "twitter".into(),
                handle: screen_name,
            });
        }
        contact.only_if_known = !mutual;
        report.contacts.push(contact);
    }
    Ok(report.logged("imported Twitter follows"))
}

/// Whether a screen name can be a handle key (no whitespace or control characters).
fn valid_screen_name(name: &str) -> bool {
    kith_protocol::record::FieldKey::handle("twitter", name).is_ok()
}

/// An account id as a number: decimal digits without a leading zero that fit 64 bits, as
/// Twitter writes every id, so that the number prints back as the same text (the identity).
fn account_id(text: &str) -> Option<u64> {
    let canonical = text.bytes().all(|b| b.is_ascii_digit()) && !text.starts_with('0');
    canonical.then(|| text.parse().ok()).flatten()
}

/// An entry of `following.js` (`{"following": {"accountId": "…", "userLink": "…"}}`) or of
/// `follower.js` (the same under `"follower"`). Read into this typed form, not a JSON tree:
/// an archive holds hundreds of thousands of them.
#[derive(Deserialize)]
struct FollowEntry {
    following: Option<Follow>,
    follower: Option<Follow>,
}

#[derive(Deserialize)]
struct Follow {
    #[serde(rename = "accountId")]
    account_id: Option<String>,
}

impl FollowEntry {
    /// The account id under `base` (`following` or `follower`), if it is a valid one.
    fn account_id(&self, base: &str) -> Option<u64> {
        let follow = if base == "following" {
            &self.following
        } else {
            &self.follower
        };
        account_id(follow.as_ref()?.account_id.as_deref()?)
    }
}

/// Reads one `data/*.js` member: `window.YTD.<name>.partN = <JSON>`.
fn read_part<T: for<'de> Deserialize<'de>>(
    archive: &mut Archive<impl Read + Seek>,
    name: &str,
    opts: &ImportOptions,
) -> Result<Vec<T>, ImportError> {
    let bytes = archive.read(name, opts.max_file_bytes)?;
    let bytes = text::strip_utf8_bom(&bytes);
    let json = strip_assignment(bytes).ok_or_else(|| ImportError::WrongKind {
        expected: KIND,
        reason: "a data/*.js file does not assign to window.YTD".into(),
    })?;
    serde_json::from_slice(json).map_err(|e| ImportError::WrongKind {
        expected: KIND,
        reason: format!(
            "a data/*.js file is not the expected JSON (line {}, column {})",
            e.line(),
            e.column()
        ),
    })
}

/// The JSON after `window.YTD.<name>.partN =`.
fn strip_assignment(bytes: &[u8]) -> Option<&[u8]> {
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace())?;
    let rest = &bytes[start..];
    if !rest.starts_with(b"window.YTD.") {
        return None;
    }
    let eq = memchr::memchr(b'=', rest)?;
    Some(&rest[eq + 1..])
}

#[derive(Deserialize)]
struct AccountEntry {
    account: Account,
}

#[derive(Deserialize)]
struct Account {
    #[serde(rename = "accountId")]
    account_id: String,
}

#[derive(Deserialize)]
struct TweetEntry {
    tweet: Tweet,
}

#[derive(Deserialize)]
struct Tweet {
    #[serde(default)]
    entities: Entities,
}

#[derive(Deserialize, Default)]
struct Entities {
    #[serde(default)]
    user_mentions: Vec<Mention>,
}

#[derive(Deserialize)]
struct Mention {
    #[serde(default)]
    name: String,
    #[serde(default)]
    screen_name: String,
    #[serde(default)]
    id_str: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_allow_listed_members_may_be_opened() {
        for name in [
            "data/following.js",
            "data/follower.js",
            "data/account.js",
            "data/tweets.js",
            "data/tweets-part1.js",
            "twitter-2024-01-01/data/following-part12.js",
        ] {
            assert!(is_allowed(name), "{name}");
        }
        for name in [
            "data/direct-messages.js",
            "data/direct-messages-group.js",
            "data/direct-message-headers.js",
            "data/direct_messages_media/x.jpg",
            "data/following.json",
            "following.js",
            "data/tweets-partx.js",
            "data/deleted-tweets.js",
            "Your archive.html",
        ] {
            assert!(!is_allowed(name), "{name}");
        }
    }
}
