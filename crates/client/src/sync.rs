//! The sync engine: seal pending operations into envelopes, push them, pull every other
//! device's stream from its cursor, verify (roster, epoch, signatures in batches, hash chain)
//! and merge. A gap, fork, replay or rollback is an error naming the device, never a skip.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use kith_protocol::envelope::{self, EnvelopeError, EnvelopeHash, ParsedEnvelope};
use kith_protocol::epoch;
use kith_protocol::merge::{ContactSet, RecordState};
use kith_protocol::proto::{self, PayloadKind, request, response};
use kith_protocol::record::{self, Operation};
use kith_protocol::roster::VerifiedRoster;
use kith_protocol::stream::StreamVerifier;
use kith_protocol::{DeviceId, RecordId};
use prost::Message;
use sled::Transactional;

use crate::clock::ClockSkew;
use crate::device::{Device, meta, now_ms};
use crate::error::{ClientError, Result};
use crate::net::{RelayConnection, expect_ok};
use crate::pipeline::{RecordPipeline, Records};
use crate::store::{StoreError, TreeName};

/// Operations per envelope: keeps an envelope well under the 1 MiB limit.
pub(crate) const OPS_PER_ENVELOPE: usize = 1_000;
/// Plaintext bytes per envelope before a new one is started.
const BYTES_PER_ENVELOPE: usize = 512 * 1024;
/// Envelopes per push request.
const ENVELOPES_PER_PUSH: usize = 64;
/// Envelope bytes per push request.
const BYTES_PER_PUSH: usize = 2 * 1024 * 1024;
/// Envelopes asked for per pull page.
const ENVELOPES_PER_PULL: u32 = 256;
/// Encoded record bytes per snapshot envelope (a snapshot spans as many envelopes as needed).
const SNAPSHOT_BYTES: usize = 512 * 1024;

/// What one sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Envelopes this device pushed.
    pub pushed: usize,
    /// Envelopes pulled from other devices and merged.
    pub pulled: usize,
    /// Records whose merged state changed.
    pub changed: BTreeSet<RecordId>,
}

impl Device {
    /// One full sync: roster and keys, push, pull, merge. Retries transient failures with
    /// exponential backoff (up to 5 attempts), reconnecting after a dropped connection.
    pub async fn sync(&self) -> Result<SyncReport> {
        let mut delay = Duration::from_millis(200);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.sync_once().await {
                Err(e) if e.is_transient() && attempt < 5 => {
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
        let connection = match self.connection(&mut slot).await {
            Ok(c) => c.clone(),
            Err(e) => {
                *slot = None;
                return Err(e);
            }
        };
        let result = self.sync_on(&connection).await;
        if result.as_ref().is_err_and(|e| e.is_transient()) {
            *slot = None;
        }
        result
    }

    async fn sync_on(&self, connection: &RelayConnection) -> Result<SyncReport> {
        let mut report = SyncReport::default();
        self.refresh_roster(connection).await?;
        self.seal_pending()?;
        report.pushed = self.push_outbox(connection).await?;
        let (pulled, changed) = self.pull(connection).await?;
        report.pulled = pulled;
        report.changed = changed;
        Ok(report)
    }

    /// Fetches the relay's roster, verifies it extends ours, and fetches new epoch keys.
    pub(crate) async fn refresh_roster(&self, connection: &RelayConnection) -> Result<()> {
        let answer = connection
            .request(request::Kind::GetRoster(proto::GetRoster {}))
            .await?;
        let response::Kind::Roster(served) = answer else {
            return Err(crate::net::NetError::Protocol("expected a roster".into()).into());
        };
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
        self.fetch_epoch_keys(connection).await
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
            for sealed in &keys.keys {
                let (number, secret) = epoch::open_epoch_key(
                    sealed,
                    &account,
                    &self.inner.device_id,
                    &self.inner.secrets.agreement_key,
                )?;
                // HPKE base mode does not say who sealed a key: the relay could seal a secret of
                // its own. The current epoch's secret must open the signed roster's device
                // names before anything is written under it; keys staged for a later epoch
                // wait until a roster starts that epoch.
                if number > want {
                    continue;
                }
                if number == want {
                    state.roster.confirm_epoch_secret(&secret)?;
                }
                if !state.epochs.contains(number) {
                    state.epochs.insert(number, secret)?;
                }
            }
            if state.epochs.latest().map(|(n, _)| n).unwrap_or(0) < want {
                return Err(ClientError::Epoch(
                    kith_protocol::epoch::EpochError::UnknownEpoch { epoch: want },
                ));
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
    /// is either still pending or in exactly one envelope, whatever the moment of a crash.
    pub(crate) fn seal_pending(&self) -> Result<usize> {
        let store = &self.inner.store;
        let pending = store.tree(TreeName::Pending)?;
        if pending.is_empty() {
            return Ok(0);
        }
        let mut batch_keys = Vec::new();
        let mut batch_ops: Vec<Operation> = Vec::new();
        let mut batch_bytes = 0usize;
        let mut sealed_count = 0;
        for item in pending.iter() {
            let (key, sealed) = item.map_err(StoreError::from)?;
            let plain = store.cipher().open(TreeName::Pending, &key, &sealed)?;
            let ops = record::decode_batch(&plain)?;
            batch_bytes += plain.len();
            batch_ops.extend(ops);
            batch_keys.push(key.to_vec());
            if batch_ops.len() >= OPS_PER_ENVELOPE || batch_bytes >= BYTES_PER_ENVELOPE {
                self.seal_batch(&batch_keys, &batch_ops, PayloadKind::Operations)?;
                sealed_count += 1;
                batch_keys.clear();
                batch_ops.clear();
                batch_bytes = 0;
            }
        }
        if !batch_keys.is_empty() {
            self.seal_batch(&batch_keys, &batch_ops, PayloadKind::Operations)?;
            sealed_count += 1;
        }
        Ok(sealed_count)
    }

    fn head(&self) -> Result<(u64, EnvelopeHash)> {
        Ok(match self.inner.store.get(TreeName::Meta, meta::HEAD)? {
            Some(bytes) if bytes.len() == 40 => {
                let seq = u64::from_be_bytes(bytes[..8].try_into().unwrap_or_default());
                let hash = EnvelopeHash::from_bytes(bytes[8..].try_into().unwrap_or([0; 32]));
                (seq, hash)
            }
            _ => (0, EnvelopeHash::ZERO),
        })
    }

    fn seal_batch(
        &self,
        pending_keys: &[Vec<u8>],
        ops: &[Operation],
        kind: PayloadKind,
    ) -> Result<()> {
        // The wall time lets receivers report a device whose date is wrong (§8).
        let payload = record::encode_batch_written_at(ops, now_ms())?;
        self.seal_payload(pending_keys, &payload, kind)
    }

    /// Seals one payload as this device's next envelope and moves it to the outbox,
    /// removing `pending_keys` in the same transaction.
    fn seal_payload(
        &self,
        pending_keys: &[Vec<u8>],
        payload: &[u8],
        kind: PayloadKind,
    ) -> Result<()> {
        let store = &self.inner.store;
        let (last_seq, last_hash) = self.head()?;
        let seq = last_seq + 1;
        let sealed = {
            let state = self.state();
            // Always the roster's epoch, whose secret was confirmed against the roster.
            let number = state.roster.epoch();
            let content_key = state.epochs.content_key(number)?;
            envelope::seal(
                &self.inner.secrets.signing_key,
                &state.account_id,
                seq,
                number,
                &content_key,
                &last_hash,
                kind,
                payload,
                &mut kith_protocol::keys::system_rng(),
            )?
        };
        let seq_key = seq.to_be_bytes();
        let mut head = seq_key.to_vec();
        head.extend_from_slice(sealed.hash.as_bytes());
        let outbox_value = store
            .cipher()
            .seal(TreeName::Outbox, &seq_key, &sealed.bytes);
        let head_value = store.cipher().seal(TreeName::Meta, meta::HEAD, &head);
        let pending = store.tree(TreeName::Pending)?;
        let outbox = store.tree(TreeName::Outbox)?;
        let meta_tree = store.tree(TreeName::Meta)?;
        (&pending, &outbox, &meta_tree)
            .transaction(|(p, o, m)| {
                for key in pending_keys {
                    p.remove(key.as_slice())?;
                }
                o.insert(&seq_key, outbox_value.as_slice())?;
                m.insert(meta::HEAD, head_value.as_slice())?;
                Ok::<_, sled::transaction::ConflictableTransactionError<StoreError>>(())
            })
            .map_err(StoreError::from)?;
        Ok(())
    }

    /// Pushes every outbox envelope; removes them once acknowledged. Idempotent: an envelope
    /// whose acknowledgement was lost is sent again and acknowledged again.
    async fn push_outbox(&self, connection: &RelayConnection) -> Result<usize> {
        let store = &self.inner.store;
        let outbox = store.tree(TreeName::Outbox)?;
        if outbox.is_empty() {
            return Ok(0);
        }
        store.flush().await?;
        let mut pushed = 0;
        loop {
            let mut batch = Vec::new();
            let mut last_seq = 0;
            let mut batch_bytes = 0;
            for item in outbox.iter() {
                let (key, sealed) = item.map_err(StoreError::from)?;
                let envelope = store.cipher().open(TreeName::Outbox, &key, &sealed)?;
                // Stay well inside the relay's frame limit (4 MiB by default).
                if !batch.is_empty()
                    && (batch.len() >= ENVELOPES_PER_PUSH
                        || batch_bytes + envelope.len() > BYTES_PER_PUSH)
                {
                    break;
                }
                batch_bytes += envelope.len();
                batch.push(envelope);
                last_seq = u64::from_be_bytes(key.as_ref().try_into().unwrap_or_default());
            }
            if batch.is_empty() {
                break;
            }
            let count = batch.len();
            let answer = connection
                .request(request::Kind::Push(proto::Push { envelopes: batch }))
                .await?;
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
            for seq in (last_seq + 1 - count as u64)..=last_seq {
                outbox.remove(seq.to_be_bytes()).map_err(StoreError::from)?;
            }
            store.put(TreeName::Meta, meta::ACKED, &last_seq.to_be_bytes())?;
            pushed += count;
        }
        Ok(pushed)
    }

    /// Test hook: seals pending operations into the outbox without pushing, and returns the
    /// outbox's envelopes, as a crash between sealing and pushing would leave them.
    #[doc(hidden)]
    pub fn seal_pending_for_tests(&self) -> Result<Vec<Vec<u8>>> {
        self.seal_pending()?;
        self.inner
            .store
            .scan(TreeName::Outbox)
            .map(|item| {
                item.map(|(_, envelope)| envelope)
                    .map_err(ClientError::from)
            })
            .collect()
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

    async fn pull(&self, connection: &RelayConnection) -> Result<(usize, BTreeSet<RecordId>)> {
        let mut total = 0;
        let mut changed = BTreeSet::new();
        let mut verifiers: HashMap<DeviceId, StreamVerifier> = HashMap::new();
        for writer in self.writers()? {
            let verifier = match self.cursor_of(&writer)? {
                Some((seq, hash)) => StreamVerifier::resume(writer, seq, hash),
                None => StreamVerifier::new(writer),
            };
            verifiers.insert(writer, verifier);
        }
        let mut refreshed_keys = false;
        let mut skews = BTreeMap::new();
        // Each page's records and cursors are written while the next page is fetched, opened
        // and merged.
        let mut pipeline = RecordPipeline::lock(&self.inner.records_lock, &self.inner.store).await;
        loop {
            let cursors = verifiers
                .iter()
                .map(|(device, v)| proto::Cursor {
                    device_id: device.as_bytes().to_vec(),
                    after_seq: v.last_seq(),
                })
                .collect();
            let answer = connection
                .request(request::Kind::Pull(proto::Pull {
                    cursors,
                    max_envelopes: ENVELOPES_PER_PULL,
                    max_bytes: 0,
                }))
                .await?;
            let response::Kind::Pull(page) = answer else {
                return Err(crate::net::NetError::Protocol("expected a pull page".into()).into());
            };
            let first_seqs: HashMap<DeviceId, u64> = page
                .streams
                .iter()
                .filter_map(|s| Some((DeviceId::from_slice(&s.device_id).ok()?, s.first_seq)))
                .collect();
            let mut parsed = Vec::with_capacity(page.envelopes.len());
            for stored in &page.envelopes {
                let envelope = ParsedEnvelope::decode(&stored.envelope)?;
                let writer = envelope.header().device_id;
                if writer == self.inner.device_id {
                    continue;
                }
                parsed.push(envelope);
            }
            parsed.sort_by_key(|e| (e.header().device_id, e.header().seq));
            if parsed.is_empty() {
                break;
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
            for envelope in &parsed {
                let writer = envelope.header().device_id;
                let verifier = new_verifiers
                    .entry(writer)
                    .or_insert_with(|| StreamVerifier::new(writer));
                let first_seq = first_seqs.get(&writer).copied().unwrap_or(0);
                if envelope.header().seq > verifier.last_seq() + 1
                    && first_seq == envelope.header().seq
                {
                    verifier.check_after_truncation(envelope, first_seq)?;
                } else {
                    verifier.check(envelope)?;
                }
            }
            let (touched, page_changed) =
                self.merge_payloads(&mut pipeline, &parsed, opened, &mut skews)?;
            // Cursors are written after the records they cover: a crash in between pulls the
            // page again, and merging it again changes nothing.
            let cursors = new_verifiers.clone();
            let device = self.clone();
            pipeline
                .submit(touched, move |records| {
                    device.write_records(records.iter())?;
                    device.persist_cursors(&cursors)
                })
                .await?;
            verifiers = new_verifiers;
            total += parsed.len();
            changed.extend(page_changed);
            if !page.more {
                break;
            }
        }
        pipeline.wait().await?;
        // What the merged clocks moved the clock to survives a restart (§8).
        self.persist_clock()?;
        self.persist_clock_skews(&skews)?;
        self.inner.store.flush().await?;
        Ok((total, changed))
    }

    fn persist_cursors(&self, verifiers: &HashMap<DeviceId, StreamVerifier>) -> Result<()> {
        for (device, verifier) in verifiers {
            if verifier.last_seq() == 0 {
                continue;
            }
            let mut value = verifier.last_seq().to_be_bytes().to_vec();
            value.extend_from_slice(verifier.last_hash().as_bytes());
            self.inner
                .store
                .put(TreeName::Cursors, device.as_bytes(), &value)?;
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
        parsed: &[ParsedEnvelope],
        payloads: Vec<Vec<u8>>,
        skews: &mut BTreeMap<DeviceId, ClockSkew>,
    ) -> Result<(Records, BTreeSet<RecordId>)> {
        let mut touched: Records = BTreeMap::new();
        let mut changed = BTreeSet::new();
        let now = now_ms();
        for (envelope, payload) in parsed.iter().zip(payloads) {
            match envelope.header().kind {
                PayloadKind::Operations => {
                    let (ops, written_at) = record::decode_batch_written_at(&payload)?;
                    if let Some(written_at) = written_at {
                        // Envelopes are in stream order: the last one measured is the latest.
                        let skew = ClockSkew::measure(written_at, now);
                        skews.insert(envelope.header().device_id, skew);
                    }
                    for op in ops {
                        self.observe_clock(&op.clock(), now);
                        let state = pipeline.load(&mut touched, op.record())?;
                        if state.apply(&op) {
                            changed.insert(op.record());
                        }
                    }
                }
                PayloadKind::Snapshot => {
                    let (snapshot, _positions) = ContactSet::decode_snapshot(&payload)?;
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
                PayloadKind::Unspecified => {}
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

    pub(crate) fn write_records<'a>(
        &self,
        records: impl Iterator<Item = (&'a RecordId, &'a RecordState)>,
    ) -> Result<()> {
        let store = &self.inner.store;
        let mut batch = sled::Batch::default();
        for (id, state) in records {
            let bytes = state.encode_to_vec();
            batch.insert(
                id.as_bytes().as_slice(),
                store
                    .cipher()
                    .seal(TreeName::Records, id.as_bytes(), &bytes),
            );
        }
        store
            .tree(TreeName::Records)?
            .apply_batch(batch)
            .map_err(StoreError::from)?;
        Ok(())
    }

    /// Keeps a subscription open and syncs whenever another device pushes, sending the ids of
    /// changed records to `changes`. Returns when the receiver is dropped or on a permanent
    /// error; reconnects with backoff after transient ones.
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
            let mut subscription = match subscription {
                Ok(s) => s,
                Err(e) if e.is_transient() => {
                    *self.inner.connection.lock().await = None;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            delay = Duration::from_millis(500);
            loop {
                match subscription.next().await {
                    Ok(Some(_note)) => match self.sync().await {
                        Ok(report) => {
                            if changes.send(report).await.is_err() {
                                return Ok(());
                            }
                        }
                        Err(e) if e.is_transient() => break,
                        Err(e) => return Err(e),
                    },
                    Ok(None) | Err(_) => {
                        *self.inner.connection.lock().await = None;
                        break;
                    }
                }
            }
        }
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
        let records = self.inner.store.tree(TreeName::Records)?;
        let mut chunk = Vec::new();
        let mut chunk_bytes = 0usize;
        let mut envelopes = 0;
        for item in records.iter() {
            let (key, sealed) = item.map_err(StoreError::from)?;
            let plain = self
                .inner
                .store
                .cipher()
                .open(TreeName::Records, &key, &sealed)?;
            let wire =
                proto::RecordState::decode(plain.as_slice()).map_err(|_| StoreError::Corrupt {
                    tree: "records",
                    reason: "undecodable record".into(),
                })?;
            chunk_bytes += plain.len();
            chunk.push(wire);
            if chunk_bytes >= SNAPSHOT_BYTES {
                chunk_bytes = 0;
                self.seal_snapshot(std::mem::take(&mut chunk), &positions)?;
                envelopes += 1;
            }
        }
        if !chunk.is_empty() || envelopes == 0 {
            self.seal_snapshot(chunk, &positions)?;
            envelopes += 1;
        }
        self.push_outbox(&connection).await?;
        expect_ok(
            connection
                .request(request::Kind::TruncateStream(proto::TruncateStream {
                    before_seq: first_seq,
                }))
                .await?,
        )?;
        let usage_after = usage(&connection).await?;
        Ok(CompactReport {
            snapshot_envelopes: envelopes,
            relay_bytes_before: usage_before.bytes_used,
            relay_bytes_after: usage_after.bytes_used,
            covers,
        })
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
    ) -> Result<()> {
        let snapshot = proto::Snapshot {
            records,
            positions: positions.to_vec(),
        };
        self.seal_payload(&[], &snapshot.encode_to_vec(), PayloadKind::Snapshot)
    }

    /// The relay's usage figures for this account.
    pub async fn usage(&self) -> Result<proto::Usage> {
        let mut slot = self.inner.connection.lock().await;
        let connection = self.connection(&mut slot).await?.clone();
        usage(&connection).await
    }
}

async fn usage(connection: &RelayConnection) -> Result<proto::Usage> {
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
