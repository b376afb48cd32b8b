//! What a recovery bundle says about itself, so that devices, which never hold the recovery
//! key, can tell whether the relay's bundle is current and learn a rotated key's sealing
//! material (docs/PROTOCOL.md §6 "Recovery status and rotation").
//!
//! A *recovery record* is the encoded `SealedBundle` of [`bundle::seal_recovery_bundle`] with
//! `recovery_info` set: the roster version and epoch of the sealed bundle, the recovery sealing
//! material encrypted under that epoch's recovery-material key, and the account key's
//! signature over all of it and the sealed bytes. Records of older versions have no info; they
//! still open with the recovery key.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use prost::Message;
use rand_core::CryptoRng;
use zeroize::Zeroizing;

use crate::AccountId;
use crate::bundle::{self, AccountBundle, BundleError};
use crate::keys::{AccountVerifyingKey, RecoverySealing, Signature};
use crate::limits::MAX_BUNDLE_BYTES;
use crate::proto;

/// Signature context of the info (§3).
const INFO_CONTEXT: &str = "kith/v1/recovery-bundle-info";
/// Label of the sealed bytes' hash that the signature covers.
const SEALED_HASH: &str = "kith/v1/recovery-bundle-sealed";
/// HKDF label of the recovery-material key, a sub-key of the epoch's content key (§2.1).
const MATERIAL_KEY: &str = "kith/v1/recovery-material";

/// What a device learns from a recovery record whose info the account key signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryRecordInfo {
    /// The version of the roster sealed in the bundle.
    pub roster_version: u64,
    /// The epoch of that roster.
    pub epoch: u64,
    /// The sealing material of the recovery key the bundle is sealed to, if this device holds
    /// the key of `epoch` to decrypt it.
    pub material: Option<RecoverySealing>,
}

/// What a recovery record is, to a device of its account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryRecord {
    /// Sealed by an older version: it carries no info, so nothing can be said about it
    /// without the recovery key.
    Unsigned,
    /// Its info, signed by the account key the caller gave.
    Signed(RecoveryRecordInfo),
}

/// Why a recovery record was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecoveryRecordError {
    /// The record does not decode, or is too large.
    #[error("recovery record is malformed: {0}")]
    Malformed(#[from] BundleError),
    /// The info's signature is not the given account key's: sealed under an earlier account
    /// key (the info's roster version and epoch, unverified, are given), or forged.
    #[error(
        "recovery record info (roster version {roster_version}, epoch {epoch}) is not signed by \
         the current account key"
    )]
    NotCurrentKey {
        /// The roster version the info claims.
        roster_version: u64,
        /// The epoch the info claims.
        epoch: u64,
    },
    /// The material decrypted but is not the material of the record's lookup id.
    #[error("recovery record material does not match its lookup id")]
    MaterialMismatch,
}

fn material_aad(account: &AccountId, lookup_id: &[u8; 32], epoch: u64) -> Vec<u8> {
    crate::encoding::lp_concat(&[account.as_bytes(), lookup_id, &epoch.to_be_bytes()])
}

fn signed_fields(
    account: &AccountId,
    lookup_id: &[u8; 32],
    info: &proto::RecoveryBundleInfo,
    sealed_hash: &[u8; 32],
) -> Vec<Vec<u8>> {
    vec![
        account.as_bytes().to_vec(),
        lookup_id.to_vec(),
        info.roster_version.to_be_bytes().to_vec(),
        info.epoch.to_be_bytes().to_vec(),
        sealed_hash.to_vec(),
        info.material_nonce.clone(),
        info.material_ciphertext.clone(),
    ]
}

fn sealed_hash(sealed: &proto::SealedBundle) -> [u8; 32] {
    crate::encoding::hash(SEALED_HASH, &[&sealed.encapped_key, &sealed.ciphertext])
}

/// Seals `bundle` to the recovery key of `sealing` (as [`bundle::seal_recovery_bundle`]) and
/// adds the signed info: the bundle's roster version and epoch, and `sealing` encrypted under
/// the recovery-material key of that epoch.
pub fn seal_recovery_record(
    bundle: &AccountBundle,
    sealing: &RecoverySealing,
    rng: &mut impl CryptoRng,
) -> Result<Vec<u8>, BundleError> {
    let sealed = bundle::seal_recovery_bundle(bundle, sealing.public(), sealing.psk(), rng)?;
    let mut message =
        proto::SealedBundle::decode(sealed.as_slice()).map_err(BundleError::Malformed)?;
    let account = bundle.account_id();
    let roster = bundle.roster();
    let epoch = roster.epoch();
    let key = bundle
        .epochs()
        .content_key(epoch)
        .map_err(|_| BundleError::SealFailed)?
        .derive(MATERIAL_KEY);
    let material = Zeroizing::new(
        proto::RecoverySealing {
            public_key: sealing.public().to_bytes(),
            psk: sealing.psk().expose().to_vec(),
            lookup_id: sealing.lookup_id().to_vec(),
        }
        .encode_to_vec(),
    );
    let mut nonce = [0u8; 24];
    rng.fill_bytes(&mut nonce);
    let ciphertext = XChaCha20Poly1305::new(key.expose().into())
        .encrypt(
            &XNonce::from(nonce),
            Payload {
                msg: &material,
                aad: &material_aad(&account, sealing.lookup_id(), epoch),
            },
        )
        .map_err(|_| BundleError::SealFailed)?;
    let mut info = proto::RecoveryBundleInfo {
        roster_version: roster.version(),
        epoch,
        material_nonce: nonce.to_vec(),
        material_ciphertext: ciphertext,
        signature: Vec::new(),
    };
    let fields = signed_fields(&account, sealing.lookup_id(), &info, &sealed_hash(&message));
    let fields: Vec<&[u8]> = fields.iter().map(Vec::as_slice).collect();
    info.signature = bundle
        .account_key()
        .sign(INFO_CONTEXT, &fields)
        .to_bytes()
        .to_vec();
    message.recovery_info = Some(info);
    Ok(message.encode_to_vec())
}

/// Reads the recovery record the relay keeps under `lookup_id` for `account`, as a device of
/// the account: checks the info's signature with `account_key` (the roster's current key) and
/// decrypts the sealing material if `epochs` holds the info's epoch.
pub fn inspect_recovery_record(
    record: &[u8],
    account: &AccountId,
    lookup_id: &[u8; 32],
    account_key: &AccountVerifyingKey,
    epochs: &crate::epoch::EpochKeys,
) -> Result<RecoveryRecord, RecoveryRecordError> {
    if record.len() > MAX_BUNDLE_BYTES {
        return Err(BundleError::TooLarge {
            len: record.len(),
            max: MAX_BUNDLE_BYTES,
        }
        .into());
    }
    let message = proto::SealedBundle::decode(record).map_err(BundleError::Malformed)?;
    let Some(info) = &message.recovery_info else {
        return Ok(RecoveryRecord::Unsigned);
    };
    let not_current = || RecoveryRecordError::NotCurrentKey {
        roster_version: info.roster_version,
        epoch: info.epoch,
    };
    let signature = Signature::from_slice(&info.signature).map_err(|_| not_current())?;
    let fields = signed_fields(account, lookup_id, info, &sealed_hash(&message));
    let fields: Vec<&[u8]> = fields.iter().map(Vec::as_slice).collect();
    account_key
        .verify(INFO_CONTEXT, &fields, &signature)
        .map_err(|_| not_current())?;
    let material = match epochs.content_key(info.epoch) {
        Err(_) => None,
        Ok(key) => {
            let nonce = XNonce::try_from(info.material_nonce.as_slice()).map_err(|_| {
                BundleError::InvalidField {
                    field: "recovery_info.material_nonce",
                    reason: "not 24 bytes",
                }
            })?;
            let plain = XChaCha20Poly1305::new(key.derive(MATERIAL_KEY).expose().into())
                .decrypt(
                    &nonce,
                    Payload {
                        msg: &info.material_ciphertext,
                        aad: &material_aad(account, lookup_id, info.epoch),
                    },
                )
                .map(Zeroizing::new)
                .map_err(|_| BundleError::DecryptFailed)?;
            let wire =
                proto::RecoverySealing::decode(plain.as_slice()).map_err(BundleError::Malformed)?;
            let material = bundle::decode_recovery(&wire)?;
            if material.lookup_id() != lookup_id {
                return Err(RecoveryRecordError::MaterialMismatch);
            }
            Some(material)
        }
    };
    Ok(RecoveryRecord::Signed(RecoveryRecordInfo {
        roster_version: info.roster_version,
        epoch: info.epoch,
        material,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::epoch::EpochKeys;
    use crate::keys::{
        AccountSigningKey, DeviceAgreementKey, DeviceSigningKey, EpochSecret, RecoveryKey,
        system_rng,
    };
    use crate::roster::{NewDevice, VerifiedRoster};

    fn account() -> (AccountBundle, RecoveryKey) {
        let mut rng = system_rng();
        let key = AccountSigningKey::generate(&mut rng);
        let epoch1 = EpochSecret::generate(&mut rng);
        let account = key.public().account_id();
        let mut epochs = EpochKeys::new(account);
        epochs.insert(1, epoch1.clone()).unwrap();
        let roster = VerifiedRoster::genesis(
            &key,
            NewDevice {
                signing_key: DeviceSigningKey::generate(&mut rng).public(),
                agreement_key: DeviceAgreementKey::generate(&mut rng).public(),
                name: "a".into(),
            },
            &epoch1,
            0,
            &mut rng,
        )
        .unwrap();
        (
            AccountBundle::new(key, epochs, roster).unwrap(),
            RecoveryKey::generate(&mut rng),
        )
    }

    #[test]
    fn a_device_reads_what_a_record_was_sealed_for_and_the_recovery_key_still_opens_it() {
        let (bundle, recovery) = account();
        let sealing = recovery.sealing();
        let record = seal_recovery_record(&bundle, &sealing, &mut system_rng()).unwrap();
        let read = inspect_recovery_record(
            &record,
            &bundle.account_id(),
            sealing.lookup_id(),
            &bundle.account_key().public(),
            bundle.epochs(),
        )
        .unwrap();
        assert_eq!(
            read,
            RecoveryRecord::Signed(RecoveryRecordInfo {
                roster_version: bundle.roster().version(),
                epoch: 1,
                material: Some(sealing.clone()),
            })
        );
        let opened = bundle::open_recovery_bundle(&record, &recovery).unwrap();
        assert_eq!(opened.account_id(), bundle.account_id());
    }

    #[test]
    fn a_record_under_another_key_or_lookup_id_is_not_current() {
        let (bundle, recovery) = account();
        let sealing = recovery.sealing();
        let record = seal_recovery_record(&bundle, &sealing, &mut system_rng()).unwrap();
        let other = AccountSigningKey::generate(&mut system_rng()).public();
        let refused = |key: &AccountVerifyingKey, lookup: &[u8; 32]| {
            inspect_recovery_record(&record, &bundle.account_id(), lookup, key, bundle.epochs())
        };
        assert_eq!(
            refused(&other, sealing.lookup_id()),
            Err(RecoveryRecordError::NotCurrentKey {
                roster_version: bundle.roster().version(),
                epoch: 1
            })
        );
        assert!(matches!(
            refused(&bundle.account_key().public(), &[0; 32]),
            Err(RecoveryRecordError::NotCurrentKey { .. })
        ));
        // The sealed bytes are covered too: another sealing under the same info is refused.
        let mut message = proto::SealedBundle::decode(record.as_slice()).unwrap();
        let again = seal_recovery_record(&bundle, &sealing, &mut system_rng()).unwrap();
        message.ciphertext = proto::SealedBundle::decode(again.as_slice())
            .unwrap()
            .ciphertext;
        assert!(matches!(
            inspect_recovery_record(
                &message.encode_to_vec(),
                &bundle.account_id(),
                sealing.lookup_id(),
                &bundle.account_key().public(),
                bundle.epochs()
            ),
            Err(RecoveryRecordError::NotCurrentKey { .. })
        ));
    }

    #[test]
    fn a_record_of_an_older_version_is_unsigned() {
        let (bundle, recovery) = account();
        let sealing = recovery.sealing();
        let plain = bundle::seal_recovery_bundle(
            &bundle,
            sealing.public(),
            sealing.psk(),
            &mut system_rng(),
        )
        .unwrap();
        assert_eq!(
            inspect_recovery_record(
                &plain,
                &bundle.account_id(),
                sealing.lookup_id(),
                &bundle.account_key().public(),
                bundle.epochs()
            ),
            Ok(RecoveryRecord::Unsigned)
        );
    }
}
