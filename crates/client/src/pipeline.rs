//! Batched read-modify-write of merged records, each batch's write running on a blocking
//! thread while the next batch is merged.
//!
//! Imports and pulls change many records at once. Encrypting and writing a batch to sled
//! costs about as much as merging the next one, so [`RecordPipeline`] overlaps the two on the
//! machine's cores. While a batch is in flight its records stay readable from memory, so a
//! record touched again by the next batch builds on its latest state, never on what sled held
//! before. The pipeline holds the device's record lock from creation until its last write has
//! landed, even if the caller returns early with an error, so no other writer reads a record
//! that a write still in flight is about to replace.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use kith_protocol::RecordId;
use kith_protocol::merge::RecordState;
use kith_protocol::proto;
use prost::Message;
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::error::Result;
use crate::store::{LocalStore, StoreError, TreeName};

/// The merged records of one batch, by id.
pub(crate) type Records = BTreeMap<RecordId, RecordState>;

/// See the module docs.
pub(crate) struct RecordPipeline {
    store: LocalStore,
    /// Shared with every in-flight write: the record lock is released when the last of them
    /// and the pipeline are gone.
    guard: Arc<OwnedMutexGuard<()>>,
    in_flight: Option<InFlight>,
    /// Ids of every stored record, once listed: a miss in sled costs as much as a hit (~6 µs),
    /// so after [`MISSES_BEFORE_LISTING`] misses the ids are listed once and new records are
    /// recognized without asking sled.
    stored_ids: Option<HashSet<RecordId>>,
    misses: usize,
}

/// Store misses after which a pipeline lists the stored record ids.
const MISSES_BEFORE_LISTING: usize = 2_000;

struct InFlight {
    records: Arc<Records>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl RecordPipeline {
    /// Takes the device's record lock (waiting for other writers) and starts an empty pipeline.
    pub(crate) async fn lock(lock: &Arc<Mutex<()>>, store: &LocalStore) -> Self {
        let guard = Arc::clone(lock).lock_owned().await;
        Self {
            store: store.clone(),
            guard: Arc::new(guard),
            in_flight: None,
            stored_ids: None,
            misses: 0,
        }
    }

    /// Lists the stored record ids, and those of the batch in flight (every earlier batch has
    /// landed).
    fn list_stored_ids(&mut self) -> Result<()> {
        let mut ids: HashSet<RecordId> = self
            .in_flight
            .as_ref()
            .map(|w| w.records.keys().copied().collect())
            .unwrap_or_default();
        let tree = self.store.tree(TreeName::Records)?;
        for key in tree.iter().keys() {
            let key = key.map_err(StoreError::from)?;
            let id = RecordId::from_slice(&key).map_err(|_| StoreError::Corrupt {
                tree: "records",
                reason: "a record key is not 16 bytes".into(),
            })?;
            ids.insert(id);
        }
        self.stored_ids = Some(ids);
        Ok(())
    }

    /// The current state of `id` for the batch being merged into `touched`: from `touched`,
    /// else the batch in flight, else the store, else a new empty record.
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
        if let Some(state) = self.in_flight.as_ref().and_then(|w| w.records.get(&id)) {
            return Ok(entry.insert(state.clone()));
        }
        if self
            .stored_ids
            .as_ref()
            .is_some_and(|ids| !ids.contains(&id))
        {
            return Ok(entry.insert(RecordState::new(id)));
        }
        let state = match read_record(&self.store, &id)? {
            Some(state) => state,
            None => {
                // Many new records (an import, a first sync): list the stored ids once, which
                // costs about what this many misses did.
                self.misses += 1;
                if self.misses == MISSES_BEFORE_LISTING {
                    self.list_stored_ids()?;
                }
                RecordState::new(id)
            }
        };
        Ok(entry.insert(state))
    }

    /// Waits for the batch in flight, then starts `write(records)` on a blocking thread.
    /// `records` are the states the write stores.
    pub(crate) async fn submit(
        &mut self,
        records: Records,
        write: impl FnOnce(&Records) -> Result<()> + Send + 'static,
    ) -> Result<()> {
        self.wait().await?;
        if let Some(ids) = self.stored_ids.as_mut() {
            ids.extend(records.keys().copied());
        }
        let records = Arc::new(records);
        let written = Arc::clone(&records);
        let guard = Arc::clone(&self.guard);
        let task = tokio::task::spawn_blocking(move || {
            let result = write(&written);
            drop(guard);
            result
        });
        self.in_flight = Some(InFlight { records, task });
        Ok(())
    }

    /// Waits until the batch in flight, if any, has been written.
    pub(crate) async fn wait(&mut self) -> Result<()> {
        if let Some(in_flight) = self.in_flight.take() {
            in_flight
                .task
                .await
                .map_err(|e| StoreError::WriterFailed(e.to_string()))??;
        }
        Ok(())
    }
}

/// Reads one record's merged state from the store.
pub(crate) fn read_record(store: &LocalStore, id: &RecordId) -> Result<Option<RecordState>> {
    match store.get(TreeName::Records, id.as_bytes())? {
        None => Ok(None),
        Some(bytes) => {
            let wire =
                proto::RecordState::decode(bytes.as_slice()).map_err(|_| StoreError::Corrupt {
                    tree: "records",
                    reason: "undecodable record".into(),
                })?;
            Ok(Some(RecordState::from_proto(&wire)?))
        }
    }
}

#[cfg(test)]
mod tests {
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
            .put(
                TreeName::Records,
                state.id().as_bytes(),
                &state.encode_to_vec(),
            )
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ids_listed_while_a_batch_is_in_flight_include_that_batch() {
        let (_dir, store) = store();
        let lock = Arc::new(Mutex::new(()));
        store_record(&store, &named(id(1), "stored before", 1));
        let mut pipeline = RecordPipeline::lock(&lock, &store).await;
        let (release, write) = held_write(&store);
        let in_flight = named(id(2), "in flight", 2);
        pipeline
            .submit(Records::from([(id(2), in_flight.clone())]), write)
            .await
            .unwrap();
        // Enough misses to make the pipeline list the stored ids while id 2 is unwritten.
        let mut touched = Records::new();
        for n in 0..MISSES_BEFORE_LISTING as u32 {
            pipeline.load(&mut touched, id(1_000 + n)).unwrap();
        }
        assert!(pipeline.stored_ids.is_some());
        release.send(()).unwrap();
        // The next batch replaces the one in flight; id 2 must now come from the store.
        let (release, write) = held_write(&store);
        pipeline.submit(Records::new(), write).await.unwrap();
        let mut touched = Records::new();
        assert_eq!(*pipeline.load(&mut touched, id(2)).unwrap(), in_flight);
        assert_eq!(
            *pipeline.load(&mut touched, id(1)).unwrap(),
            named(id(1), "stored before", 1)
        );
        release.send(()).unwrap();
        pipeline.wait().await.unwrap();
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
}
