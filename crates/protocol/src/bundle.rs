//! Linking a new device and recovering an account (docs/PROTOCOL.md §6).
//!
//! An [`AccountBundle`] is everything a device needs to act for the account: the account signing
//! key, every epoch secret, and the current roster. It travels sealed with HPKE in **PSK mode**
//! (X-Wing, HKDF-SHA256, ChaCha20-Poly1305), so that only someone who knows the PSK can have
//! sealed it:
//!
//! - to a new device, under the *pairing secret* of its [`LinkCode`] (which the relay never
//!   sees), so the relay cannot seal a bundle of its own to the new device;
//! - to the recovery key, under the recovery PSK, so a person who lost every device can restore.
//!
//! Opening checks that the roster inside verifies for the bundle's account, that the account key
//! inside is that roster's current key, that the current epoch's secret matches the roster, and
//! (for a link) that the new device is in the roster with the keys it generated.
//!
//! ```
//! use kith_protocol::bundle::{AccountBundle, LinkCode, open_link_bundle, seal_link_bundle};
//! use kith_protocol::epoch::EpochKeys;
//! use kith_protocol::keys::*;
//! use kith_protocol::roster::{NewDevice, VerifiedRoster};
//!
//! let mut rng = system_rng();
//! // The existing device's account.
//! let account_key = AccountSigningKey::generate(&mut rng);
//! let epoch1 = EpochSecret::generate(&mut rng);
//! let first = NewDevice {
//!     signing_key: DeviceSigningKey::generate(&mut rng).public(),
//!     agreement_key: DeviceAgreementKey::generate(&mut rng).public(),
//!     name: "laptop".into(),
//! };
//! let roster = VerifiedRoster::genesis(&account_key, first, &epoch1, 1, &mut rng).unwrap();
//! let mut epochs = EpochKeys::new(roster.account_id());
//! epochs.insert(1, epoch1).unwrap();
//!
//! // The new device shows a link code...
//! let new_signing = DeviceSigningKey::generate(&mut rng);
//! let new_agreement = DeviceAgreementKey::generate(&mut rng);
//! let code = LinkCode::generate(new_signing.public(), new_agreement.public(), &mut rng);
//! let text = code.to_text();
//!
//! // ...the existing device scans it, adds the device and seals the bundle...
//! let code = LinkCode::parse(&text).unwrap();
//! let device = NewDevice {
//!     signing_key: *code.signing_key(),
//!     agreement_key: code.agreement_key().clone(),
//!     name: "phone".into(),
//! };
//! let roster = roster.add_device(&account_key, device, &epochs, 2, &mut rng).unwrap();
//! let bundle = AccountBundle::new(account_key, epochs, roster).unwrap();
//! let sealed = seal_link_bundle(&bundle, &code, &mut rng).unwrap();
//!
//! // ...and the new device opens it with its keys and the pairing secret it showed.
//! let opened =
//!     open_link_bundle(&sealed, &new_agreement, &new_signing.public(), code.pairing_secret())
//!         .unwrap();
//! assert_eq!(opened.account_id(), bundle.account_id());
//! ```

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use prost::Message;
use rand_core::CryptoRng;
use zeroize::{Zeroize, Zeroizing};

use crate::encoding::{labels, lp_concat};
use crate::epoch::{ENCAPPED_KEY_LEN, EpochError, EpochKeys, hpke_open, hpke_seal};
use crate::ids::{AccountId, DeviceId};
use crate::keys::{
    AccountSigningKey, DeviceAgreementKey, DeviceAgreementPublicKey, DeviceVerifyingKey,
    EpochSecret, KeyError, PairingSecret, RecoveryKey, RecoverySealing, SymmetricKey,
};
use crate::roster::{RosterError, VerifiedRoster};
use crate::{limits, proto};

/// The link code format this code reads and writes.
pub const LINK_CODE_FORMAT_VERSION: u32 = 1;

/// Why a bundle or a link code was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// The sealed bundle is longer than [`limits::MAX_BUNDLE_BYTES`].
    #[error("sealed bundle is {len} bytes, more than the {max} allowed")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// The bytes do not decode as the expected message.
    #[error("bundle does not decode: {0}")]
    Malformed(prost::DecodeError),
    /// A field has an impossible value.
    #[error("bundle field `{field}` is invalid: {reason}")]
    InvalidField {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A key does not parse.
    #[error("field `{field}` is not a valid key: {source}")]
    InvalidKey {
        /// The field.
        field: &'static str,
        /// Why the key was rejected.
        source: KeyError,
    },
    /// HPKE decryption failed: sealed to another key, under another PSK (a bundle sealed by
    /// someone who does not know the pairing secret or recovery key), or altered.
    #[error("bundle does not decrypt (wrong key or PSK, or tampered)")]
    DecryptFailed,
    /// HPKE sealing failed (cannot happen with well-formed keys).
    #[error("bundle could not be sealed")]
    SealFailed,
    /// The bundle holds more epoch secrets than [`limits::MAX_BUNDLE_EPOCHS`].
    #[error("bundle holds {count} epoch secrets, more than the {max} allowed")]
    TooManyEpochs {
        /// Its count.
        count: usize,
        /// The bound.
        max: usize,
    },
    /// An epoch is listed twice.
    #[error("bundle lists epoch {epoch} twice")]
    DuplicateEpoch {
        /// The epoch.
        epoch: u64,
    },
    /// The secret of the roster's current epoch is missing.
    #[error("bundle lacks the secret of the roster's epoch {epoch}")]
    MissingEpoch {
        /// The epoch.
        epoch: u64,
    },
    /// The bundle's roster does not verify, or the current epoch secret does not match it.
    #[error("bundle roster: {0}")]
    Roster(RosterError),
    /// The bundle's parts belong to different accounts.
    #[error("bundle is for account {bundle}, its roster for {roster}")]
    AccountIdMismatch {
        /// The account named by the bundle (or its epoch keys).
        bundle: AccountId,
        /// The roster's account.
        roster: AccountId,
    },
    /// The bundle's account key is not the roster's current account key (a stale bundle).
    #[error("bundle account key is not the roster's current account key")]
    AccountKeyMismatch,
    /// The device opening a link bundle is not in the bundle's roster (a stale or foreign
    /// bundle).
    #[error("device {device} is not in the bundle's roster")]
    DeviceNotInRoster {
        /// The device.
        device: DeviceId,
    },
    /// The roster lists the device with another agreement key than the one it generated.
    #[error("the bundle's roster lists device {device} with another agreement key")]
    DeviceKeyMismatch {
        /// The device.
        device: DeviceId,
    },
    /// The link code's format version is not [`LINK_CODE_FORMAT_VERSION`].
    #[error("link code format version {found} is not supported")]
    WrongFormatVersion {
        /// The version found.
        found: u32,
    },
    /// The link code text is longer than [`limits::MAX_LINK_CODE_CHARS`].
    #[error("link code is {len} bytes long, more than the {max} allowed")]
    LinkCodeTooLong {
        /// Its length in bytes.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// The link code text does not start with [`LinkCode::PREFIX`].
    #[error("link code does not start with `kith-link1:`")]
    LinkCodeMissingPrefix,
    /// The link code text is not unpadded base64url after its prefix.
    #[error("link code is not base64url: {0}")]
    LinkCodeBase64(base64::DecodeError),
}

impl From<RosterError> for BundleError {
    fn from(error: RosterError) -> Self {
        BundleError::Roster(error)
    }
}

/// Everything a device needs to act for the account. Its parts are consistent: the account key
/// is the roster's current key, and the epoch keys hold the roster's current epoch, confirmed
/// against the roster.
///
/// `Debug` prints the account, the roster version and the epoch numbers, never a secret.
#[derive(Clone)]
pub struct AccountBundle {
    account_id: AccountId,
    account_key: AccountSigningKey,
    epochs: EpochKeys,
    roster: VerifiedRoster,
    recovery: Option<RecoverySealing>,
}

impl fmt::Debug for AccountBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccountBundle")
            .field("account_id", &self.account_id)
            .field("account_key", &self.account_key.public())
            .field("epochs", &self.epochs)
            .field("roster_version", &self.roster.version())
            .field("recovery", &self.recovery.is_some())
            .finish()
    }
}

/// A decoded `proto::AccountBundle`, its secret fields wiped when dropped.
struct WipedOnDrop(proto::AccountBundle);

impl Drop for WipedOnDrop {
    fn drop(&mut self) {
        self.0.account_signing_key.zeroize();
        for entry in &mut self.0.epochs {
            entry.secret.zeroize();
        }
        if let Some(recovery) = &mut self.0.recovery {
            recovery.psk.zeroize();
        }
    }
}

impl AccountBundle {
    /// Puts a bundle together, checking that its parts agree (same account, `account_key` is the
    /// roster's current key, the roster's epoch secret is held and matches the roster).
    pub fn new(
        account_key: AccountSigningKey,
        epochs: EpochKeys,
        roster: VerifiedRoster,
    ) -> Result<Self, BundleError> {
        let account_id = roster.account_id();
        if epochs.account_id() != account_id {
            return Err(BundleError::AccountIdMismatch {
                bundle: epochs.account_id(),
                roster: account_id,
            });
        }
        if account_key.public() != *roster.current_account_key() {
            return Err(BundleError::AccountKeyMismatch);
        }
        let current = epochs
            .get(roster.epoch())
            .ok_or(BundleError::MissingEpoch {
                epoch: roster.epoch(),
            })?;
        roster.confirm_epoch_secret(current)?;
        Ok(Self {
            account_id,
            account_key,
            epochs,
            roster,
            recovery: None,
        })
    }

    /// The bundle carrying the recovery sealing material too (§6), so that the device it is
    /// sealed to can keep the recovery bundle current.
    pub fn with_recovery(mut self, recovery: Option<RecoverySealing>) -> Self {
        self.recovery = recovery;
        self
    }

    /// The recovery sealing material, if the sealing device held it.
    pub fn recovery(&self) -> Option<&RecoverySealing> {
        self.recovery.as_ref()
    }

    /// The account.
    pub fn account_id(&self) -> AccountId {
        self.account_id
    }

    /// The account signing key (the roster's current account key).
    pub fn account_key(&self) -> &AccountSigningKey {
        &self.account_key
    }

    /// Every epoch secret.
    pub fn epochs(&self) -> &EpochKeys {
        &self.epochs
    }

    /// The roster current when the bundle was sealed.
    pub fn roster(&self) -> &VerifiedRoster {
        &self.roster
    }

    /// The parts: account key, epoch keys and roster.
    pub fn into_parts(self) -> (AccountSigningKey, EpochKeys, VerifiedRoster) {
        (self.account_key, self.epochs, self.roster)
    }

    /// The encoded `proto::AccountBundle`: the plaintext that link and recovery bundles seal.
    /// Secret: zeroized on drop.
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let key = self.account_key.to_secret_bytes();
        let message = WipedOnDrop(proto::AccountBundle {
            account_id: self.account_id.as_bytes().to_vec(),
            account_signing_key: key.to_vec(),
            epochs: self
                .epochs
                .iter()
                .map(|(epoch, secret)| proto::EpochSecretEntry {
                    epoch,
                    secret: secret.expose().to_vec(),
                })
                .collect(),
            roster: self.roster.encoded().to_vec(),
            recovery: self.recovery.as_ref().map(|r| proto::RecoverySealing {
                public_key: r.public().to_bytes(),
                psk: r.psk().expose().to_vec(),
                lookup_id: r.lookup_id().to_vec(),
            }),
        });
        Zeroizing::new(message.0.encode_to_vec())
    }

    /// Decodes and checks an opened bundle's plaintext ([`Self::encode`]); the `link_bundle`
    /// fuzz target's plaintext mode calls it directly.
    pub fn decode(plaintext: &[u8]) -> Result<Self, BundleError> {
        let message =
            WipedOnDrop(proto::AccountBundle::decode(plaintext).map_err(BundleError::Malformed)?);
        let message = &message.0;
        let account_id =
            AccountId::from_slice(&message.account_id).map_err(|_| BundleError::InvalidField {
                field: "account_id",
                reason: "must be 32 bytes",
            })?;
        let account_key = AccountSigningKey::from_secret_bytes(&message.account_signing_key)
            .map_err(|source| BundleError::InvalidKey {
                field: "account_signing_key",
                source,
            })?;
        if message.epochs.len() > limits::MAX_BUNDLE_EPOCHS {
            return Err(BundleError::TooManyEpochs {
                count: message.epochs.len(),
                max: limits::MAX_BUNDLE_EPOCHS,
            });
        }
        let mut epochs = EpochKeys::new(account_id);
        for entry in &message.epochs {
            let secret =
                EpochSecret::from_slice(&entry.secret).map_err(|_| BundleError::InvalidField {
                    field: "epochs.secret",
                    reason: "must be 32 bytes",
                })?;
            if epochs.contains(entry.epoch) {
                return Err(BundleError::DuplicateEpoch { epoch: entry.epoch });
            }
            epochs
                .insert(entry.epoch, secret)
                .map_err(|error| match error {
                    EpochError::EpochZero => BundleError::InvalidField {
                        field: "epochs.epoch",
                        reason: "epochs start at 1",
                    },
                    _ => BundleError::DuplicateEpoch { epoch: entry.epoch },
                })?;
        }
        let recovery = match &message.recovery {
            None => None,
            Some(r) => Some(decode_recovery(r)?),
        };
        let roster = VerifiedRoster::verify(&message.roster, Some(&account_id), None)?;
        Ok(Self::new(account_key, epochs, roster)?.with_recovery(recovery))
    }
}

pub(crate) fn decode_recovery(
    wire: &proto::RecoverySealing,
) -> Result<RecoverySealing, BundleError> {
    let public = DeviceAgreementPublicKey::from_slice(&wire.public_key).map_err(|source| {
        BundleError::InvalidKey {
            field: "recovery.public_key",
            source,
        }
    })?;
    let psk = SymmetricKey::from_slice(&wire.psk).map_err(|_| BundleError::InvalidField {
        field: "recovery.psk",
        reason: "must be 32 bytes",
    })?;
    let lookup_id =
        <[u8; 32]>::try_from(wire.lookup_id.as_slice()).map_err(|_| BundleError::InvalidField {
            field: "recovery.lookup_id",
            reason: "must be 32 bytes",
        })?;
    Ok(RecoverySealing::new(public, psk, lookup_id))
}

/// What a new device shows to be linked: its public keys and a one-time pairing secret.
///
/// The text form is `kith-link1:` followed by the unpadded base64url encoding of the
/// `proto::LinkCode`; it contains the pairing secret, so it is zeroized on drop and `Debug`
/// prints only the device id.
#[derive(Clone)]
pub struct LinkCode {
    signing_key: DeviceVerifyingKey,
    agreement_key: DeviceAgreementPublicKey,
    pairing_secret: PairingSecret,
    device_name: String,
}

impl fmt::Debug for LinkCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkCode")
            .field("device_id", &self.signing_key.device_id())
            .field("agreement_key", &self.agreement_key)
            .finish_non_exhaustive()
    }
}

impl LinkCode {
    /// The prefix of the text form.
    pub const PREFIX: &'static str = "kith-link1:";

    /// A link code for these keys and this pairing secret.
    pub fn new(
        signing_key: DeviceVerifyingKey,
        agreement_key: DeviceAgreementPublicKey,
        pairing_secret: PairingSecret,
    ) -> Self {
        Self {
            signing_key,
            agreement_key,
            pairing_secret,
            device_name: String::new(),
        }
    }

    /// The same code carrying the new device's name (at most 64 bytes of UTF-8, as in the
    /// roster; longer names are cut at a character boundary). The name travels only from the
    /// new device to the approving one, which seals it into the roster.
    pub fn with_device_name(mut self, name: &str) -> Self {
        let mut end = name.len().min(limits::MAX_DEVICE_NAME_BYTES);
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        self.device_name = name[..end].to_string();
        self
    }

    /// The new device's name, as its owner typed it (empty if none was given).
    pub fn device_name(&self) -> &str {
        &self.device_name
    }

    /// A link code for these keys with a fresh pairing secret.
    pub fn generate(
        signing_key: DeviceVerifyingKey,
        agreement_key: DeviceAgreementPublicKey,
        rng: &mut impl CryptoRng,
    ) -> Self {
        Self::new(signing_key, agreement_key, PairingSecret::generate(rng))
    }

    /// The new device's signing key.
    pub fn signing_key(&self) -> &DeviceVerifyingKey {
        &self.signing_key
    }

    /// The new device's agreement key.
    pub fn agreement_key(&self) -> &DeviceAgreementPublicKey {
        &self.agreement_key
    }

    /// The pairing secret (the PSK of the link bundle).
    pub fn pairing_secret(&self) -> &PairingSecret {
        &self.pairing_secret
    }

    /// The new device's id.
    pub fn device_id(&self) -> DeviceId {
        self.signing_key.device_id()
    }

    /// The text form: `kith-link1:` + unpadded base64url of the encoded `proto::LinkCode`.
    /// Secret (it holds the pairing secret): zeroized on drop.
    pub fn to_text(&self) -> Zeroizing<String> {
        let mut message = proto::LinkCode {
            format_version: LINK_CODE_FORMAT_VERSION,
            signing_key: self.signing_key.to_bytes().to_vec(),
            agreement_key: self.agreement_key.to_bytes(),
            pairing_secret: self.pairing_secret.expose().to_vec(),
            device_name: self.device_name.clone(),
        };
        let encoded = Zeroizing::new(message.encode_to_vec());
        message.pairing_secret.zeroize();
        // Reserve the exact length, so the string never reallocates and leaves a copy behind.
        let mut text = Zeroizing::new(String::with_capacity(
            Self::PREFIX.len() + encoded.len().div_ceil(3) * 4,
        ));
        text.push_str(Self::PREFIX);
        URL_SAFE_NO_PAD.encode_string(&encoded[..], &mut text);
        text
    }

    /// Parses the text form. Whitespace anywhere is ignored (codes get wrapped and pasted);
    /// input longer than [`limits::MAX_LINK_CODE_CHARS`] is refused before it is looked at.
    pub fn parse(text: &str) -> Result<Self, BundleError> {
        if text.len() > limits::MAX_LINK_CODE_CHARS {
            return Err(BundleError::LinkCodeTooLong {
                len: text.len(),
                max: limits::MAX_LINK_CODE_CHARS,
            });
        }
        let compact: Zeroizing<String> =
            Zeroizing::new(text.chars().filter(|c| !c.is_whitespace()).collect());
        let body = compact
            .strip_prefix(Self::PREFIX)
            .ok_or(BundleError::LinkCodeMissingPrefix)?;
        let mut bytes = Zeroizing::new(Vec::with_capacity(body.len() / 4 * 3 + 3));
        URL_SAFE_NO_PAD
            .decode_vec(body, &mut bytes)
            .map_err(BundleError::LinkCodeBase64)?;
        let mut message = proto::LinkCode::decode(&bytes[..]).map_err(BundleError::Malformed)?;
        let result = Self::from_message(&message);
        message.pairing_secret.zeroize();
        result
    }

    fn from_message(message: &proto::LinkCode) -> Result<Self, BundleError> {
        if message.format_version != LINK_CODE_FORMAT_VERSION {
            return Err(BundleError::WrongFormatVersion {
                found: message.format_version,
            });
        }
        let signing_key =
            DeviceVerifyingKey::from_slice(&message.signing_key).map_err(|source| {
                BundleError::InvalidKey {
                    field: "signing_key",
                    source,
                }
            })?;
        let agreement_key =
            DeviceAgreementPublicKey::from_slice(&message.agreement_key).map_err(|source| {
                BundleError::InvalidKey {
                    field: "agreement_key",
                    source,
                }
            })?;
        let pairing_secret = PairingSecret::from_slice(&message.pairing_secret).map_err(|_| {
            BundleError::InvalidField {
                field: "pairing_secret",
                reason: "must be 32 bytes",
            }
        })?;
        if message.device_name.len() > limits::MAX_DEVICE_NAME_BYTES {
            return Err(BundleError::InvalidField {
                field: "device_name",
                reason: "must be at most 64 bytes",
            });
        }
        Ok(Self {
            signing_key,
            agreement_key,
            pairing_secret,
            device_name: message.device_name.clone(),
        })
    }
}

/// HPKE `info` of a link bundle: `LP("kith/v1/link-bundle") || LP(agreement_key)`.
fn link_info(agreement_key: &DeviceAgreementPublicKey) -> Vec<u8> {
    lp_concat(&[labels::LINK_BUNDLE.as_bytes(), &agreement_key.to_bytes()])
}

/// HPKE `info` of a recovery bundle: `LP("kith/v1/recovery-bundle")`.
fn recovery_info() -> Vec<u8> {
    lp_concat(&[labels::RECOVERY_BUNDLE.as_bytes()])
}

fn seal_bundle(
    bundle: &AccountBundle,
    recipient: &DeviceAgreementPublicKey,
    psk: &[u8],
    psk_id: &str,
    info: &[u8],
    rng: &mut impl CryptoRng,
) -> Result<Vec<u8>, BundleError> {
    let plaintext = bundle.encode();
    let sealed = hpke_seal(
        recipient,
        Some((psk, psk_id.as_bytes())),
        info,
        &plaintext,
        rng,
    )
    .map_err(|_| BundleError::SealFailed)?;
    let bytes = proto::SealedBundle {
        encapped_key: sealed.encapped_key,
        ciphertext: sealed.ciphertext,
        recovery_info: None,
    }
    .encode_to_vec();
    if bytes.len() > limits::MAX_BUNDLE_BYTES {
        return Err(BundleError::TooLarge {
            len: bytes.len(),
            max: limits::MAX_BUNDLE_BYTES,
        });
    }
    Ok(bytes)
}

fn open_bundle(
    sealed: &[u8],
    key: &DeviceAgreementKey,
    psk: &[u8],
    psk_id: &str,
    info: &[u8],
) -> Result<AccountBundle, BundleError> {
    if sealed.len() > limits::MAX_BUNDLE_BYTES {
        return Err(BundleError::TooLarge {
            len: sealed.len(),
            max: limits::MAX_BUNDLE_BYTES,
        });
    }
    let message = proto::SealedBundle::decode(sealed).map_err(BundleError::Malformed)?;
    if message.encapped_key.len() != ENCAPPED_KEY_LEN {
        return Err(BundleError::InvalidField {
            field: "encapped_key",
            reason: "must be 1120 bytes",
        });
    }
    let plaintext = hpke_open(
        key,
        Some((psk, psk_id.as_bytes())),
        info,
        &message.encapped_key,
        &message.ciphertext,
    )
    .map_err(|_| BundleError::DecryptFailed)?;
    AccountBundle::decode(&plaintext)
}

/// Seals `bundle` to the new device of `code`, under its pairing secret (§6).
///
/// The device must already be in the bundle's roster (add it first), with the agreement key of
/// the code.
pub fn seal_link_bundle(
    bundle: &AccountBundle,
    code: &LinkCode,
    rng: &mut impl CryptoRng,
) -> Result<Vec<u8>, BundleError> {
    check_in_roster(&bundle.roster, &code.signing_key, &code.agreement_key)?;
    seal_bundle(
        bundle,
        &code.agreement_key,
        code.pairing_secret.expose(),
        labels::LINK_PSK,
        &link_info(&code.agreement_key),
        rng,
    )
}

fn check_in_roster(
    roster: &VerifiedRoster,
    signing_key: &DeviceVerifyingKey,
    agreement_key: &DeviceAgreementPublicKey,
) -> Result<(), BundleError> {
    let device = signing_key.device_id();
    let entry = roster
        .device(&device)
        .ok_or(BundleError::DeviceNotInRoster { device })?;
    if entry.agreement_key() != agreement_key {
        return Err(BundleError::DeviceKeyMismatch { device });
    }
    Ok(())
}

/// Opens a link bundle on the new device, with the keys and pairing secret of the code it
/// showed, and checks it: the roster verifies for the bundle's account, the account key is the
/// roster's current key, the current epoch's secret matches the roster, and this device is in
/// the roster with these keys. A bundle sealed by anyone who did not scan the code (the relay)
/// fails to decrypt.
pub fn open_link_bundle(
    sealed: &[u8],
    my_agreement_key: &DeviceAgreementKey,
    my_signing_key: &DeviceVerifyingKey,
    pairing_secret: &PairingSecret,
) -> Result<AccountBundle, BundleError> {
    let public = my_agreement_key.public();
    let bundle = open_bundle(
        sealed,
        my_agreement_key,
        pairing_secret.expose(),
        labels::LINK_PSK,
        &link_info(&public),
    )?;
    check_in_roster(&bundle.roster, my_signing_key, &public)?;
    Ok(bundle)
}

/// Seals `bundle` to the recovery key pair, whose public half and PSK the devices keep (§6).
pub fn seal_recovery_bundle(
    bundle: &AccountBundle,
    recovery_public: &DeviceAgreementPublicKey,
    recovery_psk: &SymmetricKey,
    rng: &mut impl CryptoRng,
) -> Result<Vec<u8>, BundleError> {
    seal_bundle(
        bundle,
        recovery_public,
        recovery_psk.expose(),
        labels::RECOVERY_PSK,
        &recovery_info(),
        rng,
    )
}

/// Opens a recovery bundle with the recovery key, with the same checks as a link bundle except
/// the device's membership (the person recovering has no device in the roster yet).
pub fn open_recovery_bundle(
    sealed: &[u8],
    recovery_key: &RecoveryKey,
) -> Result<AccountBundle, BundleError> {
    let psk = recovery_key.psk();
    open_bundle(
        sealed,
        &recovery_key.kem_key(),
        psk.expose(),
        labels::RECOVERY_PSK,
        &recovery_info(),
    )
}

#[cfg(test)]
mod tests;
