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
//!
//! # Layout
//!
//! - `verify`: [`VerifiedRoster::verify`] (PROTOCOL.md §4, steps 1–6), which devices may write
//!   ([`VerifiedRoster::writer_key`]) and the confirmation of epoch secrets.
//! - `build`: the builders that produce, sign and re-verify a successor.
//! - `name`: sealing and opening device names under the epoch's device-name key.
//! - `error`: [`RosterError`], nested by category ([`RosterDecodeError`], [`RosterVerifyError`],
//!   [`RosterMisuseError`]).

mod build;
mod error;
mod name;
mod verify;

#[cfg(test)]
mod tests;

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

pub use error::{RosterDecodeError, RosterError, RosterMisuseError, RosterVerifyError};

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

impl VerifiedRoster {
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
}
