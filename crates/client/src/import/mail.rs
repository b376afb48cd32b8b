//! Mail headers from an mbox (Gmail Takeout, Thunderbird, Apple Mail export): who you write
//! to and who writes to you, never what anyone wrote.
//!
//! The file is streamed. Of each message only the **header block** (from the line after the
//! `From ` separator to the first empty line) is kept, at most [`MAX_HEADER_BLOCK`] bytes, and
//! handed to [`mailparse::parse_headers`]. The body is skipped by the separator scan in
//! `MboxScanner`: for each body line it looks at no more than the first five bytes, to
//! recognize the next `From ` separator, and never stores, decodes or passes on anything else
//! (the tests put a marker string in every body and check that it never comes out, and that
//! changing every body changes nothing). A separator is a line that starts with `From ` and is
//! the first line of the file or follows an empty line (RFC 4155); body lines that begin with
//! `From ` are written `>From ` by every exporter, and the empty-line rule keeps an unescaped one
//! from splitting a message.
//!
//! From each header block: `From`, `To`, `Cc`, `Bcc`, `Date`, `Subject` (RFC 2047 encoded words
//! decoded, folded lines unfolded), `Message-ID`, and the bulk-mail markers. Address lists may
//! hold quoted display names with commas (`"O'Brien, Anne-Marie" <…>`) and groups
//! (`team: a@x, b@x;`).
//!
//! Rules:
//! - A message **from** one of the owner's addresses (`--me`, repeatable) is *sent*: it counts
//!   for every address in `To`, `Cc` and `Bcc`. Any other message is *received*: it counts for
//!   its `From` address only.
//! - The owner's own addresses are never contacts.
//! - Bulk mail creates nothing and counts for no one: a `List-Unsubscribe` or `List-Id` header,
//!   `Precedence: bulk | list | junk`, `Auto-Submitted` other than `no`, or a sender whose local
//!   part is a no-reply address (`noreply`, `no-reply`, `donotreply`, `mailer-daemon`, …).
//!   No-reply addresses are never contacts, even as recipients.
//! - **The reply rule.** Someone the owner wrote to (sent at least one message to, anywhere in
//!   the file) becomes a contact, with both directions counted. Someone who only ever wrote to
//!   the owner does not become a contact: most such mail is cold outreach, notifications and
//!   people the owner never answered, and a personal network should hold the people one
//!   corresponds with. Their counts are still recorded on a contact that exists for another
//!   reason (the same e-mail from LinkedIn, the address book, a calendar…), since there they
//!   tell the owner something true ([`ImportedContact::only_if_known`]).
//!
//! Per contact: messages sent and received (counted by message hash, so the same message in two
//! mailboxes counts once, [`kith_protocol::history`]), the first and last date, and the
//! [`MAX_RECENT_SUBJECTS`] newest subjects. Skipped messages are reported by the 1-based line
//! of their `From ` separator.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use kith_protocol::history::{self, MAX_RECENT_SUBJECTS};
use kith_protocol::proto;
use mailparse::{MailAddr, MailHeader, MailHeaderMap};

use super::{
    FileKind, ImportError, ImportOptions, ImportReport, ImportedContact, Provenance, open_file,
    text,
};

const KIND: FileKind = FileKind::Mbox;

/// Largest header block kept for one message; a longer one is skipped (and reported).
pub const MAX_HEADER_BLOCK: usize = 256 * 1024;

/// Longest subject kept, in characters.
const MAX_SUBJECT_CHARS: usize = 200;

/// Local parts of addresses that are never people.
const NO_REPLY: &[&str] = &[
    "noreply",
    "no-reply",
    "no_reply",
    "donotreply",
    "do-not-reply",
    "do_not_reply",
    "mailer-daemon",
    "postmaster",
    "notifications",
    "notification",
    "bounce",
    "bounces",
];

/// Imports an mbox from a path, streaming. `me` lists the owner's addresses (at least one).
pub fn import(
    path: &Path,
    me: &[String],
    opts: &ImportOptions,
) -> Result<ImportReport, ImportError> {
    let file = open_file(path, opts.max_stream_bytes, KIND)?;
    import_reader(file, me, opts)
}

/// Imports an mbox from its bytes.
pub fn import_bytes(
    bytes: &[u8],
    me: &[String],
    opts: &ImportOptions,
) -> Result<ImportReport, ImportError> {
    import_reader(bytes, me, opts)
}

/// Imports an mbox from a reader, streaming (at most [`ImportOptions::max_stream_bytes`]).
pub fn import_reader(
    reader: impl Read,
    me: &[String],
    opts: &ImportOptions,
) -> Result<ImportReport, ImportError> {
    let owner: BTreeSet<String> = me
        .iter()
        .filter_map(|address| text::email_address(address.trim()))
        .map(|address| address.to_lowercase())
        .collect();
    if owner.is_empty() {
        return Err(ImportError::MissingOwner);
    }
    let mut scanner = MboxScanner::new(reader.take(opts.max_stream_bytes.saturating_add(1)));
    let mut people: BTreeMap<String, Person> = BTreeMap::new();
    let mut report = ImportReport::default();
    while let Some(block) = scanner.next_header_block()? {
        if scanner.consumed > opts.max_stream_bytes {
            return Err(ImportError::TooLarge {
                kind: KIND,
                limit: opts.max_stream_bytes,
            });
        }
        match block {
            HeaderBlock::TooLong { line } => {
                report.skip(opts, line, "header block is longer than the limit");
            }
            HeaderBlock::Complete { line, bytes } => {
                if let Err(reason) = count_message(&bytes, &owner, opts, &mut people) {
                    report.skip(opts, line, reason);
                }
                if people.len() > opts.max_records.saturating_mul(4).max(opts.max_records) {
                    return Err(ImportError::TooManyRecords {
                        kind: KIND,
                        limit: opts.max_records,
                    });
                }
            }
        }
    }
    if scanner.consumed > opts.max_stream_bytes {
        return Err(ImportError::TooLarge {
            kind: KIND,
            limit: opts.max_stream_bytes,
        });
    }
    if !scanner.saw_separator {
        return Err(ImportError::WrongKind {
            expected: KIND,
            reason: "it does not start with a `From ` separator line".into(),
        });
    }
    let wrote_to = people.values().filter(|p| p.wrote_to).count();
    if wrote_to > opts.max_records {
        return Err(ImportError::TooManyRecords {
            kind: KIND,
            limit: opts.max_records,
        });
    }
    for (address, person) in people {
        report.contacts.push(person.into_contact(address));
    }
    Ok(report.logged("imported mail headers"))
}

/// What one person's mail adds up to.
#[derive(Debug, Default)]
struct Person {
    name: Option<String>,
    /// The name came from their own `From` header (preferred to what others call them).
    name_from_self: bool,
    wrote_to: bool,
    history: proto::MailSource,
}

impl Person {
    fn into_contact(self, address: String) -> ImportedContact {
        let mut contact = ImportedContact::new(address.clone(), Provenance::Mail(self.history));
        contact.name = self.name;
        contact.emails.push(proto::Email {
            address,
            label: String::new(),
        });
        contact.only_if_known = !self.wrote_to;
        contact
    }

    fn add(&mut self, message: u64, date: Option<i64>, subject: &Option<String>, sent: bool) {
        let one = proto::MailSource {
            sent: Some(sketch(sent.then_some(message))),
            received: Some(sketch((!sent).then_some(message))),
            first_unix: date.unwrap_or(0),
            last_unix: date.unwrap_or(0),
            recent: subject
                .as_ref()
                .map(|subject| proto::MailSubject {
                    message,
                    date_unix: date.unwrap_or(0),
                    subject: subject.clone(),
                    sent,
                })
                .into_iter()
                .collect(),
        };
        self.history = history::join_mail(&self.history, &one);
        debug_assert!(self.history.recent.len() <= MAX_RECENT_SUBJECTS);
    }
}

fn sketch(element: Option<u64>) -> proto::CountSketch {
    let mut sketch = proto::CountSketch::default();
    if let Some(element) = element {
        history::sketch_insert(&mut sketch, element);
    }
    sketch
}

/// Counts one message from its header block. `Err` says why it was skipped.
fn count_message(
    block: &[u8],
    owner: &BTreeSet<String>,
    opts: &ImportOptions,
    people: &mut BTreeMap<String, Person>,
) -> Result<(), &'static str> {
    let (headers, _) =
        mailparse::parse_headers(block).map_err(|_| "header block does not parse")?;
    if is_bulk(&headers) {
        return Ok(());
    }
    let from = headers
        .get_first_header("From")
        .map(addresses)
        .unwrap_or_default();
    let Some((sender, sender_name)) = from.into_iter().next() else {
        return Err("message has no From address");
    };
    if is_no_reply(&sender) {
        return Ok(());
    }
    let date = headers
        .get_first_value("Date")
        .and_then(|date| mailparse::dateparse(&date).ok())
        .filter(|date| (1..253_402_300_800).contains(date));
    let subject = headers
        .get_first_value("Subject")
        .and_then(|s| text::clean_line(&s))
        .map(|s| text::truncate_chars(&s, MAX_SUBJECT_CHARS.min(opts.field_limit())));
    let identity = match headers.get_first_value("Message-ID") {
        Some(id) if !id.trim().is_empty() => id.trim().trim_matches(['<', '>']).to_owned(),
        _ => format!(
            "no-message-id|{}|{sender}|{}",
            date.unwrap_or(0),
            subject.as_deref().unwrap_or("")
        ),
    };
    let message = history::mail_message_hash(&identity);
    let limit = opts.field_limit();
    let name_ok = |name: &Option<String>| name.as_ref().filter(|n| n.len() <= limit).cloned();

    if owner.contains(&sender) {
        let mut recipients: BTreeMap<String, Option<String>> = BTreeMap::new();
        for header in ["To", "Cc", "Bcc"] {
            for header in headers.get_all_headers(header) {
                for (address, name) in addresses(header) {
                    recipients.entry(address).or_insert(name);
                }
            }
        }
        for (address, name) in recipients {
            if owner.contains(&address) || is_no_reply(&address) || address.len() > limit {
                continue;
            }
            let person = people.entry(address).or_default();
            person.wrote_to = true;
            if person.name.is_none() {
                person.name = name_ok(&name);
            }
            person.add(message, date, &subject, true);
        }
    } else {
        if sender.len() > limit {
            return Err("sender address is too long");
        }
        let person = people.entry(sender).or_default();
        if let Some(name) = name_ok(&sender_name)
            && !person.name_from_self
        {
            person.name = Some(name);
            person.name_from_self = true;
        }
        person.add(message, date, &subject, false);
    }
    Ok(())
}

/// Whether the headers mark the message as bulk mail.
fn is_bulk(headers: &[MailHeader<'_>]) -> bool {
    if headers.get_first_header("List-Unsubscribe").is_some()
        || headers.get_first_header("List-Id").is_some()
    {
        return true;
    }
    let precedence = headers
        .get_first_value("Precedence")
        .map(|p| p.trim().to_ascii_lowercase());
    if matches!(precedence.as_deref(), Some("bulk" | "list" | "junk")) {
        return true;
    }
    headers
        .get_first_value("Auto-Submitted")
        .is_some_and(|a| !a.trim().eq_ignore_ascii_case("no"))
}

/// Whether an address is a no-reply or system address.
fn is_no_reply(address: &str) -> bool {
    let local = address.split('@').next().unwrap_or_default();
    NO_REPLY
        .iter()
        .any(|n| local == *n || local.starts_with(&format!("{n}+")) || local.starts_with("bounce"))
}

/// The addresses of an address-list header, lowercased, each with its display name (RFC 2047
/// decoded), groups flattened.
fn addresses(header: &MailHeader<'_>) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    match mailparse::addrparse_header(header) {
        Ok(list) => collect_addresses(&list, &mut out),
        // mailparse refuses a whole list for one entry it does not take (a `,` after a group's
        // `;`, a stray quote): parse each top-level entry on its own and keep those that parse.
        Err(_) => {
            for entry in split_entries(&header.get_value()) {
                if let Ok(list) = mailparse::addrparse(&entry) {
                    collect_addresses(&list, &mut out);
                }
            }
        }
    }
    out
}

/// Splits an address list at the commas and semicolons outside quotes, angle brackets and
/// comments, dropping group names (`team:`).
fn split_entries(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let (mut quoted, mut angle, mut comment, mut escaped) = (false, false, 0usize, false);
    for c in value.chars() {
        if escaped {
            escaped = false;
            current.push(c);
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' if comment == 0 => quoted = !quoted,
            '<' if !quoted && comment == 0 => angle = true,
            '>' if !quoted && comment == 0 => angle = false,
            '(' if !quoted => comment += 1,
            ')' if !quoted => comment = comment.saturating_sub(1),
            ':' if !quoted && !angle && comment == 0 => {
                current.clear();
                continue;
            }
            ',' | ';' if !quoted && !angle && comment == 0 => {
                out.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    out.push(current);
    out.retain(|e| !e.trim().is_empty());
    out
}

fn collect_addresses(list: &mailparse::MailAddrList, out: &mut Vec<(String, Option<String>)>) {
    let mut push = |single: &mailparse::SingleInfo| {
        if let Some(address) = text::email_address(single.addr.trim()) {
            let name = single
                .display_name
                .as_deref()
                .and_then(text::clean_line)
                .filter(|name| !name.eq_ignore_ascii_case(&address));
            out.push((address.to_lowercase(), name));
        }
    };
    for addr in list.iter() {
        match addr {
            MailAddr::Single(single) => push(single),
            MailAddr::Group(group) => group.addrs.iter().for_each(&mut push),
        }
    }
}

/// One message's header block as the scanner found it.
#[derive(Debug)]
enum HeaderBlock {
    /// The header block, each line with its line end; `line` is the separator's line number.
    Complete { line: usize, bytes: Vec<u8> },
    /// The header block was longer than [`MAX_HEADER_BLOCK`] and was not kept.
    TooLong { line: usize },
}

/// Splits an mbox into messages, keeping only header blocks.
///
/// In a body it keeps, per line, at most the first five bytes (to recognize `From `) and
/// whether the line was empty: the **separator scan**. No other code sees body bytes.
struct MboxScanner<R> {
    reader: BufReader<R>,
    /// Bytes read so far.
    consumed: u64,
    /// 1-based number of the line being read.
    line: usize,
    saw_separator: bool,
    at_eof: bool,
}

impl<R: Read> MboxScanner<R> {
    fn new(reader: R) -> Self {
        MboxScanner {
            reader: BufReader::with_capacity(1 << 20, reader),
            consumed: 0,
            line: 1,
            saw_separator: false,
            at_eof: false,
        }
    }

    /// Skips to the next separator (through any body), then reads that message's header block.
    fn next_header_block(&mut self) -> Result<Option<HeaderBlock>, ImportError> {
        if self.at_eof {
            return Ok(None);
        }
        let first = !self.saw_separator;
        let Some(separator_line) = self.skip_to_separator(first)? else {
            self.at_eof = true;
            return Ok(None);
        };
        self.saw_separator = true;
        Ok(Some(self.read_header_block(separator_line)?))
    }

    /// The separator scan: reads lines until one that starts with `From ` and follows an empty
    /// line (or starts the file), and consumes it. Returns its line number, `None` at the end.
    /// At the start of the file (`first`), anything but empty lines before the separator means
    /// this is not an mbox.
    fn skip_to_separator(&mut self, first: bool) -> Result<Option<usize>, ImportError> {
        let mut previous_empty = true;
        loop {
            let line_number = self.line;
            let Some((prefix, prefix_len, empty)) = self.skim_line()? else {
                return Ok(None);
            };
            if previous_empty && prefix_len == 5 && &prefix == b"From " {
                return Ok(Some(line_number));
            }
            if first && !empty {
                return Err(ImportError::WrongKind {
                    expected: KIND,
                    reason: "it does not start with a `From ` separator line".into(),
                });
            }
            previous_empty = empty;
        }
    }

    /// Consumes one line, keeping only its first five bytes and whether it is empty (nothing
    /// but its line end). `None` at the end of the file.
    fn skim_line(&mut self) -> Result<Option<([u8; 5], usize, bool)>, ImportError> {
        let mut prefix = [0u8; 5];
        let mut prefix_len = 0;
        let mut len = 0usize;
        let mut any = false;
        loop {
            let buf = self.fill()?;
            if buf.is_empty() {
                return Ok(any.then_some((prefix, prefix_len, is_empty_line(len, &prefix))));
            }
            any = true;
            let (segment, done) = match memchr::memchr(b'\n', buf) {
                Some(at) => (at, true),
                None => (buf.len(), false),
            };
            let take = segment.min(prefix.len() - prefix_len);
            prefix[prefix_len..prefix_len + take].copy_from_slice(&buf[..take]);
            prefix_len += take;
            len = len.saturating_add(segment);
            self.consume(segment + usize::from(done));
            if done {
                self.line = self.line.saturating_add(1);
                return Ok(Some((prefix, prefix_len, is_empty_line(len, &prefix))));
            }
        }
    }

    /// Reads header lines up to the first empty line (consumed) or the end of the file.
    fn read_header_block(&mut self, line: usize) -> Result<HeaderBlock, ImportError> {
        let mut bytes = Vec::new();
        let mut too_long = false;
        loop {
            let start = bytes.len();
            let mut line_len = 0usize;
            let mut ended = false;
            loop {
                let buf = self.fill()?;
                if buf.is_empty() {
                    break;
                }
                let (segment, done) = match memchr::memchr(b'\n', buf) {
                    Some(at) => (at + 1, true),
                    None => (buf.len(), false),
                };
                if !too_long && bytes.len() + segment <= MAX_HEADER_BLOCK {
                    bytes.extend_from_slice(&buf[..segment]);
                } else {
                    too_long = true;
                }
                line_len = line_len.saturating_add(segment);
                self.consume(segment);
                if done {
                    self.line = self.line.saturating_add(1);
                    ended = true;
                    break;
                }
            }
            let content = if too_long { &[][..] } else { &bytes[start..] };
            let blank = line_len <= 2 && content.iter().all(|b| *b == b'\r' || *b == b'\n');
            let terminator = ended && blank && line_len > 0;
            if terminator || !ended {
                if too_long {
                    return Ok(HeaderBlock::TooLong { line });
                }
                if terminator || line_len == 0 {
                    // The empty line that ends the block is not a header line.
                    bytes.truncate(start);
                }
                return Ok(HeaderBlock::Complete { line, bytes });
            }
        }
    }

    fn fill(&mut self) -> Result<&[u8], ImportError> {
        self.reader
            .fill_buf()
            .map_err(|source| ImportError::Io { kind: KIND, source })
    }

    fn consume(&mut self, n: usize) {
        self.reader.consume(n);
        self.consumed = self.consumed.saturating_add(n as u64);
    }
}

/// Whether a line of `len` bytes (line feed excluded) whose first bytes are `prefix` is empty:
/// nothing, or a lone carriage return.
fn is_empty_line(len: usize, prefix: &[u8; 5]) -> bool {
    len == 0 || (len == 1 && prefix[0] == b'\r')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(mbox: &str) -> Vec<String> {
        let mut scanner = MboxScanner::new(mbox.as_bytes());
        let mut out = Vec::new();
        while let Some(block) = scanner.next_header_block().unwrap() {
            match block {
                HeaderBlock::Complete { bytes, .. } => {
                    out.push(String::from_utf8(bytes).unwrap());
                }
                HeaderBlock::TooLong { .. } => out.push("<too long>".into()),
            }
        }
        out
    }

    #[test]
    fn only_header_blocks_come_out_of_the_scanner() {
        let mbox = "From a\nSubject: one\n\nbody one\nFrom here on, not a separator\n\n>From x\n\nFrom b\r\nSubject: two\r\n\r\nbody two\n";
        assert_eq!(blocks(mbox), ["Subject: one\n", "Subject: two\r\n"]);
    }

    #[test]
    fn a_message_without_a_body_or_final_newline_is_kept() {
        assert_eq!(blocks("From a\nSubject: x"), ["Subject: x"]);
        assert_eq!(blocks("From a\nSubject: x\n"), ["Subject: x\n"]);
        assert_eq!(
            blocks("\n\nFrom a\nA: b\n\n\nFrom b\nC: d\n\n"),
            ["A: b\n", "C: d\n"]
        );
    }

    #[test]
    fn no_reply_addresses_are_recognized() {
        for address in [
            "no-reply@x",
            "noreply@x",
            "bounces+123@x",
            "mailer-daemon@x",
        ] {
            assert!(is_no_reply(address), "{address}");
        }
        for address in ["noreen@x", "anne@x", "reply@x"] {
            assert!(!is_no_reply(address), "{address}");
        }
    }
}
