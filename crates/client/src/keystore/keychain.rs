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
//! Credential Manager, and on Linux the Secret Service (GNOME Keyring, KWallet: the default
//! collection, over D-Bus) where one answers, else the kernel key retention service (keyutils,
//! the user keyring), which needs no D-Bus but forgets everything at reboot (see
//! [`Persistence`]). A lookup tries every store of the platform, so a key file sealed by the
//! kernel keyring still opens once a Secret Service answers.

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
    /// Until it is deleted (the macOS Keychain, the Windows Credential Manager, the Linux
    /// Secret Service).
    Durable,
    /// Until the machine restarts, or the user's last session ends (the Linux kernel keyring).
    /// A key file sealed there does not open after a reboot: the device is then set up again
    /// (linked, or recovered with the recovery key).
    UntilReboot,
}

/// How long [`Keychain::probe`] waits for the round trip before it calls the keychain unusable:
/// a Secret Service that does not answer, or that shows an unlock prompt nobody answers, must
/// not hang `kith init` (libdbus bounds each call to 2 s, a prompt not at all).
const PROBE_BOUND: std::time::Duration = std::time::Duration::from_secs(5);

/// A handle on the operating system's keychain (or, in tests, a keychain in memory).
#[derive(Clone)]
pub struct Keychain {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    /// The operating system's keychain; new entries go to this store, lookups try them all.
    Os(OsStore),
    #[cfg(test)]
    Memory(Arc<Mutex<std::collections::HashMap<String, Vec<u8>>>>),
}

/// One store of the operating system's keychain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OsStore {
    /// The freedesktop Secret Service on the session bus (GNOME Keyring, KWallet), its default
    /// collection.
    #[cfg(target_os = "linux")]
    SecretService,
    /// The kernel key retention service, the user keyring (`@u`).
    #[cfg(target_os = "linux")]
    KernelKeyring,
    /// The macOS Keychain, the Windows Credential Manager (or no keychain at all).
    #[cfg(not(target_os = "linux"))]
    Native,
}

impl OsStore {
    /// Every store a key file may have been sealed in on this platform, in the order a lookup
    /// tries them.
    #[cfg(target_os = "linux")]
    const ALL: &'static [OsStore] = &[OsStore::SecretService, OsStore::KernelKeyring];
    #[cfg(not(target_os = "linux"))]
    const ALL: &'static [OsStore] = &[OsStore::Native];

    fn name(self) -> &'static str {
        match self {
            #[cfg(target_os = "linux")]
            OsStore::SecretService => "the Secret Service",
            #[cfg(target_os = "linux")]
            OsStore::KernelKeyring => "the kernel keyring",
            #[cfg(not(target_os = "linux"))]
            OsStore::Native => "the system keychain",
        }
    }
}

impl std::fmt::Debug for Keychain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.backend {
            Backend::Os(store) => write!(f, "Keychain(os, {})", store.name()),
            #[cfg(test)]
            Backend::Memory(_) => f.write_str("Keychain(memory)"),
        }
    }
}

/// The entry name of a key file's wrapping key: `kith device key <hex id>`.
pub(super) fn entry_name(id: &[u8]) -> String {
    format!("kith device key {}", hex::encode(id))
}

fn backend_error(error: impl std::fmt::Display) -> KeyStoreError {
    KeyStoreError::Backend(format!("keychain: {error}"))
}

/// Whether `error` says this session has no such store, so that it holds no entry: no session
/// bus (no address, no socket, no server), or nothing on the bus that owns or can start the
/// Secret Service. A Secret Service that is there but fails (locked, no reply) is not absent.
#[cfg(target_os = "linux")]
fn absent(error: &keyring::Error) -> bool {
    const NO_BUS_OR_SERVICE: &[&str] = &[
        "org.freedesktop.DBus.Error.NoServer",
        "org.freedesktop.DBus.Error.FileNotFound",
        "org.freedesktop.DBus.Error.NotSupported",
        "org.freedesktop.DBus.Error.BadAddress",
        "org.freedesktop.DBus.Error.ServiceUnknown",
        "org.freedesktop.DBus.Error.NameHasNoOwner",
    ];
    let keyring::Error::PlatformFailure(inner) = error else {
        return false;
    };
    let Some(dbus_secret_service::Error::Dbus(dbus)) =
        inner.downcast_ref::<dbus_secret_service::Error>()
    else {
        return false;
    };
    // `Spawn.*`: the bus could not start a Secret Service it knows of.
    dbus.name().is_some_and(|name| {
        NO_BUS_OR_SERVICE.contains(&name) || name.starts_with("org.freedesktop.DBus.Error.Spawn.")
    })
}

/// No store of another platform is ever absent: its errors are errors.
#[cfg(not(target_os = "linux"))]
fn absent(_error: &keyring::Error) -> bool {
    false
}

/// The keychain entry `name` in `store`.
#[cfg(target_os = "linux")]
fn os_entry(store: OsStore, name: &str) -> Result<keyring::Entry, KeyStoreError> {
    match store {
        // Service `kith`, user `name`, in the default collection (`target` `default`): the same
        // service and account as on macOS and Windows.
        OsStore::SecretService => {
            let credential =
                keyring::secret_service::SsCredential::new_with_target(None, "kith", name)
                    .map_err(backend_error)?;
            Ok(keyring::Entry::new_with_credential(Box::new(credential)))
        }
        OsStore::KernelKeyring => {
            use keyring::keyutils::KeyutilsCredential;
            use linux_keyutils::{KeyRing, KeyRingIdentifier};
            // The user keyring (`@u`): shared by every process of the user, whatever its
            // session (a terminal, ssh, a systemd user service). Not the persistent keyring
            // keyring-rs also links into: it is refused in user namespaces (containers) and
            // survives a reboot no better.
            let ring =
                KeyRing::from_special_id(KeyRingIdentifier::User, false).map_err(backend_error)?;
            Ok(keyring::Entry::new_with_credential(Box::new(
                KeyutilsCredential {
                    session: ring,
                    persistent: None,
                    description: name.to_owned(),
                },
            )))
        }
    }
}

/// The keychain entry `name` of this platform.
#[cfg(any(target_os = "macos", target_os = "ios", target_os = "windows"))]
fn os_entry(_store: OsStore, name: &str) -> Result<keyring::Entry, KeyStoreError> {
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
fn os_entry(_store: OsStore, _name: &str) -> Result<keyring::Entry, KeyStoreError> {
    Err(KeyStoreError::Backend(
        "keychain: no keychain backend on this platform".to_owned(),
    ))
}

impl Keychain {
    /// The operating system's keychain: the macOS Keychain, the Windows Credential Manager; on
    /// Linux the Secret Service when one answers on the session bus and its default collection
    /// takes, returns and deletes a key (a [`Keychain::probe`], bounded in time), else the
    /// kernel keyring. Whichever store new keys go to, a key file sealed in any of them opens.
    pub fn os() -> Self {
        #[cfg(target_os = "linux")]
        {
            let secret_service = Self::secret_service();
            match secret_service.probe() {
                Ok(()) => secret_service,
                Err(why) => {
                    tracing::debug!("no usable Secret Service, the kernel keyring instead: {why}");
                    Self::kernel_keyring()
                }
            }
        }
        #[cfg(not(target_os = "linux"))]
        Self::native()
    }

    /// The operating system's keychain for opening key files, without asking which store would
    /// take new keys: a lookup tries every store of the platform.
    pub(super) fn for_opening() -> Self {
        #[cfg(target_os = "linux")]
        {
            Self::kernel_keyring()
        }
        #[cfg(not(target_os = "linux"))]
        Self::native()
    }

    #[cfg(not(target_os = "linux"))]
    fn native() -> Self {
        Self {
            backend: Backend::Os(OsStore::Native),
        }
    }

    /// The Linux Secret Service (GNOME Keyring, KWallet) on the session bus, its default
    /// collection, whether or not one answers ([`Keychain::probe`] says).
    #[cfg(target_os = "linux")]
    pub fn secret_service() -> Self {
        Self {
            backend: Backend::Os(OsStore::SecretService),
        }
    }

    /// The Linux kernel keyring (keyutils, the user keyring), which forgets at reboot.
    #[cfg(target_os = "linux")]
    pub fn kernel_keyring() -> Self {
        Self {
            backend: Backend::Os(OsStore::KernelKeyring),
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
            Backend::Os(OsStore::KernelKeyring) => Persistence::UntilReboot,
            Backend::Os(_) => Persistence::Durable,
            #[cfg(test)]
            Backend::Memory(_) => Persistence::Durable,
        }
    }

    /// Whether the keychain works here: puts a random key under a throwaway entry, reads it
    /// back and deletes it, giving up after a few seconds (a Secret Service that does not
    /// answer, or waits on an unlock prompt). The error says why not (no backend, no D-Bus, a
    /// locked collection, a keyring the container refuses).
    pub fn probe(&self) -> Result<(), KeyStoreError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let keychain = self.clone();
        // A thread the probe may leave behind, blocked in libdbus until the process exits.
        std::thread::Builder::new()
            .name("kith-keychain-probe".to_owned())
            .spawn(move || {
                let _ = tx.send(keychain.round_trip());
            })
            .map_err(backend_error)?;
        rx.recv_timeout(PROBE_BOUND).unwrap_or_else(|_| {
            Err(backend_error(format!(
                "{} did not answer within {} s",
                self.store_name(),
                PROBE_BOUND.as_secs()
            )))
        })
    }

    fn store_name(&self) -> &'static str {
        match self.backend {
            Backend::Os(store) => store.name(),
            #[cfg(test)]
            Backend::Memory(_) => "the memory keychain",
        }
    }

    fn round_trip(&self) -> Result<(), KeyStoreError> {
        let mut id = [0u8; format::ID_LEN];
        system_rng().fill_bytes(&mut id);
        let name = format!("kith probe {}", hex::encode(id));
        let key = WrappingKey::generate();
        self.put(&name, &key)?;
        let back = self.get_here(&name);
        let _ = self.delete_here(&name);
        match back? {
            Some(back) if bool::from(subtle::ConstantTimeEq::ct_eq(&back.0[..], &key.0[..])) => {
                Ok(())
            }
            _ => Err(backend_error("a key put in it did not read back")),
        }
    }

    /// Puts `key` under `name` in this keychain's store.
    fn put(&self, name: &str, key: &WrappingKey) -> Result<(), KeyStoreError> {
        match &self.backend {
            Backend::Os(store) => os_entry(*store, name)?
                .set_secret(&key.0[..])
                .map_err(|e| backend_error(format!("{}: {e}", store.name()))),
            #[cfg(test)]
            Backend::Memory(map) => {
                map.lock()
                    .expect("memory keychain")
                    .insert(name.to_owned(), key.0.to_vec());
                Ok(())
            }
        }
    }

    /// The key under `name` in `store`, `None` if there is no such entry (or, with `absent_is_empty`,
    /// no such store in this session).
    fn get_os(
        store: OsStore,
        name: &str,
        absent_is_empty: bool,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, KeyStoreError> {
        match os_entry(store, name)?.get_secret() {
            Ok(bytes) => Ok(Some(Zeroizing::new(bytes))),
            Err(keyring::Error::NoEntry) => Ok(None),
            Err(e) if absent_is_empty && absent(&e) => Ok(None),
            Err(e) => Err(backend_error(format!("{}: {e}", store.name()))),
        }
    }

    /// The key under `name` in this keychain's own store only (the probe).
    pub(super) fn get_here(&self, name: &str) -> Result<Option<WrappingKey>, KeyStoreError> {
        let bytes = match &self.backend {
            Backend::Os(store) => Self::get_os(*store, name, false)?,
            #[cfg(test)]
            Backend::Memory(map) => map
                .lock()
                .expect("memory keychain")
                .get(name)
                .map(|bytes| Zeroizing::new(bytes.clone())),
        };
        bytes
            .map(|bytes| Self::wrapping_key(name, &bytes))
            .transpose()
    }

    fn wrapping_key(name: &str, bytes: &[u8]) -> Result<WrappingKey, KeyStoreError> {
        WrappingKey::from_stored(bytes)
            .ok_or_else(|| backend_error(format!("entry {name:?} does not hold a 32-byte key")))
    }

    /// The key under `name`, looked up in every store of the operating system's keychain (a key
    /// file sealed by the kernel keyring still opens where the Secret Service now answers);
    /// `None` only if every store answered that it has no such entry.
    fn get(&self, name: &str) -> Result<Option<WrappingKey>, KeyStoreError> {
        #[cfg(test)]
        if let Backend::Memory(_) = &self.backend {
            return self.get_here(name);
        }
        let mut failed = Vec::new();
        for store in OsStore::ALL {
            match Self::get_os(*store, name, true) {
                Ok(Some(bytes)) => return Self::wrapping_key(name, &bytes).map(Some),
                Ok(None) => {}
                Err(KeyStoreError::Backend(why)) => failed.push(why),
                Err(other) => return Err(other),
            }
        }
        if failed.is_empty() {
            Ok(None)
        } else {
            Err(KeyStoreError::Backend(format!(
                "entry {name:?} is in no keychain store that answered, and {}",
                failed.join("; ")
            )))
        }
    }

    /// Deletes `name` from this keychain's own store (no such entry: nothing).
    fn delete_here(&self, name: &str) -> Result<(), KeyStoreError> {
        match &self.backend {
            Backend::Os(store) => Self::delete_os(*store, name),
            #[cfg(test)]
            Backend::Memory(map) => {
                map.lock().expect("memory keychain").remove(name);
                Ok(())
            }
        }
    }

    fn delete_os(store: OsStore, name: &str) -> Result<(), KeyStoreError> {
        match os_entry(store, name)?.delete_credential() {
            Ok(()) | Err(keyring::Error::NoEntry) => Ok(()),
            Err(e) if absent(&e) => Ok(()),
            Err(e) => Err(backend_error(format!("{}: {e}", store.name()))),
        }
    }

    /// Deletes `name` from whichever store of the operating system's keychain holds it.
    fn delete(&self, name: &str) -> Result<(), KeyStoreError> {
        #[cfg(test)]
        if let Backend::Memory(_) = &self.backend {
            return self.delete_here(name);
        }
        let mut result = Ok(());
        for store in OsStore::ALL {
            if let Err(e) = Self::delete_os(*store, name) {
                result = Err(e);
            }
        }
        result
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
