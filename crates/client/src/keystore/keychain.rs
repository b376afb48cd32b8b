//! The device key file sealed under a wrapping key kept in the operating system's keychain
//! (docs/PROTOCOL.md §2.2, "keychain").
//!
//! The file holds the device secrets sealed with XChaCha20-Poly1305 under a key derived (HKDF,
//! its own label) from a random 32-byte *wrapping key*; the wrapping key lives in one keychain
//! entry per key file, named by a random id written in the file's header. The header is the
//! AEAD's associated data, so a file pointed at another entry, or altered in any byte, is
//! refused ([`KeyStoreError::Tampered`]).
//!
//! Backends, through the `keyring` crate (no default features): the macOS Keychain, the Windows
//! Credential Manager, and on Linux the kernel key retention service (keyutils, the user
//! keyring), which needs no D-Bus but forgets everything at reboot (see [`Persistence`]).

use std::path::Path;
#[cfg(test)]
use std::sync::{Arc, Mutex};

use chacha20poly1305::XNonce;
use kith_protocol::keys::system_rng;
use rand_core::Rng;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::{DeviceSecrets, KeyStoreError, open_secrets, seal_secrets};

/// The HKDF label of the key that seals a key file under a wrapping key.
const SEAL_LABEL: &str = "kith/v1/device-key-file/keychain-seal";
/// The HKDF label of a wrapping key's printable fingerprint (never the key itself).
const FINGERPRINT_LABEL: &str = "kith/v1/device-key-file/keychain-fingerprint";

/// The sealed key file: `KITHKEY3`, entry id (16), nonce (24), then the plain encoding sealed
/// with XChaCha20-Poly1305 under `HKDF-SHA256(wrapping key, label SEAL_LABEL)`, the 48 bytes
/// before it as associated data.
pub(super) mod format {
    pub const MAGIC: &[u8; 8] = b"KITHKEY3";
    pub const ID_LEN: usize = 16;
    pub const NONCE_LEN: usize = 24;
    pub const HEADER_LEN: usize = 8 + ID_LEN + NONCE_LEN;
    pub const LEN: usize = HEADER_LEN + super::DeviceSecrets::ENCODED_LEN + 16;
}

/// The random key kept in the keychain that seals one device key file. Zeroized on drop;
/// printed only as a fingerprint.
pub struct WrappingKey(Zeroizing<[u8; 32]>);

impl WrappingKey {
    fn generate() -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        system_rng().fill_bytes(&mut key[..]);
        Self(key)
    }

    /// The key as the keychain returned it; anything but 32 bytes is refused.
    pub(crate) fn from_stored(bytes: &[u8]) -> Option<Self> {
        let array = <[u8; 32]>::try_from(bytes).ok()?;
        Some(Self(Zeroizing::new(array)))
    }

    fn derive(&self, label: &str) -> Zeroizing<[u8; 32]> {
        let mut out = Zeroizing::new([0u8; 32]);
        // 32 bytes is far below HKDF-SHA256's limit: `expand` cannot fail.
        let _ = hkdf::Hkdf::<Sha256>::new(None, &self.0[..]).expand(label.as_bytes(), &mut out[..]);
        out
    }

    /// A short public fingerprint of the key (its own HKDF label: it reveals nothing of the key
    /// or of the sealing key).
    pub fn fingerprint(&self) -> String {
        hex::encode(&self.derive(FINGERPRINT_LABEL)[..4])
    }
}

impl std::fmt::Debug for WrappingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WrappingKey(fingerprint {})", self.fingerprint())
    }
}

/// How long a keychain keeps what is put in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// Until it is deleted (the macOS Keychain, the Windows Credential Manager).
    Durable,
    /// Until the machine restarts, or the user's last session ends (the Linux kernel keyring).
    /// A key file sealed there does not open after a reboot: the device is then set up again
    /// (linked, or recovered with the recovery key).
    UntilReboot,
}

/// A handle on the operating system's keychain (or, in tests, a keychain in memory).
#[derive(Clone)]
pub struct Keychain {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Os,
    #[cfg(test)]
    Memory(Arc<Mutex<std::collections::HashMap<String, Vec<u8>>>>),
}

impl std::fmt::Debug for Keychain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.backend {
            Backend::Os => f.write_str("Keychain(os)"),
            #[cfg(test)]
            Backend::Memory(_) => f.write_str("Keychain(memory)"),
        }
    }
}

/// The entry name of a key file's wrapping key: `kith device key <hex id>`.
fn entry_name(id: &[u8]) -> String {
    format!("kith device key {}", hex::encode(id))
}

fn backend_error(error: impl std::fmt::Display) -> KeyStoreError {
    KeyStoreError::Backend(format!("keychain: {error}"))
}

/// The keychain entry `name` of this platform.
#[cfg(target_os = "linux")]
fn os_entry(name: &str) -> Result<keyring::Entry, KeyStoreError> {
    use keyring::keyutils::KeyutilsCredential;
    use linux_keyutils::{KeyRing, KeyRingIdentifier};
    // The user keyring (`@u`): shared by every process of the user, whatever its session (a
    // terminal, ssh, a systemd user service). Not the persistent keyring keyring-rs also links
    // into: it is refused in user namespaces (containers) and survives a reboot no better.
    let ring = KeyRing::from_special_id(KeyRingIdentifier::User, false).map_err(backend_error)?;
    Ok(keyring::Entry::new_with_credential(Box::new(
        KeyutilsCredential {
            session: ring,
            persistent: None,
            description: name.to_owned(),
        },
    )))
}

/// The keychain entry `name` of this platform.
#[cfg(any(target_os = "macos", target_os = "ios", target_os = "windows"))]
fn os_entry(name: &str) -> Result<keyring::Entry, KeyStoreError> {
    keyring::Entry::new("kith", name).map_err(backend_error)
}

/// No keychain backend on this platform: keyring's fallback would be a store in memory that
/// forgets at exit, which must never seal a key file.
#[cfg(not(any(
    target_os = "linux",
    target_os = "macos",
    target_os = "ios",
    target_os = "windows"
)))]
fn os_entry(_name: &str) -> Result<keyring::Entry, KeyStoreError> {
    Err(KeyStoreError::Backend(
        "keychain: no keychain backend on this platform".to_owned(),
    ))
}

impl Keychain {
    /// The operating system's keychain.
    pub fn os() -> Self {
        Self {
            backend: Backend::Os,
        }
    }

    /// A keychain in memory, for tests.
    #[cfg(test)]
    pub(crate) fn memory() -> Self {
        Self {
            backend: Backend::Memory(Arc::default()),
        }
    }

    /// How long this keychain keeps a wrapping key.
    pub fn persistence(&self) -> Persistence {
        match self.backend {
            #[cfg(target_os = "linux")]
            Backend::Os => Persistence::UntilReboot,
            #[cfg(not(target_os = "linux"))]
            Backend::Os => Persistence::Durable,
            #[cfg(test)]
            Backend::Memory(_) => Persistence::Durable,
        }
    }

    /// Whether the keychain works here: puts a random key under a throwaway entry, reads it
    /// back and deletes it. The error says why not (no backend, no D-Bus, a keyring the
    /// container refuses).
    pub fn probe(&self) -> Result<(), KeyStoreError> {
        let mut id = [0u8; format::ID_LEN];
        system_rng().fill_bytes(&mut id);
        let name = format!("kith probe {}", hex::encode(id));
        let key = WrappingKey::generate();
        self.put(&name, &key)?;
        let back = self.get(&name);
        let _ = self.delete(&name);
        match back? {
            Some(back) if bool::from(subtle::ConstantTimeEq::ct_eq(&back.0[..], &key.0[..])) => {
                Ok(())
            }
            _ => Err(backend_error("a key put in it did not read back")),
        }
    }

    fn put(&self, name: &str, key: &WrappingKey) -> Result<(), KeyStoreError> {
        match &self.backend {
            Backend::Os => os_entry(name)?
                .set_secret(&key.0[..])
                .map_err(backend_error),
            #[cfg(test)]
            Backend::Memory(map) => {
                map.lock()
                    .expect("memory keychain")
                    .insert(name.to_owned(), key.0.to_vec());
                Ok(())
            }
        }
    }

    /// The key under `name`, `None` if there is no such entry.
    fn get(&self, name: &str) -> Result<Option<WrappingKey>, KeyStoreError> {
        let bytes = match &self.backend {
            Backend::Os => match os_entry(name)?.get_secret() {
                Ok(bytes) => Zeroizing::new(bytes),
                Err(keyring::Error::NoEntry) => return Ok(None),
                Err(e) => return Err(backend_error(e)),
            },
            #[cfg(test)]
            Backend::Memory(map) => match map.lock().expect("memory keychain").get(name) {
                Some(bytes) => Zeroizing::new(bytes.clone()),
                None => return Ok(None),
            },
        };
        WrappingKey::from_stored(&bytes)
            .map(Some)
            .ok_or_else(|| backend_error(format!("entry {name:?} does not hold a 32-byte key")))
    }

    fn delete(&self, name: &str) -> Result<(), KeyStoreError> {
        match &self.backend {
            Backend::Os => match os_entry(name)?.delete_credential() {
                Ok(()) | Err(keyring::Error::NoEntry) => Ok(()),
                Err(e) => Err(backend_error(e)),
            },
            #[cfg(test)]
            Backend::Memory(map) => {
                map.lock().expect("memory keychain").remove(name);
                Ok(())
            }
        }
    }

    /// Seals `secrets` under a new wrapping key, which is put in the keychain under a new
    /// entry; returns the key file's bytes.
    pub(super) fn seal(&self, secrets: &DeviceSecrets) -> Result<Vec<u8>, KeyStoreError> {
        let mut rng = system_rng();
        let mut id = [0u8; format::ID_LEN];
        rng.fill_bytes(&mut id);
        let mut nonce = [0u8; format::NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let key = WrappingKey::generate();
        let mut out = Vec::with_capacity(format::LEN);
        out.extend_from_slice(format::MAGIC);
        out.extend_from_slice(&id);
        out.extend_from_slice(&nonce);
        seal_secrets(
            &key.derive(SEAL_LABEL),
            &XNonce::from(nonce),
            secrets,
            &mut out,
        )?;
        self.put(&entry_name(&id), &key)?;
        Ok(out)
    }

    /// Opens a key file sealed by [`Keychain::seal`].
    pub(super) fn open(&self, path: &Path, bytes: &[u8]) -> Result<DeviceSecrets, KeyStoreError> {
        if bytes.len() != format::LEN || !bytes.starts_with(format::MAGIC) {
            return Err(KeyStoreError::Malformed);
        }
        let name = entry_name(&bytes[8..8 + format::ID_LEN]);
        let key = self
            .get(&name)?
            .ok_or_else(|| KeyStoreError::KeychainEntryMissing {
                path: path.to_path_buf(),
                entry: name,
            })?;
        let nonce = XNonce::try_from(&bytes[8 + format::ID_LEN..format::HEADER_LEN])
            .map_err(|_| KeyStoreError::Malformed)?;
        open_secrets(&key.derive(SEAL_LABEL), &nonce, bytes, format::HEADER_LEN)
            .ok_or_else(|| KeyStoreError::Tampered(path.to_path_buf()))?
    }

    /// Deletes the wrapping key of the sealed key file `bytes` (after the file was replaced
    /// by one in another format, or sealed under a new entry). Not a sealed file: nothing.
    pub(super) fn forget(&self, bytes: &[u8]) -> Result<(), KeyStoreError> {
        if bytes.len() != format::LEN || !bytes.starts_with(format::MAGIC) {
            return Ok(());
        }
        self.delete(&entry_name(&bytes[8..8 + format::ID_LEN]))
    }
}
