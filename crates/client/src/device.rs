//! A device of an account: creating the account, opening it, linking and revoking devices,
//! recovering, and the state every other module works on.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kith_protocol::bundle::{self, AccountBundle, LinkCode};
use kith_protocol::epoch::{self, EpochKeys};
use kith_protocol::hlc::HlcClock;
use kith_protocol::keys::{
    AccountSigningKey, DeviceAgreementPublicKey, EpochSecret, PairingSecret, RecoveryKey,
    RecoverySealing, SymmetricKey, system_rng,
};
use kith_protocol::proto::{self, request, response};
use kith_protocol::roster::{NewDevice, RosterDevice, VerifiedRoster};
use kith_protocol::{AccountId, DeviceId};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::clock::ClockSkew;
use crate::error::{ClientError, Result};
use crate::keystore::{DeviceSecrets, FileKeyStore, KEY_FILE_NAME as KEY_FILE, KeyStore};
use crate::net::{RelayConnection, RelayTarget, RelayTrust, expect_ok};
use crate::store::{LocalStore, TreeName};

/// Keys of the meta tree.
pub(crate) mod meta {
    pub const SETTINGS: &[u8] = b"settings";
    pub const ROSTER: &[u8] = b"roster";
    pub const ACCOUNT_KEY: &[u8] = b"account-key";
    pub const EPOCH_PREFIX: &[u8] = b"epoch/";
    pub const RECOVERY: &[u8] = b"recovery";
    pub const CLOCK: &[u8] = b"clock";
    /// `clock-skew/<device id>` → what this device last measured of that device's wall clock.
    pub const CLOCK_SKEW_PREFIX: &[u8] = b"clock-skew/";
    /// Last sealed envelope of this device: u64be(seq) || hash (32).
    pub const HEAD: &[u8] = b"head";
    /// Highest seq of this device the relay acknowledged: u64be.
    pub const ACKED: &[u8] = b"acked";
    /// Present once the relay refused this device as removed from the account.
    pub const REVOKED: &[u8] = b"revoked";
    /// `sent/<u64be seq>` → this device's own envelope at `seq`, kept after the relay
    /// acknowledged it and until a compaction covers it, so that a relay that lost it is
    /// restored byte for byte (docs/PROTOCOL.md §13.1).
    pub const SENT_PREFIX: &[u8] = b"sent/";
    /// First seq of this device's last snapshot whose truncation the relay acknowledged: u64be.
    pub const SNAPSHOT_AT: &[u8] = b"snapshot-at";
    /// `cut/<device id>` → the last seq (u64be) the relay held of a removed device whose
    /// stream it lost the tail of, once reported (docs/PROTOCOL.md §13.1).
    pub const CUT_PREFIX: &[u8] = b"cut/";
    /// Evidence of a roster newer than the one held: device id (16) || u64be(epoch) of an
    /// envelope it signed in a later epoch (docs/PROTOCOL.md §4).
    pub const NEWER_EPOCH_SEEN: &[u8] = b"newer-epoch-seen";
    /// Evidence of a roster newer than the one held, or another roster of the same version:
    /// device id (16) || u64be(roster version) || roster hash (32) that an envelope it signed
    /// names as the roster it wrote under (docs/PROTOCOL.md §4).
    pub const NEWER_ROSTER_SEEN: &[u8] = b"newer-roster-seen";
    /// `identities-unsettled/<16 random bytes>` → nothing: written with the first page a pull
    /// commits and removed once the identity rule over its pages has ended and its index is
    /// written. Left behind by a pull that stopped in between (a crash, a dropped future), whose
    /// index entries and records that may link were in memory only: the rule then runs again
    /// over every record ([`crate::Device::settle_interrupted_pulls`]).
    pub const UNSETTLED_PREFIX: &[u8] = b"identities-unsettled/";
}

/// The milliseconds since the Unix epoch, the only clock the client reads.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Settings of this device, stored encrypted in the meta tree.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Settings {
    account_id: String,
    device_name: String,
    relay_address: String,
    /// Hex pins separated by commas: key pins, or the whole-certificate pin of an older
    /// release (replaced by the key pin after the first authenticated connection).
    relay_pin: Option<String>,
    relay_ca_der_hex: Vec<String>,
    /// Trust the system's CA bundle (`--relay-ca system`); absent in older stores.
    #[serde(default)]
    relay_ca_system: bool,
}

impl Settings {
    fn relay(&self) -> Result<RelayTarget> {
        let trust = match &self.relay_pin {
            Some(pin) => RelayTarget::pinned(self.relay_address.clone(), pin)?.trust,
            None if self.relay_ca_system => RelayTrust::SystemRoots,
            None => RelayTrust::CaRoots(
                self.relay_ca_der_hex
                    .iter()
                    .map(|h| hex::decode(h).map_err(|_| ClientError::InvalidInput("bad CA".into())))
                    .collect::<Result<_>>()?,
            ),
        };
        Ok(RelayTarget {
            address: self.relay_address.clone(),
            trust,
        })
    }

    fn new(account: &AccountId, device_name: &str, relay: &RelayTarget) -> Self {
        let (relay_pin, relay_ca_der_hex) = match &relay.trust {
            RelayTrust::PinnedSha256(pin) => (Some(hex::encode(pin)), Vec::new()),
            RelayTrust::PinSet(pins) => (Some(crate::net::pins_to_hex(pins)), Vec::new()),
            RelayTrust::CaRoots(roots) => (None, roots.iter().map(hex::encode).collect()),
            RelayTrust::SystemRoots => (None, Vec::new()),
        };
        Self {
            account_id: account.to_hex(),
            device_name: device_name.to_string(),
            relay_address: relay.address.clone(),
            relay_pin,
            relay_ca_der_hex,
            relay_ca_system: relay.trust == RelayTrust::SystemRoots,
        }
    }
}

/// The local encoding of the recovery sealing material (public key || PSK || lookup id), kept
/// so that this device can re-seal the recovery bundle whenever the account key or epoch
/// changes, without holding the recovery key itself (docs/PROTOCOL.md §6).
fn encode_recovery(sealing: &RecoverySealing) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(sealing.public().to_bytes());
    out.extend_from_slice(sealing.psk().expose());
    out.extend_from_slice(sealing.lookup_id());
    out
}

fn decode_recovery(bytes: &[u8]) -> Option<RecoverySealing> {
    let n = kith_protocol::keys::AGREEMENT_PUBLIC_KEY_LEN;
    if bytes.len() != n + 64 {
        return None;
    }
    Some(RecoverySealing::new(
        DeviceAgreementPublicKey::from_slice(&bytes[..n]).ok()?,
        SymmetricKey::from_slice(&bytes[n..n + 32]).ok()?,
        bytes[n + 32..].try_into().ok()?,
    ))
}

/// The account state a device holds: what it trusts and the keys it acts with.
pub(crate) struct AccountState {
    pub(crate) account_id: AccountId,
    pub(crate) roster: VerifiedRoster,
    pub(crate) account_key: AccountSigningKey,
    pub(crate) epochs: EpochKeys,
    pub(crate) recovery: Option<RecoverySealing>,
    pub(crate) clock: HlcClock,
}

impl AccountState {
    /// The state of a device just set up (created, recovered or linked) in the account of
    /// `roster`: its clock starts afresh.
    fn fresh(
        roster: VerifiedRoster,
        account_key: AccountSigningKey,
        epochs: EpochKeys,
        recovery: Option<RecoverySealing>,
        device_id: DeviceId,
    ) -> Self {
        AccountState {
            account_id: roster.account_id(),
            roster,
            account_key,
            epochs,
            recovery,
            clock: HlcClock::new(device_id),
        }
    }
}

pub(crate) struct Inner {
    pub(crate) home: PathBuf,
    pub(crate) secrets: DeviceSecrets,
    pub(crate) device_id: DeviceId,
    pub(crate) store: LocalStore,
    /// The relay this device syncs with; changed by `kith relay move` and `kith relay set`.
    pub(crate) relay: Mutex<RelayTarget>,
    pub(crate) device_name: String,
    pub(crate) state: Mutex<AccountState>,
    /// Serializes syncs and holds the authenticated connection between them.
    pub(crate) connection: tokio::sync::Mutex<Option<RelayConnection>>,
    pub(crate) record_id_key: SymmetricKey,
    /// Held while merged record states are read, changed and written back (local edits,
    /// imports, merging pulled envelopes), so no writer overwrites another's change.
    pub(crate) records_lock: Arc<tokio::sync::Mutex<()>>,
    /// The markers ([`meta::UNSETTLED_PREFIX`]) of the pulls running in this process, whose
    /// settlement is not lost but still to come.
    pub(crate) pulls_running: Mutex<std::collections::BTreeSet<Vec<u8>>>,
    /// How the last pull wrote its records (tests check that updates are replaced in place).
    #[cfg(test)]
    pub(crate) pulled_writes: Mutex<crate::pipeline::WriteCountsSnapshot>,
    /// A pull fails as a lost connection would once it has submitted this many pages (0:
    /// never), for tests of what a failed pull leaves.
    #[cfg(test)]
    pub(crate) pull_fails_after_pages: std::sync::atomic::AtomicUsize,
    /// A pull stops as a crash would once it has submitted this many pages (0: never): the
    /// pages of its open group are never written.
    #[cfg(test)]
    pub(crate) pull_crashes_after_pages: std::sync::atomic::AtomicUsize,
    /// The pages a pull commits per transaction at most (0: the usual limits).
    #[cfg(test)]
    pub(crate) pull_group_pages: std::sync::atomic::AtomicUsize,
    /// A push fails as a lost connection would once this many of its pushes were
    /// acknowledged (0: never), for tests of what a failed push leaves.
    #[cfg(test)]
    pub(crate) push_fails_after_acks: std::sync::atomic::AtomicUsize,
    /// Envelopes pushes took from the sealing's memory rather than the outbox.
    #[cfg(test)]
    pub(crate) pushed_from_memory: std::sync::atomic::AtomicUsize,
}

/// One device of a Kith account. Cheap to clone; all clones share state.
#[derive(Clone)]
pub struct Device {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("device", &self.inner.device_id)
            .field("home", &self.inner.home)
            .finish_non_exhaustive()
    }
}

/// A device in the account's roster, as `kith device list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceInfo {
    /// The device id (hex).
    pub id: String,
    /// The device's name, decrypted.
    pub name: String,
    /// When it was added (ms since the Unix epoch).
    pub added_at_ms: u64,
    /// Whether this is the device asking.
    pub this_device: bool,
    /// What this device last measured of its wall clock (`None` for this device, or before
    /// any of its envelopes stating its time was pulled): see [`ClockSkew::warning`].
    pub clock_skew: Option<ClockSkew>,
}

/// The recovery key of a new account, to be shown once and written down.
pub struct RecoveryKeyText(pub Zeroizing<String>);

impl std::fmt::Debug for RecoveryKeyText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecoveryKeyText(<secret>)")
    }
}

/// How long `approve_link` watches for the approved device to join before it reports the
/// approval as waiting to be picked up.
pub const APPROVAL_WAIT: Duration = Duration::from_secs(10);

/// What an approval did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkApproval {
    /// The approved device.
    pub device: DeviceId,
    /// Whether it joined the account while the approval waited ([`APPROVAL_WAIT`]). If not,
    /// it joins when it picks the approval up, before the pairing slot expires (10 minutes by
    /// default); after that the approval lapses and the account is unchanged.
    pub joined: bool,
}

/// Rosters a revocation signs before it gives up, each after pulling the revoked device's
/// stream further. The relay stops taking the device's pushes after the first refusal, so the
/// second attempt normally succeeds; the others cover a relay that forgot that meanwhile.
const REVOKE_ATTEMPTS: usize = 5;

const STORE_DIR: &str = "store";

fn store_path(home: &Path) -> PathBuf {
    home.join(STORE_DIR)
}

fn ensure_home(home: &Path) -> Result<()> {
    std::fs::create_dir_all(home).map_err(|source| ClientError::Io {
        context: format!("cannot create {}", home.display()),
        source,
    })
}

impl Device {
    /// Creates a new account with this as its first device. Returns the device and the
    /// recovery key, which is shown once and never stored.
    pub async fn create(
        home: &Path,
        relay: RelayTarget,
        device_name: &str,
        registration_token: Option<String>,
    ) -> Result<(Device, RecoveryKeyText)> {
        Self::create_with_keystore(home, relay, device_name, registration_token, None).await
    }

    /// [`Device::create`] with the device secrets kept by `keystore` instead of a key file.
    pub async fn create_with_keystore(
        home: &Path,
        relay: RelayTarget,
        device_name: &str,
        registration_token: Option<String>,
        keystore: Option<Arc<dyn KeyStore>>,
    ) -> Result<(Device, RecoveryKeyText)> {
        let keystore = unused_keystore_for(home, keystore)?;
        let mut rng = system_rng();
        let secrets = DeviceSecrets::generate();
        let account_key = AccountSigningKey::generate(&mut rng);
        let account_id = account_key.public().account_id();
        let epoch1 = EpochSecret::generate(&mut rng);
        let mut epochs = EpochKeys::new(account_id);
        epochs.insert(1, epoch1.clone())?;
        let roster = VerifiedRoster::genesis(
            &account_key,
            NewDevice {
                signing_key: secrets.signing_key.public(),
                agreement_key: secrets.agreement_key.public(),
                name: device_name.to_string(),
            },
            &epoch1,
            now_ms(),
            &mut rng,
        )?;
        let recovery_key = RecoveryKey::generate(&mut rng);
        let recovery = recovery_key.sealing();

        let connection = RelayConnection::connect(&relay).await?;
        connection
            .create_account(
                &account_id,
                roster.encoded().to_vec(),
                &secrets.signing_key,
                registration_token,
            )
            .await?;
        // The first device's sealed copy of epoch 1, so a later link or restore finds it.
        let sealed = epoch::seal_epoch_key(
            &account_id,
            &secrets.signing_key.device_id(),
            &secrets.agreement_key.public(),
            1,
            &epoch1,
            &mut rng,
        );
        put_sealed_epoch_keys(&connection, vec![sealed]).await?;

        // Nothing is written to the home before the relay accepted the account, so a relay
        // that cannot be reached, or refuses it, leaves no home behind (nor does Ctrl-C).
        let device_id = secrets.signing_key.device_id();
        let state = AccountState::fresh(roster, account_key, epochs, Some(recovery), device_id);
        let (device, guard) =
            Self::write_new_home(home, &*keystore, secrets, state, &relay, device_name)?;
        device.put_recovery_bundle(&connection).await?;
        device.inner.store.flush().await?;
        *device.inner.connection.lock().await = Some(connection);
        guard.keep();
        Ok((device, RecoveryKeyText(recovery_key.to_text())))
    }

    /// Opens the device set up in `home`.
    pub fn open(home: &Path) -> Result<Device> {
        Self::open_with_keystore(home, None)
    }

    /// [`Device::open`] with the device secrets kept by `keystore`.
    pub fn open_with_keystore(home: &Path, keystore: Option<Arc<dyn KeyStore>>) -> Result<Device> {
        let keystore = keystore_for(home, keystore);
        let secrets = keystore
            .load()?
            .ok_or_else(|| ClientError::NotInitialized(home.display().to_string()))?;
        let device_id = secrets.signing_key.device_id();
        let store = open_store(home, &secrets)?;
        let settings: Settings = store
            .get(TreeName::Meta, meta::SETTINGS)?
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or_else(|| ClientError::NotInitialized(home.display().to_string()))?;
        let account_id = AccountId::from_hex(&settings.account_id)
            .ok_or_else(|| ClientError::NotInitialized(home.display().to_string()))?;
        let roster_bytes = store
            .get(TreeName::Meta, meta::ROSTER)?
            .ok_or_else(|| ClientError::NotInitialized(home.display().to_string()))?;
        let roster = VerifiedRoster::verify(&roster_bytes, Some(&account_id), None)?;
        let account_key_bytes = Zeroizing::new(
            store
                .get(TreeName::Meta, meta::ACCOUNT_KEY)?
                .ok_or_else(|| ClientError::NotInitialized(home.display().to_string()))?,
        );
        let account_key = AccountSigningKey::from_secret_bytes(&account_key_bytes)
            .map_err(|_| ClientError::NotInitialized(home.display().to_string()))?;
        let mut epochs = EpochKeys::new(account_id);
        for item in store.scan_prefix(TreeName::Meta, meta::EPOCH_PREFIX) {
            let (key, secret) = item?;
            let secret = Zeroizing::new(secret);
            let number = key
                .get(meta::EPOCH_PREFIX.len()..)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes);
            if let (Some(number), Ok(secret)) = (number, EpochSecret::from_slice(&secret)) {
                epochs.insert(number, secret)?;
            }
        }
        let recovery = store
            .get(TreeName::Meta, meta::RECOVERY)?
            .map(Zeroizing::new)
            .and_then(|bytes| decode_recovery(&bytes));
        let mut clock = HlcClock::new(device_id);
        if let Some(last) = crate::clock::stored_clock(&store)? {
            // Within the skew bound: monotonic across restarts even if the wall clock went
            // backwards. A state further ahead (this device's date was wrong and has been
            // corrected) is kept aside, not adopted; writes still supersede what it wrote
            // (docs/PROTOCOL.md §8.2).
            clock.restore(last, now_ms());
        }
        let relay = settings.relay()?;
        let state = AccountState {
            account_id,
            roster,
            account_key,
            epochs,
            recovery,
            clock,
        };
        Self::assemble(home, secrets, store, relay, settings.device_name, state)
    }

    /// The device of `home` with its secrets, its open store, relay, name and account state
    /// (not connected yet).
    fn assemble(
        home: &Path,
        secrets: DeviceSecrets,
        store: LocalStore,
        relay: RelayTarget,
        device_name: String,
        state: AccountState,
    ) -> Result<Device> {
        let record_id_key = state.epochs.record_id_key()?;
        Ok(Device {
            inner: Arc::new(Inner {
                home: home.to_path_buf(),
                device_id: secrets.signing_key.device_id(),
                secrets,
                store,
                relay: Mutex::new(relay),
                device_name,
                state: Mutex::new(state),
                connection: tokio::sync::Mutex::new(None),
                record_id_key,
                records_lock: Arc::new(tokio::sync::Mutex::new(())),
                pulls_running: Mutex::default(),
                #[cfg(test)]
                pulled_writes: Mutex::default(),
                #[cfg(test)]
                pull_fails_after_pages: Default::default(),
                #[cfg(test)]
                pull_crashes_after_pages: Default::default(),
                #[cfg(test)]
                pull_group_pages: Default::default(),
                #[cfg(test)]
                push_fails_after_acks: Default::default(),
                #[cfg(test)]
                pushed_from_memory: Default::default(),
            }),
        })
    }

    /// Writes the home of a device just set up (created, recovered or linked): its secrets
    /// to `keystore`, its settings and account state to a new store. What it wrote is undone
    /// when the returned guard is dropped, unless the set-up [keeps](HomeGuard::keep) it.
    fn write_new_home(
        home: &Path,
        keystore: &dyn KeyStore,
        secrets: DeviceSecrets,
        state: AccountState,
        relay: &RelayTarget,
        device_name: &str,
    ) -> Result<(Device, HomeGuard)> {
        let guard = HomeGuard::new(home)?;
        keystore.save(&secrets)?;
        let store = open_store(home, &secrets)?;
        let settings = Settings::new(&state.account_id, device_name, relay);
        let settings =
            serde_json::to_vec(&settings).map_err(|e| ClientError::InvalidInput(e.to_string()))?;
        store.put(TreeName::Meta, meta::SETTINGS, &settings)?;
        let device = Self::assemble(
            home,
            secrets,
            store,
            relay.clone(),
            device_name.to_string(),
            state,
        )?;
        device.persist_state()?;
        device.inner.store.flush_blocking()?;
        Ok((device, guard))
    }

    /// Writes the account state (roster, account key, epochs, recovery sealing) to the store.
    pub(crate) fn persist_state(&self) -> Result<()> {
        let state = self.state();
        let store = &self.inner.store;
        store.put(TreeName::Meta, meta::ROSTER, state.roster.encoded())?;
        store.put(
            TreeName::Meta,
            meta::ACCOUNT_KEY,
            &state.account_key.to_secret_bytes()[..],
        )?;
        for (number, secret) in state.epochs.iter() {
            let mut key = meta::EPOCH_PREFIX.to_vec();
            key.extend_from_slice(&number.to_be_bytes());
            store.put(TreeName::Meta, &key, secret.expose())?;
        }
        if let Some(recovery) = &state.recovery {
            store.put(TreeName::Meta, meta::RECOVERY, &encode_recovery(recovery))?;
        }
        Ok(())
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, AccountState> {
        // A panic while holding this lock would be a bug; the state itself stays consistent
        // because every mutation is a whole-value replacement.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// This device's id.
    pub fn device_id(&self) -> DeviceId {
        self.inner.device_id
    }

    /// The account's id.
    pub fn account_id(&self) -> AccountId {
        self.state().account_id
    }

    /// This device's name, as given when it was set up.
    pub fn device_name(&self) -> &str {
        &self.inner.device_name
    }

    /// The newest epoch this device holds a key for.
    pub fn current_epoch(&self) -> u64 {
        self.state()
            .epochs
            .latest()
            .map(|(number, _)| number)
            .unwrap_or(0)
    }

    /// Whether this device holds the key of `epoch`.
    pub fn has_epoch(&self, epoch: u64) -> bool {
        self.state().epochs.get(epoch).is_some()
    }

    /// The home directory of this device.
    pub fn home(&self) -> &Path {
        &self.inner.home
    }

    /// The local store (for tests and diagnostics).
    pub fn store(&self) -> &LocalStore {
        &self.inner.store
    }

    /// Closes the connection to the relay, if one is open, and waits (a second at most) until
    /// the close is sent. A process that exits without this leaves the relay holding the
    /// connection, about 57 KB, until its idle timeout: a minute of memory per run of a
    /// command-line sync.
    pub async fn close(&self) {
        let connection = self.inner.connection.lock().await.take();
        if let Some(connection) = connection {
            let _ = tokio::time::timeout(Duration::from_secs(1), connection.close()).await;
        }
    }

    /// The relay this device syncs with.
    pub fn relay(&self) -> RelayTarget {
        self.inner
            .relay
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Points this device at another relay (`kith relay set`): for a device that cannot reach
    /// the old relay after another device moved the account. The next sync connects there and
    /// heals it from this device's copies if it lacks anything (docs/PROTOCOL.md §13.1).
    pub async fn set_relay(&self, relay: RelayTarget) -> Result<()> {
        let mut slot = self.inner.connection.lock().await;
        self.persist_relay(&relay)?;
        *slot = None;
        Ok(())
    }

    /// Stores `relay` in the settings and uses it from now on.
    pub(crate) fn persist_relay(&self, relay: &RelayTarget) -> Result<()> {
        let mut settings: Settings = self
            .inner
            .store
            .get(TreeName::Meta, meta::SETTINGS)?
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or_else(|| ClientError::NotInitialized(self.inner.home.display().to_string()))?;
        let fresh = Settings::new(&self.account_id(), &settings.device_name, relay);
        settings.relay_address = fresh.relay_address;
        settings.relay_pin = fresh.relay_pin;
        settings.relay_ca_der_hex = fresh.relay_ca_der_hex;
        settings.relay_ca_system = fresh.relay_ca_system;
        let bytes =
            serde_json::to_vec(&settings).map_err(|e| ClientError::InvalidInput(e.to_string()))?;
        self.inner
            .store
            .put(TreeName::Meta, meta::SETTINGS, &bytes)?;
        *self
            .inner
            .relay
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = relay.clone();
        Ok(())
    }

    /// Replaces a pin of the relay's whole certificate (what releases before key pins stored)
    /// by the pin of its key, once a connection matched it and authenticated: the next
    /// renewal of the certificate with the same key then keeps this device working.
    pub(crate) fn migrate_certificate_pin(&self, connection: &RelayConnection) -> Result<()> {
        let relay = self.relay();
        let pins = match &relay.trust {
            RelayTrust::PinnedSha256(pin) => vec![*pin],
            RelayTrust::PinSet(pins) => pins.clone(),
            RelayTrust::CaRoots(_) | RelayTrust::SystemRoots => return Ok(()),
        };
        let Some(cert) = connection.peer_certificate() else {
            return Ok(());
        };
        let Some(key_pin) = kith_tls::key_sha256(&cert) else {
            return Ok(());
        };
        let mut changed = false;
        let mut migrated = Vec::with_capacity(pins.len());
        for pin in pins {
            let pin = match kith_tls::matches_pin(&cert, &pin) {
                Some(kith_tls::PinMatch::Certificate) => {
                    changed = true;
                    key_pin
                }
                _ => pin,
            };
            if !migrated.contains(&pin) {
                migrated.push(pin);
            }
        }
        if !changed {
            return Ok(());
        }
        let trust = match migrated.as_slice() {
            [one] => RelayTrust::PinnedSha256(*one),
            _ => RelayTrust::PinSet(migrated),
        };
        self.persist_relay(&RelayTarget {
            address: relay.address,
            trust,
        })?;
        tracing::info!(
            key_sha256 = %hex::encode(key_pin),
            "replaced the pin of the relay's certificate by the pin of its key"
        );
        Ok(())
    }

    /// Returns the authenticated connection, connecting and authenticating if needed.
    pub(crate) async fn connection<'a>(
        &self,
        slot: &'a mut Option<RelayConnection>,
    ) -> Result<&'a RelayConnection> {
        if slot.is_none() {
            let connection = RelayConnection::connect(&self.relay()).await?;
            let account = self.account_id();
            match connection
                .authenticate(&account, &self.inner.secrets.signing_key)
                .await
            {
                Ok(()) => {}
                Err(e)
                    if matches!(
                        e.relay_code(),
                        Some(proto::ErrorCode::DeviceRemoved | proto::ErrorCode::UnknownDevice)
                    ) =>
                {
                    // Remembered, so that `kith device list` can say so without the relay.
                    self.inner.store.put(TreeName::Meta, meta::REVOKED, b"1")?;
                    return Err(ClientError::Revoked);
                }
                Err(e) => return Err(e.into()),
            }
            self.migrate_certificate_pin(&connection)?;
            *slot = Some(connection);
        }
        slot.as_ref()
            .ok_or_else(|| ClientError::InvalidInput("no connection".into()))
    }

    /// Whether this device knows it was removed from the account: the last roster it verified
    /// no longer lists it, or the relay refused it as removed.
    pub fn is_revoked(&self) -> Result<bool> {
        {
            let state = self.state();
            let id = self.inner.device_id;
            if state.roster.is_removed(&id) || state.roster.device(&id).is_none() {
                return Ok(true);
            }
        }
        Ok(self
            .inner
            .store
            .get(TreeName::Meta, meta::REVOKED)?
            .is_some())
    }

    /// The devices of the account, from the roster this device last verified.
    pub fn devices(&self) -> Result<Vec<DeviceInfo>> {
        let state = self.state();
        state
            .roster
            .devices()
            .map(|entry| {
                let this_device = entry.device_id() == self.inner.device_id;
                Ok(DeviceInfo {
                    id: entry.device_id().to_hex(),
                    name: state
                        .roster
                        .device_name(&entry.device_id(), &state.epochs)?,
                    added_at_ms: entry.added_at_ms(),
                    this_device,
                    clock_skew: if this_device {
                        None
                    } else {
                        self.clock_skew(&entry.device_id())?
                    },
                })
            })
            .collect()
    }

    /// Finds a device of the account by its hex id or a unique prefix of it (at least 4 hex
    /// digits), as people type them.
    pub fn resolve_device(&self, text: &str) -> Result<DeviceId> {
        let text = text.trim().to_lowercase();
        if let Some(id) = DeviceId::from_hex(&text) {
            return Ok(id);
        }
        if text.len() < 4 || !text.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(ClientError::InvalidInput(format!(
                "'{text}' is not a device id: give the id or at least 4 of its first hex digits (see `kith device list`)"
            )));
        }
        let devices = self.devices()?;
        let matches: Vec<_> = devices.iter().filter(|d| d.id.starts_with(&text)).collect();
        match matches.as_slice() {
            [one] => DeviceId::from_hex(&one.id).ok_or_else(|| {
                ClientError::InvalidInput("the roster holds a malformed device id".into())
            }),
            [] => Err(ClientError::InvalidInput(format!(
                "no device {text} in this account (see `kith device list`; run `kith sync` first if it joined recently)"
            ))),
            _ => Err(ClientError::InvalidInput(format!(
                "device id prefix {text} matches several devices; type more of it"
            ))),
        }
    }

    /// Re-seals the recovery bundle for the account as this device holds it (after a
    /// revocation or at creation). A device that missed a rotation of the recovery key is
    /// refused (`RECOVERY_ROTATED`): it learns the new sealing material from the account's
    /// record if the current account key signed it, and seals again; else it leaves the
    /// bundle as it is, which `kith recovery status` then reports as stale (§6). `true` if it
    /// stored a bundle; `false` if this device holds no recovery sealing material or could not
    /// confirm the rotated one.
    pub(crate) async fn put_recovery_bundle(&self, connection: &RelayConnection) -> Result<bool> {
        for _ in 0..2 {
            let Some((record, lookup_id)) = self.seal_recovery_record(None)? else {
                return Ok(false);
            };
            let put = connection
                .request(request::Kind::PutRecoveryBundle(proto::PutRecoveryBundle {
                    lookup_id: lookup_id.to_vec(),
                    bundle: record,
                    replaces_lookup_id: Vec::new(),
                }))
                .await;
            match put {
                Err(e) if e.relay_code() == Some(proto::ErrorCode::RecoveryRotated) => {
                    if self.learn_recovery_material(connection).await?.is_none() {
                        tracing::warn!(
                            "the recovery key was replaced by another device and this one \
                             cannot confirm the new one; the recovery bundle was not re-sealed"
                        );
                        return Ok(false);
                    }
                }
                answer => {
                    expect_ok(answer?)?;
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Approves a new device from its link code: leaves the account bundle, sealed to it and
    /// authenticated by the code's pairing secret, in the relay's pairing slot. The bundle holds
    /// the roster that adds the device, signed by the account key; the new device joins with it
    /// when it takes the bundle (`RecoverDevice`, docs/PROTOCOL.md §6). So an approval whose
    /// requester has gone changes nothing: the slot expires and the roster never names a device
    /// that did not finish linking.
    ///
    /// Waits up to [`APPROVAL_WAIT`] for the device to join (a device that is waiting takes the
    /// bundle at once) and reports whether it did.
    pub async fn approve_link(&self, code: &str) -> Result<LinkApproval> {
        let code = LinkCode::parse(code)?;
        self.sync().await?;
        // The new device gets the current recovery sealing material with the bundle.
        self.refresh_recovery_material().await?;
        let new_device = code.device_id();
        {
            let state = self.state();
            if state.roster.device(&new_device).is_some() {
                return Err(ClientError::AlreadyLinked(new_device));
            }
            if state.roster.is_removed(&new_device) {
                return Err(ClientError::LinkCodeOfRevokedDevice(new_device));
            }
        }
        let mut slot = self.inner.connection.lock().await;
        let connection = self.connection(&mut slot).await?.clone();
        drop(slot);
        let bundle = {
            let state = self.state();
            let mut rng = system_rng();
            let roster = state.roster.add_device(
                &state.account_key,
                NewDevice {
                    signing_key: *code.signing_key(),
                    agreement_key: code.agreement_key().clone(),
                    name: if code.device_name().is_empty() {
                        "linked device".to_string()
                    } else {
                        code.device_name().to_string()
                    },
                },
                &state.epochs,
                now_ms(),
                &mut rng,
            )?;
            AccountBundle::new(state.account_key.clone(), state.epochs.clone(), roster)?
                .with_recovery(state.recovery.clone())
        };
        let sealed = bundle::seal_link_bundle(&bundle, &code, &mut system_rng())?;
        let put = connection
            .request(request::Kind::PutPairingSlot(proto::PutPairingSlot {
                slot_id: code.pairing_secret().slot_id().to_vec(),
                bundle: sealed,
            }))
            .await;
        match put {
            Ok(answer) => expect_ok(answer)?,
            Err(e) if e.relay_code() == Some(proto::ErrorCode::SlotExists) => {
                return Err(ClientError::AlreadyApproved(new_device));
            }
            Err(e) => return Err(e.into()),
        }
        let joined = self.wait_for_join(&new_device).await?;
        Ok(LinkApproval {
            device: new_device,
            joined,
        })
    }

    /// Watches the relay's roster until `device` is in it or [`APPROVAL_WAIT`] has passed.
    async fn wait_for_join(&self, device: &DeviceId) -> Result<bool> {
        let deadline = tokio::time::Instant::now() + APPROVAL_WAIT;
        loop {
            {
                let mut slot = self.inner.connection.lock().await;
                let connection = self.connection(&mut slot).await?.clone();
                drop(slot);
                self.refresh_roster(&connection).await?;
            }
            if self.state().roster.device(device).is_some() {
                self.inner.store.flush().await?;
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Revokes another device: a new roster without it, signed by a fresh account key (the
    /// chain's next link), and a new epoch sealed only to the remaining devices. The relay then
    /// refuses the revoked device, and it cannot decrypt anything written afterwards.
    ///
    /// The roster ends the device's stream at `final_seq`, the last envelope of it this device
    /// verified. If the device pushed more meanwhile, the relay refuses the roster
    /// (`STREAM_AHEAD`) and stops taking its pushes for a while; this device then pulls the
    /// stream to its end and signs again (docs/PROTOCOL.md §4).
    pub async fn revoke(&self, device: &DeviceId) -> Result<()> {
        if *device == self.inner.device_id {
            return Err(ClientError::CannotRevokeSelf);
        }
        self.sync().await?;
        // While the account key is the one a rotation of the recovery key was signed with:
        // after the revocation this device re-seals the bundle with the current material.
        self.refresh_recovery_material().await?;
        let mut rng = system_rng();
        // The next account key is derived from the next epoch's secret, so sealing the epoch
        // to the remaining devices also hands them the key (docs/PROTOCOL.md §4). Both stay the
        // same across attempts; only final_seq changes.
        let new_epoch = EpochSecret::generate(&mut rng);
        let new_key = epoch::account_key_for_epoch(&self.account_id(), &new_epoch);
        let mut sealed_to: Vec<DeviceId> = Vec::new();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let final_seq = self.cursor_of(device)?.map(|(seq, _)| seq).unwrap_or(0);
            let mut slot = self.inner.connection.lock().await;
            let connection = self.connection(&mut slot).await?.clone();
            let (roster, sealed_keys) = {
                let state = self.state();
                if state.roster.device(device).is_none() {
                    return Err(ClientError::UnknownDevice(*device));
                }
                let roster = state.roster.remove_device(
                    &state.account_key,
                    device,
                    final_seq,
                    &new_key,
                    &new_epoch,
                    &state.epochs,
                    now_ms(),
                    &mut rng,
                )?;
                // Sealed to every remaining device, once (a device linked between two
                // attempts gets its key with the next one).
                let unsealed: Vec<_> = roster
                    .devices()
                    .filter(|entry| !sealed_to.contains(&entry.device_id()))
                    .collect();
                sealed_to.extend(unsealed.iter().map(|entry| entry.device_id()));
                let sealed_keys = signed_epoch_keys(
                    &state.account_id,
                    unsealed,
                    roster.epoch(),
                    &new_epoch,
                    &new_key,
                    &mut rng,
                )?;
                (roster, sealed_keys)
            };
            // Keys first: a device that sees the new roster must find its sealed epoch key.
            // They are staged under the new account key, which only this device holds, so no
            // other member can replace them before the roster lands (§5). If another key's
            // staged keys are stored already (a revocation that failed or raced this one), the
            // relay refuses these; the keys stored again once the roster lands replace them.
            if !sealed_keys.is_empty() {
                match put_staged_epoch_keys(&connection, sealed_keys, &new_key).await {
                    Err(e) if e.relay_code() == Some(proto::ErrorCode::SlotExists) => {
                        tracing::warn!(
                            "keys of the next epoch staged under another key are stored; \
                             they are replaced once the roster lands"
                        );
                    }
                    other => other?,
                }
            }
            let answer = connection
                .request(request::Kind::PutRoster(proto::PutRoster {
                    roster: roster.encoded().to_vec(),
                }))
                .await;
            match answer {
                Err(e)
                    if e.relay_code() == Some(proto::ErrorCode::StreamAhead)
                        && attempt < REVOKE_ATTEMPTS =>
                {
                    tracing::info!(
                        attempt,
                        "the revoked device pushed past what this device had seen; pulling it"
                    );
                    drop(slot);
                    self.sync().await?;
                    continue;
                }
                answer => expect_ok(answer?)?,
            }
            // The staged keys were open to every member until the roster started their epoch
            // (the revoked device too): store them again, now that only a holder of the new
            // epoch's account key may replace another device's key (§5).
            let restored = signed_epoch_keys(
                &self.account_id(),
                roster.devices(),
                roster.epoch(),
                &new_epoch,
                &new_key,
                &mut rng,
            )?;
            {
                let mut state = self.state();
                let number = roster.epoch();
                state.roster = roster;
                state.account_key = new_key;
                state.epochs.insert(number, new_epoch)?;
            }
            self.persist_state()?;
            self.inner.store.flush().await?;
            put_sealed_epoch_keys(&connection, restored).await?;
            self.put_recovery_bundle(&connection).await?;
            return Ok(());
        }
    }

    /// Restores the account on a new device from the recovery key, when every old device is
    /// lost: opens the recovery bundle, adds this device to the roster with the account key,
    /// and pulls everything.
    pub async fn recover(
        home: &Path,
        relay: RelayTarget,
        recovery_key: &str,
        device_name: &str,
    ) -> Result<Device> {
        Self::recover_with_keystore(home, relay, recovery_key, device_name, None).await
    }

    /// [`Device::recover`] with the device secrets kept by `keystore` instead of a plain key
    /// file.
    pub async fn recover_with_keystore(
        home: &Path,
        relay: RelayTarget,
        recovery_key: &str,
        device_name: &str,
        keystore: Option<Arc<dyn KeyStore>>,
    ) -> Result<Device> {
        let keystore = unused_keystore_for(home, keystore)?;
        let recovery_key = RecoveryKey::parse(recovery_key)
            .map_err(|e| ClientError::InvalidInput(format!("{e}")))?;
        let connection = RelayConnection::connect(&relay).await?;
        let answer = connection
            .request(request::Kind::GetRecoveryBundle(proto::GetRecoveryBundle {
                lookup_id: recovery_key.lookup_id().to_vec(),
            }))
            .await;
        let recovered = match answer {
            Ok(response::Kind::RecoveryBundle(found)) => found,
            Ok(_) => return Err(ClientError::RecoveryNotFound),
            Err(e) if e.relay_code() == Some(proto::ErrorCode::NotFound) => {
                return Err(ClientError::RecoveryNotFound);
            }
            Err(e) => return Err(e.into()),
        };
        let bundle = bundle::open_recovery_bundle(&recovered.bundle, &recovery_key)?;
        let account_id = bundle.account_id();
        // The relay's account, the bundle's and (below) the roster's must be one.
        if AccountId::from_slice(&recovered.account_id).ok() != Some(account_id) {
            return Err(ClientError::RecoveryAccountMismatch);
        }
        let (account_key, epochs, sealed_roster) = bundle.into_parts();
        // The relay's current roster must be the sealed one or extend it.
        let roster = if recovered.roster.is_empty() || recovered.roster == sealed_roster.encoded() {
            sealed_roster
        } else {
            VerifiedRoster::verify(&recovered.roster, Some(&account_id), Some(&sealed_roster))?
        };
        if roster.current_account_key() != &account_key.public() {
            return Err(ClientError::Bundle(
                kith_protocol::bundle::BundleError::AccountKeyMismatch,
            ));
        }
        let secrets = DeviceSecrets::generate();
        let mut rng = system_rng();
        let roster = roster.add_device(
            &account_key,
            NewDevice {
                signing_key: secrets.signing_key.public(),
                agreement_key: secrets.agreement_key.public(),
                name: device_name.to_string(),
            },
            &epochs,
            now_ms(),
            &mut rng,
        )?;
        connection
            .recover_account(&account_id, roster.encoded().to_vec(), &secrets.signing_key)
            .await?;
        put_own_epoch_keys(&connection, &account_id, &secrets, &epochs).await?;
        let recovery = Some(recovery_key.sealing());
        let device_id = secrets.signing_key.device_id();
        let state = AccountState::fresh(roster, account_key, epochs, recovery, device_id);
        let (device, guard) =
            Self::write_new_home(home, &*keystore, secrets, state, &relay, device_name)?;
        *device.inner.connection.lock().await = Some(connection);
        // Joined: the rest can be repeated with `kith sync`, the home stays.
        guard.keep();
        device.sync().await?;
        Ok(device)
    }

    /// Deletes the account on the relay (signed by the account key): every envelope, roster,
    /// key and bundle of it. The local store is left for the caller to remove.
    pub async fn delete_account(&self) -> Result<()> {
        let mut slot = self.inner.connection.lock().await;
        let connection = self.connection(&mut slot).await?.clone();
        let (account, version, signature) = {
            let state = self.state();
            let version = state.roster.version();
            let signature = kith_protocol::auth::sign_account_deletion(
                &state.account_key,
                &state.account_id,
                version,
            );
            (state.account_id, version, signature)
        };
        expect_ok(
            connection
                .request(request::Kind::DeleteAccount(proto::DeleteAccount {
                    account_id: account.as_bytes().to_vec(),
                    roster_version: version,
                    signature: signature.to_bytes().to_vec(),
                }))
                .await?,
        )?;
        *slot = None;
        Ok(())
    }
}

/// Stores this device's own sealed copy of every epoch secret it holds, as a device that just
/// joined (linked or recovered) does, so a later restore or link finds them.
async fn put_own_epoch_keys(
    connection: &RelayConnection,
    account_id: &AccountId,
    secrets: &DeviceSecrets,
    epochs: &EpochKeys,
) -> Result<()> {
    let mut rng = system_rng();
    let device_id = secrets.signing_key.device_id();
    let agreement_key = secrets.agreement_key.public();
    let sealed_keys: Vec<Vec<u8>> = epochs
        .iter()
        .map(|(number, secret)| {
            epoch::seal_epoch_key(
                account_id,
                &device_id,
                &agreement_key,
                number,
                secret,
                &mut rng,
            )
        })
        .collect();
    put_sealed_epoch_keys(connection, sealed_keys).await
}

/// Stores sealed epoch keys on the relay.
/// The epoch secret sealed to each of `devices` under that device's agreement key, each sealed
/// key signed with `epoch_account_key` (the account key of the epoch it starts, §5).
fn signed_epoch_keys<'a>(
    account: &AccountId,
    devices: impl IntoIterator<Item = &'a RosterDevice>,
    epoch_number: u64,
    secret: &EpochSecret,
    epoch_account_key: &AccountSigningKey,
    rng: &mut impl rand_core::CryptoRng,
) -> Result<Vec<Vec<u8>>> {
    devices
        .into_iter()
        .map(|entry| {
            let sealed = epoch::seal_epoch_key(
                account,
                &entry.device_id(),
                entry.agreement_key(),
                epoch_number,
                secret,
                rng,
            );
            Ok(epoch::sign_sealed_epoch_key(&sealed, epoch_account_key)?)
        })
        .collect()
}

async fn put_sealed_epoch_keys(connection: &RelayConnection, keys: Vec<Vec<u8>>) -> Result<()> {
    expect_ok(
        connection
            .request(request::Kind::PutSealedEpochKeys(
                proto::PutSealedEpochKeys {
                    keys,
                    staged_account_key: Vec::new(),
                },
            ))
            .await?,
    )?;
    Ok(())
}

/// Stores keys staged for the epoch after the roster's, signed by that epoch's account key
/// `next`, naming its public key so the relay binds them to it (docs/PROTOCOL.md §5).
async fn put_staged_epoch_keys(
    connection: &RelayConnection,
    keys: Vec<Vec<u8>>,
    next: &AccountSigningKey,
) -> Result<()> {
    expect_ok(
        connection
            .request(request::Kind::PutSealedEpochKeys(
                proto::PutSealedEpochKeys {
                    keys,
                    staged_account_key: next.public().as_bytes().to_vec(),
                },
            ))
            .await?,
    )?;
    Ok(())
}

fn keystore_for(home: &Path, keystore: Option<Arc<dyn KeyStore>>) -> Arc<dyn KeyStore> {
    keystore.unwrap_or_else(|| Arc::new(FileKeyStore::in_home(home)))
}

/// [`keystore_for`] a device about to be set up in `home`: refused if it already holds
/// device secrets (a device is set up there already).
fn unused_keystore_for(
    home: &Path,
    keystore: Option<Arc<dyn KeyStore>>,
) -> Result<Arc<dyn KeyStore>> {
    let keystore = keystore_for(home, keystore);
    if keystore.exists()? {
        return Err(ClientError::AlreadyInitialized(home.display().to_string()));
    }
    Ok(keystore)
}

/// How long one take of the pairing slot may wait on the relay for the approval (the relay
/// caps it at 20 s).
const TAKE_WAIT: Duration = Duration::from_secs(20);
/// The least time between two takes of the pairing slot: a relay that answers at once (one
/// that does not hold takes open) is then asked at most 9 times a minute, within the lookup
/// budget it gives each address (10 a minute by default).
const TAKE_INTERVAL: Duration = Duration::from_secs(7);
/// Backoff bounds while the relay cannot be reached during a wait.
const RECONNECT_MIN: Duration = Duration::from_millis(500);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// A new device waiting for approval by an existing device of the account.
pub struct PendingLink {
    home: PathBuf,
    relay: RelayTarget,
    device_name: String,
    secrets: DeviceSecrets,
    pairing_secret: PairingSecret,
    code: Zeroizing<String>,
    connection: Option<RelayConnection>,
    keystore: Arc<dyn KeyStore>,
}

impl std::fmt::Debug for PendingLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingLink")
            .field("home", &self.home)
            .finish_non_exhaustive()
    }
}

/// Why a join with a taken bundle did not succeed.
enum JoinFailure {
    /// The account's roster changed after the approval: approve the same code again.
    Superseded,
    /// Anything else.
    Failed(ClientError),
}

impl PendingLink {
    /// Prepares a new device: generates its keys and a one-time pairing secret. Nothing is
    /// written to `home` until the link completes.
    pub fn new(home: &Path, relay: RelayTarget, device_name: &str) -> Result<Self> {
        Self::new_with_keystore(home, relay, device_name, None)
    }

    /// [`PendingLink::new`] with the device secrets to be kept by `keystore` instead of a plain
    /// key file.
    pub fn new_with_keystore(
        home: &Path,
        relay: RelayTarget,
        device_name: &str,
        keystore: Option<Arc<dyn KeyStore>>,
    ) -> Result<Self> {
        let keystore = unused_keystore_for(home, keystore)?;
        let secrets = DeviceSecrets::generate();
        let pairing_secret = PairingSecret::generate(&mut system_rng());
        let code = LinkCode::new(
            secrets.signing_key.public(),
            secrets.agreement_key.public(),
            pairing_secret.clone(),
        )
        .with_device_name(device_name)
        .to_text();
        Ok(Self {
            home: home.to_path_buf(),
            relay,
            device_name: device_name.to_string(),
            secrets,
            pairing_secret,
            code,
            connection: None,
            keystore,
        })
    }

    /// The link code to show (text; also fits in a QR code).
    pub fn code(&self) -> &str {
        &self.code
    }

    /// Connects to the relay now, so that a relay that cannot be reached is reported before
    /// the code is shown to anyone ([`PendingLink::complete`] connects by itself otherwise).
    pub async fn connect(&mut self) -> Result<()> {
        if self.connection.is_none() {
            self.connection = Some(RelayConnection::connect(&self.relay).await?);
        }
        Ok(())
    }

    /// Waits up to `timeout` for the approval, then joins the account and syncs.
    ///
    /// The wait holds one take of the pairing slot open on the relay at a time (each up to
    /// 20 s), so it costs a few lookups a minute of the relay's per-address budget however long
    /// it lasts. A lost connection (a relay restart) is not the end of the wait: it reconnects
    /// with backoff and keeps waiting until the deadline. If the account's devices changed
    /// after the approval, the approval cannot be used; it says so and waits for the same code
    /// to be approved again.
    pub async fn complete(mut self, timeout: Duration) -> Result<Device> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let sealed = self.wait_for_bundle(deadline, timeout).await?;
            let bundle = bundle::open_link_bundle(
                &sealed,
                &self.secrets.agreement_key,
                &self.secrets.signing_key.public(),
                &self.pairing_secret,
            )?;
            match self.join(&bundle, deadline, timeout).await {
                Ok(connection) => return self.finish(bundle, connection).await,
                Err(JoinFailure::Superseded) => {
                    tracing::warn!(
                        "the account's devices changed after this device was approved: \
                         approve the same code again (`kith device approve CODE`); still waiting"
                    );
                }
                Err(JoinFailure::Failed(e)) => return Err(e),
            }
        }
    }

    /// A connection to the relay, reconnecting with backoff until `deadline`.
    async fn connected(
        &mut self,
        deadline: tokio::time::Instant,
        timeout: Duration,
    ) -> Result<RelayConnection> {
        let mut backoff = RECONNECT_MIN;
        loop {
            if let Some(connection) = &self.connection {
                return Ok(connection.clone());
            }
            let attempt =
                tokio::time::timeout_at(deadline, RelayConnection::connect(&self.relay)).await;
            match attempt {
                Err(_) => return Err(ClientError::LinkTimeout(timeout.as_secs())),
                Ok(Ok(connection)) => self.connection = Some(connection),
                Ok(Err(e)) if e.is_transient() => {
                    tracing::warn!(error = %e, "cannot reach the relay; still waiting for approval");
                    sleep_until_or(deadline, backoff).await;
                    backoff = (backoff * 2).min(RECONNECT_MAX);
                }
                Ok(Err(e)) => return Err(e.into()),
            }
        }
    }

    /// Takes the sealed bundle from the pairing slot once an approval put it there.
    async fn wait_for_bundle(
        &mut self,
        deadline: tokio::time::Instant,
        timeout: Duration,
    ) -> Result<Vec<u8>> {
        let slot_id = self.pairing_secret.slot_id().to_vec();
        loop {
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(ClientError::LinkTimeout(timeout.as_secs()));
            }
            let connection = self.connected(deadline, timeout).await?;
            let wait = (deadline - now).min(TAKE_WAIT);
            let take = connection.request_within(
                request::Kind::TakePairingSlot(proto::TakePairingSlot {
                    slot_id: slot_id.clone(),
                    wait_ms: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX),
                }),
                wait + crate::net::CONNECT_TIMEOUT,
            );
            match take.await {
                Ok(response::Kind::PairingSlot(slot)) => return Ok(slot.bundle),
                Ok(_) => {
                    return Err(
                        crate::net::NetError::Protocol("expected a pairing slot".into()).into(),
                    );
                }
                Err(e) if e.relay_code() == Some(proto::ErrorCode::NotFound) => {
                    sleep_until_or(deadline, TAKE_INTERVAL.saturating_sub(now.elapsed())).await;
                }
                Err(e) if e.relay_code() == Some(proto::ErrorCode::RateLimited) => {
                    tracing::warn!(
                        "the relay limits how often this address may look up pairing slots; \
                         asking again in a minute"
                    );
                    sleep_until_or(deadline, Duration::from_secs(60)).await;
                }
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, "lost the relay while waiting for approval; reconnecting");
                    self.connection = None;
                    sleep_until_or(deadline, RECONNECT_MIN).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Joins the account with the roster the approval sealed into the bundle (the relay checks
    /// it is signed by the account key and adds this device), authenticating the connection
    /// as this device. Retries across lost connections until `deadline`.
    async fn join(
        &mut self,
        bundle: &AccountBundle,
        deadline: tokio::time::Instant,
        timeout: Duration,
    ) -> std::result::Result<RelayConnection, JoinFailure> {
        let account_id = bundle.account_id();
        loop {
            let connection = self
                .connected(deadline, timeout)
                .await
                .map_err(JoinFailure::Failed)?;
            let joined = connection
                .recover_account(
                    &account_id,
                    bundle.roster().encoded().to_vec(),
                    &self.secrets.signing_key,
                )
                .await;
            let error = match joined {
                Ok(()) => return Ok(connection),
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, "lost the relay while joining the account; reconnecting");
                    self.connection = None;
                    sleep_until_or(deadline, RECONNECT_MIN).await;
                    if tokio::time::Instant::now() >= deadline {
                        return Err(JoinFailure::Failed(ClientError::LinkTimeout(
                            timeout.as_secs(),
                        )));
                    }
                    continue;
                }
                Err(e) => e,
            };
            // Refused: either this device already joined (the answer to an earlier attempt
            // was lost with its connection) or the roster moved on since the approval.
            match connection
                .authenticate(&account_id, &self.secrets.signing_key)
                .await
            {
                Ok(()) => return Ok(connection),
                Err(_)
                    if matches!(
                        error.relay_code(),
                        Some(proto::ErrorCode::RosterRollback | proto::ErrorCode::RosterInvalid)
                    ) =>
                {
                    return Err(JoinFailure::Superseded);
                }
                Err(_) => return Err(JoinFailure::Failed(error.into())),
            }
        }
    }

    /// Stores the device, its own sealed copies of the epoch keys, and syncs.
    async fn finish(self, bundle: AccountBundle, connection: RelayConnection) -> Result<Device> {
        let account_id = bundle.account_id();
        let device_id = self.secrets.signing_key.device_id();
        // From the approving device: so this one can keep the recovery bundle current too.
        let recovery = bundle.recovery().cloned();
        let (account_key, epochs, roster) = bundle.into_parts();
        put_own_epoch_keys(&connection, &account_id, &self.secrets, &epochs).await?;
        let state = AccountState::fresh(roster, account_key, epochs, recovery, device_id);
        let PendingLink {
            home,
            relay,
            device_name,
            secrets,
            keystore,
            ..
        } = self;
        // The home is created only now: a request that ends without approval (a timeout,
        // Ctrl-C, a relay that cannot be reached) leaves nothing behind.
        let (device, guard) =
            Device::write_new_home(&home, &*keystore, secrets, state, &relay, &device_name)?;
        *device.inner.connection.lock().await = Some(connection);
        // Linked: what follows can be repeated with `kith sync`, the home stays.
        guard.keep();
        device.sync().await?;
        Ok(device)
    }
}

/// Opens the local store of `home` with the key the device secrets derive for it.
fn open_store(home: &Path, secrets: &DeviceSecrets) -> Result<LocalStore> {
    let device_id = secrets.signing_key.device_id();
    Ok(LocalStore::open(
        &store_path(home),
        &secrets.store_secret.local_store_key(&device_id),
    )?)
}

/// Sleeps for `duration`, or until `deadline` if that comes first.
async fn sleep_until_or(deadline: tokio::time::Instant, duration: Duration) {
    tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + duration)).await;
}

/// Undoes what a set-up that failed (`create`, `recover`, a link that did not complete) wrote
/// to its home, so that no half-made home is left behind: the whole directory if the set-up
/// created it, else the key file and store it added. [`HomeGuard::keep`] once the set-up
/// succeeded.
struct HomeGuard {
    home: PathBuf,
    created_home: bool,
    created_store: bool,
    created_key: bool,
    keep: bool,
}

impl HomeGuard {
    /// Creates `home` if needed and remembers what was there before.
    fn new(home: &Path) -> Result<Self> {
        let guard = Self {
            home: home.to_path_buf(),
            created_home: !home.exists(),
            created_store: !store_path(home).exists(),
            created_key: !home.join(KEY_FILE).exists(),
            keep: false,
        };
        ensure_home(home)?;
        Ok(guard)
    }

    /// The set-up succeeded: leave everything.
    fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for HomeGuard {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if self.created_home {
            let _ = std::fs::remove_dir_all(&self.home);
            return;
        }
        if self.created_store {
            let _ = std::fs::remove_dir_all(store_path(&self.home));
        }
        if self.created_key {
            let _ = std::fs::remove_file(self.home.join(KEY_FILE));
        }
    }
}
