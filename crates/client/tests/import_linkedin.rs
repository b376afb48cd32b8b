//! LinkedIn `Connections.csv` importer: the sample export and every quirk of the format.

use std::path::PathBuf;

use kith_client::import::{
    FileKind, ImportError, ImportOptions, ImportReport, Provenance, Source, linkedin, testing,
};
use kith_protocol::proto;

const HEADER: &str = "First Name,Last Name,URL,Email Address,Company,Position,Connected On";

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/linkedin/Connections.csv")
}

fn import(text: &str) -> ImportReport {
    linkedin::import_bytes(text.as_bytes(), &ImportOptions::default()).expect("import")
}

fn name_of(report: &ImportReport, i: usize) -> &str {
    report.contacts[i].name.as_deref().unwrap_or("")
}

fn date(year: u32, month: u32, day: u32) -> Option<proto::Date> {
    Some(proto::Date { year, month, day })
}

#[test]
fn sample_export_yields_every_connection_with_its_fields() {
    let report = linkedin::import(&fixture(), &ImportOptions::default()).unwrap();
    assert_eq!(report.contacts.len(), 60);
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    assert!(report.dropped.is_empty(), "{:?}", report.dropped);

    let anne = &report.contacts[0];
    assert_eq!(anne.source(), Source::LinkedIn);
    assert_eq!(anne.name.as_deref(), Some("Anne-Marie Nasser"));
    assert_eq!(
        anne.source_identity,
        "https://www.linkedin.com/in/anne-marie-nasser-0000"
    );
    assert_eq!(anne.emails.len(), 1);
    assert_eq!(anne.emails[0].address, "anne-marie.nasser0@example.com");
    assert_eq!(anne.company.as_deref(), Some("Stark Industries"));
    assert_eq!(anne.title.as_deref(), Some("Engineering Manager, Payments"));
    let Provenance::LinkedIn(source) = &anne.provenance else {
        panic!("wrong provenance")
    };
    assert_eq!(source.connected_on, date(2018, 4, 23));
    assert_eq!(source.profile_url, anne.source_identity);
    assert_eq!(source.position, "Engineering Manager, Payments");

    let sean = &report.contacts[1];
    assert_eq!(sean.name.as_deref(), Some("Seán Nguyen"));
    assert!(sean.emails.is_empty(), "a missing e-mail stays missing");

    let ingrid = &report.contacts[4];
    assert_eq!(ingrid.company.as_deref(), Some("Umbrella \"Bio\" Corp"));
    let ana = &report.contacts[13];
    assert_eq!(ana.title.as_deref(), Some("Senior Engineer \"Platform\""));
    let hopper = &report.contacts[17];
    assert_eq!(hopper.name.as_deref(), Some("Dmitri Hopper"));
    assert_eq!(
        hopper.company, None,
        "an empty company is absent, not empty"
    );
}

#[test]
fn field_writes_use_the_protocol_field_keys() {
    let report = linkedin::import(&fixture(), &ImportOptions::default()).unwrap();
    let keys: Vec<String> = report.contacts[0]
        .field_writes()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        keys,
        vec![
            "name",
            "company",
            "title",
            "email/anne-marie.nasser0@example.com",
            "url/https://www.linkedin.com/in/anne-marie-nasser-0000",
            "source/linkedin",
        ]
    );
    assert_eq!(
        report.contacts[0].identities(),
        vec![
            "email:anne-marie.nasser0@example.com",
            "linkedin:https://www.linkedin.com/in/anne-marie-nasser-0000",
        ]
    );
}

#[test]
fn utf8_bom_and_lf_line_ends_are_accepted() {
    let text = format!(
        "\u{feff}Notes:\n\"preamble\"\n\n{HEADER}\nAna,Lima,https://www.linkedin.com/in/ana,,X,Y,01 Jan 2020\n"
    );
    let report = import(&text);
    assert_eq!(report.contacts.len(), 1);
    assert_eq!(name_of(&report, 0), "Ana Lima");
}

#[test]
fn header_without_preamble_and_in_another_column_order_is_found() {
    let text = "Connected On,Email Address,Last Name,First Name,Company,Position\r\n\
                05 Jun 2011,a@b.example,Lima,Ana,,\r\n";
    let report = import(text);
    assert_eq!(report.contacts.len(), 1);
    assert_eq!(name_of(&report, 0), "Ana Lima");
    assert_eq!(report.contacts[0].source_identity, "a@b.example");
}

#[test]
fn quoted_fields_with_commas_doubled_quotes_and_line_breaks_are_read_whole() {
    let text = format!(
        "{HEADER}\r\n\
         Ana,Lima,https://www.linkedin.com/in/ana,,\"Acme, \"\"Inc.\"\"\",\"Line one\r\nline two\",12 Mar 2024\r\n\
         Bo,Ek,https://www.linkedin.com/in/bo,,Hooli,Engineer,13 Mar 2024\r\n"
    );
    let report = import(&text);
    assert_eq!(report.contacts.len(), 2);
    assert_eq!(
        report.contacts[0].company.as_deref(),
        Some("Acme, \"Inc.\"")
    );
    assert_eq!(
        report.contacts[0].title.as_deref(),
        Some("Line one  line two"),
        "a line break inside a single-line field becomes a space"
    );
    assert_eq!(name_of(&report, 1), "Bo Ek");
}

#[test]
fn rows_of_empty_fields_and_blank_lines_are_ignored_silently() {
    let text = format!(
        "{HEADER}\r\n,,,,,,\r\n\r\nAna,Lima,https://www.linkedin.com/in/ana,,,,\r\n , , ,,,,\r\n"
    );
    let report = import(&text);
    assert_eq!(report.contacts.len(), 1);
    assert!(report.skipped.is_empty());
    assert!(report.dropped.is_empty());
}

#[test]
fn the_same_connection_twice_is_one_contact_with_what_both_rows_know() {
    let text = format!(
        "{HEADER}\r\n\
         Ana,Lima,https://www.linkedin.com/in/ana,,Acme,,12 Mar 2024\r\n\
         Ana,Lima,http://linkedin.com/in/ANA/,ana@example.com,Other,Engineer,12 Mar 2024\r\n"
    );
    let report = import(&text);
    assert_eq!(report.contacts.len(), 1);
    let ana = &report.contacts[0];
    assert_eq!(ana.company.as_deref(), Some("Acme"), "the first row wins");
    assert_eq!(
        ana.title.as_deref(),
        Some("Engineer"),
        "the second row fills gaps"
    );
    assert_eq!(ana.emails.len(), 1);
}

/// An export after `prefix` whose rows are, by line: 1 Notes, 2 preamble, 3 blank, 4 header,
/// 5 good, 6-7 a good row with a line break, 8 too few fields, 9 too many fields, 10 no
/// name/URL/e-mail, 11 good.
fn malformed_rows(prefix: &str) -> String {
    format!(
        "{prefix}Notes:\r\n\"x\"\r\n\r\n{HEADER}\r\n\
         A,B,https://www.linkedin.com/in/a,,,,01 Jan 2020\r\n\
         C,D,https://www.linkedin.com/in/c,,\"two\r\nlines\",,01 Jan 2020\r\n\
         E,F,https://www.linkedin.com/in/e\r\n\
         G,H,https://www.linkedin.com/in/g,,Acme, Inc.,Boss,01 Jan 2020\r\n\
         ,,,,Acme,Boss,01 Jan 2020\r\n\
         I,J,https://www.linkedin.com/in/i,,,,01 Jan 2020\r\n"
    )
}

#[test]
fn malformed_rows_are_skipped_with_the_line_they_start_on() {
    let text = malformed_rows("");
    let report = import(&text);
    assert_eq!(report.contacts.len(), 3);
    let lines: Vec<usize> = report.skipped.iter().map(|s| s.line).collect();
    assert_eq!(lines, vec![8, 9, 10], "{:?}", report.skipped);
    assert!(report.skipped[0].reason.contains("fields"));
}

#[test]
fn bad_fields_are_dropped_and_the_rest_of_the_row_kept() {
    let text =
        format!("{HEADER}\r\nAna,Lima,https://example.com/ana,not-an-email,Acme,,31 Feb 2024\r\n");
    let report = import(&text);
    assert_eq!(report.contacts.len(), 1);
    let fields: Vec<(&str, usize)> = report
        .dropped
        .iter()
        .map(|d| (d.field.as_str(), d.line))
        .collect();
    assert_eq!(
        fields,
        vec![("URL", 2), ("Email Address", 2), ("Connected On", 2)]
    );
    let ana = &report.contacts[0];
    assert_eq!(ana.company.as_deref(), Some("Acme"));
    assert_eq!(
        ana.source_identity, "ana lima|",
        "no URL or e-mail: name-based identity"
    );
    for dropped in &report.dropped {
        assert!(
            !dropped.reason.contains("not-an-email"),
            "reasons never quote data"
        );
    }
}

#[test]
fn a_field_over_the_length_limit_skips_its_row() {
    let opts = ImportOptions {
        max_field_bytes: 100,
        ..ImportOptions::default()
    };
    let text = format!(
        "{HEADER}\r\nAna,Lima,https://www.linkedin.com/in/ana,,{},,01 Jan 2020\r\nBo,Ek,https://www.linkedin.com/in/bo,,,,01 Jan 2020\r\n",
        "x".repeat(101)
    );
    let report = linkedin::import_bytes(text.as_bytes(), &opts).unwrap();
    assert_eq!(report.contacts.len(), 1);
    assert_eq!(report.skipped.len(), 1);
    assert_eq!(report.skipped[0].line, 2);
    assert!(report.skipped[0].reason.contains("Company"));
}

#[test]
fn a_json_file_is_one_wrong_kind_error() {
    let json = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/facebook/your_friends.json"),
    )
    .unwrap();
    let err = linkedin::import_bytes(&json, &ImportOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            ImportError::WrongKind {
                expected: FileKind::LinkedInConnections,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("JSON"), "{err}");
}

#[test]
fn a_csv_without_the_expected_header_is_one_wrong_kind_error() {
    let mut text = String::from("Name,Phone\r\n");
    for i in 0..1000 {
        text.push_str(&format!("Person {i},555-{i:04}\r\n"));
    }
    let err = linkedin::import_bytes(text.as_bytes(), &ImportOptions::default()).unwrap_err();
    assert!(matches!(err, ImportError::WrongKind { .. }), "{err:?}");
    let err = linkedin::import_bytes(b"", &ImportOptions::default()).unwrap_err();
    assert!(matches!(err, ImportError::WrongKind { .. }), "{err:?}");
}

#[test]
fn a_file_over_the_size_limit_is_refused() {
    let opts = ImportOptions {
        max_file_bytes: 1000,
        ..ImportOptions::default()
    };
    let err = linkedin::import(&fixture(), &opts).unwrap_err();
    assert!(
        matches!(err, ImportError::TooLarge { limit: 1000, .. }),
        "{err:?}"
    );
    let err = linkedin::import_reader(std::io::repeat(b'a'), &opts).unwrap_err();
    assert!(
        matches!(err, ImportError::TooLarge { .. }),
        "an endless reader stops at the limit"
    );
}

#[test]
fn more_records_than_the_limit_is_one_error() {
    let opts = ImportOptions {
        max_records: 10,
        ..ImportOptions::default()
    };
    let err = linkedin::import(&fixture(), &opts).unwrap_err();
    assert!(
        matches!(err, ImportError::TooManyRecords { limit: 10, .. }),
        "{err:?}"
    );
}

#[test]
fn generated_export_imports_every_distinct_connection() {
    let csv = testing::generate_linkedin_csv(1000);
    let report = import(&csv);
    // Every 50th row repeats an earlier one.
    assert_eq!(report.contacts.len(), 1000 - 20);
    assert!(report.skipped.is_empty(), "{:?}", report.skipped.first());
    assert!(report.dropped.is_empty(), "{:?}", report.dropped.first());
    assert!(
        report
            .contacts
            .iter()
            .any(|c| c.company.as_deref() == Some("Umbrella \"Bio\" Corp"))
    );
}

#[test]
fn listed_problems_are_capped_and_the_rest_counted() {
    let opts = ImportOptions {
        max_reported_problems: 5,
        ..ImportOptions::default()
    };
    let mut text = format!("{HEADER}\r\n");
    for _ in 0..20 {
        text.push_str("a,b\r\n");
    }
    let report = linkedin::import_bytes(text.as_bytes(), &opts).unwrap();
    assert_eq!(report.skipped.len(), 5);
    assert_eq!(report.unlisted_problems, 15);
}

/// A reader that hands out at most `step` bytes per read, as a slow pipe or a network
/// file system would.
struct Trickle<'a> {
    bytes: &'a [u8],
    step: usize,
}

impl std::io::Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.step.min(buf.len()).min(self.bytes.len());
        buf[..n].copy_from_slice(&self.bytes[..n]);
        self.bytes = &self.bytes[n..];
        Ok(n)
    }
}

#[test]
fn rows_read_as_the_file_streams_by_report_the_lines_of_the_whole_file() {
    // The `malformed_rows`, behind a byte-order mark, read 1, 3 and 64 bytes at a time.
    let text = malformed_rows("\u{feff}");
    let whole = import(&text);
    for step in [1, 3, 64] {
        let reader = Trickle {
            bytes: text.as_bytes(),
            step,
        };
        let mut rows = linkedin::Rows::new(reader, &ImportOptions::default()).unwrap();
        let contacts: Vec<_> = rows.by_ref().map(Result::unwrap).collect();
        let report = rows.finish();
        assert_eq!(contacts, whole.contacts, "step {step}");
        let lines: Vec<usize> = report.skipped.iter().map(|s| s.line).collect();
        assert_eq!(lines, vec![8, 9, 10], "step {step}: {:?}", report.skipped);
    }
}

#[test]
fn rows_of_the_sample_export_are_its_connections_and_repeats() {
    let whole = linkedin::import(&fixture(), &ImportOptions::default()).unwrap();
    let mut rows = linkedin::rows_from_path(&fixture(), &ImportOptions::default()).unwrap();
    let streamed: Vec<_> = rows.by_ref().map(Result::unwrap).collect();
    let report = rows.finish();
    let mut identities: Vec<&str> = streamed
        .iter()
        .map(|c| c.source_identity.as_str())
        .collect();
    identities.sort();
    identities.dedup();
    assert_eq!(identities.len(), whole.contacts.len());
    assert_eq!(report.skipped, whole.skipped);
    assert_eq!(report.dropped, whole.dropped);
}

#[test]
fn rows_stop_at_the_size_limit_of_an_endless_reader() {
    let opts = ImportOptions {
        max_file_bytes: 100_000,
        ..ImportOptions::default()
    };
    let start = format!("{HEADER}\r\nAna,Lima,https://www.linkedin.com/in/ana,,,,\r\n");
    let endless = std::io::Read::chain(start.as_bytes(), std::io::repeat(b'a'));
    let mut rows = linkedin::Rows::new(endless, &opts).unwrap();
    assert!(rows.next().unwrap().is_ok(), "the first row is read");
    let err = rows.next().unwrap().unwrap_err();
    assert!(
        matches!(err, ImportError::TooLarge { limit: 100_000, .. }),
        "{err:?}"
    );
    assert!(rows.next().is_none(), "nothing after the error");
}

#[test]
fn rows_stop_at_the_record_limit() {
    let opts = ImportOptions {
        max_records: 10,
        ..ImportOptions::default()
    };
    let csv = testing::generate_linkedin_csv(100);
    let items: Vec<_> = linkedin::Rows::new(csv.as_bytes(), &opts)
        .unwrap()
        .collect();
    assert_eq!(items.len(), 11);
    assert!(items[..10].iter().all(Result::is_ok));
    assert!(matches!(
        items[10],
        Err(ImportError::TooManyRecords { limit: 10, .. })
    ));
}
