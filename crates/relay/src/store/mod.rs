//! Storage behind a trait, so that backends other than sled (say, PostgreSQL for a relay that
//! outgrows one machine) can follow.
//!
//! Everything an account owns is reachable from its id, so [`Store::delete_account`] can
//! purge it all. The methods are synchronous (sled's are, and take microseconds); durability is
//! the one asynchronous step, [`Store::flush`], which [`GroupCommit`] shares across connections.

pub mod copy;
pub mod log;
pub mod postgres;
pub mod sled;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use kith_protocol::ids::{AccountId, DeviceId};
use tokio::sync::{mpsc, oneshot};

pub use self::postgres::PostgresStore;
pub use self::sled::SledStore;

/// The stored schema version this code reads and writes.
pub const SCHEMA_VERSION: u32 = 3;

/// Storage failures. Cloneable so that one failed flush can be reported to every waiter.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The backend failed (I/O, corruption it detected, …).
    #[error("storage backend: {0}")]
    Backend(String),
    /// A stored value does not have the layout this code writes.
    #[error("stored data is corrupt: {0}")]
    Corrupt(&'static str),
    /// Another relay on the same database changed what this write was checked against (the
    /// stream head moved, or the roster did): nothing was written. The caller reloads the
    /// account from the store and decides again.
    #[error("changed meanwhile by another relay on the same database")]
    Moved,
    /// The data directory was written by another schema version.
    #[error(
        "stored schema version {found}, this relay reads {expected}{}",
        schema_hint(*found, *expected)
    )]
    SchemaVersion {
        /// Version found.
        found: u32,
        /// Version expected.
        expected: u32,
    },
}

/// What to do about a schema version this code does not read: a newer one means a downgrade,
/// which is refused rather than misread (docs/PROTOCOL.md §8.1).
fn schema_hint(found: u32, expected: u32) -> &'static str {
    if found > expected {
        ": the data directory was written by a newer kith-relay; run that release or a later one"
    } else {
        ""
    }
}

/// A device stream's bounds and size, stored with every append.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamMeta {
    /// Lowest stored seq (0 while empty).
    pub first_seq: u64,
    /// Highest seq ever stored (0 while nothing was pushed). Survives truncation.
    pub last_seq: u64,
    /// Encoded envelope bytes stored.
    pub bytes: u64,
    /// Envelopes stored.
    pub envelopes: u64,
}

/// What the relay needs in memory to serve an account.
#[derive(Debug, Clone)]
pub struct LoadedAccount {
    /// The encoded signed roster last accepted.
    pub roster: Vec<u8>,
    /// Every device stream that has ever been written.
    pub streams: Vec<(DeviceId, StreamMeta)>,
    /// Bytes of sealed epoch keys stored.
    pub sealed_key_bytes: u64,
    /// What the operator set for the account.
    pub settings: AccountSettings,
}

/// What the relay's operator set for one account (`kith-relay admin accounts suspend|quota`):
/// nothing a device wrote, and deleted with the account.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AccountSettings {
    /// Every request of the account's devices is refused (`ACCOUNT_SUSPENDED`).
    pub suspended: bool,
    /// Bytes the account may store, instead of the relay's `max_account_bytes`.
    pub max_bytes: Option<u64>,
    /// Devices the account may have, instead of the relay's `max_devices_per_account`.
    pub max_devices: Option<u32>,
}

impl AccountSettings {
    /// The encoding both stores keep: flags (bit 0 suspended, bit 1 bytes set, bit 2 devices
    /// set), bytes (u64 BE), devices (u32 BE).
    pub fn encode(&self) -> [u8; 13] {
        let mut out = [0u8; 13];
        out[0] = u8::from(self.suspended)
            | (u8::from(self.max_bytes.is_some()) << 1)
            | (u8::from(self.max_devices.is_some()) << 2);
        out[1..9].copy_from_slice(&self.max_bytes.unwrap_or(0).to_be_bytes());
        out[9..13].copy_from_slice(&self.max_devices.unwrap_or(0).to_be_bytes());
        out
    }

    /// Reads [`AccountSettings::encode`]'s bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        let bytes: &[u8; 13] = bytes
            .try_into()
            .map_err(|_| StoreError::Corrupt("account settings"))?;
        if bytes[0] & !0b111 != 0 {
            return Err(StoreError::Corrupt("account settings flags"));
        }
        let max_bytes = u64::from_be_bytes(bytes[1..9].try_into().unwrap_or_default());
        let max_devices = u32::from_be_bytes(bytes[9..13].try_into().unwrap_or_default());
        Ok(Self {
            suspended: bytes[0] & 1 != 0,
            max_bytes: (bytes[0] & 2 != 0).then_some(max_bytes),
            max_devices: (bytes[0] & 4 != 0).then_some(max_devices),
        })
    }
}

/// Totals for `kith-relay stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Accounts.
    pub accounts: u64,
    /// Device streams written.
    pub streams: u64,
    /// Envelopes stored.
    pub envelopes: u64,
    /// Envelope bytes stored.
    pub envelope_bytes: u64,
    /// Live pairing slots (some may have expired but not been swept yet).
    pub pairing_slots: u64,
    /// Recovery bundles.
    pub recovery_bundles: u64,
    /// Unused registration tokens.
    pub registration_tokens: u64,
}

/// Where a stream read stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadEnd {
    /// Every envelope after the cursor was passed to the sink.
    Complete,
    /// A bound was reached with envelopes left.
    More,
}

/// A change another relay on the same database made (stores shared by several relays report
/// them; see [`Store::changes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreChange {
    /// A device's stream grew to `last_seq`.
    Pushed {
        /// Account.
        account: AccountId,
        /// Device whose stream grew.
        device: DeviceId,
        /// Its new last seq.
        last_seq: u64,
    },
    /// The account's roster, stream bounds or sealed keys changed (not by a push).
    Changed {
        /// Account.
        account: AccountId,
    },
    /// The account was deleted.
    Deleted {
        /// Account.
        account: AccountId,
    },
    /// Changes may have been missed (the connection that hears them was re-established):
    /// everything held in memory must be read again.
    Resync,
    /// A pairing slot was put: a new device waiting on this relay for its link bundle looks
    /// again (the slot is in the shared store, the wait is per relay).
    PairingPut,
}

/// One item of a whole store, as [`Store::export`] hands them out (what `kith-relay
/// migrate-store` copies). Envelopes are read per stream with [`Store::read_stream`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exported {
    /// An account and its roster.
    Account {
        /// Account.
        account: AccountId,
        /// Encoded signed roster.
        roster: Vec<u8>,
    },
    /// A device stream's bounds.
    Stream {
        /// Account.
        account: AccountId,
        /// Device.
        device: DeviceId,
        /// Bounds and size.
        meta: StreamMeta,
    },
    /// A sealed epoch key.
    SealedKey {
        /// Account.
        account: AccountId,
        /// Recipient device.
        device: DeviceId,
        /// Epoch.
        epoch: u64,
        /// The sealed key.
        sealed: Vec<u8>,
    },
    /// A pairing slot (live or not yet swept).
    PairingSlot {
        /// Slot id.
        slot_id: [u8; 32],
        /// Account.
        account: AccountId,
        /// Expiry.
        expires_at_ms: u64,
        /// Bundle.
        bundle: Vec<u8>,
    },
    /// A recovery bundle.
    RecoveryBundle {
        /// Lookup id.
        lookup_id: [u8; 32],
        /// Account.
        account: AccountId,
        /// Bundle.
        bundle: Vec<u8>,
    },
    /// What the operator set for an account (only accounts with settings).
    Settings {
        /// Account.
        account: AccountId,
        /// The settings.
        settings: AccountSettings,
        /// Last day (since the Unix epoch) a device of it was active, 0 if never recorded.
        active_day: u32,
    },
    /// An unused registration token (its SHA-256).
    Token {
        /// SHA-256 of the token.
        token_hash: [u8; 32],
    },
}

/// A boxed future, so that [`Store`] stays object-safe.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// The relay's storage.
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Reads everything needed to serve an account, or `None` if it does not exist.
    fn load_account(&self, account: &AccountId) -> Result<Option<LoadedAccount>, StoreError>;

    /// Stores the first roster of a new account. `false` if the account already exists.
    fn create_account(&self, account: &AccountId, roster: &[u8]) -> Result<bool, StoreError>;

    /// Replaces the stored roster (the caller has verified that it extends the stored one).
    fn put_roster(&self, account: &AccountId, roster: &[u8]) -> Result<(), StoreError>;

    /// Appends consecutive envelopes starting at `first_seq` and stores `meta` (the stream's
    /// state after the append) in the same atomic write.
    fn append(
        &self,
        account: &AccountId,
        device: &DeviceId,
        first_seq: u64,
        envelopes: &[&[u8]],
        meta: &StreamMeta,
    ) -> Result<(), StoreError>;

    /// Passes stored envelopes with seq > `after_seq`, in order, to `sink` until it returns
    /// `false` (that envelope is not taken and the read ends with [`ReadEnd::More`]).
    fn read_stream(
        &self,
        account: &AccountId,
        device: &DeviceId,
        after_seq: u64,
        sink: &mut dyn FnMut(u64, &[u8]) -> bool,
    ) -> Result<ReadEnd, StoreError>;

    /// [`Store::read_stream`] handing out envelopes as [`bytes::Bytes`], which a backend can
    /// slice from what it read instead of copying (the pull path encodes them as they are).
    /// The default copies each envelope.
    fn read_stream_bytes(
        &self,
        account: &AccountId,
        device: &DeviceId,
        after_seq: u64,
        sink: &mut dyn FnMut(u64, bytes::Bytes) -> bool,
    ) -> Result<ReadEnd, StoreError> {
        self.read_stream(account, device, after_seq, &mut |seq, envelope| {
            sink(seq, bytes::Bytes::copy_from_slice(envelope))
        })
    }

    /// [`Store::read_stream_bytes`] of the envelopes with seq <= `until` only: the read ends
    /// with [`ReadEnd::Complete`] once every stored envelope up to `until` was passed (a
    /// later one is never offered), with [`ReadEnd::More`] when `sink` refused one. A backend
    /// that reads envelopes packed in rows uses the bound to fetch no row past it (the pull
    /// path bounds each stream's read by the page's envelope count and the servable end).
    /// The default ends [`Store::read_stream_bytes`] at the first envelope past `until`.
    fn read_stream_until(
        &self,
        account: &AccountId,
        device: &DeviceId,
        after_seq: u64,
        until: u64,
        sink: &mut dyn FnMut(u64, bytes::Bytes) -> bool,
    ) -> Result<ReadEnd, StoreError> {
        let mut past = false;
        let end = self.read_stream_bytes(account, device, after_seq, &mut |seq, envelope| {
            if seq > until {
                past = true;
                return false;
            }
            sink(seq, envelope)
        })?;
        Ok(if past { ReadEnd::Complete } else { end })
    }

    /// Deletes envelopes with seq < `before_seq` (the caller checked `before_seq <= last_seq`,
    /// or `before_seq == last_seq + 1` to empty a stream that a push restarts at a snapshot)
    /// and returns the stream's meta afterwards.
    fn truncate(
        &self,
        account: &AccountId,
        device: &DeviceId,
        before_seq: u64,
    ) -> Result<StreamMeta, StoreError>;

    /// Stores a sealed epoch key for (account, recipient device, epoch), replacing an earlier
    /// one. Returns the size of the replaced value (0 if none).
    fn put_sealed_key(
        &self,
        account: &AccountId,
        device: &DeviceId,
        epoch: u64,
        sealed: &[u8],
    ) -> Result<u64, StoreError>;

    /// The sealed epoch keys of a device with epoch >= `min_epoch`, oldest first.
    fn sealed_keys(
        &self,
        account: &AccountId,
        device: &DeviceId,
        min_epoch: u64,
    ) -> Result<Vec<Vec<u8>>, StoreError>;

    /// Puts a pairing slot unless a live one exists under `slot_id` (then `false`).
    fn put_pairing_slot(
        &self,
        slot_id: &[u8; 32],
        account: &AccountId,
        expires_at_ms: u64,
        bundle: &[u8],
        now_ms: u64,
    ) -> Result<bool, StoreError>;

    /// Takes (removes and returns) a live pairing slot.
    fn take_pairing_slot(
        &self,
        slot_id: &[u8; 32],
        now_ms: u64,
    ) -> Result<Option<Vec<u8>>, StoreError>;

    /// Live pairing slots of an account.
    fn count_pairing_slots(&self, account: &AccountId, now_ms: u64) -> Result<usize, StoreError>;

    /// Removes every expired pairing slot; returns how many.
    fn expire_pairing_slots(&self, now_ms: u64) -> Result<usize, StoreError>;

    /// Stores the account's recovery bundle under `lookup_id`, replacing the account's earlier
    /// one (whatever its lookup id). A lookup id belongs to the account that stored a bundle
    /// under it first: returns `false`, and stores nothing, if it is another account's.
    /// Dropping the account's earlier entry never touches an entry of another account.
    fn put_recovery_bundle(
        &self,
        lookup_id: &[u8; 32],
        account: &AccountId,
        bundle: &[u8],
    ) -> Result<bool, StoreError>;

    /// The recovery bundle under `lookup_id` and its account.
    fn recovery_bundle(
        &self,
        lookup_id: &[u8; 32],
    ) -> Result<Option<(AccountId, Vec<u8>)>, StoreError>;

    /// The lookup id of the account's recovery bundle, `None` if it has none.
    fn recovery_lookup_id(&self, account: &AccountId) -> Result<Option<[u8; 32]>, StoreError>;

    /// Adds a registration token (by its SHA-256; the token itself is never stored).
    fn add_registration_token(&self, token_hash: &[u8; 32]) -> Result<(), StoreError>;

    /// Consumes a registration token: `true` exactly once per added token.
    fn consume_registration_token(&self, token_hash: &[u8; 32]) -> Result<bool, StoreError>;

    /// Stores `device`'s push target (an opaque gateway token, docs/PROTOCOL.md §12.1),
    /// replacing its earlier one: one per device. The default refuses (a test double).
    fn put_push_target(
        &self,
        account: &AccountId,
        device: &DeviceId,
        token: &[u8],
    ) -> Result<(), StoreError> {
        let _ = (account, device, token);
        Err(StoreError::Backend(
            "this store keeps no push targets".into(),
        ))
    }

    /// Removes `device`'s push target, if it has one: on request, and when a roster removes
    /// the device ([`Store::delete_account`] removes every one of the account). The default
    /// has nothing to remove.
    fn remove_push_target(&self, account: &AccountId, device: &DeviceId) -> Result<(), StoreError> {
        let _ = (account, device);
        Ok(())
    }

    /// The account's push targets, by device. The default has none.
    fn push_targets(&self, account: &AccountId) -> Result<Vec<(DeviceId, Vec<u8>)>, StoreError> {
        let _ = account;
        Ok(Vec::new())
    }

    /// Deletes every key of the account: roster, streams, sealed keys, pairing slots, recovery
    /// bundle, push targets.
    fn delete_account(&self, account: &AccountId) -> Result<(), StoreError>;

    /// Copies the store, as it is after the last flush, into the new directory `to` (an online
    /// backup: the caller holds every writer off and flushed first). The default refuses.
    fn backup(&self, _to: &std::path::Path) -> Result<(), StoreError> {
        Err(StoreError::Backend(
            "this storage backend cannot copy itself; use its own backup tools".into(),
        ))
    }

    /// Remembers that `account` was deleted (its 32-byte id only), so that a device that missed
    /// the deletion is refused when it would create the account again (docs/PROTOCOL.md §13.1).
    /// A store that does not remember deletions lets such a device rebuild the account.
    fn mark_deleted(&self, _account: &AccountId) -> Result<(), StoreError> {
        Ok(())
    }

    /// Whether `account` was deleted ([`Store::mark_deleted`]).
    fn was_deleted(&self, _account: &AccountId) -> Result<bool, StoreError> {
        Ok(false)
    }

    /// Stores what the operator set for an existing account. `false`, storing nothing, if the
    /// account does not exist.
    fn put_account_settings(
        &self,
        account: &AccountId,
        settings: &AccountSettings,
    ) -> Result<bool, StoreError>;

    /// Records that a device of the account was active on `day` (days since the Unix epoch):
    /// all the relay keeps of when an account was used (no time of day, no history).
    fn mark_active(&self, account: &AccountId, day: u32) -> Result<(), StoreError>;

    /// The day [`Store::mark_active`] last recorded, `None` if never (or no such account).
    fn active_day(&self, account: &AccountId) -> Result<Option<u32>, StoreError>;

    /// Up to `limit` account ids greater than `after` (all from the first with `None`), in
    /// ascending byte order: what `kith-relay admin accounts list` pages through.
    fn account_ids(
        &self,
        after: Option<&AccountId>,
        limit: usize,
    ) -> Result<Vec<AccountId>, StoreError>;

    /// The SHA-256 of every unused registration token.
    fn registration_tokens(&self) -> Result<Vec<[u8; 32]>, StoreError>;

    /// Totals.
    fn stats(&self) -> Result<StoreStats, StoreError>;

    /// Makes every write that returned before this call durable.
    fn flush(&self) -> StoreFuture<'_, ()>;

    /// Background housekeeping (reclaiming space of truncated and deleted envelopes); called
    /// now and then from a blocking thread. The default does nothing.
    fn maintain(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// [`Store::append`] for a relay that shares its store with other relays: also refuses
    /// with [`StoreError::Moved`], writing nothing, unless the stored stream ends at
    /// `first_seq - 1` and the stored roster has version `roster_version` (both checked
    /// atomically with the write). A store only one relay uses does not need the checks (the
    /// relay's account lock orders every write): the default is [`Store::append`].
    fn append_checked(
        &self,
        account: &AccountId,
        device: &DeviceId,
        first_seq: u64,
        envelopes: &[&[u8]],
        meta: &StreamMeta,
        roster_version: u64,
    ) -> Result<(), StoreError> {
        let _ = roster_version;
        self.append(account, device, first_seq, envelopes, meta)
    }

    /// [`Store::put_roster`] for a shared store: refuses with [`StoreError::Moved`], writing
    /// nothing, unless the stored roster has a version below `version` and every stream in
    /// `final_seqs` (devices the roster removes, with their `final_seq`) ends at or before
    /// it. The default is [`Store::put_roster`].
    fn put_roster_checked(
        &self,
        account: &AccountId,
        roster: &[u8],
        version: u64,
        final_seqs: &[(DeviceId, u64)],
    ) -> Result<(), StoreError> {
        let _ = (version, final_seqs);
        self.put_roster(account, roster)
    }

    /// Changes made by other relays sharing this store, for the relay to refresh what it holds
    /// in memory and to notify its subscribers; `None` for a store only one relay uses (the
    /// default). Taken once.
    fn changes(&self) -> Option<mpsc::UnboundedReceiver<StoreChange>> {
        None
    }

    /// Passes everything stored except envelopes (read them with [`Store::read_stream`]) to
    /// `sink`: accounts before their streams and keys. The default refuses (a test double).
    fn export(
        &self,
        sink: &mut dyn FnMut(Exported) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let _ = sink;
        Err(StoreError::Backend("this store cannot export".into()))
    }

    /// Stores envelopes of a copied stream starting at `first_seq`, the stream's lowest
    /// stored seq, into an empty stream (later ones follow with [`Store::append`]) and
    /// `meta` as its state afterwards. The default is [`Store::append`].
    fn import_stream(
        &self,
        account: &AccountId,
        device: &DeviceId,
        first_seq: u64,
        envelopes: &[&[u8]],
        meta: &StreamMeta,
    ) -> Result<(), StoreError> {
        self.append(account, device, first_seq, envelopes, meta)
    }
}

/// Group commit: one flusher task makes writes durable for every waiter at once.
///
/// A writer calls [`GroupCommit::durable`] after its write returned. Waiters that arrive while a
/// flush runs are served by the next one, so each waiter's write precedes the flush that
/// answers it; under load one fsync covers many pushes from many connections.
#[derive(Debug, Clone)]
pub struct GroupCommit {
    waiters: mpsc::UnboundedSender<oneshot::Sender<Result<(), StoreError>>>,
}

impl GroupCommit {
    /// Starts the flusher task. It ends when every `GroupCommit` clone is dropped. Each flush
    /// is counted in `metrics` (writes it answered, how long it took).
    pub fn start(
        store: Arc<dyn Store>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::unbounded_channel::<oneshot::Sender<Result<(), StoreError>>>();
        let task = tokio::spawn(async move {
            let mut batch = Vec::new();
            while let Some(first) = rx.recv().await {
                batch.push(first);
                while let Ok(next) = rx.try_recv() {
                    batch.push(next);
                }
                let started = std::time::Instant::now();
                let result = store.flush().await;
                metrics.group_commit(batch.len(), started.elapsed(), result.is_ok());
                if let Err(err) = &result {
                    tracing::error!(error = %err, "flush failed; pushes are refused until it works");
                }
                for waiter in batch.drain(..) {
                    let _ = waiter.send(result.clone());
                }
            }
        });
        (Self { waiters: tx }, task)
    }

    /// Waits until every write that returned before this call is durable.
    pub async fn durable(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.waiters
            .send(tx)
            .map_err(|_| StoreError::Backend("the flusher has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Backend("the flusher has stopped".into()))?
    }
}
