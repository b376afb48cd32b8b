//! The relay holds nothing the devices cannot rebuild (issue 13): a relay restored from an
//! older copy of its data directory, or one whose data directory was wiped (certificate kept),
//! is detected by the devices on their next sync, reported precisely and healed from their
//! verified copies, and every device ends with every edit. Killing the relay with SIGKILL in
//! the middle of a heal loses nothing either. Healing relaxes no verification rule: a relay that
//! serves different bytes at a seq it once served is still reported as a fork.
//!
//! The relay runs in a child process (see [`RelayChild`]) so that it can be stopped, its data
//! directory copied, replaced or wiped, and started again on the same address, as an operator
//! does.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kith_client::{ClientError, ContactFields, Device, RelayHeal, StreamRestore, SyncReport};
use kith_e2e::names;
use kith_e2e::relay_child::RelayChild;

/// Not a test of its own: the relay process of the tests below (see [`RelayChild`]).
#[test]
#[ignore = "helper process of the heal tests"]
fn relay_process() {
    kith_e2e::relay_child::serve_if_asked();
}

fn person(name: &str) -> ContactFields {
    ContactFields {
        name: Some(name.into()),
        ..Default::default()
    }
}

fn noted(note: &str) -> ContactFields {
    ContactFields {
        note: Some(note.into()),
        ..Default::default()
    }
}

/// Copies a directory tree (an operator's backup of a stopped relay).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            copy_dir(&entry.path(), &target);
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target).unwrap();
        }
        // The control socket a killed relay left behind is not data.
    }
}

/// Puts `backup` in place of the relay's data directory.
fn restore(backup: &Path, relay_dir: &Path) {
    std::fs::remove_dir_all(relay_dir).unwrap();
    copy_dir(backup, relay_dir);
}

/// Syncs every device until a round changes nothing anywhere; returns each device's reports.
async fn converge(devices: &[&Device]) -> Vec<Vec<SyncReport>> {
    let mut reports: Vec<Vec<SyncReport>> = vec![Vec::new(); devices.len()];
    for _round in 0..4 {
        let mut quiet = true;
        for (i, device) in devices.iter().enumerate() {
            let report = device.sync().await.unwrap();
            if report.pushed > 0 || report.pulled > 0 || report.healed.is_some() {
                quiet = false;
            }
            reports[i].push(report);
        }
        if quiet {
            return reports;
        }
    }
    panic!("the devices did not converge: {reports:#?}");
}

/// Every device shows the same contacts, with the same fields.
fn assert_same_state(devices: &[&Device]) {
    let first = devices[0].export_vcard().unwrap();
    for device in &devices[1..] {
        assert_eq!(
            device.export_vcard().unwrap(),
            first,
            "{} and {} differ",
            devices[0].device_name(),
            device.device_name()
        );
    }
}

fn healed(reports: &[SyncReport]) -> Vec<RelayHeal> {
    reports.iter().filter_map(|r| r.healed.clone()).collect()
}

struct Relay {
    dir: PathBuf,
    child: Option<RelayChild>,
    addr: std::net::SocketAddr,
}

impl Relay {
    fn start(dir: PathBuf) -> Self {
        let child = RelayChild::start(&dir, None);
        Self {
            dir,
            addr: child.addr,
            child: Some(child),
        }
    }

    fn target(&self) -> kith_client::net::RelayTarget {
        self.child.as_ref().unwrap().target()
    }

    fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            child.kill_9();
        }
    }

    fn start_again(&mut self) {
        self.stop();
        self.child = Some(RelayChild::start(&self.dir, Some(self.addr)));
    }
}

/// An old copy of the data directory comes back while three devices hold newer state: new
/// contacts and edits on two devices, a revocation (new roster, epoch and account key) and a
/// compaction, all between the backup and the restore. The devices report what the relay lost,
/// restore it, and end with every edit; a contact added after the restore reaches every device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restoring_an_older_data_directory_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(dir.path().join("relay"));
    let target = relay.target();
    let (a, _) = Device::create(&dir.path().join("a"), target.clone(), "a", None)
        .await
        .unwrap();
    let b = kith_e2e::link(&a, &dir.path().join("b"), target.clone(), "b").await;
    let c = kith_e2e::link(&a, &dir.path().join("c"), target.clone(), "c").await;
    let d = kith_e2e::link(&a, &dir.path().join("d"), target.clone(), "d").await;
    let ada = a.add_contact(&person("Ada Lovelace")).await.unwrap();
    b.add_contact(&person("Grace Hopper")).await.unwrap();
    c.add_contact(&person("Carol Shaw")).await.unwrap();
    converge(&[&a, &b, &c, &d]).await;

    // The operator's backup (the relay is stopped for it).
    relay.stop();
    let backup = dir.path().join("backup");
    copy_dir(&relay.dir, &backup);
    relay.start_again();

    // Newer state: edits on a, b and d, a compaction by a, c revoked by a (new epoch and
    // account key), and more edits after that.
    for i in 0..5 {
        a.add_contact(&person(&format!("A after backup {i}")))
            .await
            .unwrap();
    }
    a.edit_contact(&ada, &noted("first programmer"))
        .await
        .unwrap();
    b.add_contact(&person("Barbara Liskov")).await.unwrap();
    d.add_contact(&person("Dorothy Vaughan")).await.unwrap();
    converge(&[&a, &b, &c, &d]).await;
    a.compact().await.unwrap();
    c.add_contact(&person("Written by c before its removal"))
        .await
        .unwrap();
    converge(&[&a, &b, &c, &d]).await;
    a.revoke(&c.device_id()).await.unwrap();
    a.add_contact(&person("Katherine Johnson")).await.unwrap();
    b.add_contact(&person("Margaret Hamilton")).await.unwrap();
    converge(&[&a, &b, &d]).await;
    let before_restore = names(&a);

    // The operator restores the old copy.
    relay.stop();
    restore(&backup, &relay.dir);
    relay.start_again();

    let reports = converge(&[&a, &b, &d]).await;
    let a_healed = healed(&reports[0]);
    let b_healed = healed(&reports[1]);
    let d_healed = healed(&reports[2]);
    // a saw it first: its own lost envelopes, the lost roster versions (c's removal), restored.
    let first = &a_healed[0];
    let (lost_from, lost_to) = first.lost_envelopes.expect("a lost envelopes");
    assert!(lost_from <= lost_to, "{first:?}");
    assert!(
        matches!(
            first.restored_by,
            Some(StreamRestore::FromLastSnapshot { .. })
        ),
        "a compacted after the backup: its stream restarts at its snapshot: {first:?}"
    );
    assert!(first.lost_roster_versions.is_some(), "{first:?}");
    assert!(first.sealed_keys_restored > 0, "{first:?}");
    assert!(first.recovery_bundle_restored, "{first:?}");
    let text = first.to_string();
    assert!(
        text.contains(&format!("seq {lost_from}\u{2013}{lost_to}")) && text.contains("roster"),
        "{text}"
    );
    // b and d lost their own envelopes too, restored byte for byte.
    for (name, heals) in [("b", &b_healed), ("d", &d_healed)] {
        assert!(
            heals.iter().any(|h| matches!(
                h.restored_by,
                Some(StreamRestore::ByteForByte { envelopes }) if envelopes > 0
            )),
            "{name}: {heals:?}"
        );
    }
    // The removed device's tail written after the backup is not an error, only reported.
    assert!(
        a_healed
            .iter()
            .chain(&b_healed)
            .chain(&d_healed)
            .flat_map(|h| &h.cut_removed_streams)
            .any(|cut| cut.device == c.device_id()),
        "{a_healed:?} {b_healed:?} {d_healed:?}"
    );

    assert_eq!(names(&a), before_restore);
    assert_same_state(&[&a, &b, &d]);
    assert_eq!(
        a.contact(&ada).unwrap().note(),
        Some("first programmer"),
        "an edit made after the backup survives"
    );

    // A contact added after the restore reaches every device, and a second sync heals nothing.
    b.add_contact(&person("Added after the restore"))
        .await
        .unwrap();
    let reports = converge(&[&a, &b, &d]).await;
    assert!(reports.iter().flatten().all(|r| r.healed.is_none()));
    assert!(names(&a).contains(&"Added after the restore".to_string()));
    assert_same_state(&[&a, &b, &d]);
    // The revoked device stays revoked on the restored relay.
    assert!(matches!(c.sync().await, Err(ClientError::Revoked)));

    // A device linked now receives everything through chain-verified streams.
    let e = kith_e2e::link(&a, &dir.path().join("e"), target, "e").await;
    converge(&[&a, &b, &d, &e]).await;
    assert_same_state(&[&a, &b, &d, &e]);
}

/// The relay loses its whole data directory (its certificate kept): the first device to sync
/// creates the account again from its verified roster and re-uploads; the others follow;
/// nothing is lost, and a device linked afterwards gets everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_relay_is_rebuilt_by_the_devices() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(dir.path().join("relay"));
    let target = relay.target();
    let (a, _) = Device::create(&dir.path().join("a"), target.clone(), "a", None)
        .await
        .unwrap();
    let b = kith_e2e::link(&a, &dir.path().join("b"), target.clone(), "b").await;
    let c = kith_e2e::link(&a, &dir.path().join("c"), target.clone(), "c").await;
    for i in 0..20 {
        a.add_contact(&person(&format!("A {i}"))).await.unwrap();
        b.add_contact(&person(&format!("B {i}"))).await.unwrap();
    }
    converge(&[&a, &b, &c]).await;
    a.revoke(&c.device_id()).await.unwrap();
    converge(&[&a, &b]).await;

    relay.stop();
    std::fs::remove_dir_all(relay.dir.join("db")).unwrap();
    relay.start_again();

    let reports = converge(&[&b, &a]).await;
    let b_healed = healed(&reports[0]);
    assert!(b_healed[0].account_recreated, "{b_healed:?}");
    assert_eq!(b_healed[0].lost_envelopes.map(|(from, _)| from), Some(1));
    assert!(b_healed[0].sealed_keys_restored > 0);
    let a_healed = healed(&reports[1]);
    assert!(!a_healed[0].account_recreated, "{a_healed:?}");
    assert_eq!(a_healed[0].lost_envelopes.map(|(from, _)| from), Some(1));
    assert_same_state(&[&a, &b]);
    assert_eq!(names(&a).len(), 40);

    let e = kith_e2e::link(&b, &dir.path().join("e"), target, "e").await;
    converge(&[&a, &b, &e]).await;
    assert_same_state(&[&a, &b, &e]);
    assert_eq!(names(&e).len(), 40);
    assert!(matches!(c.sync().await, Err(ClientError::Revoked)));
}

/// SIGKILL of the relay while a device re-uploads thousands of envelopes: the next sync finds
/// what is still missing and finishes the heal; nothing is stored twice and nothing forks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_relay_during_a_heal_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(dir.path().join("relay"));
    let target = relay.target();
    let (a, _) = Device::create(&dir.path().join("a"), target.clone(), "a", None)
        .await
        .unwrap();
    let b = kith_e2e::link(&a, &dir.path().join("b"), target.clone(), "b").await;
    converge(&[&a, &b]).await;
    relay.stop();
    let backup = dir.path().join("backup");
    copy_dir(&relay.dir, &backup);
    relay.start_again();
    // 1,500 envelopes of one contact each.
    for i in 0..1_500 {
        a.add_contact(&person(&format!("Contact {i:05}")))
            .await
            .unwrap();
        a.seal_pending_for_tests().unwrap();
    }
    converge(&[&a, &b]).await;
    let envelopes = a.usage().await.unwrap().envelopes;

    relay.stop();
    restore(&backup, &relay.dir);
    relay.start_again();
    // b reconnects (its old connection was reset by the restart); it has nothing to heal.
    b.sync().await.unwrap();
    let restored = b.usage().await.unwrap().envelopes;
    // Kill the relay once b, on its own connection, sees part of a's stream back.
    let healing = tokio::spawn({
        let a = a.clone();
        async move { a.sync().await }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(Instant::now() < deadline, "the heal made no progress");
        if healing.is_finished() {
            break;
        }
        if let Ok(usage) = b.usage().await
            && usage.envelopes > restored + 200
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    relay.stop();
    let interrupted = healing.await.unwrap();
    assert!(
        interrupted.is_err(),
        "the kill landed after the heal: {interrupted:?}"
    );
    relay.start_again();
    let reports = converge(&[&a, &b]).await;
    // The next sync found what was still missing and finished the heal.
    assert!(
        healed(&reports[0]).iter().any(|h| matches!(
            h.restored_by,
            Some(StreamRestore::ByteForByte { envelopes }) if envelopes > 0
        )),
        "{reports:?}"
    );
    assert_eq!(a.usage().await.unwrap().envelopes, envelopes);
    assert_same_state(&[&a, &b]);
    assert_eq!(names(&b).len(), 1_500);
}

/// Healing relaxes nothing: a device restored from an old copy of its own store writes other
/// envelopes at seqs the relay once served; a device that merged the originals reports a fork
/// naming that device, never a silent success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_bytes_at_a_served_seq_are_still_a_fork() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(dir.path().join("relay"));
    let target = relay.target();
    let a_home = dir.path().join("a");
    let (a, _) = Device::create(&a_home, target.clone(), "a", None)
        .await
        .unwrap();
    let b = kith_e2e::link(&a, &dir.path().join("b"), target.clone(), "b").await;
    a.add_contact(&person("Before the backups")).await.unwrap();
    converge(&[&a, &b]).await;
    // Back up the relay and a's own home (a closed).
    relay.stop();
    let backup = dir.path().join("backup");
    copy_dir(&relay.dir, &backup);
    a.close().await;
    drop(a);
    let a_backup = dir.path().join("a-backup");
    copy_dir(&a_home, &a_backup);
    relay.start_again();
    let a = Device::open(&a_home).unwrap();
    a.add_contact(&person("Original seq")).await.unwrap();
    converge(&[&a, &b]).await;
    a.close().await;
    drop(a);

    // Both come back from their old copies; the old a writes something else at the same seq.
    relay.stop();
    restore(&backup, &relay.dir);
    relay.start_again();
    std::fs::remove_dir_all(&a_home).unwrap();
    copy_dir(&a_backup, &a_home);
    let old_a = Device::open(&a_home).unwrap();
    old_a.add_contact(&person("Other bytes")).await.unwrap();
    old_a.sync().await.unwrap();
    old_a.add_contact(&person("And more")).await.unwrap();
    old_a.sync().await.unwrap();
    match b.sync().await {
        Err(ClientError::Stream(e)) => {
            let text = e.to_string();
            assert!(text.contains("fork"), "{text}");
            assert!(text.contains(&old_a.device_id().to_string()), "{text}");
        }
        other => panic!("expected a fork naming a, got {other:?}"),
    }
}

/// `kith relay move`: the account moves to a second relay; a device that can no longer reach
/// the first follows with `kith relay set` and heals its own stream there; a device linked on
/// the new relay gets every contact, and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_to_another_relay_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut old = Relay::start(dir.path().join("old"));
    let new = Relay::start(dir.path().join("new"));
    let (a, _) = Device::create(&dir.path().join("a"), old.target(), "a", None)
        .await
        .unwrap();
    let b = kith_e2e::link(&a, &dir.path().join("b"), old.target(), "b").await;
    for i in 0..10 {
        a.add_contact(&person(&format!("A {i}"))).await.unwrap();
        b.add_contact(&person(&format!("B {i}"))).await.unwrap();
    }
    converge(&[&a, &b]).await;
    // b writes once more and syncs it to the old relay only.
    b.add_contact(&person("B last on the old relay"))
        .await
        .unwrap();
    b.sync().await.unwrap();

    let heal = a.move_to_relay(new.target(), None).await.unwrap();
    assert!(heal.account_recreated, "{heal:?}");
    assert_eq!(a.relay(), new.target());
    old.stop();

    // b cannot reach the old relay any more; it is pointed at the new one.
    b.set_relay(new.target()).await.unwrap();
    assert_eq!(b.relay(), new.target());
    let reports = converge(&[&b, &a]).await;
    assert!(
        healed(&reports[0])
            .iter()
            .any(|h| h.lost_envelopes.is_some()),
        "b restores its own stream on the new relay: {reports:?}"
    );
    assert_same_state(&[&a, &b]);
    assert_eq!(names(&a).len(), 21);

    let c = kith_e2e::link(&a, &dir.path().join("c"), new.target(), "c").await;
    converge(&[&a, &b, &c]).await;
    assert_same_state(&[&a, &b, &c]);
    // Reopened, the devices remember the new relay.
    a.close().await;
    drop(a);
    let a = Device::open(&dir.path().join("a")).unwrap();
    assert_eq!(a.relay(), new.target());
}

/// `kith relay move` tells the other devices through the old relay (issue 13 item 4): the
/// mover leaves a signed, encrypted notice in its stream there; each other device reads it at
/// its next sync, follows to the new relay in the same sync (healing its own stream there), and
/// nothing is lost. The notice, re-uploaded to the new relay with the mover's stream, sends no
/// device anywhere from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_other_devices_follow_a_move_through_the_old_relay() {
    let dir = tempfile::tempdir().unwrap();
    let mut old = Relay::start(dir.path().join("old"));
    let new = Relay::start(dir.path().join("new"));
    let (a, _) = Device::create(&dir.path().join("a"), old.target(), "a", None)
        .await
        .unwrap();
    let b = kith_e2e::link(&a, &dir.path().join("b"), old.target(), "b").await;
    let c = kith_e2e::link(&a, &dir.path().join("c"), old.target(), "c").await;
    for (device, name) in [(&a, "A"), (&b, "B"), (&c, "C")] {
        for i in 0..5 {
            device
                .add_contact(&person(&format!("{name} {i}")))
                .await
                .unwrap();
        }
    }
    converge(&[&a, &b, &c]).await;
    // c writes once more, to the old relay only, before the move.
    c.add_contact(&person("C last on the old relay"))
        .await
        .unwrap();
    c.sync().await.unwrap();

    let heal = a.move_to_relay(new.target(), None).await.unwrap();
    assert!(heal.move_notice_left, "{heal:?}");
    assert!(heal.to_string().contains("notice"), "{heal}");
    // b writes before it hears of the move: that edit reaches the new relay too.
    b.add_contact(&person("B before following")).await.unwrap();
    for device in [&b, &c] {
        let report = device.sync().await.unwrap();
        let moved = report.relay_moved.expect("the sync reads the move notice");
        assert_eq!(moved.by, a.device_id());
        assert!(moved.followed);
        assert_eq!(device.relay(), new.target());
        // The next sync is with the new relay, and the notice there moves nobody.
        assert_eq!(device.sync().await.unwrap().relay_moved, None);
    }
    // The old relay is gone; everything reaches everyone on the new one.
    old.stop();
    a.add_contact(&person("A on the new relay")).await.unwrap();
    converge(&[&a, &b, &c]).await;
    assert_same_state(&[&a, &b, &c]);
    assert_eq!(names(&a).len(), 15 + 3);
    // A device linked on the new relay is sent nowhere by the notice in a's stream.
    let d = kith_e2e::link(&a, &dir.path().join("d"), new.target(), "d").await;
    assert_eq!(d.sync().await.unwrap().relay_moved, None);
    assert_eq!(d.relay(), new.target());
    assert_same_state(&[&a, &d]);
}

/// A device that missed the account's deletion does not bring it back: the relay remembers
/// the deleted account's id and refuses to create it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_account_is_not_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path().join("relay"));
    let (a, _) = Device::create(&dir.path().join("a"), relay.target(), "a", None)
        .await
        .unwrap();
    let b = kith_e2e::link(&a, &dir.path().join("b"), relay.target(), "b").await;
    b.add_contact(&person("Grace Hopper")).await.unwrap();
    converge(&[&a, &b]).await;
    a.delete_account().await.unwrap();
    b.add_contact(&person("Written after the deletion"))
        .await
        .unwrap();
    match b.sync().await {
        Err(ClientError::AccountDeleted) => {}
        other => panic!("expected the account to stay deleted, got {other:?}"),
    }
}

/// `kith-relay backup DIR` on a running relay while a device pushes: the copy is a data
/// directory the relay starts on (same certificate), and restored later, the devices heal it
/// and end with every edit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_online_backup_restores_and_heals() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(dir.path().join("relay"));
    let target = relay.target();
    let (a, _) = Device::create(&dir.path().join("a"), target.clone(), "a", None)
        .await
        .unwrap();
    let b = kith_e2e::link(&a, &dir.path().join("b"), target.clone(), "b").await;
    b.add_contact(&person("Before the backup")).await.unwrap();
    converge(&[&a, &b]).await;

    // a keeps pushing while the backup is taken.
    let pushing = tokio::spawn({
        let a = a.clone();
        async move {
            for i in 0..40 {
                a.add_contact(&person(&format!("During {i}")))
                    .await
                    .unwrap();
                a.sync().await.unwrap();
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let backup = dir.path().join("backup");
    kith_relay::control::request_backup(&relay.dir, &backup)
        .await
        .unwrap();
    pushing.await.unwrap();
    assert!(
        kith_relay::control::request_backup(&relay.dir, &backup)
            .await
            .unwrap_err()
            .contains("exists"),
        "a backup never overwrites"
    );
    b.add_contact(&person("After the backup")).await.unwrap();
    converge(&[&a, &b]).await;

    relay.stop();
    restore(&backup, &relay.dir);
    relay.start_again();
    assert_eq!(relay.target(), target, "the backup holds the certificate");
    converge(&[&a, &b]).await;
    assert_same_state(&[&a, &b]);
    assert_eq!(names(&a).len(), 42);
}

/// Measurement for BENCHMARKS.md (not a check: run with `--ignored --nocapture`): how long a
/// device takes to heal a relay that lost the last 10,000 envelopes of its stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement for BENCHMARKS.md"]
async fn measure_heal_of_10000_lost_envelopes() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(dir.path().join("relay"));
    let (a, _) = Device::create(&dir.path().join("a"), relay.target(), "a", None)
        .await
        .unwrap();
    relay.stop();
    let backup = dir.path().join("backup");
    copy_dir(&relay.dir, &backup);
    relay.start_again();
    for i in 0..10_000 {
        a.add_contact(&person(&format!("Contact {i:05}")))
            .await
            .unwrap();
        a.seal_pending_for_tests().unwrap();
    }
    a.sync().await.unwrap();
    relay.stop();
    restore(&backup, &relay.dir);
    relay.start_again();
    a.close().await;
    let started = Instant::now();
    let report = a.sync().await.unwrap();
    let took = started.elapsed();
    let healed = report.healed.unwrap();
    assert_eq!(healed.lost_envelopes, Some((1, 10_000)));
    println!("heal of 10,000 lost envelopes: {took:?} ({healed})");
}

/// Measurement for BENCHMARKS.md: rebuilding an account of 100,000 contacts on an empty relay
/// (same certificate), by the device that syncs first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement for BENCHMARKS.md"]
async fn measure_rebuild_of_100000_contacts() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(dir.path().join("relay"));
    let (a, _) = Device::create(&dir.path().join("a"), relay.target(), "a", None)
        .await
        .unwrap();
    let csv = kith_client::import::testing::generate_linkedin_csv(100_000);
    let report =
        kith_client::import::linkedin::import_bytes(csv.as_bytes(), &Default::default()).unwrap();
    a.import(report).await.unwrap();
    a.sync().await.unwrap();
    let contacts = a.contact_count().unwrap();
    relay.stop();
    std::fs::remove_dir_all(relay.dir.join("db")).unwrap();
    relay.start_again();
    a.close().await;
    let started = Instant::now();
    let report = a.sync().await.unwrap();
    let took = started.elapsed();
    let healed = report.healed.unwrap();
    assert!(healed.account_recreated);
    println!("rebuild of {contacts} contacts on an empty relay: {took:?} ({healed})");
}

/// What `kith sync` prints of a heal reads as a sentence for one envelope as for several.
#[test]
fn a_heal_is_reported_in_words_for_one_envelope_and_for_several() {
    let heal = |first, last, envelopes| RelayHeal {
        lost_envelopes: Some((first, last)),
        restored_by: Some(StreamRestore::ByteForByte { envelopes }),
        ..Default::default()
    };
    assert_eq!(
        heal(6, 6, 1).to_string(),
        "the relay lost 1 of this device's envelopes (seq 6); restored it byte for byte"
    );
    assert_eq!(
        heal(5, 7, 3).to_string(),
        "the relay lost 3 of this device's envelopes (seq 5\u{2013}7); restored them byte for byte"
    );
}
