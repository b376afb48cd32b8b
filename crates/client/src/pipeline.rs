//! Batched read-modify-write of merged records, each batch's write running on a blocking
//! thread while the next batch is merged.
//!
//! Imports and pulls change many records at once. Encrypting and writing a batch to the store
//! costs about as much as merging the next one, so [`RecordPipeline`] overlaps the two on the
//! machine's cores. While a batch is in flight its records stay readable from memory, so a
//! record touched again by the next batch builds on its latest state, never on what the store
//! held before. The pipeline holds the device's record lock from creation until its last write
//! has landed, even if the caller returns early with an error, so no other writer of this
//! process reads a record that a write still in flight is about to replace.
//!
//! Other processes sharing the store (a watcher beside CLI commands) are not under that lock:
//! every write of merged records ([`write_records_in`]) joins each state with the one stored at
//! commit time, inside the write transaction, so a change another process committed between
//! our read and our write is kept, never overwritten. The number of live contacts is kept in
//! the same transactions ([`live_count`]), so no caller has to count by scanning.
//!
//! Reading a stored record back to join it costs as much as writing it (read, open, decode,
//! merge, encode, seal). A record the pipeline itself read from the store, or from a batch in
//! flight, skips that when nothing else wrote it since: the pipeline remembers which stored
//! value each state was built on ([`BatchVersions`]: the value's [`ValueVersion`], its nonce),
//! and the write replaces the value only if it is still that one
//! ([`StoreTxn::replace_sealed_at`], one lookup, nothing opened). If another process wrote the
//! record in between, the version differs and the write joins as above; nothing is lost.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use kith_protocol::RecordId;
use kith_protocol::merge::{MergeError, RecordState};
use kith_protocol::record::FieldKind;
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::error::Result;
use crate::store::{LocalStore, LocalStoreError, StoreTxn, TreeName, ValueVersion};

/// The merged records of one batch, by id.
pub(crate) type Records = BTreeMap<RecordId, RecordState>;

/// See the module docs.
pub(crate) struct RecordPipeline {
    store: LocalStore,
    /// Shared with every in-flight write: the record lock is released when the last of them
    /// and the pipeline are gone.
    guard: Arc<OwnedMutexGuard<()>>,
    /// Batches submitted and not yet written, oldest first: one after
    /// [`RecordPipeline::submit`]; after [`RecordPipeline::submit_page`], the pages of the
    /// open group and of the group committing before it. Their writes land in this order.
    in_flight: std::collections::VecDeque<InFlight>,
    /// Set by [`RecordPipeline::start_on_empty_store`]: the ids this pipeline has loaded or
    /// been submitted, when the store held no record as it started. An id not in it cannot be
    /// in the store (except one another process wrote since, which every write joins with, see
    /// [`write_records_in`]), in flight or in the write group, so it is not looked up (a pull
    /// holds up to two groups of pages in flight, whose lookups a first pull of 1,000,000
    /// records would otherwise make for each record).
    loaded: Option<IdFilter>,
    /// Set by [`RecordPipeline::group_writes`]: records written but not committed yet.
    group: Option<Arc<WriteGroup>>,
    /// States read ahead by [`RecordPipeline::prefetch`] for the batch being merged, taken
    /// by [`RecordPipeline::load`]; replaced at each prefetch.
    prefetched: HashMap<RecordId, RecordState>,
    /// Where the states loaded for the batch being merged were read from, handed to its
    /// write at submission ([`BatchVersions`]).
    read: HashMap<RecordId, Read>,
    /// How this pipeline's writes stored their records, over all batches.
    counts: Arc<WriteCounts>,
    /// Set once a write failed: no batch is started after it (a batch submitted once the
    /// failed one has left `in_flight` would otherwise have no earlier write to wait for, and
    /// could land after a gap).
    failed: bool,
    /// The pages submitted by [`RecordPipeline::submit_page`] since the last group was
    /// closed: committed together, in one transaction.
    open_group: Option<OpenGroup>,
    /// When [`RecordPipeline::submit_page`] closes a group.
    page_group: PageGroupLimits,
}

/// When a group of pages ([`RecordPipeline::submit_page`]) is full and committed: at
/// `records` records or `pages` pages, whichever comes first.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PageGroupLimits {
    /// Records (changed by the group's pages) after which the group is committed.
    pub(crate) records: usize,
    /// Pages after which the group is committed.
    pub(crate) pages: usize,
}

impl PageGroupLimits {
    /// A pull's groups: as many records as an import's [`WriteGroup`] (a transaction of 16,000
    /// records at random places dirties most leaves of a 1,000,000-record index once, instead
    /// of a third of them for each page of ~4,500), and at most 8 pages (a relay's page is at
    /// most 2 MiB of envelopes: 16 MiB, as [`WriteGroup::BYTES`]).
    pub(crate) const PULL: Self = Self {
        records: WriteGroup::RECORDS,
        pages: 8,
    };
}

/// One page's write in a group's transaction, its preparation done.
type PageWrite = Box<dyn FnOnce(&StoreTxn<'_>) -> Result<()> + Send>;

/// The pages of a group not committed yet (see [`RecordPipeline::submit_page`]).
struct OpenGroup {
    /// Told when the write before the group's first page has landed (`None` if none was in
    /// flight): the group's transaction waits for it, so that writes land in order.
    before: Option<tokio::sync::oneshot::Receiver<()>>,
    /// The group's pages, in the order of submission.
    pages: Vec<GroupPage>,
    records: usize,
}

/// A page of an [`OpenGroup`].
struct GroupPage {
    /// Its write, sent once prepared.
    prepared: tokio::sync::oneshot::Receiver<Result<PageWrite>>,
    /// Where the page is told whether its group committed.
    told: tokio::sync::oneshot::Sender<Result<()>>,
}

/// A set of record ids that may answer "maybe" for an id it does not hold (a Bloom filter):
/// 2 MiB whatever the number of ids, about 0.2 % of false "maybe"s at 1,000,000 ids and 7 % at
/// 3,000,000. Record ids are uniformly random (blinded), so their bytes are the hashes.
struct IdFilter {
    bits: Vec<u64>,
}

impl IdFilter {
    const BITS_LOG2: u32 = 24;
    const PROBES: usize = 4;

    fn new() -> Self {
        Self {
            bits: vec![0; 1 << (Self::BITS_LOG2 - 6)],
        }
    }

    fn probes(id: &RecordId) -> impl Iterator<Item = usize> + '_ {
        id.as_bytes()
            .chunks_exact(4)
            .take(Self::PROBES)
            .map(|word| {
                let word = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
                (word >> (32 - Self::BITS_LOG2)) as usize
            })
    }

    /// Adds `id`; whether it may have been in the set already.
    fn insert(&mut self, id: &RecordId) -> bool {
        let mut present = true;
        for bit in Self::probes(id) {
            let (word, mask) = (bit / 64, 1u64 << (bit % 64));
            present &= self.bits[word] & mask != 0;
            self.bits[word] |= mask;
        }
        present
    }
}

struct InFlight {
    records: Arc<Records>,
    /// The versions this batch's write stores its states at (filled as it writes), for the
    /// batches that load a state from it.
    written: Arc<Written>,
    task: Landing,
    /// Told once this batch's write has landed (dropped unsent if it failed): the next
    /// batch's write waits for it. Of a group of pages, only the last page holds it, told
    /// when the group has committed ([`RecordPipeline::submit_page`]).
    landed: Option<tokio::sync::oneshot::Receiver<()>>,
}

/// How a batch in flight is written.
enum Landing {
    /// By a write of its own ([`RecordPipeline::submit`]).
    Write(tokio::task::JoinHandle<Result<()>>),
    /// With its group of pages, in one transaction, which tells each page how it went
    /// ([`RecordPipeline::submit_page`]).
    Group(tokio::sync::oneshot::Receiver<Result<()>>),
}

impl RecordPipeline {
    /// Takes the device's record lock (waiting for other writers) and starts an empty pipeline.
    pub(crate) async fn lock(lock: &Arc<Mutex<()>>, store: &LocalStore) -> Self {
        let guard = Arc::clone(lock).lock_owned().await;
        Self {
            store: store.clone(),
            guard: Arc::new(guard),
            in_flight: std::collections::VecDeque::new(),
            loaded: None,
            group: None,
            prefetched: HashMap::new(),
            read: HashMap::new(),
            counts: Arc::default(),
            failed: false,
            open_group: None,
            page_group: PageGroupLimits::PULL,
        }
    }

    /// Sets when [`RecordPipeline::submit_page`] closes a group (tests use small groups).
    #[cfg(test)]
    pub(crate) fn set_page_group(&mut self, limits: PageGroupLimits) {
        self.page_group = limits;
    }

    /// How the writes of this pipeline stored their records so far: inserted, replaced in
    /// place, or joined with the stored state (counted by [`write_records_in`] for the writes
    /// given their [`BatchVersions`]).
    pub(crate) fn write_counts(&self) -> WriteCountsSnapshot {
        self.counts.snapshot()
    }

    /// For an import: the writes submitted from now on may go through a [`WriteGroup`]
    /// (returned, to be given to each write and committed at the end), and
    /// [`RecordPipeline::load`] reads the records it holds, written but not committed yet.
    pub(crate) fn group_writes(&mut self) -> Arc<WriteGroup> {
        let group = Arc::new(WriteGroup::new(&self.store));
        self.group = Some(Arc::clone(&group));
        group
    }

    /// For an import or a pull: if the store holds no record yet, every record this pipeline
    /// has not loaded before is known to be new, and [`RecordPipeline::load`] and
    /// [`RecordPipeline::load_many`] no longer read the store for it (at 1,000,000 rows each
    /// of those reads missed in a record index larger than the page cache: a read of the file
    /// per row). Whether the store is empty is read once, here.
    pub(crate) fn start_on_empty_store(&mut self) -> Result<()> {
        if self.store.is_empty(TreeName::Records)? {
            self.loaded = Some(IdFilter::new());
        }
        Ok(())
    }

    /// The current state of `id` for the batch being merged into `touched`: from `touched`,
    /// else the batch in flight, else the store, else a new empty record. A record the store
    /// does not hold costs one index lookup (no listing of the stored ids, whose cost would
    /// grow with the store), or none after [`RecordPipeline::start_on_empty_store`].
    pub(crate) fn load<'a>(
        &mut self,
        touched: &'a mut Records,
        id: RecordId,
    ) -> Result<&'a mut RecordState> {
        use std::collections::btree_map::Entry;
        let entry = match touched.entry(id) {
            Entry::Occupied(entry) => return Ok(entry.into_mut()),
            Entry::Vacant(entry) => entry,
        };
        // First: every record in flight or in the write group is in the filter (see
        // `IdFilter`), so a record the filter never held is none of those.
        if let Some(loaded) = &mut self.loaded
            && !loaded.insert(&id)
        {
            return Ok(entry.insert(RecordState::new(id)));
        }
        if let Some((state, written)) = self.in_flight_batch(&id) {
            let read = Read::from_batch(state, written);
            let state = state.clone();
            self.read.insert(id, read);
            return Ok(entry.insert(state));
        }
        if let Some(state) = self.uncommitted(&id)? {
            return Ok(entry.insert(state));
        }
        // After the write group: a state read ahead never stands for one written since (see
        // `prefetch`).
        if let Some(state) = self.prefetched.remove(&id) {
            return Ok(entry.insert(state));
        }
        let sealed = self.store.get_sealed(TreeName::Records, id.as_bytes())?;
        let state = self.open_read(id, sealed)?;
        Ok(entry.insert(state))
    }

    /// The state of `id` stored as `sealed` (a new record if `None`), its version kept for
    /// the batch's write.
    fn open_read(&mut self, id: RecordId, sealed: Option<Vec<u8>>) -> Result<RecordState> {
        let Some(sealed) = sealed else {
            return Ok(RecordState::new(id));
        };
        let plain = self
            .store
            .cipher()
            .open(TreeName::Records, id.as_bytes(), &sealed)?;
        let state = decode_record(&plain)?;
        if let Some(version) = ValueVersion::of(&sealed) {
            self.read.insert(
                id,
                Read {
                    from: ReadFrom::Store(version),
                    live: state.is_live(),
                },
            );
        }
        Ok(state)
    }

    /// Reads ahead, in one read ([`LocalStore::get_many`], in key order), the stored states
    /// of the ids the batch about to be merged will [`RecordPipeline::load`] (those not in
    /// flight), then of the records those are merged with. Loading them then reads nothing
    /// (an import of 100,000 cards that update and link existing records spent a sixth of its
    /// merging in one read per record). What `load` returns is unchanged: states it did not
    /// take are dropped at the next prefetch, and no write lands between the read and the
    /// batch's loads except the batch in flight, which `load` consults first, and the commit
    /// of a [`WriteGroup`]: an id the group holds is not read ahead (the store's state is
    /// older), and `load` takes it from the group or, once the group has committed, from the
    /// store. (The writes of other processes are joined when the batch is written, as always.)
    /// Reads nothing on a store that was empty ([`RecordPipeline::start_on_empty_store`]).
    pub(crate) fn prefetch(&mut self, ids: impl IntoIterator<Item = RecordId>) -> Result<()> {
        self.prefetched.clear();
        if self.loaded.is_some() {
            return Ok(());
        }
        let mut wanted: Vec<RecordId> = ids.into_iter().collect();
        // The members of a merged group are loaded with it (one level: the rest, rarer, are
        // read when loaded).
        for round in 0..2 {
            wanted.retain(|id| {
                !self.prefetched.contains_key(id)
                    && self.in_flight_state(id).is_none()
                    && !self.group.as_ref().is_some_and(|g| g.holds(id))
            });
            wanted.sort_unstable();
            wanted.dedup();
            if wanted.is_empty() {
                break;
            }
            let keys: Vec<&[u8]> = wanted.iter().map(|id| id.as_bytes().as_slice()).collect();
            let values = self.store.get_many(TreeName::Records, &keys)?;
            let mut members = Vec::new();
            for (id, value) in wanted.iter().zip(values) {
                let state = match value {
                    Some(bytes) => decode_record(&bytes)?,
                    None => RecordState::new(*id),
                };
                if round == 0 {
                    members.extend(state.merged_with().iter().copied());
                }
                self.prefetched.insert(*id, state);
            }
            wanted = members;
        }
        Ok(())
    }

    /// [`RecordPipeline::load`] of every id in `ids` not in `touched` yet, the ones neither
    /// in `touched` nor in flight (nor known to be new, see
    /// [`RecordPipeline::start_on_empty_store`]) read from the store in one read
    /// ([`LocalStore::get_many`], in key order); the states are then in `touched`.
    pub(crate) fn load_many(
        &mut self,
        touched: &mut Records,
        ids: impl IntoIterator<Item = RecordId>,
    ) -> Result<()> {
        let mut missing = Vec::new();
        for id in ids {
            if touched.contains_key(&id) {
                continue;
            }
            if let Some(loaded) = &mut self.loaded
                && !loaded.insert(&id)
            {
                // Never loaded nor submitted on a store that was empty: new (as in `load`).
                touched.insert(id, RecordState::new(id));
                continue;
            }
            if let Some((state, written)) = self.in_flight_batch(&id) {
                let read = Read::from_batch(state, written);
                touched.insert(id, state.clone());
                self.read.insert(id, read);
                continue;
            }
            if let Some(state) = self.uncommitted(&id)? {
                touched.insert(id, state);
                continue;
            }
            missing.push(id);
        }
        missing.sort_unstable();
        missing.dedup();
        let keys: Vec<&[u8]> = missing.iter().map(|id| id.as_bytes().as_slice()).collect();
        let values = self.store.get_many_sealed(TreeName::Records, &keys)?;
        for (id, sealed) in missing.iter().zip(values) {
            let state = self.open_read(*id, sealed)?;
            touched.insert(*id, state);
        }
        Ok(())
    }

    /// `id`'s latest state in a batch submitted and not yet written, if one holds it.
    fn in_flight_state(&self, id: &RecordId) -> Option<&RecordState> {
        self.in_flight_batch(id).map(|(state, _)| state)
    }

    /// [`RecordPipeline::in_flight_state`], with the versions the batch holding it writes.
    fn in_flight_batch(&self, id: &RecordId) -> Option<(&RecordState, &Arc<Written>)> {
        self.in_flight
            .iter()
            .rev()
            .find_map(|w| Some((w.records.get(id)?, &w.written)))
    }

    /// `id`'s state as written in the [`WriteGroup`] but not committed yet, if it is there.
    fn uncommitted(&self, id: &RecordId) -> Result<Option<RecordState>> {
        match &self.group {
            Some(group) => group.get(id),
            None => Ok(None),
        }
    }

    /// Waits for the batch in flight, then starts `write(records)` on a blocking thread.
    /// `records` are the states the write stores.
    pub(crate) async fn submit(
        &mut self,
        records: Records,
        write: impl FnOnce(&Records) -> Result<()> + Send + 'static,
    ) -> Result<()> {
        if self.failed {
            return Err(
                LocalStoreError::WriterFailed("an earlier batch was not written".into()).into(),
            );
        }
        // Not used by this write: `read` describes the batch being merged.
        self.read.clear();
        self.note_submitted(&records);
        self.close_group();
        while let Some(previous) = self.finish_oldest().await? {
            // Not on the merging thread (dropping a batch of states was 5 % of an import),
            // nor on the writer's, the busier of the two at 1,000,000 rows (6 % of its time,
            // BENCHMARKS.md).
            drop(tokio::task::spawn_blocking(move || drop(previous)));
        }
        let records = Arc::new(records);
        let batch = Arc::clone(&records);
        let guard = Arc::clone(&self.guard);
        let (landed, landed_rx) = tokio::sync::oneshot::channel();
        let task = tokio::task::spawn_blocking(move || {
            let result = write(&batch);
            if result.is_ok() {
                let _ = landed.send(());
            }
            drop(guard);
            result
        });
        self.in_flight.push_back(InFlight {
            records,
            written: Arc::default(),
            task: Landing::Write(task),
            landed: Some(landed_rx),
        });
        Ok(())
    }

    /// Submits one page of a pull: starts `prepare(records)` at once on a blocking thread,
    /// and adds the page to the open group of pages, all written in one transaction
    /// (`write(tx, records, prepared)` for each page, in order) once the group is full
    /// ([`PageGroupLimits`]) or [`RecordPipeline::wait`] is called. A group commits only once
    /// the write before it has landed, and only if every write before it succeeded; a page
    /// is written when its group commits, and not before: if any page of a group fails, none
    /// of the group is stored.
    ///
    /// Waits only when it closes a group, for the group before to land: one group commits
    /// while the pages of the next are fetched and merged, and the states of at most two
    /// groups stay in memory (readable by [`RecordPipeline::load`] until their group has
    /// landed). A page of a pull changes records all over the record index; with each page
    /// its own transaction, each of those index leaves was written to the WAL once per page
    /// that changed it (BENCHMARKS.md, "B's storage in a 1,000,000-contact pull (issue 18),
    /// twelfth session"). `prepare` is for the work of a page that needs no store and no
    /// order (encoding and sealing its records), kept off the writer's thread. `write` is
    /// given the page's [`BatchVersions`], for [`write_records_in`] (a page reading a record
    /// from an earlier page of its group is written after it, in the same transaction).
    ///
    /// Pages of a group still open when the pipeline is dropped without
    /// [`RecordPipeline::wait`] are never written, as after a crash.
    pub(crate) async fn submit_page<P: Send + 'static>(
        &mut self,
        records: Records,
        prepare: impl FnOnce(&Records) -> Result<P> + Send + 'static,
        write: impl FnOnce(&StoreTxn<'_>, &Records, &BatchVersions, P) -> Result<()> + Send + 'static,
    ) -> Result<()> {
        if self.failed {
            return Err(
                LocalStoreError::WriterFailed("an earlier batch was not written".into()).into(),
            );
        }
        let versions = BatchVersions {
            read: std::mem::take(&mut self.read),
            written: Arc::default(),
            counts: Arc::clone(&self.counts),
        };
        let written = Arc::clone(&versions.written);
        self.note_submitted(&records);
        let changed = records.len();
        let records = Arc::new(records);
        let batch = Arc::clone(&records);
        let (ready, ready_rx) = tokio::sync::oneshot::channel();
        drop(tokio::task::spawn_blocking(move || {
            let page = prepare(&batch).map(|prepared| -> PageWrite {
                Box::new(move |tx: &StoreTxn<'_>| write(tx, &batch, &versions, prepared))
            });
            // The group no longer waits for it if the pipeline was dropped.
            let _ = ready.send(page);
        }));
        let (told, told_rx) = tokio::sync::oneshot::channel();
        if self.open_group.is_none() {
            let before = self.in_flight.back_mut().and_then(|w| w.landed.take());
            self.open_group = Some(OpenGroup {
                before,
                pages: Vec::new(),
                records: 0,
            });
        }
        let group = self.open_group.as_mut().expect("opened above");
        group.pages.push(GroupPage {
            prepared: ready_rx,
            told,
        });
        group.records += changed;
        let (pages, full) = (
            group.pages.len(),
            group.records >= self.page_group.records || group.pages.len() >= self.page_group.pages,
        );
        self.in_flight.push_back(InFlight {
            records,
            written,
            task: Landing::Group(told_rx),
            landed: None,
        });
        if full {
            self.close_group();
            // The group before lands while this one commits. Its states are freed here, on
            // the thread that merged (allocated) them: the allocator (mimalloc) hands a page
            // whose blocks another thread freed back to its arena once it empties, and the
            // arena returns such memory to the system after a second; the merging thread's
            // next pages then came from fresh memory, zeroed by the kernel at its first touch
            // (BENCHMARKS.md, "B's pull (issue 18), tenth session").
            while self.in_flight.len() > pages {
                drop(self.finish_oldest().await?);
            }
        }
        Ok(())
    }

    /// Adds the ids of a batch submitted to the filter of loaded ids, if there is one: a batch
    /// may hold records not loaded through the pipeline, and `load` consults the filter before
    /// the batches in flight.
    fn note_submitted(&mut self, records: &Records) {
        if let Some(loaded) = &mut self.loaded {
            for id in records.keys() {
                loaded.insert(id);
            }
        }
    }

    /// Starts the commit of the open group of pages, if any, on a blocking thread.
    fn close_group(&mut self) {
        let Some(OpenGroup { before, pages, .. }) = self.open_group.take() else {
            return;
        };
        let (landed, landed_rx) = tokio::sync::oneshot::channel();
        let store = self.store.clone();
        let guard = Arc::clone(&self.guard);
        let counts = Arc::clone(&self.counts);
        let (prepared, told): (Vec<_>, Vec<_>) =
            pages.into_iter().map(|p| (p.prepared, p.told)).unzip();
        drop(tokio::task::spawn_blocking(move || {
            let result = (|| {
                if let Some(before) = before {
                    // Dropped unsent: the write before failed (its error is the one the
                    // pipeline reports), and nothing after it may land.
                    before.blocking_recv().map_err(|_| {
                        LocalStoreError::WriterFailed("an earlier batch was not written".into())
                    })?;
                }
                let mut writes = Vec::with_capacity(prepared.len());
                for page in prepared {
                    writes.push(page.blocking_recv().map_err(|_| {
                        LocalStoreError::WriterFailed("a page was not prepared".into())
                    })??);
                }
                store.transaction(|tx| writes.into_iter().try_for_each(|write| write(tx)))?;
                counts.transactions.fetch_add(1, Ordering::Relaxed);
                Ok(())
            })();
            let mut told = told.into_iter();
            match result {
                Ok(()) => {
                    let _ = landed.send(());
                    for page in told {
                        let _ = page.send(Ok(()));
                    }
                }
                Err(error) => {
                    // The first page reports the error; the pipeline then stops.
                    if let Some(first) = told.next() {
                        let _ = first.send(Err(error));
                    }
                    for page in told {
                        let _ = page.send(Err(LocalStoreError::WriterFailed(
                            "a page of its group was not written".into(),
                        )
                        .into()));
                    }
                }
            }
            drop(guard);
        }));
        if let Some(last) = self.in_flight.back_mut() {
            last.landed = Some(landed_rx);
        }
    }

    /// Forgets the pages of the open group, as a crash would, once the groups before it have
    /// landed (the pages forgotten are pulled again by the next pull).
    #[cfg(test)]
    pub(crate) async fn abandon_open_group(&mut self) -> Result<()> {
        if let Some(group) = self.open_group.take() {
            let kept = self.in_flight.len() - group.pages.len();
            self.in_flight.truncate(kept);
        }
        self.wait().await
    }

    /// Waits until every batch in flight has been written.
    pub(crate) async fn wait(&mut self) -> Result<()> {
        self.close_group();
        while let Some(records) = self.finish_oldest().await? {
            // The last batches' states are freed on a blocking thread: a page of a pull is
            // thousands of records, and freeing them here kept the caller waiting. (Earlier
            // batches are freed when the next is submitted.)
            if Arc::strong_count(&records) == 1 {
                drop(tokio::task::spawn_blocking(move || drop(records)));
            }
        }
        Ok(())
    }

    /// Waits until the oldest batch in flight, if any, has been written; returns its states.
    async fn finish_oldest(&mut self) -> Result<Option<Arc<Records>>> {
        let Some(in_flight) = self.in_flight.pop_front() else {
            return Ok(None);
        };
        let landed = match in_flight.task {
            Landing::Write(task) => task
                .await
                .map_err(|e| LocalStoreError::WriterFailed(e.to_string()).into())
                .and_then(|written| written),
            Landing::Group(told) => told.await.unwrap_or_else(|_| {
                Err(LocalStoreError::WriterFailed("a page's group was not committed".into()).into())
            }),
        };
        if landed.is_err() {
            self.failed = true;
        }
        landed?;
        Ok(Some(in_flight.records))
    }
}

/// The versions a batch's write stores its records at, by id: read by the batches loaded
/// from it while it was in flight.
type Written = std::sync::Mutex<HashMap<RecordId, ValueVersion>>;

/// Where a record's state in a batch was read from.
#[derive(Clone)]
struct Read {
    from: ReadFrom,
    /// Whether that state was live (the stored one, if the store still holds it).
    live: bool,
}

#[derive(Clone)]
enum ReadFrom {
    /// The store, which held the state at this version.
    Store(ValueVersion),
    /// A batch in flight (written before this batch is): the store holds its state once it
    /// has landed, at the version its write recorded, if the write stored the state as it
    /// was (not joined with another process's write).
    Batch(Arc<Written>),
}

impl Read {
    fn from_batch(state: &RecordState, written: &Arc<Written>) -> Self {
        Self {
            from: ReadFrom::Batch(Arc::clone(written)),
            live: state.is_live(),
        }
    }
}

/// What [`write_records_in`] needs to write a batch's records without reading them back:
/// for each record the pipeline read from the store or from an earlier batch, the version of
/// the stored value its state was built on ([`RecordPipeline::submit_page`] gives it to
/// the batch's write). A state loaded at version `v` and changed since only by joins
/// (merging operations and states never loses anything) includes everything the value at `v`
/// holds, so while the store still holds that value the join would write the state as it is:
/// the write replaces the value instead, if it is still at `v`, in one statement.
pub(crate) struct BatchVersions {
    read: HashMap<RecordId, Read>,
    /// Filled by this batch's write: the versions of the values it stored as they were.
    written: Arc<Written>,
    counts: Arc<WriteCounts>,
}

impl BatchVersions {
    /// The version `id`'s state was read at and whether that state was live, if it was read
    /// from a stored value this process knows the version of.
    fn read_at(&self, id: &RecordId) -> Option<(ValueVersion, bool)> {
        let read = self.read.get(id)?;
        let version = match &read.from {
            ReadFrom::Store(version) => *version,
            ReadFrom::Batch(written) => *lock_written(written).get(id)?,
        };
        Some((version, read.live))
    }
}

fn lock_written(written: &Written) -> std::sync::MutexGuard<'_, HashMap<RecordId, ValueVersion>> {
    // Nothing panics while holding it; if something did, the map is still consistent.
    written
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How [`write_records_in`] stored the records of a pipeline's batches.
#[derive(Default)]
pub(crate) struct WriteCounts {
    inserted: AtomicU64,
    in_place: AtomicU64,
    joined: AtomicU64,
    transactions: AtomicU64,
}

/// [`WriteCounts`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct WriteCountsSnapshot {
    /// New records, inserted without a read.
    pub(crate) inserted: u64,
    /// Records replaced in place: the store still held the value their state was read from.
    pub(crate) in_place: u64,
    /// Records read back and joined with the stored state (stored records whose version was
    /// not known, or had changed).
    pub(crate) joined: u64,
    /// Groups of pages committed ([`RecordPipeline::submit_page`]), one transaction each.
    pub(crate) transactions: u64,
}

impl WriteCounts {
    fn snapshot(&self) -> WriteCountsSnapshot {
        WriteCountsSnapshot {
            inserted: self.inserted.load(Ordering::Relaxed),
            in_place: self.in_place.load(Ordering::Relaxed),
            joined: self.joined.load(Ordering::Relaxed),
            transactions: self.transactions.load(Ordering::Relaxed),
        }
    }
}

/// Reads one record's merged state from the store.
pub(crate) fn read_record(store: &LocalStore, id: &RecordId) -> Result<Option<RecordState>> {
    store
        .get(TreeName::Records, id.as_bytes())?
        .map(|bytes| decode_record(&bytes))
        .transpose()
}

/// Decodes a stored record state ([`RecordState::decode`]: the encoding this crate writes is
/// read in place, without prost messages).
pub(crate) fn decode_record(bytes: &[u8]) -> Result<RecordState> {
    RecordState::decode(bytes).map_err(|e| match e {
        MergeError::Decode(_) => LocalStoreError::Corrupt {
            tree: "records",
            reason: "undecodable record".into(),
        }
        .into(),
        e => e.into(),
    })
}

/// Meta key of the number of live contacts (u64be), kept by [`write_records_in`].
const LIVE_COUNT: &[u8] = b"records/live-count";

/// The number of live contacts, as kept in the store. Counted once by a scan if the store
/// has no count yet (a store migrated from the previous release), then maintained.
pub(crate) fn live_count(store: &LocalStore) -> Result<u64> {
    if let Some(count) = store.get(TreeName::Meta, LIVE_COUNT)? {
        return decode_count(&count);
    }
    store.transaction(live_count_in)
}

fn live_count_in(tx: &StoreTxn<'_>) -> Result<u64> {
    if let Some(count) = tx.get(TreeName::Meta, LIVE_COUNT)? {
        return decode_count(&count);
    }
    let mut count = 0u64;
    let mut linked = Vec::new();
    let mut failed = None;
    tx.for_each(TreeName::Records, |_, bytes| {
        match decode_record(&bytes) {
            Ok(state) => {
                count += u64::from(state.is_live());
                if holds_merge_links(&state) {
                    linked.push(state.id());
                }
            }
            Err(e) => failed = Some(e),
        }
        Ok(())
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    tx.put(TreeName::Meta, LIVE_COUNT, &count.to_be_bytes())?;
    // The walk that counts a new store (or one that lost its count) indexes it too.
    if tx.get(TreeName::Meta, LINKED_INDEXED)?.is_none() {
        for id in &linked {
            index_linked(tx, id)?;
        }
        tx.put(TreeName::Meta, LINKED_INDEXED, &[1])?;
    }
    Ok(count)
}

/// Meta key prefix of the linked-record index: `records/linked/<record id>` for every record
/// whose state holds a `merged/…` field, visible or not (§8.4). Written with every record
/// written (a field, once in a state, stays in it), so that counting contacts, which a merge
/// makes fewer than records, reads only these records.
const LINKED_PREFIX: &[u8] = b"records/linked/";
/// Meta key set once the linked-record index covers every record; a store from before the
/// index has none and is indexed by one walk of its records.
const LINKED_INDEXED: &[u8] = b"records/linked-indexed";

/// Whether `state` holds a `merged/…` field, visible or not.
fn holds_merge_links(state: &RecordState) -> bool {
    state
        .fields()
        .keys()
        .any(|key| key.kind() == FieldKind::Merged)
}

fn index_linked(tx: &StoreTxn<'_>, id: &RecordId) -> Result<()> {
    let mut key = Vec::with_capacity(LINKED_PREFIX.len() + 16);
    key.extend_from_slice(LINKED_PREFIX);
    key.extend_from_slice(id.as_bytes());
    tx.put(TreeName::Meta, &key, &[])?;
    Ok(())
}

/// Every record state that holds a `merged/…` field: the only records a merge can join into a
/// contact with another. Indexes the store first if it predates the index.
pub(crate) fn linked_records(store: &LocalStore) -> Result<Vec<RecordState>> {
    if store.get(TreeName::Meta, LINKED_INDEXED)?.is_none() {
        // The walk that counts a store without its count also indexes it.
        store.transaction(|tx| {
            tx.remove(TreeName::Meta, LIVE_COUNT)?;
            live_count_in(tx)
        })?;
    }
    let mut ids = Vec::new();
    for item in store.scan_prefix(TreeName::Meta, LINKED_PREFIX) {
        let (key, _) = item?;
        ids.push(key[LINKED_PREFIX.len()..].to_vec());
    }
    let keys: Vec<&[u8]> = ids.iter().map(Vec::as_slice).collect();
    let mut states = Vec::with_capacity(keys.len());
    for bytes in store
        .get_many(TreeName::Records, &keys)?
        .into_iter()
        .flatten()
    {
        states.push(decode_record(&bytes)?);
    }
    Ok(states)
}

fn decode_count(bytes: &[u8]) -> Result<u64> {
    Ok(u64::from_be_bytes(bytes.try_into().map_err(|_| {
        LocalStoreError::Corrupt {
            tree: "meta",
            reason: "the live contact count is not 8 bytes".into(),
        }
    })?))
}

/// Writes merged record states in `tx`, each joined with the state stored at commit time (a
/// change another process committed since this one read the record is kept: the merge is a
/// join, so the result holds both), and keeps the live contact count. `sealed` is the state's
/// value already sealed for the store, used when the join changes nothing.
///
/// With `versions` (a pipeline's batch, [`BatchVersions`]), a sealed state read from a stored
/// value that the store still holds replaces it without being joined (the join would change
/// nothing); the versions of the values written as they are, and how each record was
/// written, are recorded there.
pub(crate) fn write_records_in<'a>(
    tx: &StoreTxn<'_>,
    records: impl Iterator<Item = (&'a RecordId, &'a RecordState, Option<&'a [u8]>)>,
    versions: Option<&BatchVersions>,
) -> Result<()> {
    let mut count = live_count_in(tx)?;
    let mut written = versions.map(|v| lock_written(&v.written));
    let (mut inserted, mut in_place, mut joined) = (0, 0, 0);
    for (id, state, sealed) in records {
        if holds_merge_links(state) {
            index_linked(tx, id)?;
        }
        let read_at = versions.and_then(|v| v.read_at(id));
        if let Some(sealed) = sealed {
            let stored_as_is = match read_at {
                // Read from the store: replaced if nothing wrote it since (one lookup of the
                // record index, nothing opened), the count following the stored state's
                // liveness as read.
                Some((version, was_live)) => {
                    let replaced =
                        tx.replace_sealed_at(TreeName::Records, id.as_bytes(), &version, sealed)?;
                    if replaced {
                        in_place += 1;
                        count =
                            count.saturating_sub(u64::from(was_live)) + u64::from(state.is_live());
                    }
                    replaced
                }
                // Most records an import or a first sync writes are new: inserting first finds
                // that in one lookup of the record index (reading, then writing, took two).
                None => {
                    let new =
                        tx.insert_sealed_if_absent(TreeName::Records, id.as_bytes(), sealed)?;
                    if new {
                        inserted += 1;
                        count += u64::from(state.is_live());
                    }
                    new
                }
            };
            if stored_as_is {
                if let (Some(written), Some(version)) = (&mut written, ValueVersion::of(sealed)) {
                    written.insert(*id, version);
                }
                continue;
            }
        }
        joined += 1;
        if join_stored_in(tx, &mut count, id, state, sealed)?
            && let (Some(written), Some(version)) =
                (&mut written, sealed.and_then(ValueVersion::of))
        {
            written.insert(*id, version);
        }
    }
    tx.put(TreeName::Meta, LIVE_COUNT, &count.to_be_bytes())?;
    if let Some(versions) = versions {
        let counts = &versions.counts;
        counts.inserted.fetch_add(inserted, Ordering::Relaxed);
        counts.in_place.fetch_add(in_place, Ordering::Relaxed);
        counts.joined.fetch_add(joined, Ordering::Relaxed);
    }
    Ok(())
}

/// Writes `state` joined with the state stored under `id` (if any) and keeps `count`, the
/// live contact count, in step; `sealed` is `state` sealed, written as is when the join
/// changes nothing. Whether it was (the store then holds `state` as it is).
fn join_stored_in(
    tx: &StoreTxn<'_>,
    count: &mut u64,
    id: &RecordId,
    state: &RecordState,
    sealed: Option<&[u8]>,
) -> Result<bool> {
    let stored = tx
        .get(TreeName::Records, id.as_bytes())?
        .map(|bytes| decode_record(&bytes))
        .transpose()?;
    let mut joined = None;
    if let Some(stored) = &stored {
        let mut both = state.clone();
        if both.merge(stored) {
            joined = Some(both);
        }
    }
    let was_live = stored.as_ref().is_some_and(RecordState::is_live);
    let written = joined.as_ref().unwrap_or(state);
    if holds_merge_links(written) {
        index_linked(tx, id)?;
    }
    let as_is = match (sealed, &joined) {
        (Some(sealed), None) => {
            tx.put_sealed(TreeName::Records, id.as_bytes(), sealed)?;
            true
        }
        _ => {
            tx.put(TreeName::Records, id.as_bytes(), &written.encode_to_vec())?;
            false
        }
    };
    match (was_live, written.is_live()) {
        (false, true) => *count += 1,
        (true, false) => *count = count.saturating_sub(1),
        _ => {}
    }
    Ok(as_is)
}

/// Records (sealed) and pending operations (encoded batches) of several batches of an import,
/// committed together in one transaction once they reach [`WriteGroup::RECORDS`] records or
/// [`WriteGroup::BYTES`] bytes, and at the end of the import ([`WriteGroup::commit`]).
///
/// Record ids are uniformly random, so each transaction inserts its records into as many
/// different leaf pages of the store's record index, each written whole to the WAL at the
/// commit and again at the next checkpoint: at 1,000,000 records a transaction of 2,000
/// records dirtied about 1,800 of the index's 8,000 leaves, one page per record. A transaction
/// of 16,000 records dirties most leaves once, about a third of a page per record
/// (BENCHMARKS.md, "1,000,000-row import (issue 20), seventh session").
///
/// The merging thread must still read a record written in a batch not committed yet: the
/// group keeps each record in its smallest form, sealed as it will be stored (about a fifth
/// of its merged state in memory), and [`RecordPipeline::load`] opens it from there. Each
/// commit is a durable transaction, as each batch's was: an interrupted import keeps the
/// groups committed before, and running it again adds the rest.
pub(crate) struct WriteGroup {
    store: LocalStore,
    held: std::sync::Mutex<Held>,
}

#[derive(Default)]
struct Held {
    /// Added since the last commit started.
    open: Group,
    /// Being committed: still read from here until the commit has landed.
    committing: Option<Arc<Group>>,
}

#[derive(Default)]
struct Group {
    /// Each record's sealed value, whether it is live and whether it holds `merged/…` fields,
    /// by id.
    records: BTreeMap<RecordId, (Vec<u8>, bool, bool)>,
    /// Encoded batches of pending operations, in the order they were added.
    batches: Vec<Vec<u8>>,
    bytes: usize,
}

impl WriteGroup {
    /// Records after which a group is committed.
    pub(crate) const RECORDS: usize = 16_000;
    /// Bytes (sealed records and encoded batches) after which a group is committed.
    pub(crate) const BYTES: usize = 16 * 1024 * 1024;

    fn new(store: &LocalStore) -> Self {
        Self {
            store: store.clone(),
            held: std::sync::Mutex::new(Held::default()),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        // Nothing panics while holding it; if something did, the group is still consistent.
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The state of `id` if the group holds it (added, not committed yet).
    fn get(&self, id: &RecordId) -> Result<Option<RecordState>> {
        let sealed = {
            let held = self.held();
            held.open
                .records
                .get(id)
                .or_else(|| held.committing.as_ref()?.records.get(id))
                .map(|(sealed, _, _)| sealed.clone())
        };
        sealed.map(|sealed| self.open(id, &sealed)).transpose()
    }

    /// Whether the group holds `id` (added, not committed yet).
    fn holds(&self, id: &RecordId) -> bool {
        let held = self.held();
        held.open.records.contains_key(id)
            || held
                .committing
                .as_ref()
                .is_some_and(|group| group.records.contains_key(id))
    }

    fn open(&self, id: &RecordId, sealed: &[u8]) -> Result<RecordState> {
        let plain = self
            .store
            .cipher()
            .open(TreeName::Records, id.as_bytes(), sealed)?;
        decode_record(&plain)
    }

    /// Adds one batch: `records` (`sealed` holds each of them sealed, in id order) and the
    /// encoded batches of its operations; commits the group if it is full.
    pub(crate) fn add(
        &self,
        records: &Records,
        sealed: Vec<([u8; 16], Vec<u8>)>,
        batches: Vec<Vec<u8>>,
    ) -> Result<()> {
        let full = {
            let mut held = self.held();
            let group = &mut held.open;
            for ((id, state), (_, sealed)) in records.iter().zip(sealed) {
                group.bytes += sealed.len();
                // A record seen again in a later batch replaces its earlier state, which the
                // later one was merged from.
                let entry = (sealed, state.is_live(), holds_merge_links(state));
                if let Some((previous, _, _)) = group.records.insert(*id, entry) {
                    group.bytes -= previous.len();
                }
            }
            group.bytes += batches.iter().map(Vec::len).sum::<usize>();
            group.batches.extend(batches);
            group.records.len() >= Self::RECORDS || group.bytes >= Self::BYTES
        };
        if full { self.commit() } else { Ok(()) }
    }

    /// Writes what the group holds in one transaction (each record joined with the state
    /// stored at commit time, as [`write_records_in`] does), then forgets it.
    pub(crate) fn commit(&self) -> Result<()> {
        let group = {
            let mut held = self.held();
            if held.open.records.is_empty() && held.open.batches.is_empty() {
                return Ok(());
            }
            let group = Arc::new(std::mem::take(&mut held.open));
            held.committing = Some(Arc::clone(&group));
            group
        };
        let result = self.store.transaction(|tx| {
            let mut count = live_count_in(tx)?;
            for (id, (sealed, live, linked)) in &group.records {
                if *linked {
                    index_linked(tx, id)?;
                }
                if tx.insert_sealed_if_absent(TreeName::Records, id.as_bytes(), sealed)? {
                    count += u64::from(*live);
                    continue;
                }
                let state = self.open(id, sealed)?;
                join_stored_in(tx, &mut count, id, &state, Some(sealed))?;
            }
            tx.put(TreeName::Meta, LIVE_COUNT, &count.to_be_bytes())?;
            for batch in &group.batches {
                // Monotonic across restarts and processes, so pending keys sort in creation
                // order.
                let key = tx.next_id()?.to_be_bytes();
                tx.put(TreeName::Pending, &key, batch)?;
            }
            Ok(())
        });
        // Read from the store from now on (or, if the commit failed, nowhere: the import
        // stops with its error).
        self.held().committing = None;
        result
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::mpsc;
    use std::time::Duration;

    use kith_protocol::hlc::Hlc;
    use kith_protocol::record::{self, FieldKey, FieldWrite, Operation};
    use kith_protocol::{DeviceId, RecordId};

    use super::*;
    use crate::store::tests::store;

    fn named(id: RecordId, name: &str, wall_ms: u64) -> RecordState {
        let mut state = RecordState::new(id);
        let clock = Hlc::new(wall_ms, 0, DeviceId::from_bytes([1; 16]));
        let write = FieldWrite::set(FieldKey::name(), record::value::text(name), []).unwrap();
        state.apply(&Operation::upsert(id, clock, [write]).unwrap());
        state
    }

    fn store_record(store: &LocalStore, state: &RecordState) {
        store
            .transaction(|tx| {
                write_records_in(tx, std::iter::once((&state.id(), state, None)), None)
            })
            .unwrap();
    }

    /// A write that stores `records` once `release` receives.
    fn held_write(
        store: &LocalStore,
    ) -> (
        mpsc::Sender<()>,
        impl FnOnce(&Records) -> Result<()> + Send + 'static,
    ) {
        let (release, wait) = mpsc::channel::<()>();
        let store = store.clone();
        let write = move |records: &Records| {
            wait.recv().ok();
            for state in records.values() {
                store_record(&store, state);
            }
            Ok(())
        };
        (release, write)
    }

    fn id(n: u32) -> RecordId {
        let mut bytes = [0u8; 16];
        bytes[..4].copy_from_slice(&n.to_be_bytes());
        RecordId::from_bytes(bytes)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_record_in_flight_is_read_from_memory_not_from_the_store() {
        let (_dir, store) = store();
        let lock = Arc::new(Mutex::new(()));
        store_record(&store, &named(id(1), "stale", 1));
        let mut pipeline = RecordPipeline::lock(&lock, &store).await;
        let (release, write) = held_write(&store);
        let fresh = named(id(1), "fresh", 2);
        pipeline
            .submit(Records::from([(id(1), fresh.clone())]), write)
            .await
            .unwrap();
        let mut touched = Records::new();
        assert_eq!(*pipeline.load(&mut touched, id(1)).unwrap(), fresh);
        release.send(()).unwrap();
        pipeline.wait().await.unwrap();
        assert_eq!(read_record(&store, &id(1)).unwrap(), Some(fresh));
    }

    /// A state read ahead is what `load` returns only for the batch it was read for: one
    /// read ahead but not loaded, then written by that batch's successor, is read again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn prefetched_states_serve_one_batch_and_never_hide_a_later_write() {
        let (_dir, store) = store();
        let lock = Arc::new(Mutex::new(()));
        store_record(&store, &named(id(1), "stale", 1));
        store_record(&store, &named(id(2), "two", 1));
        let mut pipeline = RecordPipeline::lock(&lock, &store).await;
        pipeline.start_on_empty_store().unwrap();
        assert!(pipeline.loaded.is_none(), "the store holds records");
        // Batch 1 reads ahead records 1, 2 and 3 (3 is not stored), loads 2 and 3.
        pipeline.prefetch([id(1), id(2), id(3)]).unwrap();
        assert_eq!(pipeline.prefetched.len(), 3);
        let mut touched = Records::new();
        assert_eq!(
            *pipeline.load(&mut touched, id(2)).unwrap(),
            named(id(2), "two", 1)
        );
        assert!(
            pipeline
                .load(&mut touched, id(3))
                .unwrap()
                .fields()
                .is_empty()
        );
        pipeline
            .submit(touched, sealed_write(&store))
            .await
            .unwrap();
        // Batch 2 writes record 1 (read from the store, not from batch 1's read-ahead).
        pipeline.prefetch([]).unwrap();
        assert!(
            pipeline.prefetched.is_empty(),
            "batch 1's states are dropped"
        );
        store_record(&store, &named(id(1), "fresh", 2));
        let mut touched = Records::new();
        assert_eq!(
            *pipeline.load(&mut touched, id(1)).unwrap(),
            named(id(1), "fresh", 2)
        );
        // A record in flight is read from memory even when read ahead.
        let (release, write) = held_write(&store);
        let newer = named(id(2), "newer", 3);
        pipeline
            .submit(Records::from([(id(2), newer.clone())]), write)
            .await
            .unwrap();
        pipeline.prefetch([id(2)]).unwrap();
        assert!(pipeline.prefetched.is_empty(), "in flight: not read ahead");
        let mut touched = Records::new();
        assert_eq!(*pipeline.load(&mut touched, id(2)).unwrap(), newer);
        release.send(()).unwrap();
        pipeline.wait().await.unwrap();
    }

    /// A record written in an import's write group is not read ahead from the store (which
    /// holds an older state), and once the group has committed it is read from the store:
    /// a read-ahead taken before the commit never stands for the committed state.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_record_in_the_write_group_is_never_read_ahead_from_the_store() {
        let (_dir, store) = store();
        let lock = Arc::new(Mutex::new(()));
        store_record(&store, &named(id(1), "stored", 1));
        let mut pipeline = RecordPipeline::lock(&lock, &store).await;
        pipeline.start_on_empty_store().unwrap();
        let group = pipeline.group_writes();
        // Batch 1 writes record 1 into the group (not committed: the store keeps "stored").
        let mut touched = Records::new();
        *pipeline.load(&mut touched, id(1)).unwrap() = named(id(1), "grouped", 2);
        pipeline
            .submit(touched, grouped_write(&store, &group, b"one"))
            .await
            .unwrap();
        // Batch 2 (record 2) is in flight; batch 3 reads record 1 ahead.
        pipeline
            .submit(
                Records::from([(id(2), named(id(2), "two", 2))]),
                grouped_write(&store, &group, b"two"),
            )
            .await
            .unwrap();
        pipeline.prefetch([id(1)]).unwrap();
        assert!(
            !pipeline.prefetched.contains_key(&id(1)),
            "held by the write group: not read ahead"
        );
        // The group commits before batch 3 loads record 1.
        pipeline.wait().await.unwrap();
        group.commit().unwrap();
        let mut touched = Records::new();
        assert_eq!(
            *pipeline.load(&mut touched, id(1)).unwrap(),
            named(id(1), "grouped", 2)
        );
    }

    /// The members of a merged record are read ahead with it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_members_of_a_merged_record_are_read_ahead_with_it() {
        let (_dir, store) = store();
        let lock = Arc::new(Mutex::new(()));
        let mut merged = named(id(1), "Ada", 1);
        let clock = Hlc::new(2, 0, DeviceId::from_bytes([1; 16]));
        let link = FieldWrite::set(FieldKey::merged(&id(2)), record::value::tag(), []);
        merged.apply(&Operation::upsert(id(1), clock, [link.unwrap()]).unwrap());
        assert!(merged.merged_with().contains(&id(2)));
        store_record(&store, &merged);
        store_record(&store, &named(id(2), "Ada L.", 1));
        let mut pipeline = RecordPipeline::lock(&lock, &store).await;
        pipeline.prefetch([id(1)]).unwrap();
        let mut ids: Vec<RecordId> = pipeline.prefetched.keys().copied().collect();
        ids.sort();
        assert_eq!(ids, [id(1), id(2)]);
        let mut touched = Records::new();
        assert_eq!(*pipeline.load(&mut touched, id(1)).unwrap(), merged);
        assert_eq!(
            *pipeline.load(&mut touched, id(2)).unwrap(),
            named(id(2), "Ada L.", 1)
        );
    }

    /// Another process (a second handle on the same directory) commits a change to a record
    /// between this one's read and write: the write keeps both, and the live count follows.
    #[test]
    fn a_write_keeps_what_another_process_committed_since_the_read() {
        let (dir, store) = store();
        let other = LocalStore::open(
            dir.path(),
            &kith_protocol::keys::SymmetricKey::from_slice(&[7; 32]).unwrap(),
        )
        .unwrap();
        store_record(&store, &named(id(1), "Ada", 1));
        assert_eq!(live_count(&store).unwrap(), 1);
        // This process reads the record and renames it...
        let mut ours = read_record(&store, &id(1)).unwrap().unwrap();
        let clock = Hlc::new(5, 0, DeviceId::from_bytes([1; 16]));
        let write = FieldWrite::set(
            FieldKey::name(),
            record::value::text("Ada Lovelace"),
            ours.replaces(&FieldKey::name()),
        )
        .unwrap();
        ours.apply(&Operation::upsert(id(1), clock, [write]).unwrap());
        // ...while the other adds a company and a new record.
        let mut theirs = read_record(&other, &id(1)).unwrap().unwrap();
        let clock = Hlc::new(6, 0, DeviceId::from_bytes([2; 16]));
        let write =
            FieldWrite::set(FieldKey::company(), record::value::text("Engines"), []).unwrap();
        theirs.apply(&Operation::upsert(id(1), clock, [write]).unwrap());
        store_record(&other, &theirs);
        store_record(&other, &named(id(2), "Grace", 2));
        store_record(&store, &ours);

        let stored = read_record(&store, &id(1)).unwrap().unwrap();
        let name = record::value::text("Ada Lovelace");
        let company = record::value::text("Engines");
        assert_eq!(stored.value(&FieldKey::name()), Some(&name));
        assert_eq!(stored.value(&FieldKey::company()), Some(&company));
        assert_eq!(live_count(&store).unwrap(), 2);
        assert_eq!(live_count(&other).unwrap(), 2);
    }

    /// Each record sealed for the store, in id order.
    fn seal_all(store: &LocalStore, records: &Records) -> Vec<Vec<u8>> {
        records
            .iter()
            .map(|(id, state)| store.cipher().seal_record(id, state))
            .collect()
    }

    /// Writes `records`, sealed in `sealed` ([`seal_all`]), in one transaction (as a pull's
    /// page, with `versions`).
    fn write_sealed(
        store: &LocalStore,
        records: &Records,
        sealed: &[Vec<u8>],
        versions: Option<&BatchVersions>,
    ) -> Result<()> {
        store.transaction(|tx| write_sealed_in(tx, records, sealed, versions))
    }

    /// [`write_sealed`] in `tx`.
    fn write_sealed_in(
        tx: &StoreTxn<'_>,
        records: &Records,
        sealed: &[Vec<u8>],
        versions: Option<&BatchVersions>,
    ) -> Result<()> {
        write_records_in(
            tx,
            records
                .iter()
                .zip(sealed)
                .map(|((id, state), sealed)| (id, state, Some(sealed.as_slice()))),
            versions,
        )
    }

    /// A write of merged states, as an import's: sealed, with the live count kept.
    fn sealed_write(store: &LocalStore) -> impl FnOnce(&Records) -> Result<()> + Send + 'static {
        let store = store.clone();
        move |records: &Records| write_sealed(&store, records, &seal_all(&store, records), None)
    }

    /// On a store that was empty when the import began, a record the pipeline already wrote
    /// is read back (not taken for new) once its batch is no longer in flight, and one it
    /// never loaded is new without a read.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_an_empty_store_records_written_earlier_are_still_read_back() {
        let (_dir, store) = store();
        let lock = Arc::new(Mutex::new(()));
        let mut pipeline = RecordPipeline::lock(&lock, &store).await;
        pipeline.start_on_empty_store().unwrap();
        assert!(pipeline.loaded.is_some());
        for round in 0..3u32 {
            let mut touched = Records::new();
            for n in 0..500 {
                let id = id(round * 1_000 + n);
                assert!(pipeline.load(&mut touched, id).unwrap().fields().is_empty());
                *pipeline.load(&mut touched, id).unwrap() = named(id, "first", 1);
            }
            pipeline
                .submit(touched, sealed_write(&store))
                .await
                .unwrap();
        }
        pipeline.wait().await.unwrap();
        // Batches 0 and 1 have landed and are no longer in flight: only the store has them.
        let mut touched = Records::new();
        for n in [0, 499, 1_000, 1_499, 2_000] {
            let state = pipeline.load(&mut touched, id(n)).unwrap();
            assert_eq!(*state, named(id(n), "first", 1), "record {n}");
        }
        assert_eq!(live_count(&store).unwrap(), 1_500);
    }

    /// On a store that was empty, a record submitted without having been loaded (a new
    /// record the caller made) is still read from the page in flight that holds it, and from
    /// the store once written: the filter of loaded ids, consulted first, holds it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_an_empty_store_a_record_submitted_unloaded_is_read_from_flight() {
        let (_dir, store) = store();
        let lock = Arc::new(Mutex::new(()));
        let mut pipeline = RecordPipeline::lock(&lock, &store).await;
        pipeline.start_on_empty_store().unwrap();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (release, prepare, write) = prepared_write(&store, 0, Duration::ZERO, &order);
        let made = named(id(9), "made", 1);
        pipeline
            .submit_page(Records::from([(id(9), made.clone())]), prepare, write)
            .await
            .unwrap();
        let mut touched = Records::new();
        assert_eq!(*pipeline.load(&mut touched, id(9)).unwrap(), made);
        let mut many = Records::new();
        pipeline.load_many(&mut many, [id(9)]).unwrap();
        assert_eq!(many[&id(9)], made);
        release.send(()).unwrap();
        pipeline.wait().await.unwrap();
        let mut touched = Records::new();
        assert_eq!(*pipeline.load(&mut touched, id(9)).unwrap(), made);
    }

    /// A write through a [`WriteGroup`], as an import's: sealed, committed with the group.
    fn grouped_write(
        store: &LocalStore,
        group: &Arc<WriteGroup>,
        batch: &'static [u8],
    ) -> impl FnOnce(&Records) -> Result<()> + Send + 'static {
        let (store, group) = (store.clone(), Arc::clone(group));
        move |records: &Records| {
            let sealed = records
                .iter()
                .map(|(id, state)| (*id.as_bytes(), store.cipher().seal_record(id, state)))
                .collect();
            group.add(records, sealed, vec![batch.to_vec()])
        }
    }

    /// Records written through the group but not committed are read back from it (the store
    /// does not have them yet, and the id filter knows them), at every stage: added, being
    /// committed, committed. A record seen again in a later batch keeps its latest state.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_written_in_a_group_not_committed_yet_are_read_back_from_it() {
        let (_dir, store) = store();
        let lock = Arc::new(Mutex::new(()));
        let mut pipeline = RecordPipeline::lock(&lock, &store).await;
        pipeline.start_on_empty_store().unwrap();
        let group = pipeline.group_writes();
        for round in 0..3u32 {
            let mut touched = Records::new();
            for n in 0..500 {
                let id = id(round * 1_000 + n);
                *pipeline.load(&mut touched, id).unwrap() = named(id, "first", 1);
            }
            // Record 0 again in every batch: each time built on the one before.
            let state = pipeline.load(&mut touched, id(0)).unwrap();
            *state = named(id(0), &format!("round {round}"), 2 + u64::from(round));
            pipeline
                .submit(touched, grouped_write(&store, &group, b"batch"))
                .await
                .unwrap();
        }
        pipeline.wait().await.unwrap();
        // Nothing committed: 1,501 records fit in one group.
        assert!(store.is_empty(TreeName::Records).unwrap());
        assert!(store.is_empty(TreeName::Pending).unwrap());
        let mut touched = Records::new();
        for n in [0, 499, 1_000, 1_499, 2_000] {
            let state = pipeline.load(&mut touched, id(n)).unwrap();
            assert!(
                !state.fields().is_empty(),
                "record {n} is read from the group"
            );
        }
        assert_eq!(touched[&id(0)], named(id(0), "round 2", 4));
        group.commit().unwrap();
        assert_eq!(live_count(&store).unwrap(), 1_500);
        assert_eq!(
            read_record(&store, &id(0)).unwrap(),
            Some(named(id(0), "round 2", 4))
        );
        assert_eq!(
            read_record(&store, &id(2_499)).unwrap(),
            Some(named(id(2_499), "first", 1))
        );
        assert_eq!(store.len(TreeName::Pending).unwrap(), 3);
        // Committed: read from the store, the group is empty and committing it again is a
        // no-op.
        let mut touched = Records::new();
        assert_eq!(
            *pipeline.load(&mut touched, id(1)).unwrap(),
            named(id(1), "first", 1)
        );
        group.commit().unwrap();
        assert_eq!(store.len(TreeName::Pending).unwrap(), 3);
    }

    /// A group commits itself once it holds [`WriteGroup::RECORDS`] records, and a record
    /// another process committed meanwhile is joined at the commit, as by [`write_records_in`].
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_group_commits_and_joins_what_another_process_wrote() {
        let (dir, store) = store();
        let lock = Arc::new(Mutex::new(()));
        let mut pipeline = RecordPipeline::lock(&lock, &store).await;
        pipeline.start_on_empty_store().unwrap();
        let group = pipeline.group_writes();
        let other = LocalStore::open(
            dir.path(),
            &kith_protocol::keys::SymmetricKey::from_slice(&[7; 32]).unwrap(),
        )
        .unwrap();
        let mut theirs = RecordState::new(id(7));
        let clock = Hlc::new(5, 0, DeviceId::from_bytes([2; 16]));
        let write =
            FieldWrite::set(FieldKey::company(), record::value::text("Engines"), []).unwrap();
        theirs.apply(&Operation::upsert(id(7), clock, [write]).unwrap());
        store_record(&other, &theirs);
        let total = WriteGroup::RECORDS as u32 + 10;
        let mut touched = Records::new();
        for n in 0..total {
            let id = id(n);
            // Taken for new: the filter has never seen it.
            assert!(pipeline.load(&mut touched, id).unwrap().fields().is_empty());
            *pipeline.load(&mut touched, id).unwrap() = named(id, "mine", 1);
        }
        pipeline
            .submit(touched, grouped_write(&store, &group, b"batch"))
            .await
            .unwrap();
        pipeline.wait().await.unwrap();
        // Full: committed without waiting for the end.
        assert_eq!(live_count(&store).unwrap(), u64::from(total));
        let mut both = named(id(7), "mine", 1);
        both.merge(&theirs);
        assert_eq!(read_record(&store, &id(7)).unwrap(), Some(both));
    }

    /// The pipeline takes a record it never loaded for new on a store that was empty when it
    /// started; if another process wrote that record since, the write joins the two (nothing
    /// the other process committed is lost) and the live count counts it once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_record_another_process_wrote_during_an_import_on_an_empty_store_is_joined() {
        let (dir, store) = store();
        let other = LocalStore::open(
            dir.path(),
            &kith_protocol::keys::SymmetricKey::from_slice(&[7; 32]).unwrap(),
        )
        .unwrap();
        let lock = Arc::new(Mutex::new(()));
        let mut pipeline = RecordPipeline::lock(&lock, &store).await;
        pipeline.start_on_empty_store().unwrap();
        // Another process commits record 7 after the import began.
        let mut theirs = named(id(7), "Ada", 1);
        let clock = Hlc::new(6, 0, DeviceId::from_bytes([2; 16]));
        let write =
            FieldWrite::set(FieldKey::company(), record::value::text("Engines"), []).unwrap();
        theirs.apply(&Operation::upsert(id(7), clock, [write]).unwrap());
        store_record(&other, &theirs);

        let mut touched = Records::new();
        let ours = pipeline.load(&mut touched, id(7)).unwrap();
        assert!(ours.fields().is_empty(), "taken for new without a read");
        let clock = Hlc::new(9, 0, DeviceId::from_bytes([1; 16]));
        let write =
            FieldWrite::set(FieldKey::title(), record::value::text("Countess"), []).unwrap();
        ours.apply(&Operation::upsert(id(7), clock, [write]).unwrap());
        pipeline
            .submit(touched, sealed_write(&store))
            .await
            .unwrap();
        pipeline.wait().await.unwrap();

        let stored = read_record(&store, &id(7)).unwrap().unwrap();
        assert_eq!(
            stored.value(&FieldKey::company()),
            Some(&record::value::text("Engines"))
        );
        assert_eq!(
            stored.value(&FieldKey::title()),
            Some(&record::value::text("Countess"))
        );
        assert_eq!(
            stored.value(&FieldKey::name()),
            Some(&record::value::text("Ada"))
        );
        assert_eq!(live_count(&store).unwrap(), 1);
    }

    /// A store holding any record reads every record an import loads.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_with_records_is_read_for_every_record() {
        let (_dir, store) = store();
        store_record(&store, &named(id(1), "Ada", 1));
        let lock = Arc::new(Mutex::new(()));
        let mut pipeline = RecordPipeline::lock(&lock, &store).await;
        pipeline.start_on_empty_store().unwrap();
        assert!(pipeline.loaded.is_none());
        let mut touched = Records::new();
        assert_eq!(
            *pipeline.load(&mut touched, id(1)).unwrap(),
            named(id(1), "Ada", 1)
        );
    }

    #[test]
    fn the_id_filter_holds_every_id_it_was_given() {
        let mut filter = IdFilter::new();
        let ids: Vec<RecordId> = (0..100_000u32)
            .map(|n| {
                let digest = <sha2::Sha256 as sha2::Digest>::digest(n.to_be_bytes());
                let mut bytes = [0u8; 16];
                bytes.copy_from_slice(&digest[..16]);
                RecordId::from_bytes(bytes)
            })
            .collect();
        let mut false_maybes = 0;
        for id in &ids {
            false_maybes += usize::from(filter.insert(id));
        }
        assert!(ids.iter().all(|id| filter.insert(id)), "no false 'absent'");
        assert!(false_maybes < 100, "{false_maybes} false 'maybe's");
    }

    #[test]
    fn the_live_count_follows_deletes_and_is_rebuilt_when_missing() {
        let (_dir, store) = store();
        for n in 0..5 {
            store_record(&store, &named(id(n), "someone", 1));
        }
        let mut gone = read_record(&store, &id(3)).unwrap().unwrap();
        gone.apply(&Operation::delete(
            id(3),
            Hlc::new(9, 0, DeviceId::from_bytes([1; 16])),
        ));
        store_record(&store, &gone);
        // Writing the same state again changes nothing.
        store_record(&store, &gone);
        assert_eq!(live_count(&store).unwrap(), 4);
        // A store without the count (migrated from the previous release) counts once.
        store.remove(TreeName::Meta, LIVE_COUNT).unwrap();
        assert_eq!(live_count(&store).unwrap(), 4);
        assert!(store.get(TreeName::Meta, LIVE_COUNT).unwrap().is_some());
    }

    #[test]
    fn records_with_merge_links_are_indexed_and_a_store_without_the_index_is_walked_once() {
        let (_dir, store) = store();
        let merged = |n: u32, to: u32| {
            let mut state = named(id(n), "one person", 1);
            let clock = Hlc::new(2, 0, DeviceId::from_bytes([1; 16]));
            let link = FieldWrite::set(FieldKey::merged(&id(to)), record::value::tag(), []);
            state.apply(&Operation::upsert(id(n), clock, [link.unwrap()]).unwrap());
            state
        };
        store_record(&store, &named(id(0), "alone", 1));
        // Linked in a record's first write, and in a later write joined with the stored state.
        store_record(&store, &merged(1, 2));
        store_record(&store, &named(id(2), "one person", 1));
        store_record(&store, &merged(2, 1));
        let linked_ids = |store: &LocalStore| -> BTreeSet<RecordId> {
            linked_records(store)
                .unwrap()
                .iter()
                .map(RecordState::id)
                .collect()
        };
        assert_eq!(linked_ids(&store), BTreeSet::from([id(1), id(2)]));
        // A store from before the index: indexed by one walk, then read from the index.
        store
            .transaction(|tx| {
                tx.remove(TreeName::Meta, LINKED_INDEXED)?;
                for n in [1, 2] {
                    tx.remove(TreeName::Meta, &[LINKED_PREFIX, id(n).as_bytes()].concat())?;
                }
                Ok::<_, crate::error::ClientError>(())
            })
            .unwrap();
        assert_eq!(linked_ids(&store), BTreeSet::from([id(1), id(2)]));
        assert!(store.get(TreeName::Meta, LINKED_INDEXED).unwrap().is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_record_lock_outlives_a_dropped_pipeline_until_its_write_lands() {
        let (_dir, store) = store();
        let lock = Arc::new(Mutex::new(()));
        let mut pipeline = RecordPipeline::lock(&lock, &store).await;
        let (release, write) = held_write(&store);
        pipeline
            .submit(Records::from([(id(3), named(id(3), "late", 3))]), write)
            .await
            .unwrap();
        // As when the caller returns early with an error.
        drop(pipeline);
        assert!(lock.try_lock().is_err(), "a write is still in flight");
        release.send(()).unwrap();
        let relocked = tokio::time::timeout(Duration::from_secs(10), lock.lock()).await;
        assert!(
            relocked.is_ok(),
            "the lock is released once the write lands"
        );
        assert!(read_record(&store, &id(3)).unwrap().is_some());
    }

    /// A page's write (as a pull's): sealed in `prepare`, stored in `write` (in its group's
    /// transaction) once `release` receives, with its batch number appended to `order` as it
    /// starts writing.
    #[allow(clippy::type_complexity)]
    fn prepared_write(
        store: &LocalStore,
        batch: u32,
        prepare_delay: Duration,
        order: &Arc<std::sync::Mutex<Vec<u32>>>,
    ) -> (
        mpsc::Sender<()>,
        impl FnOnce(&Records) -> Result<Vec<Vec<u8>>> + Send + 'static,
        impl FnOnce(&StoreTxn<'_>, &Records, &BatchVersions, Vec<Vec<u8>>) -> Result<()>
        + Send
        + 'static,
    ) {
        let (release, wait) = mpsc::channel::<()>();
        let (sealer, order) = (store.clone(), Arc::clone(order));
        let prepare = move |records: &Records| {
            std::thread::sleep(prepare_delay);
            Ok(seal_all(&sealer, records))
        };
        let write = move |tx: &StoreTxn<'_>,
                          records: &Records,
                          versions: &BatchVersions,
                          sealed: Vec<Vec<u8>>| {
            order.lock().unwrap().push(batch);
            wait.recv().ok();
            write_sealed_in(tx, records, &sealed, Some(versions))
        };
        (release, prepare, write)
    }

    /// Pages are written in the order they were submitted, two per transaction here, each
    /// group after the one before has landed, even when a later page is prepared first; a
    /// record is read from the latest page in flight; every record of every page is stored,
    /// with its latest state.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pages_land_in_order_and_the_latest_in_flight_state_is_read() {
        let (_dir, store) = store();
        let lock = Arc::new(Mutex::new(()));
        let mut pipeline = RecordPipeline::lock(&lock, &store).await;
        pipeline.set_page_group(PageGroupLimits {
            records: usize::MAX,
            pages: 2,
        });
        pipeline.start_on_empty_store().unwrap();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut releases = Vec::new();
        for batch in 0..6u32 {
            let mut touched = Records::new();
            // Record 0 in every page, built on the state of the page before: with several
            // pages in flight that is the latest of them.
            let state = pipeline.load(&mut touched, id(0)).unwrap();
            if batch > 0 {
                assert_eq!(
                    *state,
                    named(id(0), &format!("batch {}", batch - 1), u64::from(batch)),
                    "batch {batch} reads record 0 from the latest batch"
                );
            }
            *state = named(id(0), &format!("batch {batch}"), u64::from(batch) + 1);
            for n in 1..200 {
                let id = id(batch * 1_000 + n);
                *pipeline.load(&mut touched, id).unwrap() = named(id, "new", 1);
            }
            // Even pages are prepared slowly: the next one is prepared before them.
            let delay = Duration::from_millis(if batch % 2 == 0 { 150 } else { 0 });
            let (release, prepare, write) = prepared_write(&store, batch, delay, &order);
            releases.push(release);
            pipeline.submit_page(touched, prepare, write).await.unwrap();
            // The open group and the group committing before it, at most.
            assert!(pipeline.in_flight.len() <= 3);
            if batch == 1 {
                // One group of two pages, neither written: the second cannot be written
                // before the first is released, so the next group's close would wait.
                // Release the writes from here on.
                assert_eq!(pipeline.in_flight.len(), 2);
                std::thread::sleep(Duration::from_millis(300));
                assert!(
                    !order.lock().unwrap().contains(&1),
                    "batch 1 waits for batch 0"
                );
                for release in &releases {
                    release.send(()).unwrap();
                }
            }
            if batch > 1 {
                releases.last().unwrap().send(()).unwrap();
            }
        }
        pipeline.wait().await.unwrap();
        assert_eq!(*order.lock().unwrap(), (0..6).collect::<Vec<_>>());
        assert_eq!(pipeline.write_counts().transactions, 3);
        assert_eq!(
            read_record(&store, &id(0)).unwrap(),
            Some(named(id(0), "batch 5", 6))
        );
        for batch in 0..6u32 {
            for n in 1..200 {
                let id = id(batch * 1_000 + n);
                assert_eq!(read_record(&store, &id).unwrap(), Some(named(id, "new", 1)));
            }
        }
        assert_eq!(live_count(&store).unwrap(), 1 + 6 * 199);
    }

    /// The pages of a group are stored only when the group commits, all in one transaction:
    /// until then another connection (another process) reads none of them, and the pipeline
    /// reads their states from memory; a record a later page of the group changes is replaced
    /// in place, in the same transaction, with the later state.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_pages_of_a_group_are_stored_together_when_it_commits() {
        let (dir, store) = store();
        let other = other_process(&dir);
        let lock = Arc::new(Mutex::new(()));
        let mut pipeline = RecordPipeline::lock(&lock, &store).await;
        pipeline.set_page_group(PageGroupLimits {
            records: 4,
            pages: usize::MAX,
        });
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let page = |batch: u32| {
            let (release, prepare, write) = prepared_write(&store, batch, Duration::ZERO, &order);
            release.send(()).unwrap();
            (prepare, write)
        };
        let mut first = Records::new();
        *pipeline.load(&mut first, id(1)).unwrap() = named(id(1), "Ada", 1);
        *pipeline.load(&mut first, id(2)).unwrap() = named(id(2), "Grace", 1);
        let (prepare, write) = page(0);
        pipeline.submit_page(first, prepare, write).await.unwrap();
        let mut second = Records::new();
        let ada = pipeline.load(&mut second, id(1)).unwrap();
        assert_eq!(*ada, named(id(1), "Ada", 1), "read from the first page");
        *ada = with(ada.clone(), FieldKey::title(), "Countess", 2);
        let countess = ada.clone();
        let (prepare, write) = page(1);
        pipeline.submit_page(second, prepare, write).await.unwrap();
        // Three records in two pages: the group is open, and nothing is written.
        std::thread::sleep(Duration::from_millis(200));
        assert!(order.lock().unwrap().is_empty(), "no page written yet");
        for n in [1, 2] {
            assert_eq!(read_record(&other, &id(n)).unwrap(), None);
        }
        let mut third = Records::new();
        assert_eq!(*pipeline.load(&mut third, id(1)).unwrap(), countess);
        *pipeline.load(&mut third, id(3)).unwrap() = named(id(3), "Edsger", 1);
        third.remove(&id(1));
        // The fourth record: the group commits.
        let (prepare, write) = page(2);
        pipeline.submit_page(third, prepare, write).await.unwrap();
        pipeline.wait().await.unwrap();
        assert_eq!(*order.lock().unwrap(), [0, 1, 2]);
        assert_eq!(
            pipeline.write_counts(),
            WriteCountsSnapshot {
                inserted: 3,
                in_place: 1,
                joined: 0,
                transactions: 1,
            }
        );
        assert_eq!(read_record(&other, &id(1)).unwrap(), Some(countess));
        assert_eq!(
            read_record(&other, &id(2)).unwrap(),
            Some(named(id(2), "Grace", 1))
        );
        assert_eq!(
            read_record(&other, &id(3)).unwrap(),
            Some(named(id(3), "Edsger", 1))
        );
        assert_eq!(live_count(&other).unwrap(), 3);
    }

    /// `state` with `key` set to `text` at `wall_ms` by device 1 (on top of what it holds).
    fn with(mut state: RecordState, key: FieldKey, text: &str, wall_ms: u64) -> RecordState {
        let clock = Hlc::new(wall_ms, 0, DeviceId::from_bytes([1; 16]));
        let replaces = state.replaces(&key);
        let write = FieldWrite::set(key, record::value::text(text), replaces).unwrap();
        state.apply(&Operation::upsert(state.id(), clock, [write]).unwrap());
        state
    }

    /// A second connection to `dir`'s store, as another process sharing it has.
    fn other_process(dir: &tempfile::TempDir) -> LocalStore {
        LocalStore::open(
            dir.path(),
            &kith_protocol::keys::SymmetricKey::from_slice(&[7; 32]).unwrap(),
        )
        .unwrap()
    }

    /// A store holding records 1 ("Ada") and 2 ("Grace"), a second connection to it (another
    /// process), and a record lock.
    fn two_records_and_another_process()
    -> (tempfile::TempDir, LocalStore, LocalStore, Arc<Mutex<()>>) {
        let (dir, store) = store();
        let other = other_process(&dir);
        store_record(&store, &named(id(1), "Ada", 1));
        store_record(&store, &named(id(2), "Grace", 1));
        (dir, store, other, Arc::new(Mutex::new(())))
    }

    /// Record `n` as `store` (another process) reads it, sets `key` to `text` and writes it.
    fn written_by(
        store: &LocalStore,
        n: u32,
        key: FieldKey,
        text: &str,
        wall_ms: u64,
    ) -> RecordState {
        let state = with(
            read_record(store, &id(n)).unwrap().unwrap(),
            key,
            text,
            wall_ms,
        );
        store_record(store, &state);
        state
    }

    /// Sets `key` to `text` on records 1 and 2 of `touched` ([`with`]).
    fn set_on_both(touched: &mut Records, key: FieldKey, text: &str, wall_ms: u64) {
        for n in [1, 2] {
            let state = with(touched[&id(n)].clone(), key.clone(), text, wall_ms);
            touched.insert(id(n), state);
        }
    }

    /// Asserts that `state` shows `text` for `key`.
    fn assert_text(state: &RecordState, key: FieldKey, text: &str) {
        assert_eq!(
            state.value(&key),
            Some(&record::value::text(text)),
            "{key:?}"
        );
    }

    /// A pull's page write: sealed beside, then written with the batch's versions (in its
    /// group's transaction) once `release` receives; `landed` receives once it is written in
    /// that transaction.
    #[allow(clippy::type_complexity)]
    fn versioned_write(
        store: &LocalStore,
    ) -> (
        mpsc::Sender<()>,
        mpsc::Receiver<()>,
        impl FnOnce(&Records) -> Result<Vec<Vec<u8>>> + Send + 'static,
        impl FnOnce(&StoreTxn<'_>, &Records, &BatchVersions, Vec<Vec<u8>>) -> Result<()>
        + Send
        + 'static,
    ) {
        let (release, wait) = mpsc::channel::<()>();
        let (landed_tx, landed) = mpsc::channel::<()>();
        let sealer = store.clone();
        let prepare = move |records: &Records| Ok(seal_all(&sealer, records));
        let write = move |tx: &StoreTxn<'_>,
                          records: &Records,
                          versions: &BatchVersions,
                          sealed: Vec<Vec<u8>>| {
            wait.recv().ok();
            write_sealed_in(tx, records, &sealed, Some(versions))?;
            landed_tx.send(()).ok();
            Ok(())
        };
        (release, landed, prepare, write)
    }

    /// Records read from the store and changed (renamed, deleted) are replaced in place,
    /// without a join; a new one is inserted; the live count follows the deletion.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_read_from_the_store_and_unchanged_there_are_replaced_in_place() {
        let (_dir, store) = store();
        let lock = Arc::new(Mutex::new(()));
        for n in 1..=3 {
            store_record(&store, &named(id(n), "stored", 1));
        }
        assert_eq!(live_count(&store).unwrap(), 3);
        let mut pipeline = RecordPipeline::lock(&lock, &store).await;
        pipeline.start_on_empty_store().unwrap();
        let mut touched = Records::new();
        pipeline
            .load_many(&mut touched, [id(1), id(2), id(4)])
            .unwrap();
        // And one through `load`.
        pipeline.load(&mut touched, id(3)).unwrap();
        let renamed = with(touched[&id(1)].clone(), FieldKey::name(), "renamed", 2);
        touched.insert(id(1), renamed.clone());
        let clock = Hlc::new(3, 0, DeviceId::from_bytes([1; 16]));
        let gone = touched.get_mut(&id(2)).unwrap();
        gone.apply(&Operation::delete(id(2), clock));
        let gone = gone.clone();
        let three = with(touched[&id(3)].clone(), FieldKey::title(), "Dr", 2);
        touched.insert(id(3), three.clone());
        touched.insert(id(4), named(id(4), "new", 2));
        let (release, _landed, prepare, write) = versioned_write(&store);
        release.send(()).unwrap();
        pipeline.submit_page(touched, prepare, write).await.unwrap();
        pipeline.wait().await.unwrap();
        assert_eq!(
            pipeline.write_counts(),
            WriteCountsSnapshot {
                inserted: 1,
                in_place: 3,
                joined: 0,
                transactions: 1,
            }
        );
        assert_eq!(read_record(&store, &id(1)).unwrap(), Some(renamed));
        assert_eq!(read_record(&store, &id(2)).unwrap(), Some(gone));
        assert_eq!(read_record(&store, &id(3)).unwrap(), Some(three));
        assert_eq!(
            read_record(&store, &id(4)).unwrap(),
            Some(named(id(4), "new", 2))
        );
        assert_eq!(live_count(&store).unwrap(), 3);
        // The count kept in place is the one a scan finds.
        store.remove(TreeName::Meta, LIVE_COUNT).unwrap();
        assert_eq!(live_count(&store).unwrap(), 3);
    }

    /// Another process writes a record between the pipeline's read and its write: the write
    /// finds the value changed, joins (both changes are kept) and counts it once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_record_another_process_wrote_after_the_read_is_joined_not_replaced() {
        let (_dir, store, other, lock) = two_records_and_another_process();
        let mut pipeline = RecordPipeline::lock(&lock, &store).await;
        let mut touched = Records::new();
        pipeline.load_many(&mut touched, [id(1), id(2)]).unwrap();
        written_by(&other, 1, FieldKey::company(), "Engines", 6);
        set_on_both(&mut touched, FieldKey::title(), "Countess", 5);
        let (release, _landed, prepare, write) = versioned_write(&store);
        release.send(()).unwrap();
        pipeline.submit_page(touched, prepare, write).await.unwrap();
        pipeline.wait().await.unwrap();
        assert_eq!(
            pipeline.write_counts(),
            WriteCountsSnapshot {
                inserted: 0,
                in_place: 1,
                joined: 1,
                transactions: 1,
            }
        );
        let stored = read_record(&store, &id(1)).unwrap().unwrap();
        assert_text(&stored, FieldKey::company(), "Engines");
        assert_text(&stored, FieldKey::title(), "Countess");
        assert_eq!(live_count(&store).unwrap(), 2);
        assert_eq!(live_count(&other).unwrap(), 2);
    }

    /// A record loaded from a batch in flight is replaced in place once that batch has
    /// written it as it was; one another process wrote between the two writes is joined.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_record_read_from_a_batch_in_flight_is_replaced_in_place_unless_written_since() {
        let (_dir, store, other, lock) = two_records_and_another_process();
        let mut pipeline = RecordPipeline::lock(&lock, &store).await;
        // Each page a group of its own.
        pipeline.set_page_group(PageGroupLimits {
            records: usize::MAX,
            pages: 1,
        });
        // Batch 1 reads both from the store, batch 2 from batch 1 (in flight, not written).
        let mut first = Records::new();
        pipeline.load_many(&mut first, [id(1), id(2)]).unwrap();
        set_on_both(&mut first, FieldKey::title(), "first", 2);
        let (release_first, landed_first, prepare, write) = versioned_write(&store);
        pipeline
            .submit_page(first.clone(), prepare, write)
            .await
            .unwrap();
        let mut second = Records::new();
        pipeline.load_many(&mut second, [id(1)]).unwrap();
        pipeline.load(&mut second, id(2)).unwrap();
        assert_eq!(second, first, "read from the batch in flight");
        set_on_both(&mut second, FieldKey::company(), "second", 3);
        // Batch 1 lands; another process then writes record 2 (once batch 1's transaction
        // has committed); batch 2 lands.
        release_first.send(()).unwrap();
        landed_first.recv().unwrap();
        let theirs = written_by(&other, 2, FieldKey::note(), "theirs", 4);
        let (release_second, _landed, prepare, write) = versioned_write(&store);
        release_second.send(()).unwrap();
        pipeline
            .submit_page(second.clone(), prepare, write)
            .await
            .unwrap();
        pipeline.wait().await.unwrap();
        assert_eq!(
            pipeline.write_counts(),
            WriteCountsSnapshot {
                inserted: 0,
                in_place: 3,
                joined: 1,
                transactions: 2,
            }
        );
        assert_eq!(
            read_record(&store, &id(1)).unwrap().as_ref(),
            second.get(&id(1))
        );
        let two = read_record(&store, &id(2)).unwrap().unwrap();
        let mut both = second[&id(2)].clone();
        both.merge(&theirs);
        assert_eq!(two, both);
        assert_text(&two, FieldKey::note(), "theirs");
        assert_text(&two, FieldKey::company(), "second");
        assert_eq!(live_count(&store).unwrap(), 2);
    }

    /// A page whose write fails stores nothing of its group (the page before it in the group
    /// is rolled back with it), keeps every later group from being written, also a page
    /// submitted once nothing is in flight any more, and the pipeline reports that write's
    /// error.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_page_stores_nothing_of_its_group_and_nothing_later_lands() {
        let (_dir, store) = store();
        let lock = Arc::new(Mutex::new(()));
        let mut pipeline = RecordPipeline::lock(&lock, &store).await;
        pipeline.set_page_group(PageGroupLimits {
            records: usize::MAX,
            pages: 2,
        });
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let page = |batch: u32| {
            let (release, prepare, write) = prepared_write(&store, batch, Duration::ZERO, &order);
            release.send(()).unwrap();
            (prepare, write)
        };
        let (prepare, write) = page(0);
        let one = Records::from([(id(1), named(id(1), "rolled back", 1))]);
        pipeline.submit_page(one, prepare, write).await.unwrap();
        let (wait_tx, wait_rx) = mpsc::channel::<()>();
        pipeline
            .submit_page(
                Records::from([(id(2), named(id(2), "lost", 1))]),
                |_| Ok(()),
                move |_, _, _, ()| {
                    wait_rx.recv().ok();
                    Err(LocalStoreError::Corrupt {
                        tree: "records",
                        reason: "a failing write".into(),
                    }
                    .into())
                },
            )
            .await
            .unwrap();
        // The next group: its first page is submitted while the failing one is written.
        let (prepare, write) = page(3);
        let three = Records::from([(id(3), named(id(3), "after", 1))]);
        pipeline.submit_page(three, prepare, write).await.unwrap();
        wait_tx.send(()).unwrap();
        // Closing the next group waits for the failed one.
        let (prepare, write) = page(4);
        let four = Records::from([(id(4), named(id(4), "after", 1))]);
        let error = pipeline
            .submit_page(four, prepare, write)
            .await
            .unwrap_err();
        assert!(error.to_string().contains("a failing write"), "{error}");
        // The next group is not written either (each of its pages reports it).
        while pipeline.wait().await.is_err() {}
        assert!(pipeline.in_flight.is_empty());
        // Page 0 was written in the failed transaction; nothing later was.
        assert_eq!(*order.lock().unwrap(), [0]);
        for n in 1..=4 {
            assert_eq!(read_record(&store, &id(n)).unwrap(), None, "record {n}");
        }
        assert_eq!(pipeline.write_counts().transactions, 0);
        // Nothing is in flight now, so a page submitted after the failure has no earlier
        // write to wait for: it is refused, not written after the gap.
        let (prepare, write) = page(5);
        let five = Records::from([(id(5), named(id(5), "after the gap", 1))]);
        assert!(pipeline.submit_page(five, prepare, write).await.is_err());
        pipeline.wait().await.unwrap();
        assert_eq!(*order.lock().unwrap(), [0]);
        assert_eq!(read_record(&store, &id(5)).unwrap(), None);
    }
}
