//! State shared by every connection: configuration, storage, the in-memory view of accounts,
//! rate limiters; and the per-connection state (challenge, authenticated device).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kith_protocol::ids::{AccountId, DeviceId};
use tokio::sync::{Semaphore, broadcast, watch};

use crate::config::RelayConfig;
use crate::error::RequestError;
use crate::limits::KeyedLimiter;
use crate::store::{GroupCommit, Store, StreamMeta};
use kith_protocol::roster::VerifiedRoster;

/// Most distinct devices and addresses tracked by the rate limiters.
const MAX_LIMITER_KEYS: usize = 100_000;
/// Pending notifications per account before a slow subscriber lags (it then gets a summary).
const NOTIFY_CAPACITY: usize = 256;
/// Bytes of pull pages the relay holds at once (built, or sent and not yet acknowledged), at
/// least two of the largest pages: what bounds the relay's memory under pull load.
const PULL_BYTES_IN_FLIGHT: usize = 64 * 1024 * 1024;

/// Locks a std mutex, recovering from poisoning (a panicking holder leaves consistent data:
/// every critical section writes storage before it updates memory).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What subscribers of an account hear.
#[derive(Debug, Clone, Copy)]
pub(crate) enum AccountEvent {
    /// A device's stream grew to `last_seq`.
    Pushed { device: DeviceId, last_seq: u64 },
    /// The account was deleted.
    Deleted,
}

/// The mutable part of an account, behind one lock: every write to the account's storage
/// happens under it, so counters and stored data never disagree.
#[derive(Debug)]
pub(crate) struct AccountInner {
    pub roster: Arc<VerifiedRoster>,
    pub streams: HashMap<DeviceId, StreamMeta>,
    /// For each stream with envelopes written but not yet known durable, the last seq that
    /// is: pulls serve a stream only up to it (streams absent here are durable throughout).
    /// A successful commit awaited by the stream's own push, or by a pull that found the
    /// entry, lifts it.
    pub durable_until: HashMap<DeviceId, u64>,
    /// The highest roster version known durable; `roster` may be newer while its group commit
    /// is under way, and is served only once it is durable (`roster::durable_roster`).
    pub roster_durable: u64,
    pub envelope_bytes: u64,
    pub envelopes: u64,
    pub sealed_key_bytes: u64,
    pub deleted: bool,
    /// Devices whose pushes are refused until the deadline: a verified roster that removes
    /// them was refused because their stream was past its `final_seq`, and its signer is
    /// pulling that stream to sign again (docs/PROTOCOL.md §4, "Removing a device").
    pub fenced: HashMap<DeviceId, Instant>,
}

impl AccountInner {
    pub fn bytes_used(&self) -> u64 {
        self.envelope_bytes + self.sealed_key_bytes
    }

    /// The last seq of `device`'s stream that a pull may serve: everything stored that is
    /// durable.
    pub fn servable_last_seq(&self, device: &DeviceId, meta: &StreamMeta) -> u64 {
        self.durable_until
            .get(device)
            .map_or(meta.last_seq, |&durable| durable.min(meta.last_seq))
    }

    /// Whether pushes of `device` are refused for now (a revocation of it is under way).
    /// Forgets the fence once its deadline passed.
    pub fn is_fenced(&mut self, device: &DeviceId, now: Instant) -> bool {
        match self.fenced.get(device) {
            Some(&until) if until > now => true,
            Some(_) => {
                self.fenced.remove(device);
                false
            }
            None => false,
        }
    }

    /// Records that `device`'s stream is durable up to `seq`.
    pub fn made_durable(&mut self, device: &DeviceId, seq: u64) {
        let stored = self.streams.get(device).map_or(0, |m| m.last_seq);
        if let Some(durable) = self.durable_until.get_mut(device) {
            *durable = (*durable).max(seq);
            if *durable >= stored {
                self.durable_until.remove(device);
            }
        }
    }
}

/// An account being served.
#[derive(Debug)]
pub(crate) struct Account {
    pub id: AccountId,
    inner: Mutex<AccountInner>,
    pub events: broadcast::Sender<AccountEvent>,
}

impl Account {
    fn new(
        id: AccountId,
        roster: VerifiedRoster,
        streams: Vec<(DeviceId, StreamMeta)>,
        sealed_key_bytes: u64,
    ) -> Self {
        let envelope_bytes = streams.iter().map(|(_, m)| m.bytes).sum();
        let envelopes = streams.iter().map(|(_, m)| m.envelopes).sum();
        let (events, _) = broadcast::channel(NOTIFY_CAPACITY);
        let roster_durable = roster.version();
        Self {
            id,
            inner: Mutex::new(AccountInner {
                roster: Arc::new(roster),
                roster_durable,
                streams: streams.into_iter().collect(),
                durable_until: HashMap::new(),
                envelope_bytes,
                envelopes,
                sealed_key_bytes,
                deleted: false,
                fenced: HashMap::new(),
            }),
            events,
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, AccountInner> {
        lock(&self.inner)
    }

    /// The current roster.
    pub fn roster(&self) -> Arc<VerifiedRoster> {
        self.lock().roster.clone()
    }
}

/// The accounts in memory, loaded from storage on first use.
#[derive(Debug, Default)]
pub(crate) struct Accounts {
    map: Mutex<AccountMap>,
}

/// Accounts kept in memory beyond those in use: past this, accounts no request or
/// subscription holds are dropped (they are reloaded from storage on next use).
const MAX_IDLE_ACCOUNTS: usize = 10_000;

#[derive(Debug, Default)]
struct AccountMap {
    accounts: HashMap<AccountId, Arc<Account>>,
    /// Size at which the next sweep for idle accounts runs.
    next_sweep: usize,
}

impl AccountMap {
    /// Inserts (unless present) and returns the account; sweeps idle ones when large.
    fn insert(&mut self, id: AccountId, account: Arc<Account>, replace: bool) -> Arc<Account> {
        let account = if replace {
            self.accounts.insert(id, account.clone());
            account
        } else {
            self.accounts.entry(id).or_insert(account).clone()
        };
        if self.accounts.len() > self.next_sweep.max(MAX_IDLE_ACCOUNTS) {
            evict_idle(&mut self.accounts);
            // Accounts in use stay; do not sweep again before the map has doubled.
            self.next_sweep = self.accounts.len() * 2;
        }
        account
    }
}

/// Drops the entries nothing but the map holds.
fn evict_idle<K, V>(map: &mut HashMap<K, Arc<V>>) {
    map.retain(|_, value| Arc::strong_count(value) > 1);
}

impl Accounts {
    /// The account, loading it from storage if needed; `None` if it does not exist.
    pub fn get(
        &self,
        store: &dyn Store,
        id: &AccountId,
    ) -> Result<Option<Arc<Account>>, RequestError> {
        if let Some(account) = lock(&self.map).accounts.get(id) {
            return Ok(Some(account.clone()));
        }
        let Some(loaded) = store.load_account(id).map_err(RequestError::storage)? else {
            return Ok(None);
        };
        let roster = VerifiedRoster::verify(&loaded.roster, Some(id), None).map_err(|_| {
            tracing::error!(account = %short(id.as_bytes()), "stored roster does not verify");
            RequestError::storage("stored roster does not verify")
        })?;
        let account = Arc::new(Account::new(
            *id,
            roster,
            loaded.streams,
            loaded.sealed_key_bytes,
        ));
        Ok(Some(lock(&self.map).insert(*id, account, false)))
    }

    /// Adds a freshly created account.
    pub fn insert_new(&self, roster: VerifiedRoster) -> Arc<Account> {
        let id = roster.account_id();
        let account = Arc::new(Account::new(id, roster, Vec::new(), 0));
        lock(&self.map).insert(id, account, true)
    }

    /// Forgets a deleted account.
    pub fn remove(&self, id: &AccountId) {
        lock(&self.map).accounts.remove(id);
    }
}

/// Everything the handlers share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub config: RelayConfig,
    pub store: Arc<dyn Store>,
    pub commit: GroupCommit,
    pub accounts: Accounts,
    pub device_limiter: KeyedLimiter<(AccountId, DeviceId)>,
    pub lookup_limiter: KeyedLimiter<IpAddr>,
    pub shutdown: watch::Receiver<bool>,
    pub token_inbox: PathBuf,
    /// Permits are bytes of pull pages in flight (see [`Shared::pull_page_bytes`]).
    pub pull_budget: Arc<Semaphore>,
    /// Permits `pull_budget` started with.
    pub pull_budget_bytes: usize,
    /// Bumped on every pairing slot put: wakes the takes waiting for a slot to be filled.
    pub pairing_puts: watch::Sender<u64>,
}

impl Shared {
    pub fn new(
        config: RelayConfig,
        store: Arc<dyn Store>,
        commit: GroupCommit,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let l = &config.limits;
        let largest_page = l.pull_max_bytes as usize
            + l.max_envelope_bytes as usize
            + l.pull_max_envelopes as usize * 32
            + 64 * 1024;
        let pull_budget_bytes = PULL_BYTES_IN_FLIGHT
            .max(2 * largest_page)
            .min(u32::MAX as usize);
        Self {
            device_limiter: KeyedLimiter::new(
                l.requests_per_second,
                Duration::from_secs(1),
                l.request_burst,
                MAX_LIMITER_KEYS,
            ),
            lookup_limiter: KeyedLimiter::new(
                l.lookups_per_minute,
                Duration::from_secs(60),
                l.lookups_per_minute,
                MAX_LIMITER_KEYS,
            ),
            token_inbox: crate::token_inbox(&config.data_dir),
            pull_budget: Arc::new(Semaphore::new(pull_budget_bytes)),
            pull_budget_bytes,
            pairing_puts: watch::Sender::new(0),
            accounts: Accounts::default(),
            config,
            store,
            commit,
            shutdown,
        }
    }
}

impl Shared {
    /// The most a pull page asking for `max_bytes` of envelopes can take once encoded: the
    /// bound, one envelope over it (a page always holds one), the framing of each envelope
    /// (device id, seq, lengths: under 32 bytes) and of the streams.
    pub fn pull_page_bytes(&self, max_bytes: usize) -> usize {
        let l = &self.config.limits;
        let page = max_bytes
            + l.max_envelope_bytes as usize
            + l.pull_max_envelopes as usize * 32
            + 64 * 1024;
        page.min(self.pull_budget_bytes)
    }
}

/// One QUIC connection's state.
#[derive(Debug)]
pub(crate) struct Conn {
    pub connection: quinn::Connection,
    pub remote: SocketAddr,
    pub challenge: Mutex<Option<[u8; 32]>>,
    pub device: Mutex<Option<(AccountId, DeviceId)>>,
}

impl Conn {
    pub fn new(connection: quinn::Connection) -> Self {
        Self {
            remote: connection.remote_address(),
            connection,
            challenge: Mutex::new(None),
            device: Mutex::new(None),
        }
    }

    /// The TLS keying-material exporter value that binds authentication to this session.
    pub fn exporter(&self) -> Result<[u8; 32], RequestError> {
        let mut out = [0u8; 32];
        self.connection
            .export_keying_material(
                &mut out,
                kith_protocol::encoding::labels::RELAY_AUTH_EXPORTER.as_bytes(),
                b"",
            )
            .map_err(|_| RequestError::internal("TLS exporter unavailable"))?;
        Ok(out)
    }

    /// Takes the pending challenge (each challenge answers one authentication).
    pub fn take_challenge(&self) -> Option<[u8; 32]> {
        lock(&self.challenge).take()
    }
}

/// The first four bytes of an id as hex: enough to correlate logs, too little to identify.
pub(crate) fn short(id: &[u8]) -> String {
    hex::encode(&id[..id.len().min(4)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_entries_held_elsewhere_survive_a_sweep() {
        let held = Arc::new(1);
        let mut map = HashMap::from([(1, held.clone()), (2, Arc::new(2))]);
        evict_idle(&mut map);
        assert_eq!(map.len(), 1);
        assert!(Arc::ptr_eq(&map[&1], &held));
    }
}
