//! A malicious relay: the real relay in front of a tampering storage double that drops,
//! reorders, replays, duplicates, corrupts or truncates envelopes and rolls back the roster.
//! Every client must detect the tampering and never merge forged or rolled-back data.
//!
//! Why a storage double and not a proxy on the wire: device authentication binds to the TLS
//! session (docs/PROTOCOL.md §10), so a man in the middle cannot speak for the client at all;
//! the relay itself is the adversary worth testing. A truncated or forged roster cannot be
//! served this way (the relay verifies rosters when it loads them); the client's roster
//! checks are covered by `crates/protocol` unit tests and the `roster` fuzz target.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kith_client::net::RelayTarget;
use kith_client::{ClientError, ContactFields, Device, SyncReport};
use kith_e2e::names;
use kith_protocol::stream::StreamError;
use kith_protocol::{AccountId, DeviceId};
use kith_relay::store::{
    LoadedAccount, ReadEnd, SledStore, Store, StoreError, StoreFuture, StoreStats, StreamMeta,
};
use kith_relay::{Relay, RelayConfig, RelayHandle};

/// What the double does to the envelopes it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tamper {
    /// Serve honestly.
    None,
    /// Leave out the envelope with this seq.
    Drop(u64),
    /// Serve the envelope with seq `.1` in place of seq `.0` (a replay).
    Replay(u64, u64),
    /// Serve the envelopes in reverse order, each under its own seq.
    Reverse,
    /// Flip one byte of the envelope with this seq.
    Corrupt(u64),
    /// Serve the envelope with this seq twice in a row.
    Duplicate(u64),
    /// Serve only the first half of the envelope with this seq.
    Truncate(u64),
    /// Serve the first roster ever stored when the account is loaded.
    RollbackRoster,
    /// Serve the second envelope of this device's stream with a header `format_version` of 2,
    /// as a device of a newer release that writes a format this one does not know would.
    NewerFormat(DeviceId),
    /// Serve the roster stored before the latest one when the account is loaded (hold back
    /// the newest roster, such as a revocation).
    HoldBackRoster,
    /// Serve this device's stream only before this seq (withhold its newest envelopes).
    WithholdFrom(DeviceId, u64),
}

#[derive(Debug)]
struct TamperingStore {
    inner: SledStore,
    mode: Mutex<Tamper>,
    first_roster: Mutex<Option<Vec<u8>>>,
    /// Every roster stored after the first, oldest first.
    later_rosters: Mutex<Vec<Vec<u8>>>,
    /// An envelope served at the start of this device's stream, whatever its header says.
    injected: Mutex<Option<(DeviceId, Vec<u8>)>>,
    /// The account every recovery bundle is said to belong to.
    recovery_account: Mutex<Option<AccountId>>,
    /// A sealed epoch key served to `.0` in place of its stored key of epoch `.1`.
    sealed_override: Mutex<Option<(DeviceId, u64, Vec<u8>)>>,
    /// Truncate one envelope further than asked (cutting a snapshot after its first envelope).
    cut_snapshot: Mutex<bool>,
}

impl TamperingStore {
    fn set(&self, mode: Tamper) {
        *self.mode.lock().unwrap() = mode;
    }

    /// From now on, serves `envelope` first whenever `device`'s stream is read.
    fn inject(&self, device: DeviceId, envelope: Vec<u8>) {
        *self.injected.lock().unwrap() = Some((device, envelope));
    }
}

impl Store for TamperingStore {
    fn load_account(&self, account: &AccountId) -> Result<Option<LoadedAccount>, StoreError> {
        let mut loaded = self.inner.load_account(account)?;
        let rollback = *self.mode.lock().unwrap() == Tamper::RollbackRoster;
        let first = self.first_roster.lock().unwrap().clone();
        if let (true, Some(loaded), Some(first)) = (rollback, &mut loaded, first) {
            loaded.roster = first;
        }
        if *self.mode.lock().unwrap() == Tamper::HoldBackRoster
            && let Some(loaded) = &mut loaded
        {
            let later = self.later_rosters.lock().unwrap();
            let held_back = match later.len() {
                0 => None,
                1 => self.first_roster.lock().unwrap().clone(),
                n => Some(later[n - 2].clone()),
            };
            if let Some(roster) = held_back {
                loaded.roster = roster;
            }
        }
        Ok(loaded)
    }
    fn create_account(&self, account: &AccountId, roster: &[u8]) -> Result<bool, StoreError> {
        self.first_roster
            .lock()
            .unwrap()
            .get_or_insert_with(|| roster.to_vec());
        self.inner.create_account(account, roster)
    }
    fn put_roster(&self, account: &AccountId, roster: &[u8]) -> Result<(), StoreError> {
        self.later_rosters.lock().unwrap().push(roster.to_vec());
        self.inner.put_roster(account, roster)
    }
    fn append(
        &self,
        account: &AccountId,
        device: &DeviceId,
        first_seq: u64,
        envelopes: &[&[u8]],
        meta: &StreamMeta,
    ) -> Result<(), StoreError> {
        self.inner
            .append(account, device, first_seq, envelopes, meta)
    }
    fn read_stream(
        &self,
        account: &AccountId,
        device: &DeviceId,
        after_seq: u64,
        sink: &mut dyn FnMut(u64, &[u8]) -> bool,
    ) -> Result<ReadEnd, StoreError> {
        let mut all: Vec<(u64, Vec<u8>)> = Vec::new();
        self.inner
            .read_stream(account, device, 0, &mut |seq, bytes| {
                all.push((seq, bytes.to_vec()));
                true
            })?;
        let mode = *self.mode.lock().unwrap();
        let mut served: Vec<(u64, Vec<u8>)> = match mode {
            Tamper::Drop(seq) => all.into_iter().filter(|(s, _)| *s != seq).collect(),
            Tamper::Replay(at, from) => {
                let replayed = all.iter().find(|(s, _)| *s == from).map(|(_, b)| b.clone());
                all.into_iter()
                    .map(|(s, b)| {
                        if s == at {
                            (s, replayed.clone().unwrap_or(b))
                        } else {
                            (s, b)
                        }
                    })
                    .collect()
            }
            Tamper::Reverse => {
                all.reverse();
                all
            }
            Tamper::Corrupt(seq) => all
                .into_iter()
                .map(|(s, mut b)| {
                    if s == seq {
                        let middle = b.len() / 2;
                        b[middle] ^= 0x01;
                    }
                    (s, b)
                })
                .collect(),
            Tamper::Duplicate(seq) => all
                .into_iter()
                .flat_map(|(s, b)| {
                    let copies = if s == seq { 2 } else { 1 };
                    std::iter::repeat_n((s, b), copies)
                })
                .collect(),
            Tamper::Truncate(seq) => all
                .into_iter()
                .map(|(s, mut b)| {
                    if s == seq {
                        b.truncate(b.len() / 2);
                    }
                    (s, b)
                })
                .collect(),
            Tamper::NewerFormat(writer) if writer == *device => all
                .into_iter()
                .enumerate()
                .map(|(i, (s, b))| if i == 1 { (s, in_format_2(b)) } else { (s, b) })
                .collect(),
            Tamper::WithholdFrom(writer, from) if writer == *device => {
                all.into_iter().filter(|(s, _)| *s < from).collect()
            }
            Tamper::None
            | Tamper::RollbackRoster
            | Tamper::NewerFormat(_)
            | Tamper::WithholdFrom(..)
            | Tamper::HoldBackRoster => all,
        };
        served.retain(|(s, _)| *s > after_seq || matches!(mode, Tamper::Reverse));
        if let Some((into, envelope)) = self.injected.lock().unwrap().clone()
            && into == *device
            && let Some(&(seq, _)) = served.first()
        {
            served.insert(0, (seq, envelope));
        }
        for (seq, bytes) in served {
            if !sink(seq, &bytes) {
                return Ok(ReadEnd::More);
            }
        }
        Ok(ReadEnd::Complete)
    }
    fn truncate(
        &self,
        account: &AccountId,
        device: &DeviceId,
        before_seq: u64,
    ) -> Result<StreamMeta, StoreError> {
        let cut = *self.cut_snapshot.lock().unwrap();
        self.inner
            .truncate(account, device, before_seq + u64::from(cut))
    }
    fn put_sealed_key(
        &self,
        account: &AccountId,
        device: &DeviceId,
        epoch: u64,
        sealed: &[u8],
    ) -> Result<u64, StoreError> {
        self.inner.put_sealed_key(account, device, epoch, sealed)
    }
    fn sealed_keys(
        &self,
        account: &AccountId,
        device: &DeviceId,
        min_epoch: u64,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut keys = self.inner.sealed_keys(account, device, min_epoch)?;
        if let Some((to, epoch, forged)) = self.sealed_override.lock().unwrap().clone()
            && to == *device
        {
            for key in &mut keys {
                if kith_protocol::epoch::peek_sealed_epoch_key(key).is_ok_and(|v| v.epoch == epoch)
                {
                    *key = forged.clone();
                }
            }
        }
        Ok(keys)
    }
    fn put_pairing_slot(
        &self,
        slot_id: &[u8; 32],
        account: &AccountId,
        expires_at_ms: u64,
        bundle: &[u8],
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        self.inner
            .put_pairing_slot(slot_id, account, expires_at_ms, bundle, now_ms)
    }
    fn take_pairing_slot(
        &self,
        slot_id: &[u8; 32],
        now_ms: u64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.take_pairing_slot(slot_id, now_ms)
    }
    fn count_pairing_slots(&self, account: &AccountId, now_ms: u64) -> Result<usize, StoreError> {
        self.inner.count_pairing_slots(account, now_ms)
    }
    fn expire_pairing_slots(&self, now_ms: u64) -> Result<usize, StoreError> {
        self.inner.expire_pairing_slots(now_ms)
    }
    fn put_recovery_bundle(
        &self,
        lookup_id: &[u8; 32],
        account: &AccountId,
        bundle: &[u8],
    ) -> Result<bool, StoreError> {
        self.inner.put_recovery_bundle(lookup_id, account, bundle)
    }
    fn recovery_bundle(
        &self,
        lookup_id: &[u8; 32],
    ) -> Result<Option<(AccountId, Vec<u8>)>, StoreError> {
        let found = self.inner.recovery_bundle(lookup_id)?;
        let claimed = *self.recovery_account.lock().unwrap();
        Ok(found.map(|(account, bundle)| (claimed.unwrap_or(account), bundle)))
    }
    fn recovery_lookup_id(&self, account: &AccountId) -> Result<Option<[u8; 32]>, StoreError> {
        self.inner.recovery_lookup_id(account)
    }
    fn add_registration_token(&self, token_hash: &[u8; 32]) -> Result<(), StoreError> {
        self.inner.add_registration_token(token_hash)
    }
    fn consume_registration_token(&self, token_hash: &[u8; 32]) -> Result<bool, StoreError> {
        self.inner.consume_registration_token(token_hash)
    }
    fn mark_deleted(&self, account: &AccountId) -> Result<(), StoreError> {
        self.inner.mark_deleted(account)
    }

    fn was_deleted(&self, account: &AccountId) -> Result<bool, StoreError> {
        self.inner.was_deleted(account)
    }

    fn delete_account(&self, account: &AccountId) -> Result<(), StoreError> {
        self.inner.delete_account(account)
    }
    fn put_account_settings(
        &self,
        account: &AccountId,
        settings: &kith_relay::store::AccountSettings,
    ) -> Result<bool, StoreError> {
        self.inner.put_account_settings(account, settings)
    }
    fn mark_active(&self, account: &AccountId, day: u32) -> Result<(), StoreError> {
        self.inner.mark_active(account, day)
    }
    fn active_day(&self, account: &AccountId) -> Result<Option<u32>, StoreError> {
        self.inner.active_day(account)
    }
    fn account_ids(
        &self,
        after: Option<&AccountId>,
        limit: usize,
    ) -> Result<Vec<AccountId>, StoreError> {
        self.inner.account_ids(after, limit)
    }
    fn registration_tokens(&self) -> Result<Vec<[u8; 32]>, StoreError> {
        self.inner.registration_tokens()
    }
    fn stats(&self) -> Result<StoreStats, StoreError> {
        self.inner.stats()
    }
    fn flush(&self) -> StoreFuture<'_, ()> {
        self.inner.flush()
    }
}

struct World {
    _dir: tempfile::TempDir,
    home: std::path::PathBuf,
    relay_dir: std::path::PathBuf,
    store: Arc<TamperingStore>,
    relay: Option<RelayHandle>,
}

impl World {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let relay_dir = dir.path().join("relay");
        let config = RelayConfig::for_tests(&relay_dir);
        let inner = SledStore::open(&kith_relay::db_dir(&relay_dir), 8 << 20, 128 * 1024).unwrap();
        let store = Arc::new(TamperingStore {
            inner,
            mode: Mutex::new(Tamper::None),
            first_roster: Mutex::new(None),
            later_rosters: Mutex::new(Vec::new()),
            injected: Mutex::new(None),
            recovery_account: Mutex::new(None),
            sealed_override: Mutex::new(None),
            cut_snapshot: Mutex::new(false),
        });
        let relay = Relay::start_with_store(config, store.clone())
            .await
            .unwrap();
        Self {
            home: dir.path().to_path_buf(),
            _dir: dir,
            relay_dir,
            store,
            relay: Some(relay),
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

    async fn restart(&mut self) {
        let old = self.relay.take().unwrap();
        let addr = old.local_addr();
        old.shutdown().await.unwrap();
        // The old endpoint's socket is freed once its last connection handle drops.
        for attempt in 0.. {
            let mut config = RelayConfig::for_tests(&self.relay_dir);
            config.listen = addr;
            match Relay::start_with_store(config, self.store.clone()).await {
                Ok(relay) => {
                    self.relay = Some(relay);
                    break;
                }
                Err(e) if attempt < 50 => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("relay did not restart: {e}"),
            }
        }
    }

    /// Device A with `n` contacts pushed one envelope each, and a linked device B that has
    /// not pulled them yet.
    async fn two_devices(&self, n: usize) -> (Device, Device) {
        let (a, _) = Device::create(&self.home.join("a"), self.target(), "a", None)
            .await
            .unwrap();
        let b = kith_e2e::link(&a, &self.home.join("b"), self.target(), "b").await;
        for i in 0..n {
            let fields = ContactFields {
                name: Some(format!("Person {i}")),
                ..Default::default()
            };
            a.add_contact(&fields).await.unwrap();
            a.sync().await.unwrap();
        }
        (a, b)
    }
}

/// `envelope` with its header's `format_version` (1) set to 2: the encoded `Envelope` starts
/// with its header field (tag, length), and the header with `format_version` (tag 0x08, 1).
fn in_format_2(mut envelope: Vec<u8>) -> Vec<u8> {
    assert_eq!(envelope[0], 0x0a, "an Envelope starts with its header");
    let length_bytes = envelope[1..].iter().position(|b| b & 0x80 == 0).unwrap() + 1;
    let version = 1 + length_bytes + 1;
    assert_eq!(envelope[version - 1..=version], [0x08, 0x01]);
    envelope[version] = 0x02;
    envelope
}

fn stream_error(result: Result<kith_client::SyncReport, ClientError>) -> StreamError {
    match result {
        Err(ClientError::Stream(e)) => e,
        other => panic!("expected a stream error, got {other:?}"),
    }
}

fn nothing_merged(b: &Device) {
    assert!(
        b.contacts().unwrap().is_empty(),
        "nothing from a tampered page may be merged"
    );
}

/// Device a with three contacts pushed (one envelope each) and device b, which then syncs
/// through a relay that tampers with them as `mode` says. If the sync fails, nothing of the
/// tampered page may have been merged.
async fn sync_through(mode: Tamper) -> (World, DeviceId, Device, Result<SyncReport, ClientError>) {
    let world = World::new().await;
    let (a, b) = world.two_devices(3).await;
    world.store.set(mode);
    let result = b.sync().await;
    if result.is_err() {
        nothing_merged(&b);
    }
    (world, a.device_id(), b, result)
}

/// The relay is honest again: b catches up completely.
async fn honest_again(world: &World, b: &Device) {
    world.store.set(Tamper::None);
    b.sync().await.unwrap();
    assert_eq!(b.contacts().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_envelope_is_a_gap_naming_the_device() {
    let (world, a, b, result) = sync_through(Tamper::Drop(2)).await;
    let error = stream_error(result);
    assert!(
        matches!(error, StreamError::Gap { device, .. } if device == a),
        "{error}"
    );
    honest_again(&world, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_envelope_is_detected() {
    let (world, a, b, result) = sync_through(Tamper::Replay(2, 1)).await;
    let error = stream_error(result);
    assert!(
        matches!(error, StreamError::Replay { device, .. } | StreamError::Fork { device, .. } if device == a),
        "{error}"
    );
    honest_again(&world, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reordered_envelopes_are_never_merged_out_of_order() {
    // Envelopes are ordered by their signed sequence numbers, never by delivery order; served
    // again below the cursor, they are replays.
    let (_world, _a, b, result) = sync_through(Tamper::Reverse).await;
    match result {
        Ok(_) => assert_eq!(b.contacts().unwrap().len(), 3),
        Err(ClientError::Stream(_)) => {}
        Err(other) => panic!("unexpected error {other}"),
    }
    // Syncing again changes nothing: every envelope was merged once, in seq order.
    let again = b.sync().await.unwrap();
    assert_eq!(again.pulled, 0);
    assert_eq!(b.contacts().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_envelope_is_a_replay_naming_the_device() {
    let (world, a, b, result) = sync_through(Tamper::Duplicate(2)).await;
    let error = stream_error(result);
    assert!(
        matches!(error, StreamError::Replay { device, .. } if device == a),
        "{error}"
    );
    honest_again(&world, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_envelope_is_rejected() {
    let (world, _a, b, result) = sync_through(Tamper::Truncate(2)).await;
    assert!(
        matches!(result, Err(ClientError::Envelope(_))),
        "{result:?}"
    );
    honest_again(&world, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_envelope_is_rejected() {
    let (world, _a, b, result) = sync_through(Tamper::Corrupt(1)).await;
    assert!(
        matches!(result, Err(ClientError::Envelope(_))),
        "{result:?}"
    );
    honest_again(&world, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolled_back_roster_is_refused() {
    let mut world = World::new().await;
    let (a, b) = world.two_devices(1).await;
    // The relay forgets that b was added (serves the genesis roster again after a restart).
    world.store.set(Tamper::RollbackRoster);
    world.restart().await;
    let result = a.sync().await;
    // Never adopted, never silent: the relay is reported behind by the versions it lost, and
    // the trusted roster is stored again (docs/PROTOCOL.md §13.1); a refusal is also fine.
    match &result {
        Ok(report) => {
            let healed = report.healed.as_ref().expect("the rollback is reported");
            assert_eq!(healed.lost_roster_versions, Some((2, 2)), "{result:?}");
        }
        Err(ClientError::Roster(_)) | Err(ClientError::Net(_)) => {}
        Err(other) => panic!("a must refuse or heal the old roster: {other:?}"),
    }
    assert_eq!(
        a.devices().unwrap().len(),
        2,
        "a still trusts the roster naming b"
    );
    let _ = b;
}

/// A relay serves a removed device's envelope past its `final_seq` (one the device signed
/// before it learnt of its removal), in the middle of another device's stream. Receivers treat
/// it as the end of the removed device's stream: never merged, and every other stream is still
/// pulled and merged, on the revoker and on a device linked afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_devices_envelope_past_final_seq_stops_no_other_stream() {
    let world = World::new().await;
    let (a, b) = world.two_devices(0).await;
    let c = kith_e2e::link(&a, &world.home.join("c"), world.target(), "c").await;
    let contact = |name: &str| ContactFields {
        name: Some(name.into()),
        ..Default::default()
    };
    b.add_contact(&contact("From B")).await.unwrap();
    b.sync().await.unwrap();
    b.add_contact(&contact("B after its removal"))
        .await
        .unwrap();
    let late = b.seal_pending_for_tests().unwrap();
    assert_eq!(late.len(), 1, "one envelope at seq 2, never pushed");
    a.revoke(&b.device_id()).await.unwrap();
    c.add_contact(&contact("From C")).await.unwrap();
    c.sync().await.unwrap();

    world.store.inject(c.device_id(), late[0].clone());
    let report = a
        .sync()
        .await
        .unwrap_or_else(|e| panic!("a stream past its end stopped the sync: {e}"));
    assert_eq!(names(&a), ["From B", "From C"]);
    assert_eq!(
        report.past_end,
        [kith_client::PastEnd {
            device: b.device_id(),
            final_seq: 1,
            seq: 2
        }],
        "the end of b's stream is reported"
    );
    let d = kith_e2e::link(&a, &world.home.join("d"), world.target(), "d").await;
    assert_eq!(names(&d), ["From B", "From C"]);
}

/// The relay files an account's recovery bundle under another account (and serves that
/// account's roster with it). The recovering device refuses to restore from it, naming why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_refuses_a_bundle_filed_under_another_account() {
    let world = World::new().await;
    let (_a, recovery_key) = Device::create(&world.home.join("a"), world.target(), "a", None)
        .await
        .unwrap();
    let (other, _) = Device::create(&world.home.join("x"), world.target(), "x", None)
        .await
        .unwrap();
    *world.store.recovery_account.lock().unwrap() = Some(other.account_id());
    let refused = Device::recover(
        &world.home.join("restored"),
        world.target(),
        &recovery_key.0,
        "restored",
    )
    .await
    .unwrap_err();
    assert!(
        matches!(refused, ClientError::RecoveryAccountMismatch),
        "{refused}"
    );
}

/// A device of a newer release writes an envelope this release cannot read (a header
/// `format_version` of 2) in the middle of its stream. Only that device's stream stops there,
/// reported with "update Kith"; every other stream is still pulled and merged, and once the
/// envelope can be read (here: the relay serves the original again) the stream goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_in_a_newer_format_stops_only_its_writers_stream() {
    let world = World::new().await;
    let (a, b) = world.two_devices(3).await;
    let c = kith_e2e::link(&a, &world.home.join("c"), world.target(), "c").await;
    let from_c = ContactFields {
        name: Some("From C".into()),
        ..Default::default()
    };
    c.add_contact(&from_c).await.unwrap();
    c.sync().await.unwrap();

    world.store.set(Tamper::NewerFormat(a.device_id()));
    let report = b
        .sync()
        .await
        .unwrap_or_else(|e| panic!("one device's newer format stopped the whole sync: {e}"));
    assert_eq!(names(&b), ["From C", "Person 0"]);
    let [newer] = report.newer_format.as_slice() else {
        panic!("the stopped stream is reported: {report:?}");
    };
    assert_eq!((newer.device, newer.version), (a.device_id(), 2));
    assert!(newer.seq > 1, "{newer:?}");
    assert!(newer.to_string().contains("update Kith"), "{newer}");

    world.store.set(Tamper::None);
    let report = b.sync().await.unwrap();
    assert!(report.newer_format.is_empty(), "{report:?}");
    assert_eq!(names(&b), ["From C", "Person 0", "Person 1", "Person 2"]);
}

/// The account's current roster, as the relay stores it.
fn stored_roster(world: &World, account: &AccountId) -> kith_protocol::roster::VerifiedRoster {
    let loaded = world.store.inner.load_account(account).unwrap().unwrap();
    kith_protocol::roster::VerifiedRoster::verify(&loaded.roster, Some(account), None).unwrap()
}

/// Device c is offline across two revocations (epochs 2 and 3). The relay then serves it a
/// sealed key of the middle epoch holding a secret of the relay's own, with a valid key id, and
/// the honest key of epoch 3. c refuses the forged secret with an error naming epoch 2 (it does
/// not derive the rotation key of epoch 2 that the roster lists), keeps nothing of it, and
/// catches up completely once the right key is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_key_of_a_skipped_epoch_is_refused_naming_the_epoch() {
    let world = World::new().await;
    let (a, b) = world.two_devices(0).await;
    let c = kith_e2e::link(&a, &world.home.join("c"), world.target(), "c").await;
    let contact = |name: &str| ContactFields {
        name: Some(name.into()),
        ..Default::default()
    };
    a.revoke(&b.device_id()).await.unwrap();
    a.add_contact(&contact("Written in epoch 2")).await.unwrap();
    a.sync().await.unwrap();
    let d = kith_e2e::link(&a, &world.home.join("d"), world.target(), "d").await;
    a.revoke(&d.device_id()).await.unwrap();
    a.add_contact(&contact("Written in epoch 3")).await.unwrap();
    a.sync().await.unwrap();

    let roster = stored_roster(&world, &a.account_id());
    assert_eq!(roster.epoch(), 3);
    let forged = kith_protocol::epoch::seal_epoch_key(
        &a.account_id(),
        &c.device_id(),
        roster.device(&c.device_id()).unwrap().agreement_key(),
        2,
        &kith_protocol::keys::EpochSecret::generate(&mut kith_protocol::keys::system_rng()),
        &mut kith_protocol::keys::system_rng(),
    );
    *world.store.sealed_override.lock().unwrap() = Some((c.device_id(), 2, forged));
    let refused = c.sync().await.unwrap_err();
    assert!(
        matches!(refused, ClientError::Roster(_)) && refused.to_string().contains("epoch 2"),
        "c must refuse the forged secret of epoch 2, naming it: {refused}"
    );
    assert!(!c.has_epoch(2), "nothing of the forged secret is kept");
    assert!(c.contacts().unwrap().is_empty(), "nothing was merged");

    *world.store.sealed_override.lock().unwrap() = None;
    c.sync().await.unwrap();
    assert_eq!(names(&c), ["Written in epoch 2", "Written in epoch 3"]);
}

/// A snapshot spans two envelopes; the relay truncates the stream after the first of them and
/// reports the second as the stream's first seq. A device that had pulled nothing of the
/// writer must refuse to start from the middle of the snapshot (it would lose what the first
/// envelope holds), naming the writer, and merge nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_cut_after_its_first_envelope_is_refused() {
    let world = World::new().await;
    let (a, b) = world.two_devices(0).await;
    // Twelve contacts with 60 KiB notes: more than one 512 KiB snapshot envelope.
    for i in 0..12 {
        let fields = ContactFields {
            name: Some(format!("Person {i:02}")),
            note: Some(format!("{i:02}").repeat(30 * 1024)),
            ..Default::default()
        };
        a.add_contact(&fields).await.unwrap();
    }
    a.sync().await.unwrap();
    *world.store.cut_snapshot.lock().unwrap() = true;
    let compacted = a.compact().await.unwrap();
    assert!(compacted.snapshot_envelopes >= 2, "{compacted:?}");

    let result = b.sync().await;
    let error = stream_error(result);
    let message = error.to_string();
    assert!(
        message.contains(&a.device_id().to_string()) && message.contains("snapshot"),
        "b must refuse a snapshot without its first envelope, naming a: {message}"
    );
    nothing_merged(&b);
}

/// The epochs of the envelopes the relay stores in `device`'s stream, in seq order.
fn stored_epochs(world: &World, account: &AccountId, device: &DeviceId) -> Vec<u64> {
    let mut epochs = Vec::new();
    world
        .store
        .inner
        .read_stream(account, device, 0, &mut |_, bytes| {
            epochs.push(kith_protocol::envelope::peek_header(bytes).unwrap().epoch);
            true
        })
        .unwrap();
    epochs
}

/// a revokes b (epoch 2) and writes under the new epoch; the relay then holds the revocation
/// back and serves c the roster before it (b present, epoch 1), which b holds the key of. c
/// sees a's envelope signed in epoch 2: it must stop and report that a newer roster exists,
/// and write nothing under epoch 1 (b could read it). Once the relay serves the newer roster,
/// c writes under epoch 2 and everything converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_back_revocation_stops_writing_under_the_old_epoch() {
    let mut world = World::new().await;
    let (a, b) = world.two_devices(0).await;
    let c = kith_e2e::link(&a, &world.home.join("c"), world.target(), "c").await;
    let contact = |name: &str| ContactFields {
        name: Some(name.into()),
        ..Default::default()
    };
    a.revoke(&b.device_id()).await.unwrap();
    a.add_contact(&contact("After the revocation"))
        .await
        .unwrap();
    a.sync().await.unwrap();
    let account = a.account_id();
    assert_eq!(stored_epochs(&world, &account, &a.device_id()), [2]);

    world.store.set(Tamper::HoldBackRoster);
    world.restart().await;
    c.add_contact(&contact("Secret from C")).await.unwrap();
    let stopped = c.sync().await.unwrap_err();
    let message = stopped.to_string();
    assert!(
        message.contains("epoch 2") && message.contains(&a.device_id().to_string()),
        "c must report a's envelope of epoch 2 as evidence of a newer roster: {message}"
    );
    assert!(
        stored_epochs(&world, &account, &c.device_id()).is_empty(),
        "c wrote under the old epoch, whose key the revoked b holds"
    );
    // Again, and with the contact still waiting: c keeps refusing to write.
    assert!(c.sync().await.is_err());
    assert!(stored_epochs(&world, &account, &c.device_id()).is_empty());

    world.store.set(Tamper::None);
    world.restart().await;
    c.sync().await.unwrap();
    assert_eq!(stored_epochs(&world, &account, &c.device_id()), [2]);
    a.sync().await.unwrap();
    assert_eq!(names(&a), ["After the revocation", "Secret from C"]);
    assert_eq!(names(&c), ["After the revocation", "Secret from C"]);
}

/// b writes two envelopes and a merges them; a then writes one of its own, whose signed payload
/// vouches that a merged b's stream up to its head. The relay withholds b's last envelope from
/// c (it serves b's stream only up to the one before, as if that were its head). c must report
/// that the relay withholds b's stream, naming a as the device that vouched for it; once
/// the relay is honest again, c gets everything and reports nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelopes_another_device_vouched_for_are_reported_when_withheld() {
    let world = World::new().await;
    let (a, b) = world.two_devices(0).await;
    let c = kith_e2e::link(&a, &world.home.join("c"), world.target(), "c").await;
    for name in ["First from b", "Second from b"] {
        b.add_contact(&ContactFields {
            name: Some(name.into()),
            ..Default::default()
        })
        .await
        .unwrap();
        b.sync().await.unwrap();
    }
    a.sync().await.unwrap();
    a.add_contact(&ContactFields {
        name: Some("From a".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let pushed = a.sync().await.unwrap();
    assert!(pushed.pushed >= 1);
    let head = stored_epochs(&world, &a.account_id(), &b.device_id()).len() as u64;
    assert!(head >= 2);

    world.store.set(Tamper::WithholdFrom(b.device_id(), head));
    let report = c.sync().await.unwrap();
    assert_eq!(
        report.withheld,
        [kith_client::Withheld {
            device: b.device_id(),
            served: head - 1,
            vouched: head,
            by: a.device_id(),
        }],
        "c must report b's envelope that a vouched for and the relay withheld"
    );
    assert!(!names(&c).contains(&"Second from b".to_string()));

    world.store.set(Tamper::None);
    let report = c.sync().await.unwrap();
    assert!(report.withheld.is_empty(), "{:?}", report.withheld);
    assert_eq!(names(&c), ["First from b", "From a", "Second from b"]);
}

/// a links d: the roster moves to a new version in the same epoch (nothing to revoke, so no
/// envelope is signed in a later epoch). The relay holds that roster back from c. a's next
/// envelope names the roster it wrote under; c must see that the relay holds a newer roster
/// back, say so naming a, and write nothing until it gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_roster_held_back_without_a_new_epoch_is_detected_through_an_envelope() {
    let mut world = World::new().await;
    let (a, c) = world.two_devices(0).await;
    let account = a.account_id();
    let before = stored_roster(&world, &account).version();
    let _d = kith_e2e::link(&a, &world.home.join("d"), world.target(), "d").await;
    let after = stored_roster(&world, &account);
    assert_eq!((after.version(), after.epoch()), (before + 1, 1));
    a.add_contact(&ContactFields {
        name: Some("After d joined".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    a.sync().await.unwrap();

    world.store.set(Tamper::HoldBackRoster);
    world.restart().await;
    c.add_contact(&ContactFields {
        name: Some("From c".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let stopped = c.sync().await.unwrap_err();
    assert!(
        matches!(
            stopped,
            ClientError::RosterWithheld { device, version, roster_version }
                if device == a.device_id() && version == before + 1 && roster_version == before
        ),
        "c must report a's envelope naming the newer roster: {stopped}"
    );
    assert!(
        stored_epochs(&world, &account, &c.device_id()).is_empty(),
        "c wrote under a roster it knows is stale"
    );
    assert!(c.sync().await.is_err(), "c keeps refusing to write");
    assert!(stored_epochs(&world, &account, &c.device_id()).is_empty());

    world.store.set(Tamper::None);
    world.restart().await;
    c.sync().await.unwrap();
    assert_eq!(stored_epochs(&world, &account, &c.device_id()), [1]);
    a.sync().await.unwrap();
    assert_eq!(names(&a), ["After d joined", "From c"]);
}

/// a revokes b, staging the new epoch's key for c signed by the new account key. The relay
/// (or a member that staged before the revocation landed) serves c, in its place, a key of the
/// new epoch sealed with a secret of its own and signed by another key. c must refuse it as a
/// key not signed by that epoch's account key, naming the epoch, keep nothing of it, and catch
/// up once the revoker's key is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staged_key_signed_by_another_key_is_refused_naming_the_epoch() {
    let world = World::new().await;
    let (a, b) = world.two_devices(0).await;
    let c = kith_e2e::link(&a, &world.home.join("c"), world.target(), "c").await;
    a.revoke(&b.device_id()).await.unwrap();
    a.add_contact(&ContactFields {
        name: Some("Written in epoch 2".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    a.sync().await.unwrap();

    let roster = stored_roster(&world, &a.account_id());
    let mut rng = kith_protocol::keys::system_rng();
    let forged = kith_protocol::epoch::sign_sealed_epoch_key(
        &kith_protocol::epoch::seal_epoch_key(
            &a.account_id(),
            &c.device_id(),
            roster.device(&c.device_id()).unwrap().agreement_key(),
            2,
            &kith_protocol::keys::EpochSecret::generate(&mut rng),
            &mut rng,
        ),
        &kith_protocol::keys::AccountSigningKey::generate(&mut rng),
    )
    .unwrap();
    *world.store.sealed_override.lock().unwrap() = Some((c.device_id(), 2, forged));
    let refused = c.sync().await.unwrap_err();
    assert!(
        matches!(
            refused,
            ClientError::Epoch(kith_protocol::epoch::EpochError::BadSignature { epoch: 2 })
        ),
        "c must refuse the forged key of epoch 2 as not signed by that epoch's account key: \
         {refused}"
    );
    assert!(!c.has_epoch(2), "nothing of the forged secret is kept");

    *world.store.sealed_override.lock().unwrap() = None;
    c.sync().await.unwrap();
    assert_eq!(names(&c), ["Written in epoch 2"]);
}
