//! The Twitter/X archive importer against a real archive layout (every account invented):
//! follows only, never direct messages.

use std::io::Write as _;
use std::path::Path;

use kith_client::import::twitter;
use kith_client::import::{ImportError, ImportOptions, ImportReport, Provenance};
use kith_protocol::proto;

const MARKER: &str = "CANARY-DIRECT-MESSAGE-9d44";

fn fixture() -> Vec<u8> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/twitter/twitter-archive.zip");
    std::fs::read(path).unwrap()
}

fn import(bytes: &[u8]) -> ImportReport {
    twitter::import_bytes(bytes, &ImportOptions::default()).unwrap()
}

fn source(report: &ImportReport, id: &str) -> proto::TwitterSource {
    let contact = report
        .contacts
        .iter()
        .find(|c| c.source_identity == id)
        .unwrap_or_else(|| panic!("{id} missing"));
    match &contact.provenance {
        Provenance::Twitter(t) => t.clone(),
        other => panic!("{other:?}"),
    }
}

/// The members of the fixture, in order, with their bytes.
fn members() -> Vec<(String, Vec<u8>)> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(fixture())).unwrap();
    let mut out = Vec::new();
    for i in 0..archive.len() {
        let mut file = archive.by_index(i).unwrap();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut file, &mut bytes).unwrap();
        out.push((file.name().unwrap().into_owned(), bytes));
    }
    out
}

fn build(members: &[(String, Vec<u8>)], stored: bool) -> Vec<u8> {
    let mut bytes = Vec::new();
    {
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(&mut bytes));
        let method = if stored {
            zip::CompressionMethod::Stored
        } else {
            zip::CompressionMethod::Deflated
        };
        let options = zip::write::SimpleFileOptions::default().compression_method(method);
        for (name, content) in members {
            zip.start_file(name.as_str(), options).unwrap();
            zip.write_all(content).unwrap();
        }
        zip.finish().unwrap();
    }
    bytes
}

#[test]
fn mutual_follows_become_contacts_named_from_mentions() {
    let report = import(&fixture());
    let mutual: Vec<_> = report
        .contacts
        .iter()
        .filter(|c| !c.only_if_known)
        .collect();
    assert_eq!(
        mutual.len(),
        13,
        "13 ids are in both following.js and follower.js"
    );
    let bjorn = report
        .contacts
        .iter()
        .find(|c| c.source_identity == "1102947")
        .unwrap();
    assert_eq!(bjorn.name.as_deref(), Some("Björn Dubois"));
    assert_eq!(bjorn.handles[0].handle, "bj-rn_13");
    assert!(bjorn.identities().contains(&"twitter:1102947".to_owned()));
    let s = source(&report, "1102947");
    assert!(s.following && s.follower);
    // A mutual follow never mentioned keeps only its id.
    let quiet = source(&report, "1110866");
    assert_eq!(
        (quiet.screen_name.as_str(), quiet.display_name.as_str()),
        ("", "")
    );
}

#[test]
fn one_way_follows_are_recorded_only_on_known_contacts() {
    let report = import(&fixture());
    let one_way: Vec<_> = report.contacts.iter().filter(|c| c.only_if_known).collect();
    // 26 followed + 27 followers − 2 × 13 mutual.
    assert_eq!(one_way.len(), 27);
    for contact in one_way {
        let Provenance::Twitter(s) = &contact.provenance else {
            panic!()
        };
        assert!(s.following != s.follower);
    }
    assert!(
        report.contacts.iter().all(|c| c.source_identity != "1"),
        "the owner's own account"
    );
}

#[test]
fn direct_messages_are_never_opened() {
    let report = import(&fixture());
    assert!(!format!("{report:?}").contains(MARKER));
    // Corrupt every direct-message member (a stored member whose bytes are not what its CRC
    // says; reading it would fail): the import still succeeds, so it never read them.
    let mut parts = members();
    assert!(
        parts
            .iter()
            .any(|(n, b)| n.contains("direct-messages")
                && String::from_utf8_lossy(b).contains(MARKER))
    );
    for (name, bytes) in &mut parts {
        if name.contains("direct-message") {
            *bytes = MARKER.as_bytes().repeat(3);
        }
    }
    let mut archive = build(&parts, true);
    let mut corrupted = 0;
    while let Some(at) = archive
        .windows(MARKER.len())
        .position(|w| w == MARKER.as_bytes())
    {
        archive[at] ^= 0xff; // the member's CRC no longer matches
        corrupted += 1;
    }
    assert_eq!(corrupted, 6, "three markers in each of the two members");
    assert_eq!(import(&archive), report);
}

#[test]
fn archives_with_a_top_folder_and_split_parts_are_read() {
    let parts: Vec<(String, Vec<u8>)> = members()
        .into_iter()
        .map(|(name, bytes)| {
            let name = name.replace("data/following.js", "data/following-part1.js");
            (format!("twitter-2024-03-06/{name}"), bytes)
        })
        .collect();
    assert_eq!(import(&build(&parts, false)), import(&fixture()));
}

#[test]
fn a_file_of_another_kind_is_one_clear_error() {
    let opts = ImportOptions::default();
    let no_follows = build(
        &[(
            "data/account.js".into(),
            b"window.YTD.account.part0 = []".to_vec(),
        )],
        false,
    );
    let not_js = build(
        &[("data/following.js".into(), b"{\"not\": \"ytd\"}".to_vec())],
        false,
    );
    for bytes in [&b"not a zip"[..], &no_follows, &not_js] {
        assert!(matches!(
            twitter::import_bytes(bytes, &opts),
            Err(ImportError::WrongKind { .. })
        ));
    }
}

/// A malformed follow entry (an id that is a number, has a leading zero or is too long for an
/// id, an entry that is not an object, one under the other file's key) is skipped with its
/// position; the rest of the file imports.
#[test]
fn malformed_follow_entries_are_skipped_one_by_one() {
    let following = "window.YTD.following.part0 = [
      {\"following\": {\"accountId\": \"42\"}},
      {\"following\": {\"accountId\": 43}},
      {\"following\": {\"accountId\": \"044\"}},
      {\"following\": {\"accountId\": \"99999999999999999999\"}},
      \"not an entry\",
      {\"follower\": {\"accountId\": \"45\"}},
      {\"following\": {\"accountId\": \"46\", \"userLink\": \"https://twitter.com/intent/user?user_id=46\"}}
    ]";
    let follower = "window.YTD.follower.part0 = [
      {\"follower\": {\"accountId\": \"42\"}}, {\"follower\": {\"accountId\": \"46\"}}
    ]";
    let archive = build(
        &[
            ("data/following.js".into(), following.as_bytes().to_vec()),
            ("data/follower.js".into(), follower.as_bytes().to_vec()),
        ],
        false,
    );
    let report = import(&archive);
    let ids: Vec<&str> = report
        .contacts
        .iter()
        .map(|c| c.source_identity.as_str())
        .collect();
    assert_eq!(ids, ["42", "46"]);
    let skipped: Vec<usize> = report.skipped.iter().map(|s| s.line).collect();
    assert_eq!(skipped, [2, 3, 4, 5, 6]);
}
