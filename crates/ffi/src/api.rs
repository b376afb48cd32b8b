//! The exported API. Every item here carries a UniFFI macro, whose expansion is why this
//! module alone allows `unsafe_code` (crate docs); the code written here is checked for the
//! keyword by the crate's `no_unsafe_in_our_sources` test.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kith_client::account::day_text;
use kith_client::contacts::{ClearField, ContactFields, EditOptions};
use kith_client::import::{self, ImportOptions, ImportReport, Region};
use kith_client::net::{NetError, RelayTarget};
use kith_client::sync::SyncReport;
use kith_client::{ClientError, Device, PendingLink};
use kith_protocol::{DeviceId, RecordId};

use crate::keystore::adapt;
use crate::support::{error_text, run, spawn};

uniffi::setup_scaffolding!("kith");

// ---------------------------------------------------------------------------------------------
// Errors

/// Every failure of the bindings. The variants are the categories an app acts on; `reason`
/// is the text the `kith` command line prints after `error:` for the same failure, and `hint`
/// what it prints after `hint:` (what a person can do), where there is one.
#[derive(Debug, thiserror::Error, uniffi::Error)]
pub enum KithError {
    /// A call that cannot mean anything (a malformed relay address or certificate
    /// fingerprint, an edit that changes nothing, bytes given for an import that reads only a
    /// file): the CLI's usage errors (exit code 2).
    #[error("{reason}")]
    Usage {
        /// What was wrong.
        reason: String,
        /// What to do.
        hint: Option<String>,
    },
    /// No device is set up in that home (or the key store holds no secrets for it).
    #[error("{reason}")]
    NotInitialized {
        /// What was wrong.
        reason: String,
        /// What to do.
        hint: Option<String>,
    },
    /// A device is set up in that home already.
    #[error("{reason}")]
    AlreadyInitialized {
        /// What was wrong.
        reason: String,
        /// What to do.
        hint: Option<String>,
    },
    /// The relay could not be reached, or the connection to it failed.
    #[error("{reason}")]
    Network {
        /// What was wrong.
        reason: String,
        /// What to do.
        hint: Option<String>,
        /// Whether trying again later may succeed.
        transient: bool,
    },
    /// The relay refused the request.
    #[error("{reason}")]
    Relay {
        /// What was wrong.
        reason: String,
        /// What to do.
        hint: Option<String>,
        /// The relay's error code (`QuotaExceeded`, `RateLimited` …).
        code: String,
        /// Whether trying again later may succeed.
        transient: bool,
    },
    /// This device was removed from the account: it can no longer read or write.
    #[error("{reason}")]
    Revoked {
        /// What was wrong.
        reason: String,
        /// What to do.
        hint: Option<String>,
    },
    /// No contact with that id (or id prefix).
    #[error("{reason}")]
    UnknownContact {
        /// What was wrong.
        reason: String,
        /// What to do.
        hint: Option<String>,
    },
    /// No device with that id in the account, or a device that cannot be revoked (itself).
    #[error("{reason}")]
    UnknownDevice {
        /// What was wrong.
        reason: String,
        /// What to do.
        hint: Option<String>,
    },
    /// Linking a device failed: no approval in time, a code already used or of a revoked
    /// device, a link code or bundle that does not open.
    #[error("{reason}")]
    Link {
        /// What was wrong.
        reason: String,
        /// What to do.
        hint: Option<String>,
    },
    /// Recovery failed: no bundle for that key on the relay, or one filed under another
    /// account.
    #[error("{reason}")]
    Recovery {
        /// What was wrong.
        reason: String,
        /// What to do.
        hint: Option<String>,
    },
    /// Data from the relay or the store failed verification (roster, keys, envelopes, device
    /// streams, records): nothing of it was used.
    #[error("{reason}")]
    Integrity {
        /// What was wrong.
        reason: String,
        /// What to do.
        hint: Option<String>,
    },
    /// An argument was invalid (a contact field, a phone number, a recovery key's form).
    #[error("{reason}")]
    InvalidInput {
        /// What was wrong.
        reason: String,
        /// What to do.
        hint: Option<String>,
    },
    /// An importer could not read the export.
    #[error("{reason}")]
    Import {
        /// What was wrong.
        reason: String,
        /// What to do.
        hint: Option<String>,
    },
    /// The local store or a local file failed.
    #[error("{reason}")]
    Storage {
        /// What was wrong.
        reason: String,
        /// What to do.
        hint: Option<String>,
    },
    /// The device secrets could not be loaded or saved (the app's [`KeyStorage`] failed, or
    /// gave back something that is not a device's secrets).
    #[error("{reason}")]
    KeyStore {
        /// What was wrong.
        reason: String,
        /// What to do.
        hint: Option<String>,
    },
    /// A bug: the operation stopped unexpectedly, or a callback of the app failed in a way
    /// its interface does not allow.
    #[error("{reason}")]
    Internal {
        /// What was wrong.
        reason: String,
        /// What to do.
        hint: Option<String>,
    },
}

impl KithError {
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        KithError::Usage {
            reason: message.into(),
            hint: None,
        }
    }

    fn internal(message: String) -> Self {
        KithError::Internal {
            reason: message,
            hint: None,
        }
    }
}

impl From<ClientError> for KithError {
    fn from(error: ClientError) -> Self {
        let reason = error_text(&error);
        let hint = error.hint().map(str::to_owned);
        match &error {
            ClientError::Net(net) => match net {
                NetError::Relay { code, .. } => KithError::Relay {
                    reason,
                    hint,
                    code: format!("{code:?}"),
                    transient: net.is_transient(),
                },
                NetError::BadPin => KithError::Usage { reason, hint },
                _ => KithError::Network {
                    reason,
                    hint,
                    transient: net.is_transient(),
                },
            },
            ClientError::NotInitialized(_) => KithError::NotInitialized { reason, hint },
            ClientError::AlreadyInitialized(_) => KithError::AlreadyInitialized { reason, hint },
            ClientError::Revoked => KithError::Revoked { reason, hint },
            ClientError::UnknownContact(_) => KithError::UnknownContact { reason, hint },
            ClientError::UnknownDevice(_) | ClientError::CannotRevokeSelf => {
                KithError::UnknownDevice { reason, hint }
            }
            ClientError::LinkTimeout(_)
            | ClientError::AlreadyLinked(_)
            | ClientError::AlreadyApproved(_)
            | ClientError::LinkCodeOfRevokedDevice(_)
            | ClientError::Bundle(_) => KithError::Link { reason, hint },
            ClientError::RecoveryNotFound
            | ClientError::RecoveryAccountMismatch
            | ClientError::RecoveryRecord(_) => KithError::Recovery { reason, hint },
            ClientError::AccountDeleted => KithError::Revoked { reason, hint },
            ClientError::Unsupported(_) => KithError::Relay {
                reason,
                hint,
                code: "Unsupported".into(),
                transient: false,
            },
            ClientError::RebuildNeedsToken => KithError::Relay {
                reason,
                hint,
                code: "RegistrationClosed".into(),
                transient: false,
            },
            ClientError::Roster(_)
            | ClientError::Epoch(_)
            | ClientError::Envelope(_)
            | ClientError::Stream(_)
            | ClientError::Clock(_)
            | ClientError::Merge(_)
            | ClientError::NewerRosterWithheld { .. }
            | ClientError::RosterWithheld { .. }
            | ClientError::WriterView { .. } => KithError::Integrity { reason, hint },
            ClientError::Record(_) | ClientError::InvalidInput(_) => {
                KithError::InvalidInput { reason, hint }
            }
            ClientError::Import(_) => KithError::Import { reason, hint },
            ClientError::Store(_) | ClientError::Io { .. } => KithError::Storage { reason, hint },
            ClientError::KeyStore(_) => KithError::KeyStore { reason, hint },
            // `ClientError` is `#[non_exhaustive]`: a variant added to kith-client before this
            // mapping learns it is reported as what it is to the app, a failure it cannot act on.
            _ => KithError::Internal { reason, hint },
        }
    }
}

impl From<import::ImportError> for KithError {
    fn from(error: import::ImportError) -> Self {
        ClientError::from(error).into()
    }
}

impl From<uniffi::UnexpectedUniFFICallbackError> for KithError {
    fn from(error: uniffi::UnexpectedUniFFICallbackError) -> Self {
        KithError::internal(format!("a callback of the app failed: {}", error.reason))
    }
}

type Result<T, E = KithError> = std::result::Result<T, E>;

// ---------------------------------------------------------------------------------------------
// Key storage

/// Where the app keeps a device's secrets: the platform keychain (iOS/macOS Keychain, Android
/// Keystore-wrapped storage …), implemented by the app. The secrets are one opaque blob per
/// device; store it as one item, readable only by this app (and its extensions), never in
/// files or backups. Given to every call that creates or opens a device; without one, the
/// secrets go to a key file (mode 0600) in the home directory, as with the CLI.
#[uniffi::export(with_foreign)]
pub trait KeyStorage: Send + Sync {
    /// The blob saved last, `None` if there is none yet.
    fn load(&self) -> Result<Option<Vec<u8>>>;
    /// Saves the blob durably, replacing any earlier one.
    fn save(&self, secrets: Vec<u8>) -> Result<()>;
}

// ---------------------------------------------------------------------------------------------
// Records

/// The relay a device talks to.
#[derive(Debug, Clone, uniffi::Record)]
pub struct RelayConfig {
    /// `HOST:PORT` (UDP), e.g. `relay.example.org:4433`.
    pub address: String,
    /// The SHA-256 fingerprint of the relay's certificate, 64 hex characters, as `kith-relay
    /// serve` prints it.
    pub cert_sha256: String,
}

impl RelayConfig {
    /// The client's relay target; malformed values are usage errors, as for `kith --relay`.
    fn target(&self) -> Result<RelayTarget> {
        let port = self
            .address
            .rsplit_once(':')
            .map(|(_, port)| port.parse::<u16>());
        if !matches!(port, Some(Ok(_))) {
            return Err(KithError::usage(format!(
                "--relay must be HOST:PORT, e.g. relay.example.org:4433 or 127.0.0.1:4433 (got '{}')",
                self.address
            )));
        }
        RelayTarget::pinned(self.address.clone(), &self.cert_sha256)
            .map_err(|e| KithError::usage(format!("invalid --relay-cert-sha256: {e}")))
    }
}

/// A new account: its first device and the recovery key.
#[derive(uniffi::Record)]
pub struct NewAccount {
    /// The device.
    pub device: Arc<KithDevice>,
    /// The recovery key: show it once for the person to write down; never store it. It is
    /// the only way back to the contacts if every device is lost, and it opens them.
    pub recovery_key: String,
}

impl std::fmt::Debug for NewAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewAccount")
            .field("device", &self.device)
            .field("recovery_key", &"<secret>")
            .finish()
    }
}

kith_client::contact_records! {
    #[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
    pub struct ContactView, EmailView, PhoneView, UrlView, HandleView;
    /// The sources it came from (`linkedin`, `vcard`, `calendar` …).
    sources: String = |source: &kith_protocol::contact::Source| source.kind().as_str().to_owned();
}

/// Fields of a new contact, or the fields an edit sets (`None`: leave as is).
#[derive(Debug, Clone, Default, PartialEq, Eq, uniffi::Record)]
pub struct ContactInput {
    /// Full name.
    #[uniffi(default = None)]
    pub name: Option<String>,
    /// An e-mail address to add.
    #[uniffi(default = None)]
    pub email: Option<String>,
    /// A phone number to add (any format; normalized to E.164).
    #[uniffi(default = None)]
    pub phone: Option<String>,
    /// Company.
    #[uniffi(default = None)]
    pub company: Option<String>,
    /// Private note.
    #[uniffi(default = None)]
    pub note: Option<String>,
    /// The region (ISO 3166 code such as `GB`) assumed for a phone number written without a
    /// country code; the default is US. Apps pass the person's locale region.
    #[uniffi(default = None)]
    pub region: Option<String>,
}

impl ContactInput {
    fn fields(&self) -> ContactFields {
        ContactFields {
            name: self.name.clone(),
            email: self.email.clone(),
            phone: self.phone.clone(),
            company: self.company.clone(),
            note: self.note.clone(),
        }
    }

    fn region(&self) -> Result<Option<Region>> {
        self.region
            .as_deref()
            .map(|code| {
                code.trim().parse::<Region>().map_err(|_| {
                    KithError::usage(format!(
                        "'{code}' is not a region: give an ISO 3166 code such as US or GB"
                    ))
                })
            })
            .transpose()
    }
}

kith_client::clear_field_enum! {
    /// A field an edit can clear.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
    pub enum ClearableField mirrors ClearField
}

/// What an edit removes besides the values it sets.
#[derive(Debug, Clone, Default, PartialEq, Eq, uniffi::Record)]
pub struct ContactRemovals {
    /// Fields to clear.
    #[uniffi(default = [])]
    pub clear: Vec<ClearableField>,
    /// E-mail addresses to remove.
    #[uniffi(default = [])]
    pub emails: Vec<String>,
    /// Phone numbers to remove, in any format.
    #[uniffi(default = [])]
    pub phones: Vec<String>,
}

/// A concurrent edit the merge kept: the value shown and the one it beat.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ConflictView {
    /// The contact (hex id).
    pub contact_id: String,
    /// The field key (`name`, `company`, `email/…`).
    pub field: String,
    /// The value shown.
    pub winner: String,
    /// The concurrent value that lost.
    pub other: String,
}

/// One contact of a [`DuplicateSuggestion`].
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct SuggestedContact {
    /// The contact (hex id).
    pub id: String,
    /// Its name.
    pub name: String,
}

/// Contacts that look like one person but were not merged automatically (they share no
/// e-mail, phone or LinkedIn URL), as `kith contacts duplicates` lists them. Merge them with
/// [`KithDevice::merge_contacts`].
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct DuplicateSuggestion {
    /// Why they are suggested: the same name, or first names that are variants of each other
    /// ("Bob" / "Robert") with the same last name.
    pub reason: String,
    /// The contacts, in name then id order (two or more).
    pub contacts: Vec<SuggestedContact>,
}

impl From<kith_client::merging::DuplicateSuggestion> for DuplicateSuggestion {
    fn from(suggestion: kith_client::merging::DuplicateSuggestion) -> Self {
        DuplicateSuggestion {
            reason: suggestion.reason,
            contacts: suggestion
                .ids
                .into_iter()
                .zip(suggestion.names)
                .map(|(id, name)| SuggestedContact { id, name })
                .collect(),
        }
    }
}

/// What separating a record from its merged contact did: the two contacts now shown.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct UnmergeResult {
    /// The contact the separated record is shown as (hex id).
    pub separated: String,
    /// The contact the other records stay merged as (hex id).
    pub rest: String,
}

/// A device of the account, as `kith device list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct DeviceView {
    /// The device id (hex).
    pub id: String,
    /// Its name.
    pub name: String,
    /// When it was added (ms since the Unix epoch).
    pub added_at_ms: u64,
    /// Whether it is the device asking.
    pub this_device: bool,
    /// A warning when its wall clock was measured far off (its edits may win or lose
    /// against concurrent ones for that reason).
    pub clock_warning: Option<String>,
}

/// This device and its account.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct AccountInfo {
    /// The account id (hex).
    pub account_id: String,
    /// This device's id (hex).
    pub device_id: String,
    /// This device's name.
    pub device_name: String,
    /// The relay's address.
    pub relay_address: String,
    /// The newest key epoch this device holds (it grows with every revocation).
    pub epoch: u64,
    /// Live contacts in the local store, as listed (a merged contact counts once).
    pub contact_count: u64,
    /// Whether this device knows it was revoked.
    pub revoked: bool,
    /// The account's devices, from the roster this device last verified.
    pub devices: Vec<DeviceView>,
}

/// The account's use of the relay: the figures of [`RelayAccountInfo`] that every relay
/// release tells ([`KithDevice::relay_usage`]).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct RelayUsage {
    /// Bytes stored.
    pub bytes_used: u64,
    /// The relay's quota for the account (bytes).
    pub bytes_quota: u64,
    /// Devices.
    pub devices: u64,
    /// The most devices the relay allows an account.
    pub devices_max: u64,
    /// Envelopes stored.
    pub envelopes: u64,
}

/// One device stream the relay stores for the account.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct RelayStream {
    /// The device that writes it (hex id).
    pub device_id: String,
    /// Lowest seq stored (0 while empty).
    pub first_seq: u64,
    /// Highest seq written.
    pub last_seq: u64,
    /// Envelopes stored.
    pub envelopes: u64,
    /// Bytes stored.
    pub bytes: u64,
}

kith_client::relay_account_record! {
    /// What the relay holds for the account, as `kith account info` shows it: usage against the
    /// quotas (the relay's defaults, or what its operator set for this account), each device
    /// stream's size and the day a device was last active. Exactly what the relay's operator can
    /// see of the account. A suspended account cannot ask: the call fails with a `Relay` error of
    /// code `AccountSuspended`.
    ///
    /// The fields after `envelopes` are `None` from a relay older than 0.2.0, which tells only the
    /// usage figures.
    #[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
    pub struct RelayAccountInfo {
        /// The relay's address.
        pub relay_address: String,
    } usage {
        /// Of `bytes_used`, the bytes of sealed epoch keys.
        pub sealed_key_bytes: Option<u64>,
        /// The last day a device of the account was active, as the relay records it
        /// (`YYYY-MM-DD`, UTC; the relay keeps the day only). `None` also when no device was
        /// active yet.
        pub last_active_day: Option<String>,
        /// The version of the account's roster the relay holds.
        pub roster_version: Option<u64>,
        /// Each device stream the relay stores.
        pub streams: Option<Vec<RelayStream>>,
    }
}

impl RelayAccountInfo {
    fn new(relay_address: String, info: kith_client::AccountInfo) -> Self {
        let detail = info.detail.as_ref();
        let streams = detail.map(|d| {
            d.streams
                .iter()
                .map(|s| RelayStream {
                    device_id: s.device.to_hex(),
                    first_seq: s.first_seq,
                    last_seq: s.last_seq,
                    envelopes: s.envelopes,
                    bytes: s.bytes,
                })
                .collect()
        });
        Self::with_usage(
            &info,
            relay_address,
            detail.map(|d| d.sealed_key_bytes),
            detail.and_then(|d| d.last_active_day).map(day_text),
            detail.map(|d| d.roster_version),
            streams,
        )
    }
}

/// What an approval of a link code did.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct LinkApproval {
    /// The approved device (hex id).
    pub device_id: String,
    /// Whether it joined while the approval waited (10 s). If not, it joins when its
    /// [`LinkRequest`] picks the approval up, within 10 minutes; after that the approval
    /// lapses and the account is unchanged.
    pub joined: bool,
}

/// What one sync did.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct SyncResult {
    /// Envelopes this device pushed.
    pub pushed: u64,
    /// Envelopes pulled from other devices and merged.
    pub pulled: u64,
    /// Contacts whose merged state changed (hex ids).
    pub changed: Vec<String>,
    /// Streams that stopped (an envelope in a newer format, a removed device's stream past
    /// its end), as the CLI warns of them; everything else synced.
    pub warnings: Vec<String>,
}

impl From<SyncReport> for SyncResult {
    fn from(report: SyncReport) -> Self {
        SyncResult {
            pushed: report.pushed as u64,
            pulled: report.pulled as u64,
            changed: report.changed.iter().map(RecordId::to_hex).collect(),
            warnings: report.warnings(),
        }
    }
}

/// What a compaction did.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct CompactResult {
    /// Snapshot envelopes written.
    pub snapshot_envelopes: u64,
    /// The account's bytes on the relay before.
    pub relay_bytes_before: u64,
    /// The account's bytes on the relay after.
    pub relay_bytes_after: u64,
}

kith_client::export_enum! {
    /// The exports an import reads (as `kith import KIND`). `Imessage` is read from a file path
    /// only; `Calendar` and `Mail` need `me`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
    pub enum ImportKind mirrors import::Export
}

/// What an import did.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ImportResult {
    /// Contacts the importer found.
    pub found: u64,
    /// New contacts.
    pub added: u64,
    /// Existing contacts that gained or changed fields.
    pub updated: u64,
    /// Contacts already up to date.
    pub unchanged: u64,
    /// Rows or records skipped.
    pub skipped: u64,
    /// Contacts left out (recorded only on a contact you do not have, or deleted by hand).
    pub left_out: u64,
    /// What was skipped or dropped, one line each (`line 3: …`), as the CLI lists it.
    pub problems: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// Setting a device up

fn home_path(home: &str) -> Result<PathBuf> {
    if home.trim().is_empty() {
        return Err(KithError::usage(
            "the home directory is empty: give the directory the device's store lives in",
        ));
    }
    Ok(PathBuf::from(home))
}

/// Creates a new account on the relay with this as its first device, in `home` (a directory
/// the app owns; created if needed). Returns the device and the recovery key, which is shown
/// once and never stored. `registration_token` is for relays that admit accounts by token.
#[uniffi::export]
pub async fn create_account(
    home: String,
    relay: RelayConfig,
    device_name: String,
    registration_token: Option<String>,
    keystore: Option<Arc<dyn KeyStorage>>,
) -> Result<NewAccount> {
    let home = home_path(&home)?;
    let target = relay.target()?;
    run(
        async move {
            let (device, recovery_key) = Device::create_with_keystore(
                &home,
                target,
                &device_name,
                registration_token,
                adapt(keystore),
            )
            .await?;
            Ok(NewAccount {
                device: Arc::new(KithDevice { device }),
                recovery_key: recovery_key.0.to_string(),
            })
        },
        KithError::internal,
    )
    .await
}

/// Opens the device set up in `home`, with its secrets from `keystore` (the same the device
/// was set up with; `None` for the key file).
#[uniffi::export]
pub fn open_device(home: String, keystore: Option<Arc<dyn KeyStorage>>) -> Result<Arc<KithDevice>> {
    let home = home_path(&home)?;
    let device = Device::open_with_keystore(&home, adapt(keystore))?;
    Ok(Arc::new(KithDevice { device }))
}

/// Restores the account on a new device in `home` from the recovery key, when every old
/// device is lost; pulls everything.
#[uniffi::export]
pub async fn recover_account(
    home: String,
    relay: RelayConfig,
    recovery_key: String,
    device_name: String,
    keystore: Option<Arc<dyn KeyStorage>>,
) -> Result<Arc<KithDevice>> {
    let home = home_path(&home)?;
    let target = relay.target()?;
    run(
        async move {
            let device = Device::recover_with_keystore(
                &home,
                target,
                recovery_key.trim(),
                &device_name,
                adapt(keystore),
            )
            .await?;
            Ok(Arc::new(KithDevice { device }))
        },
        KithError::internal,
    )
    .await
}

/// A new device asking to join an account: show [`LinkRequest::code`] (as text or a QR code),
/// have a device of the account approve it ([`KithDevice::approve_link`]), and await
/// [`LinkRequest::complete`]. Nothing is written to the home until the link completes.
#[derive(uniffi::Object)]
pub struct LinkRequest {
    code: String,
    pending: Mutex<Option<PendingLink>>,
}

impl std::fmt::Debug for LinkRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkRequest").finish_non_exhaustive()
    }
}

#[uniffi::export]
impl LinkRequest {
    /// Prepares the new device in `home` and connects to the relay, so that a relay that
    /// cannot be reached is reported before the code is shown to anyone.
    #[uniffi::constructor]
    pub async fn start(
        home: String,
        relay: RelayConfig,
        device_name: String,
        keystore: Option<Arc<dyn KeyStorage>>,
    ) -> Result<Arc<LinkRequest>> {
        let home = home_path(&home)?;
        let target = relay.target()?;
        run(
            async move {
                let mut pending =
                    PendingLink::new_with_keystore(&home, target, &device_name, adapt(keystore))?;
                pending.connect().await?;
                Ok(Arc::new(LinkRequest {
                    code: pending.code().to_owned(),
                    pending: Mutex::new(Some(pending)),
                }))
            },
            KithError::internal,
        )
        .await
    }

    /// The link code to show: text that also fits in a QR code. It lets whoever holds it ask
    /// to join as this device, so show it only to the person linking.
    pub fn code(&self) -> String {
        self.code.clone()
    }

    /// Waits up to `timeout_seconds` for the approval, then joins the account and syncs.
    /// Once only: the request is used up whatever the outcome.
    pub async fn complete(&self, timeout_seconds: u64) -> Result<Arc<KithDevice>> {
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
            .ok_or_else(|| {
                KithError::usage("this link request was used already: start a new one")
            })?;
        run(
            async move {
                let device = pending
                    .complete(Duration::from_secs(timeout_seconds))
                    .await?;
                Ok(Arc::new(KithDevice { device }))
            },
            KithError::internal,
        )
        .await
    }
}

// ---------------------------------------------------------------------------------------------
// A device

/// One device of a Kith account, set up in its home directory.
#[derive(Debug, uniffi::Object)]
pub struct KithDevice {
    device: Device,
}

impl KithDevice {
    /// Runs `operation` with a clone of the device on the bindings' runtime.
    async fn on_runtime<T, F, Fut>(&self, operation: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Device) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T>> + Send + 'static,
    {
        let device = self.device.clone();
        run(async move { operation(device).await }, KithError::internal).await
    }

    fn contact_id(&self, id: &str) -> Result<RecordId> {
        Ok(self.device.resolve_id(id)?)
    }
}

#[uniffi::export]
impl KithDevice {
    /// This device's id (hex).
    pub fn device_id(&self) -> String {
        self.device.device_id().to_hex()
    }

    /// The account's id (hex).
    pub fn account_id(&self) -> String {
        self.device.account_id().to_hex()
    }

    /// The home directory the device lives in.
    pub fn home(&self) -> String {
        self.device.home().display().to_string()
    }

    /// This device, its account and the account's devices (no relay access).
    pub fn account_info(&self) -> Result<AccountInfo> {
        Ok(AccountInfo {
            account_id: self.account_id(),
            device_id: self.device_id(),
            device_name: self.device.device_name().to_owned(),
            relay_address: self.device.relay().address.clone(),
            epoch: self.device.current_epoch(),
            contact_count: self.device.contact_count()?,
            revoked: self.device.is_revoked()?,
            devices: self.devices()?,
        })
    }

    /// The account's devices, from the roster this device last verified.
    pub fn devices(&self) -> Result<Vec<DeviceView>> {
        Ok(self
            .device
            .devices()?
            .into_iter()
            .map(|d| DeviceView {
                clock_warning: d.clock_skew.and_then(|skew| skew.warning(&d.name)),
                id: d.id,
                name: d.name,
                added_at_ms: d.added_at_ms,
                this_device: d.this_device,
            })
            .collect())
    }

    /// What the relay holds for the account (asks the relay): usage against the quotas, each
    /// device stream, the day a device was last active — what `kith account info` shows.
    /// [`KithDevice::account_info`] is this device's local view; this is the relay's.
    pub async fn relay_account_info(&self) -> Result<RelayAccountInfo> {
        self.on_runtime(|device| async move {
            let info = device.account_info().await?;
            Ok(RelayAccountInfo::new(device.relay().address.clone(), info))
        })
        .await
    }

    /// The account's use of the relay (asks the relay): the usage figures alone, which
    /// [`KithDevice::relay_account_info`] also holds. Kept for apps written before it.
    pub async fn relay_usage(&self) -> Result<RelayUsage> {
        self.on_runtime(|device| async move {
            let usage = device.usage().await?;
            Ok(RelayUsage {
                bytes_used: usage.bytes_used,
                bytes_quota: usage.bytes_quota,
                devices: usage.devices,
                devices_max: usage.devices_max,
                envelopes: usage.envelopes,
            })
        })
        .await
    }

    /// Every live contact, ordered by name.
    pub fn contacts(&self) -> Result<Vec<ContactView>> {
        Ok(self
            .device
            .contacts()?
            .iter()
            .map(ContactView::from)
            .collect())
    }

    /// Contacts whose name, e-mail, phone, company or note contains `query`, ignoring case and
    /// accents; phone digits match whatever the formatting.
    pub fn search(&self, query: String) -> Result<Vec<ContactView>> {
        Ok(self
            .device
            .search(&query)?
            .iter()
            .map(ContactView::from)
            .collect())
    }

    /// One contact, by id or a unique prefix of it (at least 4 hex digits).
    pub fn contact(&self, id: String) -> Result<ContactView> {
        let id = self.contact_id(&id)?;
        Ok(ContactView::from(&self.device.contact(&id)?))
    }

    /// Adds a contact; returns its id (hex). Sent to the other devices by the next sync.
    pub async fn add_contact(&self, contact: ContactInput) -> Result<String> {
        if contact.name.as_deref().is_none_or(|n| n.trim().is_empty()) {
            return Err(KithError::usage("a new contact needs a name"));
        }
        let region = contact.region()?;
        self.on_runtime(move |device| async move {
            let id = device.add_contact_in(&contact.fields(), region).await?;
            Ok(id.to_hex())
        })
        .await
    }

    /// Edits a contact: sets the fields `changes` gives, removes what `removals` names.
    /// Returns whether anything changed (false: the contact already had these values).
    pub async fn edit_contact(
        &self,
        id: String,
        changes: ContactInput,
        removals: ContactRemovals,
    ) -> Result<bool> {
        let options = EditOptions {
            clear: removals
                .clear
                .iter()
                .copied()
                .map(ClearField::from)
                .collect(),
            remove_emails: removals.emails,
            remove_phones: removals.phones,
            region: changes.region()?,
        };
        let fields = changes.fields();
        if fields == ContactFields::default()
            && options.clear.is_empty()
            && options.remove_emails.is_empty()
            && options.remove_phones.is_empty()
        {
            return Err(KithError::usage(
                "nothing to change: give at least one field to set, clear or remove",
            ));
        }
        let id = self.contact_id(&id)?;
        self.on_runtime(move |device| async move {
            Ok(device.edit_contact_with(&id, &fields, &options).await?)
        })
        .await
    }

    /// Deletes a contact (on every device, after sync).
    pub async fn delete_contact(&self, id: String) -> Result<()> {
        let id = self.contact_id(&id)?;
        self.on_runtime(move |device| async move { Ok(device.delete_contact(&id).await?) })
            .await
    }

    /// Concurrent edits the merge kept, so the app can show both values.
    pub fn conflicts(&self) -> Result<Vec<ConflictView>> {
        Ok(self
            .device
            .conflicts()?
            .into_iter()
            .map(|c| ConflictView {
                contact_id: c.id,
                field: c.field,
                winner: c.winner,
                other: c.other,
            })
            .collect())
    }

    /// Settles a conflict: writes `value` to `field` of the contact, superseding both
    /// concurrent values (pass one of them, or another).
    pub async fn resolve_conflict(&self, id: String, field: String, value: String) -> Result<()> {
        let id = self.contact_id(&id)?;
        self.on_runtime(move |device| async move {
            Ok(device.resolve_conflict(&id, &field, &value).await?)
        })
        .await
    }

    /// Merges contacts that are the same person (two or more, by id or a unique prefix of
    /// it), on every device after sync; undone by [`KithDevice::unmerge_contact`]. Contacts a
    /// person separated before are merged again. Returns the id the merged contact is shown
    /// under. Ids that are all one contact already are an `InvalidInput` error.
    pub async fn merge_contacts(&self, ids: Vec<String>) -> Result<String> {
        if ids.len() < 2 {
            return Err(KithError::usage(
                "give at least two contact ids to merge (see `kith contacts duplicates`)",
            ));
        }
        let ids = ids
            .iter()
            .map(|id| self.contact_id(id))
            .collect::<Result<Vec<_>>>()?;
        self.on_runtime(
            move |device| async move { Ok(device.merge_contacts(&ids).await?.to_hex()) },
        )
        .await
    }

    /// Separates a record (by id or a unique prefix, as [`KithDevice::merged_records`] lists
    /// them) from the contact it was merged into; the two stay apart as two people on every
    /// device, and the automatic merge no longer joins them. A contact that is not merged is
    /// an `InvalidInput` error.
    pub async fn unmerge_contact(&self, id: String) -> Result<UnmergeResult> {
        let id = self.contact_id(&id)?;
        self.on_runtime(move |device| async move {
            let (separated, rest) = device.unmerge_contact(&id).await?;
            Ok(UnmergeResult {
                separated: separated.to_hex(),
                rest: rest.to_hex(),
            })
        })
        .await
    }

    /// The records merged into a contact (hex ids, sorted): the ids
    /// [`KithDevice::unmerge_contact`] takes. Just the contact's own id when it is not merged.
    pub fn merged_records(&self, id: String) -> Result<Vec<String>> {
        let id = self.contact_id(&id)?;
        Ok(self
            .device
            .merged_records(&id)?
            .iter()
            .map(RecordId::to_hex)
            .collect())
    }

    /// Contacts that are probably one person but share no e-mail, phone or LinkedIn URL, so
    /// they were not merged automatically: the same name (ignoring case, accents and spacing),
    /// or name variants such as Bob and Robert with the same last name. Pairs a person
    /// separated are left out.
    pub fn duplicate_suggestions(&self) -> Result<Vec<DuplicateSuggestion>> {
        Ok(self
            .device
            .duplicate_suggestions()?
            .into_iter()
            .map(DuplicateSuggestion::from)
            .collect())
    }

    /// Imports an export from a file: `me` lists the person's own addresses (needed by mail
    /// and calendar); `address_book` is the macOS address book database for iMessage names.
    pub async fn import_file(
        &self,
        kind: ImportKind,
        path: String,
        me: Vec<String>,
        address_book: Option<String>,
    ) -> Result<ImportResult> {
        check_import_arguments(kind, &me, address_book.is_some())?;
        self.on_runtime(move |device| async move {
            let report = blocking(move || {
                Ok(import::read_export(
                    kind.into(),
                    Path::new(&path),
                    address_book.as_deref().map(Path::new),
                    &me,
                    &ImportOptions::default(),
                )?)
            })
            .await?;
            import_report(&device, report).await
        })
        .await
    }

    /// Imports an export from its bytes (a file the app picked, a download). iMessage reads a
    /// database file and is imported from a path only.
    pub async fn import_bytes(
        &self,
        kind: ImportKind,
        bytes: Vec<u8>,
        me: Vec<String>,
    ) -> Result<ImportResult> {
        check_import_arguments(kind, &me, false)?;
        if kind == ImportKind::Imessage {
            return Err(KithError::usage(
                "an iMessage database is imported from its file path (import_file)",
            ));
        }
        self.on_runtime(move |device| async move {
            let report = blocking(move || read_bytes_export(kind, &bytes, &me)).await?;
            import_report(&device, report).await
        })
        .await
    }

    /// One full sync: push this device's changes, pull and merge everyone else's.
    pub async fn sync(&self) -> Result<SyncResult> {
        self.on_runtime(|device| async move { Ok(device.sync().await?.into()) })
            .await
    }

    /// Keeps a connection to the relay and syncs whenever another device pushes (or another
    /// process sharing this home queued changes), calling `listener` with each sync's result,
    /// until [`Watcher::stop`] or a permanent error. Transient failures (the relay restarting,
    /// the network gone) are waited out with backoff.
    pub fn watch(&self, listener: Arc<dyn ChangeListener>) -> Arc<Watcher> {
        let device = self.device.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = spawn(async move {
            let (changes, mut reports) = tokio::sync::mpsc::channel(16);
            let watch = device.watch(changes);
            tokio::pin!(watch);
            tokio::pin!(stopped);
            let outcome = loop {
                tokio::select! {
                    result = &mut watch => break result.err().map(KithError::from),
                    _ = &mut stopped => break None,
                    Some(report) = reports.recv() => listener.on_sync(report.into()),
                }
            };
            while let Ok(report) = reports.try_recv() {
                listener.on_sync(report.into());
            }
            listener.on_stopped(outcome);
        });
        Arc::new(Watcher {
            stop: Mutex::new(Some(stop)),
            task: Mutex::new(Some(task)),
        })
    }

    /// Registers `token` (1 to 1024 bytes, from the app's push gateway) as this device's push
    /// target: the relay then wakes the app through the gateway whenever another device of
    /// the account pushes, sending the gateway the token and nothing else (README.md "Wake-up
    /// notifications"). Replaces an earlier token; call it at every app start. A relay without
    /// a push gateway refuses with a `Relay` error of code `Unsupported`.
    pub async fn register_push_target(&self, token: Vec<u8>) -> Result<()> {
        self.on_runtime(move |device| async move { Ok(device.register_push_target(&token).await?) })
            .await
    }

    /// Removes this device's push target: the relay stops waking it.
    pub async fn unregister_push_target(&self) -> Result<()> {
        self.on_runtime(|device| async move { Ok(device.unregister_push_target().await?) })
            .await
    }

    /// Writes this device's merged state as a snapshot and lets the relay drop the history
    /// before it, so the account's relay storage follows the live contacts.
    pub async fn compact(&self) -> Result<CompactResult> {
        self.on_runtime(|device| async move {
            let report = device.compact().await?;
            Ok(CompactResult {
                snapshot_envelopes: report.snapshot_envelopes as u64,
                relay_bytes_before: report.relay_bytes_before,
                relay_bytes_after: report.relay_bytes_after,
            })
        })
        .await
    }

    /// Approves a new device from its link code (the text of [`LinkRequest::code`], typed,
    /// pasted or scanned). Waits up to 10 s for it to join.
    pub async fn approve_link(&self, code: String) -> Result<LinkApproval> {
        self.on_runtime(move |device| async move {
            let approval = device.approve_link(code.trim()).await?;
            Ok(LinkApproval {
                device_id: approval.device.to_hex(),
                joined: approval.joined,
            })
        })
        .await
    }

    /// Removes another device from the account (by id or a unique prefix of it): the relay
    /// refuses it from then on, and it cannot read anything written afterwards.
    pub async fn revoke_device(&self, device_id: String) -> Result<()> {
        let target = self.device_id_of(&device_id)?;
        self.on_runtime(move |device| async move { Ok(device.revoke(&target).await?) })
            .await
    }

    /// Deletes the account on the relay: every envelope, roster, key and bundle of it, for
    /// every device. The local home (and the app's keychain item) are the app's to remove
    /// afterwards.
    pub async fn delete_account(&self) -> Result<()> {
        self.on_runtime(|device| async move { Ok(device.delete_account().await?) })
            .await
    }

    /// Closes the connection to the relay, if one is open (the relay frees it at once instead
    /// of at its idle timeout). The device stays usable; the next call reconnects.
    pub async fn close(&self) {
        let _ = self
            .on_runtime(|device| async move {
                device.close().await;
                Ok(())
            })
            .await;
    }
}

impl KithDevice {
    fn device_id_of(&self, text: &str) -> Result<DeviceId> {
        Ok(self.device.resolve_device(text)?)
    }
}

// ---------------------------------------------------------------------------------------------
// Watching

/// What the app implements to hear from [`KithDevice::watch`]. Called on a thread of the
/// bindings' runtime: hand the results to the UI thread.
#[uniffi::export(with_foreign)]
pub trait ChangeListener: Send + Sync {
    /// A sync ran (at start, then whenever another device pushed).
    fn on_sync(&self, result: SyncResult);
    /// The watch ended: `None` after [`Watcher::stop`], else the permanent error (such as
    /// [`KithError::Revoked`]).
    fn on_stopped(&self, error: Option<KithError>);
}

/// A running [`KithDevice::watch`]; dropping it stops it too.
#[derive(uniffi::Object)]
pub struct Watcher {
    stop: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher").finish_non_exhaustive()
    }
}

/// A watcher the app lets go of stops (its listener hears `on_stopped(None)`), so a dropped
/// handle leaves no connection behind.
impl Drop for Watcher {
    fn drop(&mut self) {
        let stop = self
            .stop
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(stop) = stop {
            let _ = stop.send(());
        }
    }
}

#[uniffi::export]
impl Watcher {
    /// Stops watching and waits until the listener got its last call (`on_stopped(None)`).
    pub async fn stop(&self) {
        if let Some(stop) = self
            .stop
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
        {
            let _ = stop.send(());
        }
        let task = self
            .task
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Importing

fn check_import_arguments(kind: ImportKind, me: &[String], address_book: bool) -> Result<()> {
    if address_book && kind != ImportKind::Imessage {
        return Err(KithError::usage(
            "--address-book only applies to `kith import imessage`",
        ));
    }
    if !me.is_empty() && !matches!(kind, ImportKind::Mail | ImportKind::Calendar) {
        return Err(KithError::usage(
            "--me only applies to `kith import mail` and `kith import calendar`",
        ));
    }
    if me.is_empty() && kind == ImportKind::Mail {
        return Err(KithError::usage(
            "`kith import mail` needs --me EMAIL (your own address; repeat it for each one)",
        ));
    }
    Ok(())
}

/// Runs an importer (CPU and file work) off the runtime's async workers.
async fn blocking(
    read: impl FnOnce() -> Result<ImportReport> + Send + 'static,
) -> Result<ImportReport> {
    tokio::task::spawn_blocking(read)
        .await
        .map_err(|e| KithError::internal(format!("the importer stopped unexpectedly: {e}")))?
}

fn read_bytes_export(kind: ImportKind, bytes: &[u8], me: &[String]) -> Result<ImportReport> {
    let opts = ImportOptions::default();
    Ok(match kind {
        ImportKind::Calendar => {
            import::calendar::import_bytes(bytes, me, import::calendar::now_unix(), &opts)?
        }
        ImportKind::Mail => import::mail::import_bytes(bytes, me, &opts)?,
        ImportKind::Twitter => import::twitter::import_bytes(bytes, &opts)?,
        ImportKind::Linkedin => import::linkedin::import_bytes(bytes, &opts)?,
        ImportKind::Facebook => import::facebook::import_bytes(bytes, &opts)?,
        ImportKind::Vcard => import::vcard::import_bytes(bytes, &opts)?,
        ImportKind::Imessage => {
            return Err(KithError::usage(
                "an iMessage database is imported from its file path (import_file)",
            ));
        }
    })
}

async fn import_report(device: &Device, report: ImportReport) -> Result<ImportResult> {
    let found = report.contacts.len() as u64;
    let mut problems: Vec<String> = report
        .skipped
        .iter()
        .map(|row| format!("line {}: {}", row.line, row.reason))
        .collect();
    problems.extend(
        report
            .dropped
            .iter()
            .map(|field| format!("line {}, {}: {}", field.line, field.field, field.reason)),
    );
    let summary = device.import(report).await?;
    Ok(ImportResult {
        found,
        added: summary.added as u64,
        updated: summary.updated as u64,
        unchanged: summary.unchanged as u64,
        skipped: summary.skipped as u64,
        left_out: summary.left_out as u64,
        problems,
    })
}
