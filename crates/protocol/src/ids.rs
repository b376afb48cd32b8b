//! Identifiers: fixed-size newtypes parsed once from untrusted bytes.

use std::fmt;

use crate::encoding::{hash, labels};

/// The error for an identifier of the wrong length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{kind} must be {expected} bytes, got {actual}")]
pub struct IdLengthError {
    /// Which identifier.
    pub kind: &'static str,
    /// Its fixed length.
    pub expected: usize,
    /// The length received.
    pub actual: usize,
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $len:expr, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name([u8; $len]);

        impl $name {
            /// Length in bytes.
            pub const LEN: usize = $len;

            /// Wraps raw bytes.
            pub const fn from_bytes(bytes: [u8; $len]) -> Self {
                Self(bytes)
            }

            /// Parses an identifier from untrusted bytes of exactly [`Self::LEN`] bytes.
            pub fn from_slice(bytes: &[u8]) -> Result<Self, IdLengthError> {
                <[u8; $len]>::try_from(bytes).map(Self).map_err(|_| IdLengthError {
                    kind: stringify!($name),
                    expected: $len,
                    actual: bytes.len(),
                })
            }

            /// The raw bytes.
            pub const fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            /// Lowercase hex, as shown to people and used in file names.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// Parses lowercase or uppercase hex.
            pub fn from_hex(text: &str) -> Option<Self> {
                let mut bytes = [0u8; $len];
                hex::decode_to_slice(text, &mut bytes).ok()?;
                Some(Self(bytes))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, ":{}"), self.to_hex())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }
    };
}

id_type!(
    /// An account: `H("kith/v1/account-id", genesis account key)`.
    AccountId, 32, "account"
);
id_type!(
    /// A device: the first 16 bytes of `H("kith/v1/device-id", device signing key)`.
    DeviceId, 16, "device"
);
id_type!(
    /// A contact record: random, or a keyed hash of the source identity for imports.
    RecordId, 16, "record"
);

impl AccountId {
    /// The account id of a genesis account key (32-byte Ed25519 public key).
    pub fn for_genesis_key(genesis_key: &[u8; 32]) -> Self {
        Self(hash(labels::ACCOUNT_ID, &[genesis_key]))
    }
}

impl DeviceId {
    /// The device id of a device signing key (32-byte Ed25519 public key).
    pub fn for_signing_key(signing_key: &[u8; 32]) -> Self {
        let digest = hash(labels::DEVICE_ID, &[signing_key]);
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        Self(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_length_is_a_precise_error() {
        let err = DeviceId::from_slice(&[0u8; 15]).unwrap_err();
        assert_eq!(err.to_string(), "DeviceId must be 16 bytes, got 15");
    }

    #[test]
    fn debug_names_the_kind() {
        let id = DeviceId::from_bytes([0xab; 16]);
        assert_eq!(format!("{id:?}"), format!("device:{}", "ab".repeat(16)));
        assert_eq!(DeviceId::from_hex(&id.to_hex()), Some(id));
    }

    #[test]
    fn ids_are_domain_separated() {
        let key = [7u8; 32];
        let account = AccountId::for_genesis_key(&key);
        let device = DeviceId::for_signing_key(&key);
        assert_ne!(&account.as_bytes()[..16], device.as_bytes());
    }
}
