//! Device names, sealed to a fixed length under the epoch's device-name key, so that only
//! members read them and their length leaks nothing.

use super::*;

/// `LP("kith/v1/device-name") || LP(account_id) || LP(device_id)`.
pub(super) fn name_aad(account: &AccountId, device: &DeviceId) -> Vec<u8> {
    lp_concat(&[
        labels::DEVICE_NAME_AAD.as_bytes(),
        account.as_bytes(),
        device.as_bytes(),
    ])
}

pub(super) fn name_cipher(key: &SymmetricKey) -> XChaCha20Poly1305 {
    XChaCha20Poly1305::new(key.expose().into())
}

/// Seals a device name: `len(name) as u8 || name || zeros` (65 bytes) under the device-name key.
pub(super) fn seal_name(
    key: &SymmetricKey,
    account: &AccountId,
    device: &DeviceId,
    name: &str,
    rng: &mut impl CryptoRng,
) -> Result<([u8; NAME_NONCE_LEN], Vec<u8>), RosterError> {
    let bytes = name.as_bytes();
    if bytes.len() > MAX_NAME_BYTES {
        return Err(RosterError::Misuse(RosterMisuseError::NameTooLong {
            len: bytes.len(),
            max: MAX_NAME_BYTES,
        }));
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
        .map_err(|_| {
            RosterError::Misuse(RosterMisuseError::Overflow {
                field: "device name",
            })
        })?;
    Ok((nonce, sealed))
}

/// Opens a sealed device name, checking the length byte and the zero padding.
pub(super) fn open_name(
    key: &SymmetricKey,
    account: &AccountId,
    device: &RosterDevice,
    epoch: u64,
) -> Result<Zeroizing<String>, RosterError> {
    let error = || {
        RosterError::Verify(RosterVerifyError::DeviceName {
            device: device.device_id,
            epoch,
        })
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

impl VerifiedRoster {
    pub(super) fn check_keys_account(&self, keys: &EpochKeys) -> Result<(), RosterError> {
        if keys.account_id() != self.account_id {
            return Err(RosterError::Misuse(
                RosterMisuseError::EpochKeysAccountMismatch {
                    expected: self.account_id,
                    found: keys.account_id(),
                },
            ));
        }
        Ok(())
    }

    pub(super) fn name_key(&self, keys: &EpochKeys) -> Result<SymmetricKey, RosterError> {
        self.check_keys_account(keys)?;
        keys.device_name_key(self.epoch)
            .map_err(|error| match error {
                EpochError::UnknownEpoch { epoch } => {
                    RosterError::Misuse(RosterMisuseError::MissingEpochSecret { epoch })
                }
                _ => {
                    RosterError::Misuse(RosterMisuseError::MissingEpochSecret { epoch: self.epoch })
                }
            })
    }

    /// The name of a present device, opened with the device-name key of the roster's epoch.
    pub fn device_name(&self, device: &DeviceId, keys: &EpochKeys) -> Result<String, RosterError> {
        let entry =
            self.device(device)
                .ok_or(RosterError::Verify(RosterVerifyError::UnknownDevice {
                    device: *device,
                }))?;
        let key = self.name_key(keys)?;
        let name = open_name(&key, &self.account_id, entry, self.epoch)?;
        Ok(name.as_str().to_owned())
    }
}
