//! Where a device keeps the secrets that never leave it: its signing key, its agreement key and
//! its store secret. [`FileKeyStore`] writes them to a file created with mode 0600; an app can
//! implement [`KeyStore`] over the operating system's keychain instead.

use std::io::Write;
use std::path::{Path, PathBuf};

use kith_protocol::keys::{DeviceAgreementKey, DeviceSigningKey, StoreSecret, system_rng};
use zeroize::Zeroizing;

/// The secrets of one device.
#[derive(Clone)]
pub struct DeviceSecrets {
    /// Signs envelopes and relay authentication.
    pub signing_key: DeviceSigningKey,
    /// Receives sealed epoch secrets and the link bundle.
    pub agreement_key: DeviceAgreementKey,
    /// Root of the local store key.
    pub store_secret: StoreSecret,
}

impl std::fmt::Debug for DeviceSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceSecrets")
            .field("device", &self.signing_key.device_id())
            .finish_non_exhaustive()
    }
}

impl DeviceSecrets {
    /// Fresh secrets for a new device.
    pub fn generate() -> Self {
        let mut rng = system_rng();
        Self {
            signing_key: DeviceSigningKey::generate(&mut rng),
            agreement_key: DeviceAgreementKey::generate(&mut rng),
            store_secret: StoreSecret::generate(&mut rng),
        }
    }

    const MAGIC: &'static [u8; 8] = b"KITHKEY1";
    const ENCODED_LEN: usize = 8 + 32 + 32 + 32;

    /// The key file encoding: magic, signing key, agreement key seed, store secret.
    /// The returned buffer is zeroized on drop.
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(Self::ENCODED_LEN));
        out.extend_from_slice(Self::MAGIC);
        out.extend_from_slice(&self.signing_key.to_secret_bytes()[..]);
        out.extend_from_slice(&self.agreement_key.to_secret_bytes());
        out.extend_from_slice(self.store_secret.expose());
        out
    }

    /// Parses the key file encoding.
    pub fn decode(bytes: &[u8]) -> Result<Self, KeyStoreError> {
        if bytes.len() != Self::ENCODED_LEN || &bytes[..8] != Self::MAGIC {
            return Err(KeyStoreError::Malformed);
        }
        let bad = |_| KeyStoreError::Malformed;
        Ok(Self {
            signing_key: DeviceSigningKey::from_secret_bytes(&bytes[8..40]).map_err(bad)?,
            agreement_key: DeviceAgreementKey::from_secret_bytes(&bytes[40..72]).map_err(bad)?,
            store_secret: StoreSecret::from_slice(&bytes[72..104]).map_err(bad)?,
        })
    }
}

/// Why the device secrets could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    /// Reading or writing the key file failed.
    #[error("device key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The key file is not a Kith device key file.
    #[error("the device key file is corrupt or not a Kith key file")]
    Malformed,
    /// The key file is readable by other users.
    #[error("device key file {0} is readable by other users: run `chmod 600` on it")]
    TooOpen(PathBuf),
    /// The platform keychain (or another backend) failed.
    #[error("key store backend failed: {0}")]
    Backend(String),
}

/// Storage for a device's secrets.
pub trait KeyStore: Send + Sync + std::fmt::Debug {
    /// Loads the secrets, `None` if this device has none yet.
    fn load(&self) -> Result<Option<DeviceSecrets>, KeyStoreError>;
    /// Saves the secrets durably, replacing any earlier ones.
    fn save(&self, secrets: &DeviceSecrets) -> Result<(), KeyStoreError>;
}

/// Secrets in a file with mode 0600, replaced atomically (write, fsync, rename).
#[derive(Debug, Clone)]
pub struct FileKeyStore {
    path: PathBuf,
}

impl FileKeyStore {
    /// A key store at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, source: std::io::Error) -> KeyStoreError {
        KeyStoreError::Io {
            path: self.path.clone(),
            source,
        }
    }
}

impl KeyStore for FileKeyStore {
    fn load(&self) -> Result<Option<DeviceSecrets>, KeyStoreError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => Zeroizing::new(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io(e)),
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&self.path)
                .map_err(|e| self.io(e))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(KeyStoreError::TooOpen(self.path.clone()));
            }
        }
        DeviceSecrets::decode(&bytes).map(Some)
    }

    fn save(&self, secrets: &DeviceSecrets) -> Result<(), KeyStoreError> {
        let tmp = self.path.with_extension("tmp");
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&tmp).map_err(|e| self.io(e))?;
        file.write_all(&secrets.encode()).map_err(|e| self.io(e))?;
        file.sync_all().map_err(|e| self.io(e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| self.io(e))?;
        // Make the rename itself durable.
        if let Some(dir) = self
            .path
            .parent()
            .and_then(|dir| std::fs::File::open(dir).ok())
        {
            let _ = dir.sync_all();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_round_trips_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileKeyStore::new(dir.path().join("device.key"));
        assert!(store.load().unwrap().is_none());
        let secrets = DeviceSecrets::generate();
        store.save(&secrets).unwrap();
        let loaded = store.load().unwrap().unwrap();
        assert_eq!(
            loaded.signing_key.device_id(),
            secrets.signing_key.device_id()
        );
        assert_eq!(loaded.store_secret, secrets.store_secret);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(store.path())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_world_readable_key_file_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = FileKeyStore::new(dir.path().join("device.key"));
        store.save(&DeviceSecrets::generate()).unwrap();
        std::fs::set_permissions(store.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(store.load(), Err(KeyStoreError::TooOpen(_))));
    }

    #[test]
    fn a_corrupt_key_file_is_refused() {
        assert!(matches!(
            DeviceSecrets::decode(b"KITHKEY1short"),
            Err(KeyStoreError::Malformed)
        ));
        assert!(matches!(
            DeviceSecrets::decode(&[0u8; 104]),
            Err(KeyStoreError::Malformed)
        ));
    }

    #[test]
    fn debug_shows_no_secret() {
        let secrets = DeviceSecrets::generate();
        let printed = format!("{secrets:?}");
        assert!(printed.contains("device:"));
        assert!(!printed.contains(&hex::encode(secrets.store_secret.expose())));
    }
}
