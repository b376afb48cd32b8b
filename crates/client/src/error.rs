//! The client's error type: each variant says what went wrong and, where a person can act,
//! what to do.

use kith_protocol::DeviceId;

use crate::keystore::KeyStoreError;
use crate::net::NetError;
use crate::store::LocalStoreError;

/// Everything that can go wrong in `kith-client`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Talking to the relay failed.
    #[error(transparent)]
    Net(NetError),
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] LocalStoreError),
    /// The device secrets could not be loaded or saved.
    #[error(transparent)]
    KeyStore(#[from] KeyStoreError),
    /// No device has been set up in this home directory.
    #[error(
        "no Kith device in {0}: run `kith init` (new account), `kith device request` (link to an account) or `kith recover`"
    )]
    NotInitialized(String),
    /// A device already exists in this home directory.
    #[error("a Kith device already exists in {0}; use another --home to set up a second device")]
    AlreadyInitialized(String),
    /// The relay served a roster that does not verify or does not extend the one we trust.
    #[error("the relay served an invalid device roster: {0}")]
    Roster(#[from] kith_protocol::roster::RosterError),
    /// Key material could not be opened.
    #[error("cannot open key material: {0}")]
    Epoch(#[from] kith_protocol::epoch::EpochError),
    /// A link or recovery bundle could not be opened or verified.
    #[error("{0}")]
    Bundle(#[from] kith_protocol::bundle::BundleError),
    /// An envelope failed verification or decryption.
    #[error("rejected data from the relay: {0}")]
    Envelope(#[from] kith_protocol::envelope::EnvelopeError),
    /// A device stream had a gap, fork, replay or rollback.
    #[error("device stream check failed: {0}")]
    Stream(#[from] kith_protocol::stream::StreamError),
    /// A record or operation was invalid.
    #[error("invalid record data: {0}")]
    Record(#[from] kith_protocol::record::RecordError),
    /// No clock is later than one a field holds (only a malicious member can write that one).
    #[error("cannot write a later clock: {0}")]
    Clock(#[from] kith_protocol::hlc::HlcError),
    /// A stored or received record state was invalid.
    #[error("invalid record state: {0}")]
    Merge(#[from] kith_protocol::merge::MergeError),
    /// A device wrote a payload whose statement of its roster and stream heads is malformed.
    #[error("device {device} wrote seq {seq} with a malformed view: {source}")]
    WriterView {
        /// The writer.
        device: DeviceId,
        /// The envelope's seq.
        seq: u64,
        /// What is wrong.
        source: kith_protocol::writer_view::WriterViewError,
    },
    /// A device of the roster signed an envelope in a later epoch than the roster this device
    /// holds: a newer roster exists (a revocation) and the relay does not serve it. This device
    /// writes nothing until it gets that roster, since the revoked device may hold the key of
    /// the older epoch (docs/PROTOCOL.md §4, "Held-back rosters").
    #[error(
        "device {device} wrote in epoch {epoch}, but the relay serves a roster of epoch \
         {roster_epoch}: a newer roster exists and the relay holds it back; this device writes \
         nothing until it gets it"
    )]
    NewerRosterWithheld {
        /// The device whose signed envelope is the evidence.
        device: DeviceId,
        /// The epoch it signed.
        epoch: u64,
        /// The epoch of the roster this device holds.
        roster_epoch: u64,
    },
    /// A device of the roster signed an envelope naming, as the roster it wrote under, a
    /// roster version newer than this device holds (or the same version with another hash),
    /// and the relay does not serve it: the relay holds a roster back even though no new epoch
    /// started (an added or renamed device). This device writes nothing until it gets it
    /// (docs/PROTOCOL.md §4, "Held-back rosters").
    #[error(
        "device {device} wrote under roster version {version}, but the relay serves version \
         {roster_version}{fork}: the relay holds a roster back; this device writes nothing until \
         it gets it",
        fork = if *version == *roster_version { " with another hash" } else { "" }
    )]
    RosterWithheld {
        /// The device whose signed envelope is the evidence.
        device: DeviceId,
        /// The roster version it named.
        version: u64,
        /// The version of the roster this device holds.
        roster_version: u64,
    },
    /// This device was removed from the account.
    #[error("this device was removed from the account; it can no longer read or write")]
    Revoked,
    /// The named device is not in the roster.
    #[error("no device {0} in this account (see `kith device list`)")]
    UnknownDevice(DeviceId),
    /// A device may not revoke itself.
    #[error("a device cannot revoke itself; revoke it from another device")]
    CannotRevokeSelf,
    /// No record with that id.
    #[error("no contact with id {0}")]
    UnknownContact(String),
    /// Input from the caller was invalid.
    #[error("{0}")]
    InvalidInput(String),

    /// The relay does not offer what was asked (wake-up notifications on a relay without a
    /// push gateway, or a relay release that predates a request).
    #[error("not supported by the relay: {0}")]
    Unsupported(String),
    /// The link approval did not arrive in time.
    #[error(
        "no approval arrived within {0} seconds: run `kith device approve CODE` on a device of the account, then try again"
    )]
    LinkTimeout(u64),
    /// The device of a link code is already in the account.
    #[error("device {0} is already linked to this account (see `kith device list`)")]
    AlreadyLinked(DeviceId),
    /// The link code was approved already and the approval waits for the new device.
    #[error(
        "device {0} is already approved: it joins when `kith device request` on it picks the approval up (within 10 minutes of approving)"
    )]
    AlreadyApproved(DeviceId),
    /// The link code belongs to a device that was revoked.
    #[error(
        "device {0} was revoked from this account and cannot return: on it, run `kith device request` in a new --home for a new code"
    )]
    LinkCodeOfRevokedDevice(DeviceId),
    /// The relay's answer to a recovery lookup names another account than the bundle it holds
    /// (the bundle's own account id, which its roster verifies for, is authenticated).
    #[error(
        "the relay filed this recovery bundle under another account than its own; not restoring from it"
    )]
    RecoveryAccountMismatch,
    /// The account's recovery record on the relay is malformed or its material does not match.
    #[error("the relay's recovery bundle for this account is invalid: {0}")]
    RecoveryRecord(kith_protocol::recovery::RecoveryRecordError),
    /// The recovery key is wrong or no recovery bundle exists for it.
    #[error("no recovery bundle for this recovery key on that relay (check the key and the relay)")]
    RecoveryNotFound,
    /// The relay does not know the account and refuses to create it again: the account was
    /// deleted there.
    #[error(
        "the relay says this account was deleted; it is not created again (set up a new account with `kith init`)"
    )]
    AccountDeleted,
    /// The relay lost this account and admits new accounts by token only.
    #[error(
        "the relay lost this account and creates accounts by registration token only: ask its operator for a token (`kith-relay token create`), then run `kith relay rebuild --registration-token T`"
    )]
    RebuildNeedsToken,
    /// An importer failed.
    #[error(transparent)]
    Import(#[from] crate::import::ImportError),
    /// A local file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl From<NetError> for ClientError {
    /// A relay that refuses this device as removed means the device was revoked, whatever
    /// request it was making.
    fn from(error: NetError) -> Self {
        match error.relay_code() {
            Some(kith_protocol::proto::ErrorCode::DeviceRemoved) => ClientError::Revoked,
            _ => ClientError::Net(error),
        }
    }
}

/// What to do after a device was revoked, as the CLI and the app bindings say it.
const REVOKED_HINT: &str = "set this device up again in a new --home, with `kith device request` \
     (approved from a device of the account) or `kith recover`";

impl NetError {
    /// What a person can do about this error, where its message cannot know the situation
    /// (the CLI prints it as `hint: …`; the app bindings carry it in their errors).
    pub fn hint(&self) -> Option<&'static str> {
        use kith_protocol::proto::ErrorCode;
        match self {
            NetError::Resolve(_) => Some(
                "check the relay's host name and port (--relay HOST:PORT) and this machine's DNS",
            ),
            NetError::Unreachable { .. } => Some(
                "check that kith-relay is running at that address and reachable over UDP, and that the \
                 pin is the key fingerprint (`key sha256`) it printed at start-up",
            ),
            NetError::Connection(_) | NetError::Timeout => Some(
                "check that kith-relay is running at that address and reachable over UDP, and that the \
                 pin is the key fingerprint (`key sha256`) it printed at start-up; then run the command again",
            ),
            NetError::Relay { code, .. } => match code {
                ErrorCode::RegistrationClosed => Some(
                    "this relay admits new accounts by token only: ask its operator for one \
                     (`kith-relay token create`) and pass --registration-token",
                ),
                ErrorCode::QuotaExceeded => Some(
                    "the account is over its storage quota: run `kith compact`, or ask the relay operator for more",
                ),
                ErrorCode::TooManyDevices => Some(
                    "the account has as many devices as the relay allows: revoke one with `kith device revoke ID`",
                ),
                ErrorCode::DeviceRemoved | ErrorCode::UnknownDevice => Some(REVOKED_HINT),
                ErrorCode::RateLimited => Some(
                    "the relay limits how often one address may make this request (its log says \
                     \"request refused\" with code RateLimited); wait a minute and run the command again",
                ),
                ErrorCode::ShuttingDown => {
                    Some("the relay is restarting; run the command again when it is back")
                }
                ErrorCode::Storage => Some(
                    "the relay could not store the request durably (see its log); try again in a minute",
                ),
                ErrorCode::AccountSuspended => Some(
                    "the relay's operator suspended this account: ask them why, or move the \
                     account to another relay with `kith relay move`",
                ),
                ErrorCode::Unsupported => Some(
                    "the relay runs an older release of Kith that does not know this request: \
                     ask its operator to update kith-relay",
                ),
                _ => None,
            },
            _ => None,
        }
    }
}

impl ClientError {
    /// What a person can do about this error, where its message cannot know the situation
    /// (the CLI prints it as `hint: …`; the app bindings carry it in their errors).
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            ClientError::Net(net) => net.hint(),
            ClientError::UnknownContact(_) => Some(
                "list the ids with `kith contacts list` or find one with `kith contacts search QUERY`",
            ),
            ClientError::Revoked => Some(REVOKED_HINT),
            ClientError::KeyStore(KeyStoreError::PassphraseRequired(_)) => Some(
                "set KITH_PASSPHRASE to this device's passphrase, or run the command on a terminal to be asked for it",
            ),
            ClientError::KeyStore(KeyStoreError::WrongPassphrase(_)) => Some(
                "give the passphrase this device's key was encrypted with (`kith key encrypt` set it); \
                 without it, set the device up again with `kith device request` or `kith recover`",
            ),
            ClientError::KeyStore(KeyStoreError::KeychainEntryMissing { .. }) => Some(
                "the Linux kernel keyring forgets its keys at reboot, and another user or machine \
                 has another keychain: move this home away and set the device up again with \
                 `kith device request` or `kith recover`",
            ),
            ClientError::KeyStore(KeyStoreError::Tampered(_)) => Some(
                "put back the device.key this home was set up with; without it, move this home \
                 away and set the device up again with `kith device request` or `kith recover`",
            ),
            _ => None,
        }
    }

    /// Whether the relay may have lost this account: it says it does not know it, or it
    /// refused this device's authentication, which is how a relay answers an unknown account
    /// before a signature verified (docs/PROTOCOL.md §10). Healing then tries to create the
    /// account again, which a relay that holds it refuses (§13.1).
    pub fn may_be_lost_account(&self) -> bool {
        use kith_protocol::proto::ErrorCode;
        matches!(
            self.relay_code(),
            Some(ErrorCode::UnknownAccount | ErrorCode::BadSignature)
        )
    }

    /// The relay's error code, if the relay refused a request.
    pub fn relay_code(&self) -> Option<kith_protocol::proto::ErrorCode> {
        match self {
            ClientError::Net(e) => e.relay_code(),
            _ => None,
        }
    }

    /// Whether retrying the same operation later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, ClientError::Net(e) if e.is_transient())
    }

    /// Whether retrying at once may succeed (a dropped connection, a busy relay), as opposed
    /// to a relay that does not answer at all ([`NetError::is_retryable_now`]).
    pub fn is_retryable_now(&self) -> bool {
        matches!(self, ClientError::Net(e) if e.is_retryable_now())
    }
}

/// The client's result type.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;
