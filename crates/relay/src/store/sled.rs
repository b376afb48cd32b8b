//! The sled backend.
//!
//! Layout. Tree `accounts` holds what an account owns other than its streams, under keys that
//! start with its 32-byte id, so deleting an account is one prefix scan:
//!
//! | key | value |
//! |---|---|
//! | `account ‖ 'R'` | encoded signed roster |
//! | `account ‖ 'K' ‖ device ‖ epoch` | sealed epoch key for that device and epoch |
//! | `account ‖ 'Q'` | bytes of sealed epoch keys (u64 BE) |
//! | `account ‖ 'P' ‖ slot id` | index of the account's pairing slots (empty value) |
//! | `account ‖ 'V'` | lookup id of the account's recovery bundle |
//! | `account ‖ 'W' ‖ device` | the device's push-gateway token |
//! | `account ‖ 'A'` | what the operator set ([`AccountSettings::encode`], 13 bytes) ‖ last active day (u32 BE) |
//!
//! Tree `streams` (schema 3) holds the device streams, apart from the rosters and keys so that
//! the start-up scan of the envelope log's live records reads nothing else:
//!
//! | key | value |
//! |---|---|
//! | `account ‖ 0x00 ‖ device` | stream meta: first seq, last seq, bytes, envelopes (4 × u64 BE), as of the stream's first push and its last truncation |
//! | `account ‖ 0x01 ‖ device ‖ seq` | a pointer block: the stream meta after the push that last wrote it (32 bytes, zeros if none), then up to [`BLOCK_ENTRIES`] entries of 36 bytes, one per record of consecutive envelopes in the envelope log: first seq, segment, offset (u64 BE), length, envelope count, CRC-32 (u32 BE); `seq` is the first entry's |
//!
//! Tree `pairing`: `slot id → expires_at_ms (u64 BE) ‖ account ‖ bundle`. Tree `recovery`:
//! `lookup id → account ‖ bundle`. Tree `tokens`: `SHA-256(token) → ()`. Tree `deleted`:
//! `SHA-256("kith-relay/v1/deleted-account" ‖ account) → ()` for deleted accounts (so a device that missed the deletion does not create
//! the account again). Tree `meta`:
//! `schema_version → u32 BE`. Integers are big-endian so keys sort by seq and epoch.
//!
//! A pushed batch is packed into records of up to `value_bytes` (consecutive envelopes, at
//! least one per record), written to the envelope log ([`super::log`]) with one system call.
//! A push that fits the stream's last block is one sled `insert` of that block, carrying the
//! stream's meta after the push. (A sled `Batch` forces two writes and `sync_file_range`s of
//! sled's log buffer: measured at 5x the CPU of an insert, it was a quarter of the relay's
//! push CPU.) The stream's meta is the newer of its `0x00` value and the meta in its last
//! block; the first push of a stream, a push spread over two blocks and a truncation write the
//! `0x00` value in a batch.
//!
//! Why blocks: schema 2 kept one sled key per record (`account ‖ 'E' ‖ device ‖ seq`, 118
//! bytes of key and value). sled 0.34 keeps about five times the bytes a tree holds in
//! memory, whatever its `cache_capacity` (`examples/sled_memory.rs`: +50 MB of RSS over
//! 100,000 such keys, flat when one key per stream is rewritten instead), so the relay grew
//! with every push it ever stored. A block holds 64 records in 36 bytes each under one key:
//! a third of the bytes per push, and one key per 64 pushes. (What is left grows with the
//! records still: moving full blocks into the log would end that.) Schema 2 also kept the
//! stream keys in `accounts`, so the start-up scan of the pointers read every roster and
//! sealed key (172 MB in memory for 100,000 accounts).
//!
//! Schemas 1 (envelopes inline in sled) and 2 (one pointer key per record in `accounts`) are
//! migrated when opened ([`SledStore::open`]): the sled files copied to `db.schema-N`
//! beside the database ([`backup_dir`]), the blocks built (inline values written to the log
//! first) and made durable, the schema marked 3 with a clean-up flag in one write,
//! then the old keys removed and the flag cleared. A crash before the mark starts the
//! migration over from the old keys; a crash after it finishes the clean-up.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use sled::Transactional;

use kith_protocol::ids::{AccountId, DeviceId};

use super::log::{Pointer, SEGMENT_BYTES, SegmentLog};
use super::{
    AccountSettings, Exported, LoadedAccount, ReadEnd, SCHEMA_VERSION, Store, StoreError,
    StoreFuture, StoreStats, StreamMeta,
};

const TAG_ROSTER: u8 = b'R';
/// Schema 2: `account ‖ 'S' ‖ device` in `accounts` (migrated).
const TAG_STREAM: u8 = b'S';
/// Schema 1 and 2: `account ‖ 'E' ‖ device ‖ seq` in `accounts` (migrated).
const TAG_ENVELOPES: u8 = b'E';
/// `streams` tree: a stream's meta.
const TAG_META: u8 = 0;
/// `streams` tree: a pointer block.
const TAG_BLOCK: u8 = 1;
/// Records a pointer block holds: one sled key per this many pushes.
pub const BLOCK_ENTRIES: usize = 64;
/// Encoded length of a block entry.
const ENTRY_LEN: usize = 36;
/// Encoded length of a stream meta.
const META_LEN: usize = 32;
/// The tree of stream metas and pointer blocks.
const STREAMS_TREE: &str = "streams";
/// Set, with the schema version 3, when a migration has built the blocks; cleared once the
/// old keys are gone.
const CLEANUP_KEY: &[u8] = b"schema_2_cleanup";
const TAG_SEALED_KEY: u8 = b'K';
const TAG_SEALED_BYTES: u8 = b'Q';
const TAG_PAIRING: u8 = b'P';
const TAG_RECOVERY: u8 = b'V';
/// `account ‖ W ‖ device` → the device's push-gateway token (docs/PROTOCOL.md §12.1).
const TAG_PUSH_TARGET: u8 = b'W';
const TAG_ADMIN: u8 = b'A';
/// Length of the `'A'` value: settings, then the last active day.
const ADMIN_LEN: usize = 13 + 4;

const ACCOUNT_LEN: usize = AccountId::LEN;
const DEVICE_LEN: usize = DeviceId::LEN;
const SCHEMA_KEY: &[u8] = b"schema_version";
/// The schema before the envelope log; read as is.
const SCHEMA_INLINE: u32 = 1;
/// The schema with one pointer key per record in `accounts`; migrated.
const SCHEMA_POINTERS: u32 = 2;
/// Subdirectory of the database directory holding the envelope log.
const LOG_DIR: &str = "envelopes";

impl From<sled::Error> for StoreError {
    fn from(err: sled::Error) -> Self {
        StoreError::Backend(err.to_string())
    }
}

impl From<sled::transaction::TransactionError> for StoreError {
    fn from(err: sled::transaction::TransactionError) -> Self {
        StoreError::Backend(err.to_string())
    }
}

/// How long [`SledStore::open`] waits for the database's lock. sled releases it when the last
/// reference to its internals drops, and jobs on its background thread pool (log writes,
/// segment maintenance) can hold one for a moment after the last handle is gone (sled issues
/// #1234, #1289), so a store reopened in the same process right after it was dropped (a relay
/// restarted in place, a maintenance command after a serve) would otherwise fail at random.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Opens sled's database, waiting up to [`LOCK_WAIT`] while its lock is held; a lock still held
/// after that belongs to another live process, which the error says.
fn open_locked(config: &sled::Config) -> Result<sled::Db, StoreError> {
    let started = std::time::Instant::now();
    loop {
        match config.open() {
            // sled 0.34 reports a held lock as an `Other` I/O error with this message.
            Err(sled::Error::Io(err)) if err.to_string().starts_with("could not acquire lock") => {
                if started.elapsed() >= LOCK_WAIT {
                    return Err(StoreError::Backend(format!(
                        "the database is locked by another process (is another relay running \
                         on this data directory?): {err}"
                    )));
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return Ok(other?),
        }
    }
}

/// The sled store. Cheap to clone (sled handles are reference counted).
#[derive(Debug, Clone)]
pub struct SledStore {
    db: sled::Db,
    accounts: sled::Tree,
    streams: sled::Tree,
    pairing: sled::Tree,
    recovery: sled::Tree,
    tokens: sled::Tree,
    deleted: sled::Tree,
    /// The store's directory (copied by an online backup).
    dir: std::path::PathBuf,
    value_bytes: usize,
    log: Arc<SegmentLog>,
    /// Truncation and deletion hold it shared; compaction exclusive while it moves a record,
    /// so that a pointer is never rewritten from a stale copy.
    relocation: Arc<RwLock<()>>,
}

/// Whether `key` is an `account ‖ 'E' ‖ device ‖ seq` key.
fn is_envelope_key(key: &[u8]) -> bool {
    key.len() == ACCOUNT_LEN + 1 + DEVICE_LEN + 8 && key[ACCOUNT_LEN] == TAG_ENVELOPES
}

fn key(account: &AccountId, tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut key =
        Vec::with_capacity(ACCOUNT_LEN + 1 + parts.iter().map(|p| p.len()).sum::<usize>());
    key.extend_from_slice(account.as_bytes());
    key.push(tag);
    for part in parts {
        key.extend_from_slice(part);
    }
    key
}

#[cfg(test)]
fn stream_key(account: &AccountId, device: &DeviceId) -> Vec<u8> {
    key(account, TAG_STREAM, &[device.as_bytes()])
}

#[cfg(test)]
fn envelope_key(account: &AccountId, device: &DeviceId, seq: u64) -> Vec<u8> {
    key(
        account,
        TAG_ENVELOPES,
        &[device.as_bytes(), &seq.to_be_bytes()],
    )
}

fn meta_key(account: &AccountId, device: &DeviceId) -> Vec<u8> {
    key(account, TAG_META, &[device.as_bytes()])
}

fn block_key(account: &AccountId, device: &DeviceId, seq: u64) -> Vec<u8> {
    key(account, TAG_BLOCK, &[device.as_bytes(), &seq.to_be_bytes()])
}

/// Whether `key` (of the `streams` tree) is a pointer block's.
fn is_block_key(key: &[u8]) -> bool {
    key.len() == ACCOUNT_LEN + 1 + DEVICE_LEN + 8 && key[ACCOUNT_LEN] == TAG_BLOCK
}

/// One record of a stream: its first seq and where it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    first_seq: u64,
    pointer: Pointer,
}

impl Entry {
    /// The seq after the record's last.
    fn end(&self) -> u64 {
        self.first_seq.saturating_add(u64::from(self.pointer.count))
    }
}

fn encode_block(meta: Option<&StreamMeta>, entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(META_LEN + entries.len() * ENTRY_LEN);
    out.extend_from_slice(&meta.map_or([0u8; META_LEN], encode_meta));
    for entry in entries {
        let p = &entry.pointer;
        out.extend_from_slice(&entry.first_seq.to_be_bytes());
        out.extend_from_slice(&p.segment.to_be_bytes());
        out.extend_from_slice(&p.offset.to_be_bytes());
        out.extend_from_slice(&p.len.to_be_bytes());
        out.extend_from_slice(&p.count.to_be_bytes());
        out.extend_from_slice(&p.crc.to_be_bytes());
    }
    out
}

/// A block's meta (`None` if it carries none) and entries.
fn decode_block(value: &[u8]) -> Result<(Option<StreamMeta>, Vec<Entry>), StoreError> {
    let corrupt = || StoreError::Corrupt("pointer block");
    let (meta, rest) = value.split_at_checked(META_LEN).ok_or_else(corrupt)?;
    if rest.is_empty() || rest.len() % ENTRY_LEN != 0 {
        return Err(corrupt());
    }
    let meta = if meta.iter().all(|b| *b == 0) {
        None
    } else {
        Some(decode_meta(meta)?)
    };
    let u32_at = |b: &[u8], at: usize| {
        b.get(at..at + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_be_bytes)
            .ok_or_else(corrupt)
    };
    let entries = rest
        .chunks_exact(ENTRY_LEN)
        .map(|e| {
            Ok(Entry {
                first_seq: u64_at(e, 0)?,
                pointer: Pointer {
                    segment: u64_at(e, 8)?,
                    offset: u64_at(e, 16)?,
                    len: u32_at(e, 24)?,
                    count: u32_at(e, 28)?,
                    crc: u32_at(e, 32)?,
                },
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok((meta, entries))
}

/// Splits an `'A'` value into the settings and the last active day.
fn admin_parts(value: &[u8]) -> Result<(AccountSettings, u32), StoreError> {
    if value.len() != ADMIN_LEN {
        return Err(StoreError::Corrupt("account settings"));
    }
    let day = u32::from_be_bytes(value[13..].try_into().unwrap_or_default());
    Ok((AccountSettings::decode(&value[..13])?, day))
}

fn admin_value(settings: &AccountSettings, day: u32) -> [u8; ADMIN_LEN] {
    let mut out = [0u8; ADMIN_LEN];
    out[..13].copy_from_slice(&settings.encode());
    out[13..].copy_from_slice(&day.to_be_bytes());
    out
}

fn u64_at(bytes: &[u8], at: usize) -> Result<u64, StoreError> {
    bytes
        .get(at..at + 8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .ok_or(StoreError::Corrupt("short integer"))
}

fn encode_meta(meta: &StreamMeta) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, v) in [meta.first_seq, meta.last_seq, meta.bytes, meta.envelopes]
        .into_iter()
        .enumerate()
    {
        out[i * 8..i * 8 + 8].copy_from_slice(&v.to_be_bytes());
    }
    out
}

fn decode_meta(bytes: &[u8]) -> Result<StreamMeta, StoreError> {
    Ok(StreamMeta {
        first_seq: u64_at(bytes, 0)?,
        last_seq: u64_at(bytes, 8)?,
        bytes: u64_at(bytes, 16)?,
        envelopes: u64_at(bytes, 24)?,
    })
}

/// Iterates the envelopes packed in one value.
fn unpack(value: &[u8]) -> impl Iterator<Item = Result<&[u8], StoreError>> {
    let mut rest = value;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            rest = &[];
            return Some(Err(StoreError::Corrupt("envelope length")));
        };
        let len = u32::from_be_bytes(*len) as usize;
        if tail.len() < len {
            rest = &[];
            return Some(Err(StoreError::Corrupt("envelope body")));
        }
        let (envelope, tail) = tail.split_at(len);
        rest = tail;
        Some(Ok(envelope))
    })
}

/// [`unpack`] as ranges of the value.
fn unpack_ranges(value: &[u8]) -> impl Iterator<Item = Result<std::ops::Range<usize>, StoreError>> {
    let base = value.as_ptr() as usize;
    unpack(value).map(move |item| {
        item.map(|envelope| {
            let start = envelope.as_ptr() as usize - base;
            start..start + envelope.len()
        })
    })
}

fn pack_into(out: &mut Vec<u8>, envelope: &[u8]) {
    out.extend_from_slice(
        &u32::try_from(envelope.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(envelope);
}

/// The seq a packed value starts at, from its key.
fn seq_of_key(key: &[u8]) -> Result<u64, StoreError> {
    u64_at(key, ACCOUNT_LEN + 1 + DEVICE_LEN)
}

fn slot_value_parts(value: &[u8]) -> Result<(u64, AccountId, &[u8]), StoreError> {
    let expires = u64_at(value, 0)?;
    let account = value
        .get(8..8 + ACCOUNT_LEN)
        .and_then(|b| AccountId::from_slice(b).ok())
        .ok_or(StoreError::Corrupt("pairing slot account"))?;
    Ok((expires, account, &value[8 + ACCOUNT_LEN..]))
}

impl SledStore {
    /// Removes the recovery entry under `lookup_id` if it is `account`'s (an index that
    /// points at another account's entry is stale and must not delete it).
    fn remove_own_recovery_entry(
        &self,
        lookup_id: &[u8],
        account: &AccountId,
    ) -> Result<(), StoreError> {
        loop {
            let Some(entry) = self.recovery.get(lookup_id)? else {
                return Ok(());
            };
            if !entry.starts_with(account.as_bytes()) {
                return Ok(());
            }
            if self
                .recovery
                .compare_and_swap(lookup_id, Some(entry), None as Option<&[u8]>)?
                .is_ok()
            {
                return Ok(());
            }
        }
    }

    /// Opens (creating if needed) the database in `dir` with a page cache of `cache_bytes`,
    /// packing pushed envelopes into values of up to `value_bytes`.
    pub fn open(dir: &Path, cache_bytes: u64, value_bytes: usize) -> Result<Self, StoreError> {
        Self::open_with_segments(dir, cache_bytes, value_bytes, SEGMENT_BYTES)
    }

    /// [`SledStore::open`] with envelope-log segments of `segment_bytes` (tests use small ones).
    pub fn open_with_segments(
        dir: &Path,
        cache_bytes: u64,
        value_bytes: usize,
        segment_bytes: u64,
    ) -> Result<Self, StoreError> {
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .mode(sled::Mode::HighThroughput);
        let db = open_locked(&config)?;
        let meta = db.open_tree("meta")?;
        let found = match meta.get(SCHEMA_KEY)? {
            Some(found) => Some(
                <[u8; 4]>::try_from(found.as_ref())
                    .map(u32::from_be_bytes)
                    .map_err(|_| StoreError::Corrupt("schema version"))?,
            ),
            None => None,
        };
        // A database without a version is a new one, or one written before versions were
        // kept (schema 1): migrated alike.
        let migrate = match found {
            Some(SCHEMA_VERSION) => false,
            None | Some(SCHEMA_INLINE) | Some(SCHEMA_POINTERS) => true,
            Some(found) => {
                return Err(StoreError::SchemaVersion {
                    found,
                    expected: SCHEMA_VERSION,
                });
            }
        };
        let accounts = db.open_tree("accounts")?;
        let streams = db.open_tree(STREAMS_TREE)?;
        if migrate && !accounts.is_empty() {
            // What the migration replaces, kept as it was (docs/PROTOCOL.md §8.1): the sled
            // files (schema 1's envelopes with them), not the envelope log, whose records the
            // migration leaves where they are.
            let backup = backup_dir(dir, found.unwrap_or(SCHEMA_INLINE));
            db.flush()?;
            copy_sled_files(dir, &backup).map_err(|e| {
                StoreError::Backend(format!(
                    "back up {} before migrating: {e}",
                    backup.display()
                ))
            })?;
        }
        if migrate {
            // Blocks of an interrupted migration: built again from the old keys.
            streams.clear()?;
        }
        // What each segment of the log holds that pointers point to: the blocks, and before
        // a migration the old pointer keys.
        let mut live: HashMap<u64, u64> = HashMap::new();
        let mut scanned = 0u64;
        for item in streams.iter() {
            let (k, v) = item?;
            scanned += (k.len() + v.len()) as u64;
            if is_block_key(&k) {
                for entry in decode_block(&v)?.1 {
                    *live.entry(entry.pointer.segment).or_default() += u64::from(entry.pointer.len);
                }
            }
        }
        if migrate {
            for item in accounts.iter() {
                let (k, v) = item?;
                scanned += (k.len() + v.len()) as u64;
                if is_envelope_key(&k)
                    && let Some(pointer) = Pointer::decode(&v)
                {
                    *live.entry(pointer.segment).or_default() += u64::from(pointer.len);
                }
            }
        }
        // A scan larger than the cache leaves sled's cache holding far past its capacity
        // (sled gives pages back only lazily). Opening the database again starts with an
        // empty cache. Only when the scan read more than the cache holds: an open may need a
        // fresh sled segment, and a small relay on a nearly full disk must still start.
        let (db, meta, accounts, streams) = if scanned > cache_bytes {
            drop((accounts, streams, meta, db));
            let db = config.open()?;
            let meta = db.open_tree("meta")?;
            let accounts = db.open_tree("accounts")?;
            let streams = db.open_tree(STREAMS_TREE)?;
            (db, meta, accounts, streams)
        } else {
            (db, meta, accounts, streams)
        };
        let log = SegmentLog::open(&dir.join(LOG_DIR), segment_bytes, &live)?;
        let store = Self {
            accounts,
            streams,
            pairing: db.open_tree("pairing")?,
            recovery: db.open_tree("recovery")?,
            tokens: db.open_tree("tokens")?,
            deleted: db.open_tree("deleted")?,
            dir: dir.to_path_buf(),
            db,
            value_bytes,
            log: Arc::new(log),
            relocation: Arc::new(RwLock::new(())),
        };
        if migrate {
            store.build_blocks()?;
            let mut mark = sled::Batch::default();
            mark.insert(SCHEMA_KEY, &SCHEMA_VERSION.to_be_bytes());
            mark.insert(CLEANUP_KEY, &[]);
            meta.apply_batch(mark)?;
            store.db.flush()?;
        }
        if meta.contains_key(CLEANUP_KEY)? {
            store.remove_old_stream_keys()?;
            meta.remove(CLEANUP_KEY)?;
            store.db.flush()?;
        }
        Ok(store)
    }

    /// Migration from schema 1 or 2, first step: the `streams` tree built from the old keys
    /// in `accounts` (inline envelopes written to the log), then made durable. Writes nothing
    /// else: the old keys stay until the schema is marked 3.
    fn build_blocks(&self) -> Result<(), StoreError> {
        // The stream being gathered: (account ‖ device, entries, meta of its last pointer).
        let mut current: Option<(Vec<u8>, Vec<Entry>, Option<StreamMeta>)> = None;
        let write = |stream: &[u8], entries: &[Entry], meta: Option<StreamMeta>| {
            let mut batch = sled::Batch::default();
            let chunks = entries.chunks(BLOCK_ENTRIES);
            let last = chunks.len().saturating_sub(1);
            for (i, chunk) in chunks.enumerate() {
                let mut k = stream.to_vec();
                k.extend_from_slice(&chunk[0].first_seq.to_be_bytes());
                let carried = if i == last { meta.as_ref() } else { None };
                batch.insert(k, encode_block(carried, chunk));
            }
            self.streams.apply_batch(batch)
        };
        for item in self.accounts.iter() {
            let (k, v) = item?;
            if k.len() == ACCOUNT_LEN + 1 + DEVICE_LEN && k[ACCOUNT_LEN] == TAG_STREAM {
                let mut meta_key = k.to_vec();
                meta_key[ACCOUNT_LEN] = TAG_META;
                decode_meta(&v)?;
                self.streams.insert(meta_key, v)?;
                continue;
            }
            if !is_envelope_key(&k) {
                continue;
            }
            let mut stream = k[..ACCOUNT_LEN + 1 + DEVICE_LEN].to_vec();
            stream[ACCOUNT_LEN] = TAG_BLOCK;
            if current.as_ref().is_some_and(|(s, _, _)| *s != stream)
                && let Some((s, entries, meta)) = current.take()
            {
                write(&s, &entries, meta)?;
            }
            let (_, entries, meta) = current.get_or_insert_with(|| (stream, Vec::new(), None));
            let pointer = match Pointer::decode(&v) {
                Some(pointer) => {
                    *meta = match v.get(Pointer::LEN..) {
                        Some(suffix) if suffix.len() == Pointer::SUFFIX_LEN => {
                            Some(decode_meta(suffix)?)
                        }
                        _ => None,
                    };
                    pointer
                }
                None => {
                    // Schema 1: the envelopes themselves, now a record of the log.
                    let mut count = 0u32;
                    for envelope in unpack(&v) {
                        envelope?;
                        count += 1;
                    }
                    let (segment, offset) = self.log.append(&v)?;
                    *meta = None;
                    Pointer {
                        segment,
                        offset,
                        len: u32::try_from(v.len())
                            .map_err(|_| StoreError::Corrupt("inline value length"))?,
                        count,
                        crc: crc32fast::hash(&v),
                    }
                }
            };
            entries.push(Entry {
                first_seq: seq_of_key(&k)?,
                pointer,
            });
        }
        if let Some((s, entries, meta)) = current.take() {
            write(&s, &entries, meta)?;
        }
        self.log.sync()?;
        self.db.flush()?;
        Ok(())
    }

    /// Migration, last step: the schema-2 stream and pointer keys (and schema-1 values) out
    /// of `accounts`. Their records are the blocks' now.
    fn remove_old_stream_keys(&self) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        let mut pending = 0usize;
        for item in self.accounts.iter() {
            let (k, _) = item?;
            let old_stream =
                k.len() == ACCOUNT_LEN + 1 + DEVICE_LEN && k[ACCOUNT_LEN] == TAG_STREAM;
            if old_stream || is_envelope_key(&k) {
                batch.remove(k);
                pending += 1;
                if pending == 10_000 {
                    self.accounts.apply_batch(std::mem::take(&mut batch))?;
                    pending = 0;
                }
            }
        }
        self.accounts.apply_batch(batch)?;
        self.db.flush()?;
        Ok(())
    }

    /// The envelope log's segments as (id, size, live bytes), for tests.
    pub fn log_usage(&self) -> Vec<(u64, u64, u64)> {
        self.log.usage()
    }

    /// The underlying database, for tests that scan every byte.
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// The stream's block holding `seq` (the last one starting at or before it), if any.
    fn block_at(
        &self,
        account: &AccountId,
        device: &DeviceId,
        seq: u64,
    ) -> Result<Option<(sled::IVec, sled::IVec)>, StoreError> {
        let lowest = block_key(account, device, 0);
        let at = block_key(account, device, seq);
        Ok(self
            .streams
            .range(lowest.as_slice()..=at.as_slice())
            .next_back()
            .transpose()?)
    }

    /// Where the record holding `seq` is now, if the stream still holds it.
    fn entry_at(
        &self,
        account: &AccountId,
        device: &DeviceId,
        seq: u64,
    ) -> Result<Option<Entry>, StoreError> {
        let Some((_, v)) = self.block_at(account, device, seq)? else {
            return Ok(None);
        };
        Ok(decode_block(&v)?
            .1
            .into_iter()
            .find(|e| e.first_seq <= seq && seq < e.end()))
    }

    /// Walks the records of a stream from the one holding `after_seq + 1`, passing each
    /// envelope with seq > `after_seq` as (seq, its record, its range in the record) until
    /// the sink returns `false`.
    fn read_values(
        &self,
        account: &AccountId,
        device: &DeviceId,
        after_seq: u64,
        sink: &mut dyn FnMut(u64, &Bytes, std::ops::Range<usize>) -> bool,
    ) -> Result<ReadEnd, StoreError> {
        let Some(want) = after_seq.checked_add(1) else {
            return Ok(ReadEnd::Complete);
        };
        let highest = block_key(account, device, u64::MAX);
        // The block holding `want` starts at or before it.
        let start = match self.block_at(account, device, want)? {
            Some((k, _)) => k.to_vec(),
            None => block_key(account, device, want),
        };
        // The seq every envelope passed on so far is below: records are read in order.
        let mut next = want;
        for item in self.streams.range(start.as_slice()..=highest.as_slice()) {
            let (_, v) = item?;
            for mut entry in decode_block(&v)?.1 {
                if entry.end() <= next {
                    continue;
                }
                let record = match self.log.read(&entry.pointer) {
                    Ok(record) => record,
                    // Moved by compaction, or truncated or deleted, since the block was read.
                    Err(err) => match self.entry_at(account, device, entry.first_seq.max(next))? {
                        Some(now) if now != entry => {
                            entry = now;
                            self.log.read(&now.pointer)?
                        }
                        Some(_) => return Err(err),
                        None => continue,
                    },
                };
                let record = Bytes::from(record);
                for (seq, range) in (entry.first_seq..).zip(unpack_ranges(&record)) {
                    let range = range?;
                    if seq >= next {
                        next = seq + 1;
                        if !sink(seq, &record, range) {
                            return Ok(ReadEnd::More);
                        }
                    }
                }
            }
        }
        Ok(ReadEnd::Complete)
    }

    /// A stream's meta: its `0x00` value, or the meta carried by its last block if that is
    /// newer (pushes after the stream's first write only that).
    fn stream_meta(
        &self,
        account: &AccountId,
        device: &DeviceId,
        stored: Option<StreamMeta>,
    ) -> Result<Option<StreamMeta>, StoreError> {
        let pushed = match self.block_at(account, device, u64::MAX)? {
            Some((_, v)) => decode_block(&v)?.0,
            None => None,
        };
        Ok(match (stored, pushed) {
            (Some(stored), Some(pushed)) if pushed.last_seq > stored.last_seq => Some(pushed),
            (Some(stored), _) => Some(stored),
            (None, pushed) => pushed,
        })
    }

    /// Moves the live records of mostly-dead sealed segments to the active one and swaps
    /// their pointers, so that the old segments can be deleted. Returns records moved.
    fn compact(&self) -> Result<usize, StoreError> {
        let victims = self.log.compaction_victims();
        if victims.is_empty() {
            return Ok(0);
        }
        let mut moved = 0;
        for item in self.streams.iter() {
            let (k, v) = item?;
            if !is_block_key(&k)
                || !decode_block(&v)?
                    .1
                    .iter()
                    .any(|e| victims.contains(&e.pointer.segment))
            {
                continue;
            }
            let _exclusive = self
                .relocation
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // Truncated, deleted or appended to since the scan saw it: moved from what it is.
            let Some(now) = self.streams.get(&k)? else {
                continue;
            };
            let (meta, mut entries) = decode_block(&now)?;
            // (old pointer, new segment) of each record copied.
            let mut copies: Vec<(Pointer, u64)> = Vec::new();
            let mut copied = Ok(());
            for entry in entries.iter_mut() {
                if !victims.contains(&entry.pointer.segment) {
                    continue;
                }
                let copy = self
                    .log
                    .read(&entry.pointer)
                    .and_then(|data| self.log.append(&data));
                match copy {
                    Ok((segment, offset)) => {
                        copies.push((entry.pointer, segment));
                        entry.pointer = Pointer {
                            segment,
                            offset,
                            ..entry.pointer
                        };
                    }
                    Err(err) => {
                        copied = Err(err);
                        break;
                    }
                }
            }
            let swapped = match copied {
                Ok(()) => self
                    .streams
                    .compare_and_swap(&k, Some(now), Some(encode_block(meta.as_ref(), &entries)))?
                    .is_ok(),
                Err(_) => false,
            };
            for (old, segment) in &copies {
                if swapped {
                    self.log.release(old.segment, u64::from(old.len));
                } else {
                    self.log.release(*segment, u64::from(old.len));
                }
            }
            copied?;
            if swapped {
                moved += copies.len();
            }
        }
        Ok(moved)
    }

    /// Adds the entries of a push of `pushed` envelopes to the stream's blocks: into its last
    /// block while it has room, then new ones. A push into the last block of a stream that
    /// existed before is one insert (the block carries `meta`); anything else a batch that
    /// also writes the stream's `0x00` value.
    fn add_entries(
        &self,
        account: &AccountId,
        device: &DeviceId,
        fresh: &[Entry],
        meta: &StreamMeta,
        pushed: u64,
    ) -> Result<(), StoreError> {
        let mut writes: Vec<(Vec<u8>, Vec<Entry>)> = Vec::new();
        let mut rest = fresh;
        if let Some((k, v)) = self.block_at(account, device, u64::MAX)? {
            let (_, mut entries) = decode_block(&v)?;
            if entries.len() < BLOCK_ENTRIES {
                let (now, later) = rest.split_at(rest.len().min(BLOCK_ENTRIES - entries.len()));
                entries.extend_from_slice(now);
                writes.push((k.to_vec(), entries));
                rest = later;
            }
        }
        for chunk in rest.chunks(BLOCK_ENTRIES) {
            writes.push((
                block_key(account, device, chunk[0].first_seq),
                chunk.to_vec(),
            ));
        }
        let existed = meta.envelopes > pushed;
        if existed && let [(k, entries)] = writes.as_slice() {
            self.streams
                .insert(k.as_slice(), encode_block(Some(meta), entries))?;
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for (k, entries) in &writes {
            batch.insert(k.as_slice(), encode_block(Some(meta), entries));
        }
        batch.insert(meta_key(account, device), &encode_meta(meta));
        self.streams.apply_batch(batch)?;
        Ok(())
    }

    /// Every stream of the account with its meta.
    fn streams_of(&self, account: &AccountId) -> Result<Vec<(DeviceId, StreamMeta)>, StoreError> {
        let mut streams = Vec::new();
        for item in self.streams.scan_prefix(key(account, TAG_META, &[])) {
            let (k, v) = item?;
            let device = DeviceId::from_slice(&k[ACCOUNT_LEN + 1..])
                .map_err(|_| StoreError::Corrupt("stream key"))?;
            if let Some(meta) = self.stream_meta(account, &device, Some(decode_meta(&v)?))? {
                streams.push((device, meta));
            }
        }
        Ok(streams)
    }

    /// The log, then the database: a pointer that is durable points at durable data.
    /// Then deletes segments that were dead before the flush.
    fn sync_all(&self) -> Result<(), StoreError> {
        let dead = self.log.dead_segments();
        self.log.sync()?;
        self.db.flush()?;
        self.log.remove_segments(&dead)
    }

    /// Rewrites the account's `'A'` value atomically from what it holds (defaults if none).
    fn update_admin(
        &self,
        account: &AccountId,
        change: impl Fn(AccountSettings, u32) -> (AccountSettings, u32),
    ) -> Result<(), StoreError> {
        let mut corrupt = false;
        self.accounts
            .update_and_fetch(key(account, TAG_ADMIN, &[]), |old| {
                let (settings, day) = match old.map(admin_parts) {
                    Some(Ok(parts)) => parts,
                    Some(Err(_)) => {
                        corrupt = true;
                        (AccountSettings::default(), 0)
                    }
                    None => (AccountSettings::default(), 0),
                };
                let (settings, day) = change(settings, day);
                Some(admin_value(&settings, day).to_vec())
            })?;
        if corrupt {
            tracing::warn!("unreadable account settings were replaced");
        }
        Ok(())
    }

    fn remove_slot_entry(&self, slot_id: &[u8; 32], account: &AccountId) -> Result<(), StoreError> {
        self.accounts
            .remove(key(account, TAG_PAIRING, &[slot_id]))?;
        Ok(())
    }
}

impl Store for SledStore {
    fn load_account(&self, account: &AccountId) -> Result<Option<LoadedAccount>, StoreError> {
        let Some(roster) = self.accounts.get(key(account, TAG_ROSTER, &[]))? else {
            return Ok(None);
        };
        let streams = self.streams_of(account)?;
        let sealed_key_bytes = match self.accounts.get(key(account, TAG_SEALED_BYTES, &[]))? {
            Some(v) => u64_at(&v, 0)?,
            None => 0,
        };
        let settings = match self.accounts.get(key(account, TAG_ADMIN, &[]))? {
            Some(v) => admin_parts(&v)?.0,
            None => AccountSettings::default(),
        };
        Ok(Some(LoadedAccount {
            roster: roster.to_vec(),
            streams,
            sealed_key_bytes,
            settings,
        }))
    }

    fn create_account(&self, account: &AccountId, roster: &[u8]) -> Result<bool, StoreError> {
        let created = self
            .accounts
            .compare_and_swap(
                key(account, TAG_ROSTER, &[]),
                None as Option<&[u8]>,
                Some(roster),
            )?
            .is_ok();
        Ok(created)
    }

    fn put_roster(&self, account: &AccountId, roster: &[u8]) -> Result<(), StoreError> {
        self.accounts
            .insert(key(account, TAG_ROSTER, &[]), roster)?;
        Ok(())
    }

    fn append(
        &self,
        account: &AccountId,
        device: &DeviceId,
        first_seq: u64,
        envelopes: &[&[u8]],
        meta: &StreamMeta,
    ) -> Result<(), StoreError> {
        // Records of up to `value_bytes`, all in one buffer: one write to the log.
        let total: usize = envelopes.iter().map(|e| e.len() + 4).sum();
        let mut data = Vec::with_capacity(total);
        // (first seq, start in `data`, envelopes) of each record.
        let mut records: Vec<(u64, usize, u32)> = Vec::new();
        for (i, envelope) in envelopes.iter().enumerate() {
            let seq = first_seq + i as u64;
            match records.last_mut() {
                Some((_, start, count))
                    if data.len() - *start + 4 + envelope.len() <= self.value_bytes =>
                {
                    *count += 1;
                }
                _ => records.push((seq, data.len(), 1)),
            }
            pack_into(&mut data, envelope);
        }
        // Blocks are rewritten from what they hold: compaction must not swap a pointer in
        // between.
        let _shared = self
            .relocation
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (segment, offset) = self.log.append(&data)?;
        let mut fresh: Vec<Entry> = Vec::with_capacity(records.len());
        for (i, &(seq, start, count)) in records.iter().enumerate() {
            let end = records.get(i + 1).map_or(data.len(), |r| r.1);
            fresh.push(Entry {
                first_seq: seq,
                pointer: Pointer {
                    segment,
                    offset: offset + start as u64,
                    len: (end - start) as u32,
                    count,
                    crc: crc32fast::hash(&data[start..end]),
                },
            });
        }
        let written = self.add_entries(account, device, &fresh, meta, envelopes.len() as u64);
        if written.is_err() {
            self.log.release(segment, data.len() as u64);
        }
        written
    }

    fn read_stream(
        &self,
        account: &AccountId,
        device: &DeviceId,
        after_seq: u64,
        sink: &mut dyn FnMut(u64, &[u8]) -> bool,
    ) -> Result<ReadEnd, StoreError> {
        self.read_values(account, device, after_seq, &mut |seq, value, range| {
            sink(seq, &value[range])
        })
    }

    fn read_stream_bytes(
        &self,
        account: &AccountId,
        device: &DeviceId,
        after_seq: u64,
        sink: &mut dyn FnMut(u64, Bytes) -> bool,
    ) -> Result<ReadEnd, StoreError> {
        // Each envelope is a slice of the record it was read with.
        self.read_values(account, device, after_seq, &mut |seq, value, range| {
            sink(seq, value.slice(range))
        })
    }

    fn truncate(
        &self,
        account: &AccountId,
        device: &DeviceId,
        before_seq: u64,
    ) -> Result<StreamMeta, StoreError> {
        let _shared = self
            .relocation
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mkey = meta_key(account, device);
        let stored = match self.streams.get(&mkey)? {
            Some(v) => decode_meta(&v)?,
            None => return Ok(StreamMeta::default()),
        };
        let mut meta = self
            .stream_meta(account, device, Some(stored))?
            .unwrap_or(stored);
        if before_seq <= meta.first_seq {
            return Ok(meta);
        }
        let mut batch = sled::Batch::default();
        // Log bytes no longer pointed to once the batch is applied.
        let mut released: Vec<(u64, u64)> = Vec::new();
        let lowest = block_key(account, device, 0);
        let end = block_key(account, device, before_seq);
        // Every block starting at or before `before_seq`: the last of them may straddle it.
        for item in self.streams.range(lowest.as_slice()..=end.as_slice()) {
            let (k, v) = item?;
            let (carried, entries) = decode_block(&v)?;
            let mut kept = Vec::with_capacity(entries.len());
            for entry in entries {
                let pointer = entry.pointer;
                if entry.end() <= before_seq {
                    // Envelope bytes: the record less its length prefixes.
                    meta.bytes = meta.bytes.saturating_sub(
                        u64::from(pointer.len).saturating_sub(4 * u64::from(pointer.count)),
                    );
                    meta.envelopes = meta.envelopes.saturating_sub(u64::from(pointer.count));
                    released.push((pointer.segment, u64::from(pointer.len)));
                    continue;
                }
                if entry.first_seq >= before_seq {
                    kept.push(entry);
                    continue;
                }
                let record = self.log.read(&pointer)?;
                // Byte offset in the record and seq where the kept part starts, envelopes kept.
                let mut kept_at: Option<(usize, u64)> = None;
                let mut kept_count = 0u32;
                for (seq, range) in (entry.first_seq..).zip(unpack_ranges(&record)) {
                    let range = range?;
                    if seq < before_seq {
                        meta.bytes = meta.bytes.saturating_sub(range.len() as u64);
                        meta.envelopes = meta.envelopes.saturating_sub(1);
                    } else {
                        // The record from this envelope's length prefix on.
                        kept_at.get_or_insert((range.start - 4, seq));
                        kept_count += 1;
                    }
                }
                match kept_at {
                    Some((skip, from)) => {
                        let tail =
                            pointer.tail(skip as u32, kept_count, crc32fast::hash(&record[skip..]));
                        kept.push(Entry {
                            first_seq: from,
                            pointer: tail,
                        });
                        released.push((pointer.segment, skip as u64));
                    }
                    None => released.push((pointer.segment, u64::from(pointer.len))),
                }
            }
            batch.remove(k);
            if let Some(first) = kept.first() {
                batch.insert(
                    block_key(account, device, first.first_seq),
                    encode_block(carried.as_ref(), &kept),
                );
            }
        }
        meta.first_seq = if meta.envelopes == 0 { 0 } else { before_seq };
        batch.insert(mkey, &encode_meta(&meta));
        self.streams.apply_batch(batch)?;
        for (segment, len) in released {
            self.log.release(segment, len);
        }
        Ok(meta)
    }

    fn put_sealed_key(
        &self,
        account: &AccountId,
        device: &DeviceId,
        epoch: u64,
        sealed: &[u8],
    ) -> Result<u64, StoreError> {
        let k = key(
            account,
            TAG_SEALED_KEY,
            &[device.as_bytes(), &epoch.to_be_bytes()],
        );
        let bytes_key = key(account, TAG_SEALED_BYTES, &[]);
        let old = self.accounts.get(&k)?.map_or(0, |v| v.len() as u64);
        let total = match self.accounts.get(&bytes_key)? {
            Some(v) => u64_at(&v, 0)?,
            None => 0,
        };
        let total = total.saturating_sub(old) + sealed.len() as u64;
        let mut batch = sled::Batch::default();
        batch.insert(k, sealed);
        batch.insert(bytes_key, &total.to_be_bytes());
        self.accounts.apply_batch(batch)?;
        Ok(old)
    }

    fn sealed_keys(
        &self,
        account: &AccountId,
        device: &DeviceId,
        min_epoch: u64,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let from = key(
            account,
            TAG_SEALED_KEY,
            &[device.as_bytes(), &min_epoch.to_be_bytes()],
        );
        let to = key(
            account,
            TAG_SEALED_KEY,
            &[device.as_bytes(), &u64::MAX.to_be_bytes()],
        );
        self.accounts
            .range(from.as_slice()..=to.as_slice())
            .map(|item| Ok(item?.1.to_vec()))
            .collect()
    }

    fn put_pairing_slot(
        &self,
        slot_id: &[u8; 32],
        account: &AccountId,
        expires_at_ms: u64,
        bundle: &[u8],
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let mut value = Vec::with_capacity(8 + ACCOUNT_LEN + bundle.len());
        value.extend_from_slice(&expires_at_ms.to_be_bytes());
        value.extend_from_slice(account.as_bytes());
        value.extend_from_slice(bundle);
        let existing = self.pairing.get(slot_id)?;
        if let Some(old) = &existing {
            let (expires, owner, _) = slot_value_parts(old)?;
            if expires > now_ms {
                return Ok(false);
            }
            self.remove_slot_entry(slot_id, &owner)?;
        }
        if self
            .pairing
            .compare_and_swap(slot_id, existing, Some(value))?
            .is_err()
        {
            return Ok(false);
        }
        self.accounts
            .insert(key(account, TAG_PAIRING, &[slot_id]), &[])?;
        Ok(true)
    }

    fn take_pairing_slot(
        &self,
        slot_id: &[u8; 32],
        now_ms: u64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(value) = self.pairing.get(slot_id)? else {
            return Ok(None);
        };
        if self
            .pairing
            .compare_and_swap(slot_id, Some(&value), None as Option<&[u8]>)?
            .is_err()
        {
            return Ok(None); // taken concurrently
        }
        let (expires, account, bundle) = slot_value_parts(&value)?;
        self.remove_slot_entry(slot_id, &account)?;
        Ok((expires > now_ms).then(|| bundle.to_vec()))
    }

    fn count_pairing_slots(&self, account: &AccountId, now_ms: u64) -> Result<usize, StoreError> {
        let prefix = key(account, TAG_PAIRING, &[]);
        let mut live = 0;
        for item in self.accounts.scan_prefix(&prefix) {
            let (k, _) = item?;
            if let Some(value) = self.pairing.get(&k[prefix.len()..])?
                && slot_value_parts(&value)?.0 > now_ms
            {
                live += 1;
            }
        }
        Ok(live)
    }

    fn expire_pairing_slots(&self, now_ms: u64) -> Result<usize, StoreError> {
        let mut expired = 0;
        for item in self.pairing.iter() {
            let (slot_id, value) = item?;
            let (expires, account, _) = slot_value_parts(&value)?;
            if expires <= now_ms
                && self
                    .pairing
                    .compare_and_swap(&slot_id, Some(&value), None as Option<&[u8]>)?
                    .is_ok()
            {
                self.accounts
                    .remove(key(&account, TAG_PAIRING, &[&slot_id]))?;
                expired += 1;
            }
        }
        Ok(expired)
    }

    fn put_recovery_bundle(
        &self,
        lookup_id: &[u8; 32],
        account: &AccountId,
        bundle: &[u8],
    ) -> Result<bool, StoreError> {
        let mut value = Vec::with_capacity(ACCOUNT_LEN + bundle.len());
        value.extend_from_slice(account.as_bytes());
        value.extend_from_slice(bundle);
        // Claim the lookup id atomically: free, or already this account's.
        loop {
            let existing = self.recovery.get(lookup_id)?;
            if let Some(old) = &existing
                && !old.starts_with(account.as_bytes())
            {
                return Ok(false);
            }
            if self
                .recovery
                .compare_and_swap(lookup_id, existing, Some(value.as_slice()))?
                .is_ok()
            {
                break;
            }
        }
        let index = key(account, TAG_RECOVERY, &[]);
        if let Some(old) = self.accounts.insert(index, lookup_id)?
            && old.as_ref() != lookup_id
        {
            self.remove_own_recovery_entry(&old, account)?;
        }
        Ok(true)
    }

    fn recovery_bundle(
        &self,
        lookup_id: &[u8; 32],
    ) -> Result<Option<(AccountId, Vec<u8>)>, StoreError> {
        let Some(value) = self.recovery.get(lookup_id)? else {
            return Ok(None);
        };
        let account = value
            .get(..ACCOUNT_LEN)
            .and_then(|b| AccountId::from_slice(b).ok())
            .ok_or(StoreError::Corrupt("recovery bundle account"))?;
        Ok(Some((account, value[ACCOUNT_LEN..].to_vec())))
    }

    fn recovery_lookup_id(&self, account: &AccountId) -> Result<Option<[u8; 32]>, StoreError> {
        match self.accounts.get(key(account, TAG_RECOVERY, &[]))? {
            None => Ok(None),
            Some(id) => <[u8; 32]>::try_from(id.as_ref())
                .map(Some)
                .map_err(|_| StoreError::Corrupt("recovery lookup id index")),
        }
    }

    fn put_push_target(
        &self,
        account: &AccountId,
        device: &DeviceId,
        token: &[u8],
    ) -> Result<(), StoreError> {
        self.accounts
            .insert(key(account, TAG_PUSH_TARGET, &[device.as_bytes()]), token)?;
        Ok(())
    }

    fn remove_push_target(&self, account: &AccountId, device: &DeviceId) -> Result<(), StoreError> {
        self.accounts
            .remove(key(account, TAG_PUSH_TARGET, &[device.as_bytes()]))?;
        Ok(())
    }

    fn push_targets(&self, account: &AccountId) -> Result<Vec<(DeviceId, Vec<u8>)>, StoreError> {
        let prefix = key(account, TAG_PUSH_TARGET, &[]);
        self.accounts
            .scan_prefix(&prefix)
            .map(|item| {
                let (k, v) = item?;
                let device = DeviceId::from_slice(&k[prefix.len()..])
                    .map_err(|_| StoreError::Corrupt("push target key"))?;
                Ok((device, v.to_vec()))
            })
            .collect()
    }

    fn add_registration_token(&self, token_hash: &[u8; 32]) -> Result<(), StoreError> {
        self.tokens.insert(token_hash, &[])?;
        Ok(())
    }

    fn consume_registration_token(&self, token_hash: &[u8; 32]) -> Result<bool, StoreError> {
        Ok(self.tokens.remove(token_hash)?.is_some())
    }

    fn backup(&self, to: &Path) -> Result<(), StoreError> {
        // No truncation, deletion or log compaction moves a record while the files are copied;
        // the caller holds every writer off.
        let _exclusive = self
            .relocation
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.db.flush()?;
        self.log.sync()?;
        copy_tree(&self.dir, to).map_err(|e| StoreError::Backend(format!("copy: {e}")))
    }

    fn mark_deleted(&self, account: &AccountId) -> Result<(), StoreError> {
        self.deleted.insert(deleted_key(account), &[])?;
        Ok(())
    }

    fn was_deleted(&self, account: &AccountId) -> Result<bool, StoreError> {
        Ok(self.deleted.contains_key(deleted_key(account))?)
    }

    fn delete_account(&self, account: &AccountId) -> Result<(), StoreError> {
        let _shared = self
            .relocation
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut removed: Vec<sled::IVec> = Vec::new();
        let pairing_prefix = key(account, TAG_PAIRING, &[]);
        let recovery_index = key(account, TAG_RECOVERY, &[]);
        for item in self.accounts.scan_prefix(account.as_bytes()) {
            let (k, v) = item?;
            if k.starts_with(&pairing_prefix) {
                self.pairing.remove(&k[pairing_prefix.len()..])?;
            } else if k.as_ref() == recovery_index.as_slice() {
                self.remove_own_recovery_entry(&v, account)?;
            }
            removed.push(k);
        }
        let mut streams: Vec<sled::IVec> = Vec::new();
        let mut records = Vec::new();
        for item in self.streams.scan_prefix(account.as_bytes()) {
            let (k, v) = item?;
            if is_block_key(&k) {
                records.extend(decode_block(&v)?.1.into_iter().map(|e| e.pointer));
            }
            streams.push(k);
        }
        // The roster and the streams go together: a crash never leaves an account without
        // its streams' seqs.
        (&self.accounts, &self.streams)
            .transaction(|(accounts, tree)| {
                for k in &removed {
                    accounts.remove(k)?;
                }
                for k in &streams {
                    tree.remove(k)?;
                }
                Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|err| StoreError::Backend(format!("delete an account: {err:?}")))?;
        // The envelopes themselves: overwritten, not just unreferenced.
        for pointer in &records {
            self.log.erase(pointer)?;
        }
        Ok(())
    }

    fn put_account_settings(
        &self,
        account: &AccountId,
        settings: &AccountSettings,
    ) -> Result<bool, StoreError> {
        if !self.accounts.contains_key(key(account, TAG_ROSTER, &[]))? {
            return Ok(false);
        }
        self.update_admin(account, |_, day| (*settings, day))?;
        Ok(true)
    }

    fn mark_active(&self, account: &AccountId, day: u32) -> Result<(), StoreError> {
        if self.accounts.contains_key(key(account, TAG_ROSTER, &[]))? {
            self.update_admin(account, |settings, _| (settings, day))?;
        }
        Ok(())
    }

    fn active_day(&self, account: &AccountId) -> Result<Option<u32>, StoreError> {
        match self.accounts.get(key(account, TAG_ADMIN, &[]))? {
            Some(v) => Ok(Some(admin_parts(&v)?.1).filter(|&day| day > 0)),
            None => Ok(None),
        }
    }

    fn account_ids(
        &self,
        after: Option<&AccountId>,
        limit: usize,
    ) -> Result<Vec<AccountId>, StoreError> {
        // Jump from account to account: past every key of the previous one (its id followed by
        // 0xff, above every tag), then to the next roster.
        let mut from = after.map(|a| key(a, 0xff, &[]));
        let mut ids = Vec::new();
        while ids.len() < limit {
            let next = match &from {
                Some(from) => self.accounts.range(from.as_slice()..).next(),
                None => self.accounts.iter().next(),
            };
            let Some(item) = next else { break };
            let (k, _) = item?;
            let account = AccountId::from_slice(k.get(..ACCOUNT_LEN).unwrap_or_default())
                .map_err(|_| StoreError::Corrupt("account key"))?;
            if self.accounts.contains_key(key(&account, TAG_ROSTER, &[]))? {
                ids.push(account);
            }
            from = Some(key(&account, 0xff, &[]));
        }
        Ok(ids)
    }

    fn registration_tokens(&self) -> Result<Vec<[u8; 32]>, StoreError> {
        self.tokens
            .iter()
            .map(|item| {
                <[u8; 32]>::try_from(item?.0.as_ref())
                    .map_err(|_| StoreError::Corrupt("token hash"))
            })
            .collect()
    }

    fn stats(&self) -> Result<StoreStats, StoreError> {
        let mut stats = StoreStats {
            pairing_slots: self.pairing.len() as u64,
            recovery_bundles: self.recovery.len() as u64,
            registration_tokens: self.tokens.len() as u64,
            ..StoreStats::default()
        };
        for item in self.accounts.iter() {
            let (k, _) = item?;
            if k.get(ACCOUNT_LEN) == Some(&TAG_ROSTER) && k.len() == ACCOUNT_LEN + 1 {
                stats.accounts += 1;
            }
        }
        for item in self.streams.iter() {
            let (k, v) = item?;
            if k.get(ACCOUNT_LEN) == Some(&TAG_META) {
                let account = AccountId::from_slice(&k[..ACCOUNT_LEN])
                    .map_err(|_| StoreError::Corrupt("stream key"))?;
                let device = DeviceId::from_slice(&k[ACCOUNT_LEN + 1..])
                    .map_err(|_| StoreError::Corrupt("stream key"))?;
                let meta = self
                    .stream_meta(&account, &device, Some(decode_meta(&v)?))?
                    .unwrap_or_default();
                stats.streams += 1;
                stats.envelopes += meta.envelopes;
                stats.envelope_bytes += meta.bytes;
            }
        }
        Ok(stats)
    }

    fn export(
        &self,
        sink: &mut dyn FnMut(Exported) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let id32 = |b: &[u8]| -> Result<[u8; 32], StoreError> {
            <[u8; 32]>::try_from(b).map_err(|_| StoreError::Corrupt("32-byte key"))
        };
        // Keys sort by account, then tag: 'K' (sealed keys) < 'R' (roster). Gather an
        // account's keys until its roster was passed on, then its streams.
        let mut account_keys: Vec<Exported> = Vec::new();
        let mut current: Option<AccountId> = None;
        let mut roster_seen = false;
        for item in self.accounts.iter() {
            let (k, v) = item?;
            let account = AccountId::from_slice(k.get(..ACCOUNT_LEN).unwrap_or_default())
                .map_err(|_| StoreError::Corrupt("account key"))?;
            if current != Some(account) {
                // Keys of an account without a roster (none the relay writes) are dropped.
                account_keys.clear();
                current = Some(account);
                roster_seen = false;
            }
            let rest = &k[ACCOUNT_LEN..];
            let item = match rest.first() {
                Some(&TAG_ROSTER) if rest.len() == 1 => {
                    sink(Exported::Account {
                        account,
                        roster: v.to_vec(),
                    })?;
                    roster_seen = true;
                    for held in account_keys.drain(..) {
                        sink(held)?;
                    }
                    for (device, meta) in self.streams_of(&account)? {
                        sink(Exported::Stream {
                            account,
                            device,
                            meta,
                        })?;
                    }
                    continue;
                }
                Some(&TAG_ADMIN) if rest.len() == 1 => {
                    let (settings, active_day) = admin_parts(&v)?;
                    Exported::Settings {
                        account,
                        settings,
                        active_day,
                    }
                }
                Some(&TAG_SEALED_KEY) if rest.len() == 1 + DEVICE_LEN + 8 => Exported::SealedKey {
                    account,
                    device: DeviceId::from_slice(&rest[1..1 + DEVICE_LEN])
                        .map_err(|_| StoreError::Corrupt("sealed key key"))?,
                    epoch: u64_at(rest, 1 + DEVICE_LEN)?,
                    sealed: v.to_vec(),
                },
                _ => continue,
            };
            if roster_seen {
                sink(item)?;
            } else {
                account_keys.push(item);
            }
        }
        for item in self.pairing.iter() {
            let (slot_id, value) = item?;
            let (expires_at_ms, account, bundle) = slot_value_parts(&value)?;
            sink(Exported::PairingSlot {
                slot_id: id32(&slot_id)?,
                account,
                expires_at_ms,
                bundle: bundle.to_vec(),
            })?;
        }
        for item in self.recovery.iter() {
            let (lookup_id, value) = item?;
            let account = AccountId::from_slice(value.get(..ACCOUNT_LEN).unwrap_or_default())
                .map_err(|_| StoreError::Corrupt("recovery account"))?;
            sink(Exported::RecoveryBundle {
                lookup_id: id32(&lookup_id)?,
                account,
                bundle: value[ACCOUNT_LEN..].to_vec(),
            })?;
        }
        for item in self.tokens.iter() {
            let (token_hash, _) = item?;
            sink(Exported::Token {
                token_hash: id32(&token_hash)?,
            })?;
        }
        Ok(())
    }

    fn flush(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let task_error = |e: tokio::task::JoinError| StoreError::Backend(format!("flush: {e}"));
            // The log's fdatasync and sled's flush at once: a group-commit round takes the
            // longer of the two, not their sum (both ~5 ms under push load on this disk).
            // Pushes are acknowledged only when both are done; compaction, whose pointers
            // must never reach the disk before their records, syncs in order (`sync_all`).
            let dead = self.log.dead_segments();
            let log = self.log.clone();
            let (synced, flushed) = tokio::join!(
                tokio::task::spawn_blocking(move || log.sync()),
                self.db.flush_async()
            );
            synced.map_err(task_error)??;
            flushed?;
            if dead.is_empty() {
                return Ok(());
            }
            let log = self.log.clone();
            tokio::task::spawn_blocking(move || log.remove_segments(&dead))
                .await
                .map_err(task_error)?
        })
    }

    fn maintain(&self) -> Result<(), StoreError> {
        if self.compact()? > 0 {
            // Copies, then pointers made durable; then the emptied segments are deleted.
            self.sync_all()?;
        }
        Ok(())
    }
}

/// The `deleted` tree's key of an account: a hash, so the account id itself is not kept after
/// the deletion (only whoever knows the id can tell it was deleted here).
fn deleted_key(account: &AccountId) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(b"kith-relay/v1/deleted-account");
    hash.update(account.as_bytes());
    hash.finalize().into()
}

/// Where the sled files of a schema-`schema` database in `dir` are kept when it is migrated:
/// `db.schema-2` beside `db`.
pub fn backup_dir(dir: &Path, schema: u32) -> std::path::PathBuf {
    dir.with_extension(format!("schema-{schema}"))
}

/// Copies the sled files of `from` (not the envelope log) to `to`, replacing what an
/// interrupted migration left there.
fn copy_sled_files(from: &Path, to: &Path) -> std::io::Result<()> {
    if to.exists() {
        std::fs::remove_dir_all(to)?;
    }
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if entry.file_name() == LOG_DIR {
            continue;
        }
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    File::open(to)?.sync_all()
}

/// Copies a directory tree (an online backup of a store nothing writes to meanwhile).
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

// The conformance suite's stream helpers, shared with these tests.
#[cfg(test)]
#[path = "../../tests/common/streams.rs"]
mod store_streams;

#[cfg(test)]
mod tests {
    use super::*;
    use store_streams::{append_to, envelopes, read_from};

    const A: AccountId = AccountId::from_bytes([1; 32]);
    const B: AccountId = AccountId::from_bytes([2; 32]);
    const D: DeviceId = DeviceId::from_bytes([3; 16]);

    fn open(value_bytes: usize) -> (tempfile::TempDir, SledStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 1 << 20, value_bytes).unwrap();
        (dir, store)
    }

    fn append(store: &SledStore, account: &AccountId, from: u64, n: u64) {
        append_to(store, account, &D, from, n);
    }

    fn read_all(store: &SledStore, after: u64, max: usize) -> (Vec<(u64, Vec<u8>)>, ReadEnd) {
        read_from(store, &A, &D, after, max)
    }

    #[test]
    fn a_store_reopens_while_sled_still_holds_its_lock_for_a_moment() {
        // sled releases the database's lock when the last reference to its internals drops,
        // and jobs on its background thread pool can hold one for a moment after the last
        // handle is gone: CI once failed a reopen this way. A reference that outlives the
        // store by 300 ms stands in for such a job.
        let (dir, store) = open(0);
        append(&store, &A, 1, 3);
        let lingering = store.db.clone();
        drop(store);
        let job = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            drop(lingering);
        });
        let store = SledStore::open(dir.path(), 1 << 20, 0).unwrap();
        assert_eq!(read_all(&store, 0, 100).0.len(), 3);
        job.join().unwrap();
    }

    #[test]
    fn a_store_open_elsewhere_is_refused_with_a_clear_error() {
        let (dir, _held) = open(0);
        let err = SledStore::open(dir.path(), 1 << 20, 0).unwrap_err();
        assert!(
            err.to_string().contains("locked by another process"),
            "{err}"
        );
    }

    #[test]
    fn reads_start_inside_packed_values_and_page() {
        for value_bytes in [0, 40, 1 << 20] {
            let (_dir, store) = open(value_bytes);
            append(&store, &A, 1, 5);
            append(&store, &A, 6, 5);
            let (got, end) = read_all(&store, 3, 4);
            assert_eq!(
                got.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
                vec![4, 5, 6, 7]
            );
            assert_eq!(got[0].1, envelopes(4, 1)[0]);
            assert_eq!(end, ReadEnd::More);
            let (got, end) = read_all(&store, 7, 100);
            assert_eq!(got.len(), 3);
            assert_eq!(end, ReadEnd::Complete);
            assert!(read_all(&store, 10, 100).0.is_empty());
        }
    }

    #[test]
    fn truncation_keeps_the_tail_of_a_straddling_value() {
        let (_dir, store) = open(1 << 20);
        append(&store, &A, 1, 10);
        let meta = store.truncate(&A, &D, 4).unwrap();
        assert_eq!(meta.first_seq, 4);
        assert_eq!(meta.envelopes, 7);
        let (got, _) = read_all(&store, 0, 100);
        assert_eq!(got.first().map(|(s, _)| *s), Some(4));
        assert_eq!(got.len(), 7);
    }

    #[test]
    fn truncation_keeps_the_tail_of_a_straddling_record_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path(), 1 << 20, 1 << 20).unwrap();
            append(&store, &A, 1, 10);
            store.truncate(&A, &D, 4).unwrap();
            store.sync_all().unwrap();
        }
        let store = SledStore::open(dir.path(), 1 << 20, 1 << 20).unwrap();
        let (got, _) = read_all(&store, 0, 100);
        assert_eq!(got, (4..=10).zip(envelopes(4, 7)).collect::<Vec<_>>());
        // The truncated head is no longer counted live; the tail is.
        let live: u64 = store.log_usage().iter().map(|(_, _, live)| live).sum();
        assert_eq!(
            live,
            envelopes(4, 7)
                .iter()
                .map(|e| e.len() as u64 + 4)
                .sum::<u64>()
        );
    }

    #[test]
    fn stream_meta_survives_reopens_through_pointers_and_truncations() {
        let dir = tempfile::tempdir().unwrap();
        let open = || SledStore::open(dir.path(), 1 << 20, 1 << 20).unwrap();
        let meta_after = |store: &SledStore| {
            store.create_account(&A, b"roster").unwrap();
            store.load_account(&A).unwrap().unwrap().streams
        };
        let push = |store: &SledStore, from: u64, n: u64, meta: StreamMeta| {
            let envs = envelopes(from, n);
            let refs: Vec<&[u8]> = envs.iter().map(Vec::as_slice).collect();
            store.append(&A, &D, from, &refs, &meta).unwrap();
        };
        let m = |first_seq, last_seq, envelopes| StreamMeta {
            first_seq,
            last_seq,
            bytes: 7,
            envelopes,
        };
        {
            let store = open();
            push(&store, 1, 3, m(1, 3, 3)); // first push: batch with 'S'
            push(&store, 4, 3, m(1, 6, 6)); // one insert, meta in the pointer
            store.sync_all().unwrap();
        }
        assert_eq!(meta_after(&open()), vec![(D, m(1, 6, 6))]);
        {
            let store = open();
            let truncated = store.truncate(&A, &D, 5).unwrap();
            assert_eq!((truncated.first_seq, truncated.last_seq), (5, 6));
            assert_eq!(truncated.envelopes, 2);
            store.sync_all().unwrap();
            assert_eq!(meta_after(&store), vec![(D, truncated)]);
            push(&store, 7, 2, m(5, 8, 4));
            store.sync_all().unwrap();
        }
        assert_eq!(meta_after(&open()), vec![(D, m(5, 8, 4))]);
        let stats = open().stats().unwrap();
        assert_eq!((stats.streams, stats.envelopes), (1, 4));
    }

    #[test]
    fn a_schema_1_database_stays_readable_and_new_pushes_go_to_the_log() {
        let dir = tempfile::tempdir().unwrap();
        {
            // What schema 1 wrote: packed envelopes inline.
            let db = sled::open(dir.path()).unwrap();
            db.open_tree("meta")
                .unwrap()
                .insert(SCHEMA_KEY, &SCHEMA_INLINE.to_be_bytes())
                .unwrap();
            let mut packed = Vec::new();
            for e in envelopes(1, 5) {
                pack_into(&mut packed, &e);
            }
            let accounts = db.open_tree("accounts").unwrap();
            accounts.insert(envelope_key(&A, &D, 1), packed).unwrap();
            let meta = StreamMeta {
                first_seq: 1,
                last_seq: 5,
                bytes: 0,
                envelopes: 5,
            };
            accounts
                .insert(stream_key(&A, &D), &encode_meta(&meta))
                .unwrap();
            db.flush().unwrap();
        }
        let store = SledStore::open(dir.path(), 1 << 20, 1 << 20).unwrap();
        std::fs::remove_dir_all(backup_dir(dir.path(), SCHEMA_INLINE)).unwrap();
        append(&store, &A, 6, 5);
        let (got, _) = read_all(&store, 0, 100);
        assert_eq!(got, (1..=10).zip(envelopes(1, 10)).collect::<Vec<_>>());
        store.truncate(&A, &D, 3).unwrap();
        let (got, _) = read_all(&store, 0, 100);
        assert_eq!(got, (3..=10).zip(envelopes(3, 8)).collect::<Vec<_>>());
        let schema = store.db.open_tree("meta").unwrap().get(SCHEMA_KEY).unwrap();
        assert_eq!(schema.as_deref(), Some(&SCHEMA_VERSION.to_be_bytes()[..]));
    }

    /// Writes what schema 2 wrote (one pointer key per record in `accounts`, the stream meta
    /// under `'S'` and in the pointers of later pushes) for account A, device D: `records`
    /// pushes of 1 to 3 envelopes, returned in seq order. B has a roster only.
    fn write_schema_2(dir: &Path, records: u64) -> Vec<Vec<u8>> {
        let db = sled::open(dir).unwrap();
        db.open_tree("meta")
            .unwrap()
            .insert(SCHEMA_KEY, &SCHEMA_POINTERS.to_be_bytes())
            .unwrap();
        let accounts = db.open_tree("accounts").unwrap();
        accounts
            .insert(key(&A, TAG_ROSTER, &[]), b"roster A")
            .unwrap();
        accounts
            .insert(key(&B, TAG_ROSTER, &[]), b"roster B")
            .unwrap();
        accounts
            .insert(
                key(&A, TAG_SEALED_KEY, &[D.as_bytes(), &1u64.to_be_bytes()]),
                b"sealed",
            )
            .unwrap();
        let log = SegmentLog::open(&dir.join(LOG_DIR), SEGMENT_BYTES, &HashMap::new()).unwrap();
        let mut all = Vec::new();
        let mut bytes = 0u64;
        for r in 0..records {
            let first = all.len() as u64 + 1;
            let batch = envelopes(first, 1 + r % 3);
            let mut data = Vec::new();
            for e in &batch {
                pack_into(&mut data, e);
                bytes += e.len() as u64;
            }
            let (segment, offset) = log.append(&data).unwrap();
            all.extend(batch);
            let pointer = Pointer {
                segment,
                offset,
                len: data.len() as u32,
                count: (1 + r % 3) as u32,
                crc: crc32fast::hash(&data),
            };
            let meta = StreamMeta {
                first_seq: 1,
                last_seq: all.len() as u64,
                bytes,
                envelopes: all.len() as u64,
            };
            let mut value = pointer.encode().to_vec();
            if r == 0 {
                accounts
                    .insert(stream_key(&A, &D), &encode_meta(&meta))
                    .unwrap();
            } else {
                value.extend_from_slice(&encode_meta(&meta));
            }
            accounts.insert(envelope_key(&A, &D, first), value).unwrap();
        }
        log.sync().unwrap();
        db.flush().unwrap();
        all
    }

    fn old_stream_keys(store: &SledStore) -> usize {
        store
            .accounts
            .iter()
            .filter(|item| {
                let k = &item.as_ref().unwrap().0;
                is_envelope_key(k) || k.get(ACCOUNT_LEN) == Some(&TAG_STREAM)
            })
            .count()
    }

    #[test]
    fn a_schema_2_directory_is_migrated_with_every_envelope_intact() {
        let dir = tempfile::tempdir().unwrap();
        let all = write_schema_2(dir.path(), 150);
        let want: Vec<(u64, Vec<u8>)> = (1..).zip(all.iter().cloned()).collect();
        let bytes: u64 = all.iter().map(|e| e.len() as u64).sum();
        let meta = StreamMeta {
            first_seq: 1,
            last_seq: all.len() as u64,
            bytes,
            envelopes: all.len() as u64,
        };
        {
            let store = SledStore::open(dir.path(), 1 << 20, 1 << 20).unwrap();
            assert_eq!(read_all(&store, 0, usize::MAX).0, want);
            assert_eq!(read_all(&store, 200, usize::MAX).0, want[200..]);
            let account = store.load_account(&A).unwrap().unwrap();
            assert_eq!(account.roster, b"roster A");
            assert_eq!(account.streams, vec![(D, meta)]);
            assert_eq!(
                store.sealed_keys(&A, &D, 0).unwrap(),
                vec![b"sealed".to_vec()]
            );
            assert_eq!(old_stream_keys(&store), 0, "the old keys are gone");
            let blocks = store
                .streams
                .iter()
                .filter(|i| is_block_key(&i.as_ref().unwrap().0));
            assert_eq!(blocks.count(), 150usize.div_ceil(BLOCK_ENTRIES));
            // The log's live bytes are the records', counted once.
            let live: u64 = store.log_usage().iter().map(|(_, _, live)| live).sum();
            assert_eq!(live, bytes + 4 * all.len() as u64);
            let schema = store.db.open_tree("meta").unwrap().get(SCHEMA_KEY).unwrap();
            assert_eq!(schema.as_deref(), Some(&SCHEMA_VERSION.to_be_bytes()[..]));
            // The sled files as they were are kept beside the database.
            let backup = backup_dir(dir.path(), SCHEMA_POINTERS);
            {
                let old = sled::open(&backup).unwrap();
                let old_accounts = old.open_tree("accounts").unwrap();
                assert_eq!(
                    old_accounts
                        .iter()
                        .filter(|i| is_envelope_key(&i.as_ref().unwrap().0))
                        .count(),
                    150
                );
            }
            std::fs::remove_dir_all(&backup).unwrap();
            // The migrated stream takes pushes and truncations.
            let next = all.len() as u64 + 1;
            append(&store, &A, next, 2);
            store.truncate(&A, &D, 100).unwrap();
            store.sync_all().unwrap();
        }
        let store = SledStore::open(dir.path(), 1 << 20, 1 << 20).unwrap();
        let got = read_all(&store, 0, usize::MAX).0;
        assert_eq!(got.first().map(|(s, _)| *s), Some(100));
        assert_eq!(got[..want.len() - 99], want[99..]);
        assert_eq!(got.len(), want.len() - 99 + 2);
        assert_eq!(store.stats().unwrap().envelopes, got.len() as u64);
    }

    #[test]
    fn an_interrupted_migration_is_finished_at_the_next_start() {
        // Interrupted before the schema was marked: blocks half built (here: a stray one).
        let dir = tempfile::tempdir().unwrap();
        let all = write_schema_2(dir.path(), 70);
        {
            let db = sled::open(dir.path()).unwrap();
            let stray = Entry {
                first_seq: 1,
                pointer: Pointer {
                    segment: 0,
                    offset: 0,
                    len: 1,
                    count: 1,
                    crc: 0,
                },
            };
            db.open_tree(STREAMS_TREE)
                .unwrap()
                .insert(block_key(&A, &D, 1), encode_block(None, &[stray]))
                .unwrap();
            db.flush().unwrap();
        }
        let want: Vec<(u64, Vec<u8>)> = (1..).zip(all.iter().cloned()).collect();
        {
            let store = SledStore::open(dir.path(), 1 << 20, 1 << 20).unwrap();
            assert_eq!(read_all(&store, 0, usize::MAX).0, want);
            // Interrupted after the mark: the old keys back, the clean-up flag set.
            let meta = store.db.open_tree("meta").unwrap();
            meta.insert(CLEANUP_KEY, &[]).unwrap();
            store
                .accounts
                .insert(stream_key(&A, &D), &[0u8; 32])
                .unwrap();
            store
                .accounts
                .insert(envelope_key(&A, &D, 1), &[1u8; 29])
                .unwrap();
            store.sync_all().unwrap();
        }
        let store = SledStore::open(dir.path(), 1 << 20, 1 << 20).unwrap();
        std::fs::remove_dir_all(backup_dir(dir.path(), SCHEMA_POINTERS)).unwrap();
        assert_eq!(old_stream_keys(&store), 0);
        assert!(
            !store
                .db
                .open_tree("meta")
                .unwrap()
                .contains_key(CLEANUP_KEY)
                .unwrap()
        );
        assert_eq!(read_all(&store, 0, usize::MAX).0, want);
        let live: u64 = store.log_usage().iter().map(|(_, _, live)| live).sum();
        assert_eq!(live, all.iter().map(|e| e.len() as u64 + 4).sum::<u64>());
    }

    #[test]
    fn pushes_share_blocks_and_the_start_up_scan_reads_only_the_streams_tree() {
        let (_dir, store) = open(1 << 20);
        for seq in 1..=200 {
            append(&store, &A, seq, 1);
        }
        // 200 one-envelope pushes: four keys of blocks, not 200.
        let blocks = store
            .streams
            .iter()
            .filter(|i| is_block_key(&i.as_ref().unwrap().0));
        assert_eq!(blocks.count(), 200usize.div_ceil(BLOCK_ENTRIES));
        assert_eq!(
            old_stream_keys(&store),
            0,
            "nothing of the stream in `accounts`"
        );
        let (got, _) = read_all(&store, 0, usize::MAX);
        assert_eq!(got.len(), 200);
        assert!(got.iter().enumerate().all(|(i, (s, _))| *s == i as u64 + 1));
    }

    /// Every byte under `dir`, file by file.
    fn files_under(dir: &Path) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.extend(files_under(&path));
            } else {
                out.push(std::fs::read(&path).unwrap());
            }
        }
        out
    }

    #[test]
    fn deleting_an_account_erases_its_envelopes_from_the_log() {
        let (dir, store) = open(1 << 20);
        let marker = [0xa5u8; 40];
        let refs: Vec<&[u8]> = vec![&marker; 3];
        let meta = StreamMeta {
            first_seq: 1,
            last_seq: 3,
            bytes: 120,
            envelopes: 3,
        };
        store.append(&A, &D, 1, &refs, &meta).unwrap();
        append(&store, &B, 1, 5);
        store.sync_all().unwrap();
        let found = |dir: &Path| {
            files_under(&dir.join(LOG_DIR))
                .iter()
                .any(|f| f.windows(marker.len()).any(|w| w == marker))
        };
        assert!(found(dir.path()));
        store.delete_account(&A).unwrap();
        store.sync_all().unwrap();
        assert!(!found(dir.path()), "the envelopes are overwritten");
        let (got, _) = read_from(&store, &B, &D, 0, 100);
        assert_eq!(got.len(), 5, "the other account is intact");
    }

    #[test]
    fn compaction_moves_live_records_and_frees_dead_segments() {
        let dir = tempfile::tempdir().unwrap();
        let segment = 64 * 1024;
        let store = SledStore::open_with_segments(dir.path(), 1 << 20, 4096, segment).unwrap();
        // Two accounts interleaved over several segments; then one is deleted.
        let big = vec![0x11u8; 2000];
        for round in 0..40u64 {
            // A writes three times as much as B: B's records are a quarter of each segment.
            for (account, n) in [(&A, 6), (&B, 2)] {
                let refs: Vec<&[u8]> = vec![&big; n as usize];
                let meta = StreamMeta {
                    first_seq: 1,
                    last_seq: (round + 1) * n,
                    bytes: 0,
                    envelopes: (round + 1) * n,
                };
                store
                    .append(account, &D, round * n + 1, &refs, &meta)
                    .unwrap();
            }
        }
        store.sync_all().unwrap();
        let segments_before = store.log_usage().len();
        assert!(segments_before > 3, "{:?}", store.log_usage());
        store.delete_account(&A).unwrap();
        store.sync_all().unwrap();
        store.maintain().unwrap();
        // The segment that was active during the first pass is sealed now: a second pass.
        store.maintain().unwrap();
        let after = store.log_usage();
        assert!(after.len() < segments_before, "{after:?}");
        // Sealed segments are now mostly live.
        let active = after.iter().map(|(id, _, _)| *id).max().unwrap();
        for (id, size, live) in &after {
            assert!(*id == active || live * 2 >= *size, "{after:?}");
        }
        let (got, _) = read_from(&store, &B, &D, 0, 1000);
        assert_eq!(got.len(), 80);
        assert!(got.iter().all(|(_, e)| *e == big));
        drop(store);
        let store = SledStore::open_with_segments(dir.path(), 1 << 20, 4096, segment).unwrap();
        let (got, _) = read_from(&store, &B, &D, 0, 1000);
        assert_eq!(got.len(), 80, "pointers and segments agree after a reopen");
    }

    #[test]
    fn deleting_an_account_removes_every_key_mentioning_it_and_nothing_else() {
        let (_dir, store) = open(64);
        for account in [&A, &B] {
            assert!(store.create_account(account, b"roster").unwrap());
            append(&store, account, 1, 20);
            store.put_sealed_key(account, &D, 1, b"sealed").unwrap();
            let slot = [account.as_bytes()[0]; 32];
            store
                .put_pairing_slot(&slot, account, u64::MAX, b"bundle", 0)
                .unwrap();
            store
                .put_recovery_bundle(&[account.as_bytes()[0] + 10; 32], account, b"rb")
                .unwrap();
        }
        store.delete_account(&A).unwrap();
        assert!(store.load_account(&A).unwrap().is_none());
        for name in store.db.tree_names() {
            let tree = store.db.open_tree(name).unwrap();
            for item in tree.iter() {
                let (k, v) = item.unwrap();
                assert!(!k.starts_with(A.as_bytes()) && !v.windows(32).any(|w| w == A.as_bytes()));
                assert_ne!(k.as_ref(), &[1u8; 32][..], "A's pairing slot");
                assert_ne!(k.as_ref(), &[11u8; 32][..], "A's recovery bundle");
            }
        }
        let b = store.load_account(&B).unwrap().unwrap();
        assert_eq!(b.streams.len(), 1);
        assert!(store.recovery_bundle(&[12; 32]).unwrap().is_some());
    }

    #[test]
    fn a_foreign_schema_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path(), 1 << 20, 0).unwrap();
            store
                .db
                .open_tree("meta")
                .unwrap()
                .insert(SCHEMA_KEY, &7u32.to_be_bytes())
                .unwrap();
            store.db.flush().unwrap();
        }
        let err = SledStore::open(dir.path(), 1 << 20, 0).unwrap_err();
        assert!(matches!(
            err,
            StoreError::SchemaVersion {
                found: 7,
                expected: SCHEMA_VERSION
            }
        ));
        assert!(
            err.to_string().contains("written by a newer kith-relay"),
            "a downgrade says so: {err}"
        );
    }
}
