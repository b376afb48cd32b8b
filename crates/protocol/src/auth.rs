//! Device authentication to the relay (docs/PROTOCOL.md §10) and signed account deletion.
//!
//! The device signs the TLS session's exporter value together with the relay's challenge, so a
//! signature captured on one session is useless on any other.

use crate::encoding::labels;
use crate::ids::{AccountId, DeviceId};
use crate::keys::{
    AccountSigningKey, AccountVerifyingKey, DeviceSigningKey, DeviceVerifyingKey, KeyError,
    Signature,
};

/// Length of the relay's challenge nonce.
pub const CHALLENGE_LEN: usize = 32;
/// Length of the TLS exporter value both ends derive with
/// [`labels::RELAY_AUTH_EXPORTER`] and an empty context.
pub const EXPORTER_LEN: usize = 32;

/// Why an authentication or deletion signature was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The signature is not 64 bytes.
    #[error("malformed signature: {0}")]
    Malformed(KeyError),
    /// The signature does not verify under the expected key.
    #[error("{0}")]
    BadSignature(KeyError),
}

impl From<KeyError> for AuthError {
    fn from(error: KeyError) -> Self {
        match error {
            KeyError::BadSignature { .. } => AuthError::BadSignature(error),
            other => AuthError::Malformed(other),
        }
    }
}

/// The device's answer to a relay challenge.
pub fn sign_relay_auth(
    key: &DeviceSigningKey,
    exporter: &[u8; EXPORTER_LEN],
    nonce: &[u8; CHALLENGE_LEN],
    account: &AccountId,
    device: &DeviceId,
) -> Signature {
    key.sign(
        labels::RELAY_AUTH,
        &[exporter, nonce, account.as_bytes(), device.as_bytes()],
    )
}

/// Checks a device's answer to a challenge on this TLS session.
pub fn verify_relay_auth(
    key: &DeviceVerifyingKey,
    exporter: &[u8; EXPORTER_LEN],
    nonce: &[u8; CHALLENGE_LEN],
    account: &AccountId,
    device: &DeviceId,
    signature: &[u8],
) -> Result<(), AuthError> {
    let signature = Signature::from_slice(signature)?;
    key.verify(
        labels::RELAY_AUTH,
        &[exporter, nonce, account.as_bytes(), device.as_bytes()],
        &signature,
    )?;
    Ok(())
}

/// The account key's order to delete the account, bound to the roster version it saw.
pub fn sign_account_deletion(
    key: &AccountSigningKey,
    account: &AccountId,
    roster_version: u64,
) -> Signature {
    key.sign(
        labels::DELETE_ACCOUNT,
        &[account.as_bytes(), &roster_version.to_be_bytes()],
    )
}

/// Checks an account deletion order against the current account key.
pub fn verify_account_deletion(
    key: &AccountVerifyingKey,
    account: &AccountId,
    roster_version: u64,
    signature: &[u8],
) -> Result<(), AuthError> {
    let signature = Signature::from_slice(signature)?;
    key.verify(
        labels::DELETE_ACCOUNT,
        &[account.as_bytes(), &roster_version.to_be_bytes()],
        &signature,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::system_rng;

    fn setup() -> (DeviceSigningKey, AccountId, DeviceId) {
        let key = DeviceSigningKey::generate(&mut system_rng());
        let device = key.device_id();
        (key, AccountId::from_bytes([3; 32]), device)
    }

    #[test]
    fn auth_signature_verifies_on_its_own_session() {
        let (key, account, device) = setup();
        let sig = sign_relay_auth(&key, &[1; 32], &[2; 32], &account, &device);
        assert!(
            verify_relay_auth(
                &key.public(),
                &[1; 32],
                &[2; 32],
                &account,
                &device,
                sig.as_bytes()
            )
            .is_ok()
        );
    }

    #[test]
    fn auth_signature_from_another_session_is_rejected() {
        let (key, account, device) = setup();
        let sig = sign_relay_auth(&key, &[1; 32], &[2; 32], &account, &device);
        let other_session = verify_relay_auth(
            &key.public(),
            &[9; 32],
            &[2; 32],
            &account,
            &device,
            sig.as_bytes(),
        );
        assert!(matches!(other_session, Err(AuthError::BadSignature(_))));
        let other_nonce = verify_relay_auth(
            &key.public(),
            &[1; 32],
            &[8; 32],
            &account,
            &device,
            sig.as_bytes(),
        );
        assert!(matches!(other_nonce, Err(AuthError::BadSignature(_))));
        let other_account = AccountId::from_bytes([4; 32]);
        let wrong_account = verify_relay_auth(
            &key.public(),
            &[1; 32],
            &[2; 32],
            &other_account,
            &device,
            sig.as_bytes(),
        );
        assert!(matches!(wrong_account, Err(AuthError::BadSignature(_))));
    }

    #[test]
    fn truncated_signature_is_malformed() {
        let (key, account, device) = setup();
        let result = verify_relay_auth(
            &key.public(),
            &[1; 32],
            &[2; 32],
            &account,
            &device,
            &[0; 63],
        );
        assert!(matches!(result, Err(AuthError::Malformed(_))));
    }

    #[test]
    fn deletion_is_bound_to_the_roster_version() {
        let key = AccountSigningKey::generate(&mut system_rng());
        let account = key.public().account_id();
        let sig = sign_account_deletion(&key, &account, 3);
        assert!(verify_account_deletion(&key.public(), &account, 3, sig.as_bytes()).is_ok());
        assert!(verify_account_deletion(&key.public(), &account, 4, sig.as_bytes()).is_err());
    }
}
