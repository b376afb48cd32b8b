//! Epochs (docs/PROTOCOL.md §5): the secrets an account's content is encrypted under, and how
//! each one is sealed to each member device.
//!
//! An epoch is a number (from 1) and a random 32-byte [`EpochSecret`]. A device keeps every
//! secret it was given in [`EpochKeys`], from which the working keys of an epoch are derived.
//! A new epoch's secret travels to each remaining device as a `SealedEpochKey`: HPKE (RFC 9180)
//! base mode with the X-Wing KEM, HKDF-SHA256 and ChaCha20-Poly1305, its `info` binding the
//! account, the recipient device, the epoch number and the key id (a commitment to the secret).
//!
//! Base mode does not say who sealed: anyone who can read the roster can seal *some* secret to a
//! device. So a freshly opened secret is only trusted for writing once the signed roster
//! confirms it ([`crate::roster::VerifiedRoster::confirm_epoch_secret`]).
//!
//! ```
//! use kith_protocol::epoch::{open_epoch_key, seal_epoch_key};
//! use kith_protocol::keys::{DeviceAgreementKey, DeviceSigningKey, EpochSecret, system_rng};
//! use kith_protocol::AccountId;
//!
//! let mut rng = system_rng();
//! let account = AccountId::from_bytes([7; 32]);
//! let device = DeviceSigningKey::generate(&mut rng).device_id();
//! let agreement = DeviceAgreementKey::generate(&mut rng);
//! let secret = EpochSecret::generate(&mut rng);
//!
//! let sealed = seal_epoch_key(&account, &device, &agreement.public(), 2, &secret, &mut rng);
//! let (epoch, opened) = open_epoch_key(&sealed, &account, &device, &agreement).unwrap();
//! assert_eq!((epoch, opened), (2, secret));
//! ```

use std::collections::BTreeMap;
use std::fmt;

use hkdf::Hkdf;
use hpke::{Deserializable, OpModeR, OpModeS, PskBundle, Serializable};
use prost::Message;
use rand_core::CryptoRng;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::encoding::{labels, lp_concat};
use crate::ids::{AccountId, DeviceId};
use crate::keys::{
    AccountSigningKey, AccountVerifyingKey, DeviceAgreementKey, DeviceAgreementPublicKey,
    EpochSecret, Kem, SymmetricKey,
};
use crate::{limits, proto};

/// The AEAD of every HPKE seal in Kith (RFC 9180 `aead_id` 0x0003).
type HpkeAead = hpke::aead::ChaCha20Poly1305;
/// The KDF of every HPKE seal in Kith (RFC 9180 `kdf_id` 0x0001).
type HpkeKdf = hpke::kdf::HkdfSha256;

/// Length of an X-Wing encapsulation.
pub const ENCAPPED_KEY_LEN: usize = 1120;
/// Length of a key id (a commitment to an epoch secret).
pub const KEY_ID_LEN: usize = 16;
/// Length of the HPKE ciphertext of a sealed epoch secret (32 bytes plus the 16-byte tag).
pub const SEALED_SECRET_LEN: usize = EpochSecret::LEN + 16;

/// Why an epoch secret could not be found, stored, sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EpochError {
    /// No secret is held for this epoch.
    #[error("no secret is held for epoch {epoch}")]
    UnknownEpoch {
        /// The epoch asked for.
        epoch: u64,
    },
    /// Epoch numbers start at 1.
    #[error("epoch 0 does not exist; epochs start at 1")]
    EpochZero,
    /// A different secret is already held for this epoch (someone sealed a second one).
    #[error("a different secret is already held for epoch {epoch}")]
    ConflictingSecret {
        /// The epoch.
        epoch: u64,
    },
    /// The sealed key is longer than [`limits::MAX_SEALED_EPOCH_KEY_BYTES`].
    #[error("sealed epoch key is {len} bytes, more than the {max} allowed")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// The bytes are not a `SealedEpochKey`.
    #[error("sealed epoch key does not decode: {0}")]
    Malformed(prost::DecodeError),
    /// A field has the wrong length.
    #[error("sealed epoch key field `{field}` is {actual} bytes, expected {expected}")]
    BadLength {
        /// The field.
        field: &'static str,
        /// Its fixed length.
        expected: usize,
        /// The length received.
        actual: usize,
    },
    /// The sealed key belongs to another account.
    #[error("sealed epoch key is for account {found}, expected {expected}")]
    WrongAccount {
        /// The account the opener belongs to.
        expected: AccountId,
        /// The account named in the sealed key.
        found: AccountId,
    },
    /// The sealed key is addressed to another device.
    #[error("sealed epoch key is for device {found}, expected {expected}")]
    WrongRecipient {
        /// The opening device.
        expected: DeviceId,
        /// The device named in the sealed key.
        found: DeviceId,
    },
    /// HPKE decryption failed: not sealed to this key, or altered on the way.
    #[error("sealed epoch key does not decrypt with this device's key (wrong key or tampered)")]
    DecryptFailed,
    /// The sealed key carries no signature, or one that does not verify under the account key
    /// of its epoch.
    #[error("sealed epoch key of epoch {epoch} is not signed by that epoch's account key")]
    BadSignature {
        /// The epoch.
        epoch: u64,
    },
    /// The opened secret does not match the key id it was sealed with.
    #[error("secret opened for epoch {epoch} does not match its key id")]
    KeyIdMismatch {
        /// The epoch.
        epoch: u64,
    },
}

/// Every epoch secret a device holds for one account.
///
/// `Debug` prints the account and the epoch numbers, never a secret.
///
/// ```
/// use kith_protocol::epoch::{EpochError, EpochKeys};
/// use kith_protocol::keys::{EpochSecret, system_rng};
/// use kith_protocol::AccountId;
///
/// let mut keys = EpochKeys::new(AccountId::from_bytes([1; 32]));
/// keys.insert(1, EpochSecret::generate(&mut system_rng())).unwrap();
/// assert!(keys.content_key(1).is_ok());
/// assert_eq!(keys.content_key(2).unwrap_err(), EpochError::UnknownEpoch { epoch: 2 });
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct EpochKeys {
    account: AccountId,
    secrets: BTreeMap<u64, EpochSecret>,
}

impl EpochKeys {
    /// No secrets yet, for `account`.
    pub fn new(account: AccountId) -> Self {
        Self {
            account,
            secrets: BTreeMap::new(),
        }
    }

    /// The account these secrets belong to.
    pub fn account_id(&self) -> AccountId {
        self.account
    }

    /// Stores the secret of `epoch`. Storing the same secret again is a no-op; a *different*
    /// secret for an epoch already held is refused, so a second sealed key cannot swap it.
    pub fn insert(&mut self, epoch: u64, secret: EpochSecret) -> Result<(), EpochError> {
        if epoch == 0 {
            return Err(EpochError::EpochZero);
        }
        match self.secrets.get(&epoch) {
            Some(held) if *held == secret => Ok(()),
            Some(_) => Err(EpochError::ConflictingSecret { epoch }),
            None => {
                self.secrets.insert(epoch, secret);
                Ok(())
            }
        }
    }

    /// The secret of `epoch`, if held.
    pub fn get(&self, epoch: u64) -> Option<&EpochSecret> {
        self.secrets.get(&epoch)
    }

    /// Whether the secret of `epoch` is held.
    pub fn contains(&self, epoch: u64) -> bool {
        self.secrets.contains_key(&epoch)
    }

    /// The newest epoch held and its secret.
    pub fn latest(&self) -> Option<(u64, &EpochSecret)> {
        self.secrets
            .iter()
            .next_back()
            .map(|(epoch, secret)| (*epoch, secret))
    }

    /// Every epoch held, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &EpochSecret)> {
        self.secrets.iter().map(|(epoch, secret)| (*epoch, secret))
    }

    /// Number of epochs held.
    pub fn len(&self) -> usize {
        self.secrets.len()
    }

    /// Whether no epoch is held.
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    fn secret(&self, epoch: u64) -> Result<&EpochSecret, EpochError> {
        self.secrets
            .get(&epoch)
            .ok_or(EpochError::UnknownEpoch { epoch })
    }

    /// The content key of `epoch` (envelope encryption, §2.1).
    pub fn content_key(&self, epoch: u64) -> Result<SymmetricKey, EpochError> {
        Ok(self.secret(epoch)?.content_key(&self.account))
    }

    /// The device-name key of `epoch` (names in a roster of that epoch, §2.1).
    pub fn device_name_key(&self, epoch: u64) -> Result<SymmetricKey, EpochError> {
        Ok(self.secret(epoch)?.device_name_key(&self.account))
    }

    /// The record-id blinding key: always derived from epoch 1 (§2.1), so that record ids stay
    /// stable across revocations.
    pub fn record_id_key(&self) -> Result<SymmetricKey, EpochError> {
        Ok(self.secret(1)?.record_id_key(&self.account))
    }
}

impl fmt::Debug for EpochKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EpochKeys")
            .field("account", &self.account)
            .field("epochs", &self.secrets.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The account key introduced by the rotation that starts the epoch whose secret is `secret`
/// (docs/PROTOCOL.md §4): `Ed25519 seed = HKDF(secret, account_id, "kith/v1/account-key", 32)`.
///
/// Deriving it from the epoch secret means sealing the new epoch to the remaining devices also
/// hands them the new account key, and lets them check the secret against the signed roster.
pub fn account_key_for_epoch(account: &AccountId, secret: &EpochSecret) -> AccountSigningKey {
    let mut seed = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA256's 8160-byte limit: `expand` cannot fail here.
    let _ = Hkdf::<Sha256>::new(Some(account.as_bytes()), secret.expose())
        .expand(labels::ACCOUNT_KEY.as_bytes(), &mut seed[..]);
    // A 32-byte seed is always a valid Ed25519 secret key.
    match AccountSigningKey::from_secret_bytes(&seed[..]) {
        Ok(key) => key,
        Err(_) => unreachable!("a 32-byte seed is a valid Ed25519 secret key"),
    }
}

/// What the relay may read of a sealed epoch key without opening it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealedEpochKeyView {
    /// The account.
    pub account: AccountId,
    /// The device it is sealed to.
    pub recipient: DeviceId,
    /// The epoch.
    pub epoch: u64,
}

/// A sealed epoch key, decoded and with every field of the right length.
struct ParsedSealedKey {
    view: SealedEpochKeyView,
    key_id: [u8; KEY_ID_LEN],
    encapped_key: Vec<u8>,
    ciphertext: Vec<u8>,
}

fn fixed<const N: usize>(field: &'static str, bytes: &[u8]) -> Result<[u8; N], EpochError> {
    <[u8; N]>::try_from(bytes).map_err(|_| EpochError::BadLength {
        field,
        expected: N,
        actual: bytes.len(),
    })
}

fn parse_sealed(bytes: &[u8]) -> Result<ParsedSealedKey, EpochError> {
    if bytes.len() > limits::MAX_SEALED_EPOCH_KEY_BYTES {
        return Err(EpochError::TooLarge {
            len: bytes.len(),
            max: limits::MAX_SEALED_EPOCH_KEY_BYTES,
        });
    }
    let sealed = proto::SealedEpochKey::decode(bytes).map_err(EpochError::Malformed)?;
    let account = AccountId::from_bytes(fixed("account_id", &sealed.account_id)?);
    let recipient =
        DeviceId::from_bytes(fixed("recipient_device_id", &sealed.recipient_device_id)?);
    if sealed.epoch == 0 {
        return Err(EpochError::EpochZero);
    }
    let key_id = fixed::<KEY_ID_LEN>("key_id", &sealed.key_id)?;
    fixed::<ENCAPPED_KEY_LEN>("encapped_key", &sealed.encapped_key)?;
    fixed::<SEALED_SECRET_LEN>("ciphertext", &sealed.ciphertext)?;
    Ok(ParsedSealedKey {
        view: SealedEpochKeyView {
            account,
            recipient,
            epoch: sealed.epoch,
        },
        key_id,
        encapped_key: sealed.encapped_key,
        ciphertext: sealed.ciphertext,
    })
}

/// HPKE `info` of a sealed epoch key:
/// `LP("kith/v1/sealed-epoch-key") || LP(account_id) || LP(recipient) || LP(u64be(epoch)) || LP(key_id)`.
fn sealed_key_info(
    account: &AccountId,
    recipient: &DeviceId,
    epoch: u64,
    key_id: &[u8; KEY_ID_LEN],
) -> Vec<u8> {
    lp_concat(&[
        labels::SEALED_EPOCH_KEY.as_bytes(),
        account.as_bytes(),
        recipient.as_bytes(),
        &epoch.to_be_bytes(),
        key_id,
    ])
}

/// The fields a sealed key's signature covers, in order: account id, recipient, `u64be(epoch)`,
/// key id, encapsulation, ciphertext.
fn sealed_key_signed_fields(sealed: &proto::SealedEpochKey) -> [Vec<u8>; 6] {
    [
        sealed.account_id.clone(),
        sealed.recipient_device_id.clone(),
        sealed.epoch.to_be_bytes().to_vec(),
        sealed.key_id.clone(),
        sealed.encapped_key.clone(),
        sealed.ciphertext.clone(),
    ]
}

/// Signs an encoded sealed epoch key with the account key of its epoch (§5: what lets a holder
/// of that key replace another device's sealed key of an epoch that started). Returns the
/// encoding with `signature` set.
pub fn sign_sealed_epoch_key(
    sealed: &[u8],
    epoch_account_key: &AccountSigningKey,
) -> Result<Vec<u8>, EpochError> {
    parse_sealed(sealed)?;
    let mut key = proto::SealedEpochKey::decode(sealed).map_err(EpochError::Malformed)?;
    let fields = sealed_key_signed_fields(&key);
    let refs: Vec<&[u8]> = fields.iter().map(Vec::as_slice).collect();
    key.signature = epoch_account_key
        .sign(labels::SEALED_EPOCH_KEY_SIGNATURE, &refs)
        .to_bytes()
        .to_vec();
    Ok(key.encode_to_vec())
}

/// Checks that an encoded sealed epoch key is signed by `epoch_account_key`, the account key of
/// its epoch ([`sign_sealed_epoch_key`]).
pub fn verify_sealed_epoch_key_signature(
    sealed: &[u8],
    epoch_account_key: &AccountVerifyingKey,
) -> Result<(), EpochError> {
    let view = parse_sealed(sealed)?.view;
    let key = proto::SealedEpochKey::decode(sealed).map_err(EpochError::Malformed)?;
    let bad = EpochError::BadSignature { epoch: view.epoch };
    let signature = crate::keys::Signature::from_slice(&key.signature).map_err(|_| bad.clone())?;
    let fields = sealed_key_signed_fields(&key);
    let refs: Vec<&[u8]> = fields.iter().map(Vec::as_slice).collect();
    epoch_account_key
        .verify(labels::SEALED_EPOCH_KEY_SIGNATURE, &refs, &signature)
        .map_err(|_| bad)
}

/// Whether an encoded sealed epoch key carries a signature (field 7, §5), which relays and
/// receivers then check; `false` for bytes that do not decode.
pub fn sealed_epoch_key_is_signed(sealed: &[u8]) -> bool {
    proto::SealedEpochKey::decode(sealed).is_ok_and(|key| !key.signature.is_empty())
}

/// Reads the cleartext fields of a sealed epoch key (bounded decode, every length checked),
/// without opening it. The relay indexes stored keys by these.
pub fn peek_sealed_epoch_key(bytes: &[u8]) -> Result<SealedEpochKeyView, EpochError> {
    parse_sealed(bytes).map(|parsed| parsed.view)
}

/// Seals the secret of `epoch` to one device (encoded `SealedEpochKey`, §5).
///
/// # Panics
/// Never: X-Wing encapsulation to a parsed public key and the first seal of a fresh HPKE context
/// cannot fail.
pub fn seal_epoch_key(
    account: &AccountId,
    recipient: &DeviceId,
    recipient_key: &DeviceAgreementPublicKey,
    epoch: u64,
    secret: &EpochSecret,
    rng: &mut impl CryptoRng,
) -> Vec<u8> {
    let key_id = secret.key_id(account, epoch);
    let info = sealed_key_info(account, recipient, epoch, &key_id);
    let sealed = match hpke_seal(recipient_key, None, &info, secret.expose(), rng) {
        Ok(sealed) => sealed,
        Err(error) => unreachable!("HPKE base-mode seal cannot fail: {error}"),
    };
    proto::SealedEpochKey {
        account_id: account.as_bytes().to_vec(),
        recipient_device_id: recipient.as_bytes().to_vec(),
        epoch,
        key_id: key_id.to_vec(),
        encapped_key: sealed.encapped_key,
        ciphertext: sealed.ciphertext,
        signature: Vec::new(),
    }
    .encode_to_vec()
}

/// Opens a sealed epoch key addressed to this device of this account, and checks the opened
/// secret against its key id. Returns the epoch and its secret.
///
/// The checks run in the order of the errors' precision: decoding, account, recipient, then
/// decryption and the key id.
pub fn open_epoch_key(
    bytes: &[u8],
    account: &AccountId,
    me: &DeviceId,
    my_key: &DeviceAgreementKey,
) -> Result<(u64, EpochSecret), EpochError> {
    let parsed = parse_sealed(bytes)?;
    let view = parsed.view;
    if view.account != *account {
        return Err(EpochError::WrongAccount {
            expected: *account,
            found: view.account,
        });
    }
    if view.recipient != *me {
        return Err(EpochError::WrongRecipient {
            expected: *me,
            found: view.recipient,
        });
    }
    let info = sealed_key_info(account, me, view.epoch, &parsed.key_id);
    let plaintext = hpke_open(
        my_key,
        None,
        &info,
        &parsed.encapped_key,
        &parsed.ciphertext,
    )
    .map_err(|_| EpochError::DecryptFailed)?;
    let secret = EpochSecret::from_slice(&plaintext).map_err(|_| EpochError::BadLength {
        field: "secret",
        expected: EpochSecret::LEN,
        actual: plaintext.len(),
    })?;
    let expected = secret.key_id(account, view.epoch);
    if !bool::from(expected[..].ct_eq(&parsed.key_id[..])) {
        return Err(EpochError::KeyIdMismatch { epoch: view.epoch });
    }
    Ok((view.epoch, secret))
}

/// An HPKE encapsulation and ciphertext.
pub(crate) struct HpkeSealed {
    pub(crate) encapped_key: Vec<u8>,
    pub(crate) ciphertext: Vec<u8>,
}

/// Why [`hpke_open`] failed. Deliberately coarse: which step failed is no business of the
/// sender's.
#[derive(Debug)]
pub(crate) struct HpkeOpenError;

/// HPKE seal with Kith's suite (X-Wing, HKDF-SHA256, ChaCha20-Poly1305), base mode when `psk`
/// is `None`, PSK mode otherwise, empty AAD. `info` and `psk_id` must be short (they are
/// protocol constants and keys, far below hpke's 64 KiB limit).
pub(crate) fn hpke_seal(
    recipient: &DeviceAgreementPublicKey,
    psk: Option<(&[u8], &[u8])>,
    info: &[u8],
    plaintext: &[u8],
    rng: &mut impl CryptoRng,
) -> Result<HpkeSealed, hpke::HpkeError> {
    let mode = match psk {
        None => OpModeS::Base,
        Some((psk, psk_id)) => OpModeS::Psk(PskBundle::new(psk, psk_id)?),
    };
    let (encapped, mut context) =
        hpke::setup_sender_with_rng::<HpkeAead, HpkeKdf, Kem>(&mode, recipient.hpke(), info, rng)?;
    let ciphertext = context.seal(plaintext, b"")?;
    Ok(HpkeSealed {
        encapped_key: encapped.to_bytes().to_vec(),
        ciphertext,
    })
}

/// HPKE open, the counterpart of [`hpke_seal`]. The plaintext is zeroized on drop.
pub(crate) fn hpke_open(
    key: &DeviceAgreementKey,
    psk: Option<(&[u8], &[u8])>,
    info: &[u8],
    encapped_key: &[u8],
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, HpkeOpenError> {
    let mode = match psk {
        None => OpModeR::Base,
        Some((psk, psk_id)) => {
            OpModeR::Psk(PskBundle::new(psk, psk_id).map_err(|_| HpkeOpenError)?)
        }
    };
    let encapped =
        <Kem as hpke::Kem>::EncappedKey::from_bytes(encapped_key).map_err(|_| HpkeOpenError)?;
    let mut context =
        hpke::setup_receiver::<HpkeAead, HpkeKdf, Kem>(&mode, key.hpke(), &encapped, info)
            .map_err(|_| HpkeOpenError)?;
    context
        .open(ciphertext, b"")
        .map(Zeroizing::new)
        .map_err(|_| HpkeOpenError)
}

#[cfg(test)]
mod tests;
