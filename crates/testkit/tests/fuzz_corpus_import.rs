//! Replays the importer fuzz corpora on the stable toolchain: every file of
//! `fuzz/corpus/<target>/` goes through the same body the cargo-fuzz target runs
//! (`kith_testkit::fuzz::import`), so a crash the fuzzer once found cannot come back unnoticed.
//!
//! `KITH_REGENERATE_FUZZ_SEEDS=1 cargo test -p kith-testkit --test fuzz_corpus_import` rewrites
//! the `valid-*` seeds: trimmed copies of `crates/client/tests/fixtures/` for the text importers, and the
//! harness-built databases for the SQLite ones.

use std::fs;
use std::path::Path;

use kith_testkit::fuzz::corpus::{assert_replays, fuzz_dir, missing_target_files, regenerating};
use kith_testkit::fuzz::import::{TARGETS, seeds};

fn fixture(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../client/tests/fixtures")
        .join(path);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_corpus_file_replays_without_a_panic_and_valid_seeds_are_accepted() {
    if regenerating() {
        write_seeds();
    }
    assert_replays(TARGETS);
}

#[test]
fn every_target_has_a_fuzz_target_file() {
    let missing = missing_target_files(TARGETS);
    assert!(missing.is_empty(), "missing: {missing:?}");
}

/// The first `lines` lines of a text (line ends kept).
fn head(text: &str, lines: usize) -> String {
    text.split_inclusive('\n').take(lines).collect()
}

/// The vCards of a file, one string each.
fn cards(text: &str) -> Vec<String> {
    let mut cards = Vec::new();
    let mut card = String::new();
    for line in text.split_inclusive('\n') {
        card.push_str(line);
        if line.trim_end().eq_ignore_ascii_case("END:VCARD") {
            cards.push(std::mem::take(&mut card));
        }
    }
    cards
}

const VCARD_21: &str = "BEGIN:VCARD\r\nVERSION:2.1\r\nN;CHARSET=ISO-8859-1;ENCODING=QUOTED-PRINTABLE:M=FCller;J=FCrgen\r\n\
FN;ENCODING=QUOTED-PRINTABLE:J=FCrgen M=FCller =\r\nJr.\r\nTEL;HOME;VOICE:+49 30 901820\r\n\
TEL;CELL:0171 2345678\r\nEMAIL;INTERNET;PREF:juergen@example.de\r\nBDAY:19700412\r\n\
NOTE;ENCODING=QUOTED-PRINTABLE:met at the=0D=0Aconference\r\nEND:VCARD\r\n";

const VCARD_40: &str = "BEGIN:VCARD\r\nVERSION:4.0\r\nFN:Ada Lovelace\r\nN:Lovelace;Ada;;;\r\n\
EMAIL;TYPE=work,pref:ada@example.com\r\nTEL;VALUE=uri;TYPE=\"voice,cell\":tel:+44-20-7946-0018\r\n\
URL:https://example.com/ada\r\nSOCIALPROFILE;TYPE=twitter:https://twitter.com/ada\r\n\
ORG:Analytical Engines\\, Ltd.;Research\r\nTITLE:Analyst\r\nBDAY:--1210\r\n\
NOTE:first line\\nsecond ^^ line\r\nUID:urn:uuid:4fbe8971-0bc3-424c-9c26-36c3e1eff6b1\r\n\
END:VCARD\r\n";

fn write_seeds() {
    let mut files: Vec<(&str, String, Vec<u8>)> = Vec::new();
    let linkedin = fixture("linkedin/Connections.csv");
    files.push((
        "linkedin",
        "valid-connections".into(),
        head(&linkedin, 12).into_bytes(),
    ));
    let mut no_preamble = head(&linkedin, 12);
    if let Some(start) = no_preamble.find("First Name") {
        no_preamble.drain(..start);
    }
    files.push((
        "linkedin",
        "valid-no-preamble".into(),
        no_preamble.into_bytes(),
    ));
    let facebook = fixture("facebook/your_friends.json");
    files.push(("facebook", "valid-friends".into(), facebook.into_bytes()));
    let vcards = cards(&fixture("vcard/contacts.vcf"));
    files.push((
        "vcard",
        "valid-3.0-first-cards".into(),
        vcards[..4].concat().into_bytes(),
    ));
    files.push((
        "vcard",
        "valid-3.0-last-cards".into(),
        vcards[vcards.len() - 4..].concat().into_bytes(),
    ));
    files.push(("vcard", "valid-2.1".into(), VCARD_21.as_bytes().to_vec()));
    files.push(("vcard", "valid-4.0".into(), VCARD_40.as_bytes().to_vec()));
    let mbox = fixture("mail/mail.mbox");
    files.push(("mail", "valid-mbox".into(), head(&mbox, 60).into_bytes()));
    let ics = fixture("calendar/calendar.ics");
    let mut short_ics = head(&ics, 90);
    // The weekly series, the cancelled event, the room and the declined attendee.
    if let Some(series) = ics.find("BEGIN:VEVENT\r\nDTSTART:20250106T090000Z") {
        short_ics.push_str(&ics[series..]);
    }
    files.push(("calendar", "valid-ics".into(), short_ics.into_bytes()));
    let archive = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../client/tests/fixtures/twitter/twitter-archive.zip");
    files.push((
        "twitter",
        "valid-archive".into(),
        fs::read(archive).expect("twitter fixture"),
    ));
    for seed in seeds() {
        files.push((seed.target, seed.name, seed.bytes));
    }
    for (target, name, bytes) in files {
        let dir = fuzz_dir().join("corpus").join(target);
        fs::create_dir_all(&dir).expect("corpus directory");
        fs::write(dir.join(name), bytes).expect("seed file");
    }
}
