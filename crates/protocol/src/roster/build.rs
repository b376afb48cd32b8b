//! Building rosters: the genesis roster and the successors that add or remove a device, each
//! signed and re-verified before it is returned.

use super::name::{open_name, seal_name};
use super::*;

/// Signs `body` with `key` and wraps both in an encoded `SignedRoster`.
pub(super) fn sign_body(body: &proto::RosterBody, key: &AccountSigningKey) -> Vec<u8> {
    let body = body.encode_to_vec();
    let signature = key.sign(labels::ROSTER_SIGNATURE, &[&body]);
    proto::SignedRoster {
        body,
        signature: signature.to_bytes().to_vec(),
    }
    .encode_to_vec()
}

impl VerifiedRoster {
    /// The current account key, derived from the current epoch's secret (§4: every rotation's
    /// new key is derived from the secret of the epoch it starts). This is how the devices that
    /// remain after a removal receive the new account key: with the new epoch's sealed secret.
    ///
    /// Fails with [`RosterMisuseError::AccountKeyNotRotated`] while the account key is still the
    /// genesis key, and with [`RosterMisuseError::WrongAccountKey`] when the derived key is not the
    /// roster's current key (a secret that does not belong to this roster).
    pub fn derive_account_key(&self, keys: &EpochKeys) -> Result<AccountSigningKey, RosterError> {
        self.check_keys_account(keys)?;
        if self.chain.len() < 2 {
            return Err(RosterError::Misuse(RosterMisuseError::AccountKeyNotRotated));
        }
        let secret = keys.get(self.epoch).ok_or(RosterError::Misuse(
            RosterMisuseError::MissingEpochSecret { epoch: self.epoch },
        ))?;
        let key = account_key_for_epoch(&self.account_id, secret);
        if key.public() != *self.current_account_key() {
            return Err(RosterError::Misuse(RosterMisuseError::WrongAccountKey));
        }
        Ok(key)
    }

    pub(super) fn body(&self) -> proto::RosterBody {
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
            return Err(RosterError::Misuse(RosterMisuseError::WrongAccountKey));
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
            return Err(RosterError::Verify(RosterVerifyError::DuplicateDevice {
                device: id,
            }));
        }
        if self.removed_index.contains_key(&id) {
            return Err(RosterError::Verify(
                RosterVerifyError::RemovedDeviceReturned { device: id },
            ));
        }
        if self.devices.len() >= limits::MAX_DEVICES {
            return Err(RosterError::Misuse(RosterMisuseError::TooManyDevices {
                max: limits::MAX_DEVICES,
            }));
        }
        let name_key = self.name_key(keys)?;
        for present in &self.devices {
            open_name(&name_key, &self.account_id, present, self.epoch)?;
        }
        let entry = new_entry(&name_key, &self.account_id, device, self.epoch, rng)?;
        let mut body = self.body();
        body.version = self.version.checked_add(1).ok_or(RosterError::Misuse(
            RosterMisuseError::Overflow { field: "version" },
        ))?;
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
            return Err(RosterError::Misuse(
                RosterMisuseError::AccountKeyNotFromEpoch,
            ));
        }
        let Some(&index) = self.device_index.get(device) else {
            return Err(match self.removed_device(device) {
                Some(gone) => RosterError::Verify(RosterVerifyError::DeviceRemoved {
                    device: *device,
                    final_seq: gone.final_seq,
                }),
                None => RosterError::Verify(RosterVerifyError::UnknownDevice { device: *device }),
            });
        };
        if self.devices.len() == 1 {
            return Err(RosterError::Misuse(RosterMisuseError::LastDevice {
                device: *device,
            }));
        }
        if self.removed.len() >= limits::MAX_REMOVED_DEVICES {
            return Err(RosterError::Decode(RosterDecodeError::TooManyEntries {
                list: "removed devices",
                count: self.removed.len() + 1,
                max: limits::MAX_REMOVED_DEVICES,
            }));
        }
        if self.rotations.len() >= limits::MAX_KEY_ROTATIONS {
            return Err(RosterError::Decode(RosterDecodeError::TooManyEntries {
                list: "key rotations",
                count: self.rotations.len() + 1,
                max: limits::MAX_KEY_ROTATIONS,
            }));
        }
        let version = self.version.checked_add(1).ok_or(RosterError::Misuse(
            RosterMisuseError::Overflow { field: "version" },
        ))?;
        let epoch =
            self.epoch
                .checked_add(1)
                .ok_or(RosterError::Misuse(RosterMisuseError::Overflow {
                    field: "epoch",
                }))?;
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
