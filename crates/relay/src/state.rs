//! State shared by every connection: configuration, storage, the in-memory view of accounts,
//! rate limiters; and the per-connection state (challenge, authenticated device).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kith_protocol::ids::{AccountId, DeviceId};
use kith_protocol::keys::{DeviceSigningKey, DeviceVerifyingKey, system_rng};
use tokio::sync::{Semaphore, broadcast, watch};

use crate::config::RelayConfig;
use crate::error::RequestError;
use crate::rate_limit::{KeyedLimiter, shrink};
use crate::store::{AccountSettings, GroupCommit, LoadedAccount, Store, StreamMeta};
use kith_protocol::roster::VerifiedRoster;

/// Most distinct devices and addresses tracked by the rate limiters (buckets that refilled
/// are dropped by the periodic sweep long before that).
pub(crate) const MAX_LIMITER_KEYS: usize = 100_000;
/// Pending notifications per account before a slow subscriber lags (it then gets a summary).
const NOTIFY_CAPACITY: usize = 256;
/// Bytes of pull pages the relay holds at once (built, or sent and not yet acknowledged), at
/// least two of the largest pages: what bounds the relay's memory under pull load.
const PULL_BYTES_IN_FLIGHT: usize = 64 * 1024 * 1024;
/// One account may hold this fraction of the pull budget (at least two of the largest pages):
/// a tenant whose pulls are never read stalls only its own.
const PULL_SHARES: usize = 8;

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
    /// What the operator set (suspension, quotas).
    pub settings: AccountSettings,
    /// The last day recorded by [`Store::mark_active`] in this run (0: none yet).
    pub active_day: u32,
}

impl AccountInner {
    pub fn bytes_used(&self) -> u64 {
        self.envelope_bytes + self.sealed_key_bytes
    }

    /// Bytes the account may store: its own quota, else the relay's.
    pub fn max_bytes(&self, limits: &crate::config::Bounds) -> u64 {
        self.settings.max_bytes.unwrap_or(limits.max_account_bytes)
    }

    /// Devices the account may have: its own quota, else the relay's.
    pub fn max_devices(&self, limits: &crate::config::Bounds) -> u32 {
        self.settings
            .max_devices
            .unwrap_or(limits.max_devices_per_account)
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

/// Counts the live objects of one kind: each [`Live`] token from [`LiveCount::enter`] counts
/// one until it is dropped. What the soak test (and `RelayHandle::memory`) reads to prove that
/// nothing a connection or an account made outlives it.
#[derive(Debug, Default, Clone)]
pub(crate) struct LiveCount(Arc<AtomicUsize>);

impl LiveCount {
    /// Counts one more, until the token is dropped.
    pub fn enter(&self) -> Live {
        self.0.fetch_add(1, Ordering::Relaxed);
        Live(self.0.clone())
    }

    /// How many tokens are alive.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    /// Counts one more for good (an event counter, such as retries sent).
    pub fn bump(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `n` more (bytes, say) until the token is dropped.
    pub fn enter_many(&self, n: usize) -> LiveMany {
        self.0.fetch_add(n, Ordering::Relaxed);
        LiveMany(self.0.clone(), n)
    }
}

/// `n` counted units (see [`LiveCount::enter_many`]).
#[derive(Debug)]
pub(crate) struct LiveMany(Arc<AtomicUsize>, usize);

impl Drop for LiveMany {
    fn drop(&mut self) {
        self.0.fetch_sub(self.1, Ordering::Relaxed);
    }
}

/// One counted object (see [`LiveCount`]).
#[derive(Debug)]
pub(crate) struct Live(Arc<AtomicUsize>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The relay's counters of live objects, by kind.
#[derive(Debug, Default, Clone)]
pub(crate) struct LiveCounts {
    /// [`Conn`] objects.
    pub connections: LiveCount,
    /// Tasks serving one request stream (subscriptions included).
    pub requests: LiveCount,
    /// Subscriptions being served.
    pub subscriptions: LiveCount,
    /// [`Account`] objects, in the map or not.
    pub accounts: LiveCount,
    /// Notification channels (an account has one only while it has subscribers).
    pub channels: LiveCount,
    /// Bytes reserved for request frames being received, over every connection.
    pub frame_bytes: LiveCount,
    /// QUIC Retry packets sent (a count, never decremented).
    pub retries: LiveCount,
    /// Connections the relay began a TLS handshake for (`Incoming::accept`; a count, never
    /// decremented).
    pub handshakes: LiveCount,
    /// Connections refused at their first packet, before any handshake, by a connection
    /// limit (a count, never decremented).
    pub refused: LiveCount,
}

/// An account being served.
#[derive(Debug)]
pub(crate) struct Account {
    pub id: AccountId,
    inner: Mutex<AccountInner>,
    /// The notification channel, only while someone subscribes: 256 slots are 16 KiB, which
    /// every account in memory used to carry whether or not any device listened.
    events: Mutex<Option<(broadcast::Sender<AccountEvent>, Live)>>,
    /// The account's share of the relay's pull budget (bytes of pages in flight): however
    /// many pulls one tenant leaves unread, the others' pages still find room.
    pub pull_budget: Arc<Semaphore>,
    live: LiveCounts,
    _live: Live,
}

impl Account {
    fn new(
        id: AccountId,
        roster: VerifiedRoster,
        streams: Vec<(DeviceId, StreamMeta)>,
        sealed_key_bytes: u64,
        settings: AccountSettings,
        live: &LiveCounts,
        pull_share: usize,
    ) -> Self {
        let envelope_bytes = streams.iter().map(|(_, m)| m.bytes).sum();
        let envelopes = streams.iter().map(|(_, m)| m.envelopes).sum();
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
                settings,
                active_day: 0,
            }),
            events: Mutex::new(None),
            pull_budget: Arc::new(Semaphore::new(pull_share)),
            live: live.clone(),
            _live: live.accounts.enter(),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, AccountInner> {
        lock(&self.inner)
    }

    /// The current roster.
    pub fn roster(&self) -> Arc<VerifiedRoster> {
        self.lock().roster.clone()
    }

    /// A receiver of the account's events from now on (the channel is made on first use).
    pub fn subscribe(&self) -> broadcast::Receiver<AccountEvent> {
        let mut events = lock(&self.events);
        let (sender, _) = events.get_or_insert_with(|| {
            let (sender, _) = broadcast::channel(NOTIFY_CAPACITY);
            (sender, self.live.channels.enter())
        });
        sender.subscribe()
    }

    /// Tells the subscribers, if any; a channel nobody listens to any more is dropped.
    pub fn notify(&self, event: AccountEvent) {
        let mut events = lock(&self.events);
        if let Some((sender, _)) = events.as_ref() {
            if sender.receiver_count() == 0 {
                *events = None;
            } else {
                let _ = sender.send(event);
            }
        }
    }

    /// Drops the channel if no subscriber is left (a subscription calls this as it ends, after
    /// dropping its receiver).
    pub fn unsubscribed(&self) {
        let mut events = lock(&self.events);
        if events
            .as_ref()
            .is_some_and(|(sender, _)| sender.receiver_count() == 0)
        {
            *events = None;
        }
    }

    /// Takes what storage holds now: another relay on the same database changed the account.
    /// Stream bounds move forward only, a roster only to a higher version.
    pub fn absorb(&self, loaded: LoadedAccount, roster: Option<VerifiedRoster>) {
        let mut inner = self.lock();
        if let Some(roster) = roster
            && roster.version() > inner.roster.version()
        {
            inner.roster_durable = inner.roster_durable.max(roster.version());
            inner.fenced.retain(|device, _| !roster.is_removed(device));
            inner.roster = Arc::new(roster);
        }
        for (device, meta) in loaded.streams {
            let held = inner.streams.entry(device).or_default();
            if meta.last_seq >= held.last_seq {
                *held = meta;
            }
        }
        inner.envelope_bytes = inner.streams.values().map(|m| m.bytes).sum();
        inner.envelopes = inner.streams.values().map(|m| m.envelopes).sum();
        inner.sealed_key_bytes = loaded.sealed_key_bytes;
        inner.settings = loaded.settings;
    }

    /// Whether dropping this account from memory loses nothing: storage holds all of it
    /// (nothing is waiting to become durable), and no request or subscription holds it.
    fn idle(self: &Arc<Self>) -> bool {
        if Arc::strong_count(self) > 1 {
            return false;
        }
        let inner = self.lock();
        inner.durable_until.is_empty() && inner.roster_durable >= inner.roster.version()
    }
}

/// The accounts in memory, loaded from storage on first use, at most `capacity` of them idle.
#[derive(Debug)]
pub(crate) struct Accounts {
    map: Mutex<AccountMap>,
    live: LiveCounts,
    /// Each account's share of the pull budget, in bytes.
    pull_share: usize,
}

#[derive(Debug)]
struct Cached {
    account: Arc<Account>,
    /// When it was last asked for ([`AccountMap::clock`]).
    used: u64,
}

/// A least-recently-used cache of accounts. Accounts in use (held by a request or a
/// subscription) are never evicted, so the map may exceed its capacity while more than that
/// many are in use; idle ones beyond it go, least recently used first.
#[derive(Debug)]
struct AccountMap {
    accounts: HashMap<AccountId, Cached>,
    /// Idle accounts kept in memory.
    capacity: usize,
    /// Counts lookups: the `used` stamp of the entries.
    clock: u64,
    /// Size at which the next eviction runs: above `capacity` by a quarter of it, so that an
    /// eviction (a sort of the idle entries) runs once per `capacity / 4` loads at most.
    next_sweep: usize,
}

impl AccountMap {
    fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            accounts: HashMap::new(),
            capacity,
            clock: 0,
            next_sweep: capacity + capacity / 4,
        }
    }

    fn get(&mut self, id: &AccountId) -> Option<Arc<Account>> {
        self.clock += 1;
        let entry = self.accounts.get_mut(id)?;
        entry.used = self.clock;
        Some(entry.account.clone())
    }

    /// Inserts (unless present, or replacing) and returns the account; evicts idle ones when
    /// the map has grown past its bound.
    fn insert(&mut self, id: AccountId, account: Arc<Account>, replace: bool) -> Arc<Account> {
        self.clock += 1;
        let used = self.clock;
        let account = match self.accounts.entry(id) {
            std::collections::hash_map::Entry::Occupied(mut entry) if replace => {
                entry.insert(Cached { account, used });
                entry.get().account.clone()
            }
            std::collections::hash_map::Entry::Occupied(mut entry) => {
                entry.get_mut().used = used;
                entry.get().account.clone()
            }
            std::collections::hash_map::Entry::Vacant(entry) => {
                entry.insert(Cached { account, used }).account.clone()
            }
        };
        if self.accounts.len() > self.next_sweep {
            self.evict();
        }
        account
    }

    /// Drops idle accounts, least recently used first, until `capacity` remain (or only
    /// accounts in use are left), and gives back the table's spare room.
    fn evict(&mut self) {
        let excess = self.accounts.len().saturating_sub(self.capacity);
        if excess > 0 {
            let mut idle: Vec<(u64, AccountId)> = self
                .accounts
                .iter()
                .filter(|(_, cached)| cached.account.idle())
                .map(|(id, cached)| (cached.used, *id))
                .collect();
            if idle.len() > excess {
                idle.select_nth_unstable(excess);
                idle.truncate(excess);
            }
            for (_, id) in idle {
                self.accounts.remove(&id);
            }
        }
        shrink(&mut self.accounts);
        // Accounts in use stay: do not try again before another quarter of the capacity.
        self.next_sweep = self.accounts.len().max(self.capacity) + (self.capacity / 4).max(1);
    }
}

impl Accounts {
    /// At most `capacity` idle accounts in memory; each may hold `pull_share` bytes of pull
    /// pages in flight.
    pub fn new(capacity: usize, live: &LiveCounts, pull_share: usize) -> Self {
        Self {
            map: Mutex::new(AccountMap::new(capacity)),
            live: live.clone(),
            pull_share,
        }
    }

    /// The account, loading it from storage if needed; `None` if it does not exist.
    pub fn get(
        &self,
        store: &dyn Store,
        id: &AccountId,
    ) -> Result<Option<Arc<Account>>, RequestError> {
        if let Some(account) = lock(&self.map).get(id) {
            return Ok(Some(account));
        }
        let Some(loaded) = store.load_account(id).map_err(RequestError::storage)? else {
            return Ok(None);
        };
        let roster = VerifiedRoster::verify(&loaded.roster, Some(id), None).map_err(|_| {
            tracing::error!(account = %pseudonym(id.as_bytes()), "stored roster does not verify");
            RequestError::storage("stored roster does not verify")
        })?;
        let account = Arc::new(Account::new(
            *id,
            roster,
            loaded.streams,
            loaded.sealed_key_bytes,
            loaded.settings,
            &self.live,
            self.pull_share,
        ));
        Ok(Some(lock(&self.map).insert(*id, account, false)))
    }

    /// Reads a cached account again from storage, which another relay on the same database
    /// changed: a deleted account is marked so (its subscribers hear it) and forgotten.
    /// Returns the account if it is cached and still exists; does nothing for one not cached
    /// (it is read afresh when next used).
    pub fn refresh(
        &self,
        store: &dyn Store,
        id: &AccountId,
    ) -> Result<Option<Arc<Account>>, RequestError> {
        let Some(account) = lock(&self.map).accounts.get(id).map(|c| c.account.clone()) else {
            return Ok(None);
        };
        Ok(self.reload(store, &account)?.then_some(account))
    }

    /// Reads `account` again from storage (see [`Accounts::refresh`]); `false` if it was
    /// deleted.
    pub fn reload(&self, store: &dyn Store, account: &Account) -> Result<bool, RequestError> {
        let id = &account.id;
        let Some(loaded) = store.load_account(id).map_err(RequestError::storage)? else {
            account.lock().deleted = true;
            account.notify(AccountEvent::Deleted);
            let mut map = lock(&self.map);
            if map
                .accounts
                .get(id)
                .is_some_and(|c| std::ptr::eq(Arc::as_ptr(&c.account), account))
            {
                map.accounts.remove(id);
            }
            return Ok(false);
        };
        let roster = if loaded.roster.as_slice() == account.roster().encoded() {
            None
        } else {
            Some(
                VerifiedRoster::verify(&loaded.roster, Some(id), None).map_err(|_| {
                    tracing::error!(account = %short(id.as_bytes()), "stored roster does not verify");
                    RequestError::storage("stored roster does not verify")
                })?,
            )
        };
        account.absorb(loaded, roster);
        Ok(true)
    }

    /// The account if it is in memory (without loading it, or counting as a use).
    pub fn cached(&self, id: &AccountId) -> Option<Arc<Account>> {
        lock(&self.map).accounts.get(id).map(|c| c.account.clone())
    }

    /// The ids of the accounts in memory.
    pub fn cached_ids(&self) -> Vec<AccountId> {
        lock(&self.map).accounts.keys().copied().collect()
    }

    /// Adds a freshly created account.
    pub fn insert_new(&self, roster: VerifiedRoster) -> Arc<Account> {
        let id = roster.account_id();
        let account = Arc::new(Account::new(
            id,
            roster,
            Vec::new(),
            0,
            AccountSettings::default(),
            &self.live,
            self.pull_share,
        ));
        lock(&self.map).insert(id, account, true)
    }

    /// Forgets a deleted account.
    pub fn remove(&self, id: &AccountId) {
        lock(&self.map).accounts.remove(id);
    }

    /// Evicts idle accounts beyond the capacity now (the periodic sweep: between sweeps the
    /// map may run a quarter over its capacity).
    pub fn trim(&self) {
        let mut map = lock(&self.map);
        if map.accounts.len() > map.capacity {
            map.evict();
        }
    }

    /// Accounts in the map.
    pub fn len(&self) -> usize {
        lock(&self.map).accounts.len()
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
    /// Failed authentications per source address (docs/PROTOCOL.md §10).
    pub auth_limiter: KeyedLimiter<IpAddr>,
    /// Connections (handshakes included) per source address.
    pub per_address: Mutex<HashMap<IpAddr, usize>>,
    /// New connections per second before the relay asks for a QUIC Retry.
    pub handshake_limiter: KeyedLimiter<()>,
    /// Handshakes started per source address: a burst of its connection cap, then
    /// `handshakes_per_address_per_minute`.
    pub address_handshakes: KeyedLimiter<IpAddr>,
    /// Source addresses a per-address limit refused lately, whose new connections the socket
    /// drops unanswered (`crate::gate`).
    pub quiet: Arc<crate::gate::QuietAddresses>,
    /// A key no device holds: an authentication naming no known device is checked against
    /// it, so that every failure costs the relay, and tells the peer, the same.
    pub decoy_key: DeviceVerifyingKey,
    pub shutdown: watch::Receiver<bool>,
    pub token_inbox: PathBuf,
    /// Permits are bytes of pull pages in flight (see [`Shared::pull_page_bytes`]).
    pub pull_budget: Arc<Semaphore>,
    /// Permits `pull_budget` started with.
    pub pull_budget_bytes: usize,
    /// Bumped on every pairing slot put: wakes the takes waiting for a slot to be filled.
    pub pairing_puts: watch::Sender<u64>,
    /// Live objects by kind.
    pub live: LiveCounts,
    /// Whether other relays write to the same store (then a push or roster change may find
    /// that one of them moved the account on, and pulls read the account afresh).
    pub shared_store: bool,
    /// Every request that writes to the store holds it shared; an online backup holds it
    /// exclusively while it flushes and copies the store (`crate::control`).
    pub write_barrier: tokio::sync::RwLock<()>,
    /// What the relay counts (served by the metrics listener, if any).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Sends wake-up notifications, when a push gateway is configured (`crate::wake`).
    pub waker: Option<crate::wake::Waker>,
}

impl Shared {
    pub fn new(
        config: RelayConfig,
        store: Arc<dyn Store>,
        commit: GroupCommit,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let l = &config.bounds;
        let largest_page = l.pull_max_bytes as usize
            + l.max_envelope_bytes as usize
            + l.pull_max_envelopes as usize * 32
            + 64 * 1024;
        let live = LiveCounts::default();
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
            auth_limiter: KeyedLimiter::new(
                l.auth_failures_per_minute,
                Duration::from_secs(60),
                l.auth_failures_per_minute,
                MAX_LIMITER_KEYS,
            ),
            decoy_key: DeviceSigningKey::generate(&mut system_rng()).public(),
            per_address: Mutex::new(HashMap::new()),
            handshake_limiter: KeyedLimiter::new(
                l.retry_above_handshakes_per_second,
                Duration::from_secs(1),
                l.retry_above_handshakes_per_second,
                1,
            ),
            address_handshakes: KeyedLimiter::new(
                l.handshakes_per_address_per_minute,
                Duration::from_secs(60),
                l.max_connections_per_address,
                MAX_LIMITER_KEYS,
            ),
            quiet: Arc::new(crate::gate::QuietAddresses::new(
                l.refused_address_quiet,
                MAX_LIMITER_KEYS,
                0,
                Arc::default(),
            )),
            token_inbox: crate::token_inbox(&config.data_dir),
            pull_budget: Arc::new(Semaphore::new(pull_budget_bytes)),
            pull_budget_bytes,
            pairing_puts: watch::Sender::new(0),
            write_barrier: tokio::sync::RwLock::new(()),
            accounts: Accounts::new(
                config.cached_accounts,
                &live,
                (pull_budget_bytes / PULL_SHARES).max(2 * largest_page),
            ),
            live,
            shared_store: false,
            metrics: Arc::default(),
            waker: None,
            config,
            store,
            commit,
            shutdown,
        }
    }
}

impl Shared {
    /// Whether `ip` holds all its connection slots now (a new connection from it would be
    /// refused).
    pub fn address_full(&self, ip: IpAddr) -> bool {
        lock(&self.per_address)
            .get(&ip)
            .is_some_and(|count| *count >= self.config.bounds.max_connections_per_address as usize)
    }

    /// Takes one of `ip`'s connection slots (`max_connections_per_address`), held until the
    /// returned slot is dropped; `None` when the address has none left.
    pub fn address_slot(self: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        let mut map = lock(&self.per_address);
        let count = map.entry(ip).or_insert(0);
        if *count >= self.config.bounds.max_connections_per_address as usize {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            shared: Arc::downgrade(self),
            ip,
        })
    }

    /// The most a pull page asking for `max_bytes` of envelopes can take once encoded: the
    /// bound, one envelope over it (a page always holds one), the framing of each envelope
    /// (device id, seq, lengths: under 32 bytes) and of the streams.
    pub fn pull_page_bytes(&self, max_bytes: usize) -> usize {
        let l = &self.config.bounds;
        let page = max_bytes
            + l.max_envelope_bytes as usize
            + l.pull_max_envelopes as usize * 32
            + 64 * 1024;
        page.min(self.pull_budget_bytes)
    }
}

/// One of a source address's connection slots (see [`Shared::address_slot`]).
#[derive(Debug)]
pub(crate) struct AddressSlot {
    shared: std::sync::Weak<Shared>,
    ip: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let mut map = lock(&shared.per_address);
        if let Some(count) = map.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.ip);
                shrink(&mut map);
            }
        }
    }
}

/// One QUIC connection's state.
#[derive(Debug)]
pub(crate) struct Conn {
    pub connection: quinn::Connection,
    pub remote: SocketAddr,
    pub challenge: Mutex<Option<[u8; 32]>>,
    pub device: Mutex<Option<(AccountId, DeviceId)>>,
    /// Bytes of request frames this connection may have the relay buffer at once (permits
    /// are bytes; `max_frame_bytes` of them).
    pub frame_budget: Arc<Semaphore>,
    /// Another `max_frame_bytes`, only for the stream every earlier stream of the connection
    /// has passed (its ordering point, `push_order`): pipelined pushes that arrived first
    /// hold the budget while they wait for that stream, which must still get in. So a
    /// connection has the relay buffer at most twice `max_frame_bytes` of requests.
    pub frame_reserve: Arc<Semaphore>,
    /// Request streams being served, and when the last one ended: what tells an idle
    /// unauthenticated connection (docs/PROTOCOL.md §12, "Before authentication").
    activity: Mutex<(usize, Instant)>,
    /// Frames refused as too large or undecodable on this connection.
    pub bad_frames: AtomicUsize,
    /// The order of this connection's request streams, for pipelined pushes.
    pub push_order: crate::handlers::push::PushOrder,
    _live: Live,
}

impl Conn {
    pub fn new(connection: quinn::Connection, live: &LiveCounts, max_frame_bytes: u32) -> Self {
        Self {
            remote: connection.remote_address(),
            connection,
            challenge: Mutex::new(None),
            device: Mutex::new(None),
            frame_budget: Arc::new(Semaphore::new(max_frame_bytes as usize)),
            frame_reserve: Arc::new(Semaphore::new(max_frame_bytes as usize)),
            activity: Mutex::new((0, Instant::now())),
            bad_frames: AtomicUsize::new(0),
            push_order: Default::default(),
            _live: live.connections.enter(),
        }
    }

    /// Whether the connection authenticated as a device.
    pub fn is_authenticated(&self) -> bool {
        lock(&self.device).is_some()
    }

    /// A request stream started.
    pub fn request_started(&self) {
        lock(&self.activity).0 += 1;
    }

    /// A request stream ended.
    pub fn request_ended(&self) {
        let mut activity = lock(&self.activity);
        activity.0 = activity.0.saturating_sub(1);
        activity.1 = Instant::now();
    }

    /// Since when no request stream has been open; `None` while one is.
    pub fn idle_since(&self) -> Option<Instant> {
        let activity = lock(&self.activity);
        (activity.0 == 0).then_some(activity.1)
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

/// The first four bytes of an id as hex, for `debug` logs: enough to correlate, and to find
/// the account in storage.
pub(crate) fn short(id: &[u8]) -> String {
    hex::encode(&id[..id.len().min(4)])
}

/// A pseudonym of an id for logs at `info` and above: four bytes of an HMAC under a key drawn
/// at start-up and never written anywhere, so lines about one account can be correlated within
/// a run, but a log cannot be matched against ids (which the relay stores and other parties
/// know) nor across restarts (docs/PROTOCOL.md §11).
pub(crate) fn pseudonym(id: &[u8]) -> String {
    static KEY: std::sync::OnceLock<ring::hmac::Key> = std::sync::OnceLock::new();
    let key = KEY.get_or_init(|| {
        let mut secret = zeroize::Zeroizing::new([0u8; 32]);
        // Without randomness the pseudonym is still not the id's prefix, only stable.
        let _ = getrandom::fill(&mut secret[..]);
        ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret[..])
    });
    let tag = ring::hmac::sign(key, id);
    hex::encode(&tag.as_ref()[..4])
}

#[cfg(test)]
mod tests {
    use super::*;
    use kith_protocol::keys::{
        AccountSigningKey, DeviceAgreementKey, DeviceSigningKey, EpochSecret, system_rng,
    };
    use kith_protocol::roster::NewDevice;

    fn account(live: &LiveCounts) -> Arc<Account> {
        let mut rng = system_rng();
        let first = NewDevice {
            signing_key: DeviceSigningKey::generate(&mut rng).public(),
            agreement_key: DeviceAgreementKey::generate(&mut rng).public(),
            name: "phone".into(),
        };
        let roster = VerifiedRoster::genesis(
            &AccountSigningKey::generate(&mut rng),
            first,
            &EpochSecret::generate(&mut rng),
            0,
            &mut rng,
        )
        .unwrap();
        Arc::new(Account::new(
            roster.account_id(),
            roster,
            Vec::new(),
            0,
            AccountSettings::default(),
            live,
            1 << 20,
        ))
    }

    #[test]
    fn idle_accounts_beyond_the_capacity_go_least_recently_used_first() {
        let live = LiveCounts::default();
        let mut map = AccountMap::new(4);
        let accounts: Vec<Arc<Account>> = (0..5).map(|_| account(&live)).collect();
        let ids: Vec<AccountId> = accounts.iter().map(|a| a.id).collect();
        // One held by a request; the others only by the map.
        let held = accounts[0].clone();
        for account in accounts {
            map.insert(account.id, account, false);
        }
        // Touch the second: the third is now the least recently used idle one.
        map.get(&ids[1]).unwrap();
        assert_eq!(
            map.accounts.len(),
            5,
            "a quarter over the capacity before a sweep"
        );
        map.insert(ids[0], held.clone(), false);
        map.insert(account(&live).id, account(&live), false);
        assert_eq!(map.accounts.len(), 4);
        assert!(map.accounts.contains_key(&ids[0]), "in use: never evicted");
        assert!(map.accounts.contains_key(&ids[1]), "recently used");
        assert!(
            !map.accounts.contains_key(&ids[2]),
            "least recently used idle"
        );
        drop(map);
        drop(held);
        assert_eq!(live.accounts.get(), 0, "no account outlives the map");
    }

    #[test]
    fn accounts_in_use_are_kept_beyond_the_capacity() {
        let live = LiveCounts::default();
        let mut map = AccountMap::new(2);
        let held: Vec<Arc<Account>> = (0..10).map(|_| account(&live)).collect();
        for account in &held {
            map.insert(account.id, account.clone(), false);
        }
        assert_eq!(map.accounts.len(), 10);
        drop(held);
        map.insert(account(&live).id, account(&live), false);
        map.evict();
        assert_eq!(map.accounts.len(), 2);
    }

    #[test]
    fn the_notification_channel_exists_only_while_someone_listens() {
        let live = LiveCounts::default();
        let account = account(&live);
        let event = AccountEvent::Deleted;
        account.notify(event);
        assert_eq!(live.channels.get(), 0, "no subscriber, no channel");
        let mut first = account.subscribe();
        let second = account.subscribe();
        assert_eq!(live.channels.get(), 1);
        account.notify(event);
        assert!(matches!(first.try_recv(), Ok(AccountEvent::Deleted)));
        drop(first);
        account.unsubscribed();
        assert_eq!(live.channels.get(), 1, "one subscriber left");
        drop(second);
        account.unsubscribed();
        assert_eq!(live.channels.get(), 0);
    }
}
