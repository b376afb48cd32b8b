//! The calendar importer against a real Google Calendar export (every person invented) and
//! hand-written cases for what the export does not show: overrides, other zones, zips.

use std::io::Write as _;
use std::path::Path;

use kith_client::import::calendar;
use kith_client::import::{ImportError, ImportOptions, ImportReport, ImportedContact, Provenance};
use kith_protocol::history::sketch_count;
use kith_protocol::proto;

/// 2026-01-01T00:00:00Z: after every event of the fixture.
const NOW: i64 = 1_767_225_600;

fn fixture() -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/calendar/calendar.ics");
    std::fs::read(path).unwrap()
}

fn import_at(bytes: &[u8], me: &[&str], now: i64) -> ImportReport {
    let me: Vec<String> = me.iter().map(|m| (*m).to_owned()).collect();
    calendar::import_bytes(bytes, &me, now, &ImportOptions::default()).unwrap()
}

fn history(contact: &ImportedContact) -> &proto::CalendarSource {
    match &contact.provenance {
        Provenance::Calendar(c) => c,
        other => panic!("not a calendar contact: {other:?}"),
    }
}

/// The start times of `contact`'s recent meetings, earliest first.
fn sorted_starts(contact: &ImportedContact) -> Vec<i64> {
    let mut starts: Vec<i64> = history(contact)
        .recent
        .iter()
        .map(|m| m.start_unix)
        .collect();
    starts.sort();
    starts
}

fn find<'r>(report: &'r ImportReport, address: &str) -> Option<&'r ImportedContact> {
    report
        .contacts
        .iter()
        .find(|c| c.source_identity == address)
}

fn meetings(report: &ImportReport, address: &str) -> u64 {
    find(report, address)
        .map(|c| history(c).meetings.as_ref().map_or(0, sketch_count))
        .unwrap_or(0)
}

#[test]
fn the_google_export_gives_each_attendee_their_meetings() {
    let report = import_at(&fixture(), &[], NOW);
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    assert_eq!(report.contacts.len(), 40);
    // The owner (the calendar's own address, X-WR-CALNAME) and the room are not contacts.
    assert!(find(&report, "robin.quill@example.com").is_none());
    assert!(find(&report, "c_188a@resource.calendar.google.com").is_none());

    // One coffee plus the weekly 1:1: ten weeks, one of them an EXDATE.
    let anne = find(&report, "anne-marie.o-brien0@example.org").unwrap();
    assert_eq!(
        anne.name.as_deref(),
        Some("Anne-Marie O'Brien"),
        "quoted CN"
    );
    assert_eq!(meetings(&report, "anne-marie.o-brien0@example.org"), 10);
    let h = history(anne);
    assert_eq!(h.first_unix, 1_736_154_000, "2025-01-06 09:00");
    assert_eq!(
        h.last_unix, 1_741_597_200,
        "2025-03-10 09:00Z, the tenth week"
    );
    let weekly: Vec<i64> = h
        .recent
        .iter()
        .filter(|m| m.title == "Weekly 1:1")
        .map(|m| m.start_unix)
        .collect();
    assert_eq!(weekly.len(), 9);
    assert!(
        !weekly.contains(&(1_736_154_000 + 14 * 86_400)),
        "EXDATE 2025-01-20"
    );
    assert!(
        h.recent
            .iter()
            .any(|m| m.title == "Coffee with Anne-Marie, 1")
    );

    // A local time in summer: 14:00 in Lisbon is 13:00 UTC.
    let mei = find(&report, "mei.lvarez14@example.org").unwrap();
    assert!(
        history(mei)
            .recent
            .iter()
            .any(|m| m.start_unix == 1_744_635_600)
    );
    // A TZID time in winter: Lisbon is UTC.
    let coffee = h
        .recent
        .iter()
        .find(|m| m.title == "Coffee with Anne-Marie, 1")
        .unwrap();
    assert_eq!(
        (coffee.start_unix, coffee.end_unix),
        (1_736_154_000, 1_736_155_800)
    );
}

#[test]
fn cancelled_declined_and_rooms_are_not_meetings() {
    let report = import_at(&fixture(), &[], NOW);
    let titles = |address: &str| -> Vec<String> {
        find(&report, address)
            .map(|c| history(c).recent.iter().map(|m| m.title.clone()).collect())
            .unwrap_or_default()
    };
    assert!(!titles("aiko.nakamura1@example.org").contains(&"Cancelled sync".to_owned()));
    assert!(!titles("priya.nakamura4@example.org").contains(&"Planning".to_owned()));
    assert!(titles("kwame.tanaka3@example.org").contains(&"Planning".to_owned()));
    let kwame = find(&report, "kwame.iyer2@example.org").unwrap();
    let review = history(kwame)
        .recent
        .iter()
        .find(|m| m.title == "Design review")
        .unwrap();
    assert!(review.participants.is_empty(), "the room is no participant");
    assert!(!format!("{report:?}").contains("Holiday"));
    assert!(
        !format!("{report:?}").contains("Agenda for"),
        "descriptions are never kept"
    );
}

#[test]
fn occurrences_after_now_are_not_counted() {
    // 2025-02-01: the weekly 1:1 has met on Jan 6, 13 and 27 (20 is an EXDATE).
    let report = import_at(&fixture(), &[], 1_738_368_000);
    let anne = find(&report, "anne-marie.o-brien0@example.org").unwrap();
    let weekly = history(anne)
        .recent
        .iter()
        .filter(|m| m.title == "Weekly 1:1")
        .count();
    assert_eq!(weekly, 3);
}

#[test]
fn reimporting_gives_the_same_ids() {
    assert_eq!(
        import_at(&fixture(), &[], NOW),
        import_at(&fixture(), &[], NOW)
    );
}

fn ics(body: &str) -> Vec<u8> {
    format!("BEGIN:VCALENDAR\r\nVERSION:2.0\r\n{body}END:VCALENDAR\r\n").into_bytes()
}

const ME: &str = "me@x.org";

#[test]
fn overrides_move_retitle_or_cancel_one_occurrence() {
    let body = "BEGIN:VEVENT\r\nUID:s@x\r\nDTSTART:20250106T100000Z\r\nDURATION:PT30M\r\n\
RRULE:FREQ=DAILY;COUNT=4\r\nSUMMARY:Standup\r\nATTENDEE:mailto:me@x.org\r\nATTENDEE;CN=Ann:mailto:ann@x.org\r\nEND:VEVENT\r\n\
BEGIN:VEVENT\r\nUID:s@x\r\nRECURRENCE-ID:20250107T100000Z\r\nDTSTART:20250107T150000Z\r\nDTEND:20250107T153000Z\r\n\
SEQUENCE:1\r\nSUMMARY:Standup (moved)\r\nATTENDEE:mailto:me@x.org\r\nATTENDEE:mailto:ann@x.org\r\nEND:VEVENT\r\n\
BEGIN:VEVENT\r\nUID:s@x\r\nRECURRENCE-ID:20250108T100000Z\r\nDTSTART:20250108T100000Z\r\nSTATUS:CANCELLED\r\n\
ATTENDEE:mailto:ann@x.org\r\nEND:VEVENT\r\n";
    let report = import_at(&ics(body), &[ME], NOW);
    let ann = find(&report, "ann@x.org").unwrap();
    let mut seen: Vec<(i64, &str)> = history(ann)
        .recent
        .iter()
        .map(|m| (m.start_unix, m.title.as_str()))
        .collect();
    seen.sort();
    let day = 1_736_157_600; // 2025-01-06T10:00:00Z
    assert_eq!(
        seen,
        [
            (day, "Standup"),
            (day + 86_400 + 5 * 3600, "Standup (moved)"),
            (day + 3 * 86_400, "Standup"),
        ]
    );
    assert_eq!(meetings(&report, "ann@x.org"), 3);
    assert_eq!(
        history(ann).recent[0].end_unix - history(ann).recent[0].start_unix,
        1800
    );
}

#[test]
fn weekly_meetings_keep_their_local_time_across_daylight_saving() {
    let body = "BEGIN:VEVENT\r\nUID:w@x\r\nDTSTART;TZID=Europe/Berlin:20250320T090000\r\n\
RRULE:FREQ=WEEKLY;COUNT=3\r\nATTENDEE:mailto:ann@x.org\r\nEND:VEVENT\r\n";
    let report = import_at(&ics(body), &[ME], NOW);
    let starts = sorted_starts(&report.contacts[0]);
    // 09:00 CET (08:00Z) on Mar 20 and 27; summer time starts Mar 30, so 09:00 CEST (07:00Z)
    // on Apr 3.
    let mar20 = 1_742_457_600; // 2025-03-20T08:00:00Z
    assert_eq!(
        starts,
        [mar20, mar20 + 7 * 86_400, mar20 + 14 * 86_400 - 3600]
    );
}

#[test]
fn a_zone_iana_does_not_know_uses_the_files_vtimezone() {
    let body = "BEGIN:VTIMEZONE\r\nTZID:W. Europe Standard Time\r\n\
BEGIN:STANDARD\r\nDTSTART:16011028T030000\r\nRRULE:FREQ=YEARLY;BYDAY=-1SU;BYMONTH=10\r\nTZOFFSETFROM:+0200\r\nTZOFFSETTO:+0100\r\nEND:STANDARD\r\n\
BEGIN:DAYLIGHT\r\nDTSTART:16010325T020000\r\nRRULE:FREQ=YEARLY;BYDAY=-1SU;BYMONTH=3\r\nTZOFFSETFROM:+0100\r\nTZOFFSETTO:+0200\r\nEND:DAYLIGHT\r\n\
END:VTIMEZONE\r\n\
BEGIN:VEVENT\r\nUID:a@x\r\nDTSTART;TZID=W. Europe Standard Time:20250115T090000\r\nATTENDEE:mailto:ann@x.org\r\nEND:VEVENT\r\n\
BEGIN:VEVENT\r\nUID:b@x\r\nDTSTART;TZID=\"W. Europe Standard Time\":20250715T090000\r\nATTENDEE:mailto:ann@x.org\r\nEND:VEVENT\r\n";
    let report = import_at(&ics(body), &[ME], NOW);
    let starts = sorted_starts(&report.contacts[0]);
    // 2025-01-15T08:00:00Z and 2025-07-15T07:00:00Z.
    assert_eq!(starts, [1_736_928_000, 1_752_562_800]);
}

#[test]
fn the_owner_declining_removes_the_meeting_and_me_overrides_the_calendar_address() {
    let body = "BEGIN:VEVENT\r\nUID:d@x\r\nDTSTART:20250106T100000Z\r\n\
ATTENDEE;PARTSTAT=DECLINED:mailto:Me@X.org\r\nATTENDEE:mailto:ann@x.org\r\nEND:VEVENT\r\n\
BEGIN:VEVENT\r\nUID:e@x\r\nDTSTART:20250107T100000Z\r\nORGANIZER;CN=Bo:mailto:bo@x.org\r\n\
ATTENDEE:mailto:me@x.org\r\nATTENDEE:mailto:other-me@x.org\r\nEND:VEVENT\r\n";
    let report = import_at(&ics(body), &[ME, "other-me@x.org"], NOW);
    let found: Vec<&str> = report
        .contacts
        .iter()
        .map(|c| c.source_identity.as_str())
        .collect();
    assert_eq!(
        found,
        ["bo@x.org"],
        "the organizer counts; both of my addresses do not"
    );
    let opts = ImportOptions::default();
    assert!(matches!(
        calendar::import_bytes(&ics(body), &[], NOW, &opts),
        Err(ImportError::MissingOwner)
    ));
}

#[test]
fn a_takeout_zip_of_calendars_is_read() {
    let mut bytes = Vec::new();
    {
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(&mut bytes));
        let options = zip::write::SimpleFileOptions::default();
        zip.start_file("Takeout/Calendar/robin.quill@example.com.ics", options)
            .unwrap();
        zip.write_all(&fixture()).unwrap();
        zip.start_file("Takeout/Calendar/archive_browser.html", options)
            .unwrap();
        zip.write_all(b"<html>").unwrap();
        zip.finish().unwrap();
    }
    assert_eq!(import_at(&bytes, &[], NOW), import_at(&fixture(), &[], NOW));
}

#[test]
fn a_file_of_another_kind_is_one_clear_error() {
    let opts = ImportOptions::default();
    for not_ics in [
        &b"BEGIN:VCARD\r\nEND:VCARD\r\n"[..],
        b"From a\n",
        b"PK\x03\x04garbage",
        b"",
    ] {
        assert!(matches!(
            calendar::import_bytes(not_ics, &[], NOW, &opts),
            Err(ImportError::WrongKind { .. })
        ));
    }
}
