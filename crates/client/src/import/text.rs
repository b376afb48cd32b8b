//! Small normalizations shared by the importers: text cleaning, e-mail addresses, dates.

use kith_protocol::proto;

/// Removes a UTF-8 byte-order mark.
/// The value of a content line's parameter `name` (iCalendar and vCard lines share the form
/// `NAME;PARAM=VALUE:…`), from the `(name, value)` pairs its parser collected.
pub(crate) fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

pub(crate) fn strip_utf8_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes)
}

/// A single-line text value: control characters become spaces, surrounding whitespace goes.
/// `None` when nothing is left.
pub(crate) fn clean_line(s: &str) -> Option<String> {
    let cleaned: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let trimmed = cleaned.trim();
    (!trimmed.is_empty()).then(|| trimmed.to_owned())
}

/// A multi-line text value (a note): line ends become `\n`, other control characters except tab
/// become spaces, surrounding whitespace goes. `None` when nothing is left.
pub(crate) fn clean_multiline(s: &str) -> Option<String> {
    let unified = s.replace("\r\n", "\n").replace('\r', "\n");
    let cleaned: String = unified
        .chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                ' '
            } else {
                c
            }
        })
        .collect();
    let trimmed = cleaned.trim();
    (!trimmed.is_empty()).then(|| trimmed.to_owned())
}

/// The first `max` characters of `s`.
pub(crate) fn truncate_chars(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// An e-mail address as written (trimmed, `mailto:` removed), if it looks like one: one `@`
/// with something on both sides, no whitespace, control characters or angle brackets, and at
/// most 254 bytes (RFC 5321).
pub(crate) fn email_address(s: &str) -> Option<String> {
    let s = s.trim();
    let s = match s.get(..7) {
        Some(prefix) if prefix.eq_ignore_ascii_case("mailto:") => s.get(7..).unwrap_or(""),
        _ => s,
    };
    if s.len() > 254 {
        return None;
    }
    let (local, domain) = s.rsplit_once('@')?;
    if local.is_empty() || domain.is_empty() || (local.contains('@') && !local.starts_with('"')) {
        return None;
    }
    if s.chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | '\\'))
    {
        return None;
    }
    Some(s.to_owned())
}

/// Adds `email` unless an address equal to it ignoring case is already there, or the list is
/// full.
pub(crate) fn push_email(list: &mut Vec<proto::Email>, email: proto::Email, max: usize) -> bool {
    push_unique(list, email, max, |a, b| {
        a.address.eq_ignore_ascii_case(&b.address)
    })
}

/// Adds `item` unless `same` finds it already there or the list holds `max` items. Returns
/// whether it was refused because the list is full.
pub(crate) fn push_unique<T>(
    list: &mut Vec<T>,
    item: T,
    max: usize,
    same: impl Fn(&T, &T) -> bool,
) -> bool {
    if list.iter().any(|existing| same(existing, &item)) {
        return false;
    }
    if list.len() >= max {
        return true;
    }
    list.push(item);
    false
}

/// Whether `(year, month, day)` is a calendar date; `year` 0 stands for an unknown year (so
/// February 29 is allowed).
pub(crate) fn valid_date(year: u32, month: u32, day: u32) -> bool {
    if year > 9999 || !(1..=12).contains(&month) || day == 0 {
        return false;
    }
    let leap = year == 0
        || (year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)));
    let days = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    day <= days
}

/// A validated date.
pub(crate) fn date(year: u32, month: u32, day: u32) -> Option<proto::Date> {
    valid_date(year, month, day).then_some(proto::Date { year, month, day })
}

/// The month (1–12) named by an English month name or its abbreviation (`Mar`, `March`,
/// `Sept`), ignoring case.
pub(crate) fn month_from_name(name: &str) -> Option<u32> {
    const MONTHS: [&str; 12] = [
        "january",
        "february",
        "march",
        "april",
        "may",
        "june",
        "july",
        "august",
        "september",
        "october",
        "november",
        "december",
    ];
    let lower = name.trim_end_matches('.').to_ascii_lowercase();
    if lower.len() < 3 {
        return None;
    }
    MONTHS
        .iter()
        .position(|full| full.starts_with(&lower))
        .and_then(|i| u32::try_from(i + 1).ok())
}

/// Parses an unsigned decimal made only of ASCII digits (no sign, no spaces).
pub(crate) fn digits(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 9 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// An ISO 8601 calendar date `YYYY-MM-DD` or `YYYYMMDD`.
pub(crate) fn iso_date(s: &str) -> Option<proto::Date> {
    let (y, m, d) = match s.len() {
        10 if s.as_bytes().get(4) == Some(&b'-') && s.as_bytes().get(7) == Some(&b'-') => {
            (s.get(0..4)?, s.get(5..7)?, s.get(8..10)?)
        }
        8 => (s.get(0..4)?, s.get(4..6)?, s.get(6..8)?),
        _ => return None,
    };
    let year = digits(y)?;
    if year == 0 {
        return None;
    }
    date(year, digits(m)?, digits(d)?)
}

/// A vCard `TYPE` value or service name reduced to lowercase letters, digits, `-`, `_`, `.`.
pub(crate) fn token(raw: &str) -> String {
    raw.trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leap_days_follow_the_gregorian_rule() {
        assert!(valid_date(2024, 2, 29));
        assert!(valid_date(2000, 2, 29));
        assert!(!valid_date(1900, 2, 29));
        assert!(!valid_date(2023, 2, 29));
        assert!(
            valid_date(0, 2, 29),
            "a birthday without a year may be Feb 29"
        );
        assert!(!valid_date(2023, 4, 31));
        assert!(!valid_date(2023, 13, 1));
        assert!(!valid_date(2023, 0, 1));
    }

    #[test]
    fn month_names_and_abbreviations_are_recognized() {
        assert_eq!(month_from_name("Mar"), Some(3));
        assert_eq!(month_from_name("march"), Some(3));
        assert_eq!(month_from_name("Sept"), Some(9));
        assert_eq!(month_from_name("Dec."), Some(12));
        assert_eq!(month_from_name("Ma"), None);
        assert_eq!(month_from_name("Mär"), None);
    }

    #[test]
    fn email_addresses_are_checked_not_guessed() {
        assert_eq!(
            email_address(" A@B.example ").as_deref(),
            Some("A@B.example")
        );
        assert_eq!(
            email_address("mailto:a@b.example").as_deref(),
            Some("a@b.example")
        );
        assert_eq!(email_address("no-at-sign"), None);
        assert_eq!(email_address("a b@c.example"), None);
        assert_eq!(email_address("@c.example"), None);
        assert_eq!(email_address("a@"), None);
        assert_eq!(
            email_address(&format!("{}@x.example", "a".repeat(300))),
            None
        );
    }

    #[test]
    fn notes_keep_line_breaks_and_lose_other_controls() {
        assert_eq!(
            clean_multiline(" a\r\nb\rc\u{7}d ").as_deref(),
            Some("a\nb\nc d")
        );
        assert_eq!(clean_line("a\nb").as_deref(), Some("a b"));
        assert_eq!(clean_line(" \t "), None);
    }
}
