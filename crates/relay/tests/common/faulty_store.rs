//! A [`Store`] double in front of a real store (sled or PostgreSQL) that fails writes and/or flushes on
//! demand, the way a full disk does: reads keep working, writes return `StoreError`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use kith_protocol::ids::{AccountId, DeviceId};
use std::sync::Arc;

use kith_relay::store::{
    AccountSettings, LoadedAccount, ReadEnd, Store, StoreChange, StoreError, StoreFuture,
    StoreStats, StreamMeta,
};
use tokio::sync::mpsc;

/// What an injected failure says (what sled reports for `ENOSPC`, marked as injected).
pub const INJECTED: &str = "No space left on device (os error 28) [injected]";

#[derive(Debug)]
pub struct FaultyStore {
    pub inner: Arc<dyn Store>,
    /// Writes still allowed before every write fails; `u64::MAX` = no fault.
    writes_left: AtomicU64,
    fail_flush: AtomicBool,
    injected: AtomicU64,
    /// Flushes wait while this is `true` (a slow disk, held by the test).
    hold_flush: tokio::sync::watch::Sender<bool>,
    /// Flushes started.
    pub flushes: AtomicU64,
    /// Appends that returned successfully.
    pub appends: AtomicU64,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self {
            inner,
            writes_left: AtomicU64::new(u64::MAX),
            fail_flush: AtomicBool::new(false),
            injected: AtomicU64::new(0),
            hold_flush: tokio::sync::watch::Sender::new(false),
            flushes: AtomicU64::new(0),
            appends: AtomicU64::new(0),
        }
    }

    /// Flushes started from now on wait (without failing) until `hold_flushes(false)`.
    pub fn hold_flushes(&self, on: bool) {
        self.hold_flush.send_replace(on);
    }

    /// The next `n` writes succeed, every later one fails (the disk fills up).
    pub fn fail_writes_after(&self, n: u64) {
        self.writes_left.store(n, Ordering::SeqCst);
    }

    /// Every flush fails (fsync returns `ENOSPC`/`EIO`) while `on`.
    pub fn fail_flushes(&self, on: bool) {
        self.fail_flush.store(on, Ordering::SeqCst);
    }

    /// The fault clears: space was freed.
    pub fn heal(&self) {
        self.writes_left.store(u64::MAX, Ordering::SeqCst);
        self.fail_flush.store(false, Ordering::SeqCst);
    }

    /// How many operations failed by injection.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::SeqCst)
    }

    fn fail(&self) -> StoreError {
        self.injected.fetch_add(1, Ordering::SeqCst);
        StoreError::Backend(INJECTED.into())
    }

    /// Takes one write from the budget, or fails.
    fn write(&self) -> Result<(), StoreError> {
        let taken = self
            .writes_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| match left {
                u64::MAX => Some(u64::MAX),
                0 => None,
                n => Some(n - 1),
            });
        taken.map(drop).map_err(|_| self.fail())
    }
}

impl Store for FaultyStore {
    fn load_account(&self, account: &AccountId) -> Result<Option<LoadedAccount>, StoreError> {
        self.inner.load_account(account)
    }
    fn create_account(&self, account: &AccountId, roster: &[u8]) -> Result<bool, StoreError> {
        self.write()?;
        self.inner.create_account(account, roster)
    }
    fn put_roster(&self, account: &AccountId, roster: &[u8]) -> Result<(), StoreError> {
        self.write()?;
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
        self.write()?;
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
        self.inner.read_stream(account, device, after_seq, sink)
    }
    fn read_stream_bytes(
        &self,
        account: &AccountId,
        device: &DeviceId,
        after_seq: u64,
        sink: &mut dyn FnMut(u64, bytes::Bytes) -> bool,
    ) -> Result<ReadEnd, StoreError> {
        self.inner
            .read_stream_bytes(account, device, after_seq, sink)
    }
    fn truncate(
        &self,
        account: &AccountId,
        device: &DeviceId,
        before_seq: u64,
    ) -> Result<StreamMeta, StoreError> {
        self.write()?;
        self.inner.truncate(account, device, before_seq)
    }
    fn put_sealed_key(
        &self,
        account: &AccountId,
        device: &DeviceId,
        epoch: u64,
        sealed: &[u8],
    ) -> Result<u64, StoreError> {
        self.write()?;
        self.inner.put_sealed_key(account, device, epoch, sealed)
    }
    fn sealed_keys(
        &self,
        account: &AccountId,
        device: &DeviceId,
        min_epoch: u64,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        self.inner.sealed_keys(account, device, min_epoch)
    }
    fn put_pairing_slot(
        &self,
        slot_id: &[u8; 32],
        account: &AccountId,
        expires_at_ms: u64,
        bundle: &[u8],
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        self.write()?;
        self.inner
            .put_pairing_slot(slot_id, account, expires_at_ms, bundle, now_ms)
    }
    fn take_pairing_slot(
        &self,
        slot_id: &[u8; 32],
        now_ms: u64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.write()?;
        self.inner.take_pairing_slot(slot_id, now_ms)
    }
    fn count_pairing_slots(&self, account: &AccountId, now_ms: u64) -> Result<usize, StoreError> {
        self.inner.count_pairing_slots(account, now_ms)
    }
    fn expire_pairing_slots(&self, now_ms: u64) -> Result<usize, StoreError> {
        self.write()?;
        self.inner.expire_pairing_slots(now_ms)
    }
    fn put_recovery_bundle(
        &self,
        lookup_id: &[u8; 32],
        account: &AccountId,
        bundle: &[u8],
    ) -> Result<bool, StoreError> {
        self.write()?;
        self.inner.put_recovery_bundle(lookup_id, account, bundle)
    }
    fn recovery_bundle(
        &self,
        lookup_id: &[u8; 32],
    ) -> Result<Option<(AccountId, Vec<u8>)>, StoreError> {
        self.inner.recovery_bundle(lookup_id)
    }
    fn recovery_lookup_id(&self, account: &AccountId) -> Result<Option<[u8; 32]>, StoreError> {
        self.inner.recovery_lookup_id(account)
    }
    fn add_registration_token(&self, token_hash: &[u8; 32]) -> Result<(), StoreError> {
        self.write()?;
        self.inner.add_registration_token(token_hash)
    }
    fn consume_registration_token(&self, token_hash: &[u8; 32]) -> Result<bool, StoreError> {
        self.write()?;
        self.inner.consume_registration_token(token_hash)
    }
    fn mark_deleted(&self, account: &AccountId) -> Result<(), StoreError> {
        self.inner.mark_deleted(account)
    }

    fn was_deleted(&self, account: &AccountId) -> Result<bool, StoreError> {
        self.inner.was_deleted(account)
    }

    fn delete_account(&self, account: &AccountId) -> Result<(), StoreError> {
        self.write()?;
        self.inner.delete_account(account)
    }
    fn put_account_settings(
        &self,
        account: &AccountId,
        settings: &AccountSettings,
    ) -> Result<bool, StoreError> {
        self.write()?;
        self.inner.put_account_settings(account, settings)
    }
    fn mark_active(&self, account: &AccountId, day: u32) -> Result<(), StoreError> {
        self.write()?;
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
    fn maintain(&self) -> Result<(), StoreError> {
        // Housekeeping writes too, but is not counted against the budget of writes.
        if self.writes_left.load(Ordering::SeqCst) == 0 {
            return Err(self.fail());
        }
        self.inner.maintain()
    }
    fn append_checked(
        &self,
        account: &AccountId,
        device: &DeviceId,
        first_seq: u64,
        envelopes: &[&[u8]],
        meta: &StreamMeta,
        roster_version: u64,
    ) -> Result<(), StoreError> {
        self.write()?;
        self.inner
            .append_checked(account, device, first_seq, envelopes, meta, roster_version)?;
        self.appends.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn put_roster_checked(
        &self,
        account: &AccountId,
        roster: &[u8],
        version: u64,
        final_seqs: &[(DeviceId, u64)],
    ) -> Result<(), StoreError> {
        self.write()?;
        self.inner
            .put_roster_checked(account, roster, version, final_seqs)
    }
    fn changes(&self) -> Option<mpsc::UnboundedReceiver<StoreChange>> {
        self.inner.changes()
    }
    fn flush(&self) -> StoreFuture<'_, ()> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        if self.fail_flush.load(Ordering::SeqCst) {
            let err = self.fail();
            return Box::pin(async move { Err(err) });
        }
        let mut held = self.hold_flush.subscribe();
        Box::pin(async move {
            let _ = held.wait_for(|on| !on).await;
            self.inner.flush().await
        })
    }
}
