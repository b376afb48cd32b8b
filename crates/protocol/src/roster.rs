//! The device roster (docs/PROTOCOL.md §4): the account's signed, versioned list of devices.
//!
//! A [`VerifiedRoster`] exists only after [`VerifiedRoster::verify`] accepted its bytes, or after
//! a builder ([`VerifiedRoster::genesis`], [`VerifiedRoster::add_device`],
//! [`VerifiedRoster::remove_device`]) produced, signed and re-verified a successor. Everything the
//! relay and the envelope opener ask of a roster — which devices may write, with which key, in
//! which epochs — is answered from that verified state.
//!
//! ```
//! use kith_protocol::epoch::EpochKeys;
//! use kith_protocol::keys::*;
//! use kith_protocol::roster::{NewDevice, VerifiedRoster};
//!
//! let mut rng = system_rng();
//! let account_key = AccountSigningKey::generate(&mut rng);
//! let phone = DeviceSigningKey::generate(&mut rng);
//! let first = NewDevice {
//!     signing_key: phone.public(),
//!     agreement_key: DeviceAgreementKey::generate(&mut rng).public(),
//!     name: "phone".into(),
//! };
//! let epoch1 = EpochSecret::generate(&mut rng);
//! let roster = VerifiedRoster::genesis(&account_key, first, &epoch1, 1_000, &mut rng).unwrap();
//!
//! // What the relay does with an uploaded roster: verify it (here, as a first roster).
//! let verified = VerifiedRoster::verify(roster.encoded(), None, None).unwrap();
//! assert_eq!(verified.account_id(), account_key.public().account_id());
//! assert!(verified.writer_key(&phone.device_id(), 1, 1).is_ok());
//!
//! let mut keys = EpochKeys::new(verified.account_id());
//! keys.insert(1, epoch1).unwrap();
//! assert_eq!(verified.device_name(&phone.device_id(), &keys).unwrap(), "phone");
//! ```

use std::collections::BTreeMap;
use std::fmt;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use prost::Message;
use rand_core::CryptoRng;
use zeroize::{Zeroize, Zeroizing};

use crate::encoding::{labels, lp_concat};
use crate::epoch::{EpochError, EpochKeys, account_key_for_epoch};
use crate::ids::{AccountId, DeviceId};
use crate::keys::{
    AccountSigningKey, AccountVerifyingKey, DeviceAgreementPublicKey, DeviceVerifyingKey,
    EpochSecret, KeyError, Signature, SymmetricKey,
};
use crate::{limits, proto};

/// The roster format this code reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// Longest device name, in bytes of UTF-8.
pub const MAX_NAME_BYTES: usize = limits::MAX_DEVICE_NAME_BYTES;
/// Length of a device name's nonce (XChaCha20-Poly1305).
pub const NAME_NONCE_LEN: usize = 24;
/// Length of a sealed device name: a length byte, the name padded with zeros to
/// [`MAX_NAME_BYTES`], and the 16-byte tag. Every name has this length, so it leaks nothing.
pub const SEALED_NAME_LEN: usize = 1 + MAX_NAME_BYTES + 16;
/// Shortest sealed name accepted when verifying (an empty plaintext and its tag).
const MIN_SEALED_NAME_LEN: usize = 16;

/// Why a roster was refused, or a roster operation could not be done. Errors name devices and
/// numbers, never device names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RosterError {
    /// The signed roster is longer than [`limits::MAX_ROSTER_BYTES`].
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
    /// The roster already lists [`limits::MAX_DEVICES`] devices.
    #[error("roster already lists the maximum of {max} devices")]
    TooManyDevices {
        /// The bound.
        max: usize,
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
    /// A device name is longer than [`MAX_NAME_BYTES`].
    #[error("device name is {len} bytes, more than the {max} allowed")]
    NameTooLong {
        /// Its length in bytes.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// A device name does not decrypt (or is not well-formed) under the epoch's device-name key.
    #[error("name of device {device} does not decrypt under the device-name key of epoch {epoch}")]
    DeviceName {
        /// The device.
        device: DeviceId,
        /// The epoch whose key was used.
        epoch: u64,
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

/// A device to add to the roster: its public keys and its name (sealed before it is stored).
#[derive(Clone)]
pub struct NewDevice {
    /// Its Ed25519 signing key.
    pub signing_key: DeviceVerifyingKey,
    /// Its X-Wing agreement key.
    pub agreement_key: DeviceAgreementPublicKey,
    /// Its human-readable name, at most [`MAX_NAME_BYTES`] bytes of UTF-8.
    pub name: String,
}

impl fmt::Debug for NewDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewDevice")
            .field("device_id", &self.signing_key.device_id())
            .field("agreement_key", &self.agreement_key)
            .finish_non_exhaustive()
    }
}

/// A present device of a verified roster.
#[derive(Clone, PartialEq, Eq)]
pub struct RosterDevice {
    device_id: DeviceId,
    signing_key: DeviceVerifyingKey,
    agreement_key: DeviceAgreementPublicKey,
    added_at_ms: u64,
    added_in_epoch: u64,
    name_nonce: [u8; NAME_NONCE_LEN],
    encrypted_name: Vec<u8>,
}

impl RosterDevice {
    /// Its id, `H("kith/v1/device-id", signing_key)[..16]`.
    pub fn device_id(&self) -> DeviceId {
        self.device_id
    }

    /// Its signing key (envelopes, relay authentication).
    pub fn signing_key(&self) -> &DeviceVerifyingKey {
        &self.signing_key
    }

    /// Its agreement key (sealed epoch keys, link bundle).
    pub fn agreement_key(&self) -> &DeviceAgreementPublicKey {
        &self.agreement_key
    }

    /// When it was added, by the adding device's clock (informational).
    ///
    /// 0 in rosters written since 0.2 (docs/PROTOCOL.md §11); 0.1.0 wrote its clock here.
    pub fn added_at_ms(&self) -> u64 {
        self.added_at_ms
    }

    /// The first epoch whose secret it was given; it may write from this epoch on.
    pub fn added_in_epoch(&self) -> u64 {
        self.added_in_epoch
    }
}

impl fmt::Debug for RosterDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RosterDevice")
            .field("device_id", &self.device_id)
            .field("added_in_epoch", &self.added_in_epoch)
            .finish_non_exhaustive()
    }
}

/// A device removed from the account. Its envelopes with `seq <= final_seq` stay valid history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemovedDevice {
    device_id: DeviceId,
    signing_key: DeviceVerifyingKey,
    final_seq: u64,
    removed_in_version: u64,
}

impl RemovedDevice {
    /// Its id.
    pub fn device_id(&self) -> DeviceId {
        self.device_id
    }

    /// Its signing key, still needed to verify its history.
    pub fn signing_key(&self) -> &DeviceVerifyingKey {
        &self.signing_key
    }

    /// The last sequence number of its stream that counts.
    pub fn final_seq(&self) -> u64 {
        self.final_seq
    }

    /// The roster version that removed it.
    pub fn removed_in_version(&self) -> u64 {
        self.removed_in_version
    }
}

/// A roster that verified (§4 steps 1–6), or that a builder produced and re-verified.
///
/// Cheap to query; [`Self::encoded`] gives the exact signed bytes to store or upload.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifiedRoster {
    account_id: AccountId,
    version: u64,
    epoch: u64,
    created_at_ms: u64,
    /// Genesis key first, current account key last; never empty.
    chain: Vec<AccountVerifyingKey>,
    /// The rotations as signed, to build successors.
    rotations: Vec<proto::AccountKeyRotation>,
    devices: Vec<RosterDevice>,
    device_index: BTreeMap<DeviceId, usize>,
    removed: Vec<RemovedDevice>,
    removed_index: BTreeMap<DeviceId, usize>,
    /// The hash of the roster this one was built on, when its signer stated it.
    prev_hash: Option<[u8; 32]>,
    encoded: Vec<u8>,
}

impl fmt::Debug for VerifiedRoster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedRoster")
            .field("account_id", &self.account_id)
            .field("version", &self.version)
            .field("epoch", &self.epoch)
            .field("devices", &self.device_index.keys().collect::<Vec<_>>())
            .field("removed", &self.removed_index.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn invalid(field: &'static str, reason: &'static str) -> RosterError {
    RosterError::InvalidField { field, reason }
}

fn parse_device_id(field: &'static str, bytes: &[u8]) -> Result<DeviceId, RosterError> {
    DeviceId::from_slice(bytes).map_err(|_| invalid(field, "must be 16 bytes"))
}

fn parse_device_key(field: &'static str, bytes: &[u8]) -> Result<DeviceVerifyingKey, RosterError> {
    DeviceVerifyingKey::from_slice(bytes)
        .map_err(|source| RosterError::InvalidKey { field, source })
}

fn parse_account_key(
    field: &'static str,
    bytes: &[u8],
) -> Result<AccountVerifyingKey, RosterError> {
    AccountVerifyingKey::from_slice(bytes)
        .map_err(|source| RosterError::InvalidKey { field, source })
}

/// `LP("kith/v1/device-name") || LP(account_id) || LP(device_id)`.
fn name_aad(account: &AccountId, device: &DeviceId) -> Vec<u8> {
    lp_concat(&[
        labels::DEVICE_NAME_AAD.as_bytes(),
        account.as_bytes(),
        device.as_bytes(),
    ])
}

fn name_cipher(key: &SymmetricKey) -> XChaCha20Poly1305 {
    XChaCha20Poly1305::new(key.expose().into())
}

/// Seals a device name: `len(name) as u8 || name || zeros` (65 bytes) under the device-name key.
fn seal_name(
    key: &SymmetricKey,
    account: &AccountId,
    device: &DeviceId,
    name: &str,
    rng: &mut impl CryptoRng,
) -> Result<([u8; NAME_NONCE_LEN], Vec<u8>), RosterError> {
    let bytes = name.as_bytes();
    if bytes.len() > MAX_NAME_BYTES {
        return Err(RosterError::NameTooLong {
            len: bytes.len(),
            max: MAX_NAME_BYTES,
        });
    }
    let mut padded = Zeroizing::new([0u8; 1 + MAX_NAME_BYTES]);
    padded[0] = bytes.len() as u8;
    padded[1..=bytes.len()].copy_from_slice(bytes);
    let mut nonce = [0u8; NAME_NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    let aad = name_aad(account, device);
    let sealed = name_cipher(key)
        .encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: &padded[..],
                aad: &aad,
            },
        )
        .map_err(|_| RosterError::Overflow {
            field: "device name",
        })?;
    Ok((nonce, sealed))
}

/// Opens a sealed device name, checking the length byte and the zero padding.
fn open_name(
    key: &SymmetricKey,
    account: &AccountId,
    device: &RosterDevice,
    epoch: u64,
) -> Result<Zeroizing<String>, RosterError> {
    let error = || RosterError::DeviceName {
        device: device.device_id,
        epoch,
    };
    let aad = name_aad(account, &device.device_id);
    let plaintext = Zeroizing::new(
        name_cipher(key)
            .decrypt(
                &XNonce::from(device.name_nonce),
                Payload {
                    msg: &device.encrypted_name,
                    aad: &aad,
                },
            )
            .map_err(|_| error())?,
    );
    let (&len, rest) = plaintext.split_first().ok_or_else(error)?;
    let len = usize::from(len);
    if rest.len() != MAX_NAME_BYTES || len > MAX_NAME_BYTES || rest[len..].iter().any(|b| *b != 0) {
        return Err(error());
    }
    let name = std::str::from_utf8(&rest[..len]).map_err(|_| error())?;
    Ok(Zeroizing::new(name.to_owned()))
}

/// Signs `body` with `key` and wraps both in an encoded `SignedRoster`.
fn sign_body(body: &proto::RosterBody, key: &AccountSigningKey) -> Vec<u8> {
    let body = body.encode_to_vec();
    let signature = key.sign(labels::ROSTER_SIGNATURE, &[&body]);
    proto::SignedRoster {
        body,
        signature: signature.to_bytes().to_vec(),
    }
    .encode_to_vec()
}

impl VerifiedRoster {
    /// Verifies an encoded `SignedRoster` (PROTOCOL.md §4, steps 1–6).
    ///
    /// `account_id` is the account the roster must belong to; `None` only for an account's first
    /// roster, whose account id is then derived from its genesis key. `prev` is the roster trusted
    /// so far, if any: the new one must extend it (newer version, same key chain as a prefix,
    /// epoch not lower, removed devices stay removed).
    pub fn verify(
        signed_roster_bytes: &[u8],
        account_id: Option<&AccountId>,
        prev: Option<&VerifiedRoster>,
    ) -> Result<VerifiedRoster, RosterError> {
        // Step 1: bounded decode.
        if signed_roster_bytes.len() > limits::MAX_ROSTER_BYTES {
            return Err(RosterError::TooLarge {
                len: signed_roster_bytes.len(),
                max: limits::MAX_ROSTER_BYTES,
            });
        }
        let signed =
            proto::SignedRoster::decode(signed_roster_bytes).map_err(RosterError::Malformed)?;
        let body =
            proto::RosterBody::decode(signed.body.as_slice()).map_err(RosterError::Malformed)?;
        for (list, count, max) in [
            ("devices", body.devices.len(), limits::MAX_DEVICES),
            (
                "removed devices",
                body.removed.len(),
                limits::MAX_REMOVED_DEVICES,
            ),
            (
                "key rotations",
                body.key_chain.len(),
                limits::MAX_KEY_ROTATIONS,
            ),
        ] {
            if count > max {
                return Err(RosterError::TooManyEntries { list, count, max });
            }
        }
        if body.format_version != FORMAT_VERSION {
            return Err(RosterError::WrongFormatVersion {
                found: body.format_version,
            });
        }
        if body.version == 0 {
            return Err(invalid("version", "versions start at 1"));
        }
        if body.epoch == 0 {
            return Err(invalid("epoch", "epochs start at 1"));
        }

        // Step 2: the account is the hash of the genesis key.
        let genesis = parse_account_key("genesis_key", &body.genesis_key)?;
        let account = genesis.account_id();
        if body.account_id != account.as_bytes() {
            return Err(RosterError::GenesisMismatch);
        }
        let expected = account_id.copied().or(prev.map(|p| p.account_id));
        if let Some(expected) = expected
            && expected != account
        {
            return Err(RosterError::AccountIdMismatch {
                expected,
                found: account,
            });
        }

        // Step 3: walk the key chain.
        let mut chain = Vec::with_capacity(body.key_chain.len() + 1);
        chain.push(genesis);
        let mut last_version = 0u64;
        for (index, rotation) in body.key_chain.iter().enumerate() {
            if rotation.roster_version <= last_version || rotation.roster_version > body.version {
                return Err(RosterError::RotationOrder { index });
            }
            let new_key = parse_account_key("key_chain.new_key", &rotation.new_key)?;
            let signature = Signature::from_slice(&rotation.signature)
                .map_err(|_| RosterError::BadRotationSignature { index })?;
            let previous = chain[chain.len() - 1];
            previous
                .verify(
                    labels::ACCOUNT_KEY_ROTATION,
                    &[
                        account.as_bytes(),
                        &rotation.roster_version.to_be_bytes(),
                        &rotation.new_key,
                    ],
                    &signature,
                )
                .map_err(|_| RosterError::BadRotationSignature { index })?;
            chain.push(new_key);
            last_version = rotation.roster_version;
        }

        // Step 4: the roster signature, under the current account key.
        let current = chain[chain.len() - 1];
        let signature =
            Signature::from_slice(&signed.signature).map_err(|_| RosterError::BadSignature)?;
        current
            .verify(labels::ROSTER_SIGNATURE, &[&signed.body], &signature)
            .map_err(|_| RosterError::BadSignature)?;

        // Step 5: devices.
        if body.devices.is_empty() {
            return Err(invalid("devices", "a roster lists at least one device"));
        }
        let mut devices = Vec::with_capacity(body.devices.len());
        let mut device_index = BTreeMap::new();
        for entry in &body.devices {
            let device_id = parse_device_id("devices.device_id", &entry.device_id)?;
            let signing_key = parse_device_key("devices.signing_key", &entry.signing_key)?;
            if signing_key.device_id() != device_id {
                return Err(RosterError::DeviceIdMismatch { device: device_id });
            }
            let agreement_key = DeviceAgreementPublicKey::from_slice(&entry.agreement_key)
                .map_err(|source| RosterError::InvalidKey {
                    field: "devices.agreement_key",
                    source,
                })?;
            if entry.added_in_epoch == 0 {
                return Err(invalid("devices.added_in_epoch", "epochs start at 1"));
            }
            if entry.added_in_epoch > body.epoch {
                return Err(RosterError::AddedInFutureEpoch {
                    device: device_id,
                    added_in_epoch: entry.added_in_epoch,
                    epoch: body.epoch,
                });
            }
            let name_nonce = <[u8; NAME_NONCE_LEN]>::try_from(entry.name_nonce.as_slice())
                .map_err(|_| invalid("devices.name_nonce", "must be 24 bytes"))?;
            if !(MIN_SEALED_NAME_LEN..=SEALED_NAME_LEN).contains(&entry.encrypted_name.len()) {
                return Err(invalid("devices.encrypted_name", "must be 16 to 81 bytes"));
            }
            if device_index.insert(device_id, devices.len()).is_some() {
                return Err(RosterError::DuplicateDevice { device: device_id });
            }
            devices.push(RosterDevice {
                device_id,
                signing_key,
                agreement_key,
                added_at_ms: entry.added_at_ms,
                added_in_epoch: entry.added_in_epoch,
                name_nonce,
                encrypted_name: entry.encrypted_name.clone(),
            });
        }
        let mut removed = Vec::with_capacity(body.removed.len());
        let mut removed_index = BTreeMap::new();
        for entry in &body.removed {
            let device_id = parse_device_id("removed.device_id", &entry.device_id)?;
            let signing_key = parse_device_key("removed.signing_key", &entry.signing_key)?;
            if signing_key.device_id() != device_id {
                return Err(RosterError::DeviceIdMismatch { device: device_id });
            }
            if entry.removed_in_version == 0 || entry.removed_in_version > body.version {
                return Err(invalid(
                    "removed.removed_in_version",
                    "must be in 1..=version",
                ));
            }
            if device_index.contains_key(&device_id) {
                return Err(RosterError::PresentAndRemoved { device: device_id });
            }
            if removed_index.insert(device_id, removed.len()).is_some() {
                return Err(RosterError::DuplicateDevice { device: device_id });
            }
            removed.push(RemovedDevice {
                device_id,
                signing_key,
                final_seq: entry.final_seq,
                removed_in_version: entry.removed_in_version,
            });
        }

        let prev_hash = match body.prev_roster_hash.len() {
            0 => None,
            32 => {
                let mut hash = [0u8; 32];
                hash.copy_from_slice(&body.prev_roster_hash);
                Some(hash)
            }
            _ => return Err(invalid("prev_roster_hash", "must be 32 bytes or empty")),
        };
        let roster = VerifiedRoster {
            account_id: account,
            version: body.version,
            epoch: body.epoch,
            created_at_ms: body.created_at_ms,
            chain,
            rotations: body.key_chain,
            devices,
            device_index,
            removed,
            removed_index,
            prev_hash,
            encoded: signed_roster_bytes.to_vec(),
        };

        // Step 6: extend the trusted roster.
        if let Some(prev) = prev {
            roster.check_extends(prev)?;
        }
        Ok(roster)
    }

    fn check_extends(&self, prev: &VerifiedRoster) -> Result<(), RosterError> {
        if self.version <= prev.version {
            return Err(RosterError::Rollback {
                stored: prev.version,
                offered: self.version,
            });
        }
        if self.chain.len() < prev.chain.len() || self.chain[..prev.chain.len()] != prev.chain[..] {
            return Err(RosterError::ChainNotExtended);
        }
        if self.epoch < prev.epoch {
            return Err(RosterError::EpochWentBackwards {
                stored: prev.epoch,
                offered: self.epoch,
            });
        }
        // A successor names its predecessor (rosters of 0.1.0 name none): another roster of
        // the trusted one's version was its base, a fork.
        if self.version == prev.version + 1
            && let Some(hash) = self.prev_hash
            && hash != prev.hash()
        {
            return Err(RosterError::Forked {
                version: self.version,
            });
        }
        for present in &prev.devices {
            let device = present.device_id;
            if !self.device_index.contains_key(&device) && !self.removed_index.contains_key(&device)
            {
                return Err(RosterError::DeviceDropped { device });
            }
        }
        for gone in &prev.removed {
            let device = gone.device_id;
            if self.device_index.contains_key(&device) {
                return Err(RosterError::RemovedDeviceReturned { device });
            }
            match self.removed_index.get(&device).map(|&i| &self.removed[i]) {
                Some(still) if still == gone => {}
                _ => return Err(RosterError::RemovedDeviceChanged { device }),
            }
        }
        Ok(())
    }

    /// `H("kith/v1/roster-hash", encoded)`: what the next roster names as its predecessor,
    /// and what envelopes name as their writer's roster.
    pub fn hash(&self) -> [u8; 32] {
        crate::encoding::hash(labels::ROSTER_HASH, &[&self.encoded])
    }

    /// The hash of the roster this one was built on, when its signer stated it (rosters signed
    /// by 0.1.0 do not).
    pub fn prev_hash(&self) -> Option<[u8; 32]> {
        self.prev_hash
    }

    /// The account.
    pub fn account_id(&self) -> AccountId {
        self.account_id
    }

    /// The roster version (strictly increasing, from 1).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The current epoch (from 1).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// When the roster was signed, by the signing device's clock (informational).
    ///
    /// 0 in rosters written since 0.2 (docs/PROTOCOL.md §11); 0.1.0 wrote its clock here.
    pub fn created_at_ms(&self) -> u64 {
        self.created_at_ms
    }

    /// A present device.
    pub fn device(&self, device: &DeviceId) -> Option<&RosterDevice> {
        self.device_index.get(device).map(|&i| &self.devices[i])
    }

    /// Every present device, in roster order.
    pub fn devices(&self) -> impl Iterator<Item = &RosterDevice> {
        self.devices.iter()
    }

    /// Whether the device is listed as removed.
    pub fn is_removed(&self, device: &DeviceId) -> bool {
        self.removed_index.contains_key(device)
    }

    /// A removed device.
    pub fn removed_device(&self, device: &DeviceId) -> Option<&RemovedDevice> {
        self.removed_index.get(device).map(|&i| &self.removed[i])
    }

    /// Every removed device, in roster order.
    pub fn removed(&self) -> impl Iterator<Item = &RemovedDevice> {
        self.removed.iter()
    }

    /// Number of present devices.
    pub fn device_count(&self) -> usize {
        self.devices.len()
    }

    /// The current account key: the last of the key chain. Only rosters signed by it, or by a
    /// rotation it signed, can follow this one.
    pub fn current_account_key(&self) -> &AccountVerifyingKey {
        // `chain` always holds at least the genesis key (see `verify`).
        &self.chain[self.chain.len() - 1]
    }

    /// The genesis key, whose hash is the account id.
    pub fn genesis_key(&self) -> &AccountVerifyingKey {
        &self.chain[0]
    }

    /// The account keys from genesis to current.
    pub fn key_chain(&self) -> &[AccountVerifyingKey] {
        &self.chain
    }

    /// The account key of `epoch`: the genesis key for epoch 1, else the key of the rotation
    /// that started it (the `epoch - 1`-th of the chain). `None` for an epoch the roster has not
    /// started, or when its rotations do not start one epoch each.
    pub fn epoch_account_key(&self, epoch: u64) -> Option<&AccountVerifyingKey> {
        if epoch == 0 || epoch > self.epoch || (epoch >= 2 && self.chain.len() as u64 != self.epoch)
        {
            return None;
        }
        self.chain.get(usize::try_from(epoch - 1).ok()?)
    }

    /// The encoded `SignedRoster`, exactly as verified or signed.
    pub fn encoded(&self) -> &[u8] {
        &self.encoded
    }

    /// The key that verifies an envelope of `device` at `seq` in `epoch` (§7 opening, step 2).
    ///
    /// A present device may write in epochs `added_in_epoch..=epoch`. A removed device's
    /// envelopes count only up to its `final_seq`, and only in epochs before the current one
    /// (removal always starts a new epoch it never received).
    pub fn writer_key(
        &self,
        device: &DeviceId,
        seq: u64,
        epoch: u64,
    ) -> Result<&DeviceVerifyingKey, RosterError> {
        if let Some(present) = self.device(device) {
            if epoch < present.added_in_epoch || epoch > self.epoch {
                return Err(RosterError::EpochNotAllowed {
                    device: *device,
                    epoch,
                    allowed_from: present.added_in_epoch,
                    allowed_to: self.epoch,
                });
            }
            return Ok(&present.signing_key);
        }
        if let Some(gone) = self.removed_device(device) {
            if seq > gone.final_seq {
                return Err(RosterError::DeviceRemoved {
                    device: *device,
                    final_seq: gone.final_seq,
                });
            }
            if epoch == 0 || epoch >= self.epoch {
                return Err(RosterError::EpochNotAllowed {
                    device: *device,
                    epoch,
                    allowed_from: 1,
                    allowed_to: self.epoch - 1,
                });
            }
            return Ok(&gone.signing_key);
        }
        Err(RosterError::UnknownDevice { device: *device })
    }

    fn check_keys_account(&self, keys: &EpochKeys) -> Result<(), RosterError> {
        if keys.account_id() != self.account_id {
            return Err(RosterError::EpochKeysAccountMismatch {
                expected: self.account_id,
                found: keys.account_id(),
            });
        }
        Ok(())
    }

    fn name_key(&self, keys: &EpochKeys) -> Result<SymmetricKey, RosterError> {
        self.check_keys_account(keys)?;
        keys.device_name_key(self.epoch)
            .map_err(|error| match error {
                EpochError::UnknownEpoch { epoch } => RosterError::MissingEpochSecret { epoch },
                _ => RosterError::MissingEpochSecret { epoch: self.epoch },
            })
    }

    /// The name of a present device, opened with the device-name key of the roster's epoch.
    pub fn device_name(&self, device: &DeviceId, keys: &EpochKeys) -> Result<String, RosterError> {
        let entry = self
            .device(device)
            .ok_or(RosterError::UnknownDevice { device: *device })?;
        let key = self.name_key(keys)?;
        let name = open_name(&key, &self.account_id, entry, self.epoch)?;
        Ok(name.as_str().to_owned())
    }

    /// Checks that `secret` is the secret of this roster's epoch, by opening every device name
    /// with its device-name key (§5). A device must do this before it writes under a secret that
    /// arrived in a sealed epoch key: base-mode HPKE does not say who sealed it, and the signed
    /// names do (finding another secret that opens them is as hard as forging Poly1305 tags).
    pub fn confirm_epoch_secret(&self, secret: &EpochSecret) -> Result<(), RosterError> {
        let key = secret.device_name_key(&self.account_id);
        for device in &self.devices {
            open_name(&key, &self.account_id, device, self.epoch)?;
        }
        Ok(())
    }

    /// Checks that `secret` is the secret of `epoch`, any epoch of this roster (§5): for the
    /// roster's own epoch, [`Self::confirm_epoch_secret`]; for every epoch `e >= 2`, the account
    /// key derived from it ([`account_key_for_epoch`]) must be the key of the rotation that
    /// started `e`, the `e - 1`-th of the key chain (each removal adds one rotation and starts
    /// one epoch). A device that missed several revocations confirms every skipped epoch's
    /// secret this way before keeping it, so a sealer cannot slip in a secret of its own for an
    /// epoch that is no longer current.
    pub fn confirm_epoch_secret_of(
        &self,
        epoch: u64,
        secret: &EpochSecret,
    ) -> Result<(), RosterError> {
        let unconfirmable = RosterError::EpochSecretUnconfirmable { epoch };
        if epoch == 0 || epoch > self.epoch {
            return Err(unconfirmable);
        }
        if epoch >= 2 {
            // One rotation per epoch after the first: the chain holds exactly `epoch` keys.
            if self.chain.len() as u64 != self.epoch {
                return Err(unconfirmable);
            }
            let rotation_key = usize::try_from(epoch - 1)
                .ok()
                .and_then(|index| self.chain.get(index))
                .ok_or(RosterError::EpochSecretUnconfirmable { epoch })?;
            if account_key_for_epoch(&self.account_id, secret).public() != *rotation_key {
                return Err(RosterError::EpochSecretMismatch { epoch });
            }
        } else if epoch != self.epoch {
            return Err(unconfirmable);
        }
        if epoch == self.epoch {
            self.confirm_epoch_secret(secret)?;
        }
        Ok(())
    }

    /// The current account key, derived from the current epoch's secret (§4: every rotation's
    /// new key is derived from the secret of the epoch it starts). This is how the devices that
    /// remain after a removal receive the new account key: with the new epoch's sealed secret.
    ///
    /// Fails with [`RosterError::AccountKeyNotRotated`] while the account key is still the
    /// genesis key, and with [`RosterError::WrongAccountKey`] when the derived key is not the
    /// roster's current key (a secret that does not belong to this roster).
    pub fn derive_account_key(&self, keys: &EpochKeys) -> Result<AccountSigningKey, RosterError> {
        self.check_keys_account(keys)?;
        if self.chain.len() < 2 {
            return Err(RosterError::AccountKeyNotRotated);
        }
        let secret = keys
            .get(self.epoch)
            .ok_or(RosterError::MissingEpochSecret { epoch: self.epoch })?;
        let key = account_key_for_epoch(&self.account_id, secret);
        if key.public() != *self.current_account_key() {
            return Err(RosterError::WrongAccountKey);
        }
        Ok(key)
    }

    fn body(&self) -> proto::RosterBody {
        proto::RosterBody {
            format_version: FORMAT_VERSION,
            account_id: self.account_id.as_bytes().to_vec(),
            version: self.version,
            genesis_key: self.chain[0].to_bytes().to_vec(),
            key_chain: self.rotations.clone(),
            epoch: self.epoch,
            devices: self.devices.iter().map(device_entry).collect(),
            removed: self
                .removed
                .iter()
                .map(|gone| proto::RemovedDevice {
                    device_id: gone.device_id.as_bytes().to_vec(),
                    signing_key: gone.signing_key.to_bytes().to_vec(),
                    final_seq: gone.final_seq,
                    removed_in_version: gone.removed_in_version,
                })
                .collect(),
            created_at_ms: self.created_at_ms,
            // `body` is the base of a successor, which names this roster.
            prev_roster_hash: self.hash().to_vec(),
        }
    }

    fn check_current_key(&self, account_key: &AccountSigningKey) -> Result<(), RosterError> {
        if account_key.public() != *self.current_account_key() {
            return Err(RosterError::WrongAccountKey);
        }
        Ok(())
    }

    /// The first roster of a new account: version 1, epoch 1, one device, signed by the genesis
    /// account key (whose hash becomes the account id).
    ///
    /// `_now_ms` is no longer written: rosters carry no timestamps (docs/PROTOCOL.md §11).
    pub fn genesis(
        account_key: &AccountSigningKey,
        first: NewDevice,
        epoch1: &EpochSecret,
        _now_ms: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<Self, RosterError> {
        let account = account_key.public().account_id();
        let name_key = epoch1.device_name_key(&account);
        let entry = new_entry(&name_key, &account, first, 1, rng)?;
        let body = proto::RosterBody {
            format_version: FORMAT_VERSION,
            account_id: account.as_bytes().to_vec(),
            version: 1,
            genesis_key: account_key.public().to_bytes().to_vec(),
            key_chain: Vec::new(),
            epoch: 1,
            devices: vec![entry],
            removed: Vec::new(),
            // No plaintext timestamps: when an account or device came to be is not the
            // relay's to know (§11). Older writers' values still verify.
            created_at_ms: 0,
            prev_roster_hash: Vec::new(),
        };
        Self::verify(&sign_body(&body, account_key), Some(&account), None)
    }

    /// The next roster with `device` added in the current epoch, signed by the current account
    /// key. `keys` must hold the current epoch's secret (to seal the new name); it is checked
    /// against the roster first, so a name is never sealed under a key the roster does not use.
    ///
    /// `_now_ms` is no longer written: rosters carry no timestamps (docs/PROTOCOL.md §11).
    pub fn add_device(
        &self,
        account_key: &AccountSigningKey,
        device: NewDevice,
        keys: &EpochKeys,
        _now_ms: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<Self, RosterError> {
        self.check_current_key(account_key)?;
        let id = device.signing_key.device_id();
        if self.device_index.contains_key(&id) {
            return Err(RosterError::DuplicateDevice { device: id });
        }
        if self.removed_index.contains_key(&id) {
            return Err(RosterError::RemovedDeviceReturned { device: id });
        }
        if self.devices.len() >= limits::MAX_DEVICES {
            return Err(RosterError::TooManyDevices {
                max: limits::MAX_DEVICES,
            });
        }
        let name_key = self.name_key(keys)?;
        for present in &self.devices {
            open_name(&name_key, &self.account_id, present, self.epoch)?;
        }
        let entry = new_entry(&name_key, &self.account_id, device, self.epoch, rng)?;
        let mut body = self.body();
        body.version = self
            .version
            .checked_add(1)
            .ok_or(RosterError::Overflow { field: "version" })?;
        body.created_at_ms = 0;
        body.devices.push(entry);
        Self::verify(
            &sign_body(&body, account_key),
            Some(&self.account_id),
            Some(self),
        )
    }

    /// The next roster with `device` removed: it moves to `removed` with `final_seq` (the last
    /// seq of its stream the remover saw), the account key rotates to `new_account_key` (signed
    /// by the current one), the epoch goes to `epoch + 1` with secret `new_epoch`, and every
    /// remaining name is re-sealed under the new epoch's device-name key.
    ///
    /// `new_account_key` must be [`account_key_for_epoch`]`(account, new_epoch)`: that is how the
    /// remaining devices receive it. `keys` must hold the current epoch's secret.
    #[allow(clippy::too_many_arguments)]
    ///
    /// `_now_ms` is no longer written: rosters carry no timestamps (docs/PROTOCOL.md §11).
    pub fn remove_device(
        &self,
        account_key: &AccountSigningKey,
        device: &DeviceId,
        final_seq: u64,
        new_account_key: &AccountSigningKey,
        new_epoch: &EpochSecret,
        keys: &EpochKeys,
        _now_ms: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<Self, RosterError> {
        self.check_current_key(account_key)?;
        if account_key_for_epoch(&self.account_id, new_epoch).public() != new_account_key.public() {
            return Err(RosterError::AccountKeyNotFromEpoch);
        }
        let Some(&index) = self.device_index.get(device) else {
            return Err(match self.removed_device(device) {
                Some(gone) => RosterError::DeviceRemoved {
                    device: *device,
                    final_seq: gone.final_seq,
                },
                None => RosterError::UnknownDevice { device: *device },
            });
        };
        if self.devices.len() == 1 {
            return Err(RosterError::LastDevice { device: *device });
        }
        if self.removed.len() >= limits::MAX_REMOVED_DEVICES {
            return Err(RosterError::TooManyEntries {
                list: "removed devices",
                count: self.removed.len() + 1,
                max: limits::MAX_REMOVED_DEVICES,
            });
        }
        if self.rotations.len() >= limits::MAX_KEY_ROTATIONS {
            return Err(RosterError::TooManyEntries {
                list: "key rotations",
                count: self.rotations.len() + 1,
                max: limits::MAX_KEY_ROTATIONS,
            });
        }
        let version = self
            .version
            .checked_add(1)
            .ok_or(RosterError::Overflow { field: "version" })?;
        let epoch = self
            .epoch
            .checked_add(1)
            .ok_or(RosterError::Overflow { field: "epoch" })?;
        let old_key = self.name_key(keys)?;
        let new_key = new_epoch.device_name_key(&self.account_id);

        let mut body = self.body();
        body.version = version;
        body.epoch = epoch;
        body.created_at_ms = 0;
        let gone = &self.devices[index];
        body.devices = Vec::with_capacity(self.devices.len() - 1);
        for present in self.devices.iter().filter(|d| d.device_id != *device) {
            let name = open_name(&old_key, &self.account_id, present, self.epoch)?;
            let (name_nonce, encrypted_name) =
                seal_name(&new_key, &self.account_id, &present.device_id, &name, rng)?;
            let mut entry = device_entry(present);
            entry.name_nonce = name_nonce.to_vec();
            entry.encrypted_name = encrypted_name;
            body.devices.push(entry);
        }
        body.removed.push(proto::RemovedDevice {
            device_id: gone.device_id.as_bytes().to_vec(),
            signing_key: gone.signing_key.to_bytes().to_vec(),
            final_seq,
            removed_in_version: version,
        });
        let new_public = new_account_key.public().to_bytes();
        let rotation_signature = account_key.sign(
            labels::ACCOUNT_KEY_ROTATION,
            &[
                self.account_id.as_bytes(),
                &version.to_be_bytes(),
                &new_public,
            ],
        );
        body.key_chain.push(proto::AccountKeyRotation {
            roster_version: version,
            new_key: new_public.to_vec(),
            signature: rotation_signature.to_bytes().to_vec(),
        });
        Self::verify(
            &sign_body(&body, new_account_key),
            Some(&self.account_id),
            Some(self),
        )
    }
}

fn device_entry(device: &RosterDevice) -> proto::DeviceEntry {
    proto::DeviceEntry {
        device_id: device.device_id.as_bytes().to_vec(),
        signing_key: device.signing_key.to_bytes().to_vec(),
        agreement_key: device.agreement_key.to_bytes(),
        added_at_ms: device.added_at_ms,
        added_in_epoch: device.added_in_epoch,
        name_nonce: device.name_nonce.to_vec(),
        encrypted_name: device.encrypted_name.clone(),
    }
}

fn new_entry(
    name_key: &SymmetricKey,
    account: &AccountId,
    device: NewDevice,
    epoch: u64,
    rng: &mut impl CryptoRng,
) -> Result<proto::DeviceEntry, RosterError> {
    let id = device.signing_key.device_id();
    let mut name = device.name;
    let sealed = seal_name(name_key, account, &id, &name, rng);
    name.zeroize();
    let (name_nonce, encrypted_name) = sealed?;
    Ok(proto::DeviceEntry {
        device_id: id.as_bytes().to_vec(),
        signing_key: device.signing_key.to_bytes().to_vec(),
        agreement_key: device.agreement_key.to_bytes(),
        added_at_ms: 0,
        added_in_epoch: epoch,
        name_nonce: name_nonce.to_vec(),
        encrypted_name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::epoch::account_key_for_epoch;
    use crate::keys::{DeviceAgreementKey, DeviceSigningKey, system_rng};

    struct Account {
        key: AccountSigningKey,
        keys: EpochKeys,
        roster: VerifiedRoster,
        devices: Vec<DeviceSigningKey>,
    }

    fn new_device(name: &str) -> (DeviceSigningKey, NewDevice) {
        let mut rng = system_rng();
        let key = DeviceSigningKey::generate(&mut rng);
        let device = NewDevice {
            signing_key: key.public(),
            agreement_key: DeviceAgreementKey::generate(&mut rng).public(),
            name: name.to_owned(),
        };
        (key, device)
    }

    /// An account with `n` devices named `device-0`, `device-1`, …
    fn account(n: usize) -> Account {
        let mut rng = system_rng();
        let key = AccountSigningKey::generate(&mut rng);
        let epoch1 = EpochSecret::generate(&mut rng);
        let (first_key, first) = new_device("device-0");
        let mut roster = VerifiedRoster::genesis(&key, first, &epoch1, 10, &mut rng).unwrap();
        let mut keys = EpochKeys::new(roster.account_id());
        keys.insert(1, epoch1).unwrap();
        let mut devices = vec![first_key];
        for i in 1..n {
            let (device_key, device) = new_device(&format!("device-{i}"));
            roster = roster
                .add_device(&key, device, &keys, 20, &mut rng)
                .unwrap();
            devices.push(device_key);
        }
        Account {
            key,
            keys,
            roster,
            devices,
        }
    }

    impl Account {
        /// Removes device `i`, rotating the account key and starting a new epoch.
        fn remove(&mut self, i: usize, final_seq: u64) {
            let mut rng = system_rng();
            let secret = EpochSecret::generate(&mut rng);
            let new_key = account_key_for_epoch(&self.roster.account_id(), &secret);
            let id = self.devices[i].device_id();
            self.roster = self
                .roster
                .remove_device(
                    &self.key, &id, final_seq, &new_key, &secret, &self.keys, 30, &mut rng,
                )
                .unwrap();
            self.keys.insert(self.roster.epoch(), secret).unwrap();
            self.key = new_key;
        }

        /// The current body, to tamper with and re-sign (as a successor: it names the
        /// current roster as its predecessor).
        fn body(&self) -> proto::RosterBody {
            let mut body = proto::RosterBody::decode(
                proto::SignedRoster::decode(self.roster.encoded())
                    .unwrap()
                    .body
                    .as_slice(),
            )
            .unwrap();
            body.prev_roster_hash = self.roster.hash().to_vec();
            body
        }
    }

    fn verify_body(
        body: &proto::RosterBody,
        key: &AccountSigningKey,
        prev: Option<&VerifiedRoster>,
    ) -> Result<VerifiedRoster, RosterError> {
        VerifiedRoster::verify(&sign_body(body, key), None, prev)
    }

    #[test]
    fn every_epochs_secret_is_confirmed_against_its_rotation() {
        let mut a = account(4);
        a.remove(1, 0);
        a.remove(2, 0);
        assert_eq!(a.roster.epoch(), 3);
        for epoch in 1..=3 {
            let secret = a.keys.get(epoch).unwrap();
            let result = a.roster.confirm_epoch_secret_of(epoch, secret);
            if epoch == 1 {
                // No rotation introduced the first epoch's secret.
                assert_eq!(result, Err(RosterError::EpochSecretUnconfirmable { epoch }));
            } else {
                assert_eq!(result, Ok(()), "epoch {epoch}");
            }
        }
        let forged = EpochSecret::generate(&mut system_rng());
        assert_eq!(
            a.roster.confirm_epoch_secret_of(2, &forged),
            Err(RosterError::EpochSecretMismatch { epoch: 2 })
        );
        // The secret of another epoch is not this one's either.
        assert_eq!(
            a.roster.confirm_epoch_secret_of(2, a.keys.get(3).unwrap()),
            Err(RosterError::EpochSecretMismatch { epoch: 2 })
        );
        assert_eq!(
            a.roster.confirm_epoch_secret_of(4, a.keys.get(3).unwrap()),
            Err(RosterError::EpochSecretUnconfirmable { epoch: 4 })
        );
        // Before any rotation, the first epoch is the current one: its names confirm it.
        let fresh = account(1);
        assert_eq!(
            fresh
                .roster
                .confirm_epoch_secret_of(1, fresh.keys.get(1).unwrap()),
            Ok(())
        );
        assert!(fresh.roster.confirm_epoch_secret_of(1, &forged).is_err());
    }

    #[test]
    fn a_device_dropped_without_being_listed_as_removed_is_refused() {
        let a = account(3);
        let trusted = a.roster.clone();
        let mut body = a.body();
        body.version += 1;
        body.devices.remove(1);
        let result = verify_body(&body, &a.key, Some(&trusted));
        assert!(
            result.is_err(),
            "device-1 vanished without a removal entry: {result:?}"
        );
    }

    #[test]
    fn a_roster_built_on_a_fork_of_the_trusted_one_is_refused() {
        let mut rng = system_rng();
        let a = account(1);
        // Two devices of the account each sign a successor of version 1: the relay keeps one
        // and shows the other to some devices.
        let (_, x) = new_device("x");
        let (_, y) = new_device("y");
        let with_x = a
            .roster
            .add_device(&a.key, x, &a.keys, 40, &mut rng)
            .unwrap();
        let with_y = a
            .roster
            .add_device(&a.key, y, &a.keys, 40, &mut rng)
            .unwrap();
        let (_, z) = new_device("z");
        let after_y = with_y.add_device(&a.key, z, &a.keys, 50, &mut rng).unwrap();
        // A device that trusts the version 2 with x must not accept a version 3 built on the
        // version 2 with y.
        let result = VerifiedRoster::verify(after_y.encoded(), None, Some(&with_x));
        assert!(result.is_err(), "a fork was accepted: {result:?}");
        // Built on the one it trusts, it is accepted.
        assert!(VerifiedRoster::verify(after_y.encoded(), None, Some(&with_y)).is_ok());
    }

    #[test]
    fn genesis_roster_verifies_and_derives_its_account_id() {
        let a = account(1);
        let verified = VerifiedRoster::verify(a.roster.encoded(), None, None).unwrap();
        assert_eq!(verified, a.roster);
        assert_eq!(verified.account_id(), a.key.public().account_id());
        assert_eq!(
            (
                verified.version(),
                verified.epoch(),
                verified.device_count()
            ),
            (1, 1, 1)
        );
        assert_eq!(verified.genesis_key(), &a.key.public());
        assert_eq!(verified.current_account_key(), &a.key.public());
        assert_eq!(
            verified
                .device_name(&a.devices[0].device_id(), &a.keys)
                .unwrap(),
            "device-0"
        );
    }

    #[test]
    fn names_are_sealed_to_a_fixed_length() {
        let mut rng = system_rng();
        let key = AccountSigningKey::generate(&mut rng);
        let epoch1 = EpochSecret::generate(&mut rng);
        for name in ["", "x", &"y".repeat(MAX_NAME_BYTES)] {
            let (_, device) = new_device(name);
            let roster = VerifiedRoster::genesis(&key, device, &epoch1, 1, &mut rng).unwrap();
            let entry = &roster.devices[0];
            assert_eq!(entry.encrypted_name.len(), SEALED_NAME_LEN);
            let mut keys = EpochKeys::new(roster.account_id());
            keys.insert(1, epoch1.clone()).unwrap();
            assert_eq!(roster.device_name(&entry.device_id, &keys).unwrap(), name);
        }
    }

    #[test]
    fn long_names_are_refused() {
        let mut rng = system_rng();
        let key = AccountSigningKey::generate(&mut rng);
        let (_, device) = new_device(&"é".repeat(33));
        assert_eq!(
            VerifiedRoster::genesis(&key, device, &EpochSecret::generate(&mut rng), 1, &mut rng),
            Err(RosterError::NameTooLong { len: 66, max: 64 })
        );
    }

    #[test]
    fn wrong_epoch_key_cannot_open_names() {
        let a = account(2);
        let mut other = EpochKeys::new(a.roster.account_id());
        other
            .insert(1, EpochSecret::generate(&mut system_rng()))
            .unwrap();
        let device = a.devices[1].device_id();
        assert_eq!(
            a.roster.device_name(&device, &other),
            Err(RosterError::DeviceName { device, epoch: 1 })
        );
        let empty = EpochKeys::new(a.roster.account_id());
        assert_eq!(
            a.roster.device_name(&device, &empty),
            Err(RosterError::MissingEpochSecret { epoch: 1 })
        );
        let foreign = EpochKeys::new(AccountId::from_bytes([9; 32]));
        assert!(matches!(
            a.roster.device_name(&device, &foreign),
            Err(RosterError::EpochKeysAccountMismatch { .. })
        ));
        assert!(
            a.roster
                .confirm_epoch_secret(a.keys.get(1).unwrap())
                .is_ok()
        );
        assert!(matches!(
            a.roster.confirm_epoch_secret(other.get(1).unwrap()),
            Err(RosterError::DeviceName { epoch: 1, .. })
        ));
    }

    #[test]
    fn add_device_checks_key_duplicates_and_limits() {
        let mut rng = system_rng();
        let a = account(2);
        let (_, again) = new_device("again");
        let mut duplicate = again.clone();
        duplicate.signing_key = a.devices[1].public();
        assert_eq!(
            a.roster.add_device(&a.key, duplicate, &a.keys, 1, &mut rng),
            Err(RosterError::DuplicateDevice {
                device: a.devices[1].device_id()
            })
        );
        let stranger = AccountSigningKey::generate(&mut rng);
        assert_eq!(
            a.roster
                .add_device(&stranger, again.clone(), &a.keys, 1, &mut rng),
            Err(RosterError::WrongAccountKey)
        );
        let next = a
            .roster
            .add_device(&a.key, again, &a.keys, 1, &mut rng)
            .unwrap();
        assert_eq!(
            (next.version(), next.device_count()),
            (a.roster.version() + 1, 3)
        );
    }

    #[test]
    fn roster_is_full_at_max_devices() {
        let mut rng = system_rng();
        let a = account(1);
        let mut roster = a.roster.clone();
        for i in 1..limits::MAX_DEVICES {
            let (_, device) = new_device(&format!("d{i}"));
            roster = roster
                .add_device(&a.key, device, &a.keys, 1, &mut rng)
                .unwrap();
        }
        assert_eq!(roster.device_count(), limits::MAX_DEVICES);
        let (_, one_more) = new_device("one more");
        assert_eq!(
            roster.add_device(&a.key, one_more, &a.keys, 1, &mut rng),
            Err(RosterError::TooManyDevices {
                max: limits::MAX_DEVICES
            })
        );
    }

    #[test]
    fn removal_rotates_key_bumps_epoch_and_reseals_names() {
        let mut a = account(3);
        let old_key = a.key.public();
        let gone = a.devices[2].device_id();
        let before = a.roster.clone();
        a.remove(2, 17);
        let r = &a.roster;
        assert_eq!(
            (r.version(), r.epoch(), r.device_count()),
            (before.version() + 1, 2, 2)
        );
        assert_eq!(r.key_chain(), &[old_key, a.key.public()]);
        assert!(r.is_removed(&gone));
        assert_eq!(r.removed_device(&gone).unwrap().final_seq(), 17);
        for (i, device) in a.devices.iter().take(2).enumerate() {
            assert_eq!(
                r.device_name(&device.device_id(), &a.keys).unwrap(),
                format!("device-{i}")
            );
        }
        // Remaining devices learn the new account key from the new epoch secret.
        assert_eq!(
            r.derive_account_key(&a.keys).unwrap().public(),
            a.key.public()
        );
        assert_eq!(
            before.derive_account_key(&a.keys).unwrap_err(),
            RosterError::AccountKeyNotRotated
        );
        // The removed device's history verifies up to final_seq, in old epochs only.
        assert!(r.writer_key(&gone, 17, 1).is_ok());
        assert_eq!(
            r.writer_key(&gone, 18, 1),
            Err(RosterError::DeviceRemoved {
                device: gone,
                final_seq: 17
            })
        );
        assert!(matches!(
            r.writer_key(&gone, 3, 2),
            Err(RosterError::EpochNotAllowed { .. })
        ));
    }

    #[test]
    fn remove_device_errors_are_precise() {
        let mut rng = system_rng();
        let mut a = account(2);
        let secret = EpochSecret::generate(&mut rng);
        let derived = account_key_for_epoch(&a.roster.account_id(), &secret);
        let random = AccountSigningKey::generate(&mut rng);
        let d1 = a.devices[1].device_id();
        let r = a.roster.clone();
        assert_eq!(
            r.remove_device(&a.key, &d1, 0, &random, &secret, &a.keys, 1, &mut rng),
            Err(RosterError::AccountKeyNotFromEpoch)
        );
        assert_eq!(
            r.remove_device(&random, &d1, 0, &derived, &secret, &a.keys, 1, &mut rng),
            Err(RosterError::WrongAccountKey)
        );
        let unknown = DeviceId::from_bytes([5; 16]);
        assert_eq!(
            r.remove_device(&a.key, &unknown, 0, &derived, &secret, &a.keys, 1, &mut rng),
            Err(RosterError::UnknownDevice { device: unknown })
        );
        a.remove(1, 4);
        let d0 = a.devices[0].device_id();
        let secret = EpochSecret::generate(&mut rng);
        let derived = account_key_for_epoch(&a.roster.account_id(), &secret);
        assert_eq!(
            a.roster
                .remove_device(&a.key, &d0, 0, &derived, &secret, &a.keys, 1, &mut rng),
            Err(RosterError::LastDevice { device: d0 })
        );
        assert_eq!(
            a.roster
                .remove_device(&a.key, &d1, 0, &derived, &secret, &a.keys, 1, &mut rng),
            Err(RosterError::DeviceRemoved {
                device: d1,
                final_seq: 4
            })
        );
        let (_, back) = new_device("back");
        let mut back = back;
        back.signing_key = a.devices[1].public();
        assert_eq!(
            a.roster.add_device(&a.key, back, &a.keys, 1, &mut rng),
            Err(RosterError::RemovedDeviceReturned { device: d1 })
        );
    }

    #[test]
    fn writer_key_follows_membership_and_epochs() {
        let mut rng = system_rng();
        let mut a = account(2);
        let d0 = a.devices[0].device_id();
        a.remove(1, 9);
        // Added after the removal, in epoch 2.
        let (late_key, late) = new_device("late");
        a.roster = a
            .roster
            .add_device(&a.key, late, &a.keys, 1, &mut rng)
            .unwrap();
        let late_id = late_key.device_id();
        assert_eq!(
            a.roster.writer_key(&d0, 100, 1).unwrap(),
            &a.devices[0].public()
        );
        assert_eq!(
            a.roster.writer_key(&late_id, 1, 2).unwrap(),
            &late_key.public()
        );
        assert_eq!(
            a.roster.writer_key(&late_id, 1, 1),
            Err(RosterError::EpochNotAllowed {
                device: late_id,
                epoch: 1,
                allowed_from: 2,
                allowed_to: 2
            })
        );
        assert!(matches!(
            a.roster.writer_key(&d0, 1, 3),
            Err(RosterError::EpochNotAllowed { .. })
        ));
        let stranger = DeviceId::from_bytes([1; 16]);
        assert_eq!(
            a.roster.writer_key(&stranger, 1, 1),
            Err(RosterError::UnknownDevice { device: stranger })
        );
    }

    #[test]
    fn verify_step_1_bounds_and_format() {
        let a = account(1);
        let huge = vec![0u8; limits::MAX_ROSTER_BYTES + 1];
        assert_eq!(
            VerifiedRoster::verify(&huge, None, None),
            Err(RosterError::TooLarge {
                len: huge.len(),
                max: limits::MAX_ROSTER_BYTES
            })
        );
        assert!(matches!(
            VerifiedRoster::verify(&[0xff, 0xff], None, None),
            Err(RosterError::Malformed(_))
        ));
        let mut body = a.body();
        body.format_version = 2;
        assert_eq!(
            verify_body(&body, &a.key, None),
            Err(RosterError::WrongFormatVersion { found: 2 })
        );
        let mut body = a.body();
        body.removed = vec![proto::RemovedDevice::default(); limits::MAX_REMOVED_DEVICES + 1];
        assert_eq!(
            verify_body(&body, &a.key, None),
            Err(RosterError::TooManyEntries {
                list: "removed devices",
                count: 257,
                max: 256
            })
        );
        let mut body = a.body();
        body.version = 0;
        assert!(matches!(
            verify_body(&body, &a.key, None),
            Err(RosterError::InvalidField {
                field: "version",
                ..
            })
        ));
        let mut body = a.body();
        body.devices.clear();
        assert!(matches!(
            verify_body(&body, &a.key, None),
            Err(RosterError::InvalidField {
                field: "devices",
                ..
            })
        ));
    }

    #[test]
    fn verify_step_2_account_id() {
        let a = account(1);
        let other = AccountId::from_bytes([3; 32]);
        assert_eq!(
            VerifiedRoster::verify(a.roster.encoded(), Some(&other), None),
            Err(RosterError::AccountIdMismatch {
                expected: other,
                found: a.roster.account_id()
            })
        );
        let mut body = a.body();
        body.account_id = other.as_bytes().to_vec();
        assert_eq!(
            verify_body(&body, &a.key, None),
            Err(RosterError::GenesisMismatch)
        );
        let mut body = a.body();
        body.genesis_key = vec![1; 31];
        assert!(matches!(
            verify_body(&body, &a.key, None),
            Err(RosterError::InvalidKey {
                field: "genesis_key",
                ..
            })
        ));
    }

    #[test]
    fn verify_step_3_key_chain() {
        let mut a = account(3);
        a.remove(2, 1);
        a.remove(1, 1);
        let body = a.body();
        assert_eq!(body.key_chain.len(), 2);

        let mut swapped = body.clone();
        swapped.key_chain[1].roster_version = swapped.key_chain[0].roster_version;
        assert_eq!(
            verify_body(&swapped, &a.key, None),
            Err(RosterError::RotationOrder { index: 1 })
        );

        let mut future = body.clone();
        future.key_chain[1].roster_version = body.version + 1;
        assert_eq!(
            verify_body(&future, &a.key, None),
            Err(RosterError::RotationOrder { index: 1 })
        );

        let mut forged = body.clone();
        forged.key_chain[0].signature[3] ^= 1;
        assert_eq!(
            verify_body(&forged, &a.key, None),
            Err(RosterError::BadRotationSignature { index: 0 })
        );

        let mut short = body;
        short.key_chain[1].signature.pop();
        assert_eq!(
            verify_body(&short, &a.key, None),
            Err(RosterError::BadRotationSignature { index: 1 })
        );
    }

    #[test]
    fn verify_step_4_signature_under_the_current_key_only() {
        let mut a = account(2);
        let genesis = a.key.clone();
        a.remove(1, 0);
        let body = a.body();
        assert!(verify_body(&body, &a.key, None).is_ok());
        assert_eq!(
            verify_body(&body, &genesis, None),
            Err(RosterError::BadSignature)
        );
        let mut signed = proto::SignedRoster::decode(a.roster.encoded()).unwrap();
        signed.signature.truncate(10);
        assert_eq!(
            VerifiedRoster::verify(&signed.encode_to_vec(), None, None),
            Err(RosterError::BadSignature)
        );
    }

    #[test]
    fn verify_step_5_devices() {
        let mut a = account(3);
        a.remove(2, 0);
        let body = a.body();

        let mut duplicate = body.clone();
        duplicate.devices.push(body.devices[0].clone());
        let d0 = a.devices[0].device_id();
        assert_eq!(
            verify_body(&duplicate, &a.key, None),
            Err(RosterError::DuplicateDevice { device: d0 })
        );

        let mut mismatch = body.clone();
        mismatch.devices[0].device_id = vec![7; 16];
        assert_eq!(
            verify_body(&mismatch, &a.key, None),
            Err(RosterError::DeviceIdMismatch {
                device: DeviceId::from_bytes([7; 16])
            })
        );

        let mut both = body.clone();
        both.removed[0].device_id = body.devices[1].device_id.clone();
        both.removed[0].signing_key = body.devices[1].signing_key.clone();
        let d1 = a.devices[1].device_id();
        assert_eq!(
            verify_body(&both, &a.key, None),
            Err(RosterError::PresentAndRemoved { device: d1 })
        );

        let mut future = body.clone();
        future.devices[1].added_in_epoch = 3;
        assert_eq!(
            verify_body(&future, &a.key, None),
            Err(RosterError::AddedInFutureEpoch {
                device: d1,
                added_in_epoch: 3,
                epoch: 2
            })
        );

        let mut twice_removed = body.clone();
        twice_removed.removed.push(body.removed[0].clone());
        let d2 = a.devices[2].device_id();
        assert_eq!(
            verify_body(&twice_removed, &a.key, None),
            Err(RosterError::DuplicateDevice { device: d2 })
        );

        let mut nonce = body.clone();
        nonce.devices[0].name_nonce.pop();
        assert!(matches!(
            verify_body(&nonce, &a.key, None),
            Err(RosterError::InvalidField {
                field: "devices.name_nonce",
                ..
            })
        ));

        let mut name = body.clone();
        name.devices[0].encrypted_name = vec![0; SEALED_NAME_LEN + 1];
        assert!(matches!(
            verify_body(&name, &a.key, None),
            Err(RosterError::InvalidField {
                field: "devices.encrypted_name",
                ..
            })
        ));

        let mut agreement = body;
        agreement.devices[0].agreement_key = vec![0; 12];
        assert!(matches!(
            verify_body(&agreement, &a.key, None),
            Err(RosterError::InvalidKey {
                field: "devices.agreement_key",
                ..
            })
        ));
    }

    #[test]
    fn verify_step_6_against_the_trusted_roster() {
        let mut rng = system_rng();
        let mut a = account(3);
        let v_old = a.roster.clone();
        let old_key = a.key.clone();
        a.remove(2, 5);
        let trusted = a.roster.clone();
        let body = a.body();

        // Same version again, or older: rollback.
        assert_eq!(
            VerifiedRoster::verify(v_old.encoded(), None, Some(&trusted)),
            Err(RosterError::Rollback {
                stored: trusted.version(),
                offered: v_old.version()
            })
        );
        assert_eq!(
            VerifiedRoster::verify(trusted.encoded(), None, Some(&trusted)),
            Err(RosterError::Rollback {
                stored: trusted.version(),
                offered: trusted.version()
            })
        );

        // The revoked device kept the old account key and signs a newer roster with it.
        let mut forged = v_old.body();
        forged.version = trusted.version() + 1;
        assert_eq!(
            verify_body(&forged, &old_key, Some(&trusted)),
            Err(RosterError::ChainNotExtended)
        );

        let mut backwards = body.clone();
        backwards.version += 1;
        backwards.epoch = 1;
        backwards
            .devices
            .iter_mut()
            .for_each(|d| d.added_in_epoch = 1);
        assert_eq!(
            verify_body(&backwards, &a.key, Some(&trusted)),
            Err(RosterError::EpochWentBackwards {
                stored: 2,
                offered: 1
            })
        );

        let gone = a.devices[2].device_id();
        let mut returned = body.clone();
        returned.version += 1;
        let back = returned.removed.remove(0);
        returned.devices.push(proto::DeviceEntry {
            device_id: back.device_id,
            signing_key: back.signing_key,
            agreement_key: DeviceAgreementKey::generate(&mut rng).public().to_bytes(),
            added_at_ms: 0,
            added_in_epoch: 2,
            name_nonce: vec![0; 24],
            encrypted_name: vec![0; SEALED_NAME_LEN],
        });
        assert_eq!(
            verify_body(&returned, &a.key, Some(&trusted)),
            Err(RosterError::RemovedDeviceReturned { device: gone })
        );

        let mut forgotten = body.clone();
        forgotten.version += 1;
        forgotten.removed.clear();
        assert_eq!(
            verify_body(&forgotten, &a.key, Some(&trusted)),
            Err(RosterError::RemovedDeviceChanged { device: gone })
        );

        let mut extended = body;
        extended.removed[0].final_seq = 99;
        extended.version += 1;
        assert_eq!(
            verify_body(&extended, &a.key, Some(&trusted)),
            Err(RosterError::RemovedDeviceChanged { device: gone })
        );

        let other = account(1);
        assert_eq!(
            VerifiedRoster::verify(other.roster.encoded(), None, Some(&trusted)),
            Err(RosterError::AccountIdMismatch {
                expected: trusted.account_id(),
                found: other.roster.account_id()
            })
        );
    }

    #[test]
    fn counters_that_would_overflow_are_errors() {
        let mut rng = system_rng();
        let a = account(2);
        let mut body = a.body();
        body.version = u64::MAX;
        let roster = verify_body(&body, &a.key, None).unwrap();
        let (_, device) = new_device("late");
        assert_eq!(
            roster.add_device(&a.key, device, &a.keys, 1, &mut rng),
            Err(RosterError::Overflow { field: "version" })
        );
        let secret = EpochSecret::generate(&mut rng);
        let new_key = account_key_for_epoch(&roster.account_id(), &secret);
        let d1 = a.devices[1].device_id();
        assert_eq!(
            roster.remove_device(&a.key, &d1, 0, &new_key, &secret, &a.keys, 1, &mut rng),
            Err(RosterError::Overflow { field: "version" })
        );
    }

    #[test]
    fn debug_shows_ids_not_names() {
        let a = account(1);
        let printed = format!("{:?}", a.roster);
        assert!(!printed.contains("device-0"), "{printed}");
        assert!(
            printed.contains(&a.devices[0].device_id().to_hex()),
            "{printed}"
        );
        let (_, device) = new_device("secret name");
        assert!(!format!("{device:?}").contains("secret name"));
    }
}
