//! A home whose store was written by the previous release (sled) opens with this one: the
//! store is migrated once to SQLite, the sled files are kept as a backup, and nothing is lost:
//! contacts, operations still queued for the relay, the id order of new ones.
#![cfg(feature = "migrate-sled")]

use std::path::Path;

use kith_client::store::{LocalStore, TreeName, migrate};
use kith_client::{ContactFields, Device};

fn fields(name: &str) -> ContactFields {
    ContactFields {
        name: Some(name.into()),
        email: Some(format!(
            "{}@example.com",
            name.to_lowercase().replace(' ', ".")
        )),
        ..Default::default()
    }
}

/// Rewrites `<home>/store` as the previous release laid it out: one sled database in the
/// directory, a tree per name, each value exactly as sealed (the cipher and the associated
/// data did not change), pending keys from sled's id generator.
fn rewrite_as_sled(store: &LocalStore, dir: &Path) -> Vec<Vec<u8>> {
    let mut trees = Vec::new();
    for tree in TreeName::ALL {
        let rows: Vec<(Vec<u8>, Vec<u8>)> = store
            .keys(tree)
            .unwrap()
            .into_iter()
            .map(|key| {
                let sealed = store.get_sealed(tree, &key).unwrap().unwrap();
                (key, sealed)
            })
            .collect();
        trees.push((tree, rows));
    }
    std::fs::remove_dir_all(dir).unwrap();
    let db = sled::Config::new().path(dir).open().unwrap();
    let mut pending = Vec::new();
    for (tree, rows) in trees {
        let sled_tree = db.open_tree(tree.as_str()).unwrap();
        for (key, sealed) in rows {
            if tree == TreeName::Pending {
                pending.push(key.clone());
            }
            sled_tree.insert(key, sealed).unwrap();
        }
    }
    db.flush().unwrap();
    pending
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_of_the_previous_release_is_migrated_once_with_a_backup() {
    let dir = tempfile::tempdir().unwrap();
    let relay =
        kith_relay::Relay::start(kith_relay::RelayConfig::for_tests(dir.path().join("relay")))
            .await
            .unwrap();
    let target = kith_client::net::RelayTarget::pinned(
        relay.local_addr().to_string(),
        &hex::encode(relay.cert_sha256()),
    )
    .unwrap();
    let home = dir.path().join("home");
    let store_dir = home.join("store");
    let (device, _) = Device::create(&home, target, "laptop", None).await.unwrap();
    let ada = device.add_contact(&fields("Ada Lovelace")).await.unwrap();
    device.add_contact(&fields("Grace Hopper")).await.unwrap();
    device.sync().await.unwrap();
    // Queued, not yet pushed, when the old release stopped.
    device.add_contact(&fields("Alan Turing")).await.unwrap();
    device.delete_contact(&ada).await.unwrap();
    let before: Vec<_> = device.contacts().unwrap();
    assert_eq!(before.len(), 2);
    let pending_before = rewrite_as_sled(device.store(), &store_dir);
    assert_eq!(pending_before.len(), 2);
    drop(device);
    assert!(store_dir.join("db").is_file() && store_dir.join("conf").is_file());

    let device = Device::open(&home).unwrap();
    assert_eq!(device.contacts().unwrap(), before);
    assert_eq!(device.contact_count().unwrap(), 2);
    assert_eq!(
        device.store().keys(TreeName::Pending).unwrap(),
        pending_before
    );
    // The old files are kept beside the new store, and only there.
    let backup = migrate::backup_dir(&store_dir);
    assert!(backup.join("db").is_file() && backup.join("conf").is_file());
    assert!(!store_dir.join("db").exists() && !store_dir.join("conf").exists());
    assert!(store_dir.join(kith_client::store::DB_FILE).is_file());

    // New operations queue after the migrated ones, and everything reaches the relay once.
    device
        .add_contact(&fields("Katherine Johnson"))
        .await
        .unwrap();
    let pending = device.store().keys(TreeName::Pending).unwrap();
    assert_eq!(pending.len(), 3);
    assert!(pending[2] > pending_before[1], "a new operation sorts last");
    let report = device.sync().await.unwrap();
    assert_eq!(report.pushed, 1);
    assert!(device.store().is_empty(TreeName::Pending).unwrap());
    assert_eq!(device.unsent_for_tests().unwrap(), 0);
    drop(device);

    // Opening again migrates nothing and keeps the one backup as it was.
    let backup_files = std::fs::read_dir(&backup).unwrap().count();
    let device = Device::open(&home).unwrap();
    assert_eq!(device.contact_count().unwrap(), 3);
    assert_eq!(std::fs::read_dir(&backup).unwrap().count(), backup_files);
    relay.shutdown().await.unwrap();
}

#[test]
fn a_migration_interrupted_before_the_backup_finishes_on_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let key = kith_protocol::keys::SymmetricKey::from_slice(&[3; 32]).unwrap();
    let store_dir = dir.path().join("store");
    let store = LocalStore::open(&store_dir, &key).unwrap();
    store.put(TreeName::Meta, b"settings", b"{}").unwrap();
    drop(store);
    // As if the sled files had not been moved yet when the process died.
    std::fs::write(store_dir.join("conf"), b"segment_size: 524288").unwrap();
    std::fs::write(store_dir.join("db"), b"old").unwrap();
    let store = LocalStore::open(&store_dir, &key).unwrap();
    assert_eq!(
        store.get(TreeName::Meta, b"settings").unwrap().as_deref(),
        Some(&b"{}"[..])
    );
    let backup = migrate::backup_dir(&store_dir);
    assert_eq!(std::fs::read(backup.join("db")).unwrap(), b"old");
    assert!(!store_dir.join("db").exists());
}

#[test]
fn a_store_in_use_by_the_previous_release_is_not_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let key = kith_protocol::keys::SymmetricKey::from_slice(&[3; 32]).unwrap();
    let store_dir = dir.path().join("store");
    // An old `kith sync --watch` holds sled's lock on the directory.
    let old = sled::Config::new().path(&store_dir).open().unwrap();
    old.open_tree("meta").unwrap().insert(b"k", b"v").unwrap();
    old.flush().unwrap();
    let error = LocalStore::open(&store_dir, &key).unwrap_err();
    assert!(
        error.to_string().contains("in use by another process"),
        "{error}"
    );
    assert!(!store_dir.join(kith_client::store::DB_FILE).exists());
    drop(old);
    let store = LocalStore::open(&store_dir, &key).unwrap();
    assert!(store.get_sealed(TreeName::Meta, b"k").unwrap().is_some());
}
