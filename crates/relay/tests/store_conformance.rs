//! One conformance suite for every [`Store`]: each check runs against sled and against
//! PostgreSQL (a throwaway cluster the test starts, see `common/pg.rs`), so a third store gets
//! them by adding one backend below. Checks that only a store shared by several relays must
//! pass (the compare-and-set on the stream head, rosters that only advance, changes heard by
//! the other relays) run for the backends that are shared.
//!
//! The relay-level fault-injection and crash tests run against both stores too
//! (`faults.rs`, `crash.rs`).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::pg::PgCluster;
use common::streams::{append_to, envelopes, meta_after, read_from};
use kith_protocol::ids::{AccountId, DeviceId};
use kith_protocol::proto;
use kith_relay::store::{
    AccountSettings, Exported, PostgresStore, ReadEnd, SledStore, Store, StoreChange, StoreError,
    StreamMeta,
};
use prost::Message;

const A: AccountId = AccountId::from_bytes([0xa1; 32]);
const B: AccountId = AccountId::from_bytes([0xb2; 32]);
const D: DeviceId = DeviceId::from_bytes([0xd3; 16]);
const E: DeviceId = DeviceId::from_bytes([0xe4; 16]);

/// Whether the raw storage holds some bytes anywhere.
type Holds = Box<dyn Fn(&[u8]) -> bool>;

/// A store under test: how to open it (again) on the same data, and how to look at its raw
/// storage.
struct Backend {
    name: &'static str,
    /// Opens the store on the backend's data, packing into values/rows of the given size.
    open: Box<dyn Fn(usize) -> Arc<dyn Store>>,
    /// Whether several relays may share it (the checked writes and `changes` must work).
    shared: bool,
    /// Whether the raw storage holds `bytes` anywhere (call with the store dropped).
    holds: Holds,
    _keep: Box<dyn std::any::Any>,
}

fn sled_backend() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let db = path.clone();
    Backend {
        name: "sled",
        open: Box::new(move |value_bytes| {
            Arc::new(SledStore::open(&db, 1 << 20, value_bytes).unwrap())
        }),
        shared: false,
        // Every live key and value of every tree (sled's own log keeps superseded versions
        // until it reclaims the segment), and every byte of the envelope log.
        holds: Box::new(move |bytes| {
            let db = sled::open(&path).unwrap();
            let in_trees = db.tree_names().into_iter().any(|name| {
                db.open_tree(name).unwrap().iter().any(|item| {
                    let (k, v) = item.unwrap();
                    k.windows(bytes.len()).any(|w| w == bytes)
                        || v.windows(bytes.len()).any(|w| w == bytes)
                })
            });
            in_trees || files_hold(&path.join("envelopes"), bytes)
        }),
        _keep: Box::new(dir),
    }
}

fn files_hold(dir: &std::path::Path, bytes: &[u8]) -> bool {
    std::fs::read_dir(dir).unwrap().any(|entry| {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_hold(&path, bytes)
        } else {
            std::fs::read(&path)
                .unwrap()
                .windows(bytes.len())
                .any(|w| w == bytes)
        }
    })
}

fn pg_backend() -> Option<Backend> {
    let cluster = PgCluster::shared()?;
    let url = cluster.database();
    let raw = url.clone();
    Some(Backend {
        name: "postgres",
        open: Box::new(move |value_bytes| {
            Arc::new(PostgresStore::open(&url, 2, value_bytes).unwrap())
        }),
        shared: true,
        holds: Box::new(move |bytes| {
            let mut client = postgres::Client::connect(&raw, postgres::NoTls).unwrap();
            let needle = hex::encode(bytes);
            client
                .query(
                    "SELECT tablename::text FROM pg_tables WHERE tablename LIKE 'kith_%'",
                    &[],
                )
                .unwrap()
                .iter()
                .map(|row| row.get::<_, String>(0))
                .any(|table| {
                    client
                        .query(&format!("SELECT t::text FROM {table} t"), &[])
                        .unwrap()
                        .iter()
                        .any(|row| row.get::<_, String>(0).contains(&needle))
                })
        }),
        _keep: Box::new(()),
    })
}

/// Runs each check against every backend (PostgreSQL unless it is not installed).
macro_rules! conformance {
    ($($check:ident),* $(,)?) => {
        mod sled_store {
            $( #[test] fn $check() { super::$check(&super::sled_backend()); } )*
        }
        mod postgres_store {
            $( #[test] fn $check() {
                let Some(backend) = super::pg_backend() else { return };
                super::$check(&backend);
            } )*
        }
    };
}

conformance!(
    reads_start_inside_packed_values_and_page,
    bounded_reads_stop_at_their_bound_and_page_over_many_rows,
    truncation_keeps_the_tail_of_a_straddling_value_across_a_reopen,
    stream_meta_survives_reopens_and_truncations,
    pairing_slots_are_put_once_taken_once_and_expire,
    tokens_are_single_use,
    recovery_bundles_belong_to_the_account_that_stored_them_first,
    sealed_keys_are_replaced_and_read_from_an_epoch_on,
    deleting_an_account_removes_every_row_of_it_and_nothing_else,
    a_second_create_of_the_same_account_is_refused,
    export_lists_everything_stored,
    pushes_compare_and_set_the_stream_head,
    rosters_only_advance_and_never_past_a_removed_streams_end,
    concurrent_writers_on_one_stream_never_both_win,
    other_instances_hear_pushes_roster_changes_and_deletions,
    push_targets_are_one_per_device_replaced_and_removed,
    account_settings_and_the_active_day_are_kept_per_account_and_deleted_with_it,
    account_ids_page_in_order_and_leave_deleted_accounts_out,
    registration_tokens_are_listed_until_consumed,
);

fn push_targets_are_one_per_device_replaced_and_removed(backend: &Backend) {
    let store = (backend.open)(0);
    assert!(store.create_account(&A, &roster(1)).unwrap());
    assert!(store.push_targets(&A).unwrap().is_empty());
    store.put_push_target(&A, &D, b"first").unwrap();
    store.put_push_target(&A, &E, b"other").unwrap();
    store.put_push_target(&A, &D, b"second").unwrap();
    let mut targets = store.push_targets(&A).unwrap();
    targets.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let expected = vec![(D, b"second".to_vec()), (E, b"other".to_vec())];
    assert_eq!(targets, expected, "one target per device, the latest");
    store.remove_push_target(&A, &D).unwrap();
    store.remove_push_target(&A, &D).unwrap();
    assert_eq!(
        store.push_targets(&A).unwrap(),
        vec![(E, b"other".to_vec())]
    );
    // Nothing of them stops a load.
    assert!(store.load_account(&A).unwrap().is_some());
}

/// Appends envelopes `from..from + n` of `account`'s stream of device D (stream from seq 1).
fn append(store: &dyn Store, account: &AccountId, from: u64, n: u64) {
    append_to(store, account, &D, from, n);
}

fn read(
    store: &dyn Store,
    account: &AccountId,
    after: u64,
    max: usize,
) -> (Vec<(u64, Vec<u8>)>, ReadEnd) {
    read_from(store, account, &D, after, max)
}

/// An encoded signed roster claiming `version` (the store does not verify signatures).
fn roster(version: u64) -> Vec<u8> {
    proto::SignedRoster {
        body: proto::RosterBody {
            version,
            ..Default::default()
        }
        .encode_to_vec(),
        ..Default::default()
    }
    .encode_to_vec()
}

fn reads_start_inside_packed_values_and_page(backend: &Backend) {
    for value_bytes in [0, 40, 1 << 20] {
        let store = (backend.open)(value_bytes);
        let account = AccountId::from_bytes([value_bytes.min(255) as u8 ^ 0x55; 32]);
        append(&*store, &account, 1, 5);
        append(&*store, &account, 6, 5);
        let (got, end) = read(&*store, &account, 3, 4);
        assert_eq!(
            got.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            vec![4, 5, 6, 7],
            "{}",
            backend.name
        );
        assert_eq!(got[0].1, envelopes(4, 1)[0]);
        assert_eq!(end, ReadEnd::More);
        let (got, end) = read(&*store, &account, 7, 100);
        assert_eq!(got, (8..=10).zip(envelopes(8, 3)).collect::<Vec<_>>());
        assert_eq!(end, ReadEnd::Complete);
        assert!(read(&*store, &account, 10, 100).0.is_empty());
        assert!(read(&*store, &account, u64::MAX, 100).0.is_empty());
    }
}

/// `read_stream_until` with a sink taking at most `max`.
fn read_until(
    store: &dyn Store,
    account: &AccountId,
    after: u64,
    until: u64,
    max: usize,
) -> (Vec<u64>, ReadEnd) {
    let mut out = Vec::new();
    let end = store
        .read_stream_until(account, &D, after, until, &mut |seq, e| {
            assert!(seq <= until, "offered {seq} past the bound {until}");
            assert_eq!(e.as_ref(), envelopes(seq, 1)[0].as_slice());
            if out.len() == max {
                return false;
            }
            out.push(seq);
            true
        })
        .unwrap();
    (out, end)
}

/// The pull path bounds each read by seq (the page's count, the servable end): nothing past
/// the bound is offered, a read that passed everything up to it is complete, and reads cross
/// more rows than one round trip fetches (one envelope per row with `value_bytes` 0).
fn bounded_reads_stop_at_their_bound_and_page_over_many_rows(backend: &Backend) {
    for value_bytes in [0, 40, 1 << 20] {
        let store = (backend.open)(value_bytes);
        let account = AccountId::from_bytes([value_bytes.min(255) as u8 ^ 0x3c; 32]);
        append(&*store, &account, 1, 5);
        append(&*store, &account, 6, 45);
        let name = format!("{} value_bytes {value_bytes}", backend.name);
        let (got, end) = read_until(&*store, &account, 3, 7, usize::MAX);
        assert_eq!((got, end), ((4..=7).collect(), ReadEnd::Complete), "{name}");
        let (got, end) = read_until(&*store, &account, 3, 7, 2);
        assert_eq!((got, end), (vec![4, 5], ReadEnd::More), "{name}");
        let (got, end) = read_until(&*store, &account, 0, 45, usize::MAX);
        assert_eq!(
            (got, end),
            ((1..=45).collect(), ReadEnd::Complete),
            "{name}"
        );
        let (got, end) = read_until(&*store, &account, 20, u64::MAX, usize::MAX);
        assert_eq!(
            (got, end),
            ((21..=50).collect(), ReadEnd::Complete),
            "{name}"
        );
        let (got, end) = read_until(&*store, &account, 0, 50, 50);
        assert_eq!(
            (got, end),
            ((1..=50).collect(), ReadEnd::Complete),
            "{name}"
        );
        let (got, end) = read_until(&*store, &account, 0, 50, 49);
        assert_eq!((got, end), ((1..=49).collect(), ReadEnd::More), "{name}");
        for (after, until) in [(7, 7), (9, 3), (50, 60), (u64::MAX, u64::MAX)] {
            let (got, end) = read_until(&*store, &account, after, until, usize::MAX);
            assert_eq!(
                (got, end),
                (vec![], ReadEnd::Complete),
                "{name} {after}..={until}"
            );
        }
        // The unbounded reads cross the same rows.
        let (got, end) = read(&*store, &account, 0, 1000);
        assert_eq!(
            got,
            (1..=50).zip(envelopes(1, 50)).collect::<Vec<_>>(),
            "{name}"
        );
        assert_eq!(end, ReadEnd::Complete);
        // From a cursor before the first stored envelope, a bound counts from it.
        store.truncate(&account, &D, 30).unwrap();
        let (got, end) = read_until(&*store, &account, 0, 32, usize::MAX);
        assert_eq!(
            (got, end),
            ((30..=32).collect(), ReadEnd::Complete),
            "{name}"
        );
    }
}

/// A PostgreSQL row whose seq range claims envelopes it does not hold (a damaged or
/// hand-edited database) ends a read with `Corrupt` instead of reading the same rows for ever.
#[test]
fn a_postgres_row_claiming_envelopes_it_lacks_is_corrupt_not_read_for_ever() {
    let Some(cluster) = PgCluster::shared() else {
        return;
    };
    let url = cluster.database();
    let store = PostgresStore::open(&url, 1, 0).unwrap();
    append(&store, &A, 1, 20);
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    client
        .execute("UPDATE kith_envelopes SET last_seq = 1000", &[])
        .unwrap();
    for until in [u64::MAX, 900] {
        let mut offered = Vec::new();
        let err = store
            .read_stream_until(&A, &D, 20, until, &mut |seq, _| {
                offered.push(seq);
                true
            })
            .unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
        assert!(offered.is_empty());
    }
}

fn truncation_keeps_the_tail_of_a_straddling_value_across_a_reopen(backend: &Backend) {
    {
        let store = (backend.open)(1 << 20);
        append(&*store, &A, 1, 10);
        let meta = store.truncate(&A, &D, 4).unwrap();
        assert_eq!(meta, meta_after(4, 10), "{}", backend.name);
        // Truncating below the first stored seq changes nothing.
        assert_eq!(store.truncate(&A, &D, 2).unwrap(), meta_after(4, 10));
        // A stream never written truncates to nothing.
        assert_eq!(store.truncate(&B, &E, 5).unwrap(), StreamMeta::default());
    }
    let store = (backend.open)(1 << 20);
    let (got, _) = read(&*store, &A, 0, 100);
    assert_eq!(got, (4..=10).zip(envelopes(4, 7)).collect::<Vec<_>>());
}

fn stream_meta_survives_reopens_and_truncations(backend: &Backend) {
    let loaded = |store: &dyn Store| store.load_account(&A).unwrap().unwrap().streams;
    {
        let store = (backend.open)(1 << 20);
        assert!(store.create_account(&A, &roster(1)).unwrap());
        append(&*store, &A, 1, 3);
        append(&*store, &A, 4, 3);
    }
    assert_eq!(
        loaded(&*(backend.open)(1 << 20)),
        vec![(D, meta_after(1, 6))]
    );
    {
        let store = (backend.open)(1 << 20);
        let truncated = store.truncate(&A, &D, 5).unwrap();
        assert_eq!(truncated, meta_after(5, 6));
        assert_eq!(loaded(&*store), vec![(D, truncated)]);
        let envs = envelopes(7, 2);
        let refs: Vec<&[u8]> = envs.iter().map(Vec::as_slice).collect();
        store.append(&A, &D, 7, &refs, &meta_after(5, 8)).unwrap();
    }
    let store = (backend.open)(1 << 20);
    assert_eq!(loaded(&*store), vec![(D, meta_after(5, 8))]);
    let stats = store.stats().unwrap();
    assert_eq!((stats.accounts, stats.streams, stats.envelopes), (1, 1, 4));
    assert_eq!(stats.envelope_bytes, meta_after(5, 8).bytes);
}

fn pairing_slots_are_put_once_taken_once_and_expire(backend: &Backend) {
    let store = (backend.open)(0);
    let slot = [9u8; 32];
    assert!(
        store
            .put_pairing_slot(&slot, &A, 100, b"bundle", 10)
            .unwrap()
    );
    assert!(
        !store
            .put_pairing_slot(&slot, &A, 100, b"other", 10)
            .unwrap()
    );
    assert_eq!(store.count_pairing_slots(&A, 10).unwrap(), 1);
    assert_eq!(
        store.take_pairing_slot(&slot, 20).unwrap().as_deref(),
        Some(&b"bundle"[..])
    );
    assert_eq!(store.take_pairing_slot(&slot, 20).unwrap(), None);
    assert!(
        store
            .put_pairing_slot(&slot, &A, 100, b"bundle", 10)
            .unwrap()
    );
    assert_eq!(
        store.take_pairing_slot(&slot, 100).unwrap(),
        None,
        "expired"
    );
    assert!(
        store
            .put_pairing_slot(&slot, &A, 100, b"bundle", 10)
            .unwrap()
    );
    // An expired slot may be put again.
    assert!(
        store
            .put_pairing_slot(&slot, &B, 300, b"again", 150)
            .unwrap()
    );
    assert_eq!(store.count_pairing_slots(&A, 150).unwrap(), 0);
    assert_eq!(store.count_pairing_slots(&B, 150).unwrap(), 1);
    assert_eq!(store.expire_pairing_slots(400).unwrap(), 1);
    assert_eq!(store.count_pairing_slots(&B, 0).unwrap(), 0);
    assert_eq!(store.stats().unwrap().pairing_slots, 0);
}

fn tokens_are_single_use(backend: &Backend) {
    let store = (backend.open)(0);
    store.add_registration_token(&[5; 32]).unwrap();
    assert_eq!(store.stats().unwrap().registration_tokens, 1);
    assert!(store.consume_registration_token(&[5; 32]).unwrap());
    assert!(!store.consume_registration_token(&[5; 32]).unwrap());
    assert!(!store.consume_registration_token(&[6; 32]).unwrap());
}

fn recovery_bundles_belong_to_the_account_that_stored_them_first(backend: &Backend) {
    let store = (backend.open)(0);
    assert!(store.put_recovery_bundle(&[1; 32], &A, b"a1").unwrap());
    assert!(
        !store.put_recovery_bundle(&[1; 32], &B, b"b1").unwrap(),
        "A's lookup id"
    );
    assert_eq!(
        store.recovery_bundle(&[1; 32]).unwrap(),
        Some((A, b"a1".to_vec()))
    );
    // A new lookup id replaces the account's earlier entry.
    assert!(store.put_recovery_bundle(&[2; 32], &A, b"a2").unwrap());
    assert_eq!(store.recovery_bundle(&[1; 32]).unwrap(), None);
    assert_eq!(
        store.recovery_bundle(&[2; 32]).unwrap(),
        Some((A, b"a2".to_vec()))
    );
    // The freed id may now be B's.
    assert!(store.put_recovery_bundle(&[1; 32], &B, b"b1").unwrap());
    assert!(
        store.put_recovery_bundle(&[1; 32], &B, b"b2").unwrap(),
        "replaced in place"
    );
    assert_eq!(
        store.recovery_bundle(&[1; 32]).unwrap(),
        Some((B, b"b2".to_vec()))
    );
    assert_eq!(store.stats().unwrap().recovery_bundles, 2);
}

fn sealed_keys_are_replaced_and_read_from_an_epoch_on(backend: &Backend) {
    let store = (backend.open)(0);
    assert!(store.create_account(&A, &roster(1)).unwrap());
    for epoch in [3u64, 1, 2, u64::MAX, 1 << 63] {
        assert_eq!(
            store
                .put_sealed_key(&A, &D, epoch, format!("k{epoch}").as_bytes())
                .unwrap(),
            0
        );
    }
    assert_eq!(store.put_sealed_key(&A, &D, 2, b"longer-k2").unwrap(), 2);
    let keys = store.sealed_keys(&A, &D, 2).unwrap();
    let expected: Vec<Vec<u8>> = vec![
        b"longer-k2".to_vec(),
        b"k3".to_vec(),
        format!("k{}", 1u64 << 63).into_bytes(),
        format!("k{}", u64::MAX).into_bytes(),
    ];
    assert_eq!(keys, expected, "{}", backend.name);
    assert!(store.sealed_keys(&A, &E, 0).unwrap().is_empty());
    let total: u64 = [b"k1".len(), 9, 2].iter().map(|n| *n as u64).sum::<u64>()
        + expected[2].len() as u64
        + expected[3].len() as u64;
    assert_eq!(
        store.load_account(&A).unwrap().unwrap().sealed_key_bytes,
        total
    );
}

fn deleting_an_account_removes_every_row_of_it_and_nothing_else(backend: &Backend) {
    // A marker in A's envelopes, keys and bundles: nothing of it may remain anywhere.
    let marker = [0x5au8; 40];
    {
        let store = (backend.open)(64);
        for (account, byte) in [(&A, 1u8), (&B, 2u8)] {
            assert!(store.create_account(account, &roster(1)).unwrap());
            let mine = if *account == A {
                marker.to_vec()
            } else {
                vec![0x77; 40]
            };
            let refs: Vec<&[u8]> = vec![&mine; 20];
            let meta = StreamMeta {
                first_seq: 1,
                last_seq: 20,
                bytes: 800,
                envelopes: 20,
            };
            store.append(account, &D, 1, &refs, &meta).unwrap();
            store.put_sealed_key(account, &E, 1, &mine).unwrap();
            store
                .put_pairing_slot(&[byte; 32], account, u64::MAX >> 2, &mine, 0)
                .unwrap();
            store
                .put_recovery_bundle(&[byte + 10; 32], account, &mine)
                .unwrap();
            store.put_push_target(account, &D, &mine).unwrap();
        }
        store.delete_account(&A).unwrap();
        assert!(store.push_targets(&A).unwrap().is_empty());
        assert_eq!(store.push_targets(&B).unwrap(), vec![(D, vec![0x77; 40])]);
        assert!(store.load_account(&A).unwrap().is_none());
        assert!(store.take_pairing_slot(&[1; 32], 0).unwrap().is_none());
        assert!(store.recovery_bundle(&[11; 32]).unwrap().is_none());
        assert!(store.sealed_keys(&A, &E, 0).unwrap().is_empty());
        assert_eq!(read(&*store, &A, 0, 100).0, vec![]);
        let b = store.load_account(&B).unwrap().unwrap();
        assert_eq!(b.streams.len(), 1);
        assert_eq!(read(&*store, &B, 0, 100).0.len(), 20);
        assert!(store.recovery_bundle(&[12; 32]).unwrap().is_some());
        assert_eq!(store.count_pairing_slots(&B, 0).unwrap(), 1);
        // Make what was written reach the files before looking at them.
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(store.flush())
            .unwrap();
    }
    assert!(
        !(backend.holds)(A.as_bytes()),
        "{}: A's id remains",
        backend.name
    );
    assert!(
        !(backend.holds)(&marker),
        "{}: A's data remains",
        backend.name
    );
    assert!(
        (backend.holds)(B.as_bytes()),
        "{}: B's id is stored",
        backend.name
    );
}

fn a_second_create_of_the_same_account_is_refused(backend: &Backend) {
    let store = (backend.open)(0);
    assert!(store.create_account(&A, &roster(1)).unwrap());
    assert!(!store.create_account(&A, &roster(2)).unwrap());
    assert_eq!(store.load_account(&A).unwrap().unwrap().roster, roster(1));
}

fn export_lists_everything_stored(backend: &Backend) {
    let store = (backend.open)(0);
    assert!(store.create_account(&A, &roster(3)).unwrap());
    append(&*store, &A, 1, 4);
    store.put_sealed_key(&A, &E, 7, b"sealed").unwrap();
    store
        .put_pairing_slot(&[4; 32], &A, 99, b"slot", 0)
        .unwrap();
    store.put_recovery_bundle(&[5; 32], &A, b"rb").unwrap();
    store.add_registration_token(&[6; 32]).unwrap();
    let mut items = Vec::new();
    store
        .export(&mut |item| {
            items.push(item);
            Ok(())
        })
        .unwrap();
    let expected = vec![
        Exported::Account {
            account: A,
            roster: roster(3),
        },
        Exported::Stream {
            account: A,
            device: D,
            meta: meta_after(1, 4),
        },
        Exported::SealedKey {
            account: A,
            device: E,
            epoch: 7,
            sealed: b"sealed".to_vec(),
        },
        Exported::PairingSlot {
            slot_id: [4; 32],
            account: A,
            expires_at_ms: 99,
            bundle: b"slot".to_vec(),
        },
        Exported::RecoveryBundle {
            lookup_id: [5; 32],
            account: A,
            bundle: b"rb".to_vec(),
        },
        Exported::Token {
            token_hash: [6; 32],
        },
    ];
    assert_eq!(items.len(), expected.len(), "{}: {items:?}", backend.name);
    for item in &expected {
        assert!(items.contains(item), "{}: {item:?} missing", backend.name);
    }
    assert_eq!(
        kind(&items[0]),
        "account",
        "accounts come before their streams and keys"
    );
}

fn kind(item: &Exported) -> &'static str {
    match item {
        Exported::Account { .. } => "account",
        Exported::Stream { .. } => "stream",
        Exported::SealedKey { .. } => "sealed",
        Exported::PairingSlot { .. } => "pairing",
        Exported::RecoveryBundle { .. } => "recovery",
        Exported::Token { .. } => "token",
        Exported::Settings { .. } => "settings",
    }
}

fn account_settings_and_the_active_day_are_kept_per_account_and_deleted_with_it(backend: &Backend) {
    let set = AccountSettings {
        suspended: true,
        max_bytes: Some(1000),
        max_devices: Some(3),
    };
    {
        let store = (backend.open)(0);
        assert!(store.create_account(&A, &roster(1)).unwrap());
        assert!(store.create_account(&B, &roster(1)).unwrap());
        let c = AccountId::from_bytes([0xc5; 32]);
        assert!(
            !store.put_account_settings(&c, &set).unwrap(),
            "{}: no settings for an account that does not exist",
            backend.name
        );
        assert_eq!(store.active_day(&A).unwrap(), None);
        store.mark_active(&A, 20_000).unwrap();
        assert!(store.put_account_settings(&A, &set).unwrap());
        // Each keeps the other.
        assert_eq!(store.active_day(&A).unwrap(), Some(20_000));
        store.mark_active(&A, 20_001).unwrap();
        assert_eq!(store.load_account(&A).unwrap().unwrap().settings, set);
        assert_eq!(
            store.load_account(&B).unwrap().unwrap().settings,
            AccountSettings::default()
        );
        assert_eq!(store.active_day(&B).unwrap(), None);
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(store.flush())
            .unwrap();
    }
    // Durable across a reopen, exported for a copy, gone with the account.
    let store = (backend.open)(0);
    assert_eq!(store.load_account(&A).unwrap().unwrap().settings, set);
    assert_eq!(store.active_day(&A).unwrap(), Some(20_001));
    let mut exported = Vec::new();
    store
        .export(&mut |item| {
            if let Exported::Settings { .. } = item {
                exported.push(item);
            }
            Ok(())
        })
        .unwrap();
    assert_eq!(
        exported,
        vec![Exported::Settings {
            account: A,
            settings: set,
            active_day: 20_001,
        }],
        "{}",
        backend.name
    );
    let unlimited = AccountSettings {
        suspended: false,
        max_bytes: None,
        max_devices: Some(0),
    };
    assert!(store.put_account_settings(&A, &unlimited).unwrap());
    assert_eq!(store.load_account(&A).unwrap().unwrap().settings, unlimited);
    store.delete_account(&A).unwrap();
    assert_eq!(store.active_day(&A).unwrap(), None);
    assert!(store.create_account(&A, &roster(1)).unwrap());
    assert_eq!(
        store.load_account(&A).unwrap().unwrap().settings,
        AccountSettings::default(),
        "{}: a new account does not inherit a deleted one's settings",
        backend.name
    );
}

fn account_ids_page_in_order_and_leave_deleted_accounts_out(backend: &Backend) {
    let store = (backend.open)(0);
    let ids: Vec<AccountId> = (1..=5u8).map(|b| AccountId::from_bytes([b; 32])).collect();
    for id in ids.iter().rev() {
        assert!(store.create_account(id, &roster(1)).unwrap());
        // Keys of every kind beside the roster must not be taken for accounts.
        append(&*store, id, 1, 2);
        store.put_sealed_key(id, &E, 1, b"k").unwrap();
        store.mark_active(id, 3).unwrap();
    }
    store.delete_account(&ids[2]).unwrap();
    assert_eq!(store.account_ids(None, 2).unwrap(), ids[..2].to_vec());
    assert_eq!(
        store.account_ids(Some(&ids[1]), 10).unwrap(),
        vec![ids[3], ids[4]],
        "{}",
        backend.name
    );
    assert!(store.account_ids(Some(&ids[4]), 10).unwrap().is_empty());
    assert_eq!(store.account_ids(None, 100).unwrap().len(), 4);
}

fn registration_tokens_are_listed_until_consumed(backend: &Backend) {
    let store = (backend.open)(0);
    assert!(store.registration_tokens().unwrap().is_empty());
    store.add_registration_token(&[7; 32]).unwrap();
    store.add_registration_token(&[3; 32]).unwrap();
    let mut tokens = store.registration_tokens().unwrap();
    tokens.sort();
    assert_eq!(tokens, vec![[3; 32], [7; 32]]);
    assert!(store.consume_registration_token(&[3; 32]).unwrap());
    assert_eq!(store.registration_tokens().unwrap(), vec![[7; 32]]);
}

fn pushes_compare_and_set_the_stream_head(backend: &Backend) {
    if !backend.shared {
        return;
    }
    let store = (backend.open)(1 << 20);
    assert!(store.create_account(&A, &roster(1)).unwrap());
    let push = |from: u64, n: u64, version: u64| {
        let envs = envelopes(from, n);
        let refs: Vec<&[u8]> = envs.iter().map(Vec::as_slice).collect();
        store.append_checked(&A, &D, from, &refs, &meta_after(1, from + n - 1), version)
    };
    push(1, 3, 1).unwrap();
    // Not at the head: a gap, a replay of stored seqs, a second first push.
    assert!(matches!(push(5, 1, 1), Err(StoreError::Moved)));
    assert!(matches!(push(3, 2, 1), Err(StoreError::Moved)));
    assert!(matches!(push(1, 1, 1), Err(StoreError::Moved)));
    // Authorised against a roster that is no longer stored.
    assert!(matches!(push(4, 1, 2), Err(StoreError::Moved)));
    // Nothing of the refused pushes was written.
    assert_eq!(
        read(&*store, &A, 0, 100).0,
        (1..=3).zip(envelopes(1, 3)).collect::<Vec<_>>()
    );
    assert_eq!(
        store.load_account(&A).unwrap().unwrap().streams,
        vec![(D, meta_after(1, 3))]
    );
    push(4, 2, 1).unwrap();
    // An account that does not exist takes no checked push.
    let envs = envelopes(1, 1);
    assert!(matches!(
        store.append_checked(&B, &D, 1, &[&envs[0]], &meta_after(1, 1), 1),
        Err(StoreError::Moved)
    ));
}

fn rosters_only_advance_and_never_past_a_removed_streams_end(backend: &Backend) {
    if !backend.shared {
        return;
    }
    let store = (backend.open)(0);
    assert!(store.create_account(&A, &roster(1)).unwrap());
    append(&*store, &A, 1, 5);
    store.put_roster_checked(&A, &roster(2), 2, &[]).unwrap();
    for stale in [1, 2] {
        assert!(matches!(
            store.put_roster_checked(&A, &roster(stale), stale, &[]),
            Err(StoreError::Moved)
        ));
    }
    // Removing D with a final_seq below its stored head is refused; at the head it is fine.
    assert!(matches!(
        store.put_roster_checked(&A, &roster(3), 3, &[(D, 4)]),
        Err(StoreError::Moved)
    ));
    assert_eq!(store.load_account(&A).unwrap().unwrap().roster, roster(2));
    store
        .put_roster_checked(&A, &roster(3), 3, &[(D, 5), (E, 0)])
        .unwrap();
    assert_eq!(store.load_account(&A).unwrap().unwrap().roster, roster(3));
    // The unchecked form takes the version from the roster and refuses a rollback too.
    assert!(matches!(
        store.put_roster(&A, &roster(2)),
        Err(StoreError::Moved)
    ));
    store.put_roster(&A, &roster(4)).unwrap();
}

fn concurrent_writers_on_one_stream_never_both_win(backend: &Backend) {
    if !backend.shared {
        return;
    }
    // Two relays' stores on one database, racing to push the same seqs with different bytes.
    let stores = [(backend.open)(1 << 20), (backend.open)(1 << 20)];
    assert!(stores[0].create_account(&A, &roster(1)).unwrap());
    let won: Vec<Vec<u64>> = std::thread::scope(|scope| {
        let handles: Vec<_> = stores
            .iter()
            .enumerate()
            .map(|(who, store)| {
                scope.spawn(move || {
                    let mut won = Vec::new();
                    for seq in 1..=200u64 {
                        let envelope = vec![who as u8; 32];
                        let meta = StreamMeta {
                            first_seq: 1,
                            last_seq: seq,
                            bytes: 32 * seq,
                            envelopes: seq,
                        };
                        match store.append_checked(&A, &D, seq, &[&envelope], &meta, 1) {
                            Ok(()) => won.push(seq),
                            Err(StoreError::Moved) => {}
                            Err(err) => panic!("{err}"),
                        }
                    }
                    won
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let stored = read(&*stores[0], &A, 0, 1000).0;
    // Every stored seq was won by exactly one writer, and holds that writer's bytes.
    for (seq, envelope) in &stored {
        let winners: Vec<usize> = (0..2).filter(|w| won[*w].contains(seq)).collect();
        assert_eq!(winners.len(), 1, "seq {seq} won by {winners:?}");
        assert_eq!(envelope, &vec![winners[0] as u8; 32]);
    }
    let seqs: Vec<u64> = stored.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "no gap");
    assert_eq!(won[0].len() + won[1].len(), stored.len());
}

fn other_instances_hear_pushes_roster_changes_and_deletions(backend: &Backend) {
    if !backend.shared {
        return;
    }
    let (writer, listener) = ((backend.open)(1 << 20), (backend.open)(1 << 20));
    let mut changes = listener.changes().expect("a shared store reports changes");
    let mut own = writer.changes().expect("a shared store reports changes");
    assert!(writer.create_account(&A, &roster(1)).unwrap());
    let envs = envelopes(1, 3);
    let refs: Vec<&[u8]> = envs.iter().map(Vec::as_slice).collect();
    writer
        .append_checked(&A, &D, 1, &refs, &meta_after(1, 3), 1)
        .unwrap();
    writer.put_roster_checked(&A, &roster(2), 2, &[]).unwrap();
    writer.delete_account(&A).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let next = |rx: &mut tokio::sync::mpsc::UnboundedReceiver<StoreChange>| {
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(20), rx.recv()).await })
    };
    assert_eq!(
        next(&mut changes).unwrap(),
        Some(StoreChange::Pushed {
            account: A,
            device: D,
            last_seq: 3
        })
    );
    assert_eq!(
        next(&mut changes).unwrap(),
        Some(StoreChange::Changed { account: A })
    );
    assert_eq!(
        next(&mut changes).unwrap(),
        Some(StoreChange::Deleted { account: A })
    );
    // A store does not hear its own changes: the listener's write is all the writer hears.
    listener.add_registration_token(&[1; 32]).unwrap();
    assert!(listener.create_account(&B, &roster(1)).unwrap());
    listener.put_roster_checked(&B, &roster(2), 2, &[]).unwrap();
    assert_eq!(
        next(&mut own).unwrap(),
        Some(StoreChange::Changed { account: B })
    );
    assert!(own.try_recv().is_err());
}
