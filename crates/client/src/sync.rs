//! The sync engine: seal pending operations into envelopes, push them, pull every other
//! device's stream from its cursor, verify (roster, epoch, signatures in batches, hash chain)
//! and merge. A gap, fork, replay or rollback is an error naming the device, never a skip.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use kith_protocol::envelope::{self, EnvelopeError, EnvelopeHash, ParsedEnvelope};
use kith_protocol::epoch;
use kith_protocol::limits::{MAX_OPERATIONS_PER_BATCH, MAX_PAYLOAD_BYTES};
use kith_protocol::merge::{ContactSet, RecordState};
use kith_protocol::proto::{self, PayloadKind, request, response};
use kith_protocol::record::{self, Operation};
use kith_protocol::roster::VerifiedRoster;
use kith_protocol::stream::StreamVerifier;
use kith_protocol::writer_view::WriterView;
use kith_protocol::{DeviceId, RecordId};
use prost::Message;

use crate::clock::ClockSkew;
use crate::device::{Device, meta, now_ms};
use crate::error::{ClientError, Result};
use crate::merging::PulledIdentities;
use crate::net::{RelayConnection, expect_ok};
use crate::pipeline::{RecordPipeline, Records};
use crate::store::{LocalStoreError, StoreTxn, TreeName};

/// Operations per envelope: keeps an envelope well under the 1 MiB limit.
pub(crate) const OPS_PER_ENVELOPE: usize = 1_000;
/// Plaintext bytes per envelope before a new one is started.
const BYTES_PER_ENVELOPE: usize = 512 * 1024;
/// Bytes reserved after a payload for the writer's view (a roster hash and one position per
/// other device: 60 bytes and 22 per device), so that appending it rarely reallocates.
const WRITER_VIEW_ROOM: usize = 64 + 24 * 16;
/// Envelopes per push request.
const ENVELOPES_PER_PUSH: usize = 64;
/// Envelope bytes per push request.
const BYTES_PER_PUSH: usize = 2 * 1024 * 1024;
/// Pushes in flight at once (the relay accepts up to `kith_relay`'s window of 32 per
/// connection): enough to cover a round trip and a group commit on a fast link, few enough
/// that a failure abandons little.
pub(crate) const PUSHES_IN_FLIGHT: usize = 4;
/// Envelopes asked for per pull page.
const ENVELOPES_PER_PULL: u32 = 256;
/// Encoded record bytes per snapshot envelope (a snapshot spans as many envelopes as needed).
const SNAPSHOT_BYTES: usize = 512 * 1024;

/// Envelopes in the first group sealed beside the push ([`Device::start_sealing`]): small, so
/// that the first push starts soon; each next group is twice as large, up to
/// [`MAX_SEAL_GROUP`] (fewer transactions, each one `fsync`).
const FIRST_SEAL_GROUP: usize = 4;
/// Envelopes in a group sealed beside the push, at most.
const MAX_SEAL_GROUP: usize = 32;

/// What one sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Envelopes this device pushed.
    pub pushed: usize,
    /// Envelopes pulled from other devices and merged.
    pub pulled: usize,
    /// Records whose merged state changed.
    pub changed: BTreeSet<RecordId>,
    /// Envelopes of removed devices past their `final_seq` that the relay served: the end of
    /// those streams, never merged (a relay that follows the protocol never serves them).
    pub past_end: Vec<PastEnd>,
    /// Streams stopped at an envelope in a format newer than this release reads: every other
    /// stream was pulled and merged; those wait for an update (docs/PROTOCOL.md §8.1).
    pub newer_format: Vec<NewerFormat>,
    /// Envelopes another device vouched for (its signed payload names the highest seq it
    /// merged of each stream) that the relay did not serve this device, even when asked once
    /// more after the pull reached the relay's head: the relay withholds them, or lost them and
    /// their writer has not restored them yet (docs/PROTOCOL.md §13 step 5).
    pub withheld: Vec<Withheld>,
    /// What the relay had lost (an old backup restored, its data lost) and this sync restored
    /// from this device's verified copies; `None` when the relay held everything this device
    /// knows it acknowledged (docs/PROTOCOL.md §13.1).
    pub healed: Option<crate::heal::RelayHeal>,
    /// Another device moved the account off the relay this device synced with and left a
    /// notice there; this device now syncs with the new relay (docs/PROTOCOL.md §13.1).
    pub relay_moved: Option<crate::heal::RelayMove>,
}

/// An envelope whose header carries a `format_version` this release does not know, written by
/// a device of a newer release. The writer's stream stops before it (nothing after it can be
/// checked) until Kith is updated; every other stream goes on (docs/PROTOCOL.md §8.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewerFormat {
    /// The writer, as the relay names it (the header could not be read).
    pub device: DeviceId,
    /// The seq the relay served it at.
    pub seq: u64,
    /// The format version found.
    pub version: u32,
}

impl std::fmt::Display for NewerFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "device {} wrote seq {} in envelope format {}, which this release does not read: \
             update Kith to read what it wrote (everything else synced)",
            self.device, self.seq, self.version
        )
    }
}

/// A stream the relay served less of than another device vouched it had merged: the relay
/// withholds (or lost) the envelopes `served + 1 ..= vouched` of `device` (docs/PROTOCOL.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Withheld {
    /// The device whose envelopes are missing.
    pub device: DeviceId,
    /// The highest seq of its stream this device verified.
    pub served: u64,
    /// The highest seq of it that `by` vouched to have merged.
    pub vouched: u64,
    /// The device whose signed envelope vouched for it.
    pub by: DeviceId,
}

impl std::fmt::Display for Withheld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the relay withholds envelopes of device {}: device {} merged its stream up to seq \
             {}, but the relay served it only up to seq {}",
            self.device, self.by, self.vouched, self.served
        )
    }
}

/// An envelope of a removed device past the `final_seq` the roster gives it, as a relay served
/// it. Receivers treat it as the end of that device's stream: it is never merged, and the
/// device's stream is not pulled further, while every other stream goes on
/// (docs/PROTOCOL.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PastEnd {
    /// The removed device.
    pub device: DeviceId,
    /// The last seq of it the roster admits.
    pub final_seq: u64,
    /// The seq served past it.
    pub seq: u64,
}

impl std::fmt::Display for PastEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the relay served device {} past the end the roster gives its stream (seq {} after \
             {}); that stream ends there and the rest synced",
            self.device, self.seq, self.final_seq
        )
    }
}

impl SyncReport {
    /// The streams this sync could not follow to their end, one sentence each (newer formats,
    /// removed devices' streams served past their end, withheld envelopes): what `kith sync`
    /// warns of and the app bindings report. Everything else synced.
    pub fn warnings(&self) -> Vec<String> {
        let newer = self.newer_format.iter().map(ToString::to_string);
        let past_end = self.past_end.iter().map(ToString::to_string);
        let withheld = self.withheld.iter().map(ToString::to_string);
        newer.chain(past_end).chain(withheld).collect()
    }
}

/// Pending entries gathered for one envelope: encoded batches of operations only.
#[derive(Default)]
struct PendingBatch {
    keys: Vec<Vec<u8>>,
    entries: Vec<Vec<u8>>,
    ops: usize,
    bytes: usize,
}

impl PendingBatch {
    /// Adds the entry `plain` of pending `key`; whether the batch is now full (an envelope's
    /// worth of operations or bytes).
    fn add(&mut self, key: Vec<u8>, mut plain: Vec<u8>) -> Result<bool> {
        let count = match record::operations_only_count(&plain) {
            Some(count) => count,
            None => {
                let ops = record::decode_batch(&plain)?;
                plain = record::encode_batch(&ops)?;
                ops.len()
            }
        };
        self.bytes += plain.len();
        self.ops += count;
        self.entries.push(plain);
        self.keys.push(key);
        Ok(self.ops >= OPS_PER_ENVELOPE || self.bytes >= BYTES_PER_ENVELOPE)
    }

    /// The envelope's payload: the entries one after the other (one `OperationBatch` of all
    /// their operations) and the wall time, with room for the writer's view.
    fn payload(&self) -> Result<Vec<u8>> {
        if self.ops > MAX_OPERATIONS_PER_BATCH {
            return Err(record::RecordError::TooManyOperations { count: self.ops }.into());
        }
        let mut payload = Vec::with_capacity(self.bytes + 16 + WRITER_VIEW_ROOM);
        for entry in &self.entries {
            payload.extend_from_slice(entry);
        }
        // The wall time lets receivers report a device whose date is wrong (§8).
        record::append_written_at(&mut payload, now_ms());
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(record::RecordError::BatchTooLarge { len: payload.len() }.into());
        }
        Ok(payload)
    }
}

/// Envelopes sealed outside a transaction, to be written in one
/// ([`Device::commit_seal_group`]).
struct SealGroup {
    /// The head (seq, hash) they follow.
    head: (u64, EnvelopeHash),
    /// The merged heads their writer's views state.
    heads: Vec<(DeviceId, u64)>,
    /// The pending entries they hold.
    pending_keys: Vec<Vec<u8>>,
    /// (seq, envelope sealed for the outbox), in seq order.
    envelopes: Vec<(u64, Vec<u8>)>,
    /// The same envelopes as sealed (the bytes pushed), in seq order: handed to the pusher
    /// once the group committed as prepared ([`SealedHandoff`]).
    plain: Vec<Vec<u8>>,
    /// The hash of the last one (the head's, with none).
    last_hash: EnvelopeHash,
}

/// What a group's transaction wrote ([`Device::commit_seal_group`]).
struct GroupCommit {
    /// Envelopes written.
    count: usize,
    /// The envelopes' bytes, in seq order from the first seq, when the transaction wrote the
    /// group as prepared; `None` when it sealed the group's entries again.
    envelopes: Option<(u64, Vec<Vec<u8>>)>,
}

/// A push's envelopes and their seqs, in seq order.
type PushBatch = (Vec<Vec<u8>>, Vec<u64>);

/// Envelope bytes the pusher may hold in memory from committed groups, at most
/// ([`SealedHandoff`]): two of the largest groups of full envelopes.
const MAX_HANDOFF_BYTES: usize = 2 * MAX_SEAL_GROUP * BYTES_PER_ENVELOPE;

/// The envelopes of groups that committed as prepared, handed by the sealing thread to the
/// pusher ([`Device::push_sealed`]) so that it pushes the bytes the sealing thread held
/// instead of reading them back from the outbox (an SQLite read and a store open of every
/// envelope). Only committed groups are handed, in seq order, each the outbox's bytes at
/// those seqs; the pusher takes them only from the seq it pushes next, and reads the outbox
/// for everything else: envelopes sealed before (a sync that failed to push), groups sealed
/// again in their transaction, groups not handed because the pusher held
/// [`MAX_HANDOFF_BYTES`] already (the sealing thread never waits for the pusher).
#[derive(Default)]
struct SealedHandoff {
    /// (first seq, envelopes from it on), in seq order.
    groups: VecDeque<(u64, VecDeque<Vec<u8>>)>,
    /// The bytes of every envelope in `groups`.
    bytes: usize,
    /// Set once the pusher stopped taking: nothing more is handed.
    closed: bool,
}

impl SealedHandoff {
    /// Adds a committed group's envelopes (from `first` on) unless the pusher stopped or
    /// would hold more than [`MAX_HANDOFF_BYTES`].
    fn hand(&mut self, first: u64, envelopes: Vec<Vec<u8>>) {
        let bytes: usize = envelopes.iter().map(Vec::len).sum();
        if self.closed || envelopes.is_empty() || self.bytes + bytes > MAX_HANDOFF_BYTES {
            return;
        }
        self.bytes += bytes;
        self.groups.push_back((first, envelopes.into()));
    }

    /// Drops the envelopes before `next` (pushed from the outbox meanwhile); the first seq
    /// held from then on.
    fn skip_to(&mut self, next: u64) -> Option<u64> {
        while let Some((first, envelopes)) = self.groups.front_mut() {
            while *first < next
                && let Some(envelope) = envelopes.pop_front()
            {
                self.bytes -= envelope.len();
                *first += 1;
            }
            if envelopes.is_empty() {
                self.groups.pop_front();
            } else {
                return Some(*first);
            }
        }
        None
    }

    /// The next push's envelopes from `next` on, bounded as [`next_push_batch`] bounds them,
    /// and their seqs: empty unless the envelope `next` is held.
    fn take_batch(&mut self, next: u64) -> PushBatch {
        let mut batch = Vec::new();
        let mut seqs = Vec::new();
        let mut batch_bytes = 0;
        let mut seq = next;
        while self.skip_to(seq) == Some(seq) {
            let Some((first, envelopes)) = self.groups.front_mut() else {
                break;
            };
            let Some(len) = envelopes.front().map(Vec::len) else {
                break;
            };
            if !batch.is_empty()
                && (batch.len() >= ENVELOPES_PER_PUSH || batch_bytes + len > BYTES_PER_PUSH)
            {
                break;
            }
            let Some(envelope) = envelopes.pop_front() else {
                break;
            };
            *first += 1;
            self.bytes -= len;
            batch_bytes += len;
            batch.push(envelope);
            seqs.push(seq);
            seq += 1;
        }
        (batch, seqs)
    }

    /// Stops the handing and drops what is held.
    fn close(&mut self) {
        self.closed = true;
        self.groups.clear();
        self.bytes = 0;
    }
}

/// The handoff, also after a panic of a thread that held it (its state is valid between
/// any two statements).
fn lock_handoff(
    handoff: &std::sync::Mutex<SealedHandoff>,
) -> std::sync::MutexGuard<'_, SealedHandoff> {
    handoff
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Pending operations being sealed on a blocking thread ([`Device::start_sealing`]).
pub(crate) struct Sealing {
    /// Envelopes sealed so far, sent after each group's transaction.
    progress: tokio::sync::watch::Receiver<usize>,
    /// The envelopes of the groups committed as prepared, handed to the pusher.
    handoff: std::sync::Arc<std::sync::Mutex<SealedHandoff>>,
    /// The count last read from `progress`.
    seen: usize,
    /// Whether the sealing thread has ended (its sender dropped).
    ended: bool,
    task: Option<tokio::task::JoinHandle<Result<usize>>>,
    /// The thread's result once [`Sealing::finish`] took it.
    outcome: Option<usize>,
}

impl Sealing {
    /// Whether a group committed since the last call (without waiting).
    fn sealed_more(&mut self) -> bool {
        // Read even once the sender is gone: its last count stays.
        let sealed = *self.progress.borrow_and_update();
        std::mem::replace(&mut self.seen, sealed) != sealed
    }

    /// The next push's envelopes from seq `next` on, from the groups handed in memory (empty
    /// unless the envelope `next` is held there), and when none is taken, the first seq held
    /// after `next` (the outbox is read up to it).
    fn take_handed(&mut self, next: u64) -> (PushBatch, Option<u64>) {
        let mut handoff = lock_handoff(&self.handoff);
        let batch = handoff.take_batch(next);
        let after = if batch.1.is_empty() {
            handoff.skip_to(next)
        } else {
            None
        };
        (batch, after)
    }

    /// Stops handing envelopes to the pusher, and drops those held: the push ended.
    fn stop_handing(&self) {
        lock_handoff(&self.handoff).close();
    }

    /// Waits for the next group's commit, or for the sealing to end.
    async fn next_commit(&mut self) {
        if !self.ended && self.progress.changed().await.is_err() {
            self.ended = true;
        }
    }

    /// Waits until every pending operation is sealed; the number of envelopes, or the error
    /// that stopped the sealing (the groups committed before it stay sealed).
    pub(crate) async fn finish(&mut self) -> Result<usize> {
        if let Some(task) = self.task.take() {
            let sealed = task
                .await
                .map_err(|e| LocalStoreError::WriterFailed(e.to_string()))??;
            self.outcome = Some(sealed);
        }
        self.ended = true;
        Ok(self.outcome.unwrap_or(0))
    }
}

/// A payload of a pulled page, decoded before any of the page is merged.
enum Decoded {
    Operations(record::BatchParts),
    Snapshot(ContactSet),
    Nothing,
}

/// Payload bytes of a page from which [`PageDecoder::decode`] decodes on two threads.
const PARALLEL_DECODE_BYTES: usize = 256 * 1024;

/// One page's payloads, of the kinds their envelopes state, sent to the decoding thread.
type PayloadHalf = (Vec<PayloadKind>, Vec<Vec<u8>>);

/// Decodes the opened payloads of a pull's pages, each failure kept in its place. A page of
/// more than [`PARALLEL_DECODE_BYTES`] is decoded on two threads, its second half beside its
/// first: decoding was about a quarter of the merging thread's time, the longest stage of a
/// large pull (BENCHMARKS.md, "B's pull (issue 18), ninth session").
///
/// The second thread is started at the first large page and kept until the pull ends (the
/// decoder is dropped), not started for each page: what a thread allocates stays in that
/// thread's allocator pages, and the operations it decoded are freed on the merging thread
/// after the page is merged. A thread that had ended by then left its pages to be handed back
/// to the allocator's arena as they emptied, and fresh ones taken (and zeroed by the kernel)
/// for the next page's thread (BENCHMARKS.md, "B's pull (issue 18), tenth session").
#[derive(Default)]
struct PageDecoder {
    thread: Option<DecodingThread>,
}

/// [`PageDecoder`]'s second thread: it decodes each half it is sent and sends the results
/// back, until its sender is dropped.
struct DecodingThread {
    halves: std::sync::mpsc::Sender<PayloadHalf>,
    decoded: std::sync::mpsc::Receiver<Vec<Result<Decoded>>>,
    handle: std::thread::JoinHandle<()>,
}

impl PageDecoder {
    /// Decodes each payload (`payloads`, of the kinds in `kinds`), each result in its place.
    fn decode(
        &mut self,
        kinds: &[PayloadKind],
        mut payloads: Vec<Vec<u8>>,
    ) -> Vec<Result<Decoded>> {
        let bytes: usize = payloads.iter().map(Vec::len).sum();
        if payloads.len() < 2 || bytes < PARALLEL_DECODE_BYTES {
            return decode_each(kinds, payloads);
        }
        let half = payloads.len() / 2;
        let second = payloads.split_off(half);
        if self.thread.is_none() {
            self.thread = DecodingThread::start();
        }
        let second = match &self.thread {
            Some(thread) => thread.halves.send((kinds[half..].to_vec(), second)).err(),
            None => Some(std::sync::mpsc::SendError((kinds[half..].to_vec(), second))),
        };
        let mut decoded = decode_each(&kinds[..half], payloads);
        if let Some(std::sync::mpsc::SendError((kinds, second))) = second {
            // No second thread (it could not be started): the second half is decoded here.
            decoded.extend(decode_each(&kinds, second));
            return decoded;
        }
        let thread = self.thread.as_ref().expect("the half was sent to it");
        match thread.decoded.recv() {
            Ok(rest) => decoded.extend(rest),
            Err(_) => {
                // The thread panicked decoding this half: the panic goes on here, as a scoped
                // thread's would.
                let thread = self.thread.take().expect("the half was sent to it");
                drop(thread.halves);
                if let Err(panic) = thread.handle.join() {
                    std::panic::resume_unwind(panic);
                }
                unreachable!("the decoding thread ends only when its sender is dropped");
            }
        }
        decoded
    }
}

impl DecodingThread {
    /// Starts the thread; `None` if the system could not start one.
    fn start() -> Option<Self> {
        let (halves, to_decode) = std::sync::mpsc::channel::<PayloadHalf>();
        let (send_decoded, decoded) = std::sync::mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("kith-pull-decode".into())
            .spawn(move || {
                for (kinds, payloads) in to_decode {
                    if send_decoded.send(decode_each(&kinds, payloads)).is_err() {
                        return;
                    }
                }
            })
            .ok()?;
        Some(Self {
            halves,
            decoded,
            handle,
        })
    }
}

impl Drop for PageDecoder {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            // Its sender dropped, the thread ends after the half it is decoding, if any.
            drop(thread.halves);
            let _ = thread.handle.join();
        }
    }
}

/// Decodes each payload on this thread, each result in its place.
fn decode_each(kinds: &[PayloadKind], payloads: Vec<Vec<u8>>) -> Vec<Result<Decoded>> {
    kinds
        .iter()
        .zip(payloads)
        .map(|(kind, payload)| {
            Ok(match kind {
                PayloadKind::Operations => {
                    Decoded::Operations(record::decode_batch_parts(&payload)?)
                }
                PayloadKind::Snapshot => {
                    Decoded::Snapshot(ContactSet::decode_snapshot(&payload)?.0)
                }
                PayloadKind::Unspecified => Decoded::Nothing,
            })
        })
        .collect()
}

impl Device {
    /// One full sync: roster and keys, push, pull, merge. Retries failures that can pass at
    /// once (a dropped connection, a busy or restarting relay) with exponential backoff, up to
    /// 5 attempts, reconnecting each time. A relay that cannot be reached at all fails the sync
    /// at the first attempt ([`ClientError::is_retryable_now`]); [`Device::watch`] waits for it.
    pub async fn sync(&self) -> Result<SyncReport> {
        let mut delay = Duration::from_millis(200);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.sync_once().await {
                Ok(mut report) if report.relay_moved.is_some() => {
                    // Followed the account to its new relay: sync there at once, so this
                    // device's own stream reaches it (healed from its copies, §13.1).
                    let there = Box::pin(self.sync()).await?;
                    report.pushed += there.pushed;
                    report.pulled += there.pulled;
                    report.changed.extend(there.changed);
                    report.healed = there.healed.or(report.healed);
                    return Ok(report);
                }
                Err(e) if e.is_retryable_now() && attempt < 5 => {
                    tracing::warn!(attempt, error = %e, "sync failed; retrying");
                    *self.inner.connection.lock().await = None;
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                other => return other,
            }
        }
    }

    /// One sync attempt without retries: fails fast when the relay is unreachable.
    pub async fn sync_once(&self) -> Result<SyncReport> {
        let mut slot = self.inner.connection.lock().await;
        let mut recreated = false;
        let connection = match self.connection(&mut slot).await {
            Ok(c) => c.clone(),
            Err(e) if e.may_be_lost_account() => {
                // The relay lost the account (its data is gone): create it again from the
                // trusted roster, then heal (docs/PROTOCOL.md §13.1). A relay answers an
                // unknown account like any failed authentication (§10), so a refusal of this
                // device's own signature is tried this way too: if the account does exist,
                // creating it is refused and the authentication error stands.
                *slot = None;
                let c = self.recreate_account(None).await?;
                *slot = Some(c.clone());
                recreated = true;
                c
            }
            Err(e) => {
                *slot = None;
                return Err(e);
            }
        };
        // A connection opened when the device was set up (or linked, or recovered) did not
        // pass through `Device::connection`: replace an older pin here too.
        self.migrate_certificate_pin(&connection)?;
        let mut result = self.sync_on(&connection, recreated).await;
        if !recreated && result.as_ref().is_err_and(ClientError::may_be_lost_account) {
            // The relay forgot the account while this connection was open (its data lost
            // under a running relay, or the account deleted): as above.
            *slot = None;
            let c = self.recreate_account(None).await?;
            *slot = Some(c.clone());
            result = self.sync_on(&c, true).await;
        }
        if result.as_ref().is_err_and(|e| e.is_transient()) {
            *slot = None;
        }
        if let Ok(SyncReport {
            relay_moved: Some(moved),
            ..
        }) = &mut result
        {
            // Everything the old relay held was merged: sync with the new one from now on.
            self.persist_relay(&moved.target(&self.relay()))?;
            moved.followed = true;
            *slot = None;
        }
        result
    }

    async fn sync_on(&self, connection: &RelayConnection, recreated: bool) -> Result<SyncReport> {
        let mut report = SyncReport::default();
        let lost_roster_versions = self.refresh_roster(connection).await?;
        // Pull before sealing: what is pulled may show that the relay holds a newer roster
        // back (an envelope signed in a later epoch), and then nothing may be written under
        // the old epoch, whose key a revoked device may hold (§4). Any other pull failure
        // does not keep this device's own changes from the relay.
        // The identity rule is settled page by page as the pull writes them; what may link is
        // checked after the pull (`link_pulled`).
        let identities = std::sync::Arc::new(std::sync::Mutex::new(PulledIdentities::new(
            &self.inner.store,
        )));
        let pulled = self.pull(connection, &mut report, &identities).await;
        if let Err(
            error @ (ClientError::NewerRosterWithheld { .. } | ClientError::RosterWithheld { .. }),
        ) = pulled
        {
            return Err(error);
        }
        if pulled.is_err() {
            // The pages written before the pull failed are stored with their cursors, so no
            // later pull serves them again: the identity rule runs on them now (their index
            // entries written, the links they make sealed and pushed below with the rest), or
            // it never would.
            self.link_pulled(&identities).await?;
        }
        // Sealed on a blocking thread, group by group, each pushed as it commits, once the
        // relay is healed (which seals its snapshot, if any, after the sealing ended).
        let mut sealing = self.start_sealing();
        report.healed = match self
            .heal_relay(
                connection,
                lost_roster_versions,
                recreated,
                Some(&mut sealing),
            )
            .await
        {
            Ok(healed) => healed,
            Err(error) => {
                // Not returned while the sealing thread still writes.
                let _ = sealing.finish().await;
                return Err(error);
            }
        };
        report.pushed = self.push_sealed(connection, Some(sealing)).await?;
        pulled?;
        // The identity rule holds for what other devices wrote too (§8.4); links it makes
        // are pushed at once.
        // The pull's writes have all landed (it waited for the last), so no page holds it.
        if self.link_pulled(&identities).await? > 0 {
            self.seal_pending()?;
            report.pushed += self.push_outbox(connection).await?;
        }
        Ok(report)
    }

    /// Refuses to write while this device has evidence of a newer epoch than its roster's
    /// (an envelope a present device signed in a later epoch, §4).
    fn check_no_newer_epoch(&self, tx: &StoreTxn<'_>) -> Result<()> {
        self.check_no_newer_roster(tx)?;
        let Some(bytes) = tx.get(TreeName::Meta, meta::NEWER_EPOCH_SEEN)? else {
            return Ok(());
        };
        let (Some(device), Some(epoch)) = (
            bytes.get(..16).and_then(|b| DeviceId::from_slice(b).ok()),
            bytes
                .get(16..24)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes),
        ) else {
            return Ok(());
        };
        let state = self.state();
        // Evidence from a device removed since counts no more (a member that signed a false
        // epoch is revoked, and its claim goes with it).
        if epoch > state.roster.epoch() && state.roster.device(&device).is_some() {
            return Err(ClientError::NewerRosterWithheld {
                device,
                epoch,
                roster_epoch: state.roster.epoch(),
            });
        }
        Ok(())
    }

    /// Refuses to write while this device has evidence of a roster it does not hold: an
    /// envelope a present device signed naming a newer roster version, or the same version
    /// with another hash, as the roster it wrote under (§4).
    fn check_no_newer_roster(&self, tx: &StoreTxn<'_>) -> Result<()> {
        let Some(bytes) = tx.get(TreeName::Meta, meta::NEWER_ROSTER_SEEN)? else {
            return Ok(());
        };
        let (Some(device), Some(version), Some(hash)) = (
            bytes.get(..16).and_then(|b| DeviceId::from_slice(b).ok()),
            bytes
                .get(16..24)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes),
            bytes.get(24..56).and_then(|b| <[u8; 32]>::try_from(b).ok()),
        ) else {
            return Ok(());
        };
        let state = self.state();
        // As for epochs: the claim of a device removed since goes with it.
        if state.roster.device(&device).is_some() && !roster_covers(&state.roster, version, &hash) {
            return Err(ClientError::RosterWithheld {
                device,
                version,
                roster_version: state.roster.version(),
            });
        }
        Ok(())
    }

    /// Looks for envelopes that present devices signed in an epoch after the roster's: the
    /// evidence of a roster the relay holds back. Each is checked by its signature first (a
    /// relay cannot make up such evidence). Returns the first, without storing it.
    fn newer_epoch_evidence(&self, parsed: &[ParsedEnvelope]) -> Result<Option<(DeviceId, u64)>> {
        let state = self.state();
        for envelope in parsed {
            let header = envelope.header();
            if header.epoch <= state.roster.epoch() {
                continue;
            }
            let Some(writer) = state.roster.device(&header.device_id) else {
                continue;
            };
            envelope.verify_signature(writer.signing_key())?;
            return Ok(Some((header.device_id, header.epoch)));
        }
        Ok(None)
    }

    /// Fetches the relay's roster, verifies it extends ours, and fetches new epoch keys.
    /// Returns the roster versions the relay had lost, if it served an older roster that the
    /// trusted one extends (stored again: docs/PROTOCOL.md §13.1).
    pub(crate) async fn refresh_roster(
        &self,
        connection: &RelayConnection,
    ) -> Result<Option<(u64, u64)>> {
        let answer = connection
            .request(request::Kind::GetRoster(proto::GetRoster {}))
            .await?;
        let response::Kind::Roster(mut served) = answer else {
            return Err(crate::net::NetError::Protocol("expected a roster".into()).into());
        };
        let restored = self
            .restore_roster_if_behind(connection, &served.roster)
            .await?;
        if restored.is_some() {
            served.roster = self.state().roster.encoded().to_vec();
        }
        let updated = {
            let state = self.state();
            if served.roster.as_slice() == state.roster.encoded() {
                None
            } else {
                Some(VerifiedRoster::verify(
                    &served.roster,
                    Some(&state.account_id),
                    Some(&state.roster),
                )?)
            }
        };
        if let Some(roster) = updated {
            if roster.is_removed(&self.inner.device_id)
                || roster.device(&self.inner.device_id).is_none()
            {
                self.state().roster = roster;
                self.persist_state()?;
                return Err(ClientError::Revoked);
            }
            self.state().roster = roster;
            self.persist_state()?;
        }
        self.fetch_epoch_keys(connection).await?;
        Ok(restored)
    }

    async fn fetch_epoch_keys(&self, connection: &RelayConnection) -> Result<()> {
        let (want, have) = {
            let state = self.state();
            (
                state.roster.epoch(),
                state.epochs.latest().map(|(n, _)| n).unwrap_or(0),
            )
        };
        if have >= want {
            return Ok(());
        }
        let answer = connection
            .request(request::Kind::GetSealedEpochKeys(
                proto::GetSealedEpochKeys {
                    min_epoch: have + 1,
                },
            ))
            .await?;
        let response::Kind::SealedEpochKeys(keys) = answer else {
            return Err(crate::net::NetError::Protocol("expected sealed epoch keys".into()).into());
        };
        {
            let mut state = self.state();
            let account = state.account_id;
            // HPKE base mode does not say who sealed a key: the relay, or a member, could seal
            // a secret of its own. Every epoch's secret is confirmed against the signed roster
            // (the rotation key it derives, and for the current epoch the device names) before
            // it is kept; keys staged for a later epoch wait until a roster starts that epoch.
            // Nothing is kept unless every missing epoch is confirmed, so a refused key is
            // asked for again at the next sync.
            let mut confirmed = BTreeMap::new();
            let mut refused = BTreeMap::new();
            for sealed in &keys.keys {
                // A signature, when the key carries one, must be by its epoch's account key
                // (the revoker's, §5): a key staged or replaced under any other key is refused
                // as such, before it is opened.
                if epoch::sealed_epoch_key_is_signed(sealed)
                    && let Ok(view) = epoch::peek_sealed_epoch_key(sealed)
                    && let Some(key) = state.roster.epoch_account_key(view.epoch)
                {
                    epoch::verify_sealed_epoch_key_signature(sealed, key)?;
                }
                let (number, secret) = epoch::open_epoch_key(
                    sealed,
                    &account,
                    &self.inner.device_id,
                    &self.inner.secrets.agreement_key,
                )?;
                if number > want || state.epochs.contains(number) || confirmed.contains_key(&number)
                {
                    continue;
                }
                match state.roster.confirm_epoch_secret_of(number, &secret) {
                    Ok(()) => {
                        confirmed.insert(number, secret);
                    }
                    Err(error) => {
                        refused.entry(number).or_insert(error);
                    }
                }
            }
            for number in have + 1..=want {
                if confirmed.contains_key(&number) {
                    continue;
                }
                if let Some(error) = refused.remove(&number) {
                    return Err(error.into());
                }
                return Err(ClientError::Epoch(
                    kith_protocol::epoch::EpochError::UnknownEpoch { epoch: number },
                ));
            }
            for (number, secret) in confirmed {
                state.epochs.insert(number, secret)?;
            }
            // A revocation rotated the account key: it is derived from the new epoch's secret.
            if state.roster.current_account_key() != &state.account_key.public() {
                let key = state.roster.derive_account_key(&state.epochs)?;
                state.account_key = key;
            }
        }
        self.persist_state()?;
        Ok(())
    }

    /// Moves pending operations into sealed envelopes in the outbox, atomically: an operation
    /// is either still pending or in exactly one envelope, whatever the moment of a crash. One
    /// write transaction, so two processes sharing the store never seal the same operations
    /// twice or two envelopes with one seq.
    ///
    /// A pending entry is an encoded `OperationBatch` of operations only, and such batches
    /// concatenate (`record::operations_only_count`): an envelope's payload is its entries'
    /// bytes one after the other, then the wall time and the writer's view, the bytes that
    /// decoding and encoding the operations again would give, at the cost of a copy. An entry
    /// in any other form (none is written so) is decoded and encoded again.
    pub(crate) fn seal_pending(&self) -> Result<usize> {
        let store = &self.inner.store;
        if store.is_empty(TreeName::Pending)? {
            return Ok(0);
        }
        store.transaction(|tx| self.seal_keys_in(tx, tx.keys(TreeName::Pending)?))
    }

    /// Seals the pending entries under `keys` (those still there) in `tx`, as
    /// [`Device::seal_pending`] does; returns the number of envelopes.
    fn seal_keys_in(&self, tx: &StoreTxn<'_>, keys: Vec<Vec<u8>>) -> Result<usize> {
        let mut batch = PendingBatch::default();
        let mut sealed_count = 0;
        for key in keys {
            let Some(plain) = tx.get(TreeName::Pending, &key)? else {
                continue;
            };
            if batch.add(key, plain)? {
                let batch = std::mem::take(&mut batch);
                self.seal_payload(tx, &batch.keys, batch.payload()?, PayloadKind::Operations)?;
                sealed_count += 1;
            }
        }
        if !batch.keys.is_empty() {
            self.seal_payload(tx, &batch.keys, batch.payload()?, PayloadKind::Operations)?;
            sealed_count += 1;
        }
        Ok(sealed_count)
    }

    /// Starts sealing every pending operation on a blocking thread, in groups of envelopes
    /// that each commit in one transaction, so that [`Device::push_sealed`] pushes a group
    /// while the next is sealed (A's CPU beside the network and the relay's group commits).
    ///
    /// A group is sealed before its transaction, from the head, the writer's view and the
    /// pending entries as they stood; the transaction writes it only if the head and the
    /// view are still what it was sealed from, and seals the group's entries again inside
    /// itself otherwise (another process sharing the store sealed meanwhile). Only sealing
    /// removes pending entries, and every seal advances the head, so an unchanged head means
    /// the group's entries are all still pending. Each transaction is what
    /// [`Device::seal_pending`]'s one transaction was for its envelopes: an operation is
    /// pending or in exactly one envelope, an envelope is in the outbox with the head past it.
    pub(crate) fn start_sealing(&self) -> Sealing {
        let (progress, watch) = tokio::sync::watch::channel(0);
        let handoff = std::sync::Arc::new(std::sync::Mutex::new(SealedHandoff::default()));
        let device = self.clone();
        let handing = handoff.clone();
        let task = tokio::task::spawn_blocking(move || {
            device.seal_pending_in_groups(|sealed, envelopes| {
                // Handed before the progress is told, so that the pusher woken by it finds them.
                if let Some((first, envelopes)) = envelopes {
                    lock_handoff(&handing).hand(first, envelopes);
                }
                // No receiver left only when the sync stopped; sealing goes on regardless.
                let _ = progress.send(sealed);
            })
        });
        Sealing {
            progress: watch,
            handoff,
            seen: 0,
            ended: false,
            task: Some(task),
            outcome: None,
        }
    }

    /// The work of [`Device::start_sealing`]; calls `committed` with the number of envelopes
    /// sealed so far after each group's transaction, and the group's envelopes (first seq,
    /// bytes) when it was written as prepared.
    ///
    /// Groups are prepared (pending entries read, envelopes sealed and signed: serial, each
    /// header names the previous envelope's hash) on a second thread while the previous group
    /// commits on this one, each from the head the previous group ends at in memory: the
    /// commit's check of the head ([`Device::commit_seal_group`]) holds exactly when every
    /// group before it landed as prepared, and seals the group again in its transaction
    /// otherwise. At most one group waits prepared beside the one committing; a group
    /// prepared but not committed (a crash) leaves its entries pending, and the first error,
    /// of a preparation or a commit, stops every group after it.
    fn seal_pending_in_groups(
        &self,
        committed: impl FnMut(usize, Option<(u64, Vec<Vec<u8>>)>),
    ) -> Result<usize> {
        self.seal_groups_with(committed, |group| self.commit_seal_group(group))
    }

    /// [`Device::seal_pending_in_groups`] with `commit` writing each group (a test fails it).
    fn seal_groups_with(
        &self,
        mut committed: impl FnMut(usize, Option<(u64, Vec<Vec<u8>>)>),
        mut commit: impl FnMut(SealGroup) -> Result<GroupCommit>,
    ) -> Result<usize> {
        let store = &self.inner.store;
        if store.is_empty(TreeName::Pending)? {
            return Ok(0);
        }
        let keys = store.keys(TreeName::Pending)?;
        let (groups, prepared) = std::sync::mpsc::sync_channel::<Result<SealGroup>>(1);
        std::thread::scope(|scope| {
            let preparing = scope.spawn(move || {
                let mut keys = keys.into_iter().peekable();
                let mut group_size = FIRST_SEAL_GROUP;
                let mut head = None;
                while keys.peek().is_some() {
                    let group = self.prepare_seal_group(&mut keys, group_size, head);
                    if let Ok(group) = &group {
                        head = Some((
                            group.envelopes.last().map_or(group.head.0, |(seq, _)| *seq),
                            group.last_hash,
                        ));
                    }
                    let failed = group.is_err();
                    // The committing side stopped (an error): nothing more is prepared.
                    if groups.send(group).is_err() || failed {
                        break;
                    }
                    group_size = (group_size * 2).min(MAX_SEAL_GROUP);
                }
            });
            let mut sealed_count = 0;
            let mut outcome = Ok(());
            for group in prepared.iter() {
                match group.and_then(&mut commit) {
                    Ok(GroupCommit { count, envelopes }) => {
                        sealed_count += count;
                        committed(sealed_count, envelopes);
                    }
                    Err(error) => {
                        outcome = Err(error);
                        break;
                    }
                }
            }
            // Stops the preparing thread at its next group.
            drop(prepared);
            if preparing.join().is_err() {
                return Err(
                    LocalStoreError::WriterFailed("the sealing thread panicked".into()).into(),
                );
            }
            outcome.map(|()| sealed_count)
        })
    }

    /// Seals up to `envelopes` envelopes' worth of the pending entries under `keys` (those
    /// still there) outside any transaction, after `head` (the store's when `None`) and from
    /// the writer's view as it stands: see [`Device::commit_seal_group`].
    fn prepare_seal_group(
        &self,
        keys: &mut std::iter::Peekable<impl Iterator<Item = Vec<u8>>>,
        envelopes: usize,
        head: Option<(u64, EnvelopeHash)>,
    ) -> Result<SealGroup> {
        let store = &self.inner.store;
        let head = match head {
            Some(head) => head,
            None => self.head()?,
        };
        let heads = self.merged_heads_with(|key| Ok(store.get(TreeName::Cursors, key)?))?;
        let mut group = SealGroup {
            head,
            heads,
            pending_keys: Vec::new(),
            envelopes: Vec::with_capacity(envelopes),
            plain: Vec::with_capacity(envelopes),
            last_hash: head.1,
        };
        let mut batch = PendingBatch::default();
        while group.envelopes.len() < envelopes {
            let full = match keys.next() {
                Some(key) => match store.get(TreeName::Pending, &key)? {
                    Some(plain) => batch.add(key, plain)?,
                    None => false,
                },
                None => true,
            };
            if full && !batch.keys.is_empty() {
                let batch = std::mem::take(&mut batch);
                let seq = head.0 + 1 + group.envelopes.len() as u64;
                let sealed = self.seal_envelope(
                    seq,
                    &group.last_hash,
                    &group.heads,
                    batch.payload()?,
                    PayloadKind::Operations,
                )?;
                group.last_hash = sealed.hash;
                // Sealed for the store here too, out of the transaction.
                let value =
                    store
                        .cipher()
                        .seal(TreeName::Outbox, &seq.to_be_bytes(), &sealed.bytes);
                group.envelopes.push((seq, value));
                group.plain.push(sealed.bytes);
                group.pending_keys.extend(batch.keys);
            }
            if keys.peek().is_none() && batch.keys.is_empty() {
                break;
            }
        }
        Ok(group)
    }

    /// Writes a group [`Device::prepare_seal_group`] sealed in one transaction, if the head
    /// and the writer's view are still the ones it was sealed from; otherwise (another process
    /// sharing the store sealed meanwhile) seals the group's entries still pending again in
    /// the transaction, as [`Device::seal_pending`] does. Returns what it wrote, with the
    /// group's envelope bytes when they are the ones written.
    fn commit_seal_group(&self, mut group: SealGroup) -> Result<GroupCommit> {
        // (envelopes written, whether they are the group as prepared)
        let (count, as_prepared) = self.inner.store.transaction(|tx| {
            self.check_no_newer_epoch(tx)?;
            let unchanged = Self::head_in(tx)? == group.head
                && self.merged_heads_with(|key| Ok(tx.get(TreeName::Cursors, key)?))?
                    == group.heads;
            if !unchanged {
                return self
                    .seal_keys_in(tx, std::mem::take(&mut group.pending_keys))
                    .map(|count| (count, false));
            }
            for key in &group.pending_keys {
                tx.remove(TreeName::Pending, key)?;
            }
            for (seq, value) in &group.envelopes {
                tx.put_sealed(TreeName::Outbox, &seq.to_be_bytes(), value)?;
            }
            if let Some((seq, _)) = group.envelopes.last() {
                let mut head = seq.to_be_bytes().to_vec();
                head.extend_from_slice(group.last_hash.as_bytes());
                tx.put(TreeName::Meta, meta::HEAD, &head)?;
            }
            Ok::<_, ClientError>((group.envelopes.len(), true))
        })?;
        let envelopes = match group.envelopes.first() {
            Some((first, _)) if as_prepared => Some((*first, group.plain)),
            _ => None,
        };
        Ok(GroupCommit { count, envelopes })
    }

    fn head(&self) -> Result<(u64, EnvelopeHash)> {
        Self::head_from(self.inner.store.get(TreeName::Meta, meta::HEAD)?)
    }

    fn head_in(tx: &StoreTxn<'_>) -> Result<(u64, EnvelopeHash)> {
        Self::head_from(tx.get(TreeName::Meta, meta::HEAD)?)
    }

    fn head_from(value: Option<Vec<u8>>) -> Result<(u64, EnvelopeHash)> {
        Ok(match value {
            Some(bytes) if bytes.len() == 40 => {
                let seq = u64::from_be_bytes(bytes[..8].try_into().unwrap_or_default());
                let hash = EnvelopeHash::from_bytes(bytes[8..].try_into().unwrap_or([0; 32]));
                (seq, hash)
            }
            _ => (0, EnvelopeHash::ZERO),
        })
    }

    /// Seals an encoded `OperationBatch` as this device's next envelope, into the outbox.
    pub(crate) fn seal_operations_payload(&self, payload: &[u8]) -> Result<()> {
        self.inner
            .store
            .transaction(|tx| self.seal_payload(tx, &[], payload.to_vec(), PayloadKind::Operations))
    }

    /// Seals one payload as this device's next envelope and moves it to the outbox,
    /// removing `pending_keys`, in `tx`: the head is read and advanced in the same
    /// transaction, so no other writer can seal the same seq.
    fn seal_payload(
        &self,
        tx: &StoreTxn<'_>,
        pending_keys: &[Vec<u8>],
        payload: Vec<u8>,
        kind: PayloadKind,
    ) -> Result<()> {
        self.check_no_newer_epoch(tx)?;
        let (last_seq, last_hash) = Self::head_in(tx)?;
        let seq = last_seq + 1;
        let heads = self.merged_heads_with(|key| Ok(tx.get(TreeName::Cursors, key)?))?;
        let sealed = self.seal_envelope(seq, &last_hash, &heads, payload, kind)?;
        let seq_key = seq.to_be_bytes();
        let mut head = seq_key.to_vec();
        head.extend_from_slice(sealed.hash.as_bytes());
        for key in pending_keys {
            tx.remove(TreeName::Pending, key)?;
        }
        tx.put(TreeName::Outbox, &seq_key, &sealed.bytes)?;
        tx.put(TreeName::Meta, meta::HEAD, &head)?;
        Ok(())
    }

    /// Seals `payload` as this device's envelope `seq` after `prev_hash`, with the writer's
    /// view stating the roster and `heads` (the merged heads, [`Device::merged_heads_with`]).
    fn seal_envelope(
        &self,
        seq: u64,
        prev_hash: &EnvelopeHash,
        heads: &[(DeviceId, u64)],
        mut payload: Vec<u8>,
        kind: PayloadKind,
    ) -> Result<envelope::SealedEnvelope> {
        let state = self.state();
        // Every payload states the roster this device writes under and how far it merged
        // every other stream, so receivers can tell what the relay holds back (§4).
        WriterView {
            roster_version: state.roster.version(),
            roster_hash: state.roster.hash(),
            heads: heads
                .iter()
                .filter(|(device, _)| state.roster.device(device).is_some())
                .copied()
                .collect(),
        }
        .append_to(&mut payload);
        // Always the roster's epoch, whose secret was confirmed against the roster.
        let number = state.roster.epoch();
        let content_key = state.epochs.content_key(number)?;
        Ok(envelope::seal(
            &self.inner.secrets.signing_key,
            &state.account_id,
            seq,
            number,
            &content_key,
            prev_hash,
            kind,
            &payload,
            &mut kith_protocol::keys::system_rng(),
        )?)
    }

    /// The highest seq this device merged of every other stream it holds a cursor for, read
    /// through `cursor` (in a transaction or from the store), sorted by device id.
    fn merged_heads_with(
        &self,
        cursor: impl Fn(&[u8]) -> Result<Option<Vec<u8>>>,
    ) -> Result<Vec<(DeviceId, u64)>> {
        let mut heads = Vec::new();
        for writer in self.writers()? {
            let Some(bytes) = cursor(writer.as_bytes())? else {
                continue;
            };
            if let Some(seq) = bytes
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .filter(|&seq| seq > 0)
            {
                heads.push((writer, seq));
            }
        }
        heads.sort();
        Ok(heads)
    }

    /// Pushes every outbox envelope; removes them once acknowledged. Idempotent: an envelope
    /// whose acknowledgement was lost is sent again and acknowledged again.
    ///
    /// Up to [`PUSHES_IN_FLIGHT`] pushes are in flight at once, their streams opened in seq
    /// order (the relay appends them in that order, docs/PROTOCOL.md §12); their answers are
    /// taken in the same order, so envelopes leave the outbox in order, and the first failure
    /// stops the rest (abandoned; the next sync sends whatever was not acknowledged again).
    pub(crate) async fn push_outbox(&self, connection: &RelayConnection) -> Result<usize> {
        if !self.has_unsent()? {
            return Ok(0);
        }
        self.push_sealed(connection, None).await
    }

    /// The outbox key of the first envelope the relay has not acknowledged: acknowledged
    /// envelopes stay in the outbox as the copies kept for healing (docs/PROTOCOL.md §13.1),
    /// so the envelopes to push are the outbox's from there on.
    pub(crate) fn first_unsent_key(&self) -> Result<[u8; 8]> {
        Ok(self.acked_seq()?.saturating_add(1).to_be_bytes())
    }

    /// Whether the outbox holds an envelope the relay has not acknowledged.
    pub(crate) fn has_unsent(&self) -> Result<bool> {
        let from = self.first_unsent_key()?;
        Ok(self
            .inner
            .store
            .scan_from(TreeName::Outbox, &from)
            .next()
            .transpose()?
            .is_some())
    }

    /// [`Device::push_outbox`], and with `sealing`, also every group it seals, each pushed as
    /// soon as its transaction committed (durably: acknowledged envelopes can never be sealed
    /// differently after a crash), until the sealing ended; then its error, if it failed.
    /// On a push failure, waits for the sealing to end before returning the failure.
    ///
    /// Envelopes are pushed in seq order from the first the relay has not acknowledged, each
    /// once: those of the groups the sealing handed over ([`SealedHandoff`]) from memory, the
    /// rest read from the outbox.
    pub(crate) async fn push_sealed(
        &self,
        connection: &RelayConnection,
        mut sealing: Option<Sealing>,
    ) -> Result<usize> {
        let pushed = self.push_while_sealing(connection, sealing.as_mut()).await;
        if let Some(sealing) = &sealing {
            sealing.stop_handing();
        }
        let sealed = match &mut sealing {
            Some(sealing) => sealing.finish().await.map(drop),
            None => Ok(()),
        };
        let pushed = pushed?;
        sealed?;
        Ok(pushed)
    }

    async fn push_while_sealing(
        &self,
        connection: &RelayConnection,
        mut sealing: Option<&mut Sealing>,
    ) -> Result<usize> {
        let store = &self.inner.store;
        store.flush().await?;
        // The seq pushed next: past what was sent.
        let mut next_seq = self.acked_seq()?.saturating_add(1);
        // The outbox read from `next_seq` on; `None` once envelopes were taken from memory
        // (it is then read again from where those end).
        let mut outbox = None;
        let mut in_flight = VecDeque::with_capacity(PUSHES_IN_FLIGHT);
        let mut pushed = 0;
        #[cfg(test)]
        let mut acks = 0usize;
        loop {
            while in_flight.len() < PUSHES_IN_FLIGHT {
                let (handed, held_from) = match sealing.as_deref_mut() {
                    Some(sealing) => sealing.take_handed(next_seq),
                    None => (Default::default(), None),
                };
                let (batch, seqs) = if handed.1.is_empty() {
                    let scan = outbox.get_or_insert_with(|| {
                        store
                            .scan_from(TreeName::Outbox, &next_seq.to_be_bytes())
                            .peekable()
                    });
                    next_push_batch(scan, held_from)?
                } else {
                    #[cfg(test)]
                    self.inner
                        .pushed_from_memory
                        .fetch_add(handed.1.len(), std::sync::atomic::Ordering::Relaxed);
                    outbox = None;
                    handed
                };
                let Some(&last_seq) = seqs.last() else {
                    if let Some(sealing) = sealing.as_deref_mut()
                        && sealing.sealed_more()
                    {
                        outbox = None;
                        continue;
                    }
                    break;
                };
                next_seq = last_seq + 1;
                let count = batch.len();
                let request = connection
                    .send(request::Kind::Push(proto::Push { envelopes: batch }))
                    .await?;
                in_flight.push_back((last_seq, count, request));
            }
            let Some((last_seq, count, request)) = in_flight.pop_front() else {
                match sealing.as_deref_mut() {
                    // Nothing in flight and nothing more sealed yet: wait for the next group.
                    Some(sealing) if !sealing.ended => {
                        sealing.next_commit().await;
                        continue;
                    }
                    _ => break,
                }
            };
            let answer = request.answer().await?;
            let response::Kind::PushAck(ack) = answer else {
                return Err(crate::net::NetError::Protocol("expected a push ack".into()).into());
            };
            if ack.last_seq < last_seq {
                return Err(crate::net::NetError::Protocol(format!(
                    "relay acknowledged seq {} of {}",
                    ack.last_seq, last_seq
                ))
                .into());
            }
            // Acknowledged envelopes are kept (until a compaction covers them), so that a relay
            // that loses them is restored byte for byte (docs/PROTOCOL.md §13.1): they stay in
            // the outbox where they were sealed, and `acked` moving past them is what marks
            // them sent. Neither sealed for the store nor written a second time.
            self.record_acked(last_seq)?;
            pushed += count;
            #[cfg(test)]
            {
                acks += 1;
                let fail_after = self
                    .inner
                    .push_fails_after_acks
                    .load(std::sync::atomic::Ordering::Relaxed);
                if acks == fail_after {
                    return Err(crate::net::NetError::Protocol(
                        "test: the connection was lost mid-push".into(),
                    )
                    .into());
                }
            }
        }
        Ok(pushed)
    }

    /// Test hook: seals pending operations into the outbox without pushing, and returns the
    /// outbox's envelopes not acknowledged yet, as a crash between sealing and pushing would
    /// leave them.
    #[doc(hidden)]
    pub fn seal_pending_for_tests(&self) -> Result<Vec<Vec<u8>>> {
        self.seal_pending()?;
        self.inner
            .store
            .scan_from(TreeName::Outbox, &self.first_unsent_key()?)
            .map(|item| {
                item.map(|(_, envelope)| envelope)
                    .map_err(ClientError::from)
            })
            .collect()
    }

    /// Test hook: the number of outbox envelopes the relay has not acknowledged (the outbox
    /// also keeps the acknowledged ones, for healing).
    #[doc(hidden)]
    pub fn unsent_for_tests(&self) -> Result<usize> {
        // Keys only: a test polls this while a sync runs, and opening every envelope (up to
        // 2 MiB each) made each poll slower than the pushes it watches.
        let from = self.first_unsent_key()?;
        Ok(self
            .inner
            .store
            .keys(TreeName::Outbox)?
            .iter()
            .filter(|key| key.as_slice() >= from.as_slice())
            .count())
    }

    /// The stream position this device has verified for `writer`: (seq, hash).
    pub(crate) fn cursor_of(&self, writer: &DeviceId) -> Result<Option<(u64, EnvelopeHash)>> {
        Ok(self
            .inner
            .store
            .get(TreeName::Cursors, writer.as_bytes())?
            .and_then(|bytes| {
                let seq = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
                let hash = EnvelopeHash::from_bytes(bytes.get(8..40)?.try_into().ok()?);
                Some((seq, hash))
            }))
    }

    fn writers(&self) -> Result<BTreeSet<DeviceId>> {
        let state = self.state();
        let mut writers: BTreeSet<DeviceId> =
            state.roster.devices().map(|d| d.device_id()).collect();
        writers.extend(state.roster.removed().map(|r| r.device_id()));
        writers.remove(&self.inner.device_id);
        Ok(writers)
    }

    /// Pulls every other device's stream and merges it, counting into `report`. Returns once
    /// every page write it started has landed or failed, also when it fails: the pages written
    /// before a failure have their identities settled in `identities` by then.
    async fn pull(
        &self,
        connection: &RelayConnection,
        report: &mut SyncReport,
        identities: &std::sync::Arc<std::sync::Mutex<PulledIdentities>>,
    ) -> Result<()> {
        // Each page's records and cursors are written while the next page is fetched, opened
        // and merged.
        let mut pipeline = RecordPipeline::lock(&self.inner.records_lock, &self.inner.store).await;
        let pulled = self
            .pull_pages(connection, report, identities, &mut pipeline)
            .await;
        if pulled.is_err() {
            // The pages being written when the pull failed land (or fail: none lands after
            // a failed one), so that the caller links what they hold.
            let _ = pipeline.wait().await;
        }
        pulled
    }

    /// [`Device::pull`]'s pages, written through `pipeline`.
    async fn pull_pages(
        &self,
        connection: &RelayConnection,
        report: &mut SyncReport,
        identities: &std::sync::Arc<std::sync::Mutex<PulledIdentities>>,
        pipeline: &mut RecordPipeline,
    ) -> Result<()> {
        let mut verifiers: HashMap<DeviceId, StreamVerifier> = HashMap::new();
        // Streams with nothing more to pull: removed devices verified up to their final_seq,
        // or that a relay served past it, and streams stopped at an envelope in a newer format
        // (for this sync: an update may read it). Their cursor asks for nothing (`u64::MAX`), so a
        // relay that serves past the end cannot make one stream hold up the others.
        let mut ended: BTreeSet<DeviceId> = BTreeSet::new();
        for writer in self.writers()? {
            let verifier = match self.cursor_of(&writer)? {
                Some((seq, hash)) => StreamVerifier::resume(writer, seq, hash),
                None => StreamVerifier::new(writer),
            };
            if self
                .final_seq_of(&writer)
                .is_some_and(|final_seq| final_seq <= verifier.last_seq())
            {
                ended.insert(writer);
            }
            verifiers.insert(writer, verifier);
        }
        let mut refreshed_keys = false;
        // What the writers pulled in this sync state they held (§4): the newest roster one
        // names that this device does not hold, and the highest seq any of them merged of each
        // stream (with the first writer that vouched for it).
        let mut roster_named: Option<(DeviceId, u64, [u8; 32])> = None;
        let mut refreshed_for_roster = false;
        let mut vouched: BTreeMap<DeviceId, (u64, DeviceId)> = BTreeMap::new();
        let mut repulled = false;
        let mut skews = BTreeMap::new();
        let mut moves = Vec::new();
        // A device's first sync (its store holds no record yet) reads nothing for the records
        // it has not merged before: they are new (each write still joins with what another
        // process may have written meanwhile).
        pipeline.start_on_empty_store()?;
        // A pull of more than one page gets the store's settings for large writes (larger page
        // caches, fewer checkpoints) until it ends: each page's transaction inserts thousands
        // of records at random places of the record index, and with the usual settings every
        // commit was checkpointed, writing most of the index again (BENCHMARKS.md, "B's pull
        // (issue 18), eighth session").
        let mut bulk = None;
        // The next page is asked for as soon as a page arrives, from where that page ends,
        // and used only if the page verified and merged exactly as served (the cursors then
        // are the ones it was asked with); otherwise it is abandoned and asked for again.
        let mut prefetched: Option<(BTreeMap<DeviceId, u64>, crate::net::InFlight)> = None;
        // Kept for the whole pull (see `PageDecoder`).
        let mut decoder = PageDecoder::default();
        #[cfg(test)]
        let mut pages_submitted = 0usize;
        'pull: loop {
            let mut cursors: BTreeMap<DeviceId, u64> = verifiers
                .iter()
                .map(|(device, v)| {
                    let after = if ended.contains(device) {
                        u64::MAX
                    } else {
                        v.last_seq()
                    };
                    (*device, after)
                })
                .collect();
            // This device's own stream is never pulled (a device absent from the cursors would
            // be served from seq 1, filling pages with envelopes it skips).
            cursors.insert(self.inner.device_id, u64::MAX);
            let answer = match prefetched.take() {
                Some((asked, request)) if asked == cursors => request.answer().await?,
                _ => connection.request(pull_request(&cursors)).await?,
            };
            let response::Kind::Pull(page) = answer else {
                return Err(crate::net::NetError::Protocol("expected a pull page".into()).into());
            };
            if page.more {
                if bulk.is_none() {
                    bulk = Some(self.inner.store.bulk()?);
                }
                let mut next = cursors.clone();
                for stored in &page.envelopes {
                    if let Ok(device) = DeviceId::from_slice(&stored.device_id) {
                        let after = next.entry(device).or_insert(0);
                        if *after != u64::MAX {
                            *after = (*after).max(stored.seq);
                        }
                    }
                }
                let request = connection.send(pull_request(&next)).await?;
                prefetched = Some((next, request));
            }
            let first_seqs: HashMap<DeviceId, u64> = page
                .streams
                .iter()
                .filter_map(|s| Some((DeviceId::from_slice(&s.device_id).ok()?, s.first_seq)))
                .collect();
            let ended_before = ended.len();
            let mut parsed = Vec::with_capacity(page.envelopes.len());
            // Where a stream stopped at a newer format in this page: nothing of it from there on
            // can be checked, and nothing before it is held back.
            let mut stopped: HashMap<DeviceId, u64> = HashMap::new();
            for stored in &page.envelopes {
                let envelope = match ParsedEnvelope::decode(&stored.envelope) {
                    Err(EnvelopeError::WrongFormatVersion { version }) => {
                        let newer = self.newer_format(stored, version)?;
                        tracing::warn!(
                            seq = newer.seq,
                            version,
                            "an envelope in a newer format stops its writer's stream; \
                             update Kith to read it"
                        );
                        ended.insert(newer.device);
                        let at = stopped.entry(newer.device).or_insert(newer.seq);
                        *at = (*at).min(newer.seq);
                        if !report.newer_format.iter().any(|n| n.device == newer.device) {
                            report.newer_format.push(newer);
                        }
                        continue;
                    }
                    other => other?,
                };
                let writer = envelope.header().device_id;
                if writer == self.inner.device_id {
                    continue;
                }
                let seq = envelope.header().seq;
                if let Some(final_seq) = self.final_seq_of(&writer)
                    && seq > final_seq
                {
                    ended.insert(writer);
                    if !report.past_end.iter().any(|p| p.device == writer) {
                        tracing::warn!(
                            seq,
                            final_seq,
                            "the relay served a removed device's envelope past its final seq; \
                             that stream ends there"
                        );
                        report.past_end.push(PastEnd {
                            device: writer,
                            final_seq,
                            seq,
                        });
                    }
                    continue;
                }
                parsed.push(envelope);
            }
            parsed.retain(|e| {
                stopped
                    .get(&e.header().device_id)
                    .is_none_or(|&at| e.header().seq < at)
            });
            parsed.sort_by_key(|e| (e.header().device_id, e.header().seq));
            if parsed.is_empty() {
                if page.more && ended.len() > ended_before {
                    // Everything served was past a stream's end; that stream is no longer
                    // asked for, so the next page moves on.
                    continue;
                }
                if self.ask_again_for_vouched(&vouched, &verifiers, &ended, &mut repulled) {
                    prefetched = None;
                    continue 'pull;
                }
                break;
            }
            if let Some((device, epoch)) = self.newer_epoch_evidence(&parsed)? {
                // The roster may have changed since it was fetched: fetch it once more.
                if !refreshed_keys {
                    refreshed_keys = true;
                    self.refresh_roster(connection).await?;
                    continue;
                }
                let mut evidence = device.as_bytes().to_vec();
                evidence.extend_from_slice(&epoch.to_be_bytes());
                self.inner
                    .store
                    .put(TreeName::Meta, meta::NEWER_EPOCH_SEEN, &evidence)?;
                self.inner.store.flush().await?;
                tracing::warn!(
                    epoch,
                    "a device signed an envelope in a later epoch than the roster served; \
                     the relay holds a newer roster back"
                );
                return Err(ClientError::NewerRosterWithheld {
                    device,
                    epoch,
                    roster_epoch: self.state().roster.epoch(),
                });
            }
            let opened = {
                let result = {
                    let state = self.state();
                    envelope::open_batch(&parsed, &state.roster, &state.epochs)
                };
                match result {
                    Err(EnvelopeError::UnknownEpoch { .. }) if !refreshed_keys => {
                        refreshed_keys = true;
                        self.refresh_roster(connection).await?;
                        continue;
                    }
                    other => other?,
                }
            };
            // Chain checks after signatures: the hashes are only meaningful once authentic.
            let mut new_verifiers = verifiers.clone();
            for (envelope, payload) in parsed.iter().zip(&opened) {
                let writer = envelope.header().device_id;
                let verifier = new_verifiers
                    .entry(writer)
                    .or_insert_with(|| StreamVerifier::new(writer));
                let first_seq = first_seqs.get(&writer).copied().unwrap_or(0);
                if envelope.header().seq > verifier.last_seq() + 1
                    && first_seq == envelope.header().seq
                {
                    // A jump lands only on a snapshot's first envelope, as its signed payload
                    // states it (§9): a relay cannot cut a snapshot.
                    let starts_at = (envelope.header().kind == PayloadKind::Snapshot)
                        .then(|| kith_protocol::stream::snapshot_first_seq(payload))
                        .flatten();
                    verifier.check_after_truncation(envelope, first_seq, starts_at)?;
                } else {
                    verifier.check(envelope)?;
                }
            }
            self.read_writer_views(&parsed, &opened, &mut roster_named, &mut vouched)?;
            let (touched, page_changed) = self.merge_payloads(
                pipeline,
                &mut decoder,
                &parsed,
                opened,
                &mut skews,
                &mut moves,
            )?;
            // Cursors are written with the records they cover, in one transaction (were they
            // not, a crash in between would pull the page again, and merging it again would
            // change nothing).
            let cursors = new_verifiers.clone();
            let device = self.clone();
            let identities = std::sync::Arc::clone(identities);
            let sealer = self.clone();
            pipeline
                .submit_prepared(
                    touched,
                    // Beside the previous page's write: each record encoded and sealed for the
                    // store, and its identities blinded (the writer's thread did this, and was
                    // the pull's critical path).
                    move |records| {
                        let blinded =
                            PulledIdentities::blind_page(sealer.inner.store.cipher(), records);
                        Ok((sealer.seal_records(records), blinded))
                    },
                    move |records, versions, (sealed, blinded)| {
                        // The identity rule for the page, while its states are here, on the
                        // writer's thread (the next page is merged meanwhile), its index shards
                        // read in the page's transaction. Pages are written in order, so a later
                        // state of a record is settled after an earlier one.
                        let mut identities = identities
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        device.inner.store.transaction(|tx| {
                            crate::pipeline::write_records_in(
                                tx,
                                records
                                    .iter()
                                    .zip(&sealed)
                                    .map(|((id, state), (_, sealed))| {
                                        (id, state, Some(&sealed[..]))
                                    }),
                                // Records read from the store or an earlier page and written
                                // by no one since are replaced without being read again.
                                Some(versions),
                            )?;
                            device.persist_cursors(tx, &cursors)?;
                            identities.settle_page(tx, records, &blinded)
                        })
                    },
                )
                .await?;
            verifiers = new_verifiers;
            report.pulled += parsed.len();
            #[cfg(test)]
            {
                pages_submitted += 1;
                let fail_after = self
                    .inner
                    .pull_fails_after_pages
                    .load(std::sync::atomic::Ordering::Relaxed);
                if pages_submitted == fail_after {
                    return Err(crate::net::NetError::Protocol(
                        "test: the connection was lost mid-pull".into(),
                    )
                    .into());
                }
            }
            report.changed.extend(page_changed);
            if let Some((device, version, hash)) = roster_named
                && !roster_covers(&self.state().roster, version, &hash)
            {
                // A writer wrote under a roster this device does not hold. It may have been
                // stored since this sync fetched the roster: fetch it once more.
                if !refreshed_for_roster {
                    refreshed_for_roster = true;
                    self.refresh_roster(connection).await?;
                }
                if !roster_covers(&self.state().roster, version, &hash) {
                    pipeline.wait().await?;
                    let mut evidence = device.as_bytes().to_vec();
                    evidence.extend_from_slice(&version.to_be_bytes());
                    evidence.extend_from_slice(&hash);
                    self.inner
                        .store
                        .put(TreeName::Meta, meta::NEWER_ROSTER_SEEN, &evidence)?;
                    self.inner.store.flush().await?;
                    tracing::warn!(
                        version,
                        "a device wrote under a roster the relay does not serve; the relay \
                         holds a roster back"
                    );
                    return Err(ClientError::RosterWithheld {
                        device,
                        version,
                        roster_version: self.state().roster.version(),
                    });
                }
            }
            if !page.more {
                if self.ask_again_for_vouched(&vouched, &verifiers, &ended, &mut repulled) {
                    prefetched = None;
                    continue 'pull;
                }
                break;
            }
        }
        report.withheld = self.withheld_streams(&vouched, &verifiers, &ended);
        for withheld in &report.withheld {
            tracing::warn!(
                served = withheld.served,
                vouched = withheld.vouched,
                "the relay withholds envelopes another device merged"
            );
        }
        pipeline.wait().await?;
        drop(bulk);
        let written = pipeline.write_counts();
        tracing::debug!(
            inserted = written.inserted,
            in_place = written.in_place,
            joined = written.joined,
            "pulled records written"
        );
        #[cfg(test)]
        {
            *self
                .inner
                .pulled_writes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = written;
        }
        report.relay_moved = self.relay_move_to_follow(moves);
        // What the merged clocks moved the clock to survives a restart (§8).
        self.persist_clock()?;
        self.persist_clock_skews(&skews)?;
        self.inner.store.flush().await?;
        Ok(())
    }

    /// Reads the writer's view of every opened payload (§4): the newest roster a present
    /// writer names that this device does not hold goes to `roster_named`, and the highest seq
    /// of each stream any writer vouches it merged to `vouched`.
    fn read_writer_views(
        &self,
        parsed: &[ParsedEnvelope],
        opened: &[Vec<u8>],
        roster_named: &mut Option<(DeviceId, u64, [u8; 32])>,
        vouched: &mut BTreeMap<DeviceId, (u64, DeviceId)>,
    ) -> Result<()> {
        let state = self.state();
        for (envelope, payload) in parsed.iter().zip(opened) {
            let header = envelope.header();
            let view = match WriterView::read(payload) {
                Ok(Some(view)) => view,
                Ok(None) => continue,
                Err(source) => {
                    return Err(ClientError::WriterView {
                        device: header.device_id,
                        seq: header.seq,
                        source,
                    });
                }
            };
            if state.roster.device(&header.device_id).is_some()
                && !roster_covers(&state.roster, view.roster_version, &view.roster_hash)
                && roster_named
                    .as_ref()
                    .is_none_or(|(_, version, _)| view.roster_version > *version)
            {
                *roster_named = Some((header.device_id, view.roster_version, view.roster_hash));
            }
            for (device, seq) in view.heads {
                let entry = vouched.entry(device).or_insert((seq, header.device_id));
                if seq > entry.0 {
                    *entry = (seq, header.device_id);
                }
            }
        }
        Ok(())
    }

    /// The streams of present devices that some writer vouched it merged further than this
    /// device verified (streams stopped in this sync, and this device's own, aside).
    fn withheld_streams(
        &self,
        vouched: &BTreeMap<DeviceId, (u64, DeviceId)>,
        verifiers: &HashMap<DeviceId, StreamVerifier>,
        ended: &BTreeSet<DeviceId>,
    ) -> Vec<Withheld> {
        let state = self.state();
        vouched
            .iter()
            .filter(|(device, _)| {
                **device != self.inner.device_id
                    && !ended.contains(*device)
                    && state.roster.device(device).is_some()
            })
            .filter_map(|(device, &(seq, by))| {
                let served = verifiers.get(device).map_or(0, StreamVerifier::last_seq);
                (seq > served).then_some(Withheld {
                    device: *device,
                    served,
                    vouched: seq,
                    by,
                })
            })
            .collect()
    }

    /// After a pull reached the relay's head: whether to ask once more, because a writer
    /// vouched for envelopes not served yet. The writer pushed what vouches for them after
    /// they were stored, so a relay that follows the protocol serves them now; the first pull
    /// may only have passed their stream before they arrived.
    fn ask_again_for_vouched(
        &self,
        vouched: &BTreeMap<DeviceId, (u64, DeviceId)>,
        verifiers: &HashMap<DeviceId, StreamVerifier>,
        ended: &BTreeSet<DeviceId>,
        repulled: &mut bool,
    ) -> bool {
        if *repulled || self.withheld_streams(vouched, verifiers, ended).is_empty() {
            return false;
        }
        *repulled = true;
        true
    }

    /// What to report of an envelope the relay served whose header has a `format_version`
    /// this release does not know. The header cannot be read, so the writer and seq are the
    /// relay's; they must name a stream this device pulls (a relay could stop any stream by
    /// withholding it anyway, so trusting it here gives it nothing new).
    fn newer_format(&self, stored: &proto::StoredEnvelope, version: u32) -> Result<NewerFormat> {
        let device = DeviceId::from_slice(&stored.device_id)
            .ok()
            .filter(|device| self.writers().is_ok_and(|w| w.contains(device)))
            .ok_or(EnvelopeError::WrongFormatVersion { version })?;
        Ok(NewerFormat {
            device,
            seq: stored.seq,
            version,
        })
    }

    /// The last seq the roster admits of `writer`, if it was removed.
    fn final_seq_of(&self, writer: &DeviceId) -> Option<u64> {
        self.state()
            .roster
            .removed_device(writer)
            .map(|gone| gone.final_seq())
    }

    fn persist_cursors(
        &self,
        tx: &StoreTxn<'_>,
        verifiers: &HashMap<DeviceId, StreamVerifier>,
    ) -> Result<()> {
        for (device, verifier) in verifiers {
            if verifier.last_seq() == 0 {
                continue;
            }
            let mut value = verifier.last_seq().to_be_bytes().to_vec();
            value.extend_from_slice(verifier.last_hash().as_bytes());
            tx.put(TreeName::Cursors, device.as_bytes(), &value)?;
        }
        Ok(())
    }

    /// Decodes opened payloads and merges them into the records; returns the records that
    /// changed (to be written) and their ids. Every merged clock is observed (within the skew
    /// bound), and each writer's stated wall time is measured against this device's into
    /// `skews`.
    fn merge_payloads(
        &self,
        pipeline: &mut RecordPipeline,
        decoder: &mut PageDecoder,
        parsed: &[ParsedEnvelope],
        payloads: Vec<Vec<u8>>,
        skews: &mut BTreeMap<DeviceId, ClockSkew>,
        moves: &mut Vec<(DeviceId, proto::RelayMoved)>,
    ) -> Result<(Records, BTreeSet<RecordId>)> {
        let mut touched: Records = BTreeMap::new();
        let mut changed = BTreeSet::new();
        let now = now_ms();
        // Every payload is decoded first, so that the records the page names are read from the
        // store in one read (`RecordPipeline::load_many`) rather than one point read each as
        // they are met; they are then merged in the same order as before. The first payload
        // that does not decode, in page order, fails the page.
        let mut decoded = Vec::with_capacity(payloads.len());
        let mut ids = Vec::new();
        let kinds: Vec<PayloadKind> = parsed.iter().map(|e| e.header().kind).collect();
        for payload in decoder.decode(&kinds, payloads) {
            let payload = payload?;
            match &payload {
                Decoded::Operations(parts) => ids.extend(parts.0.iter().map(Operation::record)),
                Decoded::Snapshot(snapshot) => ids.extend(snapshot.records().map(RecordState::id)),
                Decoded::Nothing => {}
            }
            decoded.push(payload);
        }
        pipeline.load_many(&mut touched, ids)?;
        for (envelope, payload) in parsed.iter().zip(decoded) {
            match payload {
                Decoded::Operations((ops, written_at, moved)) => {
                    if let Some(moved) = moved {
                        moves.push((envelope.header().device_id, moved));
                    }
                    if let Some(written_at) = written_at {
                        // Envelopes are in stream order: the last one measured is the latest.
                        let skew = ClockSkew::measure(written_at, now);
                        skews.insert(envelope.header().device_id, skew);
                    }
                    for op in ops {
                        self.observe_clock(&op.clock(), now);
                        let record = op.record();
                        let state = pipeline.load(&mut touched, record)?;
                        // Moved in: the decoded operation is not used again.
                        if state.apply_owned(op) {
                            changed.insert(record);
                        }
                    }
                }
                Decoded::Snapshot(snapshot) => {
                    for incoming in snapshot.records() {
                        if let Some(latest) = incoming.latest_clock() {
                            self.observe_clock(&latest, now);
                        }
                        let state = pipeline.load(&mut touched, incoming.id())?;
                        if state.merge(incoming) {
                            changed.insert(incoming.id());
                        }
                    }
                }
                Decoded::Nothing => {}
            }
        }
        touched.retain(|id, _| changed.contains(id));
        Ok((touched, changed))
    }

    pub(crate) fn loaded<'a>(
        &self,
        touched: &'a mut BTreeMap<RecordId, RecordState>,
        id: RecordId,
    ) -> Result<&'a mut RecordState> {
        Ok(match touched.entry(id) {
            std::collections::btree_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::btree_map::Entry::Vacant(entry) => entry.insert(
                self.load_record(&id)?
                    .unwrap_or_else(|| RecordState::new(id)),
            ),
        })
    }

    /// Reads one record's merged state.
    pub(crate) fn load_record(&self, id: &RecordId) -> Result<Option<RecordState>> {
        crate::pipeline::read_record(&self.inner.store, id)
    }

    /// Keeps a subscription open and syncs whenever another device pushes, or when another
    /// process sharing this device's store (a CLI command beside a watcher, an app beside its
    /// extension) queued local changes, sending each sync's report to `changes`. Returns when
    /// the receiver is dropped or on a permanent error; reconnects with backoff after
    /// transient ones.
    pub async fn watch(&self, changes: tokio::sync::mpsc::Sender<SyncReport>) -> Result<()> {
        let mut delay = Duration::from_millis(500);
        loop {
            let report = match self.sync().await {
                Ok(report) => report,
                Err(e) if e.is_transient() => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                    continue;
                }
                Err(e) => return Err(e),
            };
            if changes.send(report).await.is_err() {
                return Ok(());
            }
            let subscription = {
                let mut slot = self.inner.connection.lock().await;
                match self.connection(&mut slot).await {
                    Ok(connection) => connection.subscribe().await,
                    Err(e) => return Err(e),
                }
            };
            let subscription = match subscription {
                Ok(s) => s,
                Err(e) if e.is_transient() => {
                    *self.inner.connection.lock().await = None;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            delay = Duration::from_millis(500);
            // Notifications are read by their own task (a read cut off half-way would lose
            // the stream's framing), so waiting for one can be combined with the local check.
            let (notes, mut notified) = tokio::sync::mpsc::channel(1);
            let reader = tokio::spawn(forward_notifications(subscription, notes));
            let _stop_reader = AbortOnDrop(reader);
            let mut local = tokio::time::interval(LOCAL_CHANGES_POLL);
            local.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut seen_version = None;
            // A push between the sync above and the subscription has no notification of its
            // own: one sync now that the subscription is open catches it.
            let mut catch_up = true;
            loop {
                let wake = if std::mem::take(&mut catch_up) {
                    true
                } else {
                    tokio::select! {
                    note = notified.recv() => note.is_some(),
                    _ = local.tick() => {
                        if !self.local_changes_waiting(&mut seen_version)? {
                            continue;
                        }
                        true
                    }
                    }
                };
                if !wake {
                    // The relay closed the subscription or the connection failed.
                    *self.inner.connection.lock().await = None;
                    break;
                }
                match self.sync().await {
                    Ok(report) => {
                        // Followed the account to another relay: subscribe there.
                        let moved = report.relay_moved.is_some();
                        if changes.send(report).await.is_err() {
                            return Ok(());
                        }
                        if moved {
                            break;
                        }
                    }
                    Err(e) if e.is_transient() => break,
                    Err(e) => return Err(e),
                }
            }
        }
    }

    /// Whether another process committed to the store since the last call and left
    /// operations to push. Costs one `data_version` read when nothing changed.
    fn local_changes_waiting(&self, seen_version: &mut Option<i64>) -> Result<bool> {
        let store = &self.inner.store;
        let version = store.data_version()?;
        if *seen_version == Some(version) {
            return Ok(false);
        }
        *seen_version = Some(version);
        Ok(!store.is_empty(TreeName::Pending)? || self.has_unsent()?)
    }

    /// Compaction: writes this device's full merged state as snapshot envelopes and asks the
    /// relay to drop this device's stream before them, so the relay's storage stays
    /// proportional to the live contacts, not to the history of edits.
    pub async fn compact(&self) -> Result<CompactReport> {
        self.sync().await?;
        let mut slot = self.inner.connection.lock().await;
        let connection = self.connection(&mut slot).await?.clone();
        let usage_before = usage(&connection).await?;
        let (last_own, _) = self.head()?;
        let first_seq = last_own + 1;
        let covers = self.snapshot_positions(last_own)?;
        let positions: Vec<proto::StreamPosition> = covers
            .iter()
            .map(|(device, seq)| proto::StreamPosition {
                device_id: device.as_bytes().to_vec(),
                seq: *seq,
            })
            .collect();
        let envelopes = self.seal_full_snapshot(&positions, first_seq)?;
        self.push_outbox(&connection).await?;
        expect_ok(
            connection
                .request(request::Kind::TruncateStream(proto::TruncateStream {
                    before_seq: first_seq,
                }))
                .await?,
        )?;
        self.forget_sent_before(first_seq)?;
        let usage_after = usage(&connection).await?;
        Ok(CompactReport {
            snapshot_envelopes: envelopes,
            relay_bytes_before: usage_before.bytes_used,
            relay_bytes_after: usage_after.bytes_used,
            covers,
        })
    }

    /// Seals this device's whole merged state as snapshot envelopes into the outbox (as many
    /// as needed, each at most [`SNAPSHOT_BYTES`] of records, the first at `first_seq`); returns
    /// how many.
    pub(crate) fn seal_full_snapshot(
        &self,
        positions: &[proto::StreamPosition],
        first_seq: u64,
    ) -> Result<usize> {
        let mut chunk = Vec::new();
        let mut chunk_bytes = 0usize;
        let mut envelopes = 0;
        for item in self.inner.store.scan(TreeName::Records) {
            let (_, plain) = item?;
            let wire = proto::RecordState::decode(plain.as_slice()).map_err(|_| {
                LocalStoreError::Corrupt {
                    tree: "records",
                    reason: "undecodable record".into(),
                }
            })?;
            chunk_bytes += plain.len();
            chunk.push(wire);
            if chunk_bytes >= SNAPSHOT_BYTES {
                chunk_bytes = 0;
                self.seal_snapshot(std::mem::take(&mut chunk), positions, first_seq)?;
                envelopes += 1;
            }
        }
        if !chunk.is_empty() || envelopes == 0 {
            self.seal_snapshot(chunk, positions, first_seq)?;
            envelopes += 1;
        }
        Ok(envelopes)
    }

    /// After the relay truncated this device's stream before `first_seq` (a snapshot starts
    /// there): the envelopes kept for re-upload before it are no longer needed.
    pub(crate) fn forget_sent_before(&self, first_seq: u64) -> Result<()> {
        Ok(self.inner.store.transaction(|tx| {
            // The acknowledged envelopes kept in the outbox (the copies of this release) ...
            let acked = crate::heal::read_u64(tx.get(TreeName::Meta, meta::ACKED)?);
            for key in tx.keys(TreeName::Outbox)? {
                let seq = u64::from_be_bytes(key.as_slice().try_into().unwrap_or([0xff; 8]));
                if seq >= first_seq || seq > acked {
                    break;
                }
                tx.remove(TreeName::Outbox, &key)?;
            }
            // ... and those moved to `sent/<seq>` by earlier releases.
            for key in tx.keys(TreeName::Meta)? {
                let Some(seq) = key
                    .strip_prefix(meta::SENT_PREFIX)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(u64::from_be_bytes)
                else {
                    continue;
                };
                if seq < first_seq {
                    tx.remove(TreeName::Meta, &key)?;
                }
            }
            tx.put(TreeName::Meta, meta::SNAPSHOT_AT, &first_seq.to_be_bytes())
        })?)
    }

    /// Seals a snapshot of everything this device holds after the envelopes in its outbox
    /// (which it covers), for a relay that lost envelopes this device no longer keeps; returns
    /// its first seq and envelope count.
    pub(crate) fn seal_full_snapshot_after_outbox(&self) -> Result<(u64, usize)> {
        let (last_own, _) = self.head()?;
        let positions: Vec<proto::StreamPosition> = self
            .snapshot_positions(last_own)?
            .iter()
            .map(|(device, seq)| proto::StreamPosition {
                device_id: device.as_bytes().to_vec(),
                seq: *seq,
            })
            .collect();
        let envelopes = self.seal_full_snapshot(&positions, last_own + 1)?;
        Ok((last_own + 1, envelopes))
    }

    /// The stream positions a snapshot taken now covers: this device's own stream up to
    /// `last_own`, and every other stream up to this device's verified cursor for it (streams
    /// it has merged nothing of are left out). Sorted by device id.
    fn snapshot_positions(&self, last_own: u64) -> Result<Vec<(DeviceId, u64)>> {
        let mut covers = Vec::new();
        if last_own > 0 {
            covers.push((self.inner.device_id, last_own));
        }
        for writer in self.writers()? {
            if let Some((seq, _)) = self.cursor_of(&writer)? {
                covers.push((writer, seq));
            }
        }
        covers.sort();
        Ok(covers)
    }

    fn seal_snapshot(
        &self,
        records: Vec<proto::RecordState>,
        positions: &[proto::StreamPosition],
        first_seq: u64,
    ) -> Result<()> {
        // Every envelope of the snapshot names its first one, so a receiver starts a truncated
        // stream only there (§9).
        let snapshot = proto::Snapshot {
            records,
            positions: positions.to_vec(),
            first_seq,
            // Added when sealed, like every payload's (§4).
            writer_view: None,
        };
        let payload = snapshot.encode_to_vec();
        self.inner
            .store
            .transaction(|tx| self.seal_payload(tx, &[], payload, PayloadKind::Snapshot))
    }

    /// The relay's usage figures for this account.
    pub async fn usage(&self) -> Result<proto::Usage> {
        let mut slot = self.inner.connection.lock().await;
        let connection = self.connection(&mut slot).await?.clone();
        usage(&connection).await
    }
}

/// Whether `roster` is the roster a writer named (`version`, `hash`) or a later one.
fn roster_covers(roster: &VerifiedRoster, version: u64, hash: &[u8; 32]) -> bool {
    roster.version() > version || (roster.version() == version && roster.hash() == *hash)
}

/// How often a watcher checks whether another process sharing its store queued changes.
const LOCAL_CHANGES_POLL: Duration = Duration::from_millis(250);

/// Sends `()` for each notification of `subscription`; returns (dropping `notes`) when the
/// subscription ends or fails, or when nobody listens any more.
async fn forward_notifications(
    mut subscription: crate::net::Subscription,
    notes: tokio::sync::mpsc::Sender<()>,
) {
    while let Ok(Some(_note)) = subscription.next().await {
        // A full channel already holds a wake-up: one sync covers both.
        if let Err(tokio::sync::mpsc::error::TrySendError::Closed(())) = notes.try_send(()) {
            return;
        }
    }
}

/// Aborts a task when dropped (the watcher's notification reader, whatever way the watcher
/// leaves its loop).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A pull of the page after `cursors` (one per stream, `u64::MAX` for a stream not wanted).
fn pull_request(cursors: &BTreeMap<DeviceId, u64>) -> request::Kind {
    request::Kind::Pull(proto::Pull {
        cursors: cursors
            .iter()
            .map(|(device, after)| proto::Cursor {
                device_id: device.as_bytes().to_vec(),
                after_seq: *after,
            })
            .collect(),
        max_envelopes: ENVELOPES_PER_PULL,
        max_bytes: 0,
    })
}

/// The next push's envelopes from the outbox scan, bounded by [`ENVELOPES_PER_PUSH`] and
/// [`BYTES_PER_PUSH`] (at least one envelope), and their seqs: empty at the end. With
/// `until`, none from that seq on (the pusher holds those in memory).
fn next_push_batch(
    outbox: &mut std::iter::Peekable<
        impl Iterator<Item = std::result::Result<crate::store::Entry, crate::store::LocalStoreError>>,
    >,
    until: Option<u64>,
) -> Result<PushBatch> {
    let mut batch = Vec::new();
    let mut seqs = Vec::new();
    let mut batch_bytes = 0;
    let until = until.map(u64::to_be_bytes);
    while let Some(item) = outbox.peek() {
        // Stay well inside the relay's frame limit (4 MiB by default).
        let fits = match item {
            Ok((key, envelope)) => {
                until.is_none_or(|until| key.as_slice() < until.as_slice())
                    && (batch.is_empty()
                        || (batch.len() < ENVELOPES_PER_PUSH
                            && batch_bytes + envelope.len() <= BYTES_PER_PUSH))
            }
            Err(_) => true,
        };
        if !fits {
            break;
        }
        let Some(item) = outbox.next() else { break };
        let (key, envelope) = item?;
        batch_bytes += envelope.len();
        batch.push(envelope);
        seqs.push(u64::from_be_bytes(
            key.as_slice().try_into().unwrap_or_default(),
        ));
    }
    Ok((batch, seqs))
}

pub(crate) async fn usage(connection: &RelayConnection) -> Result<proto::Usage> {
    match connection
        .request(request::Kind::GetUsage(proto::GetUsage {}))
        .await?
    {
        response::Kind::Usage(usage) => Ok(usage),
        _ => Err(crate::net::NetError::Protocol("expected usage".into()).into()),
    }
}

/// What a compaction did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactReport {
    /// Snapshot envelopes written.
    pub snapshot_envelopes: usize,
    /// The account's bytes on the relay before.
    pub relay_bytes_before: u64,
    /// The account's bytes on the relay after.
    pub relay_bytes_after: u64,
    /// The stream positions the snapshot covers, sorted by device: this device's own stream
    /// up to the envelope before the snapshot, and each other device's stream up to what this
    /// device had verified and merged. The snapshot carries them too (docs/PROTOCOL.md §9).
    pub covers: Vec<(DeviceId, u64)>,
}

#[cfg(test)]
pub(crate) mod tests {
    use kith_protocol::hlc::Hlc;
    use kith_protocol::record::{FieldKey, FieldWrite, Operation};

    use super::*;
    use crate::ContactFields;

    /// A relay on loopback with its data in `dir`, and a new account's device "a" on it.
    pub(crate) async fn device_on_relay(
        dir: &std::path::Path,
    ) -> (kith_relay::RelayHandle, Device) {
        let relay = kith_relay::Relay::start(kith_relay::RelayConfig::for_tests(dir.join("relay")))
            .await
            .unwrap();
        let (device, _) = Device::create(&dir.join("a"), relay_target(&relay), "a", None)
            .await
            .unwrap();
        (relay, device)
    }

    /// [`device_on_relay`] after a first sync, and its head then.
    async fn synced_device(dir: &std::path::Path) -> (kith_relay::RelayHandle, Device, u64) {
        let (relay, device) = device_on_relay(dir).await;
        device.sync().await.unwrap();
        let (head, _) = device.head().unwrap();
        (relay, device, head)
    }

    /// The address and pinned certificate of a relay started for a test.
    pub(crate) fn relay_target(relay: &kith_relay::RelayHandle) -> crate::net::RelayTarget {
        crate::net::RelayTarget::pinned(
            relay.local_addr().to_string(),
            &hex::encode(relay.cert_sha256()),
        )
        .unwrap()
    }

    /// Pending entries are sealed by concatenating their bytes: the envelope holds every
    /// operation in order, byte for byte what encoding them again gives, also when an entry
    /// is not in the concatenable form (here one stamped with a wall time, which is decoded and
    /// encoded again). Once pushed, the acknowledged envelope is kept as sent, byte for byte.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pending_entries_are_sealed_as_one_batch_of_all_their_operations() {
        let dir = tempfile::tempdir().unwrap();
        let (relay, device) = device_on_relay(dir.path()).await;
        device.sync().await.unwrap();
        for name in ["Ada Lovelace", "Grace Hopper"] {
            let fields = ContactFields {
                name: Some(name.into()),
                ..Default::default()
            };
            device.add_contact(&fields).await.unwrap();
        }
        let store = &device.inner.store;
        let id = RecordId::from_bytes([5; 16]);
        let write =
            FieldWrite::set(FieldKey::name(), record::value::text("Alan Turing"), []).unwrap();
        let clock = Hlc::new(now_ms(), 0, device.inner.device_id);
        let stamped = Operation::upsert(id, clock, [write]).unwrap();
        let legacy = record::encode_batch_written_at(std::slice::from_ref(&stamped), 7).unwrap();
        assert_eq!(record::operations_only_count(&legacy), None);
        store
            .transaction(|tx| {
                let key = tx.next_id()?.to_be_bytes();
                tx.put(TreeName::Pending, &key, &legacy)
            })
            .unwrap();
        let mut expected = Vec::new();
        for key in store.keys(TreeName::Pending).unwrap() {
            let bytes = store.get(TreeName::Pending, &key).unwrap().unwrap();
            expected.extend(record::decode_batch(&bytes).unwrap());
        }
        assert_eq!(expected.len(), 3);
        assert_eq!(expected.last(), Some(&stamped));

        assert_eq!(device.seal_pending().unwrap(), 1);
        assert!(store.is_empty(TreeName::Pending).unwrap());
        let (seq, envelope) = store.scan(TreeName::Outbox).next().unwrap().unwrap();
        let parsed = ParsedEnvelope::decode(&envelope).unwrap();
        let payload = {
            let state = device.state();
            parsed.open(&state.roster, &state.epochs).unwrap()
        };
        let (ops, written_at) = record::decode_batch_written_at(&payload).unwrap();
        assert_eq!(ops, expected);
        let mut encoded = record::encode_batch_written_at(&expected, written_at.unwrap()).unwrap();
        WriterView::read(&payload)
            .unwrap()
            .unwrap()
            .append_to(&mut encoded);
        assert_eq!(payload, encoded);

        assert_eq!(device.sync().await.unwrap().pushed, 1);
        assert!(!device.has_unsent().unwrap());
        // Kept as it was sealed, for healing.
        assert_eq!(store.get(TreeName::Outbox, &seq).unwrap(), Some(envelope));
        let seq = u64::from_be_bytes(seq.as_slice().try_into().unwrap());
        assert_eq!(device.acked_seq().unwrap(), seq);
        relay.shutdown().await.unwrap();
    }

    /// Queues `entries` pending entries of `ops` operations each (one new record per
    /// operation), as the contacts API queues them; returns every operation, in order.
    fn queue_pending(device: &Device, entries: usize, ops: usize) -> Vec<Operation> {
        let mut all = Vec::new();
        device
            .inner
            .store
            .transaction(|tx| {
                for _ in 0..entries {
                    let batch: Vec<Operation> = (0..ops)
                        .map(|_| {
                            let mut id = [0u8; 16];
                            id[..8].copy_from_slice(&tx.next_id().unwrap().to_be_bytes());
                            let write = FieldWrite::set(
                                FieldKey::name(),
                                record::value::text("Ada Lovelace"),
                                [],
                            )
                            .unwrap();
                            let clock = Hlc::new(now_ms(), 0, device.inner.device_id);
                            Operation::upsert(RecordId::from_bytes(id), clock, [write]).unwrap()
                        })
                        .collect();
                    let key = tx.next_id()?.to_be_bytes();
                    tx.put(
                        TreeName::Pending,
                        &key,
                        &record::encode_batch(&batch).unwrap(),
                    )?;
                    all.extend(batch);
                }
                Ok::<_, ClientError>(())
            })
            .unwrap();
        all
    }

    /// The outbox's envelopes in seq order, checked as one chain from seq `first` (after
    /// `prev`), with the operations of their payloads in order.
    fn outbox_chain(device: &Device) -> (Vec<u64>, Vec<Operation>) {
        let mut verifier = kith_protocol::stream::StreamVerifier::new(device.inner.device_id);
        let mut seqs = Vec::new();
        let mut ops = Vec::new();
        let unsent = device.first_unsent_key().unwrap();
        for item in device.inner.store.scan_from(TreeName::Outbox, &unsent) {
            let (key, envelope) = item.unwrap();
            let parsed = ParsedEnvelope::decode(&envelope).unwrap();
            verifier.check(&parsed).unwrap();
            let payload = {
                let state = device.state();
                parsed.open(&state.roster, &state.epochs).unwrap()
            };
            ops.extend(record::decode_batch(&payload).unwrap());
            seqs.push(u64::from_be_bytes(key.as_slice().try_into().unwrap()));
        }
        (seqs, ops)
    }

    /// Sealing beside the push seals in groups of growing size, each committed on its own
    /// (the progress reports each commit), into one unbroken chain that holds every pending
    /// operation once, in order; the sync pushes all of it, and the relay serves it back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pending_operations_are_sealed_in_groups_into_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        let (relay, device, head_before) = synced_device(dir.path()).await;
        // 2 entries an envelope: 23 envelopes, groups of 4, 8 and 11.
        let queued = queue_pending(&device, 46, OPS_PER_ENVELOPE / 2);
        let mut commits = Vec::new();
        let sealed = device
            .seal_pending_in_groups(|sealed, _| commits.push(sealed))
            .unwrap();
        assert_eq!(sealed, 23);
        assert_eq!(commits, [4, 12, 23]);
        assert!(device.inner.store.is_empty(TreeName::Pending).unwrap());
        let (seqs, ops) = outbox_chain(&device);
        assert_eq!(
            seqs,
            ((head_before + 1)..=(head_before + 23)).collect::<Vec<_>>()
        );
        assert_eq!(ops, queued);
        assert_eq!(device.head().unwrap().0, head_before + 23);

        // The same through a sync: sealed on the blocking thread while the first groups are
        // pushed; everything is acknowledged and kept as sent.
        let queued = queue_pending(&device, 46, OPS_PER_ENVELOPE / 2);
        let report = device.sync().await.unwrap();
        assert_eq!(report.pushed, 46);
        assert!(device.inner.store.is_empty(TreeName::Pending).unwrap());
        assert!(!device.has_unsent().unwrap());
        let last = head_before + 46;
        assert_eq!(device.acked_seq().unwrap(), last);
        let kept = device
            .inner
            .store
            .get(TreeName::Outbox, &last.to_be_bytes())
            .unwrap()
            .unwrap();
        let payload = {
            let state = device.state();
            ParsedEnvelope::decode(&kept)
                .unwrap()
                .open(&state.roster, &state.epochs)
                .unwrap()
        };
        assert_eq!(
            record::decode_batch(&payload).unwrap(),
            queued[queued.len() - OPS_PER_ENVELOPE..]
        );
        relay.shutdown().await.unwrap();
    }

    /// Groups are prepared ahead of their commits, each after the head the previous one ends
    /// at in memory: when a commit fails, no group after it lands (the one prepared beside it
    /// is dropped, as a crash between preparing and committing drops it), their entries stay
    /// pending, and the next sealing continues the one chain with every operation once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_commit_stops_every_group_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let (relay, device, head_before) = synced_device(dir.path()).await;
        // 2 entries an envelope: 23 envelopes, groups of 4, 8 and 11.
        let queued = queue_pending(&device, 46, OPS_PER_ENVELOPE / 2);
        let mut commits = Vec::new();
        let mut attempts = 0;
        let failed = device.seal_groups_with(
            |sealed, _| commits.push(sealed),
            |group| {
                attempts += 1;
                if attempts == 2 {
                    return Err(LocalStoreError::WriterFailed("disk full".into()).into());
                }
                device.commit_seal_group(group)
            },
        );
        assert!(matches!(
            failed,
            Err(ClientError::Store(LocalStoreError::WriterFailed(_)))
        ));
        assert_eq!(attempts, 2, "nothing is committed after a failed commit");
        assert_eq!(commits, [4]);
        assert_eq!(device.head().unwrap().0, head_before + 4);
        assert_eq!(
            device.inner.store.len(TreeName::Pending).unwrap(),
            46 - 4 * 2
        );
        assert_eq!(device.seal_pending_in_groups(|_, _| {}).unwrap(), 19);
        let (seqs, ops) = outbox_chain(&device);
        assert_eq!(
            seqs,
            ((head_before + 1)..=(head_before + 23)).collect::<Vec<_>>()
        );
        assert_eq!(ops, queued);
        relay.shutdown().await.unwrap();
    }

    /// Another process sealing between the commits of groups prepared ahead: the group whose
    /// head moved, and the one prepared after it in memory, are sealed again in their
    /// transactions, after the other envelope; one chain, every operation once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn groups_prepared_ahead_are_sealed_again_after_another_process_sealed() {
        let dir = tempfile::tempdir().unwrap();
        let (relay, device, head_before) = synced_device(dir.path()).await;
        let queued = queue_pending(&device, 46, OPS_PER_ENVELOPE / 2);
        let other = queue_pending(&device, 1, 3);
        let other_key = device.inner.store.keys(TreeName::Pending).unwrap()[46].clone();
        let other_payload = device
            .inner
            .store
            .get(TreeName::Pending, &other_key)
            .unwrap()
            .unwrap();
        let mut attempts = 0;
        let sealed = device
            .seal_groups_with(
                |_, _| {},
                |group| {
                    attempts += 1;
                    if attempts == 2 {
                        // As another process sharing the store would, between two commits.
                        device
                            .inner
                            .store
                            .transaction(|tx| {
                                tx.remove(TreeName::Pending, &other_key)?;
                                device.seal_payload(
                                    tx,
                                    &[],
                                    other_payload.clone(),
                                    PayloadKind::Operations,
                                )
                            })
                            .unwrap();
                    }
                    device.commit_seal_group(group)
                },
            )
            .unwrap();
        assert_eq!(attempts, 3);
        assert_eq!(sealed, 23);
        let (seqs, ops) = outbox_chain(&device);
        assert_eq!(
            seqs,
            ((head_before + 1)..=(head_before + 24)).collect::<Vec<_>>()
        );
        // Group 1 (4 envelopes) as prepared, the other process's, then groups 2 and 3.
        let first = OPS_PER_ENVELOPE * 4;
        assert_eq!(ops[..first], queued[..first]);
        assert_eq!(ops[first..first + 3], other[..]);
        assert_eq!(ops[first + 3..], queued[first..]);
        relay.shutdown().await.unwrap();
    }

    /// A group sealed outside its transaction is written only if the head it follows is still
    /// the head: when something else was sealed meanwhile (here one envelope, as another
    /// process sharing the store would), its entries are sealed again after it, in the
    /// transaction, and none twice; entries sealed meanwhile are not sealed again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_sealed_after_the_head_moved_is_sealed_again() {
        let dir = tempfile::tempdir().unwrap();
        let (relay, device, head_before) = synced_device(dir.path()).await;
        let queued = queue_pending(&device, 6, OPS_PER_ENVELOPE / 2);
        let keys = device.inner.store.keys(TreeName::Pending).unwrap();
        let group = device
            .prepare_seal_group(&mut keys.clone().into_iter().peekable(), 2, None)
            .unwrap();
        assert_eq!(group.envelopes.len(), 2);
        // Meanwhile: another envelope takes the next seq.
        let other = queue_pending(&device, 1, 3);
        let other_key = device.inner.store.keys(TreeName::Pending).unwrap()[6].clone();
        let other_payload = device
            .inner
            .store
            .get(TreeName::Pending, &other_key)
            .unwrap()
            .unwrap();
        device.seal_operations_payload(&other_payload).unwrap();
        let commit = device.commit_seal_group(group).unwrap();
        assert_eq!(commit.count, 2);
        // Not the bytes prepared: nothing is handed to a pusher.
        assert!(commit.envelopes.is_none());
        let (seqs, ops) = outbox_chain(&device);
        assert_eq!(
            seqs,
            ((head_before + 1)..=(head_before + 3)).collect::<Vec<_>>()
        );
        assert_eq!(ops[..3], other[..]);
        assert_eq!(ops[3..], queued[..OPS_PER_ENVELOPE * 2]);

        // And a group whose entries were all sealed meanwhile writes nothing.
        let group = device
            .prepare_seal_group(&mut keys[4..].iter().cloned().peekable(), 4, None)
            .unwrap();
        assert_eq!(group.envelopes.len(), 1);
        assert_eq!(device.seal_pending().unwrap(), 2);
        let commit = device.commit_seal_group(group).unwrap();
        assert_eq!(commit.count, 0);
        assert!(commit.envelopes.is_none());
        let (seqs, ops) = outbox_chain(&device);
        assert_eq!(seqs.len(), 5);
        assert_eq!(ops[3..3 + queued.len()], queued[..]);
        assert_eq!(ops[3 + queued.len()..], other[..]);
        relay.shutdown().await.unwrap();
    }

    /// The handoff gives the pusher envelopes only from the seq it pushes next, in seq order
    /// across groups, never past a seq it does not hold, bounded as a push from the outbox is;
    /// it drops what was pushed from the outbox meanwhile, holds at most
    /// [`MAX_HANDOFF_BYTES`], and nothing once the push ended.
    #[test]
    fn the_handoff_serves_contiguous_batches_from_the_next_seq_only() {
        let envelope = |seq: u64, len: usize| vec![seq as u8; len];
        let mut handoff = SealedHandoff::default();
        handoff.hand(5, (5..8).map(|seq| envelope(seq, 10)).collect());
        handoff.hand(8, vec![envelope(8, 10)]);
        // Seq 9 was not handed (sealed again in its transaction, say).
        handoff.hand(10, vec![envelope(10, 10)]);
        assert_eq!(handoff.bytes, 50);
        // Seq 4 is the outbox's: nothing taken, and the outbox is read up to seq 5.
        assert_eq!(handoff.take_batch(4), (vec![], vec![]));
        assert_eq!(handoff.skip_to(4), Some(5));
        // Seq 5 was pushed from the outbox meanwhile: dropped, the rest taken across groups,
        // up to the seq not held.
        let (batch, seqs) = handoff.take_batch(6);
        assert_eq!(seqs, [6, 7, 8]);
        assert_eq!(batch, [envelope(6, 10), envelope(7, 10), envelope(8, 10)]);
        assert_eq!(handoff.take_batch(9), (vec![], vec![]));
        assert_eq!(handoff.skip_to(9), Some(10));
        assert_eq!(handoff.take_batch(10).1, [10]);
        assert_eq!((handoff.bytes, handoff.groups.len()), (0, 0));

        // Bounded by envelopes and by bytes per push, as the outbox's batches are.
        handoff.hand(1, (1..=70).map(|seq| envelope(seq, 1)).collect());
        assert_eq!(handoff.take_batch(1).1.len(), ENVELOPES_PER_PUSH);
        assert_eq!(handoff.take_batch(65).1, (65..=70).collect::<Vec<_>>());
        let big = BYTES_PER_PUSH / 2;
        handoff.hand(71, (71..=73).map(|seq| envelope(seq, big)).collect());
        assert_eq!(handoff.take_batch(71).1, [71, 72]);
        assert_eq!(handoff.take_batch(73).1, [73]);
        // One envelope larger than a push is still pushed, alone.
        handoff.hand(74, vec![envelope(74, BYTES_PER_PUSH + 1)]);
        assert_eq!(handoff.take_batch(74).1, [74]);

        // Never more than MAX_HANDOFF_BYTES held: a group that would pass it is not handed
        // (the pusher reads it from the outbox).
        let quarter = MAX_HANDOFF_BYTES / 4;
        handoff.hand(75, (75..78).map(|seq| envelope(seq, quarter)).collect());
        handoff.hand(78, (78..80).map(|seq| envelope(seq, quarter)).collect());
        assert_eq!(handoff.bytes, 3 * quarter);
        assert_eq!(handoff.take_batch(75).1, [75]);
        assert_eq!(handoff.skip_to(78), None);
        assert_eq!(handoff.bytes, 0);
        // Once the push ended, nothing more is held.
        handoff.hand(80, vec![envelope(80, 10)]);
        handoff.close();
        handoff.hand(81, vec![envelope(81, 10)]);
        assert_eq!(handoff.take_batch(80), (vec![], vec![]));
        assert_eq!((handoff.bytes, handoff.groups.len()), (0, 0));
    }

    /// The envelopes the relay holds of `device`'s own stream after seq `after`, in order.
    async fn relay_stream_of(
        device: &Device,
        connection: &RelayConnection,
        after: u64,
    ) -> Vec<(u64, Vec<u8>)> {
        let mut stream: Vec<(u64, Vec<u8>)> = Vec::new();
        loop {
            let cursors = BTreeMap::from([(
                device.inner.device_id,
                stream.last().map_or(after, |(seq, _)| *seq),
            )]);
            let response::Kind::Pull(page) =
                connection.request(pull_request(&cursors)).await.unwrap()
            else {
                panic!("expected a pull page");
            };
            stream.extend(page.envelopes.into_iter().map(|e| (e.seq, e.envelope)));
            if !page.more {
                return stream;
            }
        }
    }

    /// The pusher takes the envelopes of the groups sealed beside it from memory, and reads
    /// the outbox for the rest: envelopes an earlier sync sealed and did not push come first,
    /// then the new groups; a push that fails part way leaves the rest to the next sync, which
    /// pushes each of them once, before what it seals itself. The relay holds one unbroken
    /// stream, byte for byte the outbox's.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn envelopes_pushed_from_memory_and_the_outbox_reach_the_relay_once_in_order() {
        use std::sync::atomic::Ordering::Relaxed;
        let dir = tempfile::tempdir().unwrap();
        let (relay, device, head_before) = synced_device(dir.path()).await;
        assert_eq!(device.acked_seq().unwrap(), head_before);
        // Sealed by a sync that did not push them: 10 envelopes left in the outbox.
        let mut queued = queue_pending(&device, 20, OPS_PER_ENVELOPE / 2);
        assert_eq!(device.seal_pending().unwrap(), 10);
        // Then 23 more sealed in groups (4, 8, 11), all committed before the push starts.
        queued.extend(queue_pending(&device, 46, OPS_PER_ENVELOPE / 2));
        let mut sealing = device.start_sealing();
        assert_eq!(sealing.finish().await.unwrap(), 23);
        assert_eq!(lock_handoff(&sealing.handoff).groups.len(), 3);
        // The push fails (a lost connection) once its first push was acknowledged.
        device.inner.push_fails_after_acks.store(1, Relaxed);
        let mut slot = None;
        let connection = device.connection(&mut slot).await.unwrap();
        let failed = device.push_sealed(connection, Some(sealing)).await;
        assert!(matches!(failed, Err(ClientError::Net(_))), "{failed:?}");
        // The first push was the outbox's 10 (read up to the first seq held in memory); the
        // second, the 23 held in memory, was sent and its acknowledgement not taken.
        assert_eq!(device.acked_seq().unwrap(), head_before + 10);
        assert_eq!(device.inner.pushed_from_memory.load(Relaxed), 23);
        assert!(device.inner.store.is_empty(TreeName::Pending).unwrap());

        // The next sync pushes the 23 again from the outbox, then 3 envelopes it seals.
        device.inner.push_fails_after_acks.store(0, Relaxed);
        queued.extend(queue_pending(&device, 6, OPS_PER_ENVELOPE / 2));
        let report = device.sync().await.unwrap();
        assert_eq!(report.pushed, 23 + 3);
        let last = head_before + 36;
        assert_eq!(device.acked_seq().unwrap(), last);
        assert!(!device.has_unsent().unwrap());

        let stream = relay_stream_of(&device, connection, 0).await;
        assert_eq!(
            stream.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
            (1..=last).collect::<Vec<_>>()
        );
        let mut verifier = StreamVerifier::new(device.inner.device_id);
        let mut ops = Vec::new();
        for (seq, envelope) in &stream {
            let kept = device
                .inner
                .store
                .get(TreeName::Outbox, &seq.to_be_bytes())
                .unwrap();
            assert_eq!(kept.as_ref(), Some(envelope), "seq {seq}");
            let parsed = ParsedEnvelope::decode(envelope).unwrap();
            verifier.check(&parsed).unwrap();
            if *seq <= head_before {
                continue;
            }
            let payload = {
                let state = device.state();
                parsed.open(&state.roster, &state.epochs).unwrap()
            };
            ops.extend(record::decode_batch(&payload).unwrap());
        }
        assert_eq!(ops, queued);
        relay.shutdown().await.unwrap();
    }

    /// The identity rule settled page by page during a pull (`PulledIdentities`) links what
    /// the rule applied after the pull linked: here every envelope is a page of its own, and
    /// the operations are sealed as they are (no identity rule on the writer, as from
    /// devices that wrote them before they saw each other's). A record whose e-mail first
    /// appears in a later page joins the record of an earlier page (whose id is larger, so the
    /// rule after the pull met it second); a record that loses its e-mail in a later page
    /// leaves a stale index entry that must link nothing; a record that shares a phone with a
    /// record B held before the pull joins it.
    /// A relay on loopback that serves one envelope per pull page, with its data in `dir`, its
    /// address, and an account of two devices on it: A, and B linked to it.
    async fn one_envelope_per_page_pair(
        dir: &std::path::Path,
    ) -> (
        kith_relay::RelayHandle,
        crate::net::RelayTarget,
        Device,
        Device,
    ) {
        let mut config = kith_relay::RelayConfig::for_tests(dir.join("relay"));
        config.bounds.pull_max_envelopes = 1;
        let relay = kith_relay::Relay::start(config).await.unwrap();
        let target = crate::net::RelayTarget::pinned(
            relay.local_addr().to_string(),
            &hex::encode(relay.cert_sha256()),
        )
        .unwrap();
        let (a, _) = Device::create(&dir.join("a"), target.clone(), "a", None)
            .await
            .unwrap();
        let b = linked_device(&a, dir, &target, "b").await;
        (relay, target, a, b)
    }

    /// A device named `name`, in `dir/name`, linked into `a`'s account.
    async fn linked_device(
        a: &Device,
        dir: &std::path::Path,
        target: &crate::net::RelayTarget,
        name: &str,
    ) -> Device {
        let pending = crate::PendingLink::new(&dir.join(name), target.clone(), name).unwrap();
        let code = pending.code().to_string();
        let (device, approved) = tokio::join!(
            pending.complete(Duration::from_secs(60)),
            a.approve_link(&code)
        );
        approved.unwrap();
        device.unwrap()
    }

    /// B's own contact "Bea (mobile)" with phone +14155550123, added and synced.
    async fn bea_on(b: &Device) -> RecordId {
        let local = b
            .add_contact(&ContactFields {
                name: Some("Bea (mobile)".into()),
                phone: Some("+14155550123".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        b.sync().await.unwrap();
        local
    }

    /// Seals each of `pages` as one envelope of A's, as they are (no identity rule on the
    /// writer, as from devices that wrote them before they saw each other's), and pushes them.
    async fn push_pages(a: &Device, pages: &[Vec<Operation>]) {
        for ops in pages {
            a.seal_operations_payload(&record::encode_batch(ops).unwrap())
                .unwrap();
        }
        assert_eq!(a.sync().await.unwrap().pushed, pages.len());
    }

    /// [`push_pages`], then B pulls them all.
    async fn push_pages_and_pull(a: &Device, b: &Device, pages: &[Vec<Operation>]) {
        push_pages(a, pages).await;
        let report = b.sync().await.unwrap();
        assert_eq!(report.pulled, pages.len());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn identities_settled_page_by_page_link_as_after_the_pull() {
        let dir = tempfile::tempdir().unwrap();
        let (relay, target, a, b) = one_envelope_per_page_pair(dir.path()).await;
        // B's own contact, before the pull, with the phone a pulled record carries.
        let local = bea_on(&b).await;

        let id = |n: u8| RecordId::from_bytes([n; 16]);
        let named = |record: RecordId, name: &str, extra: Vec<FieldWrite>| {
            let mut writes =
                vec![FieldWrite::set(FieldKey::name(), record::value::text(name), []).unwrap()];
            writes.extend(extra);
            Operation::upsert(record, a.write_clock(None).unwrap(), writes).unwrap()
        };
        let email = |address: &str| {
            FieldWrite::set(
                FieldKey::email(address).unwrap(),
                record::value::email(address, ""),
                [],
            )
            .unwrap()
        };
        let (later, earlier, leaver, stays, bea) =
            (id(0x10), id(0x90), id(0xa0), id(0x20), id(0x30));
        let pages = [
            vec![
                named(earlier, "Ana", vec![email("ana@example.com")]),
                named(leaver, "Leo", vec![email("leo@example.com")]),
            ],
            vec![
                named(later, "Ana García", vec![email("ana@example.com")]),
                named(
                    bea,
                    "Bea",
                    vec![
                        FieldWrite::set(
                            FieldKey::phone("+14155550123").unwrap(),
                            record::value::phone("+14155550123", ""),
                            [],
                        )
                        .unwrap(),
                    ],
                ),
            ],
            vec![
                Operation::upsert(
                    leaver,
                    a.write_clock(None).unwrap(),
                    [FieldWrite::remove(
                        FieldKey::email("leo@example.com").unwrap(),
                        [],
                    )],
                )
                .unwrap(),
            ],
            vec![named(stays, "Leonie", vec![email("leo@example.com")])],
        ];
        push_pages_and_pull(&a, &b, &pages).await;
        assert_eq!(b.merged_records(&later).unwrap(), vec![later, earlier]);
        assert_eq!(b.merged_records(&leaver).unwrap(), vec![leaver]);
        assert_eq!(b.merged_records(&stays).unwrap(), vec![stays]);
        let mut bea_group = vec![local, bea];
        bea_group.sort();
        assert_eq!(b.merged_records(&bea).unwrap(), bea_group);
        let names: Vec<String> = b
            .contacts()
            .unwrap()
            .into_iter()
            .filter_map(|c| c.name().map(str::to_owned))
            .collect();
        assert_eq!(names, ["Ana García", "Bea", "Leo", "Leonie"]);
        b.sync().await.unwrap();
        // A device that pulls everything at once, B's links included, shows the same.
        let c = linked_device(&a, dir.path(), &target, "c").await;
        c.sync().await.unwrap();
        assert_eq!(c.contacts().unwrap(), b.contacts().unwrap());
        relay.shutdown().await.unwrap();
    }

    /// A pull that fails after some pages were written (a connection lost mid-pull) still
    /// runs the identity rule on them: the next pull starts after those pages and would never
    /// see them again. A pulled record sharing a phone with B's own contact is merged with it
    /// by the failed sync, and its new e-mail is indexed (a contact B adds later with that
    /// e-mail joins its group).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pull_that_fails_part_way_links_the_pages_it_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let (relay, _target, a, b) = one_envelope_per_page_pair(dir.path()).await;
        let local = bea_on(&b).await;
        let id = |n: u8| RecordId::from_bytes([n; 16]);
        let upsert = |record: RecordId, writes: Vec<FieldWrite>| {
            Operation::upsert(record, a.write_clock(None).unwrap(), writes).unwrap()
        };
        let name = |text: &str| FieldWrite::set(FieldKey::name(), record::value::text(text), []);
        let pages = [
            vec![upsert(
                id(1),
                vec![
                    name("Bea").unwrap(),
                    FieldWrite::set(
                        FieldKey::phone("+14155550123").unwrap(),
                        record::value::phone("+14155550123", ""),
                        [],
                    )
                    .unwrap(),
                    FieldWrite::set(
                        FieldKey::email("bea@example.com").unwrap(),
                        record::value::email("bea@example.com", ""),
                        [],
                    )
                    .unwrap(),
                ],
            )],
            vec![upsert(id(2), vec![name("Cy").unwrap()])],
            vec![upsert(id(3), vec![name("Di").unwrap()])],
        ];
        push_pages(&a, &pages).await;
        b.inner
            .pull_fails_after_pages
            .store(1, std::sync::atomic::Ordering::Relaxed);
        assert!(
            b.sync().await.is_err(),
            "the pull fails after its first page"
        );
        let mut bea = vec![local, id(1)];
        bea.sort();
        assert_eq!(b.merged_records(&id(1)).unwrap(), bea);
        b.inner
            .pull_fails_after_pages
            .store(0, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(b.sync().await.unwrap().pulled, 2, "the rest of the pull");
        let added = b
            .add_contact(&ContactFields {
                name: Some("Bea (work)".into()),
                email: Some("bea@example.com".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        let mut all = vec![local, id(1), added];
        all.sort();
        assert_eq!(b.merged_records(&added).unwrap(), all);
        relay.shutdown().await.unwrap();
    }

    /// Records a pull updates, created by an earlier page (every envelope is a page of its
    /// own, so each is read from the store or from the page still in flight), are replaced in
    /// place, none read back to be joined, and hold every page's change.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_a_pull_updates_are_replaced_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let (relay, _target, a, b) = one_envelope_per_page_pair(dir.path()).await;
        let id = |n: u8| RecordId::from_bytes([n; 16]);
        let upsert = |record: RecordId, key: FieldKey, text: &str| {
            let write = FieldWrite::set(key, record::value::text(text), []).unwrap();
            Operation::upsert(record, a.write_clock(None).unwrap(), [write]).unwrap()
        };
        let pages = [
            vec![
                upsert(id(1), FieldKey::name(), "Ada"),
                upsert(id(2), FieldKey::name(), "Grace"),
            ],
            vec![upsert(id(1), FieldKey::company(), "Engines")],
            vec![
                upsert(id(1), FieldKey::title(), "Countess"),
                upsert(id(2), FieldKey::company(), "Navy"),
            ],
        ];
        push_pages_and_pull(&a, &b, &pages).await;
        assert_eq!(
            *b.inner.pulled_writes.lock().unwrap(),
            crate::pipeline::WriteCountsSnapshot {
                inserted: 2,
                in_place: 3,
                joined: 0
            }
        );
        for (n, key, text) in [
            (1, FieldKey::name(), "Ada"),
            (1, FieldKey::company(), "Engines"),
            (1, FieldKey::title(), "Countess"),
            (2, FieldKey::name(), "Grace"),
            (2, FieldKey::company(), "Navy"),
        ] {
            let state = b.load_record(&id(n)).unwrap().unwrap();
            assert_eq!(state.value(&key), Some(&record::value::text(text)));
        }
        assert_eq!(b.contact_count().unwrap(), 2);
        relay.shutdown().await.unwrap();
    }

    /// Every operation the import queued and no sync has sealed yet, in order.
    fn pending_ops(device: &Device) -> Vec<Operation> {
        let store = &device.inner.store;
        let mut ops = Vec::new();
        for key in store.keys(TreeName::Pending).unwrap() {
            let bytes = store.get(TreeName::Pending, &key).unwrap().unwrap();
            ops.extend(record::decode_batch(&bytes).unwrap());
        }
        ops
    }

    /// An import writes one operation per record it changes in a chunk: a card's provenance
    /// and fields in one, and the link the identity rule then writes to that record folded
    /// into it (the other record's side of the link is an operation of its own): two
    /// operations per merge, not four. The device that pulls them stores every record exactly
    /// as the importer does, clocks included, and shows the same contacts and merges.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_import_folds_a_records_writes_and_links_into_one_operation() {
        let dir = tempfile::tempdir().unwrap();
        let (relay, a) = device_on_relay(dir.path()).await;
        a.sync().await.unwrap();
        let b = linked_device(&a, dir.path(), &relay_target(&relay), "b").await;
        let card = |n: usize, profile: &str| {
            format!(
                "BEGIN:VCARD\r\nVERSION:3.0\r\nFN:Person {n}\r\nURL:https://www.linkedin.com/in/{profile}\r\nEMAIL;type=INTERNET:p{n}@example.com\r\nEND:VCARD\r\n"
            )
        };
        let import = |cards: String| {
            let options = crate::import::ImportOptions::default();
            let report = crate::import::vcard::import_bytes(cards.as_bytes(), &options).unwrap();
            a.import(report)
        };
        let people: String = (0..6).map(|n| card(n, &format!("person-{n}"))).collect();
        assert_eq!(import(people).await.unwrap().added, 6);
        // A new record's provenance and fields: one operation each.
        let created = pending_ops(&a);
        assert_eq!(created.len(), 6, "{created:#?}");
        for op in &created {
            let record::OperationKind::Upsert(writes) = op.kind() else {
                panic!("an import deletes nothing");
            };
            let kinds: Vec<&str> = writes.iter().map(|w| w.key().as_str()).collect();
            assert!(kinds.contains(&"source/vcard"), "{kinds:?}");
            assert!(kinds.contains(&"name"), "{kinds:?}");
        }
        let ids: Vec<RecordId> = (0..6)
            .map(|n| {
                let address = format!("p{n}@example.com");
                let contacts = a.contacts().unwrap();
                let contact = contacts
                    .iter()
                    .find(|c| c.emails().iter().any(|e| e.address == address))
                    .unwrap();
                contact.id()
            })
            .collect();
        a.sync().await.unwrap();
        b.sync().await.unwrap();

        // Persons 0 and 4 learn the profiles of persons 1 and 5 (two merges); person 2 a
        // profile nobody has.
        let cards = [
            card(0, "person-1"),
            card(2, "nobody-2"),
            card(4, "person-5"),
        ];
        let summary = import(cards.concat()).await.unwrap();
        assert_eq!((summary.updated, summary.merged), (3, 2));
        let ops = pending_ops(&a);
        let on = |id: RecordId| -> Vec<&Operation> {
            ops.iter().filter(|op| op.record() == id).collect()
        };
        let keys = |op: &Operation| -> Vec<FieldKey> {
            match op.kind() {
                record::OperationKind::Upsert(writes) => {
                    writes.iter().map(|w| w.key().clone()).collect()
                }
                record::OperationKind::Delete => Vec::new(),
            }
        };
        for (merged, other) in [(ids[0], ids[1]), (ids[4], ids[5])] {
            let folded = on(merged);
            assert_eq!(folded.len(), 1, "{folded:#?}");
            let folded_keys = keys(folded[0]);
            assert!(
                folded_keys.contains(&FieldKey::merged(&other)),
                "{folded_keys:?}"
            );
            assert!(
                folded_keys.iter().any(|k| k.as_str().starts_with("url/")),
                "{folded_keys:?}"
            );
            assert_eq!(on(other).len(), 1);
            assert_eq!(keys(on(other)[0]), vec![FieldKey::merged(&merged)]);
        }
        assert_eq!(on(ids[2]).len(), 1);
        // Five operations, not ten: one per record the import changed.
        assert_eq!(ops.len(), 5, "{ops:#?}");
        // The device's clock only grows, in the order the operations are queued.
        assert!(ops.windows(2).all(|w| w[0].clock() < w[1].clock()));

        a.sync().await.unwrap();
        b.sync().await.unwrap();
        let (_, on_a) = a.all_records().unwrap();
        let (_, on_b) = b.all_records().unwrap();
        assert_eq!(on_a, on_b, "every record as the importer stored it");
        assert_eq!(a.contacts().unwrap(), b.contacts().unwrap());
        assert_eq!(a.contacts().unwrap().len(), 4);
        let mut pair = vec![ids[0], ids[1]];
        pair.sort();
        assert_eq!(b.merged_records(&ids[0]).unwrap(), pair);
        relay.shutdown().await.unwrap();
    }

    /// Merges pulled as another device wrote them (the identifier that links two records and
    /// both sides of the link in one envelope) are settled in their page, and what a later
    /// page changes is still checked by the rule after the pull: a record whose link partner
    /// drops its side of the link (a device writing what no honest one does) is linked again,
    /// as the rule requires of two records holding one e-mail; a pair a person separated later
    /// stays apart. Every envelope is a page of its own; a device pulling everything at once
    /// shows the same.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn merges_settled_in_their_page_link_as_after_the_pull() {
        let dir = tempfile::tempdir().unwrap();
        let (relay, target, a, b) = one_envelope_per_page_pair(dir.path()).await;
        let id = |n: u8| RecordId::from_bytes([n; 16]);
        let (pat, quinn, rae, sol) = (id(0x40), id(0x50), id(0x60), id(0x70));
        let upsert = |record: RecordId, writes: Vec<FieldWrite>| {
            Operation::upsert(record, a.write_clock(None).unwrap(), writes).unwrap()
        };
        let set = |key: FieldKey, value| FieldWrite::set(key, value, []).unwrap();
        let person = |record: RecordId, name: &str, address: &str| {
            upsert(
                record,
                vec![
                    set(FieldKey::name(), record::value::text(name)),
                    set(
                        FieldKey::email(address).unwrap(),
                        record::value::email(address, ""),
                    ),
                ],
            )
        };
        // `into` learns `from`'s address and the two are merged: both sides in one envelope.
        let merge = |into: RecordId, from: RecordId, address: &str| {
            let writes = vec![
                set(
                    FieldKey::email(address).unwrap(),
                    record::value::email(address, ""),
                ),
                set(FieldKey::merged(&from), record::value::tag()),
            ];
            let back = upsert(
                from,
                vec![set(FieldKey::merged(&into), record::value::tag())],
            );
            [upsert(into, writes), back]
        };
        let first = [
            person(pat, "Pat", "pat@example.com"),
            person(quinn, "Quinn", "quinn@example.com"),
            person(rae, "Rae", "rae@example.com"),
            person(sol, "Sol", "sol@example.com"),
        ];
        let [pat_link, quinn_link] = merge(pat, quinn, "quinn@example.com");
        let [rae_link, sol_link] = merge(rae, sol, "sol@example.com");
        let unlink = |record: RecordId, from: RecordId, link: &Operation, distinct: bool| {
            let mut writes = vec![FieldWrite::remove(FieldKey::merged(&from), [link.clock()])];
            if distinct {
                writes.push(set(FieldKey::distinct(&from), record::value::tag()));
            }
            upsert(record, writes)
        };
        let pages = [
            first.to_vec(),
            vec![
                pat_link,
                quinn_link.clone(),
                rae_link.clone(),
                sol_link.clone(),
            ],
            // Quinn alone drops the link to Pat.
            vec![unlink(quinn, pat, &quinn_link, false)],
            // A person separates Rae and Sol.
            vec![
                unlink(rae, sol, &rae_link, true),
                unlink(sol, rae, &sol_link, true),
            ],
        ];
        push_pages_and_pull(&a, &b, &pages).await;
        assert_eq!(b.merged_records(&pat).unwrap(), vec![pat, quinn]);
        assert_eq!(b.merged_records(&rae).unwrap(), vec![rae]);
        assert_eq!(b.merged_records(&sol).unwrap(), vec![sol]);
        b.sync().await.unwrap();
        let c = linked_device(&a, dir.path(), &target, "c").await;
        c.sync().await.unwrap();
        assert_eq!(c.contacts().unwrap(), b.contacts().unwrap());
        assert_eq!(c.merged_records(&quinn).unwrap(), vec![pat, quinn]);
        relay.shutdown().await.unwrap();
    }

    /// A page larger than `PARALLEL_DECODE_BYTES` is decoded on two threads: every payload's
    /// result is in its place, as decoding them one at a time gives, the failures included (the
    /// first in page order is the one a pull reports). The second thread is started once and
    /// decodes every large page of the pull, a small page is decoded on the caller's thread.
    #[test]
    fn a_page_decoded_on_two_threads_keeps_each_payload_in_its_place() {
        let ops = |n: u32| -> Vec<Operation> {
            (0..200u32)
                .map(|i| {
                    let mut id = [0u8; 16];
                    id[..4].copy_from_slice(&n.to_be_bytes());
                    id[4..8].copy_from_slice(&i.to_be_bytes());
                    let name = format!("Person {n}-{i} {}", "x".repeat(200));
                    let write =
                        FieldWrite::set(FieldKey::name(), record::value::text(&name), []).unwrap();
                    let clock = Hlc::new(1_000 + u64::from(i), 0, DeviceId::from_bytes([7; 16]));
                    Operation::upsert(RecordId::from_bytes(id), clock, vec![write]).unwrap()
                })
                .collect()
        };
        let mut payloads: Vec<Vec<u8>> = (0..8)
            .map(|n| record::encode_batch(&ops(n)).unwrap())
            .collect();
        // Two payloads that do not decode, each with its own error, in the second half.
        let half = payloads[5].len() / 2;
        payloads[5].truncate(half);
        payloads[6] = vec![0xff; 7];
        let mut kinds = vec![PayloadKind::Operations; payloads.len()];
        kinds[2] = PayloadKind::Unspecified;
        assert!(payloads.iter().map(Vec::len).sum::<usize>() >= PARALLEL_DECODE_BYTES);
        let one_at_a_time: Vec<String> = kinds
            .iter()
            .zip(&payloads)
            .map(|(kind, payload)| match kind {
                PayloadKind::Operations => match record::decode_batch_parts(payload) {
                    Ok((ops, _, _)) => format!("{ops:?}"),
                    Err(e) => format!("error: {}", ClientError::from(e)),
                },
                _ => "nothing".into(),
            })
            .collect();
        let described = |decoded: Vec<Result<Decoded>>| -> Vec<String> {
            decoded
                .into_iter()
                .map(|decoded| match decoded {
                    Ok(Decoded::Operations((ops, _, _))) => format!("{ops:?}"),
                    Ok(Decoded::Nothing) => "nothing".into(),
                    Ok(Decoded::Snapshot(_)) => "snapshot".into(),
                    Err(e) => format!("error: {e}"),
                })
                .collect()
        };
        let mut decoder = PageDecoder::default();
        // A small page first: no second thread for it.
        let small = described(decoder.decode(&kinds[..2], payloads[..2].to_vec()));
        assert_eq!(small, one_at_a_time[..2]);
        assert!(decoder.thread.is_none());
        let mut second_thread = None;
        for _page in 0..3 {
            let together = described(decoder.decode(&kinds, payloads.clone()));
            assert_eq!(together, one_at_a_time);
            assert!(together[5].starts_with("error") && together[6].starts_with("error"));
            assert_ne!(together[5], together[6]);
            assert_eq!(together[2], "nothing");
            assert_eq!(together[7], format!("{:?}", ops(7)));
            let thread = decoder
                .thread
                .as_ref()
                .expect("a second thread decodes a large page");
            let id = thread.handle.thread().id();
            assert_eq!(
                *second_thread.get_or_insert(id),
                id,
                "one thread for every page"
            );
        }
        drop(decoder);
    }
}
