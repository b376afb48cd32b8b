//! Verifying a roster (PROTOCOL.md §4, steps 1–6), which devices may write under it, and the
//! confirmation of epoch secrets against it.

use super::name::open_name;
use super::*;

pub(super) fn invalid(field: &'static str, reason: &'static str) -> RosterError {
    RosterError::Decode(RosterDecodeError::InvalidField { field, reason })
}

pub(super) fn parse_device_id(field: &'static str, bytes: &[u8]) -> Result<DeviceId, RosterError> {
    DeviceId::from_slice(bytes).map_err(|_| invalid(field, "must be 16 bytes"))
}

pub(super) fn parse_device_key(
    field: &'static str,
    bytes: &[u8],
) -> Result<DeviceVerifyingKey, RosterError> {
    DeviceVerifyingKey::from_slice(bytes)
        .map_err(|source| RosterError::Decode(RosterDecodeError::InvalidKey { field, source }))
}

pub(super) fn parse_account_key(
    field: &'static str,
    bytes: &[u8],
) -> Result<AccountVerifyingKey, RosterError> {
    AccountVerifyingKey::from_slice(bytes)
        .map_err(|source| RosterError::Decode(RosterDecodeError::InvalidKey { field, source }))
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
            return Err(RosterError::Decode(RosterDecodeError::TooLarge {
                len: signed_roster_bytes.len(),
                max: limits::MAX_ROSTER_BYTES,
            }));
        }
        let signed = proto::SignedRoster::decode(signed_roster_bytes)
            .map_err(RosterDecodeError::Malformed)?;
        let body = proto::RosterBody::decode(signed.body.as_slice())
            .map_err(RosterDecodeError::Malformed)?;
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
                return Err(RosterError::Decode(RosterDecodeError::TooManyEntries {
                    list,
                    count,
                    max,
                }));
            }
        }
        if body.format_version != FORMAT_VERSION {
            return Err(RosterError::Decode(RosterDecodeError::WrongFormatVersion {
                found: body.format_version,
            }));
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
            return Err(RosterError::Verify(RosterVerifyError::GenesisMismatch));
        }
        let expected = account_id.copied().or(prev.map(|p| p.account_id));
        if let Some(expected) = expected
            && expected != account
        {
            return Err(RosterError::Verify(RosterVerifyError::AccountIdMismatch {
                expected,
                found: account,
            }));
        }

        // Step 3: walk the key chain.
        let mut chain = Vec::with_capacity(body.key_chain.len() + 1);
        chain.push(genesis);
        let mut last_version = 0u64;
        for (index, rotation) in body.key_chain.iter().enumerate() {
            if rotation.roster_version <= last_version || rotation.roster_version > body.version {
                return Err(RosterError::Verify(RosterVerifyError::RotationOrder {
                    index,
                }));
            }
            let new_key = parse_account_key("key_chain.new_key", &rotation.new_key)?;
            let signature = Signature::from_slice(&rotation.signature).map_err(|_| {
                RosterError::Verify(RosterVerifyError::BadRotationSignature { index })
            })?;
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
                .map_err(|_| {
                    RosterError::Verify(RosterVerifyError::BadRotationSignature { index })
                })?;
            chain.push(new_key);
            last_version = rotation.roster_version;
        }

        // Step 4: the roster signature, under the current account key.
        let current = chain[chain.len() - 1];
        let signature = Signature::from_slice(&signed.signature)
            .map_err(|_| RosterError::Verify(RosterVerifyError::BadSignature))?;
        current
            .verify(labels::ROSTER_SIGNATURE, &[&signed.body], &signature)
            .map_err(|_| RosterError::Verify(RosterVerifyError::BadSignature))?;

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
                return Err(RosterError::Verify(RosterVerifyError::DeviceIdMismatch {
                    device: device_id,
                }));
            }
            let agreement_key = DeviceAgreementPublicKey::from_slice(&entry.agreement_key)
                .map_err(|source| {
                    RosterError::Decode(RosterDecodeError::InvalidKey {
                        field: "devices.agreement_key",
                        source,
                    })
                })?;
            if entry.added_in_epoch == 0 {
                return Err(invalid("devices.added_in_epoch", "epochs start at 1"));
            }
            if entry.added_in_epoch > body.epoch {
                return Err(RosterError::Verify(RosterVerifyError::AddedInFutureEpoch {
                    device: device_id,
                    added_in_epoch: entry.added_in_epoch,
                    epoch: body.epoch,
                }));
            }
            let name_nonce = <[u8; NAME_NONCE_LEN]>::try_from(entry.name_nonce.as_slice())
                .map_err(|_| invalid("devices.name_nonce", "must be 24 bytes"))?;
            if !(MIN_SEALED_NAME_LEN..=SEALED_NAME_LEN).contains(&entry.encrypted_name.len()) {
                return Err(invalid("devices.encrypted_name", "must be 16 to 81 bytes"));
            }
            if device_index.insert(device_id, devices.len()).is_some() {
                return Err(RosterError::Verify(RosterVerifyError::DuplicateDevice {
                    device: device_id,
                }));
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
                return Err(RosterError::Verify(RosterVerifyError::DeviceIdMismatch {
                    device: device_id,
                }));
            }
            if entry.removed_in_version == 0 || entry.removed_in_version > body.version {
                return Err(invalid(
                    "removed.removed_in_version",
                    "must be in 1..=version",
                ));
            }
            if device_index.contains_key(&device_id) {
                return Err(RosterError::Verify(RosterVerifyError::PresentAndRemoved {
                    device: device_id,
                }));
            }
            if removed_index.insert(device_id, removed.len()).is_some() {
                return Err(RosterError::Verify(RosterVerifyError::DuplicateDevice {
                    device: device_id,
                }));
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
            return Err(RosterError::Verify(RosterVerifyError::Rollback {
                stored: prev.version,
                offered: self.version,
            }));
        }
        if self.chain.len() < prev.chain.len() || self.chain[..prev.chain.len()] != prev.chain[..] {
            return Err(RosterError::Verify(RosterVerifyError::ChainNotExtended));
        }
        if self.epoch < prev.epoch {
            return Err(RosterError::Verify(RosterVerifyError::EpochWentBackwards {
                stored: prev.epoch,
                offered: self.epoch,
            }));
        }
        // A successor names its predecessor (rosters of 0.1.0 name none): another roster of
        // the trusted one's version was its base, a fork.
        if self.version == prev.version + 1
            && let Some(hash) = self.prev_hash
            && hash != prev.hash()
        {
            return Err(RosterError::Verify(RosterVerifyError::Forked {
                version: self.version,
            }));
        }
        for present in &prev.devices {
            let device = present.device_id;
            if !self.device_index.contains_key(&device) && !self.removed_index.contains_key(&device)
            {
                return Err(RosterError::Verify(RosterVerifyError::DeviceDropped {
                    device,
                }));
            }
        }
        for gone in &prev.removed {
            let device = gone.device_id;
            if self.device_index.contains_key(&device) {
                return Err(RosterError::Verify(
                    RosterVerifyError::RemovedDeviceReturned { device },
                ));
            }
            match self.removed_index.get(&device).map(|&i| &self.removed[i]) {
                Some(still) if still == gone => {}
                _ => {
                    return Err(RosterError::Verify(
                        RosterVerifyError::RemovedDeviceChanged { device },
                    ));
                }
            }
        }
        Ok(())
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
                return Err(RosterError::Verify(RosterVerifyError::EpochNotAllowed {
                    device: *device,
                    epoch,
                    allowed_from: present.added_in_epoch,
                    allowed_to: self.epoch,
                }));
            }
            return Ok(&present.signing_key);
        }
        if let Some(gone) = self.removed_device(device) {
            if seq > gone.final_seq {
                return Err(RosterError::Verify(RosterVerifyError::DeviceRemoved {
                    device: *device,
                    final_seq: gone.final_seq,
                }));
            }
            if epoch == 0 || epoch >= self.epoch {
                return Err(RosterError::Verify(RosterVerifyError::EpochNotAllowed {
                    device: *device,
                    epoch,
                    allowed_from: 1,
                    allowed_to: self.epoch - 1,
                }));
            }
            return Ok(&gone.signing_key);
        }
        Err(RosterError::Verify(RosterVerifyError::UnknownDevice {
            device: *device,
        }))
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
        let unconfirmable =
            RosterError::Verify(RosterVerifyError::EpochSecretUnconfirmable { epoch });
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
                .ok_or(RosterError::Verify(
                    RosterVerifyError::EpochSecretUnconfirmable { epoch },
                ))?;
            if account_key_for_epoch(&self.account_id, secret).public() != *rotation_key {
                return Err(RosterError::Verify(
                    RosterVerifyError::EpochSecretMismatch { epoch },
                ));
            }
        } else if epoch != self.epoch {
            return Err(unconfirmable);
        }
        if epoch == self.epoch {
            self.confirm_epoch_secret(secret)?;
        }
        Ok(())
    }
}
