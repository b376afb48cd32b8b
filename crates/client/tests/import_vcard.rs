//! vCard importer (2.1, 3.0, 4.0) and vCard 4.0 exporter, including the round trip.

use std::path::PathBuf;

use kith_client::export::{ExportContact, export_vcard4};
use kith_client::import::vcard;
use kith_client::import::{
    FileKind, ImportError, ImportOptions, ImportReport, ImportedContact, Provenance, Region,
};
use kith_protocol::proto;
use proptest::prelude::*;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vcard/contacts.vcf")
}

fn import(text: &str) -> ImportReport {
    vcard::import_bytes(text.as_bytes(), &ImportOptions::default()).expect("import")
}

fn only(report: &ImportReport) -> &ImportedContact {
    assert_eq!(report.contacts.len(), 1, "{report:#?}");
    &report.contacts[0]
}

fn email(address: &str, label: &str) -> proto::Email {
    proto::Email {
        address: address.into(),
        label: label.into(),
    }
}

fn phone(e164: &str, label: &str) -> proto::Phone {
    proto::Phone {
        e164: e164.into(),
        label: label.into(),
    }
}

fn url(url: &str, label: &str) -> proto::Url {
    proto::Url {
        url: url.into(),
        label: label.into(),
    }
}

fn date(year: u32, month: u32, day: u32) -> Option<proto::Date> {
    Some(proto::Date { year, month, day })
}

/// import → export → import gives the same contacts.
fn assert_round_trips(report: &ImportReport) {
    let exported: Vec<ExportContact> = report.contacts.iter().map(ExportContact::from).collect();
    let text = export_vcard4(&exported);
    let again = import(&text);
    assert_eq!(again.contacts, report.contacts, "exported:\n{text}");
    assert!(
        again.skipped.is_empty() && again.dropped.is_empty(),
        "{again:?}"
    );
}

#[test]
fn sample_apple_export_yields_every_card_with_its_fields() {
    let report = vcard::import(&fixture(), &ImportOptions::default()).unwrap();
    assert_eq!(report.contacts.len(), 15);
    assert!(
        report.skipped.is_empty() && report.dropped.is_empty(),
        "{report:?}"
    );
    let anne = &report.contacts[0];
    assert_eq!(anne.name.as_deref(), Some("Anne-Marie Nasser"));
    assert_eq!(anne.company.as_deref(), Some("Stark Industries"));
    assert_eq!(anne.title.as_deref(), Some("Engineering Manager, Payments"));
    assert_eq!(
        anne.emails,
        vec![email("anne-marie.nasser0@example.com", "home")]
    );
    assert_eq!(anne.phones, vec![phone("+14155551000", "cell")]);
    assert_eq!(
        anne.urls,
        vec![url(
            "https://www.linkedin.com/in/anne-marie-nasser-0000",
            "LinkedIn"
        )]
    );
    assert_eq!(anne.birthday, date(1970, 1, 1));
    assert_eq!(
        anne.note.as_deref(),
        Some(
            "Met at the conference, Lisbon\nSecond line of a long note that goes on well past \
             seventy-five octets so that it has to be folded 0"
        )
    );
    assert_eq!(
        anne.source_identity,
        "anne-marie nasser|anne-marie.nasser0@example.com"
    );
    assert_eq!(report.contacts[5].company.as_deref(), Some("Acme, Inc."));
    assert_eq!(report.contacts[1].name.as_deref(), Some("Seán Nguyen"));
    // The LinkedIn URL on the card unifies it with the LinkedIn import.
    assert!(
        anne.identities()
            .contains(&"linkedin:https://www.linkedin.com/in/anne-marie-nasser-0000".to_owned())
    );
}

#[test]
fn sample_export_round_trips_through_vcard4() {
    let report = vcard::import(&fixture(), &ImportOptions::default()).unwrap();
    assert_round_trips(&report);
}

const V21: &str = "BEGIN:VCARD\r
VERSION:2.1\r
N;CHARSET=ISO-8859-1;ENCODING=QUOTED-PRINTABLE:M=FCller;J=FCrgen;;;\r
FN;CHARSET=UTF-8;ENCODING=QUOTED-PRINTABLE:J=C3=BCrgen M=C3=BCller\r
TEL;HOME;VOICE:(415) 555-0100\r
TEL;CELL:+1 415 555 0101\r
TEL;WORK;FAX:415.555.0102\r
EMAIL;INTERNET;PREF:juergen@example.de\r
NOTE;ENCODING=QUOTED-PRINTABLE;CHARSET=UTF-8:First line=0D=0A=\r
second line with =C3=A9 and a soft=\r
 break\r
PHOTO;ENCODING=BASE64;TYPE=JPEG:/9j/4AAQSkZJRgABAQEASABIAAD\r
/9j/4AAQSkZJRgABAQEASABIAAD/2wBDAAYEBQYFBAYGBQYGBwcGBwgKEAoKCQkKFA4PDBAX\r
\r
ORG:Beispiel GmbH;Vertrieb\r
TITLE:Leiter\r
BDAY:1980-07-15\r
END:VCARD\r
";

#[test]
fn vcard_21_quoted_printable_charsets_and_bare_types_are_decoded() {
    let report = import(V21);
    assert!(report.dropped.is_empty(), "{:?}", report.dropped);
    let c = only(&report);
    assert_eq!(c.name.as_deref(), Some("Jürgen Müller"));
    assert_eq!(
        c.phones,
        vec![
            phone("+14155550100", "home"),
            phone("+14155550101", "cell"),
            phone("+14155550102", "work"),
        ]
    );
    assert_eq!(c.emails, vec![email("juergen@example.de", "")]);
    assert_eq!(
        c.note.as_deref(),
        Some("First line\nsecond line with é and a soft break")
    );
    assert_eq!(c.company.as_deref(), Some("Beispiel GmbH"));
    assert_eq!(c.title.as_deref(), Some("Leiter"));
    assert_eq!(c.birthday, date(1980, 7, 15));
    assert_round_trips(&report);
}

#[test]
fn vcard_21_name_falls_back_to_n_in_latin1() {
    let text = V21.replace(
        "FN;CHARSET=UTF-8;ENCODING=QUOTED-PRINTABLE:J=C3=BCrgen M=C3=BCller\r\n",
        "",
    );
    assert_eq!(only(&import(&text)).name.as_deref(), Some("Jürgen Müller"));
}

const V40: &str = "BEGIN:VCARD\r
VERSION:4.0\r
UID:urn:uuid:4fbe8971-0bc3-424c-9c26-36c3e1eff6b1\r
FN:Ada Lovelace\r
N:Lovelace;Ada;;;\r
TEL;VALUE=uri;TYPE=\"cell,voice\";PREF=1:tel:+44-20-7946-0018\r
TEL;VALUE=uri;TYPE=work:tel:+1-415-555-0103;ext=55\r
EMAIL;TYPE=work:ada@example.org\r
EMAIL;TYPE=home:ADA@example.org\r
URL:https://ada.example\r
SOCIALPROFILE;SERVICE-TYPE=Mastodon:https://mastodon.example/@ada\r
X-SOCIALPROFILE;TYPE=twitter;X-USER=ada_l:https://twitter.com/ada_l\r
BDAY:--1210\r
NOTE:Analytical engine\\; notes\\, first program\\nSecond line\\\\done\r
END:VCARD\r
";

#[test]
fn vcard_40_uris_yearless_birthdays_and_social_profiles_are_read() {
    let report = import(V40);
    assert!(report.dropped.is_empty(), "{:?}", report.dropped);
    let c = only(&report);
    assert_eq!(
        c.source_identity,
        "urn:uuid:4fbe8971-0bc3-424c-9c26-36c3e1eff6b1"
    );
    assert_eq!(
        c.provenance,
        Provenance::VCard(proto::VCardSource {
            uid: "urn:uuid:4fbe8971-0bc3-424c-9c26-36c3e1eff6b1".into()
        })
    );
    assert_eq!(
        c.phones,
        vec![
            phone("+442079460018", "cell"),
            phone("+14155550103", "work")
        ]
    );
    assert_eq!(
        c.emails,
        vec![email("ada@example.org", "work")],
        "addresses equal ignoring case are one"
    );
    assert_eq!(
        c.urls,
        vec![
            url("https://ada.example", ""),
            url("https://mastodon.example/@ada", "mastodon"),
            url("https://twitter.com/ada_l", "twitter"),
        ]
    );
    let handles: Vec<(&str, &str)> = c
        .handles
        .iter()
        .map(|h| (h.service.as_str(), h.handle.as_str()))
        .collect();
    assert_eq!(handles, vec![("mastodon", "ada"), ("twitter", "ada_l")]);
    assert_eq!(c.birthday, date(0, 12, 10));
    assert_eq!(
        c.note.as_deref(),
        Some("Analytical engine; notes, first program\nSecond line\\done")
    );
    assert_round_trips(&report);
}

#[test]
fn apple_grouped_labels_and_omitted_years_are_read() {
    let text = "BEGIN:VCARD\r
VERSION:3.0\r
FN:Grace Hopper\r
item1.TEL;type=pref:(415) 555-0104\r
item1.X-ABLabel:_$!<Mobile>!$_\r
item2.EMAIL;type=INTERNET:grace@example.com\r
item2.X-ABLabel:Navy\r
item3.URL:http\\://example.com/grace\r
item3.X-ABLabel:_$!<HomePage>!$_\r
BDAY;X-APPLE-OMIT-YEAR=1604:1604-12-09\r
X-SOCIALPROFILE;type=linkedin:http://www.linkedin.com/in/grace-hopper\r
END:VCARD\r
";
    let report = import(text);
    let c = only(&report);
    assert_eq!(c.phones, vec![phone("+14155550104", "mobile")]);
    assert_eq!(c.emails, vec![email("grace@example.com", "Navy")]);
    assert_eq!(
        c.urls,
        vec![
            url("http://example.com/grace", "homepage"),
            url("http://www.linkedin.com/in/grace-hopper", "linkedin"),
        ]
    );
    assert_eq!(c.handles.len(), 1);
    assert_eq!(c.handles[0].handle, "grace-hopper");
    assert_eq!(c.birthday, date(0, 12, 9));
    assert_round_trips(&report);
}

#[test]
fn folded_lines_unfold_per_version() {
    // 3.0/4.0: CRLF + one space is removed; 2.1 keeps the whitespace.
    let v3 = "BEGIN:VCARD\r\nVERSION:3.0\r\nFN:Ada Love\r\n lace\r\nTITLE:Count\r\n\tess\r\nEND:VCARD\r\n";
    let c = import(v3).contacts.remove(0);
    assert_eq!(c.name.as_deref(), Some("Ada Lovelace"));
    assert_eq!(c.title.as_deref(), Some("Countess"));
    let v21 = "BEGIN:VCARD\r\nVERSION:2.1\r\nFN:Ada\r\n Lovelace\r\nEND:VCARD\r\n";
    assert_eq!(only(&import(v21)).name.as_deref(), Some("Ada Lovelace"));
    // LF-only and CR-only line ends.
    let lf = v3.replace("\r\n", "\n");
    assert_eq!(only(&import(&lf)).name.as_deref(), Some("Ada Lovelace"));
    let cr = v3.replace("\r\n", "\r");
    assert_eq!(only(&import(&cr)).name.as_deref(), Some("Ada Lovelace"));
}

#[test]
fn several_cards_duplicates_and_a_utf16_file() {
    let one = "BEGIN:VCARD\r\nVERSION:3.0\r\nFN:Ada\r\nEMAIL:ada@example.org\r\nEND:VCARD\r\n";
    let two = "BEGIN:VCARD\r\nVERSION:3.0\r\nFN:Ada\r\nEMAIL:ADA@example.org\r\nTITLE:Countess\r\nEND:VCARD\r\n";
    let three = "begin:vcard\r\nversion:3.0\r\nfn:Bob\r\nend:vcard\r\n";
    let text = format!("{one}{two}{three}");
    let report = import(&text);
    assert_eq!(
        report.contacts.len(),
        2,
        "the same card twice is one contact"
    );
    assert_eq!(report.contacts[0].title.as_deref(), Some("Countess"));
    assert_eq!(report.contacts[1].name.as_deref(), Some("Bob"));

    let mut utf16 = vec![0xFF, 0xFE];
    for unit in "BEGIN:VCARD\r\nVERSION:3.0\r\nFN:Zoë\r\nEND:VCARD\r\n".encode_utf16() {
        utf16.extend_from_slice(&unit.to_le_bytes());
    }
    let report = vcard::import_bytes(&utf16, &ImportOptions::default()).unwrap();
    assert_eq!(only(&report).name.as_deref(), Some("Zoë"));
}

#[test]
fn text_that_is_not_utf8_without_a_charset_is_read_as_windows_1252() {
    let mut bytes = b"BEGIN:VCARD\r\nVERSION:2.1\r\nFN:Jos".to_vec();
    bytes.push(0xE9);
    bytes.extend_from_slice(b"\r\nEND:VCARD\r\n");
    let report = vcard::import_bytes(&bytes, &ImportOptions::default()).unwrap();
    assert_eq!(only(&report).name.as_deref(), Some("José"));
}

#[test]
fn an_embedded_agent_card_is_skipped_not_imported() {
    let text = "BEGIN:VCARD\r
VERSION:2.1\r
FN:Boss\r
AGENT:\r
BEGIN:VCARD\r
VERSION:2.1\r
FN:Assistant\r
END:VCARD\r
TITLE:Director\r
END:VCARD\r
";
    let report = import(text);
    let c = only(&report);
    assert_eq!(c.name.as_deref(), Some("Boss"));
    assert_eq!(c.title.as_deref(), Some("Director"));
}

#[test]
fn malformed_cards_and_lines_are_reported_with_their_line_numbers() {
    let text = "BEGIN:VCARD\r
VERSION:3.0\r
FN:Ada\r
this line is not a property\r
TEL:not a number\r
EMAIL:nobody\r
BDAY:sometime\r
END:VCARD\r
BEGIN:VCARD\r
VERSION:3.0\r
FN:No End\r
BEGIN:VCARD\r
VERSION:3.0\r
NOTE:nothing else\r
END:VCARD\r
BEGIN:VCARD\r
FN:Truncated\r
";
    let report = import(text);
    let names: Vec<_> = report.contacts.iter().map(|c| c.name.clone()).collect();
    assert_eq!(names, vec![Some("Ada".to_owned())]);
    let dropped: Vec<(usize, &str)> = report
        .dropped
        .iter()
        .map(|d| (d.line, d.field.as_str()))
        .collect();
    assert_eq!(
        dropped,
        vec![(4, "line"), (5, "TEL"), (6, "EMAIL"), (7, "BDAY")]
    );
    let skipped: Vec<(usize, &str)> = report
        .skipped
        .iter()
        .map(|s| (s.line, s.reason.as_str()))
        .collect();
    assert_eq!(
        skipped,
        vec![
            (9, "card has no END:VCARD"),
            (12, "card has no name, e-mail or phone number"),
            (16, "card has no END:VCARD"),
        ]
    );
    for problem in &report.dropped {
        assert!(!problem.reason.contains("nobody") && !problem.reason.contains("sometime"));
    }
}

#[test]
fn a_file_without_vcards_is_one_wrong_kind_error() {
    let csv = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/linkedin/Connections.csv"),
    )
    .unwrap();
    for bytes in [
        csv.as_slice(),
        b"{\"friends_v2\": []}",
        b"",
        b"\x00\x01\x02",
    ] {
        let err = vcard::import_bytes(bytes, &ImportOptions::default()).unwrap_err();
        assert!(
            matches!(
                err,
                ImportError::WrongKind {
                    expected: FileKind::VCard,
                    ..
                }
            ),
            "{err:?}"
        );
    }
}

#[test]
fn overlong_values_and_too_many_values_are_dropped() {
    let opts = ImportOptions {
        max_field_bytes: 64,
        max_values_per_field: 2,
        ..ImportOptions::default()
    };
    let text = format!(
        "BEGIN:VCARD\r\nVERSION:3.0\r\nFN:Ada\r\nNOTE:{}\r\nEMAIL:a@x.example\r\nEMAIL:b@x.example\r\nEMAIL:c@x.example\r\nEND:VCARD\r\n",
        "n".repeat(10_000)
    );
    let report = vcard::import_bytes(text.as_bytes(), &opts).unwrap();
    let c = only(&report);
    assert_eq!(c.note, None);
    assert_eq!(c.emails.len(), 2);
    let dropped: Vec<(usize, &str)> = report
        .dropped
        .iter()
        .map(|d| (d.line, d.field.as_str()))
        .collect();
    assert_eq!(dropped, vec![(4, "NOTE"), (7, "EMAIL")]);
}

#[test]
fn more_cards_than_the_limit_is_one_error() {
    let opts = ImportOptions {
        max_records: 3,
        ..ImportOptions::default()
    };
    let err = vcard::import(&fixture(), &opts).unwrap_err();
    assert!(
        matches!(err, ImportError::TooManyRecords { limit: 3, .. }),
        "{err:?}"
    );
}

#[test]
fn export_writes_valid_vcard4() {
    let contact = ExportContact {
        uid: Some("id-1".into()),
        name: Some("Ada, Countess; of Lovelace".into()),
        emails: vec![
            email("ada@example.org", "work"),
            email("a@x.example", "Old job"),
        ],
        phones: vec![phone("+442079460018", "cell")],
        urls: vec![url("https://ada.example", "")],
        handles: vec![proto::Handle {
            service: "Mastodon".into(),
            handle: "ada@mastodon.example".into(),
        }],
        company: Some("Analytical Engines Ltd".into()),
        title: None,
        birthday: date(0, 12, 10),
        note: Some(format!("line one\nline two {}", "long ".repeat(40))),
    };
    let text = export_vcard4(&[contact]);
    assert!(text.starts_with("BEGIN:VCARD\r\nVERSION:4.0\r\n"), "{text}");
    assert!(text.ends_with("END:VCARD\r\n"));
    for line in text.split("\r\n") {
        assert!(line.len() <= 75, "line of {} octets", line.len());
        assert!(!line.contains('\n') && !line.contains('\r'));
    }
    let unfolded = text.replace("\r\n ", "");
    assert!(
        unfolded.contains("\r\nFN:Ada\\, Countess\\; of Lovelace\r\n"),
        "{unfolded}"
    );
    assert!(unfolded.contains("\r\nEMAIL;TYPE=work:ada@example.org\r\n"));
    assert!(unfolded.contains("\r\nitem1.EMAIL:a@x.example\r\nitem1.X-ABLabel:Old job\r\n"));
    assert!(unfolded.contains("\r\nTEL;VALUE=uri;TYPE=cell:tel:+442079460018\r\n"));
    assert!(unfolded.contains("\r\nX-SOCIALPROFILE;TYPE=mastodon:ada@mastodon.example\r\n"));
    assert!(unfolded.contains("\r\nBDAY:--1210\r\n"));
    assert!(unfolded.contains("\r\nNOTE:line one\\nline two long "));
}

fn single_line() -> impl Strategy<Value = String> {
    "[^\\p{C}]{1,40}".prop_filter_map("blank", |s| {
        let t = s.trim();
        (!t.is_empty()).then(|| t.to_owned())
    })
}

fn label() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("home".to_owned()),
        Just("work".to_owned()),
        Just("cell".to_owned()),
        single_line().prop_filter("apple-wrapped", |s| !s.starts_with("_$!<")),
    ]
}

fn phone_number() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec!["415", "212", "617", "303", "206"]),
        200u32..999,
        0u32..10_000,
    )
        .prop_filter_map("not a valid number", |(area, exchange, line)| {
            let raw = format!("+1{area}{exchange:03}{line:04}");
            kith_client::import::phone::to_e164(&raw, Region::US).filter(|e| *e == raw)
        })
}

/// A set of distinct values drawn from `values`, of a size in `size`, each made a field with a
/// label of its own by `field`.
fn labelled<T: std::fmt::Debug>(
    values: impl Strategy<Value = String>,
    size: std::ops::Range<usize>,
    field: fn(String, String) -> T,
) -> impl Strategy<Value = Vec<T>> {
    prop::collection::btree_set(values, size)
        .prop_flat_map(|set| {
            let n = set.len();
            (Just(set), prop::collection::vec(label(), n))
        })
        .prop_map(move |(set, labels)| {
            set.into_iter()
                .zip(labels)
                .map(|(value, label)| field(value, label))
                .collect::<Vec<_>>()
        })
}

fn export_contact() -> impl Strategy<Value = ExportContact> {
    let emails = labelled(
        "[a-z0-9._+-]{1,12}@[a-z0-9-]{1,12}\\.[a-z]{2,5}",
        0..4,
        |address, label| proto::Email { address, label },
    );
    let phones = labelled(phone_number(), 0..3, |e164, label| proto::Phone {
        e164,
        label,
    });
    let urls = labelled(
        "https://[a-z]{1,10}\\.example/[A-Za-z0-9_~%-]{0,20}",
        0..3,
        |url, label| proto::Url { url, label },
    );
    let service = "[a-z]{1,8}".prop_filter("pref means no service", |s| s != "pref");
    let handles =
        prop::collection::btree_set((service, "[A-Za-z0-9_.@]{1,20}"), 0..3).prop_map(|set| {
            set.into_iter()
                .map(|(service, handle)| proto::Handle { service, handle })
                .collect::<Vec<_>>()
        });
    let birthday = prop::option::of(
        (prop_oneof![Just(0u32), 1900u32..2100], 1u32..=12, 1u32..=28)
            .prop_map(|(year, month, day)| proto::Date { year, month, day }),
    );
    let note = prop::option::of(
        prop::collection::vec(single_line(), 1..4).prop_map(|lines| lines.join("\n")),
    );
    (
        (
            prop::option::of("[A-Za-z0-9:-]{1,40}"),
            single_line(),
            emails,
            phones,
            urls,
            handles,
        ),
        (
            prop::option::of(single_line()),
            prop::option::of(single_line()),
            birthday,
            note,
        ),
    )
        .prop_map(
            |((uid, name, emails, phones, urls, handles), (company, title, birthday, note))| {
                ExportContact {
                    uid,
                    name: Some(name),
                    emails,
                    phones,
                    urls,
                    handles,
                    company,
                    title,
                    birthday,
                    note,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any contact the importer could have produced survives export and re-import unchanged.
    #[test]
    fn export_then_import_returns_the_same_contact(contact in export_contact()) {
        let text = export_vcard4(std::slice::from_ref(&contact));
        let report = vcard::import_bytes(text.as_bytes(), &ImportOptions::default()).unwrap();
        prop_assert!(report.skipped.is_empty() && report.dropped.is_empty(), "{:?}\n{}", report, text);
        prop_assert_eq!(report.contacts.len(), 1);
        let back = ExportContact::from(&report.contacts[0]);
        prop_assert_eq!(&back, &contact, "exported:\n{}", text);
        // And the full import → export → import cycle is a fixed point.
        let again = vcard::import_bytes(
            export_vcard4(&[back]).as_bytes(),
            &ImportOptions::default(),
        )
        .unwrap();
        prop_assert_eq!(again.contacts, report.contacts);
    }
}
