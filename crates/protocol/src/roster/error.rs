//! Why a roster was refused or a roster operation could not be done.

use super::*;

/// Why a roster was refused, or a roster operation could not be done, by category (as rustls
/// nests `InvalidMessage` and `PeerMisbehaved`). Errors name devices and numbers, never device
/// names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RosterError {
    /// The bytes are not a well-formed roster (step 1), whoever signed them.
    #[error(transparent)]
    Decode(#[from] RosterDecodeError),
    /// A well-formed roster, or a writer or an epoch secret checked against one, does not verify
    /// (steps 2–6, §5, §7): a forgery, a fork, a rollback or a device that may not write.
    #[error(transparent)]
    Verify(#[from] RosterVerifyError),
    /// The caller asked a verified roster for something it cannot do (a full roster, a name too
    /// long, a key or secret that is not the roster's): a bug or a wrong argument, not an attack.
    #[error(transparent)]
    Misuse(#[from] RosterMisuseError),
}

/// The bytes are not a well-formed roster (PROTOCOL.md §4, step 1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RosterDecodeError {
    /// The signed roster is longer than [`crate::limits::MAX_ROSTER_BYTES`].
    #[error("roster is {len} bytes, more than the {max} allowed")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// The bytes are not a `SignedRoster` with a `RosterBody` inside.
    #[error("roster does not decode: {0}")]
    Malformed(prost::DecodeError),
    /// A list in the body is longer than its bound.
    #[error("roster lists {count} {list}, more than the {max} allowed")]
    TooManyEntries {
        /// Which list: `devices`, `removed devices` or `key rotations`.
        list: &'static str,
        /// Its length.
        count: usize,
        /// The bound.
        max: usize,
    },
    /// `format_version` is not [`FORMAT_VERSION`].
    #[error("roster format version {found} is not supported (expected {FORMAT_VERSION})")]
    WrongFormatVersion {
        /// The version found.
        found: u32,
    },
    /// A field has an impossible value (wrong length, zero where counting starts at 1, …).
    #[error("roster field `{field}` is invalid: {reason}")]
    InvalidField {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A public key in the roster does not parse.
    #[error("roster field `{field}` is not a valid key: {source}")]
    InvalidKey {
        /// The field.
        field: &'static str,
        /// Why the key was rejected.
        source: KeyError,
    },
}

/// A roster does not verify or does not extend the trusted one (PROTOCOL.md §4, steps 2–6), or
/// a writer or an epoch secret does not check out against a verified roster (§5, §7).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RosterVerifyError {
    /// The roster's account id is not the one expected (step 2).
    #[error("roster is for account {found}, expected {expected}")]
    AccountIdMismatch {
        /// The account expected.
        expected: AccountId,
        /// The account of the roster, `H("kith/v1/account-id", genesis_key)`.
        found: AccountId,
    },
    /// The body's `account_id` is not the hash of its genesis key (step 2).
    #[error("roster account_id is not the hash of its genesis key")]
    GenesisMismatch,
    /// A rotation's `roster_version` is not strictly increasing and `<=` the roster version.
    #[error("key rotation {index} is out of order")]
    RotationOrder {
        /// Its index in the key chain.
        index: usize,
    },
    /// A rotation's signature does not verify under the key before it (step 3).
    #[error("key rotation {index} is not signed by the account key before it")]
    BadRotationSignature {
        /// Its index in the key chain.
        index: usize,
    },
    /// The roster signature does not verify under the current account key (step 4).
    #[error("roster signature does not verify under the current account key")]
    BadSignature,
    /// A device is listed twice.
    #[error("device {device} is listed twice")]
    DuplicateDevice {
        /// The device.
        device: DeviceId,
    },
    /// A device id is not the hash of its signing key (step 5).
    #[error("device id {device} is not the hash of its signing key")]
    DeviceIdMismatch {
        /// The device id as listed.
        device: DeviceId,
    },
    /// A device is both present and removed (step 5).
    #[error("device {device} is both present and removed")]
    PresentAndRemoved {
        /// The device.
        device: DeviceId,
    },
    /// A device was added in an epoch after the roster's (step 5).
    #[error(
        "device {device} was added in epoch {added_in_epoch}, after the roster's epoch {epoch}"
    )]
    AddedInFutureEpoch {
        /// The device.
        device: DeviceId,
        /// Its `added_in_epoch`.
        added_in_epoch: u64,
        /// The roster's epoch.
        epoch: u64,
    },
    /// The roster is not newer than the trusted one (step 6).
    #[error("roster version {offered} does not increase on the trusted version {stored}")]
    Rollback {
        /// Version of the trusted roster.
        stored: u64,
        /// Version offered.
        offered: u64,
    },
    /// The trusted roster's key chain is not a prefix of this one's (step 6): a fork, such as one
    /// signed by a revoked device that kept an old account key.
    #[error("roster key chain does not extend the trusted roster's chain")]
    ChainNotExtended,
    /// The epoch went down (step 6).
    #[error("roster epoch {offered} is below the trusted roster's epoch {stored}")]
    EpochWentBackwards {
        /// Epoch of the trusted roster.
        stored: u64,
        /// Epoch offered.
        offered: u64,
    },
    /// A device removed in the trusted roster is present again (step 6).
    #[error("removed device {device} is present again")]
    RemovedDeviceReturned {
        /// The device.
        device: DeviceId,
    },
    /// A device removed in the trusted roster is no longer listed as removed, or its entry
    /// changed (step 6).
    #[error("removed device {device} is no longer listed as removed with the same final_seq")]
    RemovedDeviceChanged {
        /// The device.
        device: DeviceId,
    },
    /// A device of the trusted roster is neither present nor listed as removed (step 6): a
    /// roster may drop a device only by removing it, which starts a new epoch.
    #[error("device {device} of the trusted roster is neither present nor listed as removed")]
    DeviceDropped {
        /// The device.
        device: DeviceId,
    },
    /// The roster names another predecessor than the trusted roster of the version before it
    /// (step 6): two rosters of one version exist, a fork.
    #[error(
        "roster version {version} was built on another version {} than the trusted one: a fork",
        version - 1
    )]
    Forked {
        /// The version of the roster offered.
        version: u64,
    },
    /// The device is neither present nor removed.
    #[error("device {device} is not in the roster")]
    UnknownDevice {
        /// The device.
        device: DeviceId,
    },
    /// The device was removed; it may only have written up to `final_seq`.
    #[error("device {device} was removed after seq {final_seq}")]
    DeviceRemoved {
        /// The device.
        device: DeviceId,
        /// The last sequence number accepted from it.
        final_seq: u64,
    },
    /// The device may not write in this epoch.
    #[error(
        "device {device} may not write in epoch {epoch} (allowed: {allowed_from}..={allowed_to})"
    )]
    EpochNotAllowed {
        /// The device.
        device: DeviceId,
        /// The epoch of the envelope.
        epoch: u64,
        /// First epoch allowed.
        allowed_from: u64,
        /// Last epoch allowed.
        allowed_to: u64,
    },
    /// A device name does not decrypt (or is not well-formed) under the epoch's device-name key.
    #[error("name of device {device} does not decrypt under the device-name key of epoch {epoch}")]
    DeviceName {
        /// The device.
        device: DeviceId,
        /// The epoch whose key was used.
        epoch: u64,
    },
    /// The secret offered for a past epoch does not derive the account key of the rotation that
    /// started that epoch (§5): it is not the secret the roster's signer chose, so a sealer
    /// (the relay, or a member) put another secret in the sealed key.
    #[error(
        "the secret offered for epoch {epoch} is not that epoch's: it does not derive the \
         account key its rotation introduced"
    )]
    EpochSecretMismatch {
        /// The epoch.
        epoch: u64,
    },
    /// A secret of this epoch cannot be confirmed against the roster: the first epoch's, once
    /// a later epoch started (no rotation introduced it), or an epoch the roster has not
    /// started, or a roster whose rotations do not start one epoch each.
    #[error("the secret offered for epoch {epoch} cannot be confirmed against the roster")]
    EpochSecretUnconfirmable {
        /// The epoch.
        epoch: u64,
    },
}

/// A roster operation asked of a verified roster that it cannot do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RosterMisuseError {
    /// The roster already lists [`crate::limits::MAX_DEVICES`] devices.
    #[error("roster already lists the maximum of {max} devices")]
    TooManyDevices {
        /// The bound.
        max: usize,
    },
    /// A device name is longer than [`MAX_NAME_BYTES`].
    #[error("device name is {len} bytes, more than the {max} allowed")]
    NameTooLong {
        /// Its length in bytes.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// The secret of an epoch the operation needs is not held.
    #[error("the secret of epoch {epoch} is not held")]
    MissingEpochSecret {
        /// The epoch.
        epoch: u64,
    },
    /// The epoch keys given belong to another account.
    #[error("epoch keys are for account {found}, the roster for {expected}")]
    EpochKeysAccountMismatch {
        /// The roster's account.
        expected: AccountId,
        /// The epoch keys' account.
        found: AccountId,
    },
    /// The signing key given is not the roster's current account key.
    #[error("the account key given is not the roster's current account key")]
    WrongAccountKey,
    /// The new account key of a rotation is not the one derived from the new epoch secret (§4).
    #[error("the new account key is not derived from the new epoch secret")]
    AccountKeyNotFromEpoch,
    /// The roster's current account key was never rotated, so it is not derived from an epoch.
    #[error("the roster's account key is its genesis key, not derived from an epoch")]
    AccountKeyNotRotated,
    /// Removing this device would leave the roster empty.
    #[error("device {device} is the last device and cannot be removed")]
    LastDevice {
        /// The device.
        device: DeviceId,
    },
    /// A counter would overflow.
    #[error("roster {field} would overflow")]
    Overflow {
        /// Which counter.
        field: &'static str,
    },
}
