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
        if !nanp_possible(&number) || !phonenumber::is_valid(&number) {
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

/// Whether `number` may be valid as far as the North American Numbering Plan's structure
/// goes: `false` only for a country code 1 number of ten national digits whose area code
/// starts with 1, or whose exchange code starts with 0 or 1 (NANP numbers are
/// `NXX NXX XXXX`, N = 2–9) outside the area codes of [`NANP_EXCHANGE_01`]. No pattern of
/// libphonenumber's metadata for the 25 regions of +1 accepts such a number, so
/// `phonenumber::is_valid` says no to it, but only after trying every region's patterns,
/// which made these numbers the parser's slowest (two thirds of a 100,000-card vCard parse,
/// `BENCHMARKS.md`). Any other number is left to `is_valid`. The test
/// `the_nanp_check_agrees_with_the_parser` compares this with the parser's answer for every
/// prefix it refuses.
fn nanp_possible(number: &phonenumber::PhoneNumber) -> bool {
    let national = number.national();
    if number.code().value() != 1
        || national.zeros() != 0
        || !(1_000_000_000..10_000_000_000).contains(&national.value())
    {
        return true;
    }
    let area = national.value() / 10_000_000;
    let exchange = national.value() / 10_000 % 1_000;
    area >= 200 && (exchange >= 200 || NANP_EXCHANGE_01.contains(&area))
}

/// The area codes under which some pattern of the +1 metadata (phonenumber 0.3.10, metadata
/// 9.0.33) accepts an exchange code starting with 0 or 1: the Dominican Republic's toll-free
/// 800-14x and 809/829/849-0xx/1xx, and Canada's 310 (seven-digit UAN numbers, kept to be
/// safe). A metadata update that adds another fails `the_nanp_check_agrees_with_the_parser`.
const NANP_EXCHANGE_01: [u64; 5] = [310, 800, 809, 829, 849];

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

    /// `nanp_possible` never refuses a number the parser calls valid, and refuses only +1
    /// numbers: every six-digit prefix it refuses (area code 100–199 with any exchange, any
    /// other area code with an exchange of 000–199) with the last four digits drawn from a
    /// fixed seed; then every area code with every first two digits of the exchange; then
    /// random numbers of every length around ten digits, with and without `+1`, in several
    /// regions.
    #[test]
    fn the_nanp_check_agrees_with_the_parser() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            // xorshift64*: deterministic, so a failure reproduces.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        let check = |digits: &str, region: Region, refused: &mut usize, valid: &mut usize| {
            let Ok(number) = phonenumber::parse(Some(region.0), digits) else {
                return;
            };
            let is_valid = phonenumber::is_valid(&number);
            *valid += usize::from(is_valid);
            if !nanp_possible(&number) {
                *refused += 1;
                assert_eq!(number.code().value(), 1, "{digits} in {region}");
                assert!(!is_valid, "{digits} in {region}: the parser calls it valid");
            }
        };
        let (mut refused, mut valid) = (0, 0);
        let mut expected = 0;
        for area in 100..1_000u64 {
            let exchanges = if area < 200 {
                0..1_000
            } else if NANP_EXCHANGE_01.contains(&area) {
                0..0
            } else {
                0..200
            };
            for exchange in exchanges {
                let rest = next() % 10_000;
                let digits = format!("+1{area:03}{exchange:03}{rest:04}");
                check(&digits, Region::US, &mut refused, &mut valid);
                // The parser reads a `1` after `+1` as the national prefix: those numbers have
                // nine national digits, and are left to it.
                expected += usize::from(area >= 200);
            }
        }
        assert_eq!(valid, 0, "none of these is valid");
        assert_eq!(expected, 795 * 200);
        assert!(refused >= expected, "{refused} refused of {expected}");

        let (mut refused, mut valid) = (0, 0);
        for prefix in 0..100_000u64 {
            let rest = next() % 100_000;
            let digits = format!("+1{prefix:05}{rest:05}");
            check(&digits, Region::US, &mut refused, &mut valid);
        }
        // An exchange starting with 0 or 1 after the area codes of 200–999 but five is
        // refused (000–099 have leading zeros, and 100–199 lose their `1` to the parser,
        // which the check leaves to it).
        assert!(refused >= 795 * 20, "{refused} refused");
        assert!(
            valid > 10_000,
            "{valid} valid numbers: the sample misses real ones"
        );

        let regions: Vec<Region> = ["US", "CA", "DO", "JM", "PR", "GB", "DE", "IN"]
            .iter()
            .map(|code| code.parse().unwrap())
            .collect();
        let (mut refused, mut valid) = (0, 0);
        for _ in 0..20_000 {
            let len = 7 + next() % 6;
            let mut digits = String::new();
            match next() % 3 {
                0 => digits.push_str("+1"),
                1 => digits.push('1'),
                _ => {}
            }
            for _ in 0..len {
                digits.push(char::from(b'0' + (next() % 10) as u8));
            }
            let region = regions[(next() % regions.len() as u64) as usize];
            check(&digits, region, &mut refused, &mut valid);
        }
        assert!(
            refused > 200,
            "{refused} refused: the sample misses the fast path"
        );
        assert!(
            valid > 1_000,
            "{valid} valid: the sample misses real numbers"
        );

        // The bench's numbers are refused; the exceptions the metadata makes are kept.
        assert_eq!(to_e164("+1 415 0123456", Region::US), None);
        assert_eq!(to_e164("+1 415 1123456", Region::US), None);
        assert_eq!(to_e164("+1 115 5550100", Region::US), None);
        assert_eq!(
            to_e164("+1 415 2123456", Region::US).as_deref(),
            Some("+14152123456")
        );
        assert_eq!(
            to_e164("+1 800 141 0474", Region::US).as_deref(),
            Some("+18001410474")
        );
        assert_eq!(
            to_e164("+1 809 012 3456", Region::US).as_deref(),
            Some("+18090123456")
        );
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
