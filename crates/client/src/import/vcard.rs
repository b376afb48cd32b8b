//! vCard 2.1, 3.0 and 4.0 in ([`import`]); vCard 4.0 out is [`crate::export`].
//!
//! Reads FN (or N), EMAIL, TEL, URL, X-SOCIALPROFILE / SOCIALPROFILE, ORG, TITLE, BDAY, NOTE and
//! UID, with labels from `TYPE` parameters or from Apple's grouped `itemN.X-ABLabel`. Photos,
//! addresses, keys and everything else are skipped without being decoded.
//!
//! The parser is our own (about the size of the format we need) because the crates we evaluated
//! each lacked something this importer must do: `vcard4` reads only RFC 6350 (no 2.1
//! quoted-printable or `CHARSET`), `calcard` reads every version but reports malformed input
//! without line numbers and brings a time-zone database and a mail parser with it, and
//! `vcard-rs` was changing its API release to release. Decoding quoted-printable and legacy
//! charsets is left to the `quoted_printable` and `encoding_rs` crates.
//!
//! What it handles:
//! - line folding (3.0/4.0: CRLF + one space or tab removed; 2.1: the whitespace kept), and
//!   quoted-printable soft line breaks (`=` at the end of a line) in 2.1;
//! - `ENCODING=QUOTED-PRINTABLE` (or bare `QUOTED-PRINTABLE`) with `CHARSET=…` (any charset
//!   `encoding_rs` knows), and text that is not UTF-8 without a charset (read as Windows-1252);
//!   UTF-16 files with a byte-order mark;
//! - escapes `\n`, `\,`, `\;`, `\:`, `\\`, and structured values (N, ORG) split on unescaped `;`;
//! - `TYPE=a,b`, repeated `type=`, 2.1 bare types (`TEL;HOME;VOICE:`), RFC 6868 `^n ^^ ^'`;
//! - several TEL/EMAIL/URL, `itemN.` groups with `X-ABLabel` (`_$!<Mobile>!$_` → `mobile`);
//! - BDAY `1970-01-01`, `19700101`, with a time, `--0412`, `--04-12`, and Apple's
//!   `X-APPLE-OMIT-YEAR`;
//! - a 2.1 `AGENT` with an embedded card (skipped), 2.1 base64 blocks (skipped).
//!
//! Cards are reported with the line of their `BEGIN:VCARD`; properties with their own line. A
//! card without `END:VCARD` is skipped. A file with no `BEGIN:VCARD` line is one
//! [`ImportError::WrongKind`].

use std::borrow::Cow;
use std::collections::HashMap;

use kith_protocol::proto;

use super::{
    FileKind, ImportError, ImportOptions, ImportReport, ImportedContact, Provenance, check_size,
    phone, text,
};

const KIND: FileKind = FileKind::VCard;

/// Most properties kept from one card.
const MAX_PROPERTIES_PER_CARD: usize = 10_000;
/// Longest URL kept.
const MAX_URL_BYTES: usize = 2048;
/// Longest handle kept.
const MAX_HANDLE_BYTES: usize = 256;

/// The properties the importer reads; every other property is skipped without decoding.
const WANTED: &[&str] = &[
    "FN",
    "N",
    "EMAIL",
    "TEL",
    "URL",
    "ORG",
    "TITLE",
    "BDAY",
    "NOTE",
    "UID",
    "X-ABLABEL",
    "X-SOCIALPROFILE",
    "SOCIALPROFILE",
];

/// `TYPE` values that say nothing a label should carry.
const IGNORED_TYPES: &[&str] = &[
    "pref", "internet", "voice", "x400", "msg", "dom", "intl", "postal", "parcel",
];

whole_file_entry_points!("vCards");

/// Imports vCards from bytes.
pub fn import_bytes(bytes: &[u8], opts: &ImportOptions) -> Result<ImportReport, ImportError> {
    check_size(bytes, opts, KIND)?;
    let bytes = decode_file(bytes);
    let bytes: &[u8] = &bytes;
    let separator = separator_of(bytes);
    if !Lines::new(bytes, separator).any(|(_, _, _, line)| is_begin(line)) {
        return Err(ImportError::WrongKind {
            expected: KIND,
            reason: "it has no BEGIN:VCARD line".into(),
        });
    }

    let mut report = ImportReport::default();
    let mut by_identity: HashMap<String, usize> = HashMap::new();
    let mut cards = 0usize;
    // (line of BEGIN, byte offset of the line after it, nesting depth of embedded AGENT cards)
    let mut open: Option<(usize, usize, usize)> = None;
    let mut previous_was_agent = false;
    for (line_no, offset, next, line) in Lines::new(bytes, separator) {
        let agent = previous_was_agent;
        previous_was_agent = is_agent_opening(line);
        match open {
            None => {
                if is_begin(line) {
                    open = Some((line_no, next, 0));
                }
            }
            Some((begin, body_start, depth)) => {
                if is_begin(line) {
                    if agent || depth > 0 {
                        open = Some((begin, body_start, depth.saturating_add(1)));
                    } else {
                        report.skip(opts, begin, "card has no END:VCARD");
                        open = Some((line_no, next, 0));
                    }
                } else if is_end(line) {
                    if depth > 0 {
                        open = Some((begin, body_start, depth - 1));
                        continue;
                    }
                    open = None;
                    cards = cards.saturating_add(1);
                    if cards > opts.max_records {
                        return Err(ImportError::TooManyRecords {
                            kind: KIND,
                            limit: opts.max_records,
                        });
                    }
                    let body = bytes.get(body_start..offset).unwrap_or_default();
                    match parse_card(body, separator, begin.saturating_add(1), opts, &mut report) {
                        Ok(contact) => match by_identity.get(&contact.source_identity) {
                            Some(&i) => {
                                if let Some(existing) = report.contacts.get_mut(i) {
                                    existing.absorb(contact, opts.max_values_per_field);
                                }
                            }
                            None => {
                                by_identity
                                    .insert(contact.source_identity.clone(), report.contacts.len());
                                report.contacts.push(contact);
                            }
                        },
                        Err(reason) => report.skip(opts, begin, reason),
                    }
                }
            }
        }
    }
    if let Some((begin, _, _)) = open {
        report.skip(opts, begin, "card has no END:VCARD");
    }
    Ok(report.logged("imported vCards"))
}

/// UTF-16 (with a byte-order mark) to UTF-8; a UTF-8 byte-order mark removed.
fn decode_file(bytes: &[u8]) -> Cow<'_, [u8]> {
    let utf16 = match bytes {
        [0xFF, 0xFE, ..] => Some(encoding_rs::UTF_16LE),
        [0xFE, 0xFF, ..] => Some(encoding_rs::UTF_16BE),
        _ => None,
    };
    match utf16 {
        Some(encoding) => {
            let (text, _) = encoding.decode_with_bom_removal(bytes);
            Cow::Owned(text.into_owned().into_bytes())
        }
        None => Cow::Borrowed(text::strip_utf8_bom(bytes)),
    }
}

/// Physical lines: `(1-based line number, byte offset, offset of the next line, line without
/// its line end)`. Lines end at LF (a CR before it is dropped), or at CR in a file that has no
/// LF at all.
struct Lines<'a> {
    bytes: &'a [u8],
    pos: usize,
    line: usize,
    separator: u8,
}

impl<'a> Lines<'a> {
    fn new(bytes: &'a [u8], separator: u8) -> Self {
        Lines {
            bytes,
            pos: 0,
            line: 0,
            separator,
        }
    }
}

/// The line separator of a file: LF, or CR in a file that has no LF.
fn separator_of(bytes: &[u8]) -> u8 {
    if !bytes.contains(&b'\n') && bytes.contains(&b'\r') {
        b'\r'
    } else {
        b'\n'
    }
}

impl<'a> Iterator for Lines<'a> {
    type Item = (usize, usize, usize, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.bytes.get(self.pos..)?;
        if rest.is_empty() {
            return None;
        }
        let start = self.pos;
        let (line, advance) = match rest.iter().position(|&b| b == self.separator) {
            Some(end) => (rest.get(..end).unwrap_or_default(), end.saturating_add(1)),
            None => (rest, rest.len()),
        };
        self.pos = self.pos.saturating_add(advance);
        self.line = self.line.saturating_add(1);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        Some((self.line, start, self.pos, line))
    }
}

fn trim_ascii(line: &[u8]) -> &[u8] {
    line.trim_ascii()
}

fn is_begin(line: &[u8]) -> bool {
    trim_ascii(line).eq_ignore_ascii_case(b"BEGIN:VCARD")
}

fn is_end(line: &[u8]) -> bool {
    trim_ascii(line).eq_ignore_ascii_case(b"END:VCARD")
}

/// `AGENT:` (or `AGENT;…:`) with nothing after the colon: a 2.1 embedded card follows.
fn is_agent_opening(line: &[u8]) -> bool {
    let line = trim_ascii(line);
    line.get(..5)
        .is_some_and(|head| head.eq_ignore_ascii_case(b"AGENT"))
        && line.ends_with(b":")
}

/// The vCard version a card declares (`2.1`, `3.0`, `4.0`); 3.0 when it declares none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V21,
    V30,
    V40,
}

/// One property of a card, its value still encoded.
#[derive(Debug)]
struct Property {
    line: usize,
    group: Option<String>,
    name: String,
    /// `(NAME, value)`, one entry per value (`TYPE=a,b` gives two).
    params: Vec<(String, String)>,
    value: Vec<u8>,
}

impl Property {
    fn param(&self, name: &str) -> Option<&str> {
        text::param(&self.params, name)
    }

    fn params_named<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s str> + 's {
        self.params
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A logical line being assembled from physical lines.
struct Pending {
    line: usize,
    buf: Vec<u8>,
    /// The last physical line ended in a quoted-printable soft line break (`=`).
    soft_break: bool,
    wanted: bool,
    overlong: bool,
}

/// Splits a card's body into its wanted properties, unfolding lines.
fn properties(
    body: &[u8],
    separator: u8,
    first_line: usize,
    version: Version,
    opts: &ImportOptions,
    report: &mut ImportReport,
) -> Result<Vec<Property>, &'static str> {
    let max_line = opts.field_limit().saturating_mul(3).saturating_add(1024);
    let mut out = Vec::new();
    let mut pending: Option<Pending> = None;
    let mut nested = 0usize;
    let mut in_base64_block = false;
    let mut previous_was_agent = false;

    let finish = |p: Pending, out: &mut Vec<Property>, report: &mut ImportReport| {
        if !p.wanted {
            return Ok(());
        }
        if p.overlong {
            let name = String::from_utf8_lossy(property_name(&p.buf).unwrap_or(b"line"));
            report.drop_field(opts, p.line, &name, "value is too long");
            return Ok(());
        }
        match parse_property(&p.buf, p.line) {
            Some(property) => {
                if out.len() >= MAX_PROPERTIES_PER_CARD {
                    return Err("card has too many properties");
                }
                out.push(property);
            }
            None => report.drop_field(opts, p.line, "line", "not a vCard property"),
        }
        Ok(())
    };

    for (index, _, _, line) in Lines::new(body, separator) {
        let line_no = first_line.saturating_add(index).saturating_sub(1);
        let agent = previous_was_agent;
        previous_was_agent = is_agent_opening(line);
        if nested > 0 || (agent && is_begin(line)) {
            if is_begin(line) {
                nested = nested.saturating_add(1);
            } else if is_end(line) {
                nested = nested.saturating_sub(1);
            }
            continue;
        }
        if in_base64_block {
            let looks_base64 = !line.is_empty()
                && line.iter().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b' ' | b'\t')
                });
            if looks_base64 {
                continue;
            }
            in_base64_block = false;
        }
        if let Some(p) = pending.as_mut() {
            if p.soft_break {
                if p.wanted && !p.overlong {
                    p.buf.pop();
                    p.buf.extend_from_slice(line);
                    p.overlong = p.buf.len() > max_line;
                }
                p.soft_break = line.ends_with(b"=");
                continue;
            }
            if matches!(line.first(), Some(b' ' | b'\t')) {
                if p.wanted && !p.overlong {
                    let rest = if version == Version::V21 {
                        line
                    } else {
                        line.get(1..).unwrap_or_default()
                    };
                    p.buf.extend_from_slice(rest);
                    p.overlong = p.buf.len() > max_line;
                }
                continue;
            }
        }
        if let Some(p) = pending.take() {
            finish(p, &mut out, report)?;
        }
        if line.trim_ascii().is_empty() {
            continue;
        }
        let head = params_part(line);
        let name = property_name(line);
        let wanted = match name {
            Some(name) => {
                let bare = bare_name(name);
                WANTED
                    .iter()
                    .any(|w| w.as_bytes().eq_ignore_ascii_case(bare))
            }
            None => true, // reported as "not a vCard property"
        };
        let upper_head = head.to_ascii_uppercase();
        if version == Version::V21 && !wanted && contains(&upper_head, b"BASE64") {
            in_base64_block = true;
        }
        let quoted_printable = contains(&upper_head, b"QUOTED-PRINTABLE");
        let overlong = line.len() > max_line;
        let buf = match name {
            // Keep only the name of a value we will drop, for the report.
            Some(name) if wanted && overlong => [name, b":"].concat(),
            _ if wanted && !overlong => line.to_vec(),
            _ => Vec::new(),
        };
        pending = Some(Pending {
            line: line_no,
            buf,
            soft_break: quoted_printable && line.ends_with(b"="),
            wanted,
            overlong,
        });
    }
    if let Some(p) = pending.take() {
        finish(p, &mut out, report)?;
    }
    Ok(out)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The part of a content line before its value (name and parameters), honoring quotes.
fn params_part(line: &[u8]) -> &[u8] {
    let mut quoted = false;
    for (i, &b) in line.iter().enumerate() {
        match b {
            b'"' => quoted = !quoted,
            b':' if !quoted => return line.get(..i).unwrap_or_default(),
            _ => {}
        }
    }
    line
}

/// The (possibly grouped) property name at the start of a content line, if it is well formed.
fn property_name(line: &[u8]) -> Option<&[u8]> {
    let end = line.iter().position(|&b| b == b';' || b == b':')?;
    let name = line.get(..end)?;
    let valid = !name.is_empty()
        && name
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    valid.then_some(name)
}

/// The name without its group.
fn bare_name(name: &[u8]) -> &[u8] {
    match name.iter().rposition(|&b| b == b'.') {
        Some(dot) => name.get(dot.saturating_add(1)..).unwrap_or_default(),
        None => name,
    }
}

/// Parses `[group.]NAME *(;param) : value`.
fn parse_property(line: &[u8], line_no: usize) -> Option<Property> {
    let full_name = property_name(line)?;
    let (group, name) = match full_name.iter().rposition(|&b| b == b'.') {
        Some(dot) => (
            Some(String::from_utf8_lossy(full_name.get(..dot)?).to_ascii_lowercase()),
            full_name.get(dot.saturating_add(1)..)?,
        ),
        None => (None, full_name),
    };
    if name.is_empty() {
        return None;
    }
    let name = String::from_utf8_lossy(name).to_ascii_uppercase();
    let mut i = full_name.len();
    let mut params = Vec::new();
    while line.get(i) == Some(&b';') {
        i += 1;
        let start = i;
        while let Some(&b) = line.get(i) {
            if matches!(b, b'=' | b';' | b':') {
                break;
            }
            i += 1;
        }
        let param_name = String::from_utf8_lossy(line.get(start..i)?)
            .trim()
            .to_ascii_uppercase();
        if line.get(i) == Some(&b'=') {
            loop {
                i += 1;
                let value;
                if line.get(i) == Some(&b'"') {
                    i += 1;
                    let start = i;
                    while let Some(&b) = line.get(i) {
                        if b == b'"' {
                            break;
                        }
                        i += 1;
                    }
                    value = line.get(start..i)?;
                    if line.get(i) == Some(&b'"') {
                        i += 1;
                    }
                } else {
                    let start = i;
                    while let Some(&b) = line.get(i) {
                        if matches!(b, b',' | b';' | b':') {
                            break;
                        }
                        i += 1;
                    }
                    value = line.get(start..i)?;
                }
                let value = caret_decode(&String::from_utf8_lossy(value));
                params.push((param_name.clone(), value.trim().to_owned()));
                if line.get(i) != Some(&b',') {
                    break;
                }
            }
        } else if !param_name.is_empty() {
            // vCard 2.1 bare parameters: `TEL;HOME;VOICE:`, `NOTE;QUOTED-PRINTABLE:`.
            let entry = match param_name.as_str() {
                "QUOTED-PRINTABLE" | "BASE64" | "8BIT" | "7BIT" => ("ENCODING", param_name),
                _ => ("TYPE", param_name),
            };
            params.push((entry.0.to_owned(), entry.1));
        }
    }
    if line.get(i) != Some(&b':') {
        return None;
    }
    Some(Property {
        line: line_no,
        group,
        name,
        params,
        value: line.get(i.saturating_add(1)..)?.to_vec(),
    })
}

/// RFC 6868 parameter-value encoding: `^n` newline, `^^` caret, `^'` double quote.
fn caret_decode(s: &str) -> String {
    if !s.contains('^') {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '^' {
            match chars.peek() {
                Some('n' | 'N') => {
                    out.push('\n');
                    chars.next();
                }
                Some('^') => {
                    out.push('^');
                    chars.next();
                }
                Some('\'') => {
                    out.push('"');
                    chars.next();
                }
                _ => out.push('^'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The value as text: quoted-printable and charset decoded; not yet unescaped.
fn decode_value(property: &Property) -> Result<String, &'static str> {
    let encoding = property
        .param("ENCODING")
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let bytes: Cow<'_, [u8]> = match encoding.as_str() {
        "quoted-printable" => Cow::Owned(
            quoted_printable::decode(&property.value, quoted_printable::ParseMode::Robust)
                .map_err(|_| "bad quoted-printable")?,
        ),
        "b" | "base64" => return Err("binary value"),
        _ => Cow::Borrowed(&property.value),
    };
    let charset = property
        .param("CHARSET")
        .and_then(|label| encoding_rs::Encoding::for_label(label.trim().as_bytes()));
    if let Some(charset) = charset {
        let (text, _, _) = charset.decode(&bytes);
        return Ok(text.into_owned());
    }
    match std::str::from_utf8(&bytes) {
        Ok(text) => Ok(text.to_owned()),
        Err(_) => Ok(encoding_rs::WINDOWS_1252.decode(&bytes).0.into_owned()),
    }
}

/// Undoes text escaping: `\n`/`\N` newline; `\,` `\;` `\:` `\\` the character; any other
/// backslash stays.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.peek().copied() {
            Some('n' | 'N') => {
                out.push('\n');
                chars.next();
            }
            Some(e @ (',' | ';' | ':' | '\\')) => {
                out.push(e);
                chars.next();
            }
            _ => out.push('\\'),
        }
    }
    out
}

/// Splits a structured value (N, ORG) at unescaped `;` and unescapes each component.
fn split_structured(s: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                current.push('\\');
                if let Some(next) = chars.next() {
                    current.push(next);
                }
            }
            ';' => parts.push(unescape(&std::mem::take(&mut current))),
            _ => current.push(c),
        }
    }
    parts.push(unescape(&current));
    parts
}

/// Apple's built-in labels `_$!<Mobile>!$_` become `mobile`; custom labels stay as written.
fn apple_label(raw: &str) -> Option<String> {
    let label = text::clean_line(raw)?;
    match label
        .strip_prefix("_$!<")
        .and_then(|rest| rest.strip_suffix(">!$_"))
    {
        Some(inner) => text::clean_line(&inner.to_lowercase()),
        None => Some(label),
    }
}

/// The label of an EMAIL, TEL or URL: its group's `X-ABLabel`, else its first meaningful
/// `TYPE`, else empty.
fn label_of(property: &Property, labels: &HashMap<String, String>) -> String {
    if let Some(label) = property.group.as_ref().and_then(|g| labels.get(g)) {
        return label.clone();
    }
    property
        .params_named("TYPE")
        .flat_map(|v| v.split(','))
        .map(text::token)
        .find(|t| !t.is_empty() && !IGNORED_TYPES.contains(&t.as_str()))
        .unwrap_or_default()
}

/// `BDAY` values: `1970-01-01`, `19700101`, either with a time, `--0412`, `--04-12`; `year`
/// 0 when the year is omitted (or equals Apple's `X-APPLE-OMIT-YEAR`).
fn parse_birthday(raw: &str, omit_year: Option<u32>) -> Option<proto::Date> {
    let raw = raw.trim();
    let date_part = raw.split('T').next().unwrap_or(raw);
    if let Some(rest) = date_part.strip_prefix("--") {
        let (month, day) = match rest.len() {
            4 => (rest.get(0..2)?, rest.get(2..4)?),
            5 if rest.as_bytes().get(2) == Some(&b'-') => (rest.get(0..2)?, rest.get(3..5)?),
            _ => return None,
        };
        return text::date(0, text::digits(month)?, text::digits(day)?);
    }
    let date = text::iso_date(date_part)?;
    if omit_year == Some(date.year) {
        return text::date(0, date.month, date.day);
    }
    Some(date)
}

fn handle_from_url(url: &str) -> Option<String> {
    let lower = url.to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        return None;
    }
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let last = path.trim_end_matches('/').rsplit('/').next()?;
    let last = last.trim_start_matches('@');
    let is_host = path.trim_end_matches('/').matches('/').count() <= 2;
    (!last.is_empty() && !is_host).then(|| last.to_owned())
}

/// Whether `handle/<service>:<handle>`, the key the client records a handle under
/// ([`super::ImportedContact::field_writes`]), is a valid field key.
fn valid_handle_key(service: &str, handle: &str) -> bool {
    kith_protocol::record::FieldKey::parse(&format!("handle/{service}:{handle}")).is_ok()
}

fn is_url_like(s: &str) -> bool {
    let lower = s.to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

fn valid_url(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_URL_BYTES
        && !s
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '\\')
}

/// Turns one card's body into a contact, or says why the card is skipped.
fn parse_card(
    body: &[u8],
    separator: u8,
    first_line: usize,
    opts: &ImportOptions,
    report: &mut ImportReport,
) -> Result<ImportedContact, &'static str> {
    let version = Lines::new(body, separator)
        .find_map(|(_, _, _, line)| {
            let line = trim_ascii(line);
            let head = line.get(..8)?;
            head.eq_ignore_ascii_case(b"VERSION:")
                .then(|| line.get(8..).unwrap_or_default().trim_ascii().to_vec())
        })
        .map_or(Version::V30, |v| match v.as_slice() {
            b"2.1" | b"2.0" => Version::V21,
            b"4.0" => Version::V40,
            _ => Version::V30,
        });
    let properties = properties(body, separator, first_line, version, opts, report)?;
    let limit = opts.field_limit();
    let max_values = opts.max_values_per_field;

    // First pass: labels of groups.
    let mut labels: HashMap<String, String> = HashMap::new();
    for p in properties.iter().filter(|p| p.name == "X-ABLABEL") {
        if let (Some(group), Ok(value)) = (&p.group, decode_value(p))
            && let Some(label) = apple_label(&unescape(&value))
        {
            labels.entry(group.clone()).or_insert(label);
        }
    }

    let mut formatted_name: Option<String> = None;
    let mut structured_name: Option<String> = None;
    let mut uid: Option<String> = None;
    let mut contact = ImportedContact::new(
        String::new(),
        Provenance::VCard(proto::VCardSource { uid: String::new() }),
    );
    let mut notes: Vec<String> = Vec::new();

    for p in &properties {
        let value = match decode_value(p) {
            Ok(v) if v.len() <= limit => v,
            Ok(_) => {
                report.drop_field(opts, p.line, &p.name, "value is too long");
                continue;
            }
            Err(reason) => {
                report.drop_field(opts, p.line, &p.name, reason);
                continue;
            }
        };
        let full = |report: &mut ImportReport| {
            report.drop_field(opts, p.line, &p.name, "too many values on one card");
        };
        match p.name.as_str() {
            "FN" if formatted_name.is_none() => {
                formatted_name = text::clean_line(&unescape(&value));
            }
            "N" if structured_name.is_none() => {
                // family; given; additional; prefixes; suffixes
                let parts = split_structured(&value);
                let order = [3, 1, 2, 0, 4];
                let words: Vec<String> = order
                    .iter()
                    .filter_map(|&i| parts.get(i))
                    .filter_map(|s| text::clean_line(&s.replace(',', " ")))
                    .collect();
                structured_name = text::clean_line(&words.join(" "));
            }
            "EMAIL" => match text::email_address(&unescape(&value)) {
                Some(address) => {
                    let email = proto::Email {
                        address,
                        label: label_of(p, &labels),
                    };
                    if text::push_email(&mut contact.emails, email, max_values) {
                        full(report);
                    }
                }
                None => report.drop_field(opts, p.line, "EMAIL", "not an e-mail address"),
            },
            "TEL" => match phone::to_e164(&unescape(&value), opts.default_region) {
                Some(e164) => {
                    let phone = proto::Phone {
                        e164,
                        label: label_of(p, &labels),
                    };
                    if text::push_unique(&mut contact.phones, phone, max_values, |a, b| {
                        a.e164 == b.e164
                    }) {
                        full(report);
                    }
                }
                None => report.drop_field(opts, p.line, "TEL", "not a phone number"),
            },
            "URL" => {
                let url = unescape(&value).trim().to_owned();
                if valid_url(&url) {
                    let url = proto::Url {
                        url,
                        label: label_of(p, &labels),
                    };
                    if text::push_unique(&mut contact.urls, url, max_values, |a, b| a.url == b.url)
                    {
                        full(report);
                    }
                } else {
                    report.drop_field(opts, p.line, "URL", "not a URL");
                }
            }
            "X-SOCIALPROFILE" | "SOCIALPROFILE" => {
                let service = p
                    .params_named("TYPE")
                    .chain(p.params_named("SERVICE-TYPE"))
                    .chain(p.params_named("X-SERVICE-TYPE"))
                    .map(text::token)
                    .find(|t| !t.is_empty() && t != "pref")
                    .unwrap_or_else(|| "other".to_owned());
                let raw = unescape(&value).trim().to_owned();
                let url = is_url_like(&raw) && valid_url(&raw);
                let handle = p
                    .param("X-USER")
                    .and_then(text::clean_line)
                    .or_else(|| {
                        if url {
                            handle_from_url(&raw)
                        } else {
                            text::clean_line(&raw)
                        }
                    })
                    .filter(|h| h.len() <= MAX_HANDLE_BYTES && !is_url_like(h));
                if url {
                    let url = proto::Url {
                        url: raw,
                        label: service.clone(),
                    };
                    if text::push_unique(&mut contact.urls, url, max_values, |a, b| a.url == b.url)
                    {
                        full(report);
                    }
                }
                match handle {
                    // The client records a handle under `handle/<service>:<handle>`, a key
                    // without whitespace (`FieldKey`): a value like `Stark Industries` is no
                    // handle, and would otherwise be dropped silently at import time.
                    Some(handle) if !valid_handle_key(&service, &handle) => {
                        report.drop_field(opts, p.line, &p.name, "not a handle");
                    }
                    Some(handle) => {
                        let handle = proto::Handle { service, handle };
                        if text::push_unique(&mut contact.handles, handle, max_values, |a, b| {
                            a.service == b.service && a.handle == b.handle
                        }) {
                            full(report);
                        }
                    }
                    None if !url => {
                        report.drop_field(opts, p.line, &p.name, "no handle in the value")
                    }
                    None => {}
                }
            }
            "ORG" if contact.company.is_none() => {
                contact.company = split_structured(&value)
                    .iter()
                    .find_map(|s| text::clean_line(s));
            }
            "TITLE" if contact.title.is_none() => {
                contact.title = text::clean_line(&unescape(&value));
            }
            "BDAY" if contact.birthday.is_none() => {
                let omit_year = p.param("X-APPLE-OMIT-YEAR").and_then(text::digits);
                let is_text = p
                    .param("VALUE")
                    .is_some_and(|v| v.eq_ignore_ascii_case("text"));
                match parse_birthday(&unescape(&value), omit_year).filter(|_| !is_text) {
                    Some(date) => contact.birthday = Some(date),
                    None => report.drop_field(opts, p.line, "BDAY", "not a date"),
                }
            }
            "NOTE" => {
                if let Some(note) = text::clean_multiline(&unescape(&value)) {
                    let total: usize = notes.iter().map(|n| n.len() + 1).sum::<usize>();
                    if total.saturating_add(note.len()) <= limit {
                        notes.push(note);
                    } else {
                        report.drop_field(opts, p.line, "NOTE", "notes are too long together");
                    }
                }
            }
            "UID" if uid.is_none() => {
                uid = text::clean_line(&unescape(&value));
            }
            _ => {}
        }
    }

    contact.name = formatted_name.or(structured_name);
    if !notes.is_empty() {
        contact.note = Some(notes.join("\n"));
    }
    let identity = match &uid {
        Some(uid) => uid.clone(),
        None => {
            let first = contact
                .emails
                .first()
                .map(|e| e.address.to_lowercase())
                .or_else(|| contact.phones.first().map(|p| p.e164.clone()));
            match (&contact.name, first) {
                (None, None) => return Err("card has no name, e-mail or phone number"),
                (name, first) => format!(
                    "{}|{}",
                    name.as_deref().unwrap_or("").to_lowercase(),
                    first.unwrap_or_default()
                ),
            }
        }
    };
    contact.source_identity = identity;
    contact.provenance = Provenance::VCard(proto::VCardSource {
        uid: uid.unwrap_or_default(),
    });
    Ok(contact)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::escape;

    /// Found by the `vcard` fuzz target (`fuzz/corpus/vcard/crash-social-profile-with-spaces`):
    /// a social profile whose value is no handle must be reported, not kept as a handle the
    /// client cannot record.
    #[test]
    fn a_social_profile_that_is_no_handle_is_dropped_and_reported() {
        let card = "BEGIN:VCARD\r\nVERSION:4.0\r\nFN:Ada\r\n\
                    SOCIALPROFILE;TYPE=ORG:Stark Industries;\r\n\
                    SOCIALPROFILE;TYPE=mastodon:ada\r\nEND:VCARD\r\n";
        let report = import_bytes(card.as_bytes(), &ImportOptions::default()).unwrap();
        let handles: Vec<_> = report.contacts[0]
            .handles
            .iter()
            .map(|h| (h.service.as_str(), h.handle.as_str()))
            .collect();
        assert_eq!(handles, [("mastodon", "ada")]);
        assert_eq!(report.dropped.len(), 1);
        assert_eq!(report.dropped[0].line, 4);
        assert_eq!(report.dropped[0].reason, "not a handle");
    }

    #[test]
    fn escapes_round_trip_through_unescape() {
        let s = "a,b;c\\d\ne:f";
        assert_eq!(unescape(&escape(s)), s);
        assert_eq!(
            split_structured("Acme\\, Inc.;Sales\\;East;"),
            vec!["Acme, Inc.", "Sales;East", ""]
        );
        assert_eq!(split_structured("a\\\\;b"), vec!["a\\", "b"]);
    }

    #[test]
    fn birthdays_with_and_without_year() {
        let d = |year, month, day| Some(proto::Date { year, month, day });
        assert_eq!(parse_birthday("1970-04-12", None), d(1970, 4, 12));
        assert_eq!(parse_birthday("19700412", None), d(1970, 4, 12));
        assert_eq!(parse_birthday("1970-04-12T00:00:00Z", None), d(1970, 4, 12));
        assert_eq!(parse_birthday("--0412", None), d(0, 4, 12));
        assert_eq!(parse_birthday("--04-12", None), d(0, 4, 12));
        assert_eq!(parse_birthday("--0229", None), d(0, 2, 29));
        assert_eq!(parse_birthday("1604-04-12", Some(1604)), d(0, 4, 12));
        assert_eq!(parse_birthday("---12", None), None);
        assert_eq!(parse_birthday("1970-04", None), None);
        assert_eq!(parse_birthday("1970-02-30", None), None);
        assert_eq!(parse_birthday("circa 1800", None), None);
    }

    #[test]
    fn apple_labels_are_unwrapped() {
        assert_eq!(apple_label("_$!<Mobile>!$_").as_deref(), Some("mobile"));
        assert_eq!(apple_label("_$!<HomePage>!$_").as_deref(), Some("homepage"));
        assert_eq!(apple_label("LinkedIn").as_deref(), Some("LinkedIn"));
        assert_eq!(apple_label("  "), None);
    }

    #[test]
    fn parameters_parse_in_every_version_style() {
        let p = parse_property(b"item2.TEL;TYPE=\"cell,voice\";type=pref:+1", 1).unwrap();
        assert_eq!(p.group.as_deref(), Some("item2"));
        assert_eq!(p.name, "TEL");
        let types: Vec<&str> = p.params_named("TYPE").collect();
        assert_eq!(types, vec!["cell,voice", "pref"]);
        let p = parse_property(b"TEL;HOME;VOICE;QUOTED-PRINTABLE:+1", 1).unwrap();
        assert_eq!(p.param("ENCODING"), Some("QUOTED-PRINTABLE"));
        assert_eq!(
            p.params_named("TYPE").collect::<Vec<_>>(),
            vec!["HOME", "VOICE"]
        );
        let p = parse_property(b"X-ABLabel;X-P=\"a^'b^nc\":v", 1).unwrap();
        assert_eq!(p.param("X-P"), Some("a\"b\nc"));
        assert!(parse_property(b"no colon here", 1).is_none());
        assert!(parse_property(b"BAD NAME:x", 1).is_none());
    }
}
