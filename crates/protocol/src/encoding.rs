//! The length-prefixed encoding (LP) under every hash, signature and HKDF input, and the labels.
//!
//! `LP(b)` is the 4-byte big-endian length of `b` followed by `b`. A sequence of LP fields can be
//! parsed back unambiguously, so no two different inputs to a signature or hash collide.

use sha2::{Digest, Sha256};

/// Every domain-separation label used by the protocol (docs/PROTOCOL.md §2–§10).
pub mod labels {
    /// `account_id = H(ACCOUNT_ID, genesis_key)`.
    pub const ACCOUNT_ID: &str = "kith/v1/account-id";
    /// `device_id = H(DEVICE_ID, signing_key)[..16]`.
    pub const DEVICE_ID: &str = "kith/v1/device-id";
    /// Commitment to an epoch secret.
    pub const EPOCH_KEY_ID: &str = "kith/v1/epoch-key-id";
    /// HKDF info of the content key.
    pub const CONTENT_KEY: &str = "kith/v1/content-key";
    /// HKDF info of the device-name key.
    pub const DEVICE_NAME: &str = "kith/v1/device-name";
    /// HKDF info of the record-id blinding key.
    pub const RECORD_ID: &str = "kith/v1/record-id";
    /// HKDF info of the account key that a rotation introduces, derived from the new epoch secret.
    pub const ACCOUNT_KEY: &str = "kith/v1/account-key";
    /// HKDF info of the local store key.
    pub const LOCAL_STORE: &str = "kith/v1/local-store";
    /// Sub-key of the local store key that encrypts stored values.
    pub const LOCAL_STORE_VALUES: &str = "kith/v1/local-store/values";
    /// Sub-key of the local store key that blinds index keys (e-mails, phones → record ids).
    pub const LOCAL_STORE_INDEX: &str = "kith/v1/local-store/index";
    /// HKDF info of the recovery KEM seed.
    pub const RECOVERY_KEM: &str = "kith/v1/recovery-kem";
    /// HKDF info of the recovery PSK, and its HPKE psk_id.
    pub const RECOVERY_PSK: &str = "kith/v1/recovery-psk";
    /// HKDF info of the recovery lookup id.
    pub const RECOVERY_LOOKUP: &str = "kith/v1/recovery-lookup";
    /// HPKE info of a recovery bundle.
    pub const RECOVERY_BUNDLE: &str = "kith/v1/recovery-bundle";
    /// Pairing slot id hash.
    pub const PAIRING_SLOT: &str = "kith/v1/pairing-slot";
    /// HPKE psk_id of a link bundle.
    pub const LINK_PSK: &str = "kith/v1/link-psk";
    /// HPKE info of a link bundle.
    pub const LINK_BUNDLE: &str = "kith/v1/link-bundle";
    /// HPKE info of a sealed epoch key.
    pub const SEALED_EPOCH_KEY: &str = "kith/v1/sealed-epoch-key";
    /// Signature context of a sealed epoch key.
    pub const SEALED_EPOCH_KEY_SIGNATURE: &str = "kith/v1/sealed-epoch-key-signature";
    /// Signature context of an envelope.
    pub const ENVELOPE_SIGNATURE: &str = "kith/v1/envelope";
    /// Hash of an envelope, chained through `prev_hash`.
    pub const ENVELOPE_HASH: &str = "kith/v1/envelope-hash";
    /// Signature context of a roster body.
    pub const ROSTER_SIGNATURE: &str = "kith/v1/roster";
    /// Hash of an encoded signed roster, named by its successor.
    pub const ROSTER_HASH: &str = "kith/v1/roster-hash";
    /// Signature context of an account-key rotation.
    pub const ACCOUNT_KEY_ROTATION: &str = "kith/v1/account-key-rotation";
    /// Signature context of relay authentication.
    pub const RELAY_AUTH: &str = "kith/v1/relay-auth";
    /// TLS exporter label for relay authentication.
    pub const RELAY_AUTH_EXPORTER: &str = "EXPORTER-kith/v1/relay-auth";
    /// Signature context of an account deletion.
    pub const DELETE_ACCOUNT: &str = "kith/v1/delete-account";
    /// AAD context of an encrypted device name.
    pub const DEVICE_NAME_AAD: &str = "kith/v1/device-name";
}

/// Appends `LP(field)` to `out`.
///
/// # Panics
/// Never for inputs the protocol produces: fields are bounded far below 4 GiB by `limits`.
pub fn push_lp(out: &mut Vec<u8>, field: &[u8]) {
    let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(field);
}

/// `LP(f1) || LP(f2) || …` as one buffer.
pub fn lp_concat(fields: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(fields.iter().map(|f| f.len() + 4).sum());
    for field in fields {
        push_lp(&mut out, field);
    }
    out
}

/// `H(label, fields…)`: SHA-256 over `LP(label) || LP(f1) || …`, streamed without a copy.
pub fn hash(label: &str, fields: &[&[u8]]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for field in std::iter::once(label.as_bytes()).chain(fields.iter().copied()) {
        let len = u32::try_from(field.len()).unwrap_or(u32::MAX);
        hasher.update(len.to_be_bytes());
        hasher.update(field);
    }
    hasher.finalize().into()
}

/// The message an Ed25519 signature covers: `LP(context) || LP(f1) || …`.
pub fn signing_input(context: &str, fields: &[&[u8]]) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(context.len() + 4 + fields.iter().map(|f| f.len() + 4).sum::<usize>());
    push_lp(&mut out, context.as_bytes());
    for field in fields {
        push_lp(&mut out, field);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lp_encoding_is_length_prefixed_big_endian() {
        assert_eq!(
            lp_concat(&[b"ab", b""]),
            vec![0, 0, 0, 2, b'a', b'b', 0, 0, 0, 0]
        );
    }

    #[test]
    fn moving_bytes_between_fields_changes_the_hash() {
        assert_ne!(
            hash("kith/v1/x", &[b"ab", b"c"]),
            hash("kith/v1/x", &[b"a", b"bc"])
        );
        assert_ne!(hash("kith/v1/x", &[b"ab"]), hash("kith/v1/y", &[b"ab"]));
    }

    #[test]
    fn signing_input_matches_hash_input() {
        let input = signing_input("kith/v1/x", &[b"ab", b"c"]);
        let direct: [u8; 32] = Sha256::digest(&input).into();
        assert_eq!(direct, hash("kith/v1/x", &[b"ab", b"c"]));
    }
}
