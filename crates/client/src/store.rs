//! The device's local store: sled, every value encrypted and every index key blinded.
//!
//! Values are sealed with XChaCha20-Poly1305 under a sub-key of the device's local store key,
//! with `LP(tree) || LP(key)` as associated data, so a value cannot be moved to another key or
//! tree unnoticed. Keys that would reveal contact data (e-mail → record) are HMACs under a
//! separate sub-key. Nothing in the store's files is plaintext contact data (tested).

use std::path::Path;

use chacha20poly1305::aead::{Aead, AeadInOut, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use kith_protocol::encoding::{labels, lp_concat};
use kith_protocol::keys::SymmetricKey;
use rand_core::Rng;

/// sled's page cache for a device store: a contact store of 100,000 records is ~60 MB.
const CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// Why the local store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled reported an I/O or corruption error.
    #[error("local store I/O error: {0}")]
    Io(#[from] sled::Error),
    /// A value failed authentication: the store was modified or belongs to another device key.
    #[error(
        "local store value under {tree}/{key_hint} failed authentication (modified, or another device's key)"
    )]
    Tampered {
        /// The tree.
        tree: &'static str,
        /// First bytes of the key, hex.
        key_hint: String,
    },
    /// The thread writing to the store stopped before finishing (a bug: please report it).
    #[error("local store writer stopped before finishing: {0}")]
    WriterFailed(String),
    /// A decrypted value did not decode.
    #[error("local store value under {tree} is corrupt: {reason}")]
    Corrupt {
        /// The tree.
        tree: &'static str,
        /// What was wrong.
        reason: String,
    },
}

impl From<sled::transaction::TransactionError<StoreError>> for StoreError {
    fn from(error: sled::transaction::TransactionError<StoreError>) -> Self {
        match error {
            sled::transaction::TransactionError::Abort(inner) => inner,
            sled::transaction::TransactionError::Storage(io) => StoreError::Io(io),
        }
    }
}

/// The named trees of a device store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TreeName {
    /// Device and account state: roster, account key, epochs, chain head, settings.
    Meta,
    /// Merged record states by record id.
    Records,
    /// Operations written locally and not yet sealed into an envelope, by local sequence.
    Pending,
    /// Sealed envelopes of this device not yet acknowledged by the relay, by seq.
    Outbox,
    /// Per-writer stream positions (seq, hash) of every other device.
    Cursors,
    /// Blinded identity (e-mail, phone, profile URL) → record id, for importers.
    Identities,
}

impl TreeName {
    /// The tree's name in sled and in the associated data.
    pub fn as_str(self) -> &'static str {
        match self {
            TreeName::Meta => "meta",
            TreeName::Records => "records",
            TreeName::Pending => "pending",
            TreeName::Outbox => "outbox",
            TreeName::Cursors => "cursors",
            TreeName::Identities => "identities",
        }
    }

    /// Every tree.
    pub const ALL: [TreeName; 6] = [
        TreeName::Meta,
        TreeName::Records,
        TreeName::Pending,
        TreeName::Outbox,
        TreeName::Cursors,
        TreeName::Identities,
    ];
}

/// The sealing half of the store: encrypts and decrypts values bound to their place.
#[derive(Clone)]
pub struct ValueCipher {
    cipher: XChaCha20Poly1305,
    index_key: SymmetricKey,
}

impl std::fmt::Debug for ValueCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ValueCipher(<secret>)")
    }
}

impl ValueCipher {
    /// Builds the cipher from the device's local store key.
    pub fn new(local_store_key: &SymmetricKey) -> Self {
        let values = local_store_key.derive(labels::LOCAL_STORE_VALUES);
        let index_key = local_store_key.derive(labels::LOCAL_STORE_INDEX);
        let cipher = XChaCha20Poly1305::new(values.expose().into());
        Self { cipher, index_key }
    }

    /// Seals `plain` for `(tree, key)`: `nonce (24) || ciphertext || tag (16)`, encrypted in
    /// place in the one buffer returned (a record is sealed per write, so the copies count).
    pub fn seal(&self, tree: TreeName, key: &[u8], plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; 24];
        kith_protocol::keys::system_rng().fill_bytes(&mut nonce);
        let aad = lp_concat(&[tree.as_str().as_bytes(), key]);
        let mut out = Vec::with_capacity(24 + plain.len() + 16);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        // Encryption with a valid key cannot fail below the cipher's 256 GiB message limit.
        match self.cipher.encrypt_inout_detached(
            &XNonce::from(nonce),
            &aad,
            out[24..].as_mut().into(),
        ) {
            Ok(tag) => out.extend_from_slice(&tag),
            Err(_) => out.clear(),
        }
        out
    }

    /// Opens a value sealed for `(tree, key)`.
    pub fn open(&self, tree: TreeName, key: &[u8], sealed: &[u8]) -> Result<Vec<u8>, StoreError> {
        let tampered = || StoreError::Tampered {
            tree: tree.as_str(),
            key_hint: hex::encode(&key[..key.len().min(4)]),
        };
        if sealed.len() < 24 + 16 {
            return Err(tampered());
        }
        let (nonce, body) = sealed.split_at(24);
        let nonce = XNonce::try_from(nonce).map_err(|_| tampered())?;
        let aad = lp_concat(&[tree.as_str().as_bytes(), key]);
        self.cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: body,
                    aad: &aad,
                },
            )
            .map_err(|_| tampered())
    }

    /// A blinded index key for an identity string (e.g. `email:alice@example.com`).
    pub fn index_key(&self, identity: &str) -> [u8; 32] {
        self.index_key.blind(&[identity.as_bytes()])
    }
}

/// A decrypted (key, value) pair of a tree.
pub type Entry = (Vec<u8>, Vec<u8>);

/// The device's sled database with encrypted values.
#[derive(Debug, Clone)]
pub struct LocalStore {
    db: sled::Db,
    cipher: ValueCipher,
}

impl LocalStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path, local_store_key: &SymmetricKey) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(CACHE_BYTES)
            .flush_every_ms(Some(500))
            .open()?;
        Ok(Self {
            db,
            cipher: ValueCipher::new(local_store_key),
        })
    }

    /// The value cipher (for transactions that seal values themselves).
    pub fn cipher(&self) -> &ValueCipher {
        &self.cipher
    }

    /// The sled tree.
    pub fn tree(&self, name: TreeName) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree(name.as_str())?)
    }

    /// Reads and decrypts one value.
    pub fn get(&self, tree: TreeName, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.tree(tree)?.get(key)? {
            Some(sealed) => Ok(Some(self.cipher.open(tree, key, &sealed)?)),
            None => Ok(None),
        }
    }

    /// Encrypts and writes one value (not yet durable: see [`LocalStore::flush`]).
    pub fn put(&self, tree: TreeName, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.tree(tree)?
            .insert(key, self.cipher.seal(tree, key, value))?;
        Ok(())
    }

    /// Removes one value.
    pub fn remove(&self, tree: TreeName, key: &[u8]) -> Result<(), StoreError> {
        self.tree(tree)?.remove(key)?;
        Ok(())
    }

    /// Every (key, decrypted value) of a tree in key order.
    pub fn scan(&self, tree: TreeName) -> impl Iterator<Item = Result<Entry, StoreError>> + '_ {
        let opened = self.tree(tree);
        let iter: Box<dyn Iterator<Item = Result<Entry, StoreError>>> = match opened {
            Err(e) => Box::new(std::iter::once(Err(e))),
            Ok(t) => Box::new(t.iter().map(move |item| {
                let (key, sealed) = item?;
                let value = self.cipher.open(tree, &key, &sealed)?;
                Ok((key.to_vec(), value))
            })),
        };
        iter
    }

    /// A unique id, increasing across restarts (sled's id generator).
    pub fn generate_id(&self) -> Result<u64, StoreError> {
        Ok(self.db.generate_id()?)
    }

    /// Number of entries in a tree.
    pub fn len(&self, tree: TreeName) -> Result<usize, StoreError> {
        Ok(self.tree(tree)?.len())
    }

    /// Makes every write so far durable (fsync).
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_async().await?;
        Ok(())
    }

    /// Makes every write so far durable (fsync), blocking.
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A store in a fresh temporary directory, under a fixed key (for unit tests here and in
    /// other modules).
    pub(crate) fn store() -> (tempfile::TempDir, LocalStore) {
        let dir = tempfile::tempdir().unwrap();
        let key = SymmetricKey::from_slice(&[7; 32]).unwrap();
        let store = LocalStore::open(dir.path(), &key).unwrap();
        (dir, store)
    }

    #[test]
    fn values_round_trip_and_are_not_stored_in_plaintext() {
        let (dir, store) = store();
        store
            .put(TreeName::Records, b"k1", b"Ada Lovelace ada@example.com")
            .unwrap();
        store.flush_blocking().unwrap();
        assert_eq!(
            store.get(TreeName::Records, b"k1").unwrap().as_deref(),
            Some(&b"Ada Lovelace ada@example.com"[..])
        );
        drop(store);
        for entry in walk(dir.path()) {
            let bytes = std::fs::read(&entry).unwrap();
            assert!(
                !bytes.windows(12).any(|w| w == b"Ada Lovelace"),
                "plaintext found in {}",
                entry.display()
            );
        }
    }

    #[test]
    fn a_value_moved_to_another_key_is_rejected() {
        let (_dir, store) = store();
        store.put(TreeName::Meta, b"a", b"secret").unwrap();
        let sealed = store
            .tree(TreeName::Meta)
            .unwrap()
            .get(b"a")
            .unwrap()
            .unwrap();
        store
            .tree(TreeName::Meta)
            .unwrap()
            .insert(b"b", sealed)
            .unwrap();
        assert!(matches!(
            store.get(TreeName::Meta, b"b"),
            Err(StoreError::Tampered { .. })
        ));
    }

    #[test]
    fn another_key_cannot_read_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            LocalStore::open(dir.path(), &SymmetricKey::from_slice(&[1; 32]).unwrap()).unwrap();
        store.put(TreeName::Meta, b"a", b"x").unwrap();
        let other = ValueCipher::new(&SymmetricKey::from_slice(&[2; 32]).unwrap());
        let sealed = store
            .tree(TreeName::Meta)
            .unwrap()
            .get(b"a")
            .unwrap()
            .unwrap();
        assert!(other.open(TreeName::Meta, b"a", &sealed).is_err());
    }

    #[test]
    fn index_keys_are_blinded_and_stable() {
        let (_dir, store) = store();
        let a = store.cipher().index_key("email:ada@example.com");
        assert_eq!(a, store.cipher().index_key("email:ada@example.com"));
        assert_ne!(a, store.cipher().index_key("email:bob@example.com"));
    }

    pub(crate) fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
        out
    }
}
