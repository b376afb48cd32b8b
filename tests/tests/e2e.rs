//! End-to-end: real clients and a real relay over loopback QUIC.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kith_client::net::RelayTarget;
use kith_client::{ClientError, ContactFields, Device};
use kith_e2e::names;
use kith_relay::{Relay, RelayConfig, RelayHandle};
use tempfile::TempDir;

struct World {
    dir: TempDir,
    relay: Option<RelayHandle>,
    relay_dir: PathBuf,
}

impl World {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let relay_dir = dir.path().join("relay");
        let relay = Relay::start(RelayConfig::for_tests(&relay_dir))
            .await
            .unwrap();
        Self {
            dir,
            relay: Some(relay),
            relay_dir,
        }
    }

    fn target(&self) -> RelayTarget {
        let relay = self.relay.as_ref().unwrap();
        RelayTarget::pinned(
            relay.local_addr().to_string(),
            &hex::encode(relay.cert_sha256()),
        )
        .unwrap()
    }

    fn home(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    async fn first_device(&self, name: &str) -> (Device, String) {
        let (device, recovery) = Device::create(&self.home(name), self.target(), name, None)
            .await
            .unwrap();
        (device, recovery.0.to_string())
    }

    async fn link(&self, approver: &Device, name: &str) -> Device {
        kith_e2e::link(approver, &self.home(name), self.target(), name).await
    }

    /// Restarts the relay on the same data directory and port-independent pin.
    async fn restart_relay(&mut self) {
        let old = self.relay.take().unwrap();
        let addr = old.local_addr();
        old.shutdown().await.unwrap();
        // The old endpoint's socket is freed once its last connection handle drops.
        for attempt in 0.. {
            let mut config = RelayConfig::for_tests(&self.relay_dir);
            config.listen = addr;
            match Relay::start(config).await {
                Ok(relay) => {
                    self.relay = Some(relay);
                    break;
                }
                Err(_) if attempt < 50 => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => panic!("relay did not restart: {e}"),
            }
        }
    }
}

fn person(name: &str, email: &str) -> ContactFields {
    ContactFields {
        name: Some(name.into()),
        email: Some(email.into()),
        ..Default::default()
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(files_under(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// Every needle that appears in any file under `dir`.
fn plaintext_found(dir: &Path, needles: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for file in files_under(dir) {
        let bytes = std::fs::read(&file).unwrap_or_default();
        for needle in needles {
            if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                found.push(format!("{needle} in {}", file.display()));
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_and_three_devices_converge() {
    let world = World::new().await;
    let (a, _) = world.first_device("a").await;
    a.add_contact(&person("Ada Lovelace", "ada@example.com"))
        .await
        .unwrap();
    let b = world.link(&a, "b").await;
    b.add_contact(&person("Grace Hopper", "grace@example.com"))
        .await
        .unwrap();
    b.sync().await.unwrap();
    a.sync().await.unwrap();
    assert_eq!(names(&a), vec!["Ada Lovelace", "Grace Hopper"]);
    assert_eq!(names(&b), names(&a));

    let c = world.link(&a, "c").await;
    c.add_contact(&person("Alan Turing", "alan@example.com"))
        .await
        .unwrap();
    for device in [&c, &a, &b, &c] {
        device.sync().await.unwrap();
    }
    assert_eq!(
        names(&a),
        vec!["Ada Lovelace", "Alan Turing", "Grace Hopper"]
    );
    assert_eq!(names(&b), names(&a));
    assert_eq!(names(&c), names(&a));
    let mut device_names: Vec<String> = a.devices().unwrap().into_iter().map(|d| d.name).collect();
    device_names.sort();
    assert_eq!(
        device_names,
        ["a", "b", "c"],
        "linked devices carry the names they were given"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_outbox_is_pushed_in_frames_the_relay_accepts() {
    let world = World::new().await;
    let (a, _) = world.first_device("a").await;
    let b = world.link(&a, "b").await;
    // ~8,000 contacts seal into several envelopes of up to 512 KiB: more than one relay frame.
    let csv = kith_client::import::testing::generate_linkedin_csv(8_000);
    let report =
        kith_client::import::linkedin::import_bytes(csv.as_bytes(), &Default::default()).unwrap();
    let contacts = report.contacts.len();
    a.import(report).await.unwrap();
    let pushed = a.sync().await.unwrap().pushed;
    assert!(pushed >= 8, "{pushed} envelopes");
    b.sync().await.unwrap();
    assert_eq!(b.contacts().unwrap().len(), contacts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_offline_edits_converge_and_report_the_conflict() {
    let world = World::new().await;
    let (a, _) = world.first_device("a").await;
    let id = a
        .add_contact(&person("Ada Lovelace", "ada@example.com"))
        .await
        .unwrap();
    let b = world.link(&a, "b").await;
    // Both edit the same field without seeing each other, and add different e-mails.
    let company = |c: &str, e: &str| ContactFields {
        company: Some(c.into()),
        email: Some(e.into()),
        ..Default::default()
    };
    a.edit_contact(&id, &company("Analytical Engines", "ada@engines.example"))
        .await
        .unwrap();
    b.edit_contact(&id, &company("Difference Ltd", "ada@difference.example"))
        .await
        .unwrap();
    a.sync().await.unwrap();
    b.sync().await.unwrap();
    a.sync().await.unwrap();
    let on_a = a.contact(&id).unwrap();
    let on_b = b.contact(&id).unwrap();
    assert_eq!(on_a, on_b, "both devices converge on one state");
    assert_eq!(
        on_a.emails().len(),
        3,
        "set elements from both sides survive"
    );
    let conflicts_a = a.conflicts().unwrap();
    assert_eq!(conflicts_a, b.conflicts().unwrap());
    assert_eq!(conflicts_a.len(), 1, "{conflicts_a:?}");
    assert_eq!(conflicts_a[0].field, "company");
    assert_eq!(
        a.contact_conflicts(&id).unwrap(),
        conflicts_a,
        "one contact's conflicts, read from its records alone"
    );
    let other = a
        .add_contact(&person("Alan Turing", "alan@example.com"))
        .await
        .unwrap();
    assert!(a.contact_conflicts(&other).unwrap().is_empty());
    let mut both = [conflicts_a[0].winner.clone(), conflicts_a[0].other.clone()];
    both.sort();
    assert_eq!(
        both,
        [
            "Analytical Engines".to_string(),
            "Difference Ltd".to_string()
        ]
    );

    // Resolving writes a value that replaces both: the conflict clears everywhere.
    a.resolve_conflict(&id, "company", "Analytical Engines")
        .await
        .unwrap();
    a.sync().await.unwrap();
    b.sync().await.unwrap();
    assert!(a.conflicts().unwrap().is_empty());
    assert!(b.conflicts().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_device_can_neither_pull_nor_push_nor_read_new_writes() {
    let world = World::new().await;
    let (a, _) = world.first_device("a").await;
    a.add_contact(&person("Ada Lovelace", "ada@example.com"))
        .await
        .unwrap();
    let b = world.link(&a, "b").await;
    assert_eq!(names(&b), vec!["Ada Lovelace"]);
    let b_id = b.device_id();
    a.revoke(&b_id).await.unwrap();
    a.add_contact(&person("Secret Person", "secret@example.com"))
        .await
        .unwrap();
    a.sync().await.unwrap();

    // The relay refuses the revoked device.
    b.add_contact(&person("Mallory", "mallory@example.com"))
        .await
        .unwrap();
    let err = b.sync().await.unwrap_err();
    assert!(matches!(err, ClientError::Revoked), "{err}");
    assert_eq!(
        names(&b),
        vec!["Ada Lovelace", "Mallory"],
        "b keeps what it had, learns nothing new"
    );
    assert_eq!(names(&a), vec!["Ada Lovelace", "Secret Person"]);
    assert_eq!(a.devices().unwrap().len(), 1);

    // Even with the relay's cooperation, b holds no key for the new epoch: everything a writes
    // now is under an epoch b was never given.
    let a_epoch = a.current_epoch();
    assert!(a_epoch > b.current_epoch());
    assert!(!b.has_epoch(a_epoch));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_restores_every_contact_on_a_fresh_device() {
    let world = World::new().await;
    let (a, recovery_key) = world.first_device("a").await;
    for i in 0..25 {
        a.add_contact(&person(
            &format!("Person {i:02}"),
            &format!("p{i}@example.com"),
        ))
        .await
        .unwrap();
    }
    a.sync().await.unwrap();
    let expected = names(&a);
    drop(a);
    let restored = Device::recover(
        &world.home("restored"),
        world.target(),
        &recovery_key,
        "phone",
    )
    .await
    .unwrap();
    assert_eq!(names(&restored), expected);
    // The restored device is a full member: it writes and its writes sync.
    restored
        .add_contact(&person("After Restore", "after@example.com"))
        .await
        .unwrap();
    restored.sync().await.unwrap();

    let wrong = Device::recover(
        &world.home("wrong"),
        world.target(),
        "0000-0000-0000-0000-0000-0000-0000-0000",
        "x",
    )
    .await
    .unwrap_err();
    assert!(matches!(wrong, ClientError::RecoveryNotFound), "{wrong}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_the_relay_mid_sync_loses_nothing() {
    let mut world = World::new().await;
    let (a, _) = world.first_device("a").await;
    let b = world.link(&a, "b").await;
    for i in 0..50 {
        a.add_contact(&person(
            &format!("Before {i:02}"),
            &format!("b{i}@example.com"),
        ))
        .await
        .unwrap();
    }
    a.sync().await.unwrap();
    world.restart_relay().await;
    for i in 0..10 {
        a.add_contact(&person(
            &format!("After {i:02}"),
            &format!("a{i}@example.com"),
        ))
        .await
        .unwrap();
    }
    // The old connections are gone; the engine reconnects and retries.
    a.sync().await.unwrap();
    b.sync().await.unwrap();
    assert_eq!(b.contacts().unwrap().len(), 60);
    assert_eq!(names(&a), names(&b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_and_client_files_hold_no_plaintext_after_import_and_sync() {
    let world = World::new().await;
    let (a, _) = world.first_device("a").await;
    let csv = std::fs::read("../crates/client/tests/fixtures/linkedin/Connections.csv")
        .or_else(|_| std::fs::read("../../shared/fixtures/linkedin/Connections.csv"))
        .unwrap();
    let report = kith_client::import::linkedin::import_bytes(&csv, &Default::default()).unwrap();
    let mut needles: Vec<String> = Vec::new();
    for contact in &report.contacts {
        needles.extend(contact.name.iter().filter(|n| n.len() >= 6).cloned());
        needles.extend(contact.emails.iter().map(|e| e.address.clone()));
    }
    assert!(needles.len() > 10);
    let summary = a.import(report).await.unwrap();
    assert!(summary.added > 10);
    let b = world.link(&a, "b").await;
    a.add_contact(&ContactFields {
        name: Some("Zelda Phoneowner".into()),
        phone: Some("+1 415 555 0199".into()),
        note: Some("met at the harbour".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    a.sync().await.unwrap();
    b.sync().await.unwrap();
    assert_eq!(b.contacts().unwrap().len(), a.contacts().unwrap().len());
    needles.extend([
        "Zelda Phoneowner".into(),
        "+14155550199".into(),
        "met at the harbour".into(),
    ]);
    let needles: Vec<&str> = needles.iter().map(String::as_str).collect();

    // Flush everything to disk before scanning.
    a.store().flush().await.unwrap();
    b.store().flush().await.unwrap();
    let relay = world.relay.as_ref().unwrap();
    let _ = relay;
    assert_eq!(
        plaintext_found(&world.relay_dir, &needles),
        Vec::<String>::new()
    );
    assert_eq!(
        plaintext_found(&world.home("a"), &needles),
        Vec::<String>::new()
    );
    assert_eq!(
        plaintext_found(&world.home("b"), &needles),
        Vec::<String>::new()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_shrinks_relay_storage_and_late_devices_still_converge() {
    let world = World::new().await;
    let (a, _) = world.first_device("a").await;
    let b = world.link(&a, "b").await;
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(
            a.add_contact(&person(
                &format!("Person {i:02}"),
                &format!("p{i}@example.com"),
            ))
            .await
            .unwrap(),
        );
    }
    for round in 0..5 {
        for id in &ids {
            let fields = ContactFields {
                company: Some(format!("Company round {round}")),
                ..Default::default()
            };
            a.edit_contact(id, &fields).await.unwrap();
        }
    }
    // b writes one envelope of its own, which a merges before it compacts.
    b.add_contact(&person("Written On B", "b@example.com"))
        .await
        .unwrap();
    b.sync().await.unwrap();
    a.sync().await.unwrap();
    let envelopes_before = a.usage().await.unwrap().envelopes;
    let report = a.compact().await.unwrap();
    // The snapshot covers a's whole stream before it and b's one envelope.
    let mut expected = vec![(a.device_id(), envelopes_before - 1), (b.device_id(), 1)];
    expected.sort();
    assert_eq!(report.covers, expected);
    assert!(
        report.relay_bytes_after < report.relay_bytes_before,
        "{} -> {}",
        report.relay_bytes_before,
        report.relay_bytes_after
    );
    // b was offline across the compaction: it converges from the snapshot, and a's snapshot
    // vouching for b's stream and a's own later heads reports nothing as withheld.
    let report = b.sync().await.unwrap();
    assert!(report.withheld.is_empty(), "{report:?}");
    assert_eq!(names(&b), names(&a));
    assert_eq!(
        b.contact(&ids[7]).unwrap().company(),
        Some("Company round 4")
    );
    // A device linked after compaction converges too; b writes again after the snapshot, a
    // merges it and writes, and c, pulling both, finds nothing withheld.
    let c = world.link(&a, "c").await;
    assert_eq!(names(&c), names(&a));
    b.add_contact(&person("Later On B", "later@example.com"))
        .await
        .unwrap();
    b.sync().await.unwrap();
    a.add_contact(&person("Later On A", "later-a@example.com"))
        .await
        .unwrap();
    a.sync().await.unwrap();
    let report = c.sync().await.unwrap();
    assert!(report.withheld.is_empty(), "{report:?}");
    assert_eq!(names(&c), names(&a));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_are_idempotent_unify_across_sources_and_converge_across_devices() {
    use kith_client::import::{ImportOptions, linkedin, vcard};
    let world = World::new().await;
    let (a, _) = world.first_device("a").await;
    let b = world.link(&a, "b").await;
    let csv = "First Name,Last Name,URL,Email Address,Company,Position,Connected On\r\n\
        Ada,Lovelace,https://www.linkedin.com/in/ada-lovelace,ada@example.com,Engines,Analyst,12 Mar 2024\r\n\
        Alan,Turing,https://www.linkedin.com/in/alan-turing,,Bletchley,Cryptanalyst,01 Jan 2020\r\n";
    let card = "BEGIN:VCARD\r\nVERSION:3.0\r\nFN:Ada King\r\nEMAIL;type=INTERNET:ADA@example.com\r\n\
        TEL;type=CELL:+1 415 555 0100\r\nEND:VCARD\r\n";
    let options = ImportOptions::default();

    let first = a
        .import(linkedin::import_bytes(csv.as_bytes(), &options).unwrap())
        .await
        .unwrap();
    assert_eq!((first.added, first.updated, first.unchanged), (2, 0, 0));
    let again = a
        .import(linkedin::import_bytes(csv.as_bytes(), &options).unwrap())
        .await
        .unwrap();
    assert_eq!(
        (again.added, again.updated, again.unchanged),
        (0, 0, 2),
        "re-import changes nothing"
    );

    // The vCard shares Ada's e-mail (in another case): it joins her record, keeps both sources,
    // adds the phone, and does not overwrite the name she already has.
    let joined = a
        .import(vcard::import_bytes(card.as_bytes(), &options).unwrap())
        .await
        .unwrap();
    assert_eq!((joined.added, joined.updated), (0, 1));
    let contacts = a.contacts().unwrap();
    assert_eq!(contacts.len(), 2);
    let ada = contacts
        .iter()
        .find(|c| c.name() == Some("Ada Lovelace"))
        .unwrap();
    assert_eq!(ada.sources().len(), 2, "{:?}", ada.sources());
    assert_eq!(ada.phones()[0].e164, "+14155550100");

    // b imports the same LinkedIn export before syncing: the same record ids, one contact each.
    b.import(linkedin::import_bytes(csv.as_bytes(), &options).unwrap())
        .await
        .unwrap();
    let ids_b: Vec<_> = b.contacts().unwrap().iter().map(|c| c.id()).collect();
    let mut ids_a: Vec<_> = contacts.iter().map(|c| c.id()).collect();
    let mut ids_b_sorted = ids_b.clone();
    ids_a.sort();
    ids_b_sorted.sort();
    assert_eq!(
        ids_a, ids_b_sorted,
        "record ids derive from the source identity"
    );
    a.sync().await.unwrap();
    b.sync().await.unwrap();
    a.sync().await.unwrap();
    assert_eq!(b.contacts().unwrap().len(), 2);
    assert_eq!(a.contacts().unwrap(), b.contacts().unwrap());
}

/// An export read a row at a time (as the CLI reads LinkedIn exports, so that a file of any
/// size imports in the memory of one chunk) gives the same contacts as the whole file read at
/// once, although the streamed rows repeat connections the whole-file import folds together;
/// importing the stream again changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_import_gives_the_contacts_of_a_whole_file_import() {
    use kith_client::import::{ImportOptions, linkedin, testing::generate_linkedin_csv};
    let world = World::new().await;
    let (a, _) = world.first_device("a").await;
    let (b, _) = world.first_device("b").await;
    let options = ImportOptions::default();
    let csv = generate_linkedin_csv(5_000);
    let whole = linkedin::import_bytes(csv.as_bytes(), &options).unwrap();
    let people = whole.contacts.len();
    let summary = a.import(whole).await.unwrap();
    assert_eq!(summary.added, people);

    let mut rows = linkedin::Rows::new(csv.as_bytes(), &options).unwrap();
    let mut reported = Vec::new();
    let streamed = b
        .import_stream(rows.by_ref(), |done| reported.push(done))
        .await
        .unwrap();
    assert!(rows.finish().skipped.is_empty());
    assert_eq!(streamed.added, people, "{streamed:?}");
    assert_eq!(
        streamed.added + streamed.updated + streamed.unchanged,
        5_000,
        "every row is merged, repeated connections into their contact"
    );
    assert_eq!(reported.last(), Some(&5_000), "progress counts rows");
    let view = |device: &Device| {
        let mut contacts: Vec<_> = device
            .contacts()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c.name().map(str::to_string),
                    c.emails().to_vec(),
                    c.urls().to_vec(),
                    c.company().map(str::to_string),
                    c.title().map(str::to_string),
                )
            })
            .collect();
        contacts.sort_by(|x, y| format!("{x:?}").cmp(&format!("{y:?}")));
        contacts
    };
    assert_eq!(view(&a), view(&b));

    let again = b
        .import_stream(
            linkedin::Rows::new(csv.as_bytes(), &options).unwrap(),
            |_| {},
        )
        .await
        .unwrap();
    assert_eq!((again.added, again.updated), (0, 0), "{again:?}");
}

/// The fields a LinkedIn import writes, of every contact, sorted: what two imports of the same
/// rows must agree on.
fn imported_fields(device: &Device) -> Vec<String> {
    let mut contacts: Vec<String> = device
        .contacts()
        .unwrap()
        .iter()
        .map(|c| {
            format!(
                "{:?} {:?} {:?} {:?}",
                c.name(),
                c.emails(),
                c.urls(),
                c.company()
            )
        })
        .collect();
    contacts.sort();
    contacts
}

/// An import that stops part way (here the file cannot be read past row 4,500; a crash leaves
/// the same: the chunks committed before it) keeps what it committed, and running it again
/// completes it: the contacts are those of one uninterrupted import, nothing is added twice.
/// The first run starts on an empty store (records it has not loaded are known to be new, no
/// read); the second on a store that holds some (every record is read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_import_run_again_gives_the_contacts_of_one_import() {
    use kith_client::import::{
        FileKind, ImportError, ImportOptions, linkedin, testing::generate_linkedin_csv,
    };
    let world = World::new().await;
    let (a, _) = world.first_device("a").await;
    let (b, _) = world.first_device("b").await;
    let options = ImportOptions::default();
    let csv = generate_linkedin_csv(9_000);
    let whole = a
        .import_stream(
            linkedin::Rows::new(csv.as_bytes(), &options).unwrap(),
            |_| {},
        )
        .await
        .unwrap();

    let cut = linkedin::Rows::new(csv.as_bytes(), &options)
        .unwrap()
        .take(4_500)
        .chain(std::iter::once(Err(ImportError::Io {
            kind: FileKind::LinkedInConnections,
            source: std::io::Error::other("the disk went away"),
        })));
    assert!(b.import_stream(cut, |_| {}).await.is_err());
    let kept = b.contacts().unwrap().len();
    assert!(kept > 0 && kept < whole.added, "{kept} of {}", whole.added);

    let rest = b
        .import_stream(
            linkedin::Rows::new(csv.as_bytes(), &options).unwrap(),
            |_| {},
        )
        .await
        .unwrap();
    assert_eq!(rest.added, whole.added - kept, "{rest:?}");
    assert_eq!(imported_fields(&a), imported_fields(&b));
    let again = b
        .import_stream(
            linkedin::Rows::new(csv.as_bytes(), &options).unwrap(),
            |_| {},
        )
        .await
        .unwrap();
    assert_eq!((again.added, again.updated), (0, 0), "{again:?}");
}

/// An import commits its chunks in groups of about 16,000 records: a crash part way loses the
/// chunks merged since the last commit (here the import panics at row 21,000, after the first
/// group was committed and while the next one is held in memory), and running the import again
/// completes it: the contacts are those of one uninterrupted import, nothing is added twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_that_crashes_between_two_commits_is_completed_by_running_it_again() {
    use kith_client::import::{ImportOptions, linkedin, testing::generate_linkedin_csv};
    let world = World::new().await;
    let (a, _) = world.first_device("a").await;
    let (b, _) = world.first_device("b").await;
    let options = ImportOptions::default();
    let csv = generate_linkedin_csv(24_000);
    let import = |device: &Device| {
        let rows = linkedin::Rows::new(csv.as_bytes(), &options).unwrap();
        let device = device.clone();
        async move { device.import_stream(rows, |_| {}).await.unwrap() }
    };
    let whole = import(&a).await;

    let rows: Vec<_> = linkedin::Rows::new(csv.as_bytes(), &options)
        .unwrap()
        .take(21_000)
        .collect();
    let crashing = b.clone();
    let crashed = tokio::spawn(async move {
        let rows = rows
            .into_iter()
            .chain(std::iter::from_fn(|| panic!("the process dies here")));
        crashing.import_stream(rows, |_| {}).await
    })
    .await;
    assert!(crashed.unwrap_err().is_panic());
    // An empty import waits for the record lock, so for any write the crashed one had started.
    b.import_stream(std::iter::empty(), |_| {}).await.unwrap();
    let kept = b.contacts().unwrap().len();
    // Ten chunks of 2,000 rows (19,600 contacts: every 50th row repeats an earlier one) were
    // merged before the panic; the first group (the first nine chunks) was committed, the
    // tenth chunk only held in memory.
    assert!(kept > 0 && kept < 19_600, "{kept} of {}", whole.added);

    let rest = import(&b).await;
    assert_eq!(rest.added, whole.added - kept, "{rest:?}");
    assert_eq!(imported_fields(&a), imported_fields(&b));
    let again = import(&b).await;
    assert_eq!((again.added, again.updated), (0, 0), "{again:?}");
}

/// An import is written in chunks, each chunk's transaction running while the next is merged.
/// A person who appears again in the same chunk, in the very next chunk (whose predecessor may
/// still be in flight) or chunks later must still become one contact with everything from both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_import_joins_a_person_seen_again_in_any_later_chunk() {
    use kith_client::import::{ImportOptions, linkedin, testing::generate_linkedin_csv, vcard};
    let world = World::new().await;
    let (a, _) = world.first_device("a").await;
    let options = ImportOptions::default();
    let csv = generate_linkedin_csv(7_000);
    let mut report = linkedin::import_bytes(csv.as_bytes(), &options).unwrap();
    let people = report.contacts.len();
    assert!(people > 6_000, "{people}");
    // Every third generated connection has an e-mail address person-<hex row>@example.com.
    // Cards sharing the e-mails of rows 3, 6 and 9 (all in the first chunk of 2,000) go in
    // at the same chunk, the next chunk, and the fourth chunk.
    let card = |row: usize, phone: &str| {
        let text = format!(
            "BEGIN:VCARD\r\nVERSION:3.0\r\nFN:Card {row}\r\nEMAIL:person-{row:x}@example.com\r\nTEL:{phone}\r\nEND:VCARD\r\n"
        );
        vcard::import_bytes(text.as_bytes(), &options)
            .unwrap()
            .contacts
            .remove(0)
    };
    report.contacts.insert(6_500, card(9, "+1 415 555 0109"));
    report.contacts.insert(2_100, card(6, "+1 415 555 0106"));
    report.contacts.insert(1_500, card(3, "+1 415 555 0103"));

    let summary = a.import(report).await.unwrap();
    assert_eq!((summary.added, summary.updated), (people, 3), "{summary:?}");
    let contacts = a.contacts().unwrap();
    assert_eq!(contacts.len(), people);
    for (row, phone) in [
        (3, "+14155550103"),
        (6, "+14155550106"),
        (9, "+14155550109"),
    ] {
        let email = format!("person-{row:x}@example.com");
        let person = contacts
            .iter()
            .find(|c| c.emails().iter().any(|e| e.address == email))
            .unwrap();
        assert_eq!(
            person.sources().len(),
            2,
            "row {row}: {:?}",
            person.sources()
        );
        assert_eq!(person.phones().len(), 1, "row {row}");
        assert_eq!(person.phones()[0].e164, phone, "row {row}");
        assert!(
            !person.name().unwrap_or("").starts_with("Card"),
            "the LinkedIn name stays"
        );
    }

    // Everything it wrote is queued for the relay: a second device sees the same contacts.
    a.sync().await.unwrap();
    let b = world.link(&a, "b").await;
    b.sync().await.unwrap();
    assert_eq!(b.contacts().unwrap(), contacts);
}

/// The sample exports of issue 12 (copies under `crates/client/tests/fixtures`).
fn source_fixture(path: &str) -> Vec<u8> {
    std::fs::read(format!("../crates/client/tests/fixtures/{path}")).unwrap()
}

const OWNER: &str = "robin.quill@example.com";
/// 2026-01-01T00:00:00Z, after every event of the calendar fixture.
const CALENDAR_NOW: i64 = 1_767_225_600;

fn calendar_report() -> kith_client::import::ImportReport {
    kith_client::import::calendar::import_bytes(
        &source_fixture("calendar/calendar.ics"),
        &[],
        CALENDAR_NOW,
        &Default::default(),
    )
    .unwrap()
}

fn mail_report(mbox: &[u8]) -> kith_client::import::ImportReport {
    kith_client::import::mail::import_bytes(mbox, &[OWNER.to_owned()], &Default::default()).unwrap()
}

/// (sent, received) that a device shows for the contact holding `email`.
fn mail_counts(device: &Device, email: &str) -> (u64, u64) {
    use kith_protocol::contact::Source;
    use kith_protocol::history::sketch_count;
    let contact = device
        .contacts()
        .unwrap()
        .into_iter()
        .find(|c| c.emails().iter().any(|e| e.address == email))
        .unwrap_or_else(|| panic!("no contact has {email}"));
    contact
        .sources()
        .iter()
        .find_map(|s| match s {
            Source::Mail(m) => Some((
                m.sent.as_ref().map_or(0, sketch_count),
                m.received.as_ref().map_or(0, sketch_count),
            )),
            _ => None,
        })
        .unwrap_or_default()
}

/// Two devices import overlapping halves of one mailbox before either syncs: after syncing
/// both show the counts of the whole mailbox, each message counted once (the history fields
/// are joined, not last-writer-wins), and no conflict is reported for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_mailboxes_imported_on_two_devices_converge_on_their_union() {
    let world = World::new().await;
    let (a, _) = world.first_device("a").await;
    let b = world.link(&a, "b").await;
    let mbox = String::from_utf8(source_fixture("mail/mail.mbox")).unwrap();
    let starts: Vec<usize> = mbox.match_indices("\nFrom 1").map(|(i, _)| i + 1).collect();
    a.import(mail_report(&mbox.as_bytes()[..starts[70]]))
        .await
        .unwrap();
    b.import(mail_report(&mbox.as_bytes()[starts[30]..]))
        .await
        .unwrap();
    a.sync().await.unwrap();
    b.sync().await.unwrap();
    a.sync().await.unwrap();
    let whole = mail_report(mbox.as_bytes());
    assert_eq!(a.contacts().unwrap(), b.contacts().unwrap());
    for contact in &whole.contacts {
        let email = &contact.emails[0].address;
        let kith_client::import::Provenance::Mail(m) = &contact.provenance else {
            panic!()
        };
        let expected = (
            kith_protocol::history::sketch_count(m.sent.as_ref().unwrap()),
            kith_protocol::history::sketch_count(m.received.as_ref().unwrap()),
        );
        assert_eq!(mail_counts(&a, email), expected, "{email}");
    }
    assert_eq!(mail_counts(&a, "kwame.iyer2@example.org"), (2, 2));
    // Concurrent histories are joined, never reported as conflicts. (The two halves name
    // Anne-Marie differently, "O'Brien, Anne-Marie" in one To: header: that `name` conflict
    // is the ordinary last-writer-wins register at work.)
    let conflicts = a.conflicts().unwrap();
    assert!(
        conflicts.iter().all(|c| !c.field.starts_with("source/")),
        "{conflicts:?}"
    );
}

/// The same calendar imported on two devices gives each meeting once; an attendee whose
/// e-mail is on a LinkedIn contact joins that record; `kith meetings` lists the meetings and
/// reminds to take notes until a note is written; notes are searched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meetings_converge_join_existing_contacts_and_remind_to_take_notes() {
    use kith_client::import::linkedin;
    let world = World::new().await;
    let (a, _) = world.first_device("a").await;
    let b = world.link(&a, "b").await;
    let csv = "First Name,Last Name,URL,Email Address,Company,Position,Connected On\r\n\
        Anne-Marie,O'Brien,https://www.linkedin.com/in/amob,anne-marie.o-brien0@example.org,Hooli,CTO,12 Mar 2024\r\n";
    a.import(linkedin::import_bytes(csv.as_bytes(), &Default::default()).unwrap())
        .await
        .unwrap();
    let summary = a.import(calendar_report()).await.unwrap();
    assert_eq!((summary.added, summary.updated), (39, 1));
    // b imports the same two files: the identity rule gives it the same records. (Had b
    // imported only the calendar, its Anne-Marie would be a second record until records can
    // merge, issue 11.)
    b.import(linkedin::import_bytes(csv.as_bytes(), &Default::default()).unwrap())
        .await
        .unwrap();
    b.import(calendar_report()).await.unwrap();
    a.sync().await.unwrap();
    b.sync().await.unwrap();
    a.sync().await.unwrap();
    assert_eq!(a.contacts().unwrap(), b.contacts().unwrap());
    assert_eq!(a.contacts().unwrap().len(), 40);

    let anne = a.search("anne-marie").unwrap().into_iter().next().unwrap();
    assert_eq!(anne.name(), Some("Anne-Marie O'Brien"));
    assert_eq!(
        anne.sources().len(),
        2,
        "LinkedIn and calendar on one record"
    );

    let meetings = a.meetings(0).unwrap();
    let with_anne: Vec<_> = meetings
        .iter()
        .filter(|m| {
            m.participants
                .iter()
                .any(|p| p.record_id == Some(anne.id().to_hex()))
        })
        .collect();
    assert_eq!(with_anne.len(), 10, "one coffee and nine weekly 1:1s");
    assert!(with_anne.iter().all(|m| m.needs_notes));
    assert!(
        meetings
            .windows(2)
            .all(|w| w[0].start_unix >= w[1].start_unix)
    );
    assert!(a.meetings(1_741_000_000).unwrap().len() < meetings.len());

    a.edit_contact(
        &anne.id(),
        &ContactFields {
            note: Some("Wants the Lisbon numbers by Friday".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let after = a.meetings(0).unwrap();
    for m in after.iter().filter(|m| {
        m.participants
            .iter()
            .any(|p| p.record_id == Some(anne.id().to_hex()))
    }) {
        assert!(!m.needs_notes, "{} still asks for notes", m.title);
    }
    let found = a.search("lisbon NUMBERS").unwrap();
    assert_eq!(found.len(), 1, "notes are searched, ignoring case");
    assert_eq!(found[0].id(), anne.id());
}

/// Forgetting a source removes what it brought on every device; a re-import brings it back,
/// except for contacts deleted by hand, which stay deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgetting_a_source_and_reimporting_respects_deletions() {
    use kith_client::import::{Source, linkedin};
    let world = World::new().await;
    let (a, _) = world.first_device("a").await;
    let b = world.link(&a, "b").await;
    let csv = "First Name,Last Name,URL,Email Address,Company,Position,Connected On\r\n\
        Anne-Marie,O'Brien,https://www.linkedin.com/in/amob,anne-marie.o-brien0@example.org,Hooli,CTO,12 Mar 2024\r\n";
    a.import(linkedin::import_bytes(csv.as_bytes(), &Default::default()).unwrap())
        .await
        .unwrap();
    a.import(calendar_report()).await.unwrap();
    assert_eq!(a.contacts().unwrap().len(), 40);
    let (changed, emptied) = a.forget_source(Source::Calendar).await.unwrap();
    assert_eq!((changed, emptied), (40, 39));
    a.sync().await.unwrap();
    b.sync().await.unwrap();
    for device in [&a, &b] {
        let contacts = device.contacts().unwrap();
        assert_eq!(contacts.len(), 1);
        assert_eq!(contacts[0].sources().len(), 1, "LinkedIn stays");
    }

    a.import(calendar_report()).await.unwrap();
    assert_eq!(
        a.contacts().unwrap().len(),
        40,
        "a re-import brings the source back"
    );
    let aiko = a.search("aiko").unwrap().remove(0);
    a.delete_contact(&aiko.id()).await.unwrap();
    let again = a.import(calendar_report()).await.unwrap();
    assert_eq!(again.left_out, 1);
    assert!(
        a.search("aiko").unwrap().is_empty(),
        "deleted by hand stays deleted"
    );
}

/// Titles, subjects and participants of the new sources never reach the relay in plaintext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meeting_titles_and_mail_subjects_never_reach_the_relay_in_plaintext() {
    let world = World::new().await;
    let (a, _) = world.first_device("a").await;
    a.import(calendar_report()).await.unwrap();
    a.import(mail_report(&source_fixture("mail/mail.mbox")))
        .await
        .unwrap();
    a.sync().await.unwrap();
    a.store().flush().await.unwrap();
    let needles = [
        "Weekly 1:1",
        "Coffee with",
        "Three of us",
        "Contract, draft",
        "anne-marie.o-brien0@example.org",
        "kwame.iyer2",
    ];
    assert_eq!(
        plaintext_found(&world.relay_dir, &needles),
        Vec::<String>::new()
    );
    assert_eq!(
        plaintext_found(&world.home("a"), &needles),
        Vec::<String>::new()
    );
}

/// `kith sync` runs as a process that exits: unless the device closes its connection, the
/// relay holds it (about 57 KB) until its idle timeout, a minute per run (issue 22).
#[tokio::test]
async fn a_closed_device_leaves_no_connection_on_the_relay() {
    let world = World::new().await;
    let (a, _) = world.first_device("a").await;
    a.sync().await.unwrap();
    let relay = world.relay.as_ref().unwrap();
    assert!(relay.memory().connections >= 1, "{:?}", relay.memory());
    a.close().await;
    // The relay's idle timeout is a minute; the close must free the connection long before.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut counts = relay.memory();
    while (counts.connections > 0 || counts.quic_connections > 0)
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
        counts = relay.memory();
    }
    assert_eq!(counts.connections, 0, "{counts:?}");
    assert_eq!(counts.quic_connections, 0, "{counts:?}");
    // A closed device connects again when it next syncs.
    a.sync().await.unwrap();
}

/// The identity rule on pulled records (§8.4): most records a sync brings link to nothing and
/// are settled from the identity index alone; one that shares an e-mail with one local record
/// and a phone number with another must still join all three into one person, on both devices,
/// whichever device pulls first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pulled_contact_joins_the_local_contacts_it_shares_identifiers_with() {
    let world = World::new().await;
    let (a, _) = world.first_device("a").await;
    let b = world.link(&a, "b").await;
    // Written on each device before either syncs.
    a.add_contact(&ContactFields {
        name: Some("Ana García".into()),
        email: Some("ana@example.com".into()),
        phone: Some("+1 415 555 0100".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    for k in 0..40 {
        a.add_contact(&person(
            &format!("Someone {k}"),
            &format!("someone{k}@example.com"),
        ))
        .await
        .unwrap();
    }
    b.add_contact(&person("Ana", "ana@example.com"))
        .await
        .unwrap();
    b.add_contact(&ContactFields {
        name: Some("Ana (mobile)".into()),
        phone: Some("+14155550100".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    b.add_contact(&person("Bea", "bea@example.com"))
        .await
        .unwrap();

    a.sync().await.unwrap();
    b.sync().await.unwrap();
    a.sync().await.unwrap();
    b.sync().await.unwrap();

    let on_a = a.contacts().unwrap();
    assert_eq!(on_a.len(), 40 + 2, "{:?}", names(&a));
    assert_eq!(b.contacts().unwrap(), on_a);
    let ana: Vec<_> = on_a
        .iter()
        .filter(|c| c.emails().iter().any(|e| e.address == "ana@example.com"))
        .collect();
    assert_eq!(ana.len(), 1, "{:?}", names(&a));
    assert_eq!(ana[0].phones().len(), 1);
    assert_eq!(ana[0].phones()[0].e164, "+14155550100");
    for k in 0..40 {
        let email = format!("someone{k}@example.com");
        assert!(
            on_a.iter()
                .any(|c| c.emails().iter().any(|e| e.address == email))
        );
    }
}
