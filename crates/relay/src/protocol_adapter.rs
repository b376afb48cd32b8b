//! TEMPORARY adapter until `kith_protocol::roster` and `kith_protocol::envelope` land: the same
//! signatures as the protocol crate's intended API, implemented after docs/PROTOCOL.md §4/§7.
//! The relay imports only from here, so switching is a change of this file alone.

use std::collections::{HashMap, HashSet};

use kith_protocol::encoding::labels;
use kith_protocol::ids::{AccountId, DeviceId};
use kith_protocol::keys::{AccountVerifyingKey, DeviceVerifyingKey, Signature};
use kith_protocol::limits;
use kith_protocol::proto;
use prost::Message;

/// Why a roster was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("roster: {0}")]
pub struct RosterError(&'static str);

/// A device listed in a verified roster.
#[derive(Debug, Clone)]
pub struct RosterDevice {
    signing_key: DeviceVerifyingKey,
}

impl RosterDevice {
    /// Its signing key.
    pub fn signing_key(&self) -> &DeviceVerifyingKey {
        &self.signing_key
    }
}

/// A roster that verified (§4).
#[derive(Debug, Clone)]
pub struct VerifiedRoster {
    account_id: AccountId,
    version: u64,
    epoch: u64,
    devices: HashMap<DeviceId, RosterDevice>,
    removed: HashSet<DeviceId>,
    chain: Vec<AccountVerifyingKey>,
    encoded: Vec<u8>,
}

fn err(what: &'static str) -> RosterError {
    RosterError(what)
}

impl VerifiedRoster {
    /// Verifies an encoded `SignedRoster` (§4).
    pub fn verify(
        signed_roster_bytes: &[u8],
        account_id: Option<&AccountId>,
        prev: Option<&VerifiedRoster>,
    ) -> Result<VerifiedRoster, RosterError> {
        if signed_roster_bytes.len() > limits::MAX_ROSTER_BYTES {
            return Err(err("too large"));
        }
        let signed =
            proto::SignedRoster::decode(signed_roster_bytes).map_err(|_| err("undecodable"))?;
        let body = proto::RosterBody::decode(signed.body.as_slice()).map_err(|_| err("body"))?;
        if body.format_version != 1 {
            return Err(err("format version"));
        }
        if body.devices.len() > limits::MAX_DEVICES
            || body.removed.len() > limits::MAX_REMOVED_DEVICES
            || body.key_chain.len() > limits::MAX_KEY_ROTATIONS
        {
            return Err(err("too many entries"));
        }
        let genesis = AccountVerifyingKey::from_slice(&body.genesis_key).map_err(|_| err("key"))?;
        let account = genesis.account_id();
        if body.account_id != account.as_bytes() || account_id.is_some_and(|a| *a != account) {
            return Err(err("account id"));
        }
        let mut chain = vec![genesis];
        let mut last_version = 0;
        for rotation in &body.key_chain {
            if rotation.roster_version <= last_version || rotation.roster_version > body.version {
                return Err(err("rotation order"));
            }
            let new_key =
                AccountVerifyingKey::from_slice(&rotation.new_key).map_err(|_| err("key"))?;
            let signature = Signature::from_slice(&rotation.signature).map_err(|_| err("sig"))?;
            let previous = chain.last().ok_or(err("chain"))?;
            previous
                .verify(
                    labels::ACCOUNT_KEY_ROTATION,
                    &[account.as_bytes(), &rotation.roster_version.to_be_bytes(), &rotation.new_key],
                    &signature,
                )
                .map_err(|_| err("rotation signature"))?;
            chain.push(new_key);
            last_version = rotation.roster_version;
        }
        let current = chain.last().ok_or(err("chain"))?;
        let signature = Signature::from_slice(&signed.signature).map_err(|_| err("sig"))?;
        current
            .verify(labels::ROSTER_SIGNATURE, &[&signed.body], &signature)
            .map_err(|_| err("signature"))?;
        let mut devices = HashMap::new();
        for entry in &body.devices {
            let key = DeviceVerifyingKey::from_slice(&entry.signing_key).map_err(|_| err("key"))?;
            let id = DeviceId::from_slice(&entry.device_id).map_err(|_| err("device id"))?;
            if key.device_id() != id || entry.added_in_epoch > body.epoch {
                return Err(err("device entry"));
            }
            if devices.insert(id, RosterDevice { signing_key: key }).is_some() {
                return Err(err("duplicate device"));
            }
        }
        let mut removed = HashSet::new();
        for entry in &body.removed {
            let id = DeviceId::from_slice(&entry.device_id).map_err(|_| err("device id"))?;
            if devices.contains_key(&id) || !removed.insert(id) {
                return Err(err("removed device"));
            }
        }
        if let Some(prev) = prev {
            if body.version <= prev.version
                || body.epoch < prev.epoch
                || chain.len() < prev.chain.len()
                || chain[..prev.chain.len()] != prev.chain[..]
                || !prev.removed.iter().all(|d| removed.contains(d))
            {
                return Err(err("does not extend the previous roster"));
            }
        }
        Ok(VerifiedRoster {
            account_id: account,
            version: body.version,
            epoch: body.epoch,
            devices,
            removed,
            chain,
            encoded: signed_roster_bytes.to_vec(),
        })
    }

    /// The account.
    pub fn account_id(&self) -> AccountId {
        self.account_id
    }
    /// Roster version.
    pub fn version(&self) -> u64 {
        self.version
    }
    /// Current epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
    /// A present device.
    pub fn device(&self, id: &DeviceId) -> Option<&RosterDevice> {
        self.devices.get(id)
    }
    /// Whether the device is listed as removed.
    pub fn is_removed(&self, id: &DeviceId) -> bool {
        self.removed.contains(id)
    }
    /// Present devices.
    pub fn device_count(&self) -> usize {
        self.devices.len()
    }
    /// The newest key of the chain.
    pub fn current_account_key(&self) -> &AccountVerifyingKey {
        // The chain always holds at least the genesis key.
        &self.chain[self.chain.len() - 1]
    }
    /// The encoded signed roster.
    pub fn encoded(&self) -> &[u8] {
        &self.encoded
    }
}

/// The header fields the relay checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderView {
    /// Account.
    pub account_id: AccountId,
    /// Writer.
    pub device_id: DeviceId,
    /// Sequence number.
    pub seq: u64,
    /// Epoch.
    pub epoch: u64,
}

/// Why an envelope header could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("envelope: {0}")]
pub struct EnvelopeError(&'static str);

/// Decodes just enough of an envelope to read its header.
pub fn peek_header(envelope_bytes: &[u8]) -> Result<HeaderView, EnvelopeError> {
    if envelope_bytes.len() > limits::MAX_ENVELOPE_BYTES {
        return Err(EnvelopeError("too large"));
    }
    let envelope =
        proto::Envelope::decode(envelope_bytes).map_err(|_| EnvelopeError("undecodable"))?;
    if envelope.header.len() > limits::MAX_HEADER_BYTES {
        return Err(EnvelopeError("header too large"));
    }
    let header = proto::EnvelopeHeader::decode(envelope.header.as_slice())
        .map_err(|_| EnvelopeError("header undecodable"))?;
    if header.format_version != 1 {
        return Err(EnvelopeError("format version"));
    }
    Ok(HeaderView {
        account_id: AccountId::from_slice(&header.account_id)
            .map_err(|_| EnvelopeError("account id"))?,
        device_id: DeviceId::from_slice(&header.device_id)
            .map_err(|_| EnvelopeError("device id"))?,
        seq: header.seq,
        epoch: header.epoch,
    })
}
