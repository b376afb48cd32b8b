//! No input makes an importer panic or allocate without bound: random bytes, random bytes
//! behind a plausible start, and very long inputs, into every parser.

use kith_client::import::{
    ImportOptions, Region, address_book, calendar, facebook, imessage, linkedin, mail, phone,
    twitter, vcard,
};
use proptest::prelude::*;

const LINKEDIN_HEADER: &[u8] =
    b"First Name,Last Name,URL,Email Address,Company,Position,Connected On\r\n";

/// Bytes drawn mostly from the characters each format treats specially.
fn format_soup() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            4 => prop::sample::select(
                b",\"\r\n;:=\\.{}[]\t ^".to_vec()
            ),
            2 => prop::sample::select(b"BEGINENDVCARDTELFNQUOTED-PRINTABLEfriends_v2name0123456789+@".to_vec()),
            1 => any::<u8>(),
        ],
        0..2000,
    )
}

fn import_all_text(bytes: &[u8]) {
    let opts = ImportOptions::default();
    let _ = linkedin::import_bytes(bytes, &opts);
    let _ = facebook::import_bytes(bytes, &opts);
    let _ = vcard::import_bytes(bytes, &opts);
    let me = ["me@example.com".to_owned()];
    let _ = mail::import_bytes(bytes, &me, &opts);
    let _ = calendar::import_bytes(bytes, &me, 1_893_456_000, &opts);
    let _ = twitter::import_bytes(bytes, &opts);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic_any_text_importer(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        import_all_text(&bytes);
    }

    #[test]
    fn format_shaped_noise_never_panics_any_text_importer(soup in format_soup()) {
        import_all_text(&soup);
        let mut csv = LINKEDIN_HEADER.to_vec();
        csv.extend_from_slice(&soup);
        let _ = linkedin::import_bytes(&csv, &ImportOptions::default());
        let mut card = b"BEGIN:VCARD\r\nVERSION:2.1\r\n".to_vec();
        card.extend_from_slice(&soup);
        card.extend_from_slice(b"\r\nEND:VCARD\r\n");
        let _ = vcard::import_bytes(&card, &ImportOptions::default());
        let mut json = br#"{"friends_v2": [{"name": ""#.to_vec();
        json.extend_from_slice(&soup);
        let _ = facebook::import_bytes(&json, &ImportOptions::default());
        let me = ["me@example.com".to_owned()];
        let mut mbox = b"From x\nFrom: a@b\nTo: me@example.com\n".to_vec();
        mbox.extend_from_slice(&soup);
        let _ = mail::import_bytes(&mbox, &me, &ImportOptions::default());
        let mut ics = b"BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nUID:u\r\nDTSTART:20250101T100000Z\r\nRRULE:".to_vec();
        ics.extend_from_slice(&soup);
        ics.extend_from_slice(b"\r\nATTENDEE:mailto:a@b\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n");
        let _ = calendar::import_bytes(&ics, &me, 1_893_456_000, &ImportOptions::default());
    }

    #[test]
    fn phone_normalization_never_panics(raw in "\\PC{0,40}", region in "[A-Z]{2}") {
        let region = region.parse::<Region>().unwrap_or_default();
        if let Some(e164) = phone::to_e164(&raw, region) {
            prop_assert!(e164.starts_with('+'));
            prop_assert!(e164[1..].bytes().all(|b| b.is_ascii_digit()));
        }
    }

    #[test]
    fn phone_normalization_of_digit_strings_never_panics(raw in "[+]?[0-9 ()#*;,x.-]{0,30}") {
        let _ = phone::to_e164(&raw, Region::US);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn random_sqlite_files_never_panic(
        body in prop::collection::vec(any::<u8>(), 0..8192),
        with_header in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chat.db");
        let mut bytes = if with_header { b"SQLite format 3\0".to_vec() } else { Vec::new() };
        bytes.extend_from_slice(&body);
        std::fs::write(&path, &bytes).unwrap();
        let opts = ImportOptions::default();
        let _ = imessage::import(&path, Some(&path), &opts);
        let _ = address_book::load(&path, &opts);
    }
}

#[test]
fn a_corrupted_real_database_is_an_error_not_a_panic() {
    let original = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/imessage/chat.db"),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.db");
    // Flip bytes across the file, page by page, keeping the header intact.
    for offset in (100..original.len()).step_by(4096 + 97) {
        let mut bytes = original.clone();
        for b in bytes.iter_mut().skip(offset).take(64) {
            *b ^= 0x5A;
        }
        std::fs::write(&path, &bytes).unwrap();
        let _ = imessage::import(&path, None, &ImportOptions::default());
    }
}

#[test]
fn very_long_inputs_are_bounded_not_fatal() {
    let opts = ImportOptions::default();
    let huge = "x".repeat(8 * 1024 * 1024);

    // One CSV field of 8 MiB: the row is skipped.
    let csv = format!(
        "{}A,B,,,{huge},,01 Jan 2020\r\n",
        String::from_utf8_lossy(LINKEDIN_HEADER)
    );
    let report = linkedin::import_bytes(csv.as_bytes(), &opts).unwrap();
    assert_eq!((report.contacts.len(), report.skipped.len()), (0, 1));

    // An unterminated quote swallowing the rest of the file: one bad row, no panic.
    let csv = format!("{}A,B,,,\"{huge}", String::from_utf8_lossy(LINKEDIN_HEADER));
    let report = linkedin::import_bytes(csv.as_bytes(), &opts).unwrap();
    assert!(report.contacts.is_empty());

    // One vCard property folded over 8 MiB: the value is dropped, the card kept.
    let folded = huge
        .as_bytes()
        .chunks(70)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("\r\n ");
    let card = format!("BEGIN:VCARD\r\nVERSION:3.0\r\nFN:Ada\r\nNOTE:{folded}\r\nEND:VCARD\r\n");
    let report = vcard::import_bytes(card.as_bytes(), &opts).unwrap();
    assert_eq!(report.contacts.len(), 1);
    assert_eq!(report.contacts[0].note, None);
    assert_eq!(report.dropped.len(), 1);

    // A Facebook name of 8 MiB: the entry is skipped.
    let json = format!(r#"{{"friends_v2": [{{"name": "{huge}", "timestamp": 1}}]}}"#);
    let report = facebook::import_bytes(json.as_bytes(), &opts).unwrap();
    assert_eq!((report.contacts.len(), report.skipped.len()), (0, 1));

    // Millions of empty lines.
    let blank = "\n".repeat(4 * 1024 * 1024);
    assert!(vcard::import_bytes(blank.as_bytes(), &opts).is_err());
    assert!(linkedin::import_bytes(blank.as_bytes(), &opts).is_err());

    // Millions of empty cards: one error once the record limit is reached.
    let limited = ImportOptions {
        max_records: 1000,
        ..ImportOptions::default()
    };
    let cards = "BEGIN:VCARD\nEND:VCARD\n".repeat(100_000);
    assert!(vcard::import_bytes(cards.as_bytes(), &limited).is_err());
}
