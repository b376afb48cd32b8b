//! One person, one contact (issue 11; issue 19 items 2 and 3), acting as a person does with the
//! `kith` binary against a real relay on loopback: imports of several sources that settle,
//! an export imported again, a contact added by hand, merging by hand and undoing it, and a
//! merge made on one device showing on another.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

mod support;
use support::{TestRelay, kith, run, wait};

/// `kith --home HOME ARGS…`.
fn kith_args(home: &Path, args: &[&str]) -> Command {
    let mut command = kith(home);
    command.args(args);
    command
}

/// Runs `kith ARGS` in `home`, which must succeed; returns its standard output.
fn ok(home: &Path, args: &[&str]) -> String {
    let output = run(kith_args(home, args));
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "`kith {}` failed:\nstdout: {text}\nstderr: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    text
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn list(home: &Path) -> Vec<Value> {
    match json(&ok(home, &["contacts", "list", "--json"])) {
        Value::Array(items) => items,
        other => panic!("not an array: {other}"),
    }
}

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../client/tests/fixtures")
        .join(path)
}

fn path(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

fn init(home: &Path, relay: &TestRelay, name: &str) {
    let relay_args = relay.args();
    let mut args = vec!["init"];
    args.extend(relay_args.iter().map(String::as_str));
    args.extend(["--device-name", name]);
    ok(home, &args);
}

/// Every e-mail and phone held by more than one contact: none once the identity rule holds.
fn shared_identifiers(contacts: &[Value]) -> Vec<String> {
    let mut owners: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for contact in contacts {
        let id = contact["id"].as_str().expect("id").to_string();
        for email in contact["emails"].as_array().expect("emails") {
            let address = email["address"].as_str().expect("address").to_lowercase();
            owners
                .entry(format!("email {address}"))
                .or_default()
                .push(id.clone());
        }
        for phone in contact["phones"].as_array().expect("phones") {
            let number = phone["number"].as_str().expect("number").to_string();
            owners
                .entry(format!("phone {number}"))
                .or_default()
                .push(id.clone());
        }
    }
    owners
        .into_iter()
        .filter(|(_, ids)| {
            let mut ids = ids.clone();
            ids.dedup();
            ids.len() > 1
        })
        .map(|(what, ids)| format!("{what}: {ids:?}"))
        .collect()
}

/// The sync report's "pushed N envelope(s)".
fn pushed(sync_output: &str) -> String {
    sync_output
        .split("pushed ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_else(|| panic!("no pushed count in: {sync_output}"))
        .to_string()
}

#[test]
fn reimports_settle_and_an_exported_vcard_imported_again_adds_nothing() {
    let relay = TestRelay::start();
    let dir = tempfile::tempdir().expect("home");
    let home = dir.path().join("laptop");
    init(&home, &relay, "laptop");

    let vcard = fixture("vcard/contacts.vcf");
    let chat = fixture("imessage/chat.db");
    let address_book = fixture("imessage/AddressBook-v22.abcddb");
    let linkedin = fixture("linkedin/Connections.csv");
    let imports: [Vec<&str>; 3] = [
        vec!["import", "vcard", path(&vcard)],
        vec![
            "import",
            "imessage",
            path(&chat),
            "--address-book",
            path(&address_book),
        ],
        vec!["import", "linkedin", path(&linkedin)],
    ];
    for args in &imports {
        ok(&home, args);
    }
    ok(&home, &["sync"]);
    let before = list(&home);
    assert!(before.len() > 10, "{} contacts", before.len());
    assert_eq!(
        shared_identifiers(&before),
        Vec::<String>::new(),
        "no two contacts share an e-mail or phone number"
    );

    // A person imports the same files again, in another order, twice: nothing changes and
    // nothing is pushed.
    for round in 0..2 {
        for args in imports.iter().rev() {
            let report = ok(&home, args);
            assert!(
                report.contains(" 0 added, 0 updated"),
                "round {round}, `kith {}` changed something:\n{report}",
                args.join(" ")
            );
            assert!(!report.contains("merged with"), "{report}");
            let sync = ok(&home, &["sync"]);
            assert_eq!(pushed(&sync), "0 envelopes", "{sync}");
        }
    }
    assert_eq!(list(&home), before, "the contacts are as they were");

    // Exporting and importing the export again adds nothing and changes nothing.
    let export = dir.path().join("export.vcf");
    ok(&home, &["export", "vcard", path(&export)]);
    let report = ok(&home, &["import", "vcard", path(&export)]);
    assert!(
        report.contains(" 0 added, 0 updated"),
        "the round trip changed something:\n{report}"
    );
    assert_eq!(list(&home).len(), before.len());
    let sync = ok(&home, &["sync"]);
    assert_eq!(pushed(&sync), "0 envelopes", "{sync}");

    // A contact added by hand with the e-mail of an imported person is that person.
    let person = before
        .iter()
        .find(|c| !c["emails"].as_array().expect("emails").is_empty())
        .expect("an imported contact with an e-mail");
    let email = person["emails"][0]["address"].as_str().expect("address");
    let added = ok(
        &home,
        &[
            "contacts",
            "add",
            "--name",
            "Someone Typed By Hand",
            "--email",
            email,
        ],
    );
    assert!(added.contains("Added contact"), "{added}");
    let after = list(&home);
    assert_eq!(after.len(), before.len(), "no new contact: it merged");
    assert_eq!(shared_identifiers(&after), Vec::<String>::new());
    let found = json(&ok(
        &home,
        &["contacts", "search", "Typed By Hand", "--json"],
    ));
    let found = found.as_array().expect("array");
    assert_eq!(
        found.len(),
        1,
        "search finds the merged contact by its other name"
    );
    assert_eq!(
        found[0]["emails"][0]["address"], email,
        "the imported person, under the smaller of the two ids"
    );
    assert_eq!(
        found[0]["sources"], person["sources"],
        "every source of the imported person stays"
    );
}

#[test]
fn merging_by_hand_is_undone_by_unmerge_and_syncs_to_another_device() {
    let relay = TestRelay::start();
    let dir = tempfile::tempdir().expect("home");
    let home = dir.path().join("laptop");
    init(&home, &relay, "laptop");

    let id_of = |output: &str| -> String {
        output
            .split_whitespace()
            .find(|word| word.trim_end_matches('.').len() == 32)
            .map(|word| word.trim_end_matches('.').to_string())
            .unwrap_or_else(|| panic!("no id in {output}"))
    };
    let ana = id_of(&ok(
        &home,
        &[
            "contacts",
            "add",
            "--name",
            "Ana García",
            "--email",
            "ana@work.example",
        ],
    ));
    let ana2 = id_of(&ok(
        &home,
        &[
            "contacts",
            "add",
            "--name",
            "ana  garcia",
            "--phone",
            "+34 600 000 001",
        ],
    ));
    let bob = id_of(&ok(&home, &["contacts", "add", "--name", "Bob Stone"]));
    let robert = id_of(&ok(
        &home,
        &[
            "contacts",
            "add",
            "--name",
            "Robert Stone",
            "--company",
            "Quarry",
        ],
    ));
    assert_eq!(list(&home).len(), 4, "names alone never merge");

    // Duplicates are suggested, each with why.
    let suggestions = json(&ok(&home, &["contacts", "duplicates", "--json"]));
    let suggestions = suggestions.as_array().expect("array");
    assert_eq!(suggestions.len(), 2, "{suggestions:?}");
    let find = |id: &str| {
        suggestions
            .iter()
            .find(|s| {
                s["ids"]
                    .as_array()
                    .is_some_and(|ids| ids.iter().any(|i| i == id))
            })
            .unwrap_or_else(|| panic!("{id} not suggested: {suggestions:?}"))
    };
    assert!(find(&ana)["reason"].as_str().unwrap().contains("same name"));
    assert!(find(&ana2)["ids"].as_array().unwrap().len() == 2);
    assert!(
        find(&bob)["reason"]
            .as_str()
            .unwrap()
            .contains("bob / robert")
    );
    assert!(find(&robert)["ids"].as_array().unwrap().len() == 2);
    let text = ok(&home, &["contacts", "duplicates"]);
    assert!(
        text.contains("Ana García") && text.contains("Robert Stone"),
        "{text}"
    );

    // Merge the two Anas (by id prefixes, as people type them).
    let merged = ok(&home, &["contacts", "merge", &ana[..8], &ana2[..8]]);
    assert!(merged.contains("Merged 2 contacts"), "{merged}");
    let contacts = list(&home);
    assert_eq!(contacts.len(), 3);
    let survivor = if ana < ana2 { &ana } else { &ana2 };
    let one = contacts
        .iter()
        .find(|c| c["id"] == survivor.as_str())
        .expect("the merged contact under the smaller id");
    assert_eq!(one["emails"][0]["address"], "ana@work.example");
    assert_eq!(one["phones"][0]["number"], "+34600000001");
    let shown = ok(&home, &["contacts", "show", &ana2]);
    assert!(shown.contains("merged from 2 records"), "{shown}");
    for query in ["ana@work", "600000001"] {
        let found = json(&ok(&home, &["contacts", "search", query, "--json"]));
        assert_eq!(found.as_array().unwrap().len(), 1, "{query}: {found}");
    }
    let suggestions = json(&ok(&home, &["contacts", "duplicates", "--json"]));
    assert_eq!(
        suggestions.as_array().unwrap().len(),
        1,
        "only Bob/Robert is left"
    );

    // An edit of the merged contact after the merge.
    ok(&home, &["contacts", "edit", survivor, "--company", "Acme"]);

    // A second device sees one Ana after syncing.
    sync_counting(&home);
    let phone_home = dir.path().join("phone");
    link_device(&home, &phone_home, &relay);
    sync_counting(&phone_home);
    let on_phone = list(&phone_home);
    assert_eq!(on_phone.len(), 3, "{on_phone:?}");
    assert!(on_phone.iter().any(|c| c["id"] == survivor.as_str()
        && c["company"] == "Acme"
        && c["phones"][0]["number"] == "+34600000001"));

    // Unmerge on the phone; the laptop follows, and the identity rule does not merge them
    // again, even once they share a phone number.
    let out = ok(&phone_home, &["contacts", "unmerge", &ana2]);
    assert!(out.contains("Separated"), "{out}");
    assert_eq!(list(&phone_home).len(), 4);
    sync_counting(&phone_home);
    sync_counting(&home);
    let laptop = list(&home);
    assert_eq!(laptop.len(), 4, "{laptop:?}");
    let ana2_now = laptop
        .iter()
        .find(|c| c["id"] == ana2.as_str())
        .expect("ana2 again");
    assert_eq!(ana2_now["phones"][0]["number"], "+34600000001", "as it was");
    assert!(ana2_now["emails"].as_array().unwrap().is_empty());
    ok(
        &home,
        &["contacts", "edit", &ana, "--phone", "+34 600 000 001"],
    );
    assert_eq!(list(&home).len(), 4, "a pair separated by hand stays apart");
    let suggestions = json(&ok(&home, &["contacts", "duplicates", "--json"]));
    assert!(
        !suggestions.to_string().contains(&ana),
        "separated people are not suggested again: {suggestions}"
    );

    // Merging the name variants the suggestions offered.
    ok(&home, &["contacts", "merge", &bob, &robert]);
    assert_eq!(list(&home).len(), 3);
    sync_counting(&home);

    // Two devices each add the same person (by e-mail) without seeing each other: the sync
    // that brings them together merges them, and the other device follows.
    ok(&phone_home, &["sync"]);
    ok(
        &home,
        &[
            "contacts",
            "add",
            "--name",
            "Lin Wu",
            "--email",
            "lin@example.org",
        ],
    );
    ok(
        &phone_home,
        &[
            "contacts",
            "add",
            "--name",
            "Lin",
            "--email",
            "LIN@example.org",
            "--company",
            "Hooli",
        ],
    );
    ok(&phone_home, &["sync"]);
    sync_counting(&home);
    sync_counting(&phone_home);
    for device in [&home, &phone_home] {
        let lins = json(&ok(
            device,
            &["contacts", "search", "lin@example", "--json"],
        ));
        let lins = lins.as_array().expect("array");
        assert_eq!(lins.len(), 1, "{lins:?}");
        assert_eq!(lins[0]["company"], "Hooli");
        assert_eq!(list(device).len(), 4);
    }
}

/// Syncs `home` and checks that the count the sync reports ("… N contacts in all.") is the
/// number of contacts the list shows: a merged contact counts once.
fn sync_counting(home: &Path) {
    let out = ok(home, &["sync"]);
    let listed = list(home).len();
    let expected = if listed == 1 {
        "1 contact in all.".to_string()
    } else {
        format!("{listed} contacts in all.")
    };
    assert!(out.contains(&expected), "listed {listed}: {out}");
}

/// Links a new device in `new` to the account of `existing`, as a person does it.
fn link_device(existing: &Path, new: &Path, relay: &TestRelay) {
    use std::io::{BufRead, BufReader};
    let mut request = kith_args(
        new,
        &[
            "device",
            "request",
            "--device-name",
            "phone",
            "--timeout",
            "60",
        ],
    );
    request.args(relay.args());
    let mut child = request
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn device request");
    // Its first line is the link code; the rest is read as it comes.
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let code = lines
        .next()
        .expect("the link code first")
        .expect("read")
        .trim()
        .to_string();
    ok(existing, &["device", "approve", &code]);
    let rest = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
    let output = wait(child, "device request");
    let _ = rest.join();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
