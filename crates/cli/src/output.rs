//! What the CLI prints: the `--json` shapes (explicit structs, so library changes cannot
//! silently change them; documented in `crates/cli/README.md`) and the human-readable text.

use std::fmt::Write as _;

use kith_client::contacts::date_text;
use kith_client::{ConflictView, Contact, DeviceInfo, MeetingView};
use kith_protocol::contact::Source;
use kith_protocol::history;
use serde::Serialize;

/// How many hex digits of an id the tables show (any unique prefix of 4 or more is accepted).
pub const SHORT_ID: usize = 10;

kith_client::contact_records! {
    #[derive(Debug, Serialize)]
    pub struct ContactJson, EmailJson, PhoneJson, UrlJson, HandleJson;
    /// Where the contact came from.
    sources: SourceJson = SourceJson::from;
}

/// Where a contact came from, tagged by `kind`.
#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum SourceJson {
    /// A LinkedIn connection.
    Linkedin {
        /// Profile URL.
        profile_url: String,
        /// `YYYY-MM-DD`.
        connected_on: Option<String>,
        /// Company at export time.
        company: String,
        /// Position at export time.
        position: String,
    },
    /// A Facebook friend.
    Facebook {
        /// Friends since (Unix seconds).
        friend_since_unix: i64,
    },
    /// iMessage aggregate counts for one handle.
    Imessage {
        /// The handle (E.164 or e-mail).
        handle: String,
        /// Messages sent to them in one-to-one chats.
        sent: u64,
        /// Messages received from them in one-to-one chats.
        received: u64,
        /// First message (Unix seconds; 0 if unknown).
        first_unix: i64,
        /// Last message (Unix seconds; 0 if unknown).
        last_unix: i64,
        /// Group chats shared.
        group_chats: u64,
    },
    /// The name the macOS address book stores for a phone number or e-mail.
    AddressBook {
        /// That name.
        name: String,
    },
    /// An imported vCard.
    Vcard {
        /// Its UID (may be empty).
        uid: String,
    },
    /// Meetings from calendars.
    Calendar {
        /// Every meeting counted (exact up to 64, an estimate beyond).
        meetings: u64,
        /// First meeting (Unix seconds; 0 if unknown).
        first_unix: i64,
        /// Last meeting (Unix seconds; 0 if unknown).
        last_unix: i64,
        /// The newest meetings, newest first.
        recent: Vec<MeetingJson>,
    },
    /// Mail headers.
    Mail {
        /// Messages you sent them (exact up to 64, an estimate beyond).
        sent: u64,
        /// Messages they sent you (exact up to 64, an estimate beyond).
        received: u64,
        /// First message (Unix seconds; 0 if unknown).
        first_unix: i64,
        /// Last message (Unix seconds; 0 if unknown).
        last_unix: i64,
        /// The newest subjects, newest first.
        recent: Vec<SubjectJson>,
    },
    /// A Twitter/X account.
    Twitter {
        /// The account id.
        account_id: String,
        /// Screen name without `@` (may be empty).
        screen_name: String,
        /// Display name (may be empty).
        display_name: String,
        /// You follow them.
        following: bool,
        /// They follow you.
        follower: bool,
    },
}

/// One meeting on a contact.
#[derive(Debug, Serialize)]
pub struct MeetingJson {
    /// Start (Unix seconds).
    pub start_unix: i64,
    /// End (Unix seconds).
    pub end_unix: i64,
    /// Title.
    pub title: String,
    /// The other participants' e-mail addresses.
    pub others: Vec<String>,
}

/// One mail subject on a contact.
#[derive(Debug, Serialize)]
pub struct SubjectJson {
    /// Date (Unix seconds; 0 if unknown).
    pub date_unix: i64,
    /// The subject line.
    pub subject: String,
    /// You sent it (else they did).
    pub sent: bool,
}

/// A kept conflict, as `contacts conflicts --json` prints it.
#[derive(Debug, Serialize)]
pub struct ConflictJson {
    /// The contact's full hex id.
    pub id: String,
    /// The field key (`name`, `company`, `email/<address>`, …).
    pub field: String,
    /// The value shown.
    pub winner: String,
    /// The concurrent value that lost.
    pub other: String,
}

/// A device, as `device list --json` prints it.
#[derive(Debug, Serialize)]
pub struct DeviceJson {
    /// Full hex device id.
    pub id: String,
    /// The device's name.
    pub name: String,
    /// When it joined (ms since the Unix epoch).
    pub added_at_ms: u64,
    /// Whether it is the device running this command.
    pub this_device: bool,
    /// How far ahead of this device's clock its wall clock was when it sealed its latest
    /// envelope pulled here (ms; negative: behind or delivered late); `null` if unknown.
    pub clock_ahead_ms: Option<i64>,
    /// "device X's clock is N days ahead …" when that is beyond the 24-hour bound, else `null`.
    pub clock_warning: Option<String>,
}

impl From<&Source> for SourceJson {
    fn from(source: &Source) -> Self {
        match source {
            Source::LinkedIn(s) => SourceJson::Linkedin {
                profile_url: s.profile_url.clone(),
                connected_on: s
                    .connected_on
                    .as_ref()
                    .filter(|d| d.month != 0)
                    .map(date_text),
                company: s.company.clone(),
                position: s.position.clone(),
            },
            Source::Facebook(s) => SourceJson::Facebook {
                friend_since_unix: s.friend_since_unix,
            },
            Source::IMessage(s) => SourceJson::Imessage {
                handle: s.handle.clone(),
                sent: s.sent,
                received: s.received,
                first_unix: s.first_unix,
                last_unix: s.last_unix,
                group_chats: s.group_chats,
            },
            Source::AddressBook(s) => SourceJson::AddressBook {
                name: s.name.clone(),
            },
            Source::VCard(s) => SourceJson::Vcard { uid: s.uid.clone() },
            Source::Calendar(s) => SourceJson::Calendar {
                meetings: s.meetings.as_ref().map_or(0, history::sketch_count),
                first_unix: s.first_unix,
                last_unix: s.last_unix,
                recent: s
                    .recent
                    .iter()
                    .map(|m| MeetingJson {
                        start_unix: m.start_unix,
                        end_unix: m.end_unix,
                        title: m.title.clone(),
                        others: m.participants.iter().map(|p| p.email.clone()).collect(),
                    })
                    .collect(),
            },
            Source::Mail(s) => SourceJson::Mail {
                sent: s.sent.as_ref().map_or(0, history::sketch_count),
                received: s.received.as_ref().map_or(0, history::sketch_count),
                first_unix: s.first_unix,
                last_unix: s.last_unix,
                recent: s
                    .recent
                    .iter()
                    .map(|m| SubjectJson {
                        date_unix: m.date_unix,
                        subject: m.subject.clone(),
                        sent: m.sent,
                    })
                    .collect(),
            },
            Source::Twitter(s) => SourceJson::Twitter {
                account_id: s.account_id.clone(),
                screen_name: s.screen_name.clone(),
                display_name: s.display_name.clone(),
                following: s.following,
                follower: s.follower,
            },
        }
    }
}

impl From<&ConflictView> for ConflictJson {
    fn from(c: &ConflictView) -> Self {
        ConflictJson {
            id: c.id.clone(),
            field: c.field.clone(),
            winner: c.winner.clone(),
            other: c.other.clone(),
        }
    }
}

impl From<&DeviceInfo> for DeviceJson {
    fn from(d: &DeviceInfo) -> Self {
        DeviceJson {
            id: d.id.clone(),
            name: d.name.clone(),
            added_at_ms: d.added_at_ms,
            this_device: d.this_device,
            clock_ahead_ms: d.clock_skew.map(|skew| skew.ahead_ms),
            clock_warning: clock_warning(d),
        }
    }
}

/// Prints `value` as pretty JSON on standard output.
pub fn print_json<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    outln!("{text}");
    Ok(())
}

/// The first `SHORT_ID` hex digits of an id.
pub fn short(id: &str) -> &str {
    id.get(..SHORT_ID).unwrap_or(id)
}

fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

/// A table of contacts: short id, name, company, first e-mail, first phone.
pub fn contacts_table(contacts: &[Contact]) -> String {
    let rows: Vec<[String; 5]> = contacts
        .iter()
        .map(|c| {
            [
                short(&c.id().to_hex()).to_owned(),
                cut(c.name().unwrap_or("(no name)"), 32),
                cut(c.company().unwrap_or(""), 24),
                cut(
                    c.emails().first().map(|e| e.address.as_str()).unwrap_or(""),
                    36,
                ),
                c.phones()
                    .first()
                    .map(|p| p.e164.clone())
                    .unwrap_or_default(),
            ]
        })
        .collect();
    table(["ID", "NAME", "COMPANY", "EMAIL", "PHONE"], &rows)
}

/// "device X's clock is N days ahead …" if the device's clock is beyond the skew bound.
pub fn clock_warning(device: &DeviceInfo) -> Option<String> {
    device.clock_skew?.warning(&device.name)
}

/// A table of devices, then a line for each device whose clock is too far ahead.
pub fn devices_table(devices: &[DeviceInfo]) -> String {
    let rows: Vec<[String; 5]> = devices
        .iter()
        .map(|d| {
            let clock = match d.clock_skew {
                Some(skew) if skew.is_beyond_offset() => {
                    format!("{} days ahead", skew.days_ahead())
                }
                Some(_) => "ok".to_owned(),
                None => String::new(),
            };
            [
                short(&d.id).to_owned(),
                cut(&d.name, 32),
                // Rosters written since 0.2 carry no timestamp (docs/PROTOCOL.md §11).
                if d.added_at_ms == 0 {
                    "-".to_owned()
                } else {
                    format_time_ms(d.added_at_ms)
                },
                clock,
                if d.this_device {
                    "this device".to_owned()
                } else {
                    String::new()
                },
            ]
        })
        .collect();
    let mut out = table(["ID", "NAME", "ADDED (UTC)", "CLOCK", ""], &rows);
    for warning in devices.iter().filter_map(clock_warning) {
        out.push_str(&warning);
        out.push('\n');
    }
    out
}

/// Left-aligned columns separated by two spaces, widths fitted to the content.
fn table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: [&str; N]| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == N {
                text.push_str(cell);
            } else {
                let pad = w.saturating_sub(cell.chars().count());
                let _ = write!(text, "{cell}{}  ", " ".repeat(pad));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header);
    for row in rows {
        line(row.each_ref().map(String::as_str));
    }
    out
}

/// One contact in full, with the conflicts kept for it.
pub fn contact_details(c: &Contact, conflicts: &[ConflictView]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", c.name().unwrap_or("(no name)"));
    let mut field = |label: &str, value: &str| {
        let _ = writeln!(out, "  {label:<9} {value}");
    };
    field("id", &c.id().to_hex());
    if let Some(v) = c.company() {
        field("company", v);
    }
    if let Some(v) = c.title() {
        field("title", v);
    }
    if let Some(v) = c.birthday() {
        field("birthday", &date_text(v));
    }
    for e in c.emails() {
        field("email", &labelled(&e.address, &e.label));
    }
    for p in c.phones() {
        field("phone", &labelled(&p.e164, &p.label));
    }
    for u in c.urls() {
        field("url", &labelled(&u.url, &u.label));
    }
    for h in c.handles() {
        field("handle", &format!("{}:{}", h.service, h.handle));
    }
    if !c.tags().is_empty() {
        field("tags", &c.tags().join(", "));
    }
    if let Some(v) = c.note() {
        let mut lines = v.lines();
        field("note", lines.next().unwrap_or(""));
        for rest in lines {
            field("", rest);
        }
    }
    for s in c.sources() {
        field("source", &source_text(s));
    }
    for device in c.newer_data_from() {
        field(
            "newer",
            &format!(
                "data written by a newer Kith on device {}: update Kith to see it",
                device.to_hex()
            ),
        );
    }
    for (label, line) in history_lines(c) {
        field(label, &line);
    }
    for conflict in conflicts {
        field(
            "conflict",
            &format!(
                "{}: kept {:?}, other value {:?}",
                conflict.field, conflict.winner, conflict.other
            ),
        );
    }
    out
}

fn labelled(value: &str, label: &str) -> String {
    if label.is_empty() {
        value.to_owned()
    } else {
        format!("{value} ({label})")
    }
}

fn source_text(source: &Source) -> String {
    match source {
        Source::LinkedIn(s) => match s.connected_on.as_ref().filter(|d| d.month != 0) {
            Some(d) => format!("LinkedIn, connected {}", date_text(d)),
            None => "LinkedIn".to_owned(),
        },
        Source::Facebook(s) if s.friend_since_unix > 0 => {
            format!(
                "Facebook, friends since {}",
                format_time_ms(s.friend_since_unix as u64 * 1000)
                    .get(..10)
                    .unwrap_or("")
            )
        }
        Source::Facebook(_) => "Facebook".to_owned(),
        Source::IMessage(s) => format!(
            "iMessage {}: {} sent, {} received, {}",
            s.handle,
            s.sent,
            s.received,
            count(s.group_chats, "group chat")
        ),
        Source::AddressBook(s) => format!("address book, as {:?}", s.name),
        Source::VCard(_) => "vCard".to_owned(),
        Source::Calendar(s) => format!(
            "calendar: {}{}",
            count(
                s.meetings.as_ref().map_or(0, history::sketch_count),
                "meeting"
            ),
            span(s.first_unix, s.last_unix)
        ),
        Source::Mail(s) => format!(
            "mail: {} sent, {} received{}",
            s.sent.as_ref().map_or(0, history::sketch_count),
            s.received.as_ref().map_or(0, history::sketch_count),
            span(s.first_unix, s.last_unix)
        ),
        Source::Twitter(s) => {
            let who = if s.screen_name.is_empty() {
                format!("account {}", s.account_id)
            } else {
                format!("@{}", s.screen_name)
            };
            let how = match (s.following, s.follower) {
                (true, true) => "you follow each other",
                (true, false) => "you follow them",
                (false, true) => "they follow you",
                (false, false) => "no longer following",
            };
            format!("Twitter {who}: {how}")
        }
    }
}

/// `, first … last …` (days) when known.
fn span(first: i64, last: i64) -> String {
    if first <= 0 || last <= 0 {
        return String::new();
    }
    format!(", {} to {}", day(first), day(last))
}

/// `YYYY-MM-DD` of a Unix time.
fn day(unix: i64) -> String {
    format_time_ms(u64::try_from(unix).unwrap_or(0).saturating_mul(1000))
        .get(..10)
        .unwrap_or("")
        .to_owned()
}

/// The history lines of `contacts show`: each meeting and subject kept in full.
fn history_lines(c: &Contact) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for source in c.sources() {
        match source {
            Source::Calendar(s) => {
                for m in &s.recent {
                    let time = format_time_ms(u64::try_from(m.start_unix).unwrap_or(0) * 1000);
                    let mut line = format!("{time}  {}", m.title);
                    if !m.participants.is_empty() {
                        let others: Vec<&str> =
                            m.participants.iter().map(|p| p.email.as_str()).collect();
                        let _ = write!(line, " (with {})", others.join(", "));
                    }
                    out.push(("meeting", line));
                }
            }
            Source::Mail(s) => {
                for m in &s.recent {
                    let arrow = if m.sent { "to" } else { "from" };
                    out.push((
                        "mail",
                        format!("{} {arrow}: {}", day(m.date_unix), m.subject),
                    ));
                }
            }
            _ => {}
        }
    }
    out
}

/// Parses `YYYY-MM-DD` as midnight UTC, in Unix seconds.
pub fn parse_day(text: &str) -> Option<i64> {
    let mut parts = text.trim().splitn(3, '-');
    let y: i64 = parts.next()?.parse().ok()?;
    let m: i64 = parts.next()?.parse().ok()?;
    let d: i64 = parts.next()?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || !(1970..=9999).contains(&y) {
        return None;
    }
    // Howard Hinnant's days-from-civil; a day the month does not have fails the round trip.
    let yy = if m <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    (civil_from_days(days) == (y, m as u32, d as u32)).then_some(days * 86_400)
}

/// `kith meetings` as text: one block per meeting, newest first.
pub fn meetings_text(meetings: &[MeetingView]) -> String {
    let mut out = String::new();
    for m in meetings {
        let start = format_time_ms(u64::try_from(m.start_unix).unwrap_or(0) * 1000);
        let mark = if m.needs_notes { "  [take notes]" } else { "" };
        let title = if m.title.is_empty() {
            "(no title)"
        } else {
            &m.title
        };
        let _ = writeln!(out, "{start}  {title}{mark}");
        for p in &m.participants {
            let name = p.name.as_deref().unwrap_or("");
            let id = p.record_id.as_deref().map(short).unwrap_or("-");
            let noted = if p.record_id.is_some() && !p.noted_since {
                "  (no note since)"
            } else {
                ""
            };
            let _ = writeln!(out, "    {id:<10}  {name} <{}>{noted}", p.email);
        }
    }
    out
}

/// `YYYY-MM-DD HH:MM` (UTC) from milliseconds since the Unix epoch.
pub fn format_time_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// Howard Hinnant's days-to-civil conversion (proleptic Gregorian calendar).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// `1 contact`, `2 contacts`: a count and its noun, plural when it is not one.
pub fn count(n: impl Into<u64>, noun: &str) -> String {
    let n = n.into();
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// A byte count for people: `512 B`, `12.3 KiB`, `4.0 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_formatted_in_utc() {
        assert_eq!(format_time_ms(0), "1970-01-01 00:00");
        assert_eq!(format_time_ms(1_709_210_096_000), "2024-02-29 12:34");
    }

    #[test]
    fn counts_agree_with_their_noun() {
        assert_eq!(count(1u32, "envelope"), "1 envelope");
        assert_eq!(count(0u32, "envelope"), "0 envelopes");
        assert_eq!(count(2u64, "group chat"), "2 group chats");
    }

    #[test]
    fn byte_counts_are_readable() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 * 1024 * 1024), "3.0 MiB");
    }

    #[test]
    fn tables_align_columns() {
        let rows = [
            ["a".to_owned(), "bb".to_owned()],
            ["ccc".to_owned(), "d".to_owned()],
        ];
        assert_eq!(table(["X", "Y"], &rows), "X    Y\na    bb\nccc  d\n");
    }

    #[test]
    fn long_cells_are_cut_with_an_ellipsis() {
        assert_eq!(cut("abcdef", 4), "abc…");
        assert_eq!(cut("abc", 4), "abc");
    }
}
