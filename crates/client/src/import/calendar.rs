//! Calendars: an iCalendar file (RFC 5545, `.ics`) or a Google Takeout zip of them — the people
//! you meet and when.
//!
//! Per other participant (by e-mail, named by `CN=` when nothing better is known): every
//! meeting with them up to "now", each with its start, end, title (`SUMMARY`) and the other
//! participants. `DESCRIPTION`, `LOCATION`, attachments and conference links are never kept.
//!
//! Rules:
//! - Local times with `TZID=` become instants through the IANA zone of that name, or, for a
//!   name IANA does not know (Outlook's "W. Europe Standard Time"), through the file's own
//!   `VTIMEZONE` observances. Floating times use `X-WR-TIMEZONE`, else UTC. All-day events
//!   (`VALUE=DATE`) start at midnight UTC.
//! - A recurring event (`RRULE`, `RDATE`) counts each occurrence that starts at or before `now`,
//!   never beyond; `EXDATE` removes occurrences; a `RECURRENCE-ID` override replaces its
//!   occurrence (moved, retitled, cancelled or with other attendees). Recurrence is expanded in
//!   the event's local time, so a weekly 9:00 meeting stays at 9:00 across daylight saving.
//! - Not meetings with someone: `STATUS:CANCELLED` events, events the owner declined
//!   (`PARTSTAT=DECLINED` on the owner's `ATTENDEE`), attendees who declined, resources and
//!   rooms (`CUTYPE=RESOURCE` or `ROOM`), and the owner: `--me` addresses, or by default the
//!   calendar's own address (Google's `X-WR-CALNAME`). An event with no one else is no meeting.
//! - The organizer counts as a participant when not listed as an attendee.
//!
//! Every occurrence is identified by its UID and original start ([`history::meeting_id`]), so
//! two devices importing the same calendar, or a calendar exported twice, converge. Events are
//! reported by the 1-based line of their `BEGIN:VEVENT`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Seek};
use std::path::Path;

use chrono::{Datelike, NaiveDate, NaiveDateTime, Offset, TimeZone, Utc};
use kith_protocol::history::{self, MAX_MEETING_PARTICIPANTS, MAX_RECENT_MEETINGS};
use kith_protocol::proto;

use super::archive::Archive;
use super::{
    FileKind, ImportError, ImportOptions, ImportReport, ImportedContact, Provenance, check_size,
    text,
};

const KIND: FileKind = FileKind::Calendar;

/// Most occurrences one recurring event expands to.
pub const MAX_OCCURRENCES_PER_EVENT: usize = 10_000;
/// Most occurrences one import expands to, all events together.
pub const MAX_OCCURRENCES: usize = 5_000_000;
/// Longest unfolded content line kept; a longer property is dropped.
const MAX_LINE_BYTES: usize = 64 * 1024;
/// Longest title kept, in characters.
const MAX_TITLE_CHARS: usize = 200;
/// Most attendees read from one event.
const MAX_ATTENDEES: usize = 500;

/// Imports an `.ics` file or a zip of them from a path; occurrences after `now_unix` are not
/// counted.
pub fn import(
    path: &Path,
    me: &[String],
    now_unix: i64,
    opts: &ImportOptions,
) -> Result<ImportReport, ImportError> {
    let bytes = super::read_file(path, opts.max_file_bytes, KIND)?;
    import_bytes(&bytes, me, now_unix, opts)
}

/// Imports an `.ics` file or a zip of them from its bytes.
pub fn import_bytes(
    bytes: &[u8],
    me: &[String],
    now_unix: i64,
    opts: &ImportOptions,
) -> Result<ImportReport, ImportError> {
    check_size(bytes, opts, KIND)?;
    let mut importer = Importer::new(me, now_unix, opts);
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        import_zip(std::io::Cursor::new(bytes), &mut importer)?;
    } else {
        importer.calendar(bytes)?;
    }
    importer.finish()
}

fn import_zip(reader: impl Read + Seek, importer: &mut Importer<'_>) -> Result<(), ImportError> {
    let mut archive = Archive::open(reader, KIND)?;
    let names: Vec<String> = archive
        .names()
        .into_iter()
        .filter(|name| name.to_ascii_lowercase().ends_with(".ics"))
        .collect();
    if names.is_empty() {
        return Err(ImportError::WrongKind {
            expected: KIND,
            reason: "the zip holds no .ics file".into(),
        });
    }
    let mut left = importer.opts.max_file_bytes;
    for name in names {
        let bytes = archive.read(&name, left)?;
        left = left.saturating_sub(bytes.len() as u64);
        importer.calendar(&bytes)?;
    }
    Ok(())
}

/// One content line: name (uppercased), parameters (names uppercased, values unquoted), value.
#[derive(Debug, Clone, Default)]
struct Property {
    name: String,
    params: Vec<(String, String)>,
    value: String,
}

impl Property {
    fn param(&self, name: &str) -> Option<&str> {
        text::param(&self.params, name)
    }
}

/// Splits an iCalendar text into unfolded content lines, each with the 1-based line it starts
/// on. Lines longer than [`MAX_LINE_BYTES`] come out as `None` (dropped by the caller).
fn content_lines(text: &str) -> Vec<(usize, Option<String>)> {
    let mut out: Vec<(usize, Option<String>)> = Vec::new();
    for (index, raw) in text.split('\n').enumerate() {
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        if let Some(rest) = raw.strip_prefix([' ', '\t'])
            && let Some((_, Some(current))) = out.last_mut()
        {
            if current.len() + rest.len() > MAX_LINE_BYTES {
                if let Some(last) = out.last_mut() {
                    last.1 = None;
                }
            } else {
                current.push_str(rest);
            }
            continue;
        }
        if raw.starts_with([' ', '\t']) {
            continue;
        }
        if raw.is_empty() {
            continue;
        }
        out.push((
            index + 1,
            (raw.len() <= MAX_LINE_BYTES).then(|| raw.to_owned()),
        ));
    }
    out
}

/// Parses `NAME;P=v;Q="a,b":value`.
fn parse_property(line: &str) -> Option<Property> {
    let mut chars = line.char_indices().peekable();
    let mut name_end = None;
    while let Some(&(i, c)) = chars.peek() {
        if c == ';' || c == ':' {
            name_end = Some(i);
            break;
        }
        chars.next();
    }
    let name_end = name_end?;
    let name = line[..name_end].to_ascii_uppercase();
    let mut params = Vec::new();
    let mut rest = &line[name_end..];
    loop {
        if let Some(value) = rest.strip_prefix(':') {
            return Some(Property {
                name,
                params,
                value: value.to_owned(),
            });
        }
        rest = rest.strip_prefix(';')?;
        let eq = rest.find('=')?;
        let pname = rest[..eq].to_ascii_uppercase();
        rest = &rest[eq + 1..];
        let mut values = Vec::new();
        loop {
            if let Some(quoted) = rest.strip_prefix('"') {
                let end = quoted.find('"')?;
                values.push(quoted[..end].to_owned());
                rest = &quoted[end + 1..];
            } else {
                let end = rest.find([',', ';', ':']).unwrap_or(rest.len());
                values.push(rest[..end].to_owned());
                rest = &rest[end..];
            }
            match rest.strip_prefix(',') {
                Some(more) => rest = more,
                None => break,
            }
        }
        params.push((pname, values.join(",")));
    }
}

/// Undoes TEXT escaping (`\\`, `\;`, `\,`, `\n`).
fn unescape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n' | 'N') => out.push(' '),
                Some(other) => out.push(other),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A `mailto:` address, lowercased.
fn mailto(value: &str) -> Option<String> {
    let value = value.trim();
    let address = if value.len() >= 7 && value[..7].eq_ignore_ascii_case("mailto:") {
        &value[7..]
    } else {
        value
    };
    text::email_address(address).map(|a| a.to_lowercase())
}

/// A date-time value as written: local (with a zone or floating), UTC, or a date.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stamp {
    Utc(NaiveDateTime),
    Local(NaiveDateTime),
    Date(NaiveDate),
}

fn parse_stamp(value: &str, is_date: bool) -> Option<Stamp> {
    let value = value.trim();
    if is_date || value.len() == 8 {
        return NaiveDate::parse_from_str(value, "%Y%m%d")
            .ok()
            .map(Stamp::Date);
    }
    if let Some(utc) = value.strip_suffix(['Z', 'z']) {
        return NaiveDateTime::parse_from_str(utc, "%Y%m%dT%H%M%S")
            .ok()
            .map(Stamp::Utc);
    }
    NaiveDateTime::parse_from_str(value, "%Y%m%dT%H%M%S")
        .ok()
        .map(Stamp::Local)
}

/// An RFC 5545 `DURATION` in seconds.
fn parse_duration(value: &str) -> Option<i64> {
    let value = value.trim();
    let (sign, rest) = match value.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, value.strip_prefix('+').unwrap_or(value)),
    };
    let rest = rest.strip_prefix('P')?;
    let mut total: i64 = 0;
    let mut number: i64 = 0;
    let mut digits = false;
    for c in rest.chars() {
        match c {
            '0'..='9' => {
                number = number
                    .checked_mul(10)?
                    .checked_add(i64::from(c as u8 - b'0'))?;
                digits = true;
            }
            'T' => {}
            'W' | 'D' | 'H' | 'M' | 'S' if digits => {
                let unit = match c {
                    'W' => 604_800,
                    'D' => 86_400,
                    'H' => 3_600,
                    'M' => 60,
                    _ => 1,
                };
                total = total.checked_add(number.checked_mul(unit)?)?;
                number = 0;
                digits = false;
            }
            _ => return None,
        }
    }
    (!digits).then_some(sign * total)
}

/// A `VTIMEZONE` observance (`STANDARD` or `DAYLIGHT`).
#[derive(Debug, Clone, Default)]
struct Observance {
    start: Option<NaiveDateTime>,
    rrule: Option<String>,
    rdates: Vec<NaiveDateTime>,
    offset_to: Option<i32>,
}

/// A time zone as the calendar defines it.
#[derive(Debug, Clone)]
enum Zone {
    Utc,
    Iana(chrono_tz::Tz),
    Defined(Vec<Observance>),
}

fn parse_offset(value: &str) -> Option<i32> {
    let value = value.trim();
    let (sign, rest) = match value.as_bytes().first()? {
        b'+' => (1, &value[1..]),
        b'-' => (-1, &value[1..]),
        _ => return None,
    };
    if !(rest.len() == 4 || rest.len() == 6) || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let hours: i32 = rest[0..2].parse().ok()?;
    let minutes: i32 = rest[2..4].parse().ok()?;
    let seconds: i32 = rest.get(4..6).map_or(Some(0), |s| s.parse().ok())?;
    Some(sign * (hours * 3600 + minutes * 60 + seconds))
}

/// Expands a recurrence rule in naive local time (treated as UTC by `rrule`), yielding
/// occurrences while `keep` says so.
fn expand_rule(
    start: NaiveDateTime,
    rule: &str,
    mut keep: impl FnMut(NaiveDateTime) -> bool,
) -> Result<(), ()> {
    let rule = normalize_until(rule);
    let text = format!("DTSTART:{}Z\nRRULE:{rule}", start.format("%Y%m%dT%H%M%S"));
    let set: rrule::RRuleSet = text.parse().map_err(|_| ())?;
    for occurrence in set.into_iter() {
        if !keep(occurrence.naive_utc()) {
            break;
        }
    }
    Ok(())
}

/// `UNTIL` as a UTC date-time whatever its form (a date becomes its last second), so that the
/// rule validates against a `DTSTART` expanded as UTC. A `Z` until is compared with local times:
/// at most the zone's offset apart, which only matters for an occurrence within hours of it.
fn normalize_until(rule: &str) -> String {
    rule.split(';')
        .map(|part| match part.split_once('=') {
            Some((name, value)) if name.eq_ignore_ascii_case("UNTIL") => {
                let value = value.trim();
                if value.len() == 8 {
                    format!("UNTIL={value}T235959Z")
                } else if !value.ends_with(['Z', 'z']) {
                    format!("UNTIL={value}Z")
                } else {
                    format!("UNTIL={value}")
                }
            }
            _ => part.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(";")
}

impl Zone {
    /// The instant of a local time in this zone (a time in a daylight-saving gap moves forward
    /// by the gap; an ambiguous one takes the earlier instant).
    fn to_unix(
        &self,
        local: NaiveDateTime,
        cache: &mut HashMap<i32, Vec<(NaiveDateTime, i32)>>,
    ) -> i64 {
        match self {
            Zone::Utc => local.and_utc().timestamp(),
            Zone::Iana(tz) => match tz.from_local_datetime(&local) {
                chrono::LocalResult::Single(t) | chrono::LocalResult::Ambiguous(t, _) => {
                    t.timestamp()
                }
                chrono::LocalResult::None => {
                    let offset = tz.offset_from_utc_datetime(&local).fix().local_minus_utc();
                    local.and_utc().timestamp() - i64::from(offset)
                }
            },
            Zone::Defined(observances) => {
                let year = local.year();
                let transitions = cache
                    .entry(year)
                    .or_insert_with(|| transitions(observances, year));
                let at = transitions.partition_point(|(onset, _)| *onset <= local);
                let offset = match at {
                    0 => transitions.first().map_or(0, |(_, o)| *o),
                    n => transitions[n - 1].1,
                };
                local.and_utc().timestamp() - i64::from(offset)
            }
        }
    }
}

/// The onsets of a defined zone's observances from the year before `year` to its end, sorted.
fn transitions(observances: &[Observance], year: i32) -> Vec<(NaiveDateTime, i32)> {
    let from = NaiveDate::from_ymd_opt(year - 1, 1, 1).and_then(|d| d.and_hms_opt(0, 0, 0));
    let to = NaiveDate::from_ymd_opt(year + 1, 1, 1).and_then(|d| d.and_hms_opt(0, 0, 0));
    let (Some(from), Some(to)) = (from, to) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for observance in observances {
        let (Some(start), Some(offset)) = (observance.start, observance.offset_to) else {
            continue;
        };
        if start < to {
            out.push((start, offset));
        }
        for rdate in &observance.rdates {
            out.push((*rdate, offset));
        }
        if let Some(rule) = &observance.rrule {
            let mut count = 0;
            let _ = expand_rule(start, rule, |onset| {
                count += 1;
                if onset >= from && onset < to {
                    out.push((onset, offset));
                }
                onset < to && count < 2_000
            });
        }
    }
    out.sort();
    out.dedup();
    // Keep the last onset before `from` so times early in the range have an offset.
    let first_in = out.partition_point(|(onset, _)| *onset < from);
    out.drain(..first_in.saturating_sub(1));
    out
}

/// One `VEVENT` as read.
#[derive(Debug, Clone, Default)]
struct Event {
    line: usize,
    uid: String,
    summary: Option<String>,
    status: Option<String>,
    sequence: u32,
    start: Option<(Stamp, Option<String>)>,
    end: Option<(Stamp, Option<String>)>,
    duration: Option<i64>,
    rrules: Vec<String>,
    rdates: Vec<(Stamp, Option<String>)>,
    exdates: Vec<(Stamp, Option<String>)>,
    recurrence_id: Option<(Stamp, Option<String>)>,
    organizer: Option<(String, Option<String>)>,
    attendees: Vec<Attendee>,
}

#[derive(Debug, Clone)]
struct Attendee {
    email: String,
    name: Option<String>,
    declined: bool,
    resource: bool,
}

/// What the recent meetings of some person point at: title, participants (e-mail, `CN`),
/// `SEQUENCE`.
type KeptEvent = (Option<String>, Vec<(String, Option<String>)>, u32);

/// One person's meetings so far.
#[derive(Debug, Default)]
struct Person {
    name: Option<String>,
    /// The newest meetings: (occurrence, id) → (event index, start, end).
    recent: BTreeMap<(i64, [u8; 16]), (usize, i64, i64)>,
    sketch: proto::CountSketch,
    first: i64,
    last: i64,
}

struct Importer<'a> {
    opts: &'a ImportOptions,
    me_given: BTreeSet<String>,
    now: i64,
    report: ImportReport,
    people: BTreeMap<String, Person>,
    /// Every event that some person's recent meetings point at (titles and participants).
    events: Vec<KeptEvent>,
    occurrences: usize,
}

impl<'a> Importer<'a> {
    fn new(me: &[String], now: i64, opts: &'a ImportOptions) -> Self {
        Importer {
            opts,
            me_given: me
                .iter()
                .filter_map(|m| text::email_address(m.trim()))
                .map(|m| m.to_lowercase())
                .collect(),
            now,
            report: ImportReport::default(),
            people: BTreeMap::new(),
            events: Vec::new(),
            occurrences: 0,
        }
    }

    /// Reads one `VCALENDAR` text.
    fn calendar(&mut self, bytes: &[u8]) -> Result<(), ImportError> {
        let bytes = text::strip_utf8_bom(bytes);
        let text = String::from_utf8_lossy(bytes);
        let lines = content_lines(&text);
        let starts_right = lines
            .iter()
            .find_map(|(_, l)| l.as_deref())
            .is_some_and(|first| first.trim_end().eq_ignore_ascii_case("BEGIN:VCALENDAR"));
        if !starts_right {
            return Err(ImportError::WrongKind {
                expected: KIND,
                reason: "it does not start with BEGIN:VCALENDAR".into(),
            });
        }

        let mut calname = None;
        let mut default_tz: Option<String> = None;
        let mut zones: HashMap<String, Vec<Observance>> = HashMap::new();
        let mut events: Vec<Event> = Vec::new();
        let mut stack: Vec<String> = Vec::new();
        let mut event: Option<Event> = None;
        let mut zone_id: Option<String> = None;
        let mut observance: Option<Observance> = None;

        for (line_number, line) in &lines {
            let Some(line) = line else {
                self.report
                    .drop_field(self.opts, *line_number, "line", "longer than the limit");
                continue;
            };
            let Some(prop) = parse_property(line) else {
                continue;
            };
            match prop.name.as_str() {
                "BEGIN" => {
                    let what = prop.value.trim().to_ascii_uppercase();
                    if stack.len() >= 16 {
                        return Err(ImportError::WrongKind {
                            expected: KIND,
                            reason: "components are nested too deep".into(),
                        });
                    }
                    match what.as_str() {
                        "VEVENT" if stack.last().map(String::as_str) == Some("VCALENDAR") => {
                            event = Some(Event {
                                line: *line_number,
                                ..Default::default()
                            });
                        }
                        "STANDARD" | "DAYLIGHT" => observance = Some(Observance::default()),
                        _ => {}
                    }
                    stack.push(what);
                    continue;
                }
                "END" => {
                    let what = prop.value.trim().to_ascii_uppercase();
                    if let Some(at) = stack.iter().rposition(|c| *c == what) {
                        stack.truncate(at);
                    }
                    match what.as_str() {
                        "VEVENT" => {
                            if let Some(done) = event.take() {
                                if events.len() >= self.opts.max_records {
                                    return Err(ImportError::TooManyRecords {
                                        kind: KIND,
                                        limit: self.opts.max_records,
                                    });
                                }
                                events.push(done);
                            }
                        }
                        "STANDARD" | "DAYLIGHT" => {
                            if let (Some(id), Some(done)) = (&zone_id, observance.take()) {
                                zones.entry(id.clone()).or_default().push(done);
                            }
                        }
                        "VTIMEZONE" => zone_id = None,
                        _ => {}
                    }
                    continue;
                }
                _ => {}
            }
            let inside = stack.last().map(String::as_str);
            match inside {
                Some("VCALENDAR") => match prop.name.as_str() {
                    "X-WR-CALNAME" => calname = mailto(&prop.value),
                    "X-WR-TIMEZONE" => default_tz = Some(prop.value.trim().to_owned()),
                    _ => {}
                },
                Some("VTIMEZONE") if prop.name == "TZID" => {
                    zone_id = Some(prop.value.trim().to_owned());
                }
                Some("STANDARD" | "DAYLIGHT") => {
                    if let Some(obs) = observance.as_mut() {
                        match prop.name.as_str() {
                            "DTSTART" => {
                                obs.start = match parse_stamp(&prop.value, false) {
                                    Some(Stamp::Local(t) | Stamp::Utc(t)) => Some(t),
                                    _ => None,
                                }
                            }
                            "TZOFFSETTO" => obs.offset_to = parse_offset(&prop.value),
                            "RRULE" => obs.rrule = Some(prop.value.clone()),
                            "RDATE" => {
                                obs.rdates
                                    .extend(prop.value.split(',').take(1000).filter_map(|v| {
                                        match parse_stamp(v, false) {
                                            Some(Stamp::Local(t) | Stamp::Utc(t)) => Some(t),
                                            _ => None,
                                        }
                                    }))
                            }
                            _ => {}
                        }
                    }
                }
                Some("VEVENT") => {
                    if let Some(ev) = event.as_mut() {
                        self.event_property(ev, &prop);
                    }
                }
                _ => {}
            }
        }

        let owner: BTreeSet<String> = if self.me_given.is_empty() {
            calname.into_iter().collect()
        } else {
            self.me_given.clone()
        };
        if owner.is_empty() {
            return Err(ImportError::MissingOwner);
        }
        let resolver = ZoneResolver {
            zones,
            default: default_tz,
        };
        self.expand(events, &owner, &resolver)
    }

    fn event_property(&mut self, ev: &mut Event, prop: &Property) {
        let tzid = || prop.param("TZID").map(str::to_owned);
        let is_date = prop
            .param("VALUE")
            .is_some_and(|v| v.eq_ignore_ascii_case("DATE"));
        match prop.name.as_str() {
            "UID" => ev.uid = prop.value.trim().to_owned(),
            "SUMMARY" => {
                ev.summary = text::clean_line(&unescape(&prop.value)).map(|s| {
                    text::truncate_chars(&s, MAX_TITLE_CHARS.min(self.opts.field_limit()))
                });
            }
            "STATUS" => ev.status = Some(prop.value.trim().to_ascii_uppercase()),
            "SEQUENCE" => ev.sequence = prop.value.trim().parse().unwrap_or(0),
            "DTSTART" => ev.start = parse_stamp(&prop.value, is_date).map(|s| (s, tzid())),
            "DTEND" => ev.end = parse_stamp(&prop.value, is_date).map(|s| (s, tzid())),
            "DURATION" => ev.duration = parse_duration(&prop.value),
            "RRULE" if ev.rrules.len() < 8 => ev.rrules.push(prop.value.trim().to_owned()),
            "RDATE" | "EXDATE" => {
                let list = if prop.name == "RDATE" {
                    &mut ev.rdates
                } else {
                    &mut ev.exdates
                };
                for value in prop.value.split(',').take(MAX_OCCURRENCES_PER_EVENT) {
                    if list.len() < MAX_OCCURRENCES_PER_EVENT
                        && let Some(stamp) = parse_stamp(value, is_date)
                    {
                        list.push((stamp, tzid()));
                    }
                }
            }
            "RECURRENCE-ID" => {
                ev.recurrence_id = parse_stamp(&prop.value, is_date).map(|s| (s, tzid()));
            }
            "ORGANIZER" => {
                if let Some(email) = mailto(&prop.value) {
                    ev.organizer = Some((email, prop.param("CN").and_then(text::clean_line)));
                }
            }
            "ATTENDEE" if ev.attendees.len() < MAX_ATTENDEES => {
                if let Some(email) = mailto(&prop.value) {
                    let cutype = prop.param("CUTYPE").unwrap_or("").to_ascii_uppercase();
                    ev.attendees.push(Attendee {
                        email,
                        name: prop.param("CN").and_then(text::clean_line),
                        declined: prop
                            .param("PARTSTAT")
                            .is_some_and(|p| p.eq_ignore_ascii_case("DECLINED")),
                        resource: cutype == "RESOURCE" || cutype == "ROOM",
                    });
                }
            }
            _ => {}
        }
    }

    /// Expands every event up to now and counts its occurrences for its participants.
    fn expand(
        &mut self,
        events: Vec<Event>,
        owner: &BTreeSet<String>,
        zones: &ZoneResolver,
    ) -> Result<(), ImportError> {
        let mut cache: HashMap<(String, i32), Vec<(NaiveDateTime, i32)>> = HashMap::new();
        // Overrides by (UID, original start).
        let mut overridden: BTreeSet<(String, i64)> = BTreeSet::new();
        for ev in &events {
            if let Some(rid) = &ev.recurrence_id {
                overridden.insert((ev.uid.clone(), zones.unix(rid, &mut cache)));
            }
        }
        for ev in events {
            if ev.uid.is_empty() {
                self.report.skip(self.opts, ev.line, "event has no UID");
                continue;
            }
            let Some(start) = ev.start.clone() else {
                self.report.skip(self.opts, ev.line, "event has no DTSTART");
                continue;
            };
            if ev.status.as_deref() == Some("CANCELLED") {
                continue;
            }
            if ev
                .attendees
                .iter()
                .any(|a| owner.contains(&a.email) && a.declined)
            {
                continue;
            }
            let participants = participants(&ev, owner);
            if participants.is_empty() {
                continue;
            }
            let start_unix = zones.unix(&start, &mut cache);
            let length = match (&ev.end, ev.duration) {
                (Some(end), _) => (zones.unix(end, &mut cache) - start_unix).max(0),
                (None, Some(d)) => d.max(0),
                (None, None) => 0,
            };
            // Occurrences: (original start, actual start) in Unix seconds.
            let mut occurrences: Vec<i64> = Vec::new();
            if let Some(rid) = &ev.recurrence_id {
                let original = zones.unix(rid, &mut cache);
                if start_unix <= self.now {
                    self.count(&ev, original, start_unix, length, &participants);
                }
                continue;
            }
            let exdates: BTreeSet<i64> = ev
                .exdates
                .iter()
                .map(|e| zones.unix(e, &mut cache))
                .collect();
            if ev.rrules.is_empty() {
                occurrences.push(start_unix);
            } else {
                let (local, tzid) = match &start {
                    (Stamp::Utc(t), _) => (*t, Some("UTC".to_owned())),
                    (Stamp::Local(t), tzid) => (*t, tzid.clone()),
                    (Stamp::Date(d), _) => (
                        d.and_hms_opt(0, 0, 0).unwrap_or_default(),
                        Some("UTC".into()),
                    ),
                };
                for rule in &ev.rrules {
                    let mut n = 0;
                    let now = self.now;
                    let expanded = expand_rule(local, rule, |occurrence| {
                        let unix = zones.local_unix(occurrence, tzid.as_deref(), &mut cache);
                        if unix > now || n >= MAX_OCCURRENCES_PER_EVENT {
                            return false;
                        }
                        occurrences.push(unix);
                        n += 1;
                        true
                    });
                    if expanded.is_err() {
                        self.report.drop_field(
                            self.opts,
                            ev.line,
                            "RRULE",
                            "not a valid recurrence rule",
                        );
                        occurrences.push(start_unix);
                    }
                }
            }
            for rdate in &ev.rdates {
                occurrences.push(zones.unix(rdate, &mut cache));
            }
            occurrences.sort_unstable();
            occurrences.dedup();
            for original in occurrences {
                if original > self.now
                    || exdates.contains(&original)
                    || overridden.contains(&(ev.uid.clone(), original))
                {
                    continue;
                }
                self.count(&ev, original, original, length, &participants);
            }
            if self.occurrences > MAX_OCCURRENCES {
                return Err(ImportError::TooManyRecords {
                    kind: KIND,
                    limit: MAX_OCCURRENCES,
                });
            }
        }
        Ok(())
    }

    /// Counts one occurrence for each participant.
    fn count(
        &mut self,
        ev: &Event,
        original: i64,
        start: i64,
        length: i64,
        participants: &[(String, Option<String>)],
    ) {
        self.occurrences += 1;
        let id = history::meeting_id(&ev.uid, original);
        let hash = history::meeting_hash(&id);
        let mut event_index = None;
        for (email, name) in participants {
            if email.len() > self.opts.field_limit() {
                continue;
            }
            let person = self.people.entry(email.clone()).or_default();
            if person.name.is_none() {
                person.name = name.clone();
            }
            history::sketch_insert(&mut person.sketch, hash);
            person.first = if person.first == 0 {
                start
            } else {
                person.first.min(start)
            };
            person.last = person.last.max(start);
            let key = (original, id);
            let newest_enough = person.recent.len() < MAX_RECENT_MEETINGS
                || person
                    .recent
                    .keys()
                    .next()
                    .is_some_and(|oldest| key > *oldest);
            if newest_enough {
                let index = *event_index.get_or_insert_with(|| {
                    self.events
                        .push((ev.summary.clone(), participants.to_vec(), ev.sequence));
                    self.events.len() - 1
                });
                person.recent.insert(key, (index, start, start + length));
                while person.recent.len() > MAX_RECENT_MEETINGS {
                    person.recent.pop_first();
                }
            }
        }
    }

    fn finish(self) -> Result<ImportReport, ImportError> {
        let mut report = self.report;
        if self.people.len() > self.opts.max_records {
            return Err(ImportError::TooManyRecords {
                kind: KIND,
                limit: self.opts.max_records,
            });
        }
        for (email, person) in self.people {
            let recent = person
                .recent
                .iter()
                .rev()
                .map(|((original, id), (index, start, end))| {
                    let (title, participants, sequence) = &self.events[*index];
                    proto::Meeting {
                        id: id.to_vec(),
                        occurrence_unix: *original,
                        start_unix: *start,
                        end_unix: *end,
                        title: title.clone().unwrap_or_default(),
                        participants: participants
                            .iter()
                            .filter(|(other, _)| *other != email)
                            .take(MAX_MEETING_PARTICIPANTS)
                            .map(|(other, name)| proto::MeetingParticipant {
                                email: other.clone(),
                                name: name.clone().unwrap_or_default(),
                            })
                            .collect(),
                        sequence: *sequence,
                    }
                })
                .collect();
            let history = proto::CalendarSource {
                recent,
                meetings: Some(person.sketch),
                first_unix: person.first,
                last_unix: person.last,
            };
            let mut contact = ImportedContact::new(email.clone(), Provenance::Calendar(history));
            contact.name = person.name;
            contact.emails.push(proto::Email {
                address: email,
                label: String::new(),
            });
            report.contacts.push(contact);
        }
        Ok(report.logged("imported calendar meetings"))
    }
}

/// The other participants of an event: attendees and the organizer, without the owner,
/// resources, people who declined and duplicates; each with a `CN` name if given.
fn participants(ev: &Event, owner: &BTreeSet<String>) -> Vec<(String, Option<String>)> {
    let mut out: Vec<(String, Option<String>)> = Vec::new();
    let mut seen = BTreeSet::new();
    for attendee in &ev.attendees {
        if seen.insert(attendee.email.clone())
            && !attendee.resource
            && !attendee.declined
            && !owner.contains(&attendee.email)
        {
            out.push((attendee.email.clone(), attendee.name.clone()));
        }
    }
    if let Some((email, name)) = &ev.organizer
        && seen.insert(email.clone())
        && !owner.contains(email)
    {
        out.push((email.clone(), name.clone()));
    }
    out
}

/// Turns stamps into instants with the calendar's zones.
struct ZoneResolver {
    zones: HashMap<String, Vec<Observance>>,
    default: Option<String>,
}

impl ZoneResolver {
    fn zone(&self, tzid: Option<&str>) -> Zone {
        let name = tzid.or(self.default.as_deref());
        let Some(name) = name else {
            return Zone::Utc;
        };
        let name = name.trim().trim_start_matches('/');
        if name.eq_ignore_ascii_case("UTC") || name == "Z" {
            return Zone::Utc;
        }
        if let Ok(tz) = name.parse::<chrono_tz::Tz>() {
            return Zone::Iana(tz);
        }
        match self.zones.get(name) {
            Some(observances) => Zone::Defined(observances.clone()),
            None => Zone::Utc,
        }
    }

    fn local_unix(
        &self,
        local: NaiveDateTime,
        tzid: Option<&str>,
        cache: &mut HashMap<(String, i32), Vec<(NaiveDateTime, i32)>>,
    ) -> i64 {
        let zone = match tzid {
            Some("UTC") => Zone::Utc,
            other => self.zone(other),
        };
        if let Zone::Defined(observances) = &zone {
            let key = (tzid.unwrap_or_default().to_owned(), local.year());
            let transitions = cache
                .entry(key)
                .or_insert_with(|| transitions(observances, local.year()));
            let at = transitions.partition_point(|(onset, _)| *onset <= local);
            let offset = match at {
                0 => transitions.first().map_or(0, |(_, o)| *o),
                n => transitions[n - 1].1,
            };
            return local.and_utc().timestamp() - i64::from(offset);
        }
        zone.to_unix(local, &mut HashMap::new())
    }

    fn unix(
        &self,
        (stamp, tzid): &(Stamp, Option<String>),
        cache: &mut HashMap<(String, i32), Vec<(NaiveDateTime, i32)>>,
    ) -> i64 {
        match stamp {
            Stamp::Utc(t) => t.and_utc().timestamp(),
            Stamp::Date(d) => d
                .and_hms_opt(0, 0, 0)
                .map_or(0, |t| t.and_utc().timestamp()),
            Stamp::Local(t) => self.local_unix(*t, tzid.as_deref(), cache),
        }
    }
}

/// The current time as Unix seconds (what the CLI passes as `now`).
pub fn now_unix() -> i64 {
    Utc::now().timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_parse_with_quoted_parameters() {
        let p = parse_property(
            "ATTENDEE;CN=\"O'Brien, Anne\";PARTSTAT=ACCEPTED:mailto:Anne@Example.org",
        )
        .unwrap();
        assert_eq!(p.name, "ATTENDEE");
        assert_eq!(p.param("CN"), Some("O'Brien, Anne"));
        assert_eq!(p.param("PARTSTAT"), Some("ACCEPTED"));
        assert_eq!(mailto(&p.value).as_deref(), Some("anne@example.org"));
    }

    #[test]
    fn folded_lines_are_unfolded() {
        let lines = content_lines("A:one\r\n two\r\n\tthree\r\nB:x\r\n");
        let texts: Vec<_> = lines.into_iter().map(|(_, l)| l.unwrap()).collect();
        assert_eq!(texts, ["A:onetwothree", "B:x"]);
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("PT1H30M"), Some(5400));
        assert_eq!(parse_duration("P1W"), Some(604_800));
        assert_eq!(parse_duration("P1DT2S"), Some(86_402));
        assert_eq!(parse_duration("-PT15M"), Some(-900));
        assert_eq!(parse_duration("PT"), Some(0));
        assert_eq!(parse_duration("P1"), None);
        assert_eq!(parse_duration("P99999999999999999999D"), None);
    }

    #[test]
    fn a_defined_zone_gives_the_offset_of_its_observance() {
        let observances = vec![
            Observance {
                start: NaiveDateTime::parse_from_str("19701025T030000", "%Y%m%dT%H%M%S").ok(),
                rrule: Some("FREQ=YEARLY;BYMONTH=10;BYDAY=-1SU".into()),
                rdates: vec![],
                offset_to: Some(3600),
            },
            Observance {
                start: NaiveDateTime::parse_from_str("19700329T020000", "%Y%m%dT%H%M%S").ok(),
                rrule: Some("FREQ=YEARLY;BYMONTH=3;BYDAY=-1SU".into()),
                rdates: vec![],
                offset_to: Some(7200),
            },
        ];
        let zone = Zone::Defined(observances);
        let mut cache = HashMap::new();
        let winter = NaiveDateTime::parse_from_str("20250110T090000", "%Y%m%dT%H%M%S").unwrap();
        let summer = NaiveDateTime::parse_from_str("20250710T090000", "%Y%m%dT%H%M%S").unwrap();
        assert_eq!(
            zone.to_unix(winter, &mut cache),
            winter.and_utc().timestamp() - 3600
        );
        assert_eq!(
            zone.to_unix(summer, &mut cache),
            summer.and_utc().timestamp() - 7200
        );
    }
}
