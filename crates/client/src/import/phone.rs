//! Phone numbers to E.164 with the `phonenumber` crate (libphonenumber's metadata), so that
//! `(415) 555-0100` written in an address book matches `+14155550100` in `chat.db`.

use std::fmt;
use std::str::FromStr;

use phonenumber::country;

use super::ImportError;

/// The region assumed for numbers written without a country code (an ISO 3166-1 alpha-2 code
/// such as `US`, `GB`, `DE`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Region(country::Id);

impl Region {
    /// The United States (the default).
    pub const US: Region = Region(country::Id::US);

    /// The two-letter region code.
    pub fn code(&self) -> &str {
        self.0.as_ref()
    }
}

impl Default for Region {
    fn default() -> Self {
        Region::US
    }
}

impl fmt::Debug for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Region({})", self.code())
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl FromStr for Region {
    type Err = ImportError;

    /// Parses a two-letter region code, ignoring case and surrounding spaces.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let code = s.trim().to_ascii_uppercase();
        if code.len() != 2 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(ImportError::UnknownRegion);
        }
        country::Id::from_str(&code)
            .map(Region)
            .map_err(|_| ImportError::UnknownRegion)
    }
}

/// The fewest and most digits of anything worth handing to the phone-number parser (E.164 has
/// at most 15 digits; national trunk and international prefixes add a few).
const MIN_DIGITS: usize = 3;
const MAX_DIGITS: usize = 20;

/// The E.164 form (`+14155550100`) of a phone number as people write it: with or without a
/// country code (then `region` is assumed), with spaces, dots, dashes, parentheses, a `tel:`
/// prefix or an extension (which is dropped, since E.164 has none). `None` for anything that is
/// not a valid number for its country.
///
/// The input is first reduced to `+` and ASCII digits, so only a plain digit string ever reaches
/// the parser; letters end the number (`ext. 12`, `x12`), and a number made of letters
/// (`1-800-FLOWERS`) is refused rather than guessed.
pub fn to_e164(raw: &str, region: Region) -> Option<String> {
    let digits = plain_digits(raw)?;
    // The parser is third-party code fed from files; it has panicked on odd input before
    // (rust-phonenumber issues 32 and 43). `plain_digits` keeps those inputs out, and this
    // keeps any panic we did not foresee from taking the import down with it.
    std::panic::catch_unwind(|| {
        let number = phonenumber::parse(Some(region.0), &digits).ok()?;
        if !phonenumber::is_valid(&number) {
            return None;
        }
        Some(number.format().mode(phonenumber::Mode::E164).to_string())
    })
    .ok()
    .flatten()
    // The parser's metadata accepts some numbers longer than E.164 allows (a German number of
    // 14 national digits), which the protocol would refuse as a `phone/…` key.
    .filter(|e164| is_e164(e164))
}

/// `+`, then 1 to 15 digits, the first not 0 (ITU-T E.164; the protocol's `phone/…` keys).
fn is_e164(s: &str) -> bool {
    s.strip_prefix('+').is_some_and(|digits| {
        (1..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0')
    })
}

/// `+` (if the number starts with one) followed by the ASCII digits of the number part.
fn plain_digits(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let raw = match raw.get(..4) {
        Some(prefix) if prefix.eq_ignore_ascii_case("tel:") => raw.get(4..).unwrap_or(""),
        _ => raw,
    };
    let mut out = String::with_capacity(MAX_DIGITS + 1);
    let mut count = 0usize;
    for c in raw.chars() {
        match c {
            '0'..='9' => {
                count += 1;
                if count > MAX_DIGITS {
                    return None;
                }
                out.push(c);
            }
            '+' if out.is_empty() => out.push('+'),
            ' ' | '-' | '.' | '(' | ')' | '/' | '\u{a0}' | '\u{2009}' | '\u{202f}' | '\u{2011}'
            | '\u{2012}' | '\u{2013}' | '\u{2212}' => {}
            // An extension, a pause or tel-URI parameters: the number part has ended.
            ';' | ',' | '#' | '*' | 'x' | 'X' | 'e' | 'E' | 'w' | 'W' | 'p' | 'P' => break,
            _ => return None,
        }
    }
    (count >= MIN_DIGITS).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn us_numbers_in_every_common_notation_agree() {
        for raw in [
            "(415) 555-0100",
            "415-555-0100",
            "415.555.0100",
            "+1 415 555 0100",
            "+14155550100",
            "1 (415) 555-0100",
            "tel:+1-415-555-0100",
            "+1 415 555 0100 ext. 12",
            "415 555 0100 x12",
        ] {
            assert_eq!(
                to_e164(raw, Region::US).as_deref(),
                Some("+14155550100"),
                "{raw}"
            );
        }
    }

    #[test]
    fn default_region_applies_only_without_a_country_code() {
        let gb: Region = "gb".parse().unwrap();
        assert_eq!(
            to_e164("020 7946 0018", gb).as_deref(),
            Some("+442079460018")
        );
        assert_eq!(
            to_e164("+1 415 555 0100", gb).as_deref(),
            Some("+14155550100")
        );
        assert_eq!(to_e164("020 7946 0018", Region::US), None);
    }

    #[test]
    fn things_that_are_not_phone_numbers_are_refused() {
        for raw in [
            "",
            "12",
            "hello",
            "1-800-FLOWERS",
            "a@b.example",
            "+",
            "++1 415 555 0100",
        ] {
            assert_eq!(to_e164(raw, Region::US), None, "{raw}");
        }
        assert_eq!(to_e164(&"9".repeat(100), Region::US), None);
    }

    /// Found by the `vcard` fuzz target (`fuzz/corpus/vcard/crash-phone-longer-than-e164`):
    /// the parser called this a valid German number, but E.164 has at most 15 digits.
    #[test]
    fn numbers_longer_than_e164_allows_are_refused() {
        assert_eq!(to_e164("+49 30 901820 901820", Region::US), None);
        assert_eq!(
            to_e164("+49 30 901820", Region::US).as_deref(),
            Some("+4930901820")
        );
        assert!(is_e164("+123456789012345"));
        assert!(!is_e164("+1234567890123456"));
        assert!(!is_e164("+0123"));
        assert!(!is_e164("123"));
    }

    #[test]
    fn region_codes_are_validated() {
        assert_eq!("us".parse::<Region>().unwrap(), Region::US);
        assert!(" DE ".parse::<Region>().is_ok());
        assert!("ZZ".parse::<Region>().is_err());
        assert!("USA".parse::<Region>().is_err());
        assert!("".parse::<Region>().is_err());
    }
}
