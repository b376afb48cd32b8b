//! One person, one contact: records that are the same person are merged (docs/PROTOCOL.md
//! §8.4).
//!
//! A merge is written as registers of the CRDT: merging records A and B writes `merged/B` on A
//! and `merged/A` on B; separating them removes those and writes `distinct/…` on both. The
//! contact shown for a group of linked records is the join of their fields under the smallest
//! live id ([`Groups`]), a function of the merged state, so every device shows the same
//! contacts. Fields never move between records: an import keeps writing to the record its
//! source identity names, and an unmerge finds every field where it was.
//!
//! - **Automatically**, by the identity rule: after every import, sync and local change, the
//!   records it touched are checked against the device's identity index (blinded e-mail, phone
//!   and LinkedIn URL → record); two live records that share one are linked, unless a person
//!   separated them (`distinct/…`). Links are transitive, so records connected through several
//!   hops become one contact.
//! - **By hand**: [`Device::merge_contacts`], [`Device::unmerge_contact`], and
//!   [`Device::duplicate_suggestions`] for people the rule cannot merge (same name, no shared
//!   identifier).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use kith_protocol::RecordId;
use kith_protocol::contact::Contact;
use kith_protocol::merge::{Groups, GroupsBuilder, RecordState};
use kith_protocol::proto::field_value::Value;
use kith_protocol::record::{self, FieldKey, FieldKind, FieldWrite, Operation};
use serde::Serialize;

use crate::contacts::{IdentityIndex, fold};
use crate::device::{Device, meta};
use crate::error::{ClientError, Result};
use crate::pipeline::Records;
use crate::store::{LocalStore, StoreTxn, TreeName, ValueCipher};

/// How many records one group may hold: a bound on the work of one lookup, far above any real
/// person's number of sources.
const MAX_GROUP: usize = 256;
/// Records settled per transaction when the identity rule runs over the whole store
/// ([`Device::settle_interrupted_pulls`]).
const SETTLE_PAGE: usize = 4096;

/// Loads record `id` into `touched` (from `touched`, a batch in flight, or the store).
pub(crate) type Loader<'a> = dyn FnMut(&mut Records, RecordId) -> Result<()> + 'a;

/// Two or more contacts that look like one person but were not merged automatically.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DuplicateSuggestion {
    /// The contacts' ids (hex), in name then id order.
    pub ids: Vec<String>,
    /// Their names, in the same order.
    pub names: Vec<String>,
    /// Why they are suggested ("same name", "name variants: bob / robert").
    pub reason: String,
}

/// The identities by which the rule joins records: normalized e-mails, phones and LinkedIn
/// profile URLs, in the form of the import index (`email:…`, `phone:…`, `linkedin:…`).
pub(crate) fn record_identities(state: &RecordState) -> Vec<String> {
    // Each identity built in one allocation of its length; sorted and deduplicated at the
    // end (a LinkedIn record names its profile twice: its URL and its source).
    let identity = |kind: &str, detail: &str| [kind, detail].concat();
    let linkedin = |raw: &str| {
        crate::import::linkedin::normalized_profile_url(raw)
            .map(|profile| identity("linkedin:", &profile))
    };
    let mut out = Vec::new();
    for (key, value) in state.values() {
        match (key.kind(), value.value.as_ref()) {
            (FieldKind::Email, _) => {
                out.extend(key.detail().map(|address| identity("email:", address)));
            }
            (FieldKind::Phone, _) => {
                out.extend(key.detail().map(|e164| identity("phone:", e164)));
            }
            (FieldKind::Url, Some(Value::Url(url))) => out.extend(linkedin(&url.url)),
            (FieldKind::Source(record::SourceKind::LinkedIn), Some(Value::Linkedin(source))) => {
                out.extend(linkedin(&source.profile_url));
            }
            _ => {}
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// The identities of records as they were just written, from their merged states in memory
/// (none for a record that is not live), for [`Device::link_written`].
pub(crate) type WrittenIdentities = BTreeMap<RecordId, Vec<String>>;

/// [`WrittenIdentities`] of `records`.
pub(crate) fn written_identities<'a>(
    records: impl IntoIterator<Item = (&'a RecordId, &'a RecordState)>,
) -> WrittenIdentities {
    records
        .into_iter()
        .map(|(id, state)| {
            let identities = if state.is_live() {
                record_identities(state)
            } else {
                Vec::new()
            };
            (*id, identities)
        })
        .collect()
}

/// Settles the identities of live record `id`, given blinded (`keys`), with the identity
/// index, as the identity rule does for a record that links nothing new: each is unindexed
/// (then indexed under `id`, as [`Device::link_by_identity`] would), indexed under `id`, or
/// indexed under another record for which `same_group(other, key)` holds (the rule finds that
/// record holding it in `id`'s own group, and does nothing). Returns those other records, on
/// whose state the settlement relied; `None` at the first identity indexed under any other
/// record (the identities after it are left for the whole rule). Shards not loaded yet are
/// read in `tx` if given, else from the store.
fn settle_identities(
    index: &mut IdentityIndex,
    tx: Option<&StoreTxn<'_>>,
    id: RecordId,
    keys: impl IntoIterator<Item = [u8; 32]>,
    mut same_group: impl FnMut(RecordId, &[u8; 32]) -> bool,
) -> Result<Option<Vec<RecordId>>> {
    let mut relied = Vec::new();
    for key in keys {
        let found = match tx {
            Some(tx) => index.get_in(tx, &key)?,
            None => index.get(&key)?,
        };
        match found {
            None => match tx {
                Some(tx) => index.insert_in(tx, key, id)?,
                None => index.insert(key, id)?,
            },
            Some(other) if other == id => {}
            Some(other) if same_group(other, &key) => relied.push(other),
            Some(_) => return Ok(None),
        }
    }
    Ok(Some(relied))
}

/// Whether records `a` and `b` are linked to each other (§8.4): each names the other with a
/// visible `merged/…` field and neither names the other with `distinct/…`, so [`Groups`] puts
/// them in one group whatever the other records hold.
fn linked_directly(a: &RecordState, b: &RecordState) -> bool {
    let names = |from: &RecordState, key: FieldKey| from.value(&key).is_some();
    names(a, FieldKey::merged(&b.id()))
        && names(b, FieldKey::merged(&a.id()))
        && !names(a, FieldKey::distinct(&b.id()))
        && !names(b, FieldKey::distinct(&a.id()))
}

/// The identity rule over the pages of a pull, settled page by page as each is written (on
/// the pull's writer thread, in the page's transaction) instead of for every record after the
/// last page: a record links nothing new, and is settled there and then, when each of its
/// identities is unindexed (then indexed under it), indexed under itself, or indexed under a
/// record of the same page that holds it and is linked to it (a merge another device made:
/// both sides of the link travel together); only the others (`rest`) wait for the end of the
/// pull, when [`Device::link_pulled`] checks them in full with their final states. The index
/// stays loaded across pages and is written once, at the end. A pull of any size thus keeps
/// the ids of the records that may link, not every written record's identities, and a pull
/// of many merges reads none of their records again (10,000 merges in a pull were read back
/// one record at a time after it: about a tenth of the pull's CPU time, BENCHMARKS.md).
///
/// The links made are those of the rule applied after the pull (tests
/// `sync::tests::identities_settled_page_by_page_link_as_after_the_pull`,
/// `sync::tests::merges_settled_in_their_page_link_as_after_the_pull` and
/// `merging::tests::a_merge_pulled_in_one_page_is_settled_in_it`): a record settled in one
/// page and changed in a later one is settled again with its new state (or moves to `rest`),
/// a record in `rest` that a later page settles
/// leaves it, a record settled on the state of a linked record (`relying`) moves to `rest`
/// when a later page changes that record, and an index entry left by an earlier state is
/// stale, which the full rule recognises (the record no longer holds the identity) and
/// replaces. Skipping a record settled on a link changes nothing: the rule, run on it at the
/// end with the same states, would find each such identity held within its own group.
///
/// The settlement lives in memory until the end of the pull, while its pages are committed
/// with their cursors (so they are not pulled again): each page's transaction also writes the
/// pull's marker ([`meta::UNSETTLED_PREFIX`]), removed once [`Device::link_pulled`] has
/// written the index and the links. A marker left by a pull that stopped in between (the
/// process killed, the sync's future dropped) makes the next sync, import or local edit run the
/// rule over every record first ([`Device::settle_interrupted_pulls`]).
pub(crate) struct PulledIdentities {
    index: IdentityIndex,
    rest: BTreeSet<RecordId>,
    /// This pull's key under [`meta::UNSETTLED_PREFIX`].
    marker: Vec<u8>,
    /// Whether a page's transaction wrote `marker`.
    marked: bool,
    /// Records settled (without links) so far: the index has changes to write.
    settled: usize,
    /// The records settled because a record linked to them holds one of their identities, by
    /// that record: settled on its state as of their page.
    relying: BTreeMap<RecordId, Vec<RecordId>>,
}

impl PulledIdentities {
    /// An empty settlement over `store`'s identity index.
    pub(crate) fn new(store: &LocalStore) -> Self {
        let mut token = [0u8; 16];
        rand_core::Rng::fill_bytes(&mut kith_protocol::keys::system_rng(), &mut token);
        let mut marker = meta::UNSETTLED_PREFIX.to_vec();
        marker.extend_from_slice(&token);
        Self {
            index: IdentityIndex::new(store),
            rest: BTreeSet::new(),
            marker,
            marked: false,
            settled: 0,
            relying: BTreeMap::new(),
        }
    }

    /// This pull's marker ([`meta::UNSETTLED_PREFIX`]).
    pub(crate) fn marker(&self) -> &[u8] {
        &self.marker
    }

    /// The blinded identities of each record of a page (none for a record that is not
    /// live), in the page's order, for [`PulledIdentities::settle_page`]. Needs no store and
    /// no order, so a pull computes it off the writer's thread.
    pub(crate) fn blind_page(cipher: &ValueCipher, records: &Records) -> Vec<Vec<[u8; 32]>> {
        records
            .values()
            .map(|state| {
                if state.is_live() {
                    record_identities(state)
                        .iter()
                        .map(|identity| cipher.index_key(identity))
                        .collect()
                } else {
                    Vec::new()
                }
            })
            .collect()
    }

    /// Writes the identity index as settled so far (the shards changed since the last write).
    pub(crate) fn write_index(&mut self) -> Result<()> {
        self.index.write()
    }

    /// Settles the records of one page, as just written in `tx`; `blinded` is
    /// [`PulledIdentities::blind_page`] of `records`.
    pub(crate) fn settle_page(
        &mut self,
        tx: &StoreTxn<'_>,
        records: &Records,
        blinded: &[Vec<[u8; 32]>],
    ) -> Result<()> {
        debug_assert_eq!(records.len(), blinded.len());
        // Committed with the page: until the settlement has ended, a stop loses it.
        tx.put(TreeName::Meta, &self.marker, &[])?;
        self.marked = true;
        // Records settled on the earlier state of one this page changes are checked again:
        // in this page if it changes them too, else at the end.
        if !self.relying.is_empty() {
            for id in records.keys() {
                if let Some(relying) = self.relying.remove(id) {
                    self.rest.extend(relying);
                }
            }
        }
        let ids: Vec<&RecordId> = records.keys().collect();
        for ((id, state), keys) in records.iter().zip(blinded) {
            // A key indexed under another record of the page that holds it and is linked to
            // this one.
            let same_group = |other: RecordId, key: &[u8; 32]| {
                ids.binary_search(&&other).is_ok_and(|at| {
                    blinded[at].contains(key)
                        && records
                            .get(&other)
                            .is_some_and(|theirs| linked_directly(state, theirs))
                })
            };
            match settle_identities(
                &mut self.index,
                Some(tx),
                *id,
                keys.iter().copied(),
                same_group,
            )? {
                Some(relied) => {
                    self.rest.remove(id);
                    self.settled += 1;
                    for other in relied {
                        self.relying.entry(other).or_default().push(*id);
                    }
                }
                None => {
                    self.rest.insert(*id);
                }
            }
        }
        Ok(())
    }
}

/// The members of `id`'s group, loaded into `touched`, sorted by id (just `id` if unmerged).
/// Follows `merged/…` links breadth first and keeps the component [`Groups`] defines.
pub(crate) fn group_members(
    touched: &mut Records,
    load: &mut Loader<'_>,
    id: RecordId,
) -> Result<Vec<RecordId>> {
    load(touched, id)?;
    let first = touched.get(&id).map(RecordState::merged_with);
    if first.as_ref().is_none_or(BTreeSet::is_empty) {
        return Ok(vec![id]);
    }
    let mut seen = BTreeSet::from([id]);
    let mut queue = VecDeque::from([id]);
    let mut builder = GroupsBuilder::default();
    while let Some(at) = queue.pop_front() {
        load(touched, at)?;
        let Some(state) = touched.get(&at) else {
            continue;
        };
        builder.add(state);
        for next in state.merged_with() {
            if seen.len() < MAX_GROUP && seen.insert(next) {
                queue.push_back(next);
            }
        }
    }
    Ok(builder.build().members(&id))
}

/// The view of a group ([`Groups::view`]) from states in `touched`.
pub(crate) fn group_view(touched: &Records, members: &[RecordId]) -> RecordState {
    let states: Vec<&RecordState> = members.iter().filter_map(|m| touched.get(m)).collect();
    let mut builder = GroupsBuilder::default();
    for state in &states {
        builder.add(state);
    }
    let groups = builder.build();
    let survivor = members.first().map_or_else(
        || RecordId::from_bytes([0; 16]),
        |first| {
            if members.len() == 1 {
                *first
            } else {
                groups.survivor(first)
            }
        },
    );
    Groups::view(survivor, states)
}

/// Operations that write `writes` (computed against the group's `view`) to the group: each
/// write goes to every member that holds state for its key, so a value stays with the record it
/// came from (and an unmerge finds it there); a key no member holds goes to `default_target`.
/// Each operation's clock is later than every clock of the view for the keys written and than
/// the target's deletion.
pub(crate) fn group_writes(
    device: &Device,
    touched: &Records,
    members: &[RecordId],
    view: &RecordState,
    default_target: RecordId,
    writes: Vec<FieldWrite>,
) -> Result<Vec<Operation>> {
    let mut by_target: BTreeMap<RecordId, Vec<FieldWrite>> = BTreeMap::new();
    for write in writes {
        let holders: Vec<RecordId> = members
            .iter()
            .filter(|m| {
                touched
                    .get(m)
                    .is_some_and(|state| state.field(write.key()).is_some())
            })
            .copied()
            .collect();
        let targets = if holders.is_empty() {
            vec![default_target]
        } else {
            holders
        };
        for target in targets {
            by_target.entry(target).or_default().push(write.clone());
        }
    }
    let mut ops = Vec::with_capacity(by_target.len());
    for (target, writes) in by_target {
        let deleted_at = touched.get(&target).and_then(RecordState::deleted_at);
        let floor = view
            .latest_clock_of(writes.iter().map(FieldWrite::key))
            .max(deleted_at);
        ops.push(Operation::upsert(
            target,
            device.write_clock(floor)?,
            writes,
        )?);
    }
    Ok(ops)
}

/// A write of a link key (`merged/…`, `distinct/…`) on `state`: set it (`true`) or remove it,
/// replacing every head seen; `None` if it already reads so.
fn link_write(state: &RecordState, key: FieldKey, set: bool) -> Result<Option<FieldWrite>> {
    let visible = state.value(&key).is_some();
    if visible == set {
        return Ok(None);
    }
    let replaces = state.replaces(&key);
    Ok(Some(if set {
        FieldWrite::set(key, record::value::tag(), replaces)?
    } else {
        FieldWrite::remove(key, replaces)
    }))
}

/// Applies upserts of `writes` to the records of `touched` and appends them to `ops`.
fn commit_writes(
    device: &Device,
    touched: &mut Records,
    ops: &mut Vec<Operation>,
    writes: BTreeMap<RecordId, Vec<FieldWrite>>,
) -> Result<()> {
    for (id, writes) in writes {
        if writes.is_empty() {
            continue;
        }
        let Some(state) = touched.get_mut(&id) else {
            continue;
        };
        let floor = state.latest_clock_of(writes.iter().map(FieldWrite::key));
        let op = Operation::upsert(id, device.write_clock(floor)?, writes)?;
        state.apply(&op);
        ops.push(op);
    }
    Ok(())
}

/// The writes that link records `a` and `b` (both in `touched`): `merged/…` set on both sides,
/// `distinct/…` removed (a merge by hand undoes an earlier separation).
fn link_pair(
    touched: &Records,
    a: RecordId,
    b: RecordId,
    writes: &mut BTreeMap<RecordId, Vec<FieldWrite>>,
) -> Result<()> {
    for (this, other) in [(a, b), (b, a)] {
        let Some(state) = touched.get(&this) else {
            continue;
        };
        let entry = writes.entry(this).or_default();
        entry.extend(link_write(state, FieldKey::merged(&other), true)?);
        entry.extend(link_write(state, FieldKey::distinct(&other), false)?);
    }
    Ok(())
}

/// Whether a person separated any member of one group from any member of the other.
fn separated(touched: &Records, left: &[RecordId], right: &[RecordId]) -> bool {
    let distinct = |a: &RecordId, b: &RecordId| {
        touched
            .get(a)
            .is_some_and(|state| state.distinct_from().contains(b))
    };
    left.iter()
        .any(|a| right.iter().any(|b| distinct(a, b) || distinct(b, a)))
}

impl Device {
    /// The identity rule, for the records `ids`: each live one's e-mails, phones and LinkedIn
    /// URLs are looked up in (and added to) the identity index, and a record that shares one
    /// with another live record of another group is linked to it, unless a person separated
    /// them. Returns the link operations, applied to the states in `touched`.
    pub(crate) fn link_by_identity(
        &self,
        touched: &mut Records,
        load: &mut Loader<'_>,
        index: &mut IdentityIndex,
        ids: impl IntoIterator<Item = RecordId>,
    ) -> Result<Vec<Operation>> {
        let mut ops = Vec::new();
        for id in ids {
            load(touched, id)?;
            let identities = match touched.get(&id) {
                Some(state) if state.is_live() => record_identities(state),
                _ => continue,
            };
            for identity in identities {
                let key = self.inner.store.cipher().index_key(&identity);
                let other = match index.get(&key)? {
                    Some(other) if other != id => other,
                    Some(_) => continue,
                    None => {
                        index.insert(key, id)?;
                        continue;
                    }
                };
                load(touched, other)?;
                let still_holds = touched.get(&other).is_some_and(|state| {
                    state.is_live() && record_identities(state).contains(&identity)
                });
                if !still_holds {
                    // The index entry is stale (the record was deleted or lost the value).
                    index.insert(key, id)?;
                    continue;
                }
                let ours = group_members(touched, load, id)?;
                if ours.contains(&other) {
                    continue;
                }
                let theirs = group_members(touched, load, other)?;
                if separated(touched, &ours, &theirs) {
                    continue;
                }
                let mut writes = BTreeMap::new();
                link_pair(touched, id, other, &mut writes)?;
                commit_writes(self, touched, &mut ops, writes)?;
            }
        }
        Ok(ops)
    }

    /// [`Device::link_by_identity`] for records already written (by a local change or a sync):
    /// takes the records lock, and commits the links as local operations.
    ///
    /// `known` holds the identities of the records as they were written: a record all of whose
    /// identities are unindexed or indexed under itself links nothing, and is settled from the
    /// index alone. Only the others are read again and go through the whole rule (a sync of
    /// 100,000 new contacts read every one of them back before this).
    pub(crate) async fn link_written(
        &self,
        ids: BTreeSet<RecordId>,
        known: &WrittenIdentities,
    ) -> Result<usize> {
        if ids.is_empty() {
            return Ok(0);
        }
        // These ids are looked up in the index, which a stopped pull left incomplete.
        self.settle_interrupted_pulls().await?;
        let records = self.inner.records_lock.lock().await;
        let mut index = IdentityIndex::new(&self.inner.store);
        let mut rest = BTreeSet::new();
        for id in ids {
            let settled = match known.get(&id) {
                Some(identities) => self.links_nothing(&mut index, None, id, identities)?,
                None => false,
            };
            if !settled {
                rest.insert(id);
            }
        }
        self.link_rest(records, index, rest).await
    }

    /// The end of the identity rule after a pull whose pages were settled as they were written
    /// ([`PulledIdentities::settle_page`]): the records that may link are checked in full, with
    /// their final states, and the index is written.
    ///
    /// What `pulled` held is taken (it is left empty), so a call after the pull's last write
    /// has landed sees every page it settled.
    pub(crate) async fn link_pulled(
        &self,
        pulled: &std::sync::Mutex<PulledIdentities>,
    ) -> Result<usize> {
        let pulled = std::mem::replace(
            &mut *pulled
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            PulledIdentities::new(&self.inner.store),
        );
        let PulledIdentities {
            index,
            rest,
            marker,
            marked,
            settled,
            relying,
        } = pulled;
        let linked = if settled == 0 && rest.is_empty() {
            0
        } else {
            tracing::debug!(
                settled,
                rest = rest.len(),
                relying = relying.len(),
                "pulled identities settled page by page; the rest go through the whole rule"
            );
            let records = self.inner.records_lock.lock().await;
            let started = std::time::Instant::now();
            let linked = self.link_rest(records, index, rest).await?;
            tracing::debug!(
                ms = started.elapsed().as_millis() as u64,
                "the identity rule after the pull"
            );
            linked
        };
        if marked {
            self.inner.store.remove(TreeName::Meta, &marker)?;
        }
        Ok(linked)
    }

    /// Runs the identity rule over every record if a pull stopped after committing pages and
    /// before its settlement ended ([`PulledIdentities`]): the index entries of its pages and
    /// the links they make were in memory only. Every record is settled as a pull of the whole
    /// store would settle it, the index written and the links committed as local operations;
    /// then the markers found are removed. Costs one read of the meta tree when no pull stopped
    /// (the case of every sync, import and edit but the first after such a stop). Pulls running
    /// in this process are not stopped ones; a pull running in another process at that moment
    /// is taken for stopped (its records are settled twice, which changes nothing, and should it
    /// then stop too, its later pages stay unsettled: not handled).
    pub(crate) async fn settle_interrupted_pulls(&self) -> Result<usize> {
        let store = &self.inner.store;
        let stopped = |device: &Self| -> Result<Vec<Vec<u8>>> {
            let running = device
                .inner
                .pulls_running
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            let mut stopped = Vec::new();
            for entry in store.scan_prefix(TreeName::Meta, meta::UNSETTLED_PREFIX) {
                let (key, _) = entry?;
                if !running.contains(&key) {
                    stopped.push(key);
                }
            }
            Ok(stopped)
        };
        if stopped(self)?.is_empty() {
            return Ok(0);
        }
        let guard = self.inner.records_lock.lock().await;
        // Read again under the lock: a pull of this process may have ended meanwhile.
        let markers = stopped(self)?;
        if markers.is_empty() {
            return Ok(0);
        }
        tracing::info!(
            pulls = markers.len(),
            "a pull stopped before the identity rule over its pages ended; settling every record"
        );
        let mut settling = PulledIdentities::new(store);
        settling
            .index
            .preload(usize::try_from(crate::pipeline::live_count(store)?).unwrap_or(usize::MAX))?;
        let cipher = store.cipher();
        let mut page = Records::new();
        let mut records = store.scan(TreeName::Records);
        loop {
            let next = records.next().transpose()?;
            let end = next.is_none();
            if let Some((_, bytes)) = next {
                let state = crate::pipeline::decode_record(&bytes)?;
                page.insert(state.id(), state);
            }
            if page.len() >= SETTLE_PAGE || (end && !page.is_empty()) {
                let blinded = PulledIdentities::blind_page(cipher, &page);
                store.transaction(|tx| settling.settle_page(tx, &page, &blinded))?;
                page.clear();
            }
            if end {
                break;
            }
        }
        let own = settling.marker.clone();
        let linked = self.link_rest(guard, settling.index, settling.rest).await?;
        store.transaction(|tx| {
            for marker in markers.iter().chain([&own]) {
                tx.remove(TreeName::Meta, marker)?;
            }
            Ok::<_, ClientError>(())
        })?;
        Ok(linked)
    }

    /// Runs the whole identity rule on `rest` with `index` (under the records lock, `_records`),
    /// writes the index, and commits the links as local operations.
    async fn link_rest(
        &self,
        _records: tokio::sync::MutexGuard<'_, ()>,
        mut index: IdentityIndex,
        rest: BTreeSet<RecordId>,
    ) -> Result<usize> {
        let mut touched = Records::new();
        let mut load = |t: &mut Records, id: RecordId| self.loaded(t, id).map(|_| ());
        let ops = if rest.is_empty() {
            Vec::new()
        } else {
            self.link_by_identity(&mut touched, &mut load, &mut index, rest)?
        };
        index.write()?;
        if ops.is_empty() {
            return Ok(0);
        }
        let changed: BTreeSet<RecordId> = ops.iter().map(Operation::record).collect();
        touched.retain(|id, _| changed.contains(id));
        self.write_local(&ops, &touched)?;
        self.persist_clock()?;
        self.inner.store.flush().await?;
        Ok(ops.len())
    }

    /// Whether `identities` (those of live record `id`) link it to no other record: each is
    /// unindexed (then indexed under `id`, as [`Device::link_by_identity`] would) or already
    /// indexed under `id`. `false` at the first one indexed under another record. Shards not
    /// loaded yet are read in `tx` if given, else from the store.
    fn links_nothing(
        &self,
        index: &mut IdentityIndex,
        tx: Option<&StoreTxn<'_>>,
        id: RecordId,
        identities: &[String],
    ) -> Result<bool> {
        let cipher = self.inner.store.cipher();
        let keys = identities.iter().map(|identity| cipher.index_key(identity));
        Ok(settle_identities(index, tx, id, keys, |_, _| false)?.is_some())
    }

    /// The group of `id` with its view: members' states in `touched`, members sorted, and the
    /// merged state shown. `None` if no member is live.
    pub(crate) fn load_group(
        &self,
        touched: &mut Records,
        id: &RecordId,
    ) -> Result<Option<(Vec<RecordId>, RecordState)>> {
        let mut load = |t: &mut Records, id: RecordId| self.loaded(t, id).map(|_| ());
        let members = group_members(touched, &mut load, *id)?;
        let view = group_view(touched, &members);
        Ok(view.is_live().then_some((members, view)))
    }

    /// Merges contacts that are the same person (at least two, given by any of their ids):
    /// written as `merged/…` links, synced, and undone by [`Device::unmerge_contact`]. A pair
    /// separated before is merged again. Returns the id the merged contact is shown under.
    pub async fn merge_contacts(&self, ids: &[RecordId]) -> Result<RecordId> {
        let guard = self.inner.records_lock.lock().await;
        let mut touched = Records::new();
        let mut representatives: Vec<RecordId> = Vec::new();
        let mut all_members: Vec<RecordId> = Vec::new();
        for id in ids {
            let Some((members, view)) = self.load_group(&mut touched, id)? else {
                return Err(ClientError::UnknownContact(id.to_hex()));
            };
            if !representatives.contains(&view.id()) {
                representatives.push(view.id());
                all_members.extend(members);
            }
        }
        if representatives.len() < 2 {
            return Err(ClientError::InvalidInput(
                "give at least two different contacts to merge (these are already one)".into(),
            ));
        }
        let mut writes = BTreeMap::new();
        for other in &representatives[1..] {
            link_pair(&touched, representatives[0], *other, &mut writes)?;
        }
        let mut ops = Vec::new();
        commit_writes(self, &mut touched, &mut ops, writes)?;
        let survivor = {
            let mut load = |t: &mut Records, id: RecordId| self.loaded(t, id).map(|_| ());
            let members = group_members(&mut touched, &mut load, representatives[0])?;
            group_view(&touched, &members).id()
        };
        let changed: BTreeSet<RecordId> = ops.iter().map(Operation::record).collect();
        touched.retain(|id, _| changed.contains(id));
        self.write_local(&ops, &touched)?;
        self.persist_clock()?;
        drop(guard);
        self.inner.store.flush().await?;
        Ok(survivor)
    }

    /// Separates record `id` from the contact it was merged into: its links to the other
    /// records are removed and the pair is marked as two people (`distinct/…`), which the
    /// identity rule respects on every device. The record shows again what it held, including
    /// what was written to it since the merge (an edit of the merged contact was written to
    /// every record that held the field, so each keeps the edited value; a field added after
    /// the merge stays with the record it was added to). The other records stay one contact.
    /// Returns the ids of the two contacts now shown: `id`'s and the rest's.
    pub async fn unmerge_contact(&self, id: &RecordId) -> Result<(RecordId, RecordId)> {
        let guard = self.inner.records_lock.lock().await;
        let mut touched = Records::new();
        let Some((members, _)) = self.load_group(&mut touched, id)? else {
            return Err(ClientError::UnknownContact(id.to_hex()));
        };
        if members.len() < 2 {
            return Err(ClientError::InvalidInput(format!(
                "contact {} is not merged with another",
                id.to_hex()
            )));
        }
        let rest: Vec<RecordId> = members.iter().filter(|m| *m != id).copied().collect();
        let mut writes: BTreeMap<RecordId, Vec<FieldWrite>> = BTreeMap::new();
        for other in &rest {
            for (this, that) in [(*id, *other), (*other, *id)] {
                if let Some(state) = touched.get(&this) {
                    let entry = writes.entry(this).or_default();
                    entry.extend(link_write(state, FieldKey::merged(&that), false)?);
                    entry.extend(link_write(state, FieldKey::distinct(&that), true)?);
                }
            }
        }
        // The others stay one contact, even if `id` was what connected them.
        for other in rest.iter().skip(1) {
            let first = rest[0];
            for (this, that) in [(first, *other), (*other, first)] {
                if let Some(state) = touched.get(&this) {
                    let entry = writes.entry(this).or_default();
                    entry.extend(link_write(state, FieldKey::merged(&that), true)?);
                }
            }
        }
        let mut ops = Vec::new();
        commit_writes(self, &mut touched, &mut ops, writes)?;
        let changed: BTreeSet<RecordId> = ops.iter().map(Operation::record).collect();
        let (left, right) = {
            let mut load = |t: &mut Records, id: RecordId| self.loaded(t, id).map(|_| ());
            let mine = group_members(&mut touched, &mut load, *id)?;
            let others = group_members(&mut touched, &mut load, rest[0])?;
            (
                group_view(&touched, &mine).id(),
                group_view(&touched, &others).id(),
            )
        };
        touched.retain(|id, _| changed.contains(id));
        self.write_local(&ops, &touched)?;
        self.persist_clock()?;
        drop(guard);
        self.inner.store.flush().await?;
        Ok((left, right))
    }

    /// The records merged into `id`'s contact, sorted (just the contact's own id if it is not
    /// merged): the ids [`Device::unmerge_contact`] takes.
    pub fn merged_records(&self, id: &RecordId) -> Result<Vec<RecordId>> {
        let mut touched = Records::new();
        let Some((members, _)) = self.load_group(&mut touched, id)? else {
            return Err(ClientError::UnknownContact(id.to_hex()));
        };
        Ok(members
            .into_iter()
            .filter(|m| touched.get(m).is_some_and(RecordState::is_live))
            .collect())
    }

    /// Every group of records by its survivor, read in one scan of the store: the groups and
    /// the states of the records (all of them).
    #[cfg(test)]
    pub(crate) fn all_records(&self) -> Result<(Groups, Records)> {
        let mut records = Records::new();
        let mut builder = GroupsBuilder::default();
        for item in self.inner.store.scan(TreeName::Records) {
            let (_, bytes) = item?;
            let state = crate::pipeline::decode_record(&bytes)?;
            builder.add(&state);
            records.insert(state.id(), state);
        }
        Ok((builder.build(), records))
    }

    /// Calls `each` with the merged view of every live contact (what [`Device::contacts`]
    /// lists), reading the records a page at a time: memory holds the records that merge
    /// links name (the index kept with every write, [`crate::pipeline::linked_records`]) and
    /// one page of the scan, never the whole store, so listing or searching a store of
    /// 1,000,000 contacts holds what it returns and little more. Records merged with others
    /// come last, as one view per group (§8.4); every other live record is its own view.
    /// `each` also gets the view's records (sorted, the survivor among them).
    pub(crate) fn for_each_view(
        &self,
        each: impl FnMut(RecordState, &[RecordId]) -> Result<()>,
    ) -> Result<()> {
        let linked = crate::pipeline::linked_records(&self.inner.store)?;
        self.for_each_view_with(&linked, each)
    }

    /// [`Device::for_each_view`] with the records that hold merge links already read, for a
    /// caller that needs them too.
    fn for_each_view_with(
        &self,
        linked: &[RecordState],
        mut each: impl FnMut(RecordState, &[RecordId]) -> Result<()>,
    ) -> Result<()> {
        let groups = Groups::from_records(linked);
        let grouped: BTreeSet<RecordId> = groups
            .merged()
            .flat_map(|(_, members)| members.iter().copied())
            .collect();
        for item in self.inner.store.scan(TreeName::Records) {
            let (_, bytes) = item?;
            let state = crate::pipeline::decode_record(&bytes)?;
            if state.is_live() && !grouped.contains(&state.id()) {
                let id = state.id();
                each(state, &[id])?;
            }
        }
        let by_id: BTreeMap<RecordId, &RecordState> =
            linked.iter().map(|state| (state.id(), state)).collect();
        for (survivor, members) in groups.merged() {
            let view = Groups::view(
                *survivor,
                members.iter().filter_map(|m| by_id.get(m).copied()),
            );
            if view.is_live() {
                each(view, members)?;
            }
        }
        Ok(())
    }

    /// Contacts that are probably one person but share no e-mail, phone or LinkedIn URL, so
    /// the identity rule did not merge them: the same name (ignoring case, accents and
    /// spacing), or first names that are variants of each other ("Bob"/"Robert") with the same
    /// last name. Pairs a person separated are left out. Merge them with
    /// [`Device::merge_contacts`].
    pub fn duplicate_suggestions(&self) -> Result<Vec<DuplicateSuggestion>> {
        // Each contact's name, id and records, read a page at a time (a store of 1,000,000
        // contacts took 6 GB when every record was read at once); and the records each
        // record was separated from, of every record that names one.
        let mut contacts: Vec<(String, RecordId, Vec<RecordId>)> = Vec::new();
        let mut separations: BTreeMap<RecordId, BTreeSet<RecordId>> = BTreeMap::new();
        let linked = crate::pipeline::linked_records(&self.inner.store)?;
        for state in &linked {
            let distinct = state.distinct_from();
            if !distinct.is_empty() {
                separations.insert(state.id(), distinct);
            }
        }
        self.for_each_view_with(&linked, |view, members| {
            if members.len() == 1 {
                let distinct = view.distinct_from();
                if !distinct.is_empty() {
                    separations.insert(view.id(), distinct);
                }
            }
            if let Some(contact) = Contact::from_record(&view)
                && let Some(name) = contact.name()
            {
                contacts.push((name.to_string(), view.id(), members.to_vec()));
            }
            Ok(())
        })?;
        contacts.sort_by_key(|a| a.1);
        let separated = |left: &[RecordId], right: &[RecordId]| {
            let distinct =
                |a: &RecordId, b: &RecordId| separations.get(a).is_some_and(|set| set.contains(b));
            left.iter()
                .any(|a| right.iter().any(|b| distinct(a, b) || distinct(b, a)))
        };
        let mut by_key: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (at, (name, _, _)) in contacts.iter().enumerate() {
            let normalized = normalized_name(name);
            if !normalized.is_empty() {
                by_key
                    .entry(canonical_first_name(&normalized))
                    .or_default()
                    .push(at);
            }
        }
        let mut out = Vec::new();
        for found in by_key.into_values() {
            // Leave out contacts a person separated from every other one of the set.
            let kept: Vec<usize> = found
                .iter()
                .copied()
                .filter(|&at| {
                    found.iter().any(|&other| {
                        other != at && !separated(&contacts[at].2, &contacts[other].2)
                    })
                })
                .collect();
            if kept.len() < 2 {
                continue;
            }
            let names: Vec<String> = kept.iter().map(|&at| contacts[at].0.clone()).collect();
            let variants: BTreeSet<String> = names
                .iter()
                .filter_map(|n| normalized_name(n).split(' ').next().map(str::to_string))
                .collect();
            let reason = if variants.len() < 2 {
                "same name, and no shared e-mail, phone or LinkedIn URL".to_string()
            } else {
                format!(
                    "name variants ({}) with the same last name, and no shared e-mail, phone \
                     or LinkedIn URL",
                    variants.into_iter().collect::<Vec<_>>().join(" / ")
                )
            };
            out.push(DuplicateSuggestion {
                ids: kept.iter().map(|&at| contacts[at].1.to_hex()).collect(),
                names,
                reason,
            });
        }
        out.sort_by(|a, b| a.names.cmp(&b.names).then(a.ids.cmp(&b.ids)));
        Ok(out)
    }
}

/// A name folded for comparison: case, accents and spacing ignored.
fn normalized_name(name: &str) -> String {
    fold(name)
        .split(|c: char| c.is_whitespace() || c == '.' || c == ',')
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Common English given-name variants, each mapped to one canonical form.
const NAME_VARIANTS: &[(&str, &str)] = &[
    ("bob", "robert"),
    ("rob", "robert"),
    ("bobby", "robert"),
    ("robbie", "robert"),
    ("bill", "william"),
    ("will", "william"),
    ("billy", "william"),
    ("liam", "william"),
    ("jim", "james"),
    ("jimmy", "james"),
    ("jamie", "james"),
    ("mike", "michael"),
    ("mick", "michael"),
    ("dick", "richard"),
    ("rick", "richard"),
    ("rich", "richard"),
    ("tom", "thomas"),
    ("tommy", "thomas"),
    ("kate", "katherine"),
    ("katie", "katherine"),
    ("kathy", "katherine"),
    ("catherine", "katherine"),
    ("liz", "elizabeth"),
    ("beth", "elizabeth"),
    ("betty", "elizabeth"),
    ("lizzie", "elizabeth"),
    ("alex", "alexander"),
    ("sasha", "alexander"),
    ("sam", "samuel"),
    ("dan", "daniel"),
    ("danny", "daniel"),
    ("dave", "david"),
    ("ben", "benjamin"),
    ("chris", "christopher"),
    ("matt", "matthew"),
    ("nick", "nicholas"),
    ("joe", "joseph"),
    ("pepe", "jose"),
    ("jenny", "jennifer"),
    ("jen", "jennifer"),
    ("pat", "patricia"),
    ("peggy", "margaret"),
    ("maggie", "margaret"),
    ("meg", "margaret"),
    ("tony", "anthony"),
    ("andy", "andrew"),
    ("drew", "andrew"),
    ("steve", "steven"),
    ("stephen", "steven"),
    ("ed", "edward"),
    ("eddie", "edward"),
    ("ted", "edward"),
    ("greg", "gregory"),
    ("jon", "jonathan"),
    ("larry", "lawrence"),
    ("sue", "susan"),
    ("suzy", "susan"),
];

/// The normalized name with its first word replaced by its canonical variant.
fn canonical_first_name(normalized: &str) -> String {
    let mut words = normalized.split(' ');
    let Some(first) = words.next() else {
        return String::new();
    };
    let canonical = NAME_VARIANTS
        .iter()
        .find(|(variant, _)| *variant == first)
        .map_or(first, |(_, canonical)| canonical);
    std::iter::once(canonical)
        .chain(words)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use kith_protocol::DeviceId;
    use kith_protocol::hlc::Hlc;

    use super::*;
    use crate::store::tests::store;

    /// `state` after an upsert of `writes` at wall time `wall_ms`.
    fn upsert(state: &mut RecordState, wall_ms: u64, writes: Vec<FieldWrite>) {
        let clock = Hlc::new(wall_ms, 0, DeviceId::from_bytes([1; 16]));
        state.apply(&Operation::upsert(state.id(), clock, writes).unwrap());
    }

    fn email(address: &str) -> FieldWrite {
        let key = FieldKey::email(address).unwrap();
        FieldWrite::set(key, record::value::email(address, ""), []).unwrap()
    }

    fn link(kind: fn(&RecordId) -> FieldKey, to: RecordId) -> FieldWrite {
        FieldWrite::set(kind(&to), record::value::tag(), []).unwrap()
    }

    /// Settles one page in a transaction of `store`.
    fn settle(store: &LocalStore, pulled: &mut PulledIdentities, page: &[&RecordState]) {
        let records: Records = page.iter().map(|s| (s.id(), (*s).clone())).collect();
        let blinded = PulledIdentities::blind_page(store.cipher(), &records);
        store
            .transaction(|tx| pulled.settle_page(tx, &records, &blinded))
            .unwrap();
    }

    /// A record's identities as they were built before they were built in place (each
    /// profile URL normalized in full, every identity formatted, a `BTreeSet`): the reference
    /// [`record_identities`] must match, byte for byte, since their blindings are stored.
    fn identities_as_formatted(state: &RecordState) -> Vec<String> {
        let mut out = BTreeSet::new();
        for (key, value) in state.values() {
            match (key.kind(), value.value.as_ref()) {
                (FieldKind::Email, _) => {
                    out.extend(key.detail().map(|address| format!("email:{address}")));
                }
                (FieldKind::Phone, _) => {
                    out.extend(key.detail().map(|e164| format!("phone:{e164}")));
                }
                (FieldKind::Url, Some(Value::Url(url))) => {
                    out.extend(
                        crate::import::linkedin::normalize_profile_url(&url.url)
                            .map(|profile| format!("linkedin:{profile}")),
                    );
                }
                (
                    FieldKind::Source(record::SourceKind::LinkedIn),
                    Some(Value::Linkedin(source)),
                ) => {
                    out.extend(
                        crate::import::linkedin::normalize_profile_url(&source.profile_url)
                            .map(|profile| format!("linkedin:{profile}")),
                    );
                }
                _ => {}
            }
        }
        out.into_iter().collect()
    }

    fn url(url: &str) -> FieldWrite {
        FieldWrite::set(FieldKey::url(url).unwrap(), record::value::url(url, ""), []).unwrap()
    }

    fn linkedin_source(profile_url: &str) -> FieldWrite {
        let source = kith_protocol::proto::LinkedInSource {
            profile_url: profile_url.to_owned(),
            ..Default::default()
        };
        let value = kith_protocol::proto::FieldValue {
            value: Some(Value::Linkedin(source)),
        };
        let key = FieldKey::source(record::SourceKind::LinkedIn);
        FieldWrite::set(key, value, []).unwrap()
    }

    /// The identities the rule blinds (index keys are stored: these strings, blinded by the
    /// store's index key, must never change for a record that did not change), pinned for a
    /// record with every kind, a profile named twice, and URLs that are not canonical.
    #[test]
    fn identities_are_blinded_as_stored_before() {
        let (_dir, store) = store();
        let mut state = RecordState::new(RecordId::from_bytes([1; 16]));
        let phone = FieldKey::phone("+15551234567").unwrap();
        let phone = FieldWrite::set(phone, record::value::phone("+15551234567", ""), []).unwrap();
        let writes = vec![
            email("Ada@Example.com"),
            email("ada@work.example"),
            phone,
            url("https://www.linkedin.com/in/ada-l"),
            linkedin_source("https://www.linkedin.com/in/ada-l"),
            url("http://uk.LinkedIn.com/in/Ada-K/?trk=x"),
            url("https://example.com/ada"),
        ];
        upsert(&mut state, 1_000, writes);
        let expected = [
            "email:ada@example.com",
            "email:ada@work.example",
            "linkedin:https://www.linkedin.com/in/ada-k",
            "linkedin:https://www.linkedin.com/in/ada-l",
            "phone:+15551234567",
        ];
        assert_eq!(record_identities(&state), expected);
        assert_eq!(identities_as_formatted(&state), expected);
        let mut gone = RecordState::new(RecordId::from_bytes([2; 16]));
        upsert(&mut gone, 1_000, vec![email("gone@example.com")]);
        gone.apply(&Operation::delete(
            gone.id(),
            Hlc::new(2_000, 0, DeviceId::from_bytes([1; 16])),
        ));
        let records: Records = [(state.id(), state), (gone.id(), gone)].into();
        let cipher = store.cipher();
        let blinded: Vec<[u8; 32]> = expected.iter().map(|i| cipher.index_key(i)).collect();
        assert_eq!(
            PulledIdentities::blind_page(cipher, &records),
            vec![blinded, Vec::new()]
        );
    }

    proptest::proptest! {
        /// Any mix of e-mails, phones, URLs and LinkedIn sources, canonical or not, repeated
        /// or not: the identities built in place are the ones formatted before.
        #[test]
        fn identities_built_in_place_are_the_formatted_ones(
            fields in proptest::collection::vec((0u8..4, "[a-zA-Z0-9-]{1,6}", 0u8..4), 0..10),
        ) {
            let mut state = RecordState::new(RecordId::from_bytes([1; 16]));
            let writes: Vec<FieldWrite> = fields
                .iter()
                .map(|(kind, slug, form)| {
                    let profile = match form {
                        0 => format!("https://www.linkedin.com/in/{}", slug.to_lowercase()),
                        1 => format!("https://www.linkedin.com/in/{slug}"),
                        2 => format!("http://linkedin.com/in/{slug}/"),
                        _ => format!("https://example.com/in/{slug}"),
                    };
                    match kind {
                        0 => email(&format!("{slug}@example.com")),
                        1 => {
                            let e164 = format!("+1{}", slug.len() * 1_111);
                            let key = FieldKey::phone(&e164).unwrap();
                            FieldWrite::set(key, record::value::phone(e164, ""), []).unwrap()
                        }
                        2 => url(&profile),
                        _ => linkedin_source(&profile),
                    }
                })
                .collect();
            // One write per key in an upsert: later ones of a key in their own upserts.
            for (at, write) in writes.into_iter().enumerate() {
                upsert(&mut state, 1_000 + at as u64, vec![write]);
            }
            proptest::prop_assert_eq!(record_identities(&state), identities_as_formatted(&state));
        }
    }

    /// A merge pulled as another device wrote it (the identifier that links the two records
    /// and both sides of the link in one page) is settled in its page: nothing is left to
    /// read back after the pull. The settlement relies on the other record's state, so a
    /// later page that changes that record (here it drops its side of the link, which the
    /// rule must then write again) sends the first back to the full rule, as does a link
    /// whose other side is not in the page, or a pair separated by hand.
    #[test]
    fn a_merge_pulled_in_one_page_is_settled_in_it() {
        let (_dir, store) = store();
        let mut pulled = PulledIdentities::new(&store);
        let (a, b) = (RecordId::from_bytes([1; 16]), RecordId::from_bytes([2; 16]));
        let (mut ra, mut rb) = (RecordState::new(a), RecordState::new(b));
        upsert(&mut ra, 1, vec![email("a@example.com")]);
        upsert(&mut rb, 1, vec![email("b@example.com")]);
        settle(&store, &mut pulled, &[&ra, &rb]);
        assert!(pulled.rest.is_empty());

        // A learns B's address and the two are merged, in one page.
        upsert(
            &mut ra,
            2,
            vec![email("b@example.com"), link(FieldKey::merged, b)],
        );
        upsert(&mut rb, 2, vec![link(FieldKey::merged, a)]);
        settle(&store, &mut pulled, &[&ra, &rb]);
        assert!(pulled.rest.is_empty(), "settled in the page");
        assert_eq!(pulled.relying.get(&b), Some(&vec![a]));

        // B drops its side of the link in a later page: A's settlement no longer holds.
        let unlink = FieldWrite::remove(FieldKey::merged(&a), rb.replaces(&FieldKey::merged(&a)));
        upsert(&mut rb, 3, vec![unlink]);
        settle(&store, &mut pulled, &[&rb]);
        assert_eq!(pulled.rest, BTreeSet::from([a]));

        // A page with A alone (B's side not in it) leaves A to the full rule too.
        let mut fresh = PulledIdentities::new(&store);
        settle(&store, &mut fresh, &[&rb]);
        settle(&store, &mut fresh, &[&ra]);
        assert_eq!(fresh.rest, BTreeSet::from([a]));

        // Linked both ways but separated by hand: not one group, left to the full rule.
        let mut separated = PulledIdentities::new(&store);
        let mut rb = RecordState::new(b);
        upsert(&mut rb, 1, vec![email("b@example.com")]);
        upsert(
            &mut rb,
            4,
            vec![link(FieldKey::merged, a), link(FieldKey::distinct, a)],
        );
        settle(&store, &mut separated, &[&rb]);
        settle(&store, &mut separated, &[&ra, &rb]);
        assert_eq!(separated.rest, BTreeSet::from([a]));
    }

    #[test]
    fn name_variants_share_a_canonical_form() {
        assert_eq!(canonical_first_name("bob smith"), "robert smith");
        assert_eq!(canonical_first_name("robert smith"), "robert smith");
        assert_eq!(normalized_name("  Ana  García "), "ana garcia");
        assert_ne!(canonical_first_name("bob jones"), "robert smith");
    }
}
