//! The envelope log: pushed envelopes live in append-only segment files next to the sled
//! database, which keeps only small pointers to them (key-value separation).
//!
//! Why: sled rewrites a whole leaf node (up to 16 values) every ten inserts and stores values
//! above 128 KiB as separate blob files, so a pushed batch was written about three times and
//! its writeback dominated the relay's CPU under push load. Here a batch is written once, with
//! one `write` system call, and made durable by `fdatasync` in the group commit (alongside
//! sled's flush; a push is acknowledged when both are done). A record is written before its
//! pointer is inserted, so after a `kill -9` every pointer finds its record. After a power loss
//! a pointer may have reached the disk without its record (sled also flushes on its own every
//! 500 ms): the CRC-32 in the pointer turns that into a `STORAGE` error on read, never into
//! wrong envelopes.
//!
//! A record is the packed envelopes of one stored value (`u32 BE length ‖ bytes`, repeated);
//! its [`Pointer`] in sled holds segment, offset, length, envelope count and CRC-32, which a
//! read checks. Segments are files `<id>.log` of up to [`SEGMENT_BYTES`] (a record larger
//! than that gets a segment of its own); each start of the
//! store begins a new one. The log counts the live (pointed-to) bytes of each segment: a sealed
//! segment with none left is deleted after the flush that made it so; one that is mostly dead
//! is compacted (its live records copied to the active segment, the pointers swapped) by
//! [`super::Store::maintain`]. Deleted accounts' records are overwritten with zeros at once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::StoreError;
use crate::state::lock;

/// Size at which the active segment is sealed and a new one started.
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// A sealed segment is compacted when less than this fraction of it is live, and at least an
/// eighth of a full segment of it is dead.
const COMPACT_LIVE_FRACTION: f64 = 0.5;

fn io_error(what: &str) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |err| StoreError::Backend(format!("envelope log: {what}: {err}"))
}

/// Where a record lives, as stored in sled (tag byte, then big-endian fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pointer {
    /// Segment id.
    pub segment: u64,
    /// Byte offset in the segment.
    pub offset: u64,
    /// Record length.
    pub len: u32,
    /// Envelopes in the record.
    pub count: u32,
    /// CRC-32 of the record.
    pub crc: u32,
}

impl Pointer {
    /// Encoded length.
    pub const LEN: usize = 29;
    /// Length of the stream meta a pointer value may carry after the pointer.
    pub const SUFFIX_LEN: usize = 32;
    /// First byte of an encoded pointer. An inline value (schema 1: packed envelopes, the first
    /// starting with its u32 length) of 29 or 61 bytes cannot start with 1: that would be an
    /// envelope of 16 MiB or more.
    const TAG: u8 = 1;

    /// The sled value.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[0] = Self::TAG;
        out[1..9].copy_from_slice(&self.segment.to_be_bytes());
        out[9..17].copy_from_slice(&self.offset.to_be_bytes());
        out[17..21].copy_from_slice(&self.len.to_be_bytes());
        out[21..25].copy_from_slice(&self.count.to_be_bytes());
        out[25..29].copy_from_slice(&self.crc.to_be_bytes());
        out
    }

    /// A pointer if `value` is one (possibly followed by [`Pointer::SUFFIX_LEN`] bytes of
    /// stream meta, see `super::sled`); `None` for an inline (schema 1) value.
    pub fn decode(value: &[u8]) -> Option<Self> {
        if value.len() != Self::LEN && value.len() != Self::LEN + Self::SUFFIX_LEN {
            return None;
        }
        let value: &[u8; Self::LEN] = value.get(..Self::LEN)?.try_into().ok()?;
        if value[0] != Self::TAG {
            return None;
        }
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&value[at..at + 8]);
            u64::from_be_bytes(b)
        };
        let u32_at = |at: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&value[at..at + 4]);
            u32::from_be_bytes(b)
        };
        Some(Self {
            segment: u64_at(1),
            offset: u64_at(9),
            len: u32_at(17),
            count: u32_at(21),
            crc: u32_at(25),
        })
    }

    /// The pointer to the part of this record from byte `skip` on, holding `count` envelopes
    /// whose CRC-32 is `crc`.
    pub fn tail(&self, skip: u32, count: u32, crc: u32) -> Self {
        Self {
            segment: self.segment,
            offset: self.offset + u64::from(skip),
            len: self.len - skip,
            count,
            crc,
        }
    }
}

#[derive(Debug)]
struct Segment {
    file: Arc<File>,
    /// Bytes reserved in the file (its length once writes finish).
    size: u64,
    /// Bytes that pointers point to.
    live: u64,
}

#[derive(Debug)]
struct Inner {
    segments: BTreeMap<u64, Segment>,
    active: u64,
    /// The next segment, created ahead (file and directory entry synced) so that rotating
    /// does not stall appends on file creation; `None` while it is being made.
    spare: Option<(u64, Arc<File>)>,
    /// Segments written since the last sync.
    dirty: BTreeSet<u64>,
}

/// The segment files of one store.
#[derive(Debug)]
pub struct SegmentLog {
    dir: PathBuf,
    segment_bytes: u64,
    inner: Mutex<Inner>,
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}.log"))
}

fn create_segment(dir: &Path, id: u64) -> Result<File, StoreError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(segment_path(dir, id))
        .map_err(io_error("create segment"))?;
    // The new name must survive a crash as much as the data written to it.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("sync the log directory"))?;
    Ok(file)
}

/// A new segment with the first free id after `after` (a spare being made concurrently may
/// have taken `after + 1`).
fn create_next_segment(dir: &Path, after: u64) -> Result<(u64, File), StoreError> {
    let mut id = after + 1;
    loop {
        match create_segment(dir, id) {
            Ok(file) => return Ok((id, file)),
            Err(_) if id < after + 8 && segment_path(dir, id).exists() => id += 1,
            Err(err) => return Err(err),
        }
    }
}

impl SegmentLog {
    /// Opens the log in `dir` (created if missing). `live` holds the bytes each segment has
    /// pointers to (from a scan of the index); segments with none are deleted, and a new
    /// active segment is started.
    pub fn open(
        dir: &Path,
        segment_bytes: u64,
        live: &HashMap<u64, u64>,
    ) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(io_error("create the log directory"))?;
        let mut segments = BTreeMap::new();
        let mut max_id = None;
        for entry in std::fs::read_dir(dir).map_err(io_error("list the log directory"))? {
            let entry = entry.map_err(io_error("list the log directory"))?;
            let name = entry.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|n| u64::from_str_radix(n, 16).ok())
            else {
                continue;
            };
            max_id = max_id.max(Some(id));
            let live = live.get(&id).copied().unwrap_or(0);
            if live == 0 {
                std::fs::remove_file(entry.path()).map_err(io_error("remove a dead segment"))?;
                continue;
            }
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(entry.path())
                .map_err(io_error("open a segment"))?;
            let size = file.metadata().map_err(io_error("stat a segment"))?.len();
            segments.insert(
                id,
                Segment {
                    file: Arc::new(file),
                    size,
                    live,
                },
            );
        }
        if let Some(missing) = live.keys().find(|id| !segments.contains_key(id)) {
            return Err(StoreError::Backend(format!(
                "envelope log: segment {missing:016x} is missing"
            )));
        }
        let active = max_id.map_or(0, |id| id + 1);
        let file = create_segment(dir, active)?;
        let spare = Some((active + 1, Arc::new(create_segment(dir, active + 1)?)));
        segments.insert(
            active,
            Segment {
                file: Arc::new(file),
                size: 0,
                live: 0,
            },
        );
        Ok(Self {
            dir: dir.to_owned(),
            segment_bytes,
            inner: Mutex::new(Inner {
                segments,
                active,
                spare,
                dirty: BTreeSet::new(),
            }),
        })
    }

    /// Appends `data` (one or more records) and counts it live; returns (segment, offset).
    /// The caller stores pointers to it, or calls [`SegmentLog::release`] if that fails.
    pub fn append(&self, data: &[u8]) -> Result<(u64, u64), StoreError> {
        let len = data.len() as u64;
        let mut rotated = false;
        let (id, offset, file) = {
            let mut inner = lock(&self.inner);
            let active = inner.active;
            let full = inner
                .segments
                .get(&active)
                .is_none_or(|s| s.size > 0 && s.size + len > self.segment_bytes);
            if full {
                let (next, file) = match inner.spare.take() {
                    Some(spare) => spare,
                    // Two rotations in a row, the spare not made yet: make one here.
                    None => {
                        let (id, file) = create_next_segment(&self.dir, active)?;
                        (id, Arc::new(file))
                    }
                };
                inner.segments.insert(
                    next,
                    Segment {
                        file,
                        size: 0,
                        live: 0,
                    },
                );
                inner.active = next;
                rotated = true;
            }
            let id = inner.active;
            let segment = inner
                .segments
                .get_mut(&id)
                .ok_or(StoreError::Corrupt("active segment"))?;
            let offset = segment.size;
            segment.size += len;
            segment.live += len;
            (id, offset, segment.file.clone())
        };
        if rotated {
            // The next spare, made outside the lock. Failing here costs nothing yet: the next
            // rotation makes its own.
            if let Ok(spare) = create_segment(&self.dir, id + 1) {
                let mut inner = lock(&self.inner);
                if inner.spare.is_none() && inner.active == id {
                    inner.spare = Some((id + 1, Arc::new(spare)));
                }
            }
        }
        // Positional writes to reserved ranges: appends run in parallel.
        let written = file.write_all_at(data, offset);
        let mut inner = lock(&self.inner);
        // Marked dirty only once written: a sync that starts after this call returned covers it.
        inner.dirty.insert(id);
        if let Err(err) = written {
            if let Some(segment) = inner.segments.get_mut(&id) {
                segment.live = segment.live.saturating_sub(len);
            }
            return Err(io_error("write")(err));
        }
        Ok((id, offset))
    }

    /// `len` bytes of `segment` are no longer pointed to.
    pub fn release(&self, segment: u64, len: u64) {
        if let Some(segment) = lock(&self.inner).segments.get_mut(&segment) {
            segment.live = segment.live.saturating_sub(len);
        }
    }

    fn file(&self, segment: u64) -> Result<Arc<File>, StoreError> {
        lock(&self.inner)
            .segments
            .get(&segment)
            .map(|s| s.file.clone())
            .ok_or(StoreError::Corrupt("pointer to a missing segment"))
    }

    /// Reads and checks the record `pointer` points to.
    pub fn read(&self, pointer: &Pointer) -> Result<Vec<u8>, StoreError> {
        let file = self.file(pointer.segment)?;
        let mut data = vec![0u8; pointer.len as usize];
        file.read_exact_at(&mut data, pointer.offset)
            .map_err(|_| StoreError::Corrupt("envelope record beyond the end of its segment"))?;
        if crc32fast::hash(&data) != pointer.crc {
            return Err(StoreError::Corrupt("envelope record checksum"));
        }
        Ok(data)
    }

    /// Overwrites a record with zeros (a deleted account's envelopes leave no trace) and
    /// releases it.
    pub fn erase(&self, pointer: &Pointer) -> Result<(), StoreError> {
        let file = self.file(pointer.segment)?;
        let zeros = vec![0u8; (pointer.len as usize).min(64 * 1024)];
        let mut at = 0u64;
        while at < u64::from(pointer.len) {
            let n = (u64::from(pointer.len) - at).min(zeros.len() as u64) as usize;
            file.write_all_at(&zeros[..n], pointer.offset + at)
                .map_err(io_error("erase"))?;
            at += n as u64;
        }
        let mut inner = lock(&self.inner);
        inner.dirty.insert(pointer.segment);
        if let Some(segment) = inner.segments.get_mut(&pointer.segment) {
            segment.live = segment.live.saturating_sub(u64::from(pointer.len));
        }
        Ok(())
    }

    /// Makes every append that returned before this call durable (`fdatasync`).
    pub fn sync(&self) -> Result<(), StoreError> {
        let (ids, files): (Vec<u64>, Vec<Arc<File>>) = {
            let mut inner = lock(&self.inner);
            let ids = std::mem::take(&mut inner.dirty);
            ids.into_iter()
                .filter_map(|id| Some((id, inner.segments.get(&id)?.file.clone())))
                .unzip()
        };
        for (i, file) in files.iter().enumerate() {
            if let Err(err) = file.sync_data() {
                // Not durable: the next sync tries these again.
                lock(&self.inner).dirty.extend(&ids[i..]);
                return Err(io_error("sync")(err));
            }
        }
        Ok(())
    }

    /// Sealed segments nothing points to any more.
    pub fn dead_segments(&self) -> Vec<u64> {
        let inner = lock(&self.inner);
        inner
            .segments
            .iter()
            .filter(|(id, s)| **id != inner.active && s.live == 0)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Deletes segments found dead by [`SegmentLog::dead_segments`] before a flush made the
    /// pointer removals that killed them durable.
    pub fn remove_segments(&self, ids: &[u64]) -> Result<(), StoreError> {
        for id in ids {
            let removed = {
                let mut inner = lock(&self.inner);
                let dead = inner
                    .segments
                    .get(id)
                    .is_some_and(|s| s.live == 0 && *id != inner.active);
                inner.dirty.remove(id);
                dead.then(|| inner.segments.remove(id)).flatten()
            };
            if removed.is_some() {
                std::fs::remove_file(segment_path(&self.dir, *id))
                    .map_err(io_error("remove a dead segment"))?;
            }
        }
        Ok(())
    }

    /// Sealed segments worth compacting: mostly dead, with enough dead bytes to matter.
    pub fn compaction_victims(&self) -> BTreeSet<u64> {
        let inner = lock(&self.inner);
        inner
            .segments
            .iter()
            .filter(|(id, s)| {
                **id != inner.active
                    && s.live > 0
                    && (s.live as f64) < s.size as f64 * COMPACT_LIVE_FRACTION
                    && s.size - s.live >= self.segment_bytes / 8
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// (segment, size, live) of every segment, for tests and statistics.
    pub fn usage(&self) -> Vec<(u64, u64, u64)> {
        lock(&self.inner)
            .segments
            .iter()
            .map(|(id, s)| (*id, s.size, s.live))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_round_trip_and_inline_values_are_not_pointers() {
        let p = Pointer {
            segment: 3,
            offset: 1 << 40,
            len: 130_000,
            count: 100,
            crc: 0xdead_beef,
        };
        assert_eq!(Pointer::decode(&p.encode()), Some(p));
        let mut with_meta = p.encode().to_vec();
        with_meta.extend_from_slice(&[9; Pointer::SUFFIX_LEN]);
        assert_eq!(Pointer::decode(&with_meta), Some(p));
        assert_eq!(Pointer::decode(&with_meta[..40]), None);
        // A schema-1 value: u32 length of the first envelope, then its bytes.
        let mut inline = 25u32.to_be_bytes().to_vec();
        inline.extend_from_slice(&[1; 25]);
        assert_eq!(Pointer::decode(&inline), None);
        assert_eq!(Pointer::decode(&inline[..Pointer::LEN]), None);
    }

    #[test]
    fn appends_read_back_checked_and_dead_segments_go() {
        let dir = tempfile::tempdir().unwrap();
        let log = SegmentLog::open(dir.path(), SEGMENT_BYTES, &HashMap::new()).unwrap();
        let data = vec![7u8; 1000];
        let (segment, offset) = log.append(&data).unwrap();
        let pointer = Pointer {
            segment,
            offset,
            len: 1000,
            count: 1,
            crc: crc32fast::hash(&data),
        };
        log.sync().unwrap();
        assert_eq!(log.read(&pointer).unwrap(), data);
        let bad = Pointer { crc: 1, ..pointer };
        assert!(matches!(log.read(&bad), Err(StoreError::Corrupt(_))));
        log.erase(&pointer).unwrap();
        assert!(matches!(log.read(&pointer), Err(StoreError::Corrupt(_))));
        // The active segment is never removed; a reopened log starts a new one and drops the
        // old one, which nothing points to.
        assert!(log.dead_segments().is_empty());
        drop(log);
        let log = SegmentLog::open(dir.path(), SEGMENT_BYTES, &HashMap::new()).unwrap();
        // Segment 0 and the spare 1 are gone; 2 is active, 3 the new spare.
        assert_eq!(log.usage(), vec![(2, 0, 0)]);
        assert!(!segment_path(dir.path(), 0).exists());
        assert!(segment_path(dir.path(), 3).exists());
    }

    #[test]
    fn a_segment_pointed_to_but_missing_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let live = HashMap::from([(5u64, 100u64)]);
        assert!(SegmentLog::open(dir.path(), SEGMENT_BYTES, &live).is_err());
    }
}
