//! The mbox importer against a real Gmail Takeout mbox (every person invented) and hand-written
//! edge cases: header blocks only, never a body.

use std::collections::BTreeMap;
use std::path::Path;

use kith_client::import::mail::{self, MAX_HEADER_BLOCK};
use kith_client::import::{ImportError, ImportOptions, ImportReport, ImportedContact, Provenance};
use kith_protocol::history::{self, sketch_count};
use kith_protocol::proto;

mod support;
use support::find;

const MARKER: &str = "CANARY-MAIL-BODY-51e0b2";
const ME: &str = "robin.quill@example.com";

fn fixture() -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mail/mail.mbox");
    std::fs::read(path).unwrap()
}

fn import(bytes: &[u8]) -> ImportReport {
    mail::import_bytes(bytes, &[ME.to_owned()], &ImportOptions::default()).unwrap()
}

fn history(contact: &ImportedContact) -> &proto::MailSource {
    match &contact.provenance {
        Provenance::Mail(m) => m,
        other => panic!("not a mail contact: {other:?}"),
    }
}

fn counts(contact: &ImportedContact) -> (u64, u64) {
    let h = history(contact);
    (
        h.sent.as_ref().map_or(0, sketch_count),
        h.received.as_ref().map_or(0, sketch_count),
    )
}

#[test]
fn the_takeout_mbox_gives_counts_dates_names_and_subjects() {
    let report = import(&fixture());
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    // 40 people the owner wrote to (computed independently from the file with Python's
    // `mailbox` and `email.utils`).
    let wrote_to: Vec<_> = report
        .contacts
        .iter()
        .filter(|c| !c.only_if_known)
        .collect();
    assert_eq!(wrote_to.len(), 40);
    assert_eq!(
        report.contacts.len(),
        40,
        "nobody here only wrote to the owner"
    );

    let aiko = find(&report, "aiko.nakamura1@example.org");
    assert_eq!(counts(aiko), (2, 1));
    assert_eq!(aiko.name.as_deref(), Some("Aiko Nakamura"));
    // Cc counts as writing to someone: the "Three of us" message.
    assert_eq!(counts(find(&report, "kwame.iyer2@example.org")), (2, 2));

    // RFC 2047 encoded words in a display name and in a subject.
    let kwame = find(&report, "kwame.lvarez5@example.org");
    assert_eq!(kwame.name.as_deref(), Some("Kwame Álvarez"));
    let anne = find(&report, "anne-marie.o-brien0@example.org");
    let subjects: Vec<&str> = history(anne)
        .recent
        .iter()
        .map(|s| s.subject.as_str())
        .collect();
    assert_eq!(subjects, ["Three of us", "Re: Café on Thursday #0"]);
    assert!(history(anne).recent.iter().all(|s| s.sent));
    // 2024-03-01T08:00:00Z and 2025-04-05T08:00:00Z.
    assert_eq!(history(anne).first_unix, 1_709_280_000);
    assert_eq!(history(anne).last_unix, 1_743_840_000);
    assert_eq!(counts(anne), (2, 0));
}

#[test]
fn the_owner_bulk_mail_and_no_reply_senders_are_not_contacts() {
    let report = import(&fixture());
    for address in [ME, "digest@news.example", "no-reply@shop.example"] {
        assert!(
            report.contacts.iter().all(|c| c.source_identity != address),
            "{address} became a contact"
        );
    }
}

#[test]
fn no_body_text_comes_out_and_bodies_change_nothing() {
    let original = fixture();
    let text = String::from_utf8(original.clone()).unwrap();
    assert_eq!(
        text.matches(MARKER).count(),
        106,
        "every body but the five receipts"
    );
    let report = import(&original);
    assert!(!format!("{report:?}").contains(MARKER));
    assert!(!format!("{report:?}").contains("private body"));

    // Rewrite every body (other text, other lengths, other line counts): the separator scan
    // is the only reader of body bytes, so nothing the import returns may change.
    let rewritten = text
        .replace(
            MARKER,
            "entirely different words\nand another line, longer than before",
        )
        .replace("private body", "x");
    assert_ne!(rewritten.as_bytes(), original.as_slice());
    assert_eq!(import(rewritten.as_bytes()), report);
}

#[test]
fn folded_headers_quoted_commas_groups_and_cc_are_parsed() {
    let mbox = "From x Mon Jan 01 00:00:00 2024\n\
Message-ID: <g1@x>\n\
Date: Mon, 01 Jan 2024 10:00:00 +0100\n\
From: Robin <Robin.Quill@Example.com>\n\
To: \"Doe, Jane\" <jane@x.org>,\n\
\tteam: ann@x.org, \"Bo, B.\" <bo@x.org>;,\n\
\x20undisclosed-recipients:;\n\
Cc: =?ISO-8859-1?Q?Ren=E9_Z?= <rene@x.org>, robin.quill@example.com\n\
Subject: =?UTF-8?Q?Caf=C3=A9?=\n\
\x20=?UTF-8?Q?_plans?=\n\
\n\
body\n";
    let report = import(mbox.as_bytes());
    let names: BTreeMap<&str, Option<&str>> = report
        .contacts
        .iter()
        .map(|c| (c.source_identity.as_str(), c.name.as_deref()))
        .collect();
    assert_eq!(
        names,
        BTreeMap::from([
            ("ann@x.org", None),
            ("bo@x.org", Some("Bo, B.")),
            ("jane@x.org", Some("Doe, Jane")),
            ("rene@x.org", Some("René Z")),
        ])
    );
    let jane = find(&report, "jane@x.org");
    assert_eq!(history(jane).recent[0].subject, "Café plans");
    // 10:00 at +01:00.
    assert_eq!(history(jane).first_unix, 1_704_099_600);
}

#[test]
fn people_who_only_wrote_are_recorded_only_on_known_contacts() {
    let mbox = "From a\nMessage-ID: <1@x>\nFrom: Stranger <s@x.org>\nTo: robin.quill@example.com\nSubject: hi\n\n\
From b\nMessage-ID: <2@x>\nFrom: Friend <f@x.org>\nTo: robin.quill@example.com\nSubject: hello\n\n\
From c\nMessage-ID: <3@x>\nFrom: robin.quill@example.com\nTo: f@x.org\nSubject: Re: hello\n\n";
    let report = import(mbox.as_bytes());
    let stranger = find(&report, "s@x.org");
    assert!(stranger.only_if_known);
    assert_eq!(counts(stranger), (0, 1));
    let friend = find(&report, "f@x.org");
    assert!(!friend.only_if_known);
    assert_eq!(counts(friend), (1, 1));
}

#[test]
fn bulk_markers_each_exclude_a_message() {
    for marker in [
        "List-Unsubscribe: <mailto:u@x>",
        "List-Id: <list.x>",
        "Precedence: bulk",
        "Precedence: list",
        "Auto-Submitted: auto-generated",
    ] {
        let mbox = format!("From a\nFrom: p@x.org\nTo: {ME}\n{marker}\n\nbody\n");
        assert!(import(mbox.as_bytes()).contacts.is_empty(), "{marker}");
    }
    let mbox = format!("From a\nFrom: p@x.org\nTo: {ME}\nAuto-Submitted: no\n\n");
    assert_eq!(import(mbox.as_bytes()).contacts.len(), 1);
}

#[test]
fn overlapping_mailboxes_join_to_what_the_whole_mailbox_gives() {
    let text = String::from_utf8(fixture()).unwrap();
    let starts: Vec<usize> = text.match_indices("\nFrom 1").map(|(i, _)| i + 1).collect();
    let first = &text[..starts[70]];
    let second = &text[starts[30]..];
    let whole = import(text.as_bytes());
    let a = import(first.as_bytes());
    let b = import(second.as_bytes());
    let mut joined: BTreeMap<String, proto::MailSource> = BTreeMap::new();
    for contact in a.contacts.iter().chain(&b.contacts) {
        let entry = joined.entry(contact.source_identity.clone()).or_default();
        *entry = history::join_mail(entry, history(contact));
    }
    let expected: BTreeMap<String, proto::MailSource> = whole
        .contacts
        .iter()
        .map(|c| (c.source_identity.clone(), history(c).clone()))
        .collect();
    assert_eq!(joined, expected, "messages in both halves count once");
}

#[test]
fn a_file_of_another_kind_is_one_clear_error() {
    let opts = ImportOptions::default();
    let me = [ME.to_owned()];
    for not_mbox in [
        &b"First Name,Last Name,URL\r\nAda,L,x\r\n"[..],
        b"BEGIN:VCALENDAR\r\n",
        b"{\"friends_v2\": []}",
    ] {
        assert!(matches!(
            mail::import_bytes(not_mbox, &me, &opts),
            Err(ImportError::WrongKind { .. })
        ));
    }
    assert!(matches!(
        mail::import_bytes(b"From a\n\n", &[], &opts),
        Err(ImportError::MissingOwner)
    ));
}

#[test]
fn oversized_header_blocks_and_files_are_bounded() {
    let mut mbox = format!("From a\nFrom: p@x.org\nTo: {ME}\nX-Long: ");
    mbox.push_str(&"a".repeat(MAX_HEADER_BLOCK));
    mbox.push_str(&format!(
        "\n\nbody\nFrom b\n\n\nFrom c\nFrom: q@x.org\nTo: {ME}\n\n"
    ));
    let report = import(mbox.as_bytes());
    assert_eq!(report.skipped.len(), 1);
    assert_eq!(report.skipped[0].line, 1);
    assert_eq!(report.contacts.len(), 1, "the message after it is read");
    // "From b" follows a non-empty body line: not a separator, so q is the second message.

    let opts = ImportOptions {
        max_stream_bytes: 100,
        ..ImportOptions::default()
    };
    assert!(matches!(
        mail::import_bytes(&fixture(), &[ME.to_owned()], &opts),
        Err(ImportError::TooLarge { .. })
    ));
}
