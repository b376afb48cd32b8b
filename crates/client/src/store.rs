//! The device's local store: SQLite in WAL mode, every value encrypted and every index key
//! blinded.
//!
//! Each tree is one table `(key BLOB PRIMARY KEY, value BLOB) WITHOUT ROWID` in
//! `<store dir>/kith.sqlite3`. Values are sealed with XChaCha20-Poly1305 under a sub-key of the
//! device's local store key, with `LP(tree) || LP(key)` as associated data, so a value cannot be
//! moved to another key or tree unnoticed. Keys that would reveal contact data (e-mail → record)
//! are HMACs under a separate sub-key. Nothing in the store's files is plaintext contact data
//! (tested).
//!
//! Several processes can open one store at once (a watcher beside CLI commands, an app beside
//! its notification extension): readers never block, writers take SQLite's write lock with
//! `BEGIN IMMEDIATE` and wait up to [`BUSY_TIMEOUT`] for each other instead of failing.
//! Every commit is durable when it returns (`synchronous = FULL`: the WAL is fsynced at each
//! commit), so a write the caller was told about survives a crash of the process or of the
//! machine. A store written by the previous release (sled, in the same directory) is migrated
//! once on open, and the sled files are kept beside it as a backup ([`migrate`]).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chacha20poly1305::aead::{Aead, AeadInOut, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use kith_protocol::RecordId;
use kith_protocol::encoding::{labels, lp_concat};
use kith_protocol::keys::{Blinder, SymmetricKey};
use kith_protocol::merge::RecordState;
use rand_core::Rng;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior};

mod checkpoint;
#[cfg(feature = "migrate-sled")]
pub mod migrate;

/// The database file inside the store directory.
pub const DB_FILE: &str = "kith.sqlite3";
/// The store's format version (`PRAGMA user_version`). A store with a greater version was
/// written by a newer release and is refused rather than misread; an older one is migrated
/// when opened. Format 2 (0.2.0) keeps records in a rowid table with a unique index on the
/// record id (format 1 kept them in a table ordered by id; the schema is in `store.rs`).
pub const FORMAT_VERSION: i64 = 2;
/// How long a writer waits for another connection's (or process's) write transaction before
/// giving up with [`LocalStoreError::Busy`]. The longest transactions are one import group
/// (16,000 records) or one group of pulled pages (at most 16,000 records): a second or two.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);
/// SQLite's page cache per connection, in KiB (negative `cache_size`): the writer's covers the
/// interior pages of a 100,000-record table; the reader's stays small for phone budgets.
const WRITER_CACHE_KIB: i64 = 8 * 1024;
const READER_CACHE_KIB: i64 = 2 * 1024;
/// The same during a bulk write ([`LocalStore::bulk`]): the record index of a store of
/// 1,000,000 contacts is about 30 MiB, and every chunk of an import reads and rewrites pages
/// all over it.
const BULK_WRITER_CACHE_KIB: i64 = 24 * 1024;
const BULK_READER_CACHE_KIB: i64 = 8 * 1024;
/// WAL pages after which a checkpoint runs during a bulk write (SQLite's default, outside one,
/// is 1,000 after each commit). A chunk of an import dirties about 2,000 pages, most of them
/// index pages the next chunks dirty again: checkpointing after every chunk wrote each such
/// page to the database file once per chunk (8.2 GB written for a 1.2 GB store of 1,000,000
/// contacts); every 64 MiB of WAL, it is written once per checkpoint. The checkpoints run on a
/// thread of their own ([`checkpoint`]); `BULK_AUTOCHECKPOINT_PAGES` is the writer's own
/// automatic checkpoint if that thread cannot be started. `journal_size_limit` still truncates
/// the WAL afterwards.
const BULK_AUTOCHECKPOINT_PAGES: i64 = 16 * 1024;
const AUTOCHECKPOINT_PAGES: i64 = 1000;
/// During a bulk write, the background checkpointer's thresholds: a `PASSIVE` checkpoint every
/// 64 MiB of WAL, and a commit that leaves 256 MiB of WAL waits for the WAL to be restarted
/// (the bound on its size: see [`checkpoint`]).
const BULK_CHECKPOINTS: checkpoint::Thresholds = checkpoint::Thresholds {
    every: 16 * 1024,
    cap: 64 * 1024,
};
/// The checkpointer's page cache, in KiB: a checkpoint copies pages from the WAL to the
/// database file without going through it.
const CHECKPOINTER_CACHE_KIB: i64 = 256;
/// Rows and bytes read per page of a [`LocalStore::scan`].
const SCAN_ROWS: usize = 256;
const SCAN_BYTES: usize = 1024 * 1024;
/// Meta key of the store's id generator ([`LocalStore::generate_id`]).
const NEXT_ID: &[u8] = b"store/next-id";

/// Why the local store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalStoreError {
    /// SQLite reported an I/O or corruption error.
    #[error("local store error: {0}")]
    Db(#[source] rusqlite::Error),
    /// Another process kept the store's write lock for longer than [`BUSY_TIMEOUT`].
    #[error(
        "the local store is busy: another Kith process has been writing to it for {} s; try again when it has finished",
        BUSY_TIMEOUT.as_secs()
    )]
    Busy,
    /// A file operation on the store's directory failed.
    #[error("local store file error: {context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The store was written by a newer release of Kith.
    #[error(
        "the local store has format {found}, newer than this release reads ({supported}): update Kith to open it"
    )]
    TooNew {
        /// The store's format version.
        found: i64,
        /// The newest version this release reads.
        supported: i64,
    },
    /// Migrating the previous release's store failed; the old store is left as it was.
    #[error("cannot migrate the previous release's local store: {0}")]
    Migration(String),
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

impl From<rusqlite::Error> for LocalStoreError {
    fn from(error: rusqlite::Error) -> Self {
        match error.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                LocalStoreError::Busy
            }
            _ => LocalStoreError::Db(error),
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
    /// The tree's name: its SQLite table and its part of every value's associated data.
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
    /// The index key, keyed into HMAC once: a pull blinds every identity of every record it
    /// writes.
    index_key: Blinder,
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
        let index_key = local_store_key.derive(labels::LOCAL_STORE_INDEX).blinder();
        let cipher = XChaCha20Poly1305::new(values.expose().into());
        Self { cipher, index_key }
    }

    /// Seals `plain` for `(tree, key)`: `nonce (24) || ciphertext || tag (16)`, encrypted in
    /// place in the one buffer returned (a record is sealed per write, so the copies count).
    pub fn seal(&self, tree: TreeName, key: &[u8], plain: &[u8]) -> Vec<u8> {
        self.seal_with(tree, key, plain.len(), |out| out.extend_from_slice(plain))
    }

    /// Seals record `id`'s encoded `state` for the records tree: [`ValueCipher::seal`] of
    /// `state.encode_to_vec()`, the state encoded straight into the sealed buffer after its
    /// nonce rather than into a vector of its own copied there (every record a pull or an
    /// import writes is sealed).
    pub(crate) fn seal_record(&self, id: &RecordId, state: &RecordState) -> Vec<u8> {
        self.seal_with(
            TreeName::Records,
            id.as_bytes(),
            state.encoded_len_estimate(),
            |out| state.encode_into(out),
        )
    }

    /// Seals for `(tree, key)` the plaintext `write` appends to the buffer (about `len`
    /// bytes), after the nonce: it is encrypted where it was written.
    fn seal_with(
        &self,
        tree: TreeName,
        key: &[u8],
        len: usize,
        write: impl FnOnce(&mut Vec<u8>),
    ) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        kith_protocol::keys::buffered_rng().fill_bytes(&mut nonce);
        let aad = lp_concat(&[tree.as_str().as_bytes(), key]);
        let mut out = Vec::with_capacity(NONCE_LEN + len + TAG_LEN);
        out.extend_from_slice(&nonce);
        write(&mut out);
        // Encryption with a valid key cannot fail below the cipher's 256 GiB message limit.
        match self.cipher.encrypt_inout_detached(
            &XNonce::from(nonce),
            &aad,
            out[NONCE_LEN..].as_mut().into(),
        ) {
            Ok(tag) => out.extend_from_slice(&tag),
            Err(_) => out.clear(),
        }
        out
    }

    /// Opens a value sealed for `(tree, key)`.
    pub fn open(
        &self,
        tree: TreeName,
        key: &[u8],
        sealed: &[u8],
    ) -> Result<Vec<u8>, LocalStoreError> {
        let tampered = || LocalStoreError::Tampered {
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

/// Bytes of a sealed value's nonce, which opens it (`nonce || ciphertext || tag`).
const NONCE_LEN: usize = 24;

/// Bytes of a sealed value's authentication tag, at its end.
const TAG_LEN: usize = 16;

/// Which sealing of a value the store holds: the sealed value's nonce. [`ValueCipher::seal`]
/// draws 192 random bits for every sealing, and every write of a value stores a new sealing
/// (a value is never sealed twice with one nonce: two sealings share one with probability
/// 2⁻¹⁹² a pair), so a value whose stored nonce is still the one read has not been written
/// since: its bytes, and what they open to, are the ones read. This is what lets a writer
/// that read and merged a record replace it without reading and opening it again
/// ([`StoreTxn::replace_sealed_at`]), and still notice a write by another process in between.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct ValueVersion([u8; NONCE_LEN]);

impl ValueVersion {
    /// The version of a sealed value (`None` for one too short to have been sealed).
    pub(crate) fn of(sealed: &[u8]) -> Option<Self> {
        Some(Self(sealed.get(..NONCE_LEN)?.try_into().ok()?))
    }
}

impl std::fmt::Debug for ValueVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ValueVersion({})", hex::encode(&self.0[..4]))
    }
}

/// A decrypted (key, value) pair of a tree.
pub type Entry = (Vec<u8>, Vec<u8>);

/// The SQL text of each statement on one tree's table (table names cannot be bound
/// parameters): `name(tree)` is `before`, the tree's table, then `after`.
macro_rules! per_tree_statements {
    ($($name:ident: $before:literal, $after:literal;)*) => {$(
        fn $name(tree: TreeName) -> &'static str {
            match tree {
                TreeName::Meta => concat!($before, "meta", $after),
                TreeName::Records => concat!($before, "records", $after),
                TreeName::Pending => concat!($before, "pending", $after),
                TreeName::Outbox => concat!($before, "outbox", $after),
                TreeName::Cursors => concat!($before, "cursors", $after),
                TreeName::Identities => concat!($before, "identities", $after),
            }
        }
    )*};
}

per_tree_statements! {
    get_sql: "SELECT value FROM ", " WHERE key = ?1";
    put_sql: "INSERT OR REPLACE INTO ", " (key, value) VALUES (?1, ?2)";
    insert_new_sql: "INSERT INTO ", " (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING";
    // The version is the value's first `NONCE_LEN` bytes (`ValueVersion`).
    replace_at_sql: "UPDATE ", " SET value = ?2 WHERE key = ?1 AND substr(value, 1, 24) = ?3";
    remove_sql: "DELETE FROM ", " WHERE key = ?1";
    scan_sql: "SELECT key, value FROM ", " WHERE key >= ?1 ORDER BY key";
    keys_sql: "SELECT key FROM ", " ORDER BY key";
    any_sql: "SELECT 1 FROM ", " LIMIT 1";
    count_sql: "SELECT count(*) FROM ", "";
}

/// The schema of format 2: one table per tree.
///
/// Records are stored in insertion order (a rowid table) and found through a unique index on
/// their id. Record ids are blinded, so uniformly random: in a table ordered by id (format 1)
/// each record an import adds lands in a different page, and a chunk of 2,000 new records
/// rewrote about 2,000 pages of a large store, through the WAL and again at the checkpoint.
/// Appended, they fill a few new pages; only the index (about 40 bytes per record) is written
/// at random places. A 1,000,000-row LinkedIn import went from 51 to 37 s (BENCHMARKS.md).
const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS meta (key BLOB PRIMARY KEY NOT NULL, value BLOB NOT NULL) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS records (key BLOB NOT NULL UNIQUE, value BLOB NOT NULL);
    CREATE TABLE IF NOT EXISTS pending (key BLOB PRIMARY KEY NOT NULL, value BLOB NOT NULL) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS outbox (key BLOB PRIMARY KEY NOT NULL, value BLOB NOT NULL) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS cursors (key BLOB PRIMARY KEY NOT NULL, value BLOB NOT NULL) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS identities (key BLOB PRIMARY KEY NOT NULL, value BLOB NOT NULL) WITHOUT ROWID;
";

/// The device's SQLite database with encrypted values. Cheap to clone; clones share the
/// connections.
#[derive(Debug, Clone)]
pub struct LocalStore {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// Every write goes through this connection: single statements in autocommit, and
    /// [`LocalStore::transaction`]s.
    writer: Mutex<Connection>,
    /// Reads outside transactions, so reading (e.g. merging the next batch of an import) does
    /// not wait for a write in flight on another thread (WAL readers see the last commit).
    reader: Mutex<Connection>,
    cipher: ValueCipher,
    path: PathBuf,
}

fn lock(connection: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    // A panic while holding a connection leaves it usable: an open transaction is rolled back
    // when its guard is dropped during the unwind.
    connection
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn io_error(context: String) -> impl FnOnce(std::io::Error) -> LocalStoreError {
    move |source| LocalStoreError::Io { context, source }
}

/// Opens one connection with the store's settings: WAL, `synchronous = FULL`, busy timeout.
fn connect(path: &Path, cache_kib: i64) -> Result<Connection, LocalStoreError> {
    let connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    connection.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String =
        connection.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(LocalStoreError::Migration(format!(
            "{} cannot use write-ahead logging (journal mode {mode})",
            path.display()
        )));
    }
    // FULL: the WAL is fsynced at every commit, so an acknowledged write survives a power
    // loss, not only a crash of the process (NORMAL would lose the last commits then).
    connection.pragma_update(None, "synchronous", "FULL")?;
    connection.pragma_update(None, "cache_size", -cache_kib)?;
    // Keep the WAL from staying at its largest size (e.g. after a big import) forever.
    connection.pragma_update(None, "journal_size_limit", 16 * 1024 * 1024)?;
    connection.set_prepared_statement_cache_capacity(64);
    Ok(connection)
}

/// [`LocalStore::bulk`]'s settings, in force until this drops: then the usual caches and
/// automatic checkpoints come back (SQLite frees the pages beyond the caches), and the
/// background checkpointer ends after one last checkpoint of its own.
#[derive(Debug)]
#[must_use = "the bulk settings end when this is dropped"]
pub struct BulkWrite<'a> {
    store: &'a LocalStore,
    /// `None` if its thread or connection could not be started: the writer then checkpoints
    /// every [`BULK_AUTOCHECKPOINT_PAGES`] itself, as before there was one.
    checkpointer: Option<checkpoint::Checkpointer>,
}

impl Drop for BulkWrite<'_> {
    fn drop(&mut self) {
        // Dropping the checkpointer lets its thread run one last checkpoint without waiting
        // for it.
        drop(self.end());
    }
}

impl BulkWrite<'_> {
    /// Restores the usual settings; returns the checkpointer, still running its last
    /// checkpoint.
    fn end(&mut self) -> Option<checkpoint::Checkpointer> {
        // Failing to restore settings loses nothing: they are performance settings only, and
        // a new connection starts with the usual ones. The hook goes first: setting
        // `wal_autocheckpoint` installs SQLite's own.
        let checkpointer = self.checkpointer.take();
        if checkpointer.is_some() {
            let _ = lock(&self.store.shared.writer).wal_hook(None::<checkpoint::NoHook>);
        }
        let _ = self
            .store
            .tune(WRITER_CACHE_KIB, READER_CACHE_KIB, AUTOCHECKPOINT_PAGES);
        match &checkpointer {
            Some(checkpointer) => {
                let counts = checkpointer.counts();
                tracing::debug!(
                    passive = counts.passive,
                    restarts = counts.restarts,
                    waited_ms = counts.waited.as_millis(),
                    "bulk write ended; the last checkpoint runs in the background"
                );
            }
            None => {
                checkpoint::checkpoint(&lock(&self.store.shared.writer), "PASSIVE");
            }
        }
        checkpointer
    }

    /// Ends the bulk write as dropping it does, then waits for the checkpointer's last
    /// checkpoint; what it did (`None` without one).
    #[cfg(test)]
    fn end_and_wait(mut self) -> Option<checkpoint::CheckpointCounts> {
        self.end().map(checkpoint::Checkpointer::finish)
    }
}

/// Creates the tables of a new store, or checks the format of an existing one.
fn prepare_schema(connection: &mut Connection) -> Result<(), LocalStoreError> {
    // Opening an existing store takes no write lock: another process may be writing.
    let version: i64 = connection.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if version == FORMAT_VERSION {
        return Ok(());
    }
    let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if version > FORMAT_VERSION {
        return Err(LocalStoreError::TooNew {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    if version == 1 {
        // Format 1 kept records in a table ordered by id: copy them into format 2's table.
        tx.execute_batch(
            "CREATE TABLE records_v2 (key BLOB NOT NULL UNIQUE, value BLOB NOT NULL);
             INSERT INTO records_v2 (key, value) SELECT key, value FROM records;
             DROP TABLE records;
             ALTER TABLE records_v2 RENAME TO records;",
        )?;
    }
    if version < FORMAT_VERSION {
        tx.execute_batch(SCHEMA)?;
        tx.pragma_update(None, "user_version", FORMAT_VERSION)?;
    }
    tx.commit()?;
    Ok(())
}

impl LocalStore {
    /// Opens (or creates) the store in `dir`. A store of the previous release (sled) found
    /// there is migrated first (see [`migrate`]).
    pub fn open(dir: &Path, local_store_key: &SymmetricKey) -> Result<Self, LocalStoreError> {
        std::fs::create_dir_all(dir)
            .map_err(io_error(format!("cannot create {}", dir.display())))?;
        let path = dir.join(DB_FILE);
        let cipher = ValueCipher::new(local_store_key);
        if is_sled_store(dir) {
            #[cfg(feature = "migrate-sled")]
            migrate::from_sled(dir, &path, &cipher)?;
            #[cfg(not(feature = "migrate-sled"))]
            return Err(LocalStoreError::Migration(format!(
                "{} holds the previous release's store, and this build of kith-client was made without the `migrate-sled` feature that reads it",
                dir.display()
            )));
        }
        let mut writer = connect(&path, WRITER_CACHE_KIB)?;
        prepare_schema(&mut writer)?;
        let reader = connect(&path, READER_CACHE_KIB)?;
        #[cfg(feature = "migrate-sled")]
        migrate::move_sled_files(dir)?;
        #[cfg(unix)]
        restrict_permissions(dir, &path);
        Ok(Self {
            shared: Arc::new(Shared {
                writer: Mutex::new(writer),
                reader: Mutex::new(reader),
                cipher,
                path,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// The value cipher (for transactions that seal values themselves).
    pub fn cipher(&self) -> &ValueCipher {
        &self.shared.cipher
    }

    /// Reads and decrypts one value.
    pub fn get(&self, tree: TreeName, key: &[u8]) -> Result<Option<Vec<u8>>, LocalStoreError> {
        let sealed = self.get_sealed(tree, key)?;
        sealed
            .map(|sealed| self.cipher().open(tree, key, &sealed))
            .transpose()
    }

    /// Reads one value as stored (sealed).
    pub fn get_sealed(
        &self,
        tree: TreeName,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, LocalStoreError> {
        let reader = lock(&self.shared.reader);
        Ok(reader
            .prepare_cached(get_sql(tree))?
            .query_row([key], |row| row.get::<_, Vec<u8>>(0))
            .optional()?)
    }

    /// Reads and decrypts the values of `keys`, in their order, in one read transaction: one
    /// snapshot of the store, and the reader's lock taken once instead of once a key (a pull
    /// reads every record of a page before merging it; most are new, and one point read
    /// each, an implicit transaction apiece, was a sixth of its merging). Values are
    /// decrypted after the reader is released.
    pub fn get_many(
        &self,
        tree: TreeName,
        keys: &[&[u8]],
    ) -> Result<Vec<Option<Vec<u8>>>, LocalStoreError> {
        let sealed = self.get_many_sealed(tree, keys)?;
        keys.iter()
            .zip(sealed)
            .map(|(key, sealed)| {
                sealed
                    .map(|sealed| self.cipher().open(tree, key, &sealed))
                    .transpose()
            })
            .collect()
    }

    /// [`LocalStore::get_many`] without opening the values: each as stored (sealed), for a
    /// caller that also keeps its [`ValueVersion`].
    pub(crate) fn get_many_sealed(
        &self,
        tree: TreeName,
        keys: &[&[u8]],
    ) -> Result<Vec<Option<Vec<u8>>>, LocalStoreError> {
        let reader = lock(&self.shared.reader);
        let tx = reader.unchecked_transaction()?;
        let mut sealed = Vec::with_capacity(keys.len());
        {
            let mut statement = tx.prepare_cached(get_sql(tree))?;
            for key in keys {
                sealed.push(
                    statement
                        .query_row([key], |row| row.get::<_, Vec<u8>>(0))
                        .optional()?,
                );
            }
        }
        // A read transaction: ending it releases the snapshot, whatever way.
        tx.rollback()?;
        Ok(sealed)
    }

    /// Encrypts and writes one value, durably: a transaction of its own (a value already
    /// sealed is written by [`StoreTxn::put_sealed`] in one).
    pub fn put(&self, tree: TreeName, key: &[u8], value: &[u8]) -> Result<(), LocalStoreError> {
        self.transaction(|txn| txn.put(tree, key, value))
    }

    /// Removes one value, durably.
    pub fn remove(&self, tree: TreeName, key: &[u8]) -> Result<(), LocalStoreError> {
        let writer = lock(&self.shared.writer);
        writer.prepare_cached(remove_sql(tree))?.execute([key])?;
        Ok(())
    }

    /// Every (key, decrypted value) of a tree in key order. Read page by page: memory stays
    /// bounded whatever the tree holds, and writes between pages may or may not be seen.
    pub fn scan(
        &self,
        tree: TreeName,
    ) -> impl Iterator<Item = Result<Entry, LocalStoreError>> + '_ {
        self.scan_prefix(tree, &[])
    }

    /// Every (key, decrypted value) of a tree whose key starts with `prefix`, in key order.
    pub fn scan_prefix(
        &self,
        tree: TreeName,
        prefix: &[u8],
    ) -> impl Iterator<Item = Result<Entry, LocalStoreError>> + '_ {
        Scan {
            store: self,
            tree,
            prefix: prefix.to_vec(),
            next: Some(prefix.to_vec()),
            page: VecDeque::new(),
        }
    }

    /// Every (key, decrypted value) of a tree whose key is `start` or after, in key order,
    /// read page by page as [`LocalStore::scan`] reads.
    pub fn scan_from(
        &self,
        tree: TreeName,
        start: &[u8],
    ) -> impl Iterator<Item = Result<Entry, LocalStoreError>> + '_ + use<'_> {
        Scan {
            store: self,
            tree,
            prefix: Vec::new(),
            next: Some(start.to_vec()),
            page: VecDeque::new(),
        }
    }

    /// Every key of a tree, in order (values are not read).
    pub fn keys(&self, tree: TreeName) -> Result<Vec<Vec<u8>>, LocalStoreError> {
        let reader = lock(&self.shared.reader);
        let mut statement = reader.prepare_cached(keys_sql(tree))?;
        let keys = statement
            .query_map([], |row| row.get::<_, Vec<u8>>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(keys)
    }

    /// Whether a tree holds nothing (constant time).
    pub fn is_empty(&self, tree: TreeName) -> Result<bool, LocalStoreError> {
        let reader = lock(&self.shared.reader);
        let any = reader
            .prepare_cached(any_sql(tree))?
            .query_row([], |_| Ok(()))
            .optional()?;
        Ok(any.is_none())
    }

    /// Number of entries in a tree. Counts every row: for tests and diagnostics, not for a
    /// path that runs on every sync.
    pub fn len(&self, tree: TreeName) -> Result<usize, LocalStoreError> {
        let reader = lock(&self.shared.reader);
        let count: i64 = reader
            .prepare_cached(count_sql(tree))?
            .query_row([], |row| row.get(0))?;
        Ok(usize::try_from(count).unwrap_or(0))
    }

    /// A unique id, increasing across restarts and across the processes sharing the store.
    pub fn generate_id(&self) -> Result<u64, LocalStoreError> {
        self.transaction(|tx| tx.next_id())
    }

    /// Runs `f` in one write transaction (`BEGIN IMMEDIATE`: it waits for any other writer,
    /// in this process or another, then holds the write lock): everything `f` wrote is
    /// committed durably if it returns `Ok`, and nothing is if it returns an error.
    pub fn transaction<T, E>(&self, f: impl FnOnce(&StoreTxn<'_>) -> Result<T, E>) -> Result<T, E>
    where
        E: From<LocalStoreError>,
    {
        let mut writer = lock(&self.shared.writer);
        let tx = writer
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(LocalStoreError::from)?;
        let txn = StoreTxn {
            tx,
            cipher: &self.shared.cipher,
        };
        let value = f(&txn)?;
        txn.tx.commit().map_err(LocalStoreError::from)?;
        Ok(value)
    }

    /// Settings for a long run of large transactions (an import, a pull), until the guard
    /// drops: larger page caches, and checkpoints every 64 MiB of WAL on a thread of their own
    /// instead of every 4 MiB on the writer's, so that pages dirtied by every transaction (the
    /// record index) are written to the database file less often and the writer never waits
    /// for that I/O (unless the WAL reaches 256 MiB: see `store/checkpoint.rs`). Memory grows by at
    /// most the difference of the caches (22 MiB) and the checkpointer's; the settings are per
    /// connection, so another process sharing the store is not affected.
    pub fn bulk(&self) -> Result<BulkWrite<'_>, LocalStoreError> {
        self.bulk_with(BULK_CHECKPOINTS)
    }

    fn bulk_with(
        &self,
        thresholds: checkpoint::Thresholds,
    ) -> Result<BulkWrite<'_>, LocalStoreError> {
        self.tune(
            BULK_WRITER_CACHE_KIB,
            BULK_READER_CACHE_KIB,
            BULK_AUTOCHECKPOINT_PAGES,
        )?;
        let started =
            connect(&self.shared.path, CHECKPOINTER_CACHE_KIB).and_then(|connection| {
                let checkpointer = checkpoint::Checkpointer::start(connection, thresholds)
                    .map_err(|source| LocalStoreError::Io {
                        context: "cannot start the store's checkpointer".into(),
                        source,
                    })?;
                // Replaces SQLite's automatic checkpoint on the writer.
                lock(&self.shared.writer).wal_hook(Some(checkpointer.hook(thresholds.cap)))?;
                Ok(checkpointer)
            });
        let checkpointer = match started {
            Ok(checkpointer) => Some(checkpointer),
            Err(error) => {
                tracing::debug!(%error, "bulk write without a background checkpointer");
                None
            }
        };
        Ok(BulkWrite {
            store: self,
            checkpointer,
        })
    }

    fn tune(
        &self,
        writer_cache_kib: i64,
        reader_cache_kib: i64,
        autocheckpoint: i64,
    ) -> Result<(), LocalStoreError> {
        {
            let writer = lock(&self.shared.writer);
            writer.pragma_update(None, "cache_size", -writer_cache_kib)?;
            writer.pragma_update(None, "wal_autocheckpoint", autocheckpoint)?;
        }
        let reader = lock(&self.shared.reader);
        reader.pragma_update(None, "cache_size", -reader_cache_kib)?;
        Ok(())
    }

    /// A number that changes whenever a connection other than this store's reader commits a
    /// change (SQLite's `data_version`): another process, or this store's own writes. Cheap
    /// (no I/O), so a watcher can poll it to notice what other processes wrote.
    pub fn data_version(&self) -> Result<i64, LocalStoreError> {
        let reader = lock(&self.shared.reader);
        Ok(reader.pragma_query_value(None, "data_version", |row| row.get(0))?)
    }

    /// Every commit is durable when it returns (`synchronous = FULL`); kept so callers can
    /// mark the points where durability is required.
    pub async fn flush(&self) -> Result<(), LocalStoreError> {
        Ok(())
    }

    /// See [`LocalStore::flush`].
    pub fn flush_blocking(&self) -> Result<(), LocalStoreError> {
        Ok(())
    }

    /// Reads one page of `tree` from `start`: at most [`SCAN_ROWS`] rows and about
    /// [`SCAN_BYTES`] bytes. Returns the rows (sealed) and whether more may follow.
    fn page(&self, tree: TreeName, start: &[u8]) -> Result<(Vec<Entry>, bool), LocalStoreError> {
        let reader = lock(&self.shared.reader);
        let mut statement = reader.prepare_cached(scan_sql(tree))?;
        let mut rows = statement.query([start])?;
        let mut page = Vec::new();
        let mut bytes = 0;
        while let Some(row) = rows.next()? {
            let key: Vec<u8> = row.get(0)?;
            let value: Vec<u8> = row.get(1)?;
            bytes += key.len() + value.len();
            page.push((key, value));
            if page.len() >= SCAN_ROWS || bytes >= SCAN_BYTES {
                return Ok((page, true));
            }
        }
        Ok((page, false))
    }
}

/// A paged scan (see [`LocalStore::scan_prefix`]).
struct Scan<'a> {
    store: &'a LocalStore,
    tree: TreeName,
    prefix: Vec<u8>,
    /// The smallest key of the next page; `None` once the last page was read.
    next: Option<Vec<u8>>,
    page: VecDeque<Entry>,
}

impl Iterator for Scan<'_> {
    type Item = Result<Entry, LocalStoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.page.is_empty() {
            let start = self.next.take()?;
            match self.store.page(self.tree, &start) {
                Err(e) => return Some(Err(e)),
                Ok((page, more)) => {
                    if more && let Some((last, _)) = page.last() {
                        // The smallest key greater than `last`.
                        let mut next = last.clone();
                        next.push(0);
                        self.next = Some(next);
                    }
                    self.page = page.into();
                }
            }
        }
        let (key, sealed) = self.page.pop_front()?;
        if !key.starts_with(&self.prefix) {
            self.page.clear();
            self.next = None;
            return None;
        }
        Some(
            self.store
                .cipher()
                .open(self.tree, &key, &sealed)
                .map(|value| (key, value)),
        )
    }
}

/// A write transaction (see [`LocalStore::transaction`]). Reads inside it see its own writes
/// and every commit before it began.
pub struct StoreTxn<'a> {
    tx: rusqlite::Transaction<'a>,
    cipher: &'a ValueCipher,
}

impl std::fmt::Debug for StoreTxn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreTxn")
    }
}

impl StoreTxn<'_> {
    /// The value cipher.
    pub fn cipher(&self) -> &ValueCipher {
        self.cipher
    }

    /// Reads and decrypts one value.
    pub fn get(&self, tree: TreeName, key: &[u8]) -> Result<Option<Vec<u8>>, LocalStoreError> {
        let sealed: Option<Vec<u8>> = self
            .tx
            .prepare_cached(get_sql(tree))?
            .query_row([key], |row| row.get(0))
            .optional()?;
        sealed
            .map(|sealed| self.cipher.open(tree, key, &sealed))
            .transpose()
    }

    /// Encrypts and writes one value.
    pub fn put(&self, tree: TreeName, key: &[u8], value: &[u8]) -> Result<(), LocalStoreError> {
        self.put_sealed(tree, key, &self.cipher.seal(tree, key, value))
    }

    /// Writes one value already sealed for `(tree, key)`.
    pub fn put_sealed(
        &self,
        tree: TreeName,
        key: &[u8],
        sealed: &[u8],
    ) -> Result<(), LocalStoreError> {
        self.tx
            .prepare_cached(put_sql(tree))?
            .execute(rusqlite::params![key, sealed])?;
        Ok(())
    }

    /// Writes one value already sealed for `(tree, key)` if the tree holds nothing under
    /// `key`; whether it was written. One lookup of the key where a [`StoreTxn::get`] followed
    /// by a [`StoreTxn::put_sealed`] costs two.
    pub fn insert_sealed_if_absent(
        &self,
        tree: TreeName,
        key: &[u8],
        sealed: &[u8],
    ) -> Result<bool, LocalStoreError> {
        Ok(self
            .tx
            .prepare_cached(insert_new_sql(tree))?
            .execute(rusqlite::params![key, sealed])?
            > 0)
    }

    /// Replaces the value under `key` by `sealed` (sealed for `(tree, key)`) if the stored
    /// value is still at `version`; whether it was. One lookup of the key, nothing opened: a
    /// caller that read and merged the value at `version` writes its state without reading
    /// it again, and learns when another connection (another process) wrote it since.
    pub(crate) fn replace_sealed_at(
        &self,
        tree: TreeName,
        key: &[u8],
        version: &ValueVersion,
        sealed: &[u8],
    ) -> Result<bool, LocalStoreError> {
        Ok(self
            .tx
            .prepare_cached(replace_at_sql(tree))?
            .execute(rusqlite::params![key, sealed, &version.0[..]])?
            > 0)
    }

    /// Removes one value.
    pub fn remove(&self, tree: TreeName, key: &[u8]) -> Result<(), LocalStoreError> {
        self.removed(tree, key).map(drop)
    }

    /// Removes one value; whether there was one (without reading or opening it).
    pub fn removed(&self, tree: TreeName, key: &[u8]) -> Result<bool, LocalStoreError> {
        Ok(self.tx.prepare_cached(remove_sql(tree))?.execute([key])? > 0)
    }

    /// Every key of a tree, in order.
    pub fn keys(&self, tree: TreeName) -> Result<Vec<Vec<u8>>, LocalStoreError> {
        let mut statement = self.tx.prepare_cached(keys_sql(tree))?;
        let keys = statement
            .query_map([], |row| row.get::<_, Vec<u8>>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(keys)
    }

    /// Calls `f` with every (key, decrypted value) of a tree, in key order, one at a time.
    pub fn for_each(
        &self,
        tree: TreeName,
        mut f: impl FnMut(&[u8], Vec<u8>) -> Result<(), LocalStoreError>,
    ) -> Result<(), LocalStoreError> {
        let mut statement = self.tx.prepare_cached(scan_sql(tree))?;
        let mut rows = statement.query([&[] as &[u8]])?;
        while let Some(row) = rows.next()? {
            let key = row.get_ref(0)?.as_blob().map_err(rusqlite::Error::from)?;
            let sealed = row.get_ref(1)?.as_blob().map_err(rusqlite::Error::from)?;
            let value = self.cipher.open(tree, key, sealed)?;
            f(key, value)?;
        }
        Ok(())
    }

    /// The store's next unique id (see [`LocalStore::generate_id`]).
    pub fn next_id(&self) -> Result<u64, LocalStoreError> {
        let next = match self.get(TreeName::Meta, NEXT_ID)? {
            Some(bytes) => u64::from_be_bytes(bytes.as_slice().try_into().map_err(|_| {
                LocalStoreError::Corrupt {
                    tree: "meta",
                    reason: "the id generator is not 8 bytes".into(),
                }
            })?),
            None => 0,
        };
        self.put(TreeName::Meta, NEXT_ID, &(next + 1).to_be_bytes())?;
        Ok(next)
    }
}

/// Whether `dir` holds the previous release's sled store and no SQLite store yet.
fn is_sled_store(dir: &Path) -> bool {
    dir.join("conf").is_file() && dir.join("db").is_file() && !dir.join(DB_FILE).exists()
}

/// The store holds only ciphertext, but its size and timing still say something: keep the
/// directory and files to their owner (best effort: an app's sandbox may not allow it).
#[cfg(unix)]
fn restrict_permissions(dir: &Path, path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
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

    /// Seals a value at (`from`, `key`), stores its sealed bytes at (`to`, `moved_to`) and
    /// expects reading them there to be refused as tampered.
    fn assert_moved_value_is_refused(from: TreeName, key: &[u8], to: TreeName, moved_to: &[u8]) {
        let (_dir, store) = store();
        store.put(from, key, b"secret").unwrap();
        let sealed = store.get_sealed(from, key).unwrap().unwrap();
        store
            .transaction(|txn| txn.put_sealed(to, moved_to, &sealed))
            .unwrap();
        assert!(matches!(
            store.get(to, moved_to),
            Err(LocalStoreError::Tampered { .. })
        ));
    }

    #[test]
    fn a_value_moved_to_another_key_is_rejected() {
        assert_moved_value_is_refused(TreeName::Meta, b"a", TreeName::Meta, b"b");
    }

    #[test]
    fn another_key_cannot_read_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            LocalStore::open(dir.path(), &SymmetricKey::from_slice(&[1; 32]).unwrap()).unwrap();
        store.put(TreeName::Meta, b"a", b"x").unwrap();
        let other = ValueCipher::new(&SymmetricKey::from_slice(&[2; 32]).unwrap());
        let sealed = store.get_sealed(TreeName::Meta, b"a").unwrap().unwrap();
        assert!(other.open(TreeName::Meta, b"a", &sealed).is_err());
    }

    #[test]
    fn index_keys_are_blinded_and_stable() {
        let (_dir, store) = store();
        let a = store.cipher().index_key("email:ada@example.com");
        assert_eq!(a, store.cipher().index_key("email:ada@example.com"));
        assert_ne!(a, store.cipher().index_key("email:bob@example.com"));
        // Index keys are stored: the prepared blinder gives the key's blinding, byte for byte.
        let local = SymmetricKey::from_slice(&[7; 32]).unwrap();
        let index_key = local.derive(labels::LOCAL_STORE_INDEX);
        let cipher = ValueCipher::new(&local);
        for identity in ["email:ada@example.com", "phone:+15551234567", ""] {
            assert_eq!(
                cipher.index_key(identity),
                index_key.blind(&[identity.as_bytes()])
            );
        }
    }

    #[test]
    fn a_sealed_record_opens_to_its_encoding_and_only_in_its_place() {
        use kith_protocol::hlc::HlcClock;
        use kith_protocol::record::{FieldKey, FieldWrite, Operation, value};
        let (_dir, store) = store();
        let cipher = store.cipher();
        let id = RecordId::from_bytes([3; 16]);
        let mut clock = HlcClock::new(kith_protocol::DeviceId::from_bytes([1; 16]));
        let mut state = RecordState::new(id);
        let mut states = vec![state.clone()];
        // A small state, then one far longer than its estimate (the buffer grows while the
        // state is encoded into it), then a deleted one.
        let name = FieldWrite::set(FieldKey::name(), value::text("Ada"), []).unwrap();
        state.apply(&Operation::upsert(id, clock.tick(1_000), [name]).unwrap());
        states.push(state.clone());
        let note = FieldWrite::set(FieldKey::note(), value::text("n".repeat(5_000)), []).unwrap();
        state.apply(&Operation::upsert(id, clock.tick(2_000), [note]).unwrap());
        assert!(state.encode_to_vec().len() > state.encoded_len_estimate());
        states.push(state.clone());
        state.apply(&Operation::delete(id, clock.tick(3_000)));
        states.push(state);
        for state in &states {
            let encoded = state.encode_to_vec();
            let sealed = cipher.seal_record(&id, state);
            assert_eq!(sealed.len(), NONCE_LEN + encoded.len() + TAG_LEN);
            assert_eq!(
                cipher
                    .open(TreeName::Records, id.as_bytes(), &sealed)
                    .unwrap(),
                encoded
            );
            assert!(cipher.open(TreeName::Records, &[4; 16], &sealed).is_err());
            assert!(cipher.open(TreeName::Meta, id.as_bytes(), &sealed).is_err());
            // Fresh nonces: no two sealings are the same bytes.
            assert_ne!(sealed, cipher.seal_record(&id, state));
        }
    }

    #[test]
    fn a_value_moved_to_another_tree_is_rejected() {
        assert_moved_value_is_refused(TreeName::Records, b"k", TreeName::Pending, b"k");
    }

    #[test]
    fn scans_page_through_a_tree_in_key_order_and_stop_at_the_prefix() {
        let (_dir, store) = store();
        // More rows than one page, and values big enough to end pages by bytes too.
        let n = SCAN_ROWS as u32 * 2 + 7;
        store
            .transaction(|tx| {
                for i in 0..n {
                    let mut key = b"p/".to_vec();
                    key.extend_from_slice(&i.to_be_bytes());
                    tx.put(TreeName::Meta, &key, &vec![i as u8; 9_000])?;
                }
                tx.put(TreeName::Meta, b"q", b"after")?;
                tx.put(TreeName::Meta, b"a", b"before")
            })
            .unwrap();
        let keys: Vec<Vec<u8>> = store
            .scan_prefix(TreeName::Meta, b"p/")
            .map(|item| item.unwrap().0)
            .collect();
        assert_eq!(keys.len(), n as usize);
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(store.scan(TreeName::Meta).count(), n as usize + 2);
        assert_eq!(store.len(TreeName::Meta).unwrap(), n as usize + 2);
        assert!(!store.is_empty(TreeName::Meta).unwrap());
        assert!(store.is_empty(TreeName::Outbox).unwrap());
    }

    #[test]
    fn a_failed_transaction_writes_nothing() {
        let (_dir, store) = store();
        let result: Result<(), LocalStoreError> = store.transaction(|tx| {
            tx.put(TreeName::Records, b"r", b"half")?;
            Err(LocalStoreError::WriterFailed("stop".into()))
        });
        assert!(result.is_err());
        assert_eq!(store.get(TreeName::Records, b"r").unwrap(), None);
    }

    /// A value is replaced at the version it was read at, and only then: once anything (here
    /// another handle, as another process) wrote it since, even the same plaintext, the
    /// replacement writes nothing; a key with no value is not created.
    #[test]
    fn a_value_is_replaced_only_at_the_version_it_was_read_at() {
        let (dir, store) = store();
        let other =
            LocalStore::open(dir.path(), &SymmetricKey::from_slice(&[7; 32]).unwrap()).unwrap();
        let seal = |plain: &[u8]| store.cipher().seal(TreeName::Records, b"r", plain);
        let replace = |version: &ValueVersion, plain: &[u8]| {
            store
                .transaction(|tx| {
                    tx.replace_sealed_at(TreeName::Records, b"r", version, &seal(plain))
                })
                .unwrap()
        };
        store.put(TreeName::Records, b"r", b"one").unwrap();
        let read = store.get_sealed(TreeName::Records, b"r").unwrap().unwrap();
        let version = ValueVersion::of(&read).unwrap();
        assert!(replace(&version, b"two"));
        assert_eq!(store.get(TreeName::Records, b"r").unwrap().unwrap(), b"two");
        // `version` was replaced: it no longer matches.
        assert!(!replace(&version, b"three"));
        let read = store.get_sealed(TreeName::Records, b"r").unwrap().unwrap();
        let version = ValueVersion::of(&read).unwrap();
        other.put(TreeName::Records, b"r", b"two").unwrap();
        assert!(!replace(&version, b"mine"));
        assert_eq!(other.get(TreeName::Records, b"r").unwrap().unwrap(), b"two");
        assert!(
            !store
                .transaction(|tx| tx.replace_sealed_at(
                    TreeName::Records,
                    b"absent",
                    &version,
                    &read
                ))
                .unwrap()
        );
        assert_eq!(store.get(TreeName::Records, b"absent").unwrap(), None);
        assert_eq!(ValueVersion::of(&read[..23]), None);
    }

    /// Two handles on one directory stand for two processes (each has its own connections
    /// and its own lock on nothing but SQLite's): both write at once, nobody fails, ids stay
    /// unique, and each sees the other's commits.
    /// An import's settings hold while its guard lives and are undone after, on both
    /// connections, and writes made meanwhile are all there.
    #[test]
    fn bulk_settings_last_as_long_as_their_guard() {
        let (_dir, store) = store();
        let settings = |store: &LocalStore| {
            let writer = lock(&store.shared.writer);
            let reader = lock(&store.shared.reader);
            let get = |c: &Connection, name: &str| -> i64 {
                c.pragma_query_value(None, name, |row| row.get(0)).unwrap()
            };
            (
                get(&writer, "cache_size"),
                get(&writer, "wal_autocheckpoint"),
                get(&reader, "cache_size"),
            )
        };
        let usual = (-WRITER_CACHE_KIB, AUTOCHECKPOINT_PAGES, -READER_CACHE_KIB);
        assert_eq!(settings(&store), usual);
        {
            let _bulk = store.bulk().unwrap();
            // The writer's automatic checkpoint is replaced by the background checkpointer's
            // hook (SQLite then reports 0).
            assert_eq!(
                settings(&store),
                (-BULK_WRITER_CACHE_KIB, 0, -BULK_READER_CACHE_KIB)
            );
            for i in 0u32..500 {
                store
                    .transaction(|tx| tx.put(TreeName::Records, &i.to_be_bytes(), &[7; 600]))
                    .unwrap();
            }
        }
        assert_eq!(settings(&store), usual);
        assert_eq!(store.len(TreeName::Records).unwrap(), 500);
    }

    /// Frames of one transaction of [`write_under_bulk`] at most (16 records of 1 KiB at
    /// random places, their index entries, the meta row and the interior pages above them).
    const FRAMES_PER_TEST_TRANSACTION: u64 = 64;

    /// Writes 16 records of 1 KiB in each of `transactions` transactions under a bulk write
    /// with `thresholds`, while another process's store reads each commit; checks after every
    /// commit that the WAL never held more than the cap and one transaction. Returns what the
    /// checkpointer did and the size of the database file before the bulk write ended.
    fn write_under_bulk(
        dir: &Path,
        thresholds: checkpoint::Thresholds,
        transactions: u32,
    ) -> (checkpoint::CheckpointCounts, u64) {
        let key = SymmetricKey::from_slice(&[7; 32]).unwrap();
        let store = LocalStore::open(dir, &key).unwrap();
        let other_process = LocalStore::open(dir, &key).unwrap();
        let wal = dir.join(format!("{DB_FILE}-wal"));
        let page_size: u64 = {
            let writer = lock(&store.shared.writer);
            writer
                .pragma_query_value(None, "page_size", |row| row.get::<_, i64>(0))
                .unwrap()
                .unsigned_abs()
        };
        let most =
            32 + (u64::from(thresholds.cap) + FRAMES_PER_TEST_TRANSACTION) * (page_size + 24);
        let bulk = store.bulk_with(thresholds).unwrap();
        let mut largest_wal = 0;
        for t in 0..transactions {
            store
                .transaction(|tx| {
                    for r in 0..16u32 {
                        // Keys spread over the index, as record ids are.
                        let id = (t * 16 + r).wrapping_mul(2_654_435_761).to_be_bytes();
                        tx.put(TreeName::Records, &id, &[t as u8; 1024])?;
                    }
                    Ok::<_, LocalStoreError>(())
                })
                .unwrap();
            largest_wal = largest_wal.max(std::fs::metadata(&wal).unwrap().len());
            assert!(
                largest_wal <= most,
                "the WAL grew to {largest_wal} bytes (at most {most} expected)"
            );
            // Another process reads every commit while the bulk write goes on.
            assert_eq!(
                other_process.len(TreeName::Records).unwrap(),
                (t as usize + 1) * 16
            );
        }
        let database = std::fs::metadata(dir.join(DB_FILE)).unwrap().len();
        let counts = bulk.end_and_wait().expect("a background checkpointer ran");
        (counts, database)
    }

    /// Every record written under a bulk write is there, with its value, in a store opened
    /// again afterwards.
    fn assert_reopened_store_holds_everything(dir: &Path, transactions: u32) {
        let key = SymmetricKey::from_slice(&[7; 32]).unwrap();
        let store = LocalStore::open(dir, &key).unwrap();
        assert_eq!(
            store.len(TreeName::Records).unwrap(),
            transactions as usize * 16
        );
        for t in 0..transactions {
            for r in 0..16u32 {
                let id = (t * 16 + r).wrapping_mul(2_654_435_761).to_be_bytes();
                assert_eq!(
                    store.get(TreeName::Records, &id).unwrap(),
                    Some(vec![t as u8; 1024])
                );
            }
        }
    }

    /// During a bulk write the writer does not checkpoint (its automatic checkpoint is off),
    /// yet the database file fills as the WAL grows: the background thread checkpoints.
    #[test]
    fn a_bulk_write_is_checkpointed_by_the_background_thread() {
        let dir = tempfile::tempdir().unwrap();
        let before = {
            let key = SymmetricKey::from_slice(&[7; 32]).unwrap();
            drop(LocalStore::open(dir.path(), &key).unwrap());
            std::fs::metadata(dir.path().join(DB_FILE)).unwrap().len()
        };
        let thresholds = checkpoint::Thresholds {
            every: 64,
            cap: u32::MAX,
        };
        let (counts, during) = write_under_bulk(dir.path(), thresholds, 100);
        assert!(counts.passive >= 2, "{counts:?}");
        assert_eq!(counts.restarts, 0, "{counts:?}");
        // 1,600 records of 1 KiB: at least 1 MiB in the database file before the bulk write
        // ended.
        assert!(during >= before + 1024 * 1024, "{before} -> {during}");
        assert_reopened_store_holds_everything(dir.path(), 100);
    }

    /// With no `PASSIVE` checkpoint to keep up, the WAL still stays under its cap: a commit
    /// that reaches it waits for a `RESTART` checkpoint, and the next commit writes the WAL
    /// from its start.
    #[test]
    fn a_bulk_write_keeps_the_wal_under_its_cap() {
        let dir = tempfile::tempdir().unwrap();
        let thresholds = checkpoint::Thresholds {
            every: u32::MAX,
            cap: 128,
        };
        // Over 1,000 frames in all (measured: 4 restarts at a cap of 256).
        let (counts, _) = write_under_bulk(dir.path(), thresholds, 100);
        assert!(counts.restarts >= 4, "{counts:?}");
        assert_reopened_store_holds_everything(dir.path(), 100);
    }

    #[test]
    fn two_processes_share_one_store() {
        let dir = tempfile::tempdir().unwrap();
        let key = SymmetricKey::from_slice(&[7; 32]).unwrap();
        let a = LocalStore::open(dir.path(), &key).unwrap();
        let b = LocalStore::open(dir.path(), &key).unwrap();
        let before = a.data_version().unwrap();
        let writers: Vec<_> = [a.clone(), b.clone()]
            .into_iter()
            .enumerate()
            .map(|(n, store)| {
                std::thread::spawn(move || {
                    let mut ids = Vec::new();
                    for i in 0..200u32 {
                        ids.push(
                            store
                                .transaction(|tx| {
                                    let id = tx.next_id()?;
                                    let key = [n as u8, (i >> 8) as u8, i as u8];
                                    tx.put(TreeName::Records, &key, b"value")?;
                                    Ok::<_, LocalStoreError>(id)
                                })
                                .unwrap(),
                        );
                    }
                    ids
                })
            })
            .collect();
        let mut ids: Vec<u64> = writers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 400, "every id is unique");
        assert_eq!(a.len(TreeName::Records).unwrap(), 400);
        assert_eq!(b.len(TreeName::Records).unwrap(), 400);
        assert_ne!(a.data_version().unwrap(), before, "a saw b's commits");
    }

    #[test]
    fn a_format_1_store_is_migrated_with_every_record() {
        let dir = tempfile::tempdir().unwrap();
        let key = SymmetricKey::from_slice(&[7; 32]).unwrap();
        // A format-1 store: records in a table ordered by id.
        let store = LocalStore::open(dir.path(), &key).unwrap();
        for i in 0..300u16 {
            store
                .put(TreeName::Records, &i.to_be_bytes(), &[i as u8; 40])
                .unwrap();
        }
        drop(store);
        let connection = Connection::open(dir.path().join(DB_FILE)).unwrap();
        connection
            .execute_batch(
                "CREATE TABLE old (key BLOB PRIMARY KEY NOT NULL, value BLOB NOT NULL) WITHOUT ROWID;
                 INSERT INTO old SELECT key, value FROM records;
                 DROP TABLE records;
                 ALTER TABLE old RENAME TO records;
                 PRAGMA user_version = 1;",
            )
            .unwrap();
        drop(connection);

        let store = LocalStore::open(dir.path(), &key).unwrap();
        assert_eq!(store.len(TreeName::Records).unwrap(), 300);
        for i in 0..300u16 {
            assert_eq!(
                store.get(TreeName::Records, &i.to_be_bytes()).unwrap(),
                Some(vec![i as u8; 40])
            );
        }
        store
            .put(TreeName::Records, &7u16.to_be_bytes(), b"new")
            .unwrap();
        assert_eq!(store.len(TreeName::Records).unwrap(), 300, "one row per id");
        drop(store);
        let connection = Connection::open(dir.path().join(DB_FILE)).unwrap();
        let version: i64 = connection
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .unwrap();
        assert_eq!(version, FORMAT_VERSION);
        let sql: String = connection
            .query_row(
                "SELECT sql FROM sqlite_master WHERE name = 'records'",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert!(!sql.contains("WITHOUT ROWID"), "{sql}");
    }

    #[test]
    fn a_store_from_a_newer_release_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = SymmetricKey::from_slice(&[7; 32]).unwrap();
        drop(LocalStore::open(dir.path(), &key).unwrap());
        let connection = Connection::open(dir.path().join(DB_FILE)).unwrap();
        connection
            .pragma_update(None, "user_version", FORMAT_VERSION + 1)
            .unwrap();
        drop(connection);
        let error = LocalStore::open(dir.path(), &key).unwrap_err();
        assert!(matches!(error, LocalStoreError::TooNew { .. }), "{error}");
        assert!(error.to_string().contains("update Kith"), "{error}");
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
