//! Key newtypes. Secrets are boxed, zeroized on drop and never printed: `Debug` shows the public
//! half's fingerprint at most. No raw `[u8; 32]` secret travels through a public API.
//!
//! Randomness is an argument (`&mut impl CryptoRng`); [`system_rng`] gives the operating
//! system's generator for callers that own I/O, and [`buffered_rng`] the same behind a
//! per-thread, fork-safe buffer, for nonces drawn once per sealed value.

use std::fmt;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use hkdf::Hkdf;
use hpke::{Deserializable, Serializable, kem::XWing};
use rand_core::CryptoRng;
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::encoding::{labels, signing_input};
use crate::ids::{AccountId, DeviceId};

/// The X-Wing KEM used for every sealed secret (ML-KEM-768 + X25519).
pub type Kem = XWing;

/// Length of an X-Wing public key.
pub const AGREEMENT_PUBLIC_KEY_LEN: usize = 1216;

/// The operating system's random generator, as a `CryptoRng`.
///
/// # Panics
/// When the operating system cannot provide randomness, which leaves nothing safe to do.
pub fn system_rng() -> rand_core::UnwrapErr<getrandom::SysRng> {
    rand_core::UnwrapErr(getrandom::SysRng)
}

mod buffered;
pub use buffered::{BufferedOsRng, buffered_rng};

/// Why a key or signature was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// A key had the wrong length.
    #[error("{kind} must be {expected} bytes, got {actual}")]
    Length {
        /// Which key.
        kind: &'static str,
        /// Its fixed length.
        expected: usize,
        /// The length received.
        actual: usize,
    },
    /// The bytes are not a valid point or key of that kind.
    #[error("{kind} is not a valid key")]
    Invalid {
        /// Which key.
        kind: &'static str,
    },
    /// A signature did not verify.
    #[error("{context} signature does not verify")]
    BadSignature {
        /// The signature's domain-separation context.
        context: &'static str,
    },
}

/// An Ed25519 signature (64 bytes).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature([u8; 64]);

impl Signature {
    /// Parses a signature from untrusted bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, KeyError> {
        <[u8; 64]>::try_from(bytes)
            .map(Self)
            .map_err(|_| KeyError::Length {
                kind: "signature",
                expected: 64,
                actual: bytes.len(),
            })
    }

    /// The raw bytes.
    pub fn to_bytes(&self) -> [u8; 64] {
        self.0
    }

    /// The raw bytes, borrowed.
    pub fn as_bytes(&self) -> &[u8; 64] {
        &self.0
    }

    pub(crate) fn to_dalek(self) -> ed25519_dalek::Signature {
        ed25519_dalek::Signature::from_bytes(&self.0)
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sig:{}…", hex::encode(&self.0[..8]))
    }
}

/// Verifies `signature` over `LP(context) || LP(fields)…` with `key`, strictly.
fn verify_ed25519(
    key: &VerifyingKey,
    context: &'static str,
    fields: &[&[u8]],
    signature: &Signature,
) -> Result<(), KeyError> {
    let message = signing_input(context, fields);
    key.verify_strict(&message, &signature.to_dalek())
        .map_err(|_| KeyError::BadSignature { context })
}

fn parse_ed25519_public(kind: &'static str, bytes: &[u8]) -> Result<VerifyingKey, KeyError> {
    let array = <[u8; 32]>::try_from(bytes).map_err(|_| KeyError::Length {
        kind,
        expected: 32,
        actual: bytes.len(),
    })?;
    let key = VerifyingKey::from_bytes(&array).map_err(|_| KeyError::Invalid { kind })?;
    if key.is_weak() {
        return Err(KeyError::Invalid { kind });
    }
    Ok(key)
}

macro_rules! ed25519_pair {
    (
        $(#[$sdoc:meta])* $secret:ident,
        $(#[$pdoc:meta])* $public:ident,
        $kind:literal, $prefix:literal
    ) => {
        $(#[$sdoc])*
        pub struct $secret(Box<SigningKey>);

        $(#[$pdoc])*
        #[derive(Clone, Copy, PartialEq, Eq)]
        pub struct $public(VerifyingKey);

        impl $secret {
            /// Generates a fresh key.
            pub fn generate(rng: &mut impl CryptoRng) -> Self {
                Self(Box::new(SigningKey::generate(rng)))
            }

            /// Restores a key from its 32 secret bytes (as written by [`Self::to_secret_bytes`]).
            pub fn from_secret_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
                let mut array = Zeroizing::new([0u8; 32]);
                if bytes.len() != 32 {
                    return Err(KeyError::Length { kind: $kind, expected: 32, actual: bytes.len() });
                }
                array.copy_from_slice(bytes);
                Ok(Self(Box::new(SigningKey::from_bytes(&array))))
            }

            /// A copy of the secret bytes, zeroized when the returned value drops.
            pub fn to_secret_bytes(&self) -> Zeroizing<[u8; 32]> {
                Zeroizing::new(self.0.to_bytes())
            }

            /// The public half.
            pub fn public(&self) -> $public {
                $public(self.0.verifying_key())
            }

            /// Signs `LP(context) || LP(field)…`.
            pub fn sign(&self, context: &str, fields: &[&[u8]]) -> Signature {
                let message = signing_input(context, fields);
                Signature(self.0.sign(&message).to_bytes())
            }
        }

        impl Clone for $secret {
            fn clone(&self) -> Self {
                Self(self.0.clone())
            }
        }

        impl fmt::Debug for $secret {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($secret), "({:?})"), self.public())
            }
        }

        impl $public {
            /// Parses a public key from untrusted bytes (32 bytes, a valid, non-weak point).
            pub fn from_slice(bytes: &[u8]) -> Result<Self, KeyError> {
                parse_ed25519_public($kind, bytes).map(Self)
            }

            /// The raw 32 bytes.
            pub fn to_bytes(&self) -> [u8; 32] {
                self.0.to_bytes()
            }

            /// The raw 32 bytes, borrowed.
            pub fn as_bytes(&self) -> &[u8; 32] {
                self.0.as_bytes()
            }

            /// Verifies a signature made with [`
            #[doc = stringify!($secret)]
            /// ::sign`].
            pub fn verify(
                &self,
                context: &'static str,
                fields: &[&[u8]],
                signature: &Signature,
            ) -> Result<(), KeyError> {
                verify_ed25519(&self.0, context, fields, signature)
            }

            #[allow(dead_code, reason = "used for device keys (batch verification), not account keys")]
            pub(crate) fn dalek(&self) -> &VerifyingKey {
                &self.0
            }
        }

        impl fmt::Debug for $public {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, ":{}"), hex::encode(self.0.as_bytes()))
            }
        }
    };
}

ed25519_pair!(
    /// The account key: signs rosters, key rotations and account deletion. Every device holds it.
    AccountSigningKey,
    /// The public account key.
    AccountVerifyingKey,
    "account key", "account-key"
);

ed25519_pair!(
    /// A device's signing key: signs envelopes and relay authentication. Never leaves the device.
    DeviceSigningKey,
    /// A device's public signing key, as listed in the roster.
    DeviceVerifyingKey,
    "device key", "device-key"
);

impl AccountVerifyingKey {
    /// The account id when this key is the genesis key.
    pub fn account_id(&self) -> AccountId {
        AccountId::for_genesis_key(self.0.as_bytes())
    }
}

impl DeviceVerifyingKey {
    /// The id of the device with this key.
    pub fn device_id(&self) -> DeviceId {
        DeviceId::for_signing_key(self.0.as_bytes())
    }
}

impl DeviceSigningKey {
    /// The id of this device.
    pub fn device_id(&self) -> DeviceId {
        self.public().device_id()
    }
}

/// A device's key-agreement key (X-Wing: ML-KEM-768 + X25519). Receives sealed secrets.
pub struct DeviceAgreementKey(Box<<Kem as hpke::Kem>::PrivateKey>);

/// The public half of a [`DeviceAgreementKey`] (1216 bytes).
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceAgreementPublicKey(Box<<Kem as hpke::Kem>::PublicKey>);

impl DeviceAgreementKey {
    /// Generates a fresh key pair.
    pub fn generate(rng: &mut impl CryptoRng) -> Self {
        let (secret, _) = <Kem as hpke::Kem>::gen_keypair_with_rng(rng);
        Self(Box::new(secret))
    }

    /// Derives a key pair deterministically from at least 32 bytes of secret seed material.
    pub fn derive(seed: &[u8]) -> Self {
        let (secret, _) = <Kem as hpke::Kem>::derive_keypair(seed);
        Self(Box::new(secret))
    }

    /// Restores a key from its 32-byte secret encoding.
    pub fn from_secret_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        <Kem as hpke::Kem>::PrivateKey::from_bytes(bytes)
            .map(|key| Self(Box::new(key)))
            .map_err(|_| KeyError::Length {
                kind: "agreement key",
                expected: 32,
                actual: bytes.len(),
            })
    }

    /// A copy of the 32 secret bytes, zeroized when the returned value drops.
    pub fn to_secret_bytes(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.0.to_bytes().to_vec())
    }

    /// The public half.
    pub fn public(&self) -> DeviceAgreementPublicKey {
        DeviceAgreementPublicKey(Box::new(<Kem as hpke::Kem>::sk_to_pk(&self.0)))
    }

    pub(crate) fn hpke(&self) -> &<Kem as hpke::Kem>::PrivateKey {
        &self.0
    }
}

impl Clone for DeviceAgreementKey {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl fmt::Debug for DeviceAgreementKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceAgreementKey({:?})", self.public())
    }
}

impl DeviceAgreementPublicKey {
    /// Parses an X-Wing public key from untrusted bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, KeyError> {
        if bytes.len() != AGREEMENT_PUBLIC_KEY_LEN {
            return Err(KeyError::Length {
                kind: "agreement public key",
                expected: AGREEMENT_PUBLIC_KEY_LEN,
                actual: bytes.len(),
            });
        }
        <Kem as hpke::Kem>::PublicKey::from_bytes(bytes)
            .map(|key| Self(Box::new(key)))
            .map_err(|_| KeyError::Invalid {
                kind: "agreement public key",
            })
    }

    /// The 1216-byte encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.to_bytes().to_vec()
    }

    /// A short fingerprint: the first 8 bytes of SHA-256 of the encoding, hex.
    pub fn fingerprint(&self) -> String {
        use sha2::Digest;
        hex::encode(&Sha256::digest(self.to_bytes())[..8])
    }

    pub(crate) fn hpke(&self) -> &<Kem as hpke::Kem>::PublicKey {
        &self.0
    }
}

impl fmt::Debug for DeviceAgreementPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "xwing:{}", self.fingerprint())
    }
}

macro_rules! secret_bytes {
    ($(#[$doc:meta])* $name:ident, $len:expr) => {
        $(#[$doc])*
        #[derive(Clone, Zeroize, ZeroizeOnDrop)]
        pub struct $name(Box<[u8; $len]>);

        impl $name {
            /// Length in bytes.
            pub const LEN: usize = $len;

            /// Generates a fresh random secret.
            pub fn generate(rng: &mut impl CryptoRng) -> Self {
                let mut bytes = Box::new([0u8; $len]);
                rng.fill_bytes(&mut bytes[..]);
                Self(bytes)
            }

            /// Wraps secret bytes from untrusted input (checked length).
            pub fn from_slice(bytes: &[u8]) -> Result<Self, KeyError> {
                if bytes.len() != $len {
                    return Err(KeyError::Length {
                        kind: stringify!($name),
                        expected: $len,
                        actual: bytes.len(),
                    });
                }
                let mut array = Box::new([0u8; $len]);
                array.copy_from_slice(bytes);
                Ok(Self(array))
            }

            /// The secret bytes. Callers that copy them must zeroize the copy.
            pub fn expose(&self) -> &[u8; $len] {
                &self.0
            }
        }

        impl PartialEq for $name {
            /// Constant-time comparison.
            fn eq(&self, other: &Self) -> bool {
                self.0[..].ct_eq(&other.0[..]).into()
            }
        }

        impl Eq for $name {}

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "(<secret>)"))
            }
        }
    };
}

secret_bytes!(
    /// The secret of one epoch: root of that epoch's content and device-name keys.
    EpochSecret, 32
);
secret_bytes!(
    /// A derived 256-bit symmetric key with one purpose (content, device names, local store…).
    SymmetricKey, 32
);
secret_bytes!(
    /// The one-time secret of a link code: authenticates the link bundle (HPKE PSK).
    PairingSecret, 32
);
secret_bytes!(
    /// A device's local secret: root of its local store key.
    StoreSecret, 32
);
secret_bytes!(
    /// The recovery key (160 bits), shown once to the person as dash-separated groups.
    RecoveryKey, 20
);

/// HKDF-SHA256 with one label per purpose.
fn hkdf(ikm: &[u8], salt: Option<&[u8]>, info: &str) -> SymmetricKey {
    let mut out = Box::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA256's 8160-byte limit: `expand` cannot fail here.
    let _ = Hkdf::<Sha256>::new(salt, ikm).expand(info.as_bytes(), &mut out[..]);
    SymmetricKey(out)
}

impl EpochSecret {
    /// The content key of this epoch (envelope encryption).
    pub fn content_key(&self, account: &AccountId) -> SymmetricKey {
        hkdf(&self.0[..], Some(account.as_bytes()), labels::CONTENT_KEY)
    }

    /// The device-name key of this epoch (names inside the roster).
    pub fn device_name_key(&self, account: &AccountId) -> SymmetricKey {
        hkdf(&self.0[..], Some(account.as_bytes()), labels::DEVICE_NAME)
    }

    /// The record-id blinding key. Protocol: derived from the secret of epoch 1 only.
    pub fn record_id_key(&self, account: &AccountId) -> SymmetricKey {
        hkdf(&self.0[..], Some(account.as_bytes()), labels::RECORD_ID)
    }

    /// The key id: a 16-byte commitment to this secret for `epoch` of `account`.
    pub fn key_id(&self, account: &AccountId, epoch: u64) -> [u8; 16] {
        let digest = crate::encoding::hash(
            labels::EPOCH_KEY_ID,
            &[account.as_bytes(), &epoch.to_be_bytes(), &self.0[..]],
        );
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        id
    }
}

impl SymmetricKey {
    /// `HMAC-SHA256(self, LP(f1) || LP(f2) || …)`: a keyed, blinded identifier of the fields.
    /// Used for record ids of imported contacts (docs/PROTOCOL.md §2.1) and local index keys.
    pub fn blind(&self, fields: &[&[u8]]) -> [u8; 32] {
        use hmac::{KeyInit, Mac};
        // HMAC accepts keys of any length: `new_from_slice` cannot fail for 32 bytes.
        let Ok(mut mac) = hmac::Hmac::<Sha256>::new_from_slice(&self.0[..]) else {
            return [0u8; 32];
        };
        for field in fields {
            let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
            mac.update(&len.to_be_bytes());
            mac.update(field);
        }
        mac.finalize().into_bytes().into()
    }

    /// This key prepared for blinding many identifiers: [`Blinder::blind`] gives what
    /// [`SymmetricKey::blind`] gives, without keying HMAC again for each.
    pub fn blinder(&self) -> Blinder {
        use hmac::KeyInit;
        // HMAC pads a key shorter than the hash's 64-byte block with zeros (RFC 2104), so the
        // padded block keys it as the 32 bytes do, through the constructor that cannot fail.
        let mut block = Zeroizing::new([0u8; 64]);
        block[..32].copy_from_slice(&self.0[..]);
        Blinder(hmac::Hmac::<Sha256>::new((&*block).into()))
    }

    /// Derives a sub-key of this key for one purpose (HKDF-SHA256, `info` = `label`).
    pub fn derive(&self, label: &str) -> SymmetricKey {
        hkdf(&self.0[..], None, label)
    }
}

/// A [`SymmetricKey`] keyed into HMAC-SHA256 once ([`SymmetricKey::blinder`]): the hash states
/// after the key's inner and outer pads, which each [`Blinder::blind`] copies. Keying HMAC
/// hashes two blocks; a short identifier (an email address, a phone number) then hashes two
/// more, so keying once halves the hashing of each blinding (the local identity index blinds
/// every identity of every record a pull writes). The states are as secret as the key: they
/// are zeroized on drop (sha2's `zeroize`) and never printed.
#[derive(Clone)]
pub struct Blinder(hmac::Hmac<Sha256>);

impl Blinder {
    /// [`SymmetricKey::blind`] of the key this was prepared from, byte for byte.
    pub fn blind(&self, fields: &[&[u8]]) -> [u8; 32] {
        use hmac::Mac;
        let mut mac = self.0.clone();
        for field in fields {
            let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
            mac.update(&len.to_be_bytes());
            mac.update(field);
        }
        mac.finalize().into_bytes().into()
    }
}

impl fmt::Debug for Blinder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Blinder(<secret>)")
    }
}

impl StoreSecret {
    /// The key that encrypts this device's local store.
    pub fn local_store_key(&self, device: &DeviceId) -> SymmetricKey {
        hkdf(&self.0[..], Some(device.as_bytes()), labels::LOCAL_STORE)
    }
}

/// Why a recovery key typed by a person was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecoveryKeyError {
    /// A character outside the recovery alphabet.
    #[error("recovery key contains an invalid character at position {position}")]
    InvalidCharacter {
        /// 0-based position among the non-separator characters.
        position: usize,
    },
    /// Too few or too many characters.
    #[error("recovery key must have {expected} characters (without dashes), got {actual}")]
    WrongLength {
        /// Expected count.
        expected: usize,
        /// Count received.
        actual: usize,
    },
}

/// Crockford's base32 alphabet: no I, L, O, U, so a handwritten key reads back unambiguously.
const RECOVERY_ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

impl RecoveryKey {
    /// Number of base32 characters in the text form (160 bits / 5).
    pub const TEXT_CHARS: usize = 32;

    /// The text form shown once to the person: 8 groups of 4 characters, dash-separated.
    /// The returned string is secret; it is zeroized on drop.
    pub fn to_text(&self) -> Zeroizing<String> {
        let mut chars = Zeroizing::new(String::with_capacity(40));
        let mut acc: u64 = 0;
        let mut bits = 0u32;
        let mut written = 0usize;
        for &byte in self.0.iter() {
            acc = (acc << 8) | u64::from(byte);
            bits += 8;
            while bits >= 5 {
                bits -= 5;
                let index = ((acc >> bits) & 31) as usize;
                if written > 0 && written.is_multiple_of(4) {
                    chars.push('-');
                }
                chars.push(char::from(RECOVERY_ALPHABET[index]));
                written += 1;
            }
        }
        acc.zeroize();
        chars
    }

    /// Parses the text form: dashes and spaces are ignored, case-insensitive, and the
    /// look-alikes `O`→0, `I`/`L`→1 are accepted.
    pub fn parse(text: &str) -> Result<Self, RecoveryKeyError> {
        let mut out = Box::new([0u8; 20]);
        let mut acc: u64 = 0;
        let mut bits = 0u32;
        let mut count = 0usize;
        let mut filled = 0usize;
        for c in text.chars().filter(|c| *c != '-' && !c.is_whitespace()) {
            let c = match c.to_ascii_uppercase() {
                'O' => '0',
                'I' | 'L' => '1',
                other => other,
            };
            let value = RECOVERY_ALPHABET
                .iter()
                .position(|&a| char::from(a) == c)
                .ok_or(RecoveryKeyError::InvalidCharacter { position: count })?;
            count += 1;
            if count > Self::TEXT_CHARS {
                continue;
            }
            acc = (acc << 5) | value as u64;
            bits += 5;
            if bits >= 8 {
                bits -= 8;
                out[filled] = (acc >> bits) as u8;
                filled += 1;
            }
        }
        acc.zeroize();
        if count != Self::TEXT_CHARS {
            out.zeroize();
            return Err(RecoveryKeyError::WrongLength {
                expected: Self::TEXT_CHARS,
                actual: count,
            });
        }
        Ok(Self(out))
    }

    /// The seed of the recovery KEM key pair.
    pub fn kem_key(&self) -> DeviceAgreementKey {
        let seed = hkdf(&self.0[..], None, labels::RECOVERY_KEM);
        DeviceAgreementKey::derive(seed.expose())
    }

    /// The PSK that authenticates the recovery bundle.
    pub fn psk(&self) -> SymmetricKey {
        hkdf(&self.0[..], None, labels::RECOVERY_PSK)
    }

    /// The id under which the relay stores the recovery bundle.
    pub fn lookup_id(&self) -> [u8; 32] {
        *hkdf(&self.0[..], None, labels::RECOVERY_LOOKUP).expose()
    }
}

/// What a device keeps so that it can re-seal the recovery bundle whenever the account key or
/// epoch changes, without the recovery key itself: the recovery KEM public key, the recovery
/// PSK and the lookup id (docs/PROTOCOL.md §6). It travels in the link bundle, so every device
/// can keep the recovery bundle current.
///
/// The PSK is secret: `Debug` prints nothing of it, and it is zeroized on drop. With it, a
/// device (or an ex-device) can seal *a* bundle that the recovery key opens, but cannot open
/// one: that needs the KEM secret key, derived from the recovery key only.
#[derive(Clone, PartialEq, Eq)]
pub struct RecoverySealing {
    public: DeviceAgreementPublicKey,
    psk: SymmetricKey,
    lookup_id: [u8; 32],
}

impl fmt::Debug for RecoverySealing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RecoverySealing(<secret>)")
    }
}

impl RecoverySealing {
    /// Puts the parts together (as decoded from a bundle or a device's store).
    pub fn new(public: DeviceAgreementPublicKey, psk: SymmetricKey, lookup_id: [u8; 32]) -> Self {
        Self {
            public,
            psk,
            lookup_id,
        }
    }

    /// The recovery KEM public key the bundle is sealed to.
    pub fn public(&self) -> &DeviceAgreementPublicKey {
        &self.public
    }

    /// The recovery PSK that authenticates the bundle's sealer.
    pub fn psk(&self) -> &SymmetricKey {
        &self.psk
    }

    /// The id under which the relay stores the recovery bundle.
    pub fn lookup_id(&self) -> &[u8; 32] {
        &self.lookup_id
    }
}

impl RecoveryKey {
    /// The sealing material devices keep (public key, PSK, lookup id).
    pub fn sealing(&self) -> RecoverySealing {
        RecoverySealing::new(self.kem_key().public(), self.psk(), self.lookup_id())
    }
}

impl PairingSecret {
    /// The pairing slot id on the relay: `H("kith/v1/pairing-slot", secret)`.
    pub fn slot_id(&self) -> [u8; 32] {
        crate::encoding::hash(labels::PAIRING_SLOT, &[&self.0[..]])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_secrets() {
        let mut rng = system_rng();
        let secret = EpochSecret::generate(&mut rng);
        let printed = format!("{secret:?}");
        assert_eq!(printed, "EpochSecret(<secret>)");
        let key = DeviceSigningKey::generate(&mut rng);
        let printed = format!("{key:?}");
        assert!(
            printed.starts_with("DeviceSigningKey(device-key:"),
            "{printed}"
        );
        assert!(!printed.contains(&hex::encode(*key.to_secret_bytes())));
    }

    #[test]
    fn signatures_are_domain_separated() {
        let key = AccountSigningKey::generate(&mut system_rng());
        let sig = key.sign(labels::ROSTER_SIGNATURE, &[b"body"]);
        assert!(
            key.public()
                .verify(labels::ROSTER_SIGNATURE, &[b"body"], &sig)
                .is_ok()
        );
        assert_eq!(
            key.public()
                .verify(labels::DELETE_ACCOUNT, &[b"body"], &sig),
            Err(KeyError::BadSignature {
                context: labels::DELETE_ACCOUNT
            })
        );
    }

    #[test]
    fn recovery_key_text_round_trips_and_tolerates_lookalikes() {
        let key = RecoveryKey::generate(&mut system_rng());
        let text = key.to_text();
        assert_eq!(text.len(), 32 + 7);
        assert_eq!(RecoveryKey::parse(&text).unwrap(), key);
        assert_eq!(
            RecoveryKey::parse(&text.to_lowercase().replace('-', " ")).unwrap(),
            key
        );
        let with_o = "O".repeat(32);
        assert_eq!(RecoveryKey::parse(&with_o).unwrap().expose(), &[0u8; 20]);
    }

    #[test]
    fn recovery_key_errors_are_precise() {
        assert_eq!(
            RecoveryKey::parse("ABC").unwrap_err(),
            RecoveryKeyError::WrongLength {
                expected: 32,
                actual: 3
            }
        );
        assert_eq!(
            RecoveryKey::parse("AB-U").unwrap_err(),
            RecoveryKeyError::InvalidCharacter { position: 2 }
        );
    }

    #[test]
    fn derived_keys_differ_by_label() {
        let account = AccountId::from_bytes([1; 32]);
        let epoch = EpochSecret::from_slice(&[9; 32]).unwrap();
        assert_ne!(epoch.content_key(&account), epoch.device_name_key(&account));
        assert_ne!(epoch.content_key(&account), epoch.record_id_key(&account));
        assert_ne!(epoch.key_id(&account, 1), epoch.key_id(&account, 2));
    }

    #[test]
    fn blinding_is_keyed_and_length_prefixed() {
        let a = SymmetricKey::from_slice(&[1; 32]).unwrap();
        let b = SymmetricKey::from_slice(&[2; 32]).unwrap();
        assert_ne!(a.blind(&[b"linkedin", b"x"]), b.blind(&[b"linkedin", b"x"]));
        assert_ne!(a.blind(&[b"linked", b"inx"]), a.blind(&[b"linkedin", b"x"]));
        assert_eq!(a.blind(&[b"linkedin", b"x"]), a.blind(&[b"linkedin", b"x"]));
        assert_ne!(a.derive("kith/v1/a"), a.derive("kith/v1/b"));
    }

    /// Blinded identifiers are stored (record ids, the local identity index): the bytes are
    /// HMAC-SHA256 of the length-prefixed fields (vectors computed with Python's `hmac`), by
    /// either way of keying.
    #[test]
    fn blinding_is_hmac_sha256_of_length_prefixed_fields() {
        let ones = SymmetricKey::from_slice(&[1; 32]).unwrap();
        let expected = "1606d77fd8dc0c77fe39860797cda4b30fa25f74552f6fbc310cf5acb3196570";
        assert_eq!(hex::encode(ones.blind(&[b"linkedin", b"x"])), expected);
        assert_eq!(
            hex::encode(ones.blinder().blind(&[b"linkedin", b"x"])),
            expected
        );
        let counting: Vec<u8> = (0..32).collect();
        let counting = SymmetricKey::from_slice(&counting).unwrap();
        let expected = "435d431c8299bde99e66d7aa9be3bffc0368cdbefdb42f1f5fa63d57fde2d74a";
        let identity: &[u8] = b"email:ada@example.com";
        assert_eq!(hex::encode(counting.blind(&[identity])), expected);
        let blinder = counting.blinder();
        // A prepared blinder is reusable: each blinding starts from the keyed state.
        for _ in 0..3 {
            assert_eq!(hex::encode(blinder.blind(&[identity])), expected);
        }
        assert_eq!(format!("{blinder:?}"), "Blinder(<secret>)");
    }

    proptest::proptest! {
        #[test]
        fn a_prepared_blinder_blinds_as_keying_each_time(
            key in proptest::array::uniform32(proptest::prelude::any::<u8>()),
            fields in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200), 0..5),
        ) {
            let key = SymmetricKey::from_slice(&key).unwrap();
            let fields: Vec<&[u8]> = fields.iter().map(Vec::as_slice).collect();
            let blinder = key.blinder();
            proptest::prop_assert_eq!(blinder.blind(&fields), key.blind(&fields));
            proptest::prop_assert_eq!(blinder.blind(&fields), key.blind(&fields));
        }
    }

    #[test]
    fn agreement_keys_round_trip() {
        let key = DeviceAgreementKey::generate(&mut system_rng());
        let restored = DeviceAgreementKey::from_secret_bytes(&key.to_secret_bytes()).unwrap();
        assert_eq!(restored.public(), key.public());
        let public = DeviceAgreementPublicKey::from_slice(&key.public().to_bytes()).unwrap();
        assert_eq!(public, key.public());
        assert!(matches!(
            DeviceAgreementPublicKey::from_slice(&[0; 10]),
            Err(KeyError::Length { .. })
        ));
    }

    #[test]
    fn weak_and_malformed_public_keys_are_rejected() {
        assert!(matches!(
            DeviceVerifyingKey::from_slice(&[0u8; 31]),
            Err(KeyError::Length {
                expected: 32,
                actual: 31,
                ..
            })
        ));
        // The identity point is a weak key.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(matches!(
            DeviceVerifyingKey::from_slice(&identity),
            Err(KeyError::Invalid { .. })
        ));
    }
}
