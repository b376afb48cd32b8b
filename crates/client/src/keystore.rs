//! Where a device keeps the secrets that never leave it: its signing key, its agreement key and
//! its store secret.
//!
//! [`FileKeyStore`] keeps them in a file of mode 0600 in the device's home, in one of three
//! formats (docs/PROTOCOL.md §2.2):
//!
//! - **sealed by the keychain** ([`FileKeyStore::with_keychain`]): the secrets sealed with
//!   XChaCha20-Poly1305 under a random wrapping key kept in the operating system's keychain
//!   ([`Keychain`]: the macOS Keychain, the Windows Credential Manager, the Linux kernel
//!   keyring), so a copy of the file alone yields nothing and no passphrase is asked;
//! - **encrypted** with a passphrase ([`FileKeyStore::with_passphrase`]): the secrets sealed with
//!   XChaCha20-Poly1305 under a key derived from the passphrase by Argon2id ([`KdfParams`]), so
//!   a copy of the file (a backup, a stolen laptop's disk) yields nothing without the
//!   passphrase;
//! - **plain** ([`FileKeyStore::new`]): the secrets as they are, protected only by the file's
//!   mode. The last resort, for a device with neither a passphrase nor a keychain, and the
//!   format of every home made by Kith 0.1. It still opens; a store with a passphrase that
//!   loads a plain file rewrites it encrypted (the migration).
//!
//! Every store opens every format: a sealed file opens through the keychain whatever the
//! store was made with, so `Device::open` reads it back without being told.
//!
//! An app can implement [`KeyStore`] over its own secure storage instead (the Android
//! Keystore, an iOS keychain access group, a hardware token) and pass it to
//! [`Device::create_with_keystore`](crate::Device::create_with_keystore),
//! [`PendingLink::new_with_keystore`](crate::PendingLink::new_with_keystore),
//! [`Device::recover_with_keystore`](crate::Device::recover_with_keystore) and
//! [`Device::open_with_keystore`](crate::Device::open_with_keystore).
//!
//! ```
//! use kith_client::keystore::{DeviceSecrets, FileKeyStore, KeyStore, Passphrase};
//! # let home = tempfile::tempdir().unwrap();
//! let store = FileKeyStore::with_passphrase(
//!     home.path().join("device.key"),
//!     Passphrase::new("correct horse battery staple"),
//! );
//! let secrets = DeviceSecrets::generate();
//! store.save(&secrets)?;
//! assert!(FileKeyStore::in_home(home.path()).load().is_err(), "needs the passphrase");
//! assert_eq!(store.load()?.unwrap().store_secret, secrets.store_secret);
//! # Ok::<(), kith_client::keystore::KeyStoreError>(())
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use kith_protocol::keys::{DeviceAgreementKey, DeviceSigningKey, StoreSecret, system_rng};
use rand_core::Rng;
use zeroize::Zeroizing;

mod keychain;
pub use keychain::{Keychain, Persistence as KeychainPersistence, WrappingKey};

/// The name of the device key file in a device's home.
pub const KEY_FILE_NAME: &str = "device.key";

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
#[non_exhaustive]
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
    /// The key file is encrypted and no passphrase was given.
    #[error("device key file {0} is encrypted with a passphrase: give it (KITH_PASSPHRASE)")]
    PassphraseRequired(PathBuf),
    /// The passphrase does not open the key file (or the file was altered).
    #[error("wrong passphrase for the device key file {0} (or the file was altered)")]
    WrongPassphrase(PathBuf),
    /// The key file asks for a passphrase KDF cost beyond what this version accepts.
    #[error(
        "device key file {0} asks for an Argon2id cost beyond the accepted bounds \
         (at most 1 GiB, 64 passes, 16 lanes)"
    )]
    KdfTooCostly(PathBuf),
    /// The key file is sealed under a keychain entry this keychain does not hold (the Linux
    /// kernel keyring forgets at reboot; another user or machine has another keychain).
    #[error(
        "device key file {path} is sealed under the keychain entry \"{entry}\", which this \
         keychain does not hold"
    )]
    KeychainEntryMissing {
        /// The file.
        path: PathBuf,
        /// The keychain entry it names.
        entry: String,
    },
    /// The key file sealed by the keychain does not open under the key the keychain holds for
    /// it: the file (or the keychain entry) was altered or replaced.
    #[error(
        "device key file {0} does not open under its key in the keychain: the file or the \
         keychain entry was altered"
    )]
    Tampered(PathBuf),
}

/// Storage for a device's secrets.
pub trait KeyStore: Send + Sync + std::fmt::Debug {
    /// Loads the secrets, `None` if this device has none yet.
    fn load(&self) -> Result<Option<DeviceSecrets>, KeyStoreError>;
    /// Saves the secrets durably, replacing any earlier ones.
    fn save(&self, secrets: &DeviceSecrets) -> Result<(), KeyStoreError>;
    /// Whether secrets are stored, without unlocking them (a device being set up checks that
    /// its home holds none). The default loads them.
    fn exists(&self) -> Result<bool, KeyStoreError> {
        Ok(self.load()?.is_some())
    }
}

/// A passphrase that unlocks a device key file. Zeroized on drop; never printed.
#[derive(Clone)]
pub struct Passphrase(Zeroizing<String>);

impl Passphrase {
    /// A passphrase as typed. It is normalized to Unicode NFC before use, so the same
    /// passphrase typed on systems that compose accents differently opens the same file.
    pub fn new(text: impl Into<String>) -> Self {
        Self(Zeroizing::new(text.into()))
    }

    /// Whether nothing was typed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether two passphrases are the same (after normalization), in constant time.
    pub fn matches(&self, other: &Passphrase) -> bool {
        use subtle::ConstantTimeEq;
        let (a, b) = (self.normalized(), other.normalized());
        a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
    }

    fn normalized(&self) -> Zeroizing<String> {
        use unicode_normalization::UnicodeNormalization;
        Zeroizing::new(self.0.nfc().collect())
    }
}

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrase(<secret>)")
    }
}

/// The cost of Argon2id (RFC 9106) that turns a passphrase into the key file's key, stored in
/// the file so that it can be raised later without breaking older files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory, in KiB.
    pub memory_kib: u32,
    /// Passes over the memory.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl KdfParams {
    /// What new key files use: 19 MiB, 2 passes, 1 lane (OWASP's recommended minimum for
    /// Argon2id). Every `kith` command is a process that unlocks the key once, and the
    /// background budget of a phone app is about 24 MB, so the memory stays below that; about
    /// 45 ms per unlock on a 2-core VM (BENCHMARKS.md). An app that unlocks often keeps the
    /// unlocked [`DeviceSecrets`] (or uses a keychain) instead.
    pub const DEFAULT: Self = Self {
        memory_kib: 19 * 1024,
        iterations: 2,
        parallelism: 1,
    };

    /// The most any key file may ask for: bounded before anything is allocated.
    const MAX: Self = Self {
        memory_kib: 1 << 20,
        iterations: 64,
        parallelism: 16,
    };

    fn within_bounds(&self) -> bool {
        (1..=Self::MAX.memory_kib).contains(&self.memory_kib)
            && (1..=Self::MAX.iterations).contains(&self.iterations)
            && (1..=Self::MAX.parallelism).contains(&self.parallelism)
    }

    /// The 32-byte key of `passphrase` and `salt`, `None` if Argon2 refuses the parameters.
    fn derive(&self, passphrase: &Passphrase, salt: &[u8]) -> Option<Zeroizing<[u8; 32]>> {
        let params =
            argon2::Params::new(self.memory_kib, self.iterations, self.parallelism, Some(32))
                .ok()?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut key = Zeroizing::new([0u8; 32]);
        argon
            .hash_password_into(passphrase.normalized().as_bytes(), salt, &mut key[..])
            .ok()?;
        Some(key)
    }
}

/// How a device key file protects the secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyProtection {
    /// The secrets as they are, in a file of mode 0600 (Kith 0.1's format; the last resort).
    Plain,
    /// Encrypted under a passphrase, with this KDF cost.
    Passphrase(KdfParams),
    /// Sealed under a wrapping key kept in the operating system's keychain.
    Keychain,
}

/// The encrypted key file: `KITHKEY2`, u32be memory_kib, u32be iterations, u32be parallelism,
/// salt (16), nonce (24), then the plain encoding sealed with XChaCha20-Poly1305 under the
/// Argon2id key, the 60 bytes before it as associated data.
mod sealed_format {
    pub const MAGIC: &[u8; 8] = b"KITHKEY2";
    pub const SALT_LEN: usize = 16;
    pub const NONCE_LEN: usize = 24;
    pub const HEADER_LEN: usize = 8 + 12 + SALT_LEN + NONCE_LEN;
    pub const LEN: usize = HEADER_LEN + super::DeviceSecrets::ENCODED_LEN + 16;
}

/// Appends the plain encoding of `secrets` sealed with XChaCha20-Poly1305 under `key` to
/// `header`, which is bound as associated data.
fn seal_secrets(
    key: &[u8; 32],
    nonce: &XNonce,
    secrets: &DeviceSecrets,
    header: &mut Vec<u8>,
) -> Result<(), KeyStoreError> {
    let sealed = XChaCha20Poly1305::new(key.into())
        .encrypt(
            nonce,
            Payload {
                msg: &secrets.encode(),
                aad: header,
            },
        )
        .map_err(|_| KeyStoreError::Malformed)?;
    header.extend_from_slice(&sealed);
    Ok(())
}

/// Opens what [`seal_secrets`] made: `file` is the header (its first `header_len` bytes, the
/// associated data) and the ciphertext. `None` if it does not open under `key`; an error if
/// it opens to something that is not a key file's plain encoding.
fn open_secrets(
    key: &[u8; 32],
    nonce: &XNonce,
    file: &[u8],
    header_len: usize,
) -> Option<Result<DeviceSecrets, KeyStoreError>> {
    let plain = XChaCha20Poly1305::new(key.into())
        .decrypt(
            nonce,
            Payload {
                msg: &file[header_len..],
                aad: &file[..header_len],
            },
        )
        .map(Zeroizing::new)
        .ok()?;
    Some(DeviceSecrets::decode(&plain))
}

/// Secrets in a file with mode 0600, replaced atomically (write, fsync, rename): encrypted
/// under a passphrase, or plain as the last resort (see the module docs).
#[derive(Debug, Clone)]
pub struct FileKeyStore {
    path: PathBuf,
    passphrase: Option<Passphrase>,
    keychain: Option<Keychain>,
    kdf: KdfParams,
}

impl FileKeyStore {
    /// A key store at `path` without a passphrase: saves plain files, opens plain ones, and
    /// refuses an encrypted one with [`KeyStoreError::PassphraseRequired`].
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            passphrase: None,
            keychain: None,
            kdf: KdfParams::DEFAULT,
        }
    }

    /// The key file of the device whose home is `home`.
    pub fn in_home(home: &Path) -> Self {
        Self::new(home.join(KEY_FILE_NAME))
    }

    /// A key store at `path` that saves the secrets encrypted under `passphrase`. It opens
    /// files encrypted under that passphrase, and plain ones, which it rewrites encrypted as
    /// it loads them (the migration of a Kith 0.1 home).
    pub fn with_passphrase(path: impl Into<PathBuf>, passphrase: Passphrase) -> Self {
        Self {
            passphrase: Some(passphrase),
            ..Self::new(path)
        }
    }

    /// A key store at `path` that saves the secrets sealed under a new wrapping key put in
    /// `keychain` (check first that it works: [`Keychain::probe`]). Saving again seals under a
    /// new entry and deletes the old one.
    pub fn with_keychain(path: impl Into<PathBuf>, keychain: Keychain) -> Self {
        Self {
            keychain: Some(keychain),
            ..Self::new(path)
        }
    }

    /// The keychain that opens sealed files: the one given, else the operating system's.
    fn keychain(&self) -> Keychain {
        self.keychain.clone().unwrap_or_else(Keychain::for_opening)
    }

    /// Uses `kdf` for the files it saves (the default is [`KdfParams::DEFAULT`]).
    pub fn with_kdf(mut self, kdf: KdfParams) -> Self {
        self.kdf = kdf;
        self
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How the file protects the secrets, without unlocking it; `None` if there is no file.
    pub fn protection(&self) -> Result<Option<KeyProtection>, KeyStoreError> {
        let bytes = match self.read()? {
            Some(bytes) => bytes,
            None => return Ok(None),
        };
        if bytes.starts_with(sealed_format::MAGIC) {
            return Ok(Some(KeyProtection::Passphrase(
                Self::sealed_params(&bytes).ok_or(KeyStoreError::Malformed)?,
            )));
        }
        if bytes.starts_with(keychain::format::MAGIC) {
            if bytes.len() != keychain::format::LEN {
                return Err(KeyStoreError::Malformed);
            }
            return Ok(Some(KeyProtection::Keychain));
        }
        DeviceSecrets::decode(&bytes)?;
        Ok(Some(KeyProtection::Plain))
    }

    fn io(&self, source: std::io::Error) -> KeyStoreError {
        KeyStoreError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// The file's bytes (refused if other users can read it), `None` if there is none.
    fn read(&self) -> Result<Option<Zeroizing<Vec<u8>>>, KeyStoreError> {
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
        Ok(Some(bytes))
    }

    fn sealed_params(bytes: &[u8]) -> Option<KdfParams> {
        if bytes.len() != sealed_format::LEN {
            return None;
        }
        let word = |at: usize| {
            bytes
                .get(at..at + 4)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map(u32::from_be_bytes)
        };
        Some(KdfParams {
            memory_kib: word(8)?,
            iterations: word(12)?,
            parallelism: word(16)?,
        })
    }

    /// Opens the encrypted encoding.
    fn open_sealed(
        &self,
        bytes: &[u8],
        passphrase: &Passphrase,
    ) -> Result<DeviceSecrets, KeyStoreError> {
        use sealed_format::{HEADER_LEN, NONCE_LEN, SALT_LEN};
        let params = Self::sealed_params(bytes).ok_or(KeyStoreError::Malformed)?;
        if !params.within_bounds() {
            return Err(KeyStoreError::KdfTooCostly(self.path.clone()));
        }
        let salt = &bytes[20..20 + SALT_LEN];
        let nonce = XNonce::try_from(&bytes[20 + SALT_LEN..20 + SALT_LEN + NONCE_LEN])
            .map_err(|_| KeyStoreError::Malformed)?;
        let key = params
            .derive(passphrase, salt)
            .ok_or(KeyStoreError::Malformed)?;
        open_secrets(&key, &nonce, bytes, HEADER_LEN)
            .ok_or_else(|| KeyStoreError::WrongPassphrase(self.path.clone()))?
    }

    /// The encrypted encoding of `secrets`.
    fn seal(
        &self,
        secrets: &DeviceSecrets,
        passphrase: &Passphrase,
    ) -> Result<Vec<u8>, KeyStoreError> {
        use sealed_format::{MAGIC, NONCE_LEN, SALT_LEN};
        if !self.kdf.within_bounds() {
            return Err(KeyStoreError::KdfTooCostly(self.path.clone()));
        }
        let mut rng = system_rng();
        let mut salt = [0u8; SALT_LEN];
        rng.fill_bytes(&mut salt);
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let mut out = Vec::with_capacity(sealed_format::LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.kdf.memory_kib.to_be_bytes());
        out.extend_from_slice(&self.kdf.iterations.to_be_bytes());
        out.extend_from_slice(&self.kdf.parallelism.to_be_bytes());
        out.extend_from_slice(&salt);
        out.extend_from_slice(&nonce);
        let key = self
            .kdf
            .derive(passphrase, &salt)
            .ok_or(KeyStoreError::KdfTooCostly(self.path.clone()))?;
        seal_secrets(&key, &XNonce::from(nonce), secrets, &mut out)?;
        Ok(out)
    }

    fn write(&self, bytes: &[u8]) -> Result<(), KeyStoreError> {
        let tmp = self.path.with_extension("tmp");
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&tmp).map_err(|e| self.io(e))?;
        file.write_all(bytes).map_err(|e| self.io(e))?;
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

impl KeyStore for FileKeyStore {
    fn load(&self) -> Result<Option<DeviceSecrets>, KeyStoreError> {
        let Some(bytes) = self.read()? else {
            return Ok(None);
        };
        if bytes.starts_with(sealed_format::MAGIC) {
            let passphrase = self
                .passphrase
                .as_ref()
                .ok_or_else(|| KeyStoreError::PassphraseRequired(self.path.clone()))?;
            return self.open_sealed(&bytes, passphrase).map(Some);
        }
        if bytes.starts_with(keychain::format::MAGIC) {
            return self.keychain().open(&self.path, &bytes).map(Some);
        }
        let secrets = DeviceSecrets::decode(&bytes)?;
        if self.passphrase.is_some() {
            // A plain file (Kith 0.1, or made without a passphrase): encrypt it now.
            self.save(&secrets)?;
        }
        Ok(Some(secrets))
    }

    fn save(&self, secrets: &DeviceSecrets) -> Result<(), KeyStoreError> {
        // The file replaced: if the keychain sealed it, its entry is deleted once the new file
        // is in place.
        let previous = std::fs::read(&self.path).ok().map(Zeroizing::new);
        match (&self.passphrase, &self.keychain) {
            (Some(passphrase), _) => self.write(&self.seal(secrets, passphrase)?)?,
            (None, Some(keychain)) => self.write(&keychain.seal(secrets)?)?,
            (None, None) => self.write(&secrets.encode())?,
        }
        if let Some(previous) = previous {
            // Best effort: the new file is written; a stale entry only takes a keychain slot.
            let _ = self.keychain().forget(&previous);
        }
        Ok(())
    }

    fn exists(&self) -> Result<bool, KeyStoreError> {
        Ok(self.path.exists())
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

    /// Cheap KDF parameters for unit tests (the format is the same).
    const TEST_KDF: KdfParams = KdfParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    fn locked(dir: &tempfile::TempDir, passphrase: &str) -> FileKeyStore {
        FileKeyStore::with_passphrase(dir.path().join("device.key"), Passphrase::new(passphrase))
            .with_kdf(TEST_KDF)
    }

    #[test]
    fn an_encrypted_key_file_opens_only_with_its_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let store = locked(&dir, "correct horse");
        let secrets = DeviceSecrets::generate();
        store.save(&secrets).unwrap();
        let bytes = std::fs::read(store.path()).unwrap();
        assert!(bytes.starts_with(b"KITHKEY2"));
        let plain = secrets.encode();
        assert!(
            !bytes
                .windows(32)
                .any(|w| w == &plain[72..104] || w == &plain[8..40]),
            "a secret in the clear"
        );
        assert_eq!(
            store.protection().unwrap(),
            Some(KeyProtection::Passphrase(TEST_KDF))
        );
        let loaded = store.load().unwrap().unwrap();
        assert_eq!(loaded.store_secret, secrets.store_secret);
        assert!(matches!(
            locked(&dir, "wrong horse").load(),
            Err(KeyStoreError::WrongPassphrase(_))
        ));
        assert!(matches!(
            FileKeyStore::new(store.path()).load(),
            Err(KeyStoreError::PassphraseRequired(_))
        ));
    }

    #[test]
    fn the_passphrase_is_compared_in_nfc() {
        let dir = tempfile::tempdir().unwrap();
        // "é" precomposed, then as e + combining acute accent.
        locked(&dir, "caf\u{e9}")
            .save(&DeviceSecrets::generate())
            .unwrap();
        assert!(locked(&dir, "cafe\u{301}").load().unwrap().is_some());
    }

    #[test]
    fn an_altered_header_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = locked(&dir, "pass");
        store.save(&DeviceSecrets::generate()).unwrap();
        let mut bytes = std::fs::read(store.path()).unwrap();
        // Lower the KDF cost (memory 64 -> 32 KiB): the header is authenticated.
        bytes[11] = 32;
        std::fs::write(store.path(), &bytes).unwrap();
        assert!(matches!(
            store.load(),
            Err(KeyStoreError::WrongPassphrase(_))
        ));
        // A cost beyond the bounds is refused before anything is allocated.
        bytes[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
        std::fs::write(store.path(), &bytes).unwrap();
        assert!(matches!(store.load(), Err(KeyStoreError::KdfTooCostly(_))));
        bytes.truncate(100);
        std::fs::write(store.path(), &bytes).unwrap();
        assert!(matches!(store.load(), Err(KeyStoreError::Malformed)));
    }

    #[test]
    fn a_plain_key_file_is_encrypted_when_loaded_with_a_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let plain = FileKeyStore::new(dir.path().join("device.key"));
        let secrets = DeviceSecrets::generate();
        plain.save(&secrets).unwrap();
        assert_eq!(plain.protection().unwrap(), Some(KeyProtection::Plain));
        let store = locked(&dir, "pass");
        let loaded = store.load().unwrap().unwrap();
        assert_eq!(loaded.store_secret, secrets.store_secret);
        assert_eq!(
            plain.protection().unwrap(),
            Some(KeyProtection::Passphrase(TEST_KDF))
        );
        assert!(matches!(
            plain.load(),
            Err(KeyStoreError::PassphraseRequired(_))
        ));
        assert!(store.exists().unwrap());
    }

    /// Writes a key file only its owner can read.
    fn write_0600(path: &Path, bytes: &[u8]) {
        std::fs::write(path, bytes).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
    }

    /// Issue 10 finding 8: a key file sealed by the keychain holds no secret in the clear,
    /// opens through any store (the format names its keychain entry), and a new save seals
    /// under a new entry and deletes the old one.
    #[test]
    fn a_key_file_sealed_by_the_keychain_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let keychain = Keychain::memory();
        let store = FileKeyStore::with_keychain(dir.path().join("device.key"), keychain.clone());
        let secrets = DeviceSecrets::generate();
        store.save(&secrets).unwrap();
        let bytes = std::fs::read(store.path()).unwrap();
        assert!(bytes.starts_with(b"KITHKEY3"));
        let plain = secrets.encode();
        assert!(
            !bytes
                .windows(32)
                .any(|w| w == &plain[72..104] || w == &plain[8..40] || w == &plain[40..72]),
            "a secret in the clear"
        );
        assert_eq!(store.protection().unwrap(), Some(KeyProtection::Keychain));
        assert_eq!(
            store.load().unwrap().unwrap().store_secret,
            secrets.store_secret
        );
        // Saved again: a new entry, the old one gone, the file still opens.
        store.save(&secrets).unwrap();
        let again = std::fs::read(store.path()).unwrap();
        assert_ne!(again[8..24], bytes[8..24]);
        assert_eq!(
            store.load().unwrap().unwrap().store_secret,
            secrets.store_secret
        );
        write_0600(&dir.path().join("old.key"), &bytes);
        assert!(matches!(
            FileKeyStore::with_keychain(dir.path().join("old.key"), keychain).load(),
            Err(KeyStoreError::KeychainEntryMissing { .. })
        ));
    }

    /// Issue 10 finding 8: a sealed file altered in any part (its entry id, nonce or
    /// ciphertext), or whose keychain entry now holds another key, is refused with a typed
    /// error, never opened.
    #[test]
    fn a_tampered_key_file_sealed_by_the_keychain_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let keychain = Keychain::memory();
        let store = FileKeyStore::with_keychain(dir.path().join("device.key"), keychain.clone());
        store.save(&DeviceSecrets::generate()).unwrap();
        let good = std::fs::read(store.path()).unwrap();
        // The nonce (in the header, which is associated data) and the ciphertext.
        for at in [30, 60, good.len() - 1] {
            let mut bad = good.clone();
            bad[at] ^= 1;
            std::fs::write(store.path(), &bad).unwrap();
            assert!(
                matches!(store.load(), Err(KeyStoreError::Tampered(_))),
                "byte {at} altered"
            );
        }
        // The entry id: names an entry the keychain does not hold.
        let mut bad = good.clone();
        bad[8] ^= 1;
        std::fs::write(store.path(), &bad).unwrap();
        assert!(matches!(
            store.load(),
            Err(KeyStoreError::KeychainEntryMissing { .. })
        ));
        // Another file's key put under this file's entry.
        let other = FileKeyStore::with_keychain(dir.path().join("other.key"), keychain.clone());
        other.save(&DeviceSecrets::generate()).unwrap();
        let other_bytes = std::fs::read(other.path()).unwrap();
        std::fs::write(store.path(), &good).unwrap();
        assert!(store.load().is_ok());
        let mut grafted = good.clone();
        grafted[24..].copy_from_slice(&other_bytes[24..]);
        std::fs::write(store.path(), &grafted).unwrap();
        assert!(matches!(store.load(), Err(KeyStoreError::Tampered(_))));
        // Truncated or extended: malformed.
        std::fs::write(store.path(), &good[..good.len() - 1]).unwrap();
        assert!(matches!(store.load(), Err(KeyStoreError::Malformed)));
        assert!(matches!(store.protection(), Err(KeyStoreError::Malformed)));
    }

    /// The wrapping key never prints: Debug shows its fingerprint, and the fingerprint is
    /// not a piece of the key.
    #[test]
    fn the_wrapping_key_prints_only_its_fingerprint() {
        let key = WrappingKey::from_stored(&[7u8; 32]).unwrap();
        let printed = format!("{key:?}");
        assert!(printed.contains(&key.fingerprint()), "{printed}");
        assert!(!printed.contains(&hex::encode([7u8; 4])), "{printed}");
        let store = FileKeyStore::with_keychain("device.key", Keychain::memory());
        assert!(!format!("{store:?}").contains("07070707"));
    }

    /// The real kernel keyring of this machine (keyutils). Skipped, loudly, where it is not
    /// usable (some containers refuse the key syscalls).
    #[cfg(target_os = "linux")]
    #[test]
    fn the_os_keychain_round_trips_a_sealed_key_file() {
        let keychain = Keychain::kernel_keyring();
        if let Err(why) = keychain.probe() {
            eprintln!("SKIPPED the_os_keychain_round_trips_a_sealed_key_file: {why}");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let store = FileKeyStore::with_keychain(dir.path().join("device.key"), keychain);
        let secrets = DeviceSecrets::generate();
        store.save(&secrets).unwrap();
        // Opened by a store told nothing (what `Device::open` uses).
        let loaded = FileKeyStore::in_home(dir.path()).load().unwrap().unwrap();
        assert_eq!(loaded.store_secret, secrets.store_secret);
        // Replaced by a plain file: the keychain entry is deleted with it.
        let sealed = std::fs::read(store.path()).unwrap();
        FileKeyStore::in_home(dir.path()).save(&secrets).unwrap();
        write_0600(&dir.path().join("sealed.key"), &sealed);
        assert!(matches!(
            FileKeyStore::new(dir.path().join("sealed.key")).load(),
            Err(KeyStoreError::KeychainEntryMissing { .. })
        ));
    }

    /// What a child process of [`a_key_file_sealed_by_the_secret_service_opens_in_a_new_process`]
    /// does, and the files it does it to.
    #[cfg(target_os = "linux")]
    const PHASE: &str = "KITH_TEST_SECRET_SERVICE_PHASE";
    #[cfg(target_os = "linux")]
    const DIR: &str = "KITH_TEST_SECRET_SERVICE_DIR";

    /// One step of the Secret Service test, run in its own process on the test's session bus.
    #[cfg(target_os = "linux")]
    fn secret_service_phase(phase: &str, dir: &Path) {
        let sealed = dir.join("sealed.key");
        let reference = FileKeyStore::new(dir.join("reference.key"));
        let by_keyutils = dir.join("keyutils.key");
        match phase {
            "seal" => {
                // The Secret Service answers and takes a key: it is the OS keychain, for good.
                let keychain = Keychain::os();
                assert_eq!(format!("{keychain:?}"), "Keychain(os, the Secret Service)");
                assert_eq!(keychain.persistence(), KeychainPersistence::Durable);
                let secrets = DeviceSecrets::generate();
                FileKeyStore::with_keychain(&sealed, keychain)
                    .save(&secrets)
                    .unwrap();
                reference.save(&secrets).unwrap();
                // A home of the previous release, sealed by the kernel keyring (where usable).
                if Keychain::kernel_keyring().probe().is_ok() {
                    FileKeyStore::with_keychain(&by_keyutils, Keychain::kernel_keyring())
                        .save(&secrets)
                        .unwrap();
                }
            }
            "open" => {
                let expected = reference.load().unwrap().unwrap();
                let store = FileKeyStore::new(&sealed);
                assert_eq!(store.protection().unwrap(), Some(KeyProtection::Keychain));
                let loaded = store.load().unwrap().unwrap();
                assert_eq!(loaded.store_secret, expected.store_secret);
                // Not in the kernel keyring: the entry is the Secret Service's.
                let bytes = std::fs::read(&sealed).unwrap();
                let name = keychain::entry_name(&bytes[8..8 + keychain::format::ID_LEN]);
                assert!(
                    Keychain::kernel_keyring()
                        .get_here(&name)
                        .unwrap_or(None)
                        .is_none()
                );
                assert!(
                    Keychain::secret_service()
                        .get_here(&name)
                        .unwrap()
                        .is_some()
                );
                if by_keyutils.exists() {
                    let old = FileKeyStore::new(&by_keyutils);
                    assert_eq!(
                        old.load().unwrap().unwrap().store_secret,
                        expected.store_secret
                    );
                    // Replaced by a plain file: its kernel keyring entry goes with it.
                    old.save(&expected).unwrap();
                }
                // The entry deleted (the key file replaced by another format deletes it).
                Keychain::for_opening().forget(&bytes).unwrap();
                assert!(
                    Keychain::secret_service()
                        .get_here(&name)
                        .unwrap()
                        .is_none()
                );
            }
            "missing" => {
                assert!(matches!(
                    FileKeyStore::new(&sealed).load(),
                    Err(KeyStoreError::KeychainEntryMissing { .. })
                ));
            }
            other => panic!("unknown phase {other}"),
        }
    }

    /// Issue 10 finding 8: on Linux a key file is sealed by the Secret Service (GNOME Keyring
    /// here, on the test's own session bus) when one answers; it opens in another process (the
    /// entry persists in the daemon), a file sealed by the kernel keyring still opens beside
    /// it, and once the entry is deleted the file is refused as `KeychainEntryMissing`. Each
    /// step runs in a new process of this test binary. Skipped, loudly, without
    /// `gnome-keyring` and `dbus-run-session` (a failure under `CI=true`).
    #[cfg(target_os = "linux")]
    #[test]
    fn a_key_file_sealed_by_the_secret_service_opens_in_a_new_process() {
        const NAME: &str = "a_key_file_sealed_by_the_secret_service_opens_in_a_new_process";
        if let (Ok(phase), Some(dir)) = (std::env::var(PHASE), std::env::var_os(DIR)) {
            return secret_service_phase(&phase, Path::new(&dir));
        }
        let dir = tempfile::tempdir().unwrap();
        let Some(service) =
            kith_testkit::secret_service::SecretService::start(&dir.path().join("daemon"), NAME)
        else {
            return;
        };
        for phase in ["seal", "open", "missing"] {
            in_child(NAME, phase, service.address(), dir.path());
        }
    }

    /// With no session bus at all (the address names no socket), the OS keychain on Linux is
    /// the kernel keyring, found without waiting: the probe of the Secret Service fails.
    #[cfg(target_os = "linux")]
    #[test]
    fn without_a_session_bus_the_secret_service_is_refused() {
        // In a child process: the test binary's environment is not this test's to change.
        if std::env::var_os(PHASE).is_some() {
            let why = Keychain::secret_service().probe().unwrap_err();
            assert!(format!("{why}").contains("the Secret Service"), "{why}");
            assert_eq!(
                Keychain::os().persistence(),
                KeychainPersistence::UntilReboot
            );
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        in_child(
            "without_a_session_bus_the_secret_service_is_refused",
            "no-bus",
            "unix:path=/nonexistent/kith-no-bus",
            dir.path(),
        );
    }

    /// Runs the test `name` of this binary in a child process on the session bus `bus`, told
    /// its `phase` and `dir`; fails if it fails (or runs no test).
    #[cfg(target_os = "linux")]
    fn in_child(name: &str, phase: &str, bus: &str, dir: &Path) {
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                &format!("keystore::tests::{name}"),
                "--exact",
                "--nocapture",
            ])
            .env(PHASE, phase)
            .env(DIR, dir)
            .env("DBUS_SESSION_BUS_ADDRESS", bus)
            .env_remove("DISPLAY")
            .output()
            .unwrap();
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "phase {phase}: {printed}");
        assert!(
            printed.contains("1 passed"),
            "phase {phase} ran no test: {printed}"
        );
    }

    #[test]
    fn debug_shows_no_passphrase() {
        let printed = format!("{:?}", locked(&tempfile::tempdir().unwrap(), "hunter2"));
        assert!(!printed.contains("hunter2"), "{printed}");
    }
}
