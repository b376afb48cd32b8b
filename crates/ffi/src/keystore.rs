//! The adapter from the app's [`KeyStorage`] (the platform keychain, implemented in Swift,
//! Kotlin or Python) to the client's [`KeyStore`]: kept thin on purpose, so a change of the
//! client's trait touches only this file.
//!
//! The secrets cross the FFI as the client's key file encoding ([`DeviceSecrets::encode`]):
//! one opaque blob per device, which the app stores as one keychain item. The copy the bindings
//! receive on load is zeroized once decoded; the app's own copies are the app's to keep in the
//! keychain only (never in files, logs or backups).

use std::sync::Arc;

use kith_client::keystore::{DeviceSecrets, KeyStore, KeyStoreError};
use zeroize::Zeroizing;

use crate::api::KeyStorage;

/// A [`KeyStore`] over the app's [`KeyStorage`].
pub(crate) struct ForeignKeyStore(pub(crate) Arc<dyn KeyStorage>);

impl std::fmt::Debug for ForeignKeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ForeignKeyStore")
    }
}

impl KeyStore for ForeignKeyStore {
    fn load(&self) -> Result<Option<DeviceSecrets>, KeyStoreError> {
        match self.0.load() {
            Ok(Some(bytes)) => DeviceSecrets::decode(&Zeroizing::new(bytes)).map(Some),
            Ok(None) => Ok(None),
            Err(e) => Err(KeyStoreError::Backend(e.to_string())),
        }
    }

    fn save(&self, secrets: &DeviceSecrets) -> Result<(), KeyStoreError> {
        self.0
            .save(secrets.encode().to_vec())
            .map_err(|e| KeyStoreError::Backend(e.to_string()))
    }
}

/// The client's key store for an optional app one: `None` means the key file in the home.
pub(crate) fn adapt(storage: Option<Arc<dyn KeyStorage>>) -> Option<Arc<dyn KeyStore>> {
    storage.map(|storage| Arc::new(ForeignKeyStore(storage)) as Arc<dyn KeyStore>)
}
