//! The state-based CRDT that merges contact records (docs/PROTOCOL.md §8).
//!
//! A [`ContactSet`] maps record ids to [`RecordState`]s. A record is a deletion clock
//! (`deleted_at`) and a map of field keys to [`FieldState`]s; a field is a set of **heads**
//! (writes: clock → value, `None` = removed) and a set of **superseded** clocks.
//!
//! - [`ContactSet::apply`]: each write of an upsert adds the clocks it `replaces` to the
//!   field's superseded set and itself as a head; heads whose clock is superseded are dropped.
//!   A delete raises `deleted_at` to the greater of the two clocks.
//! - [`ContactSet::merge`]: the union of heads and of superseded clocks, the max of `deleted_at`.
//! - A write is also superseded by a later write of the same device to the same field: a
//!   known clock of a device (head or superseded) makes its earlier clocks redundant, so a field
//!   keeps one clock per device, its latest (see "Bounded state" below).
//!
//! Per field and device the state is the greatest `(clock, superseded after head)` known, and
//! merging takes the pointwise maximum; with the max of `deleted_at` that is commutative,
//! associative and idempotent, and applying an operation is merging the state holding only that
//! operation, so every delivery order, with or without duplicates, converges on the same state
//! (`tests/merge_props.rs`).
//!
//! # Reads
//!
//! A field's value is the head with the greatest clock ([`FieldState::winner`]); if that head
//! removed the field, the field is hidden. A record is **live** while any field is visible.
//! The other heads whose value differs from the winner's are **conflicts**
//! ([`RecordState::conflicts`]): both values and clocks are there for an app to show.
//!
//! # What clears a conflict
//!
//! A write that replaces *every* head of the field ([`RecordState::replaces`]) leaves exactly
//! one head, its own: the conflict is resolved, whichever value it keeps. A write that replaces
//! only the winner leaves the other heads in place, so the conflict stays, now against the new
//! value. That is deliberate: a device that never saw a concurrent value must not discard it
//! silently, and a device that did see it says so by replacing it.
//!
//! # Forgetting what a tombstone hides
//!
//! Heads and superseded clocks at or below a record's `deleted_at` are dropped as soon as the
//! tombstone is known, and any that arrive later are ignored. This keeps convergence:
//!
//! - such a write can never be read again: reads ignore clocks `<= deleted_at`, and `deleted_at`
//!   only grows;
//! - a superseded clock `s <= deleted_at` only keeps the write `s` out of the heads; if that
//!   write arrives after `s` was forgotten, it is itself `<= deleted_at` and dropped as well;
//! - clocks above `deleted_at` are untouched and evolve exactly as without the pruning.
//!
//! Formally, with `norm(S)` = `S` without the clocks `<= S.deleted_at`, and since the joined
//! `deleted_at` is at least either side's, `norm(S ⊔ T) = norm(norm(S) ⊔ norm(T))`: the pruned
//! states are a quotient of the join semilattice, with the same laws. Deleting a contact thus
//! also erases its data from every state that learns of the deletion.
//!
//! # Bounded state
//!
//! Dropping a superseded clock `s` of device D outright would be unsafe until every device has
//! received the write `s`: a delayed copy would find no trace of having been replaced and
//! become a head again on this device but not on others. Knowing that requires causal
//! stability, which this module does not track. Instead, D's later clock `t > s` for the same
//! field stands for it: a write of D at `s` is superseded whenever such a `t` is known. An
//! honest device always sees its own previous write of a field and replaces what it sees, so
//! this changes nothing it would have done; it means a field holds at most one clock per device
//! (a head, or the latest superseded clock of a device with no head), however often it is
//! edited. For a faulty device it is still one deterministic rule, so replicas agree.
//!
//! # Faulty writers
//!
//! An honest device never issues one clock twice, but a faulty one could write two values under
//! the same clock. Then the head keeps the greater value (`None` first, then by protobuf
//! encoding), a total order, so replicas still converge.
//!
//! ```
//! use kith_protocol::{DeviceId, RecordId};
//! use kith_protocol::hlc::HlcClock;
//! use kith_protocol::merge::ContactSet;
//! use kith_protocol::record::{FieldKey, FieldWrite, Operation, value};
//!
//! let id = RecordId::from_bytes([9; 16]);
//! let mut phone = HlcClock::new(DeviceId::from_bytes([1; 16]));
//! let mut laptop = HlcClock::new(DeviceId::from_bytes([2; 16]));
//! let set_name = |clock, name: &str| {
//!     let write = FieldWrite::set(FieldKey::name(), value::text(name), [])?;
//!     Operation::upsert(id, clock, [write])
//! };
//! // Two devices name the contact without seeing each other.
//! let a = set_name(phone.tick(1_000), "Ada")?;
//! let b = set_name(laptop.tick(1_000), "Ada Lovelace")?;
//!
//! let mut state = ContactSet::new();
//! state.apply(&a);
//! state.apply(&b);
//! let record = state.get(&id).unwrap();
//! assert_eq!(state.contact(&id).unwrap().name(), Some("Ada Lovelace"));
//! assert_eq!(record.conflicts().len(), 1);
//!
//! // An edit made having seen both replaces both, and the conflict is gone.
//! phone.observe(&b.clock(), 2_000);
//! let replaces = record.replaces(&FieldKey::name());
//! let write = FieldWrite::set(FieldKey::name(), value::text("Ada"), replaces)?;
//! let resolve = Operation::upsert(id, phone.tick(2_000), [write])?;
//! state.apply(&resolve);
//! assert!(state.get(&id).unwrap().conflicts().is_empty());
//! assert_eq!(state.contact(&id).unwrap().name(), Some("Ada"));
//! # Ok::<(), kith_protocol::record::RecordError>(())
//! ```

use std::borrow::Cow;
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};

use prost::Message;

use crate::hlc::{Hlc, HlcError};
use crate::ids::{IdLengthError, RecordId};
use crate::limits::MAX_PAYLOAD_BYTES;
use crate::proto;
use crate::proto_writer::{
    bytes_len, delimited_len, hlc_len, put_bytes, put_delimited_header, put_hlc, put_value,
    value_len,
};
use crate::record::{
    FieldKey, FieldKind, Operation, OperationKind, RecordError, decode_value, encode_value,
};

/// Why a stored record state or snapshot was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MergeError {
    /// A record id is not 16 bytes.
    #[error("invalid record id: {0}")]
    InvalidRecordId(#[from] IdLengthError),
    /// A clock (deletion, head or superseded) is invalid.
    #[error("invalid clock: {0}")]
    InvalidClock(#[from] HlcError),
    /// A stored write has no clock.
    #[error("stored {field} write has no clock")]
    MissingClock {
        /// The kind of field.
        field: FieldKind,
    },
    /// A field key, or a stored value for it, is invalid.
    #[error(transparent)]
    Field(#[from] RecordError),
    /// The encoded snapshot is larger than [`MAX_PAYLOAD_BYTES`].
    #[error("snapshot is {len} bytes, more than {max}", max = MAX_PAYLOAD_BYTES)]
    SnapshotTooLarge {
        /// Its length in bytes.
        len: usize,
    },
    /// The bytes are not a valid protobuf `Snapshot` ([`ContactSet::decode_snapshot`]) or
    /// `RecordState` ([`RecordState::decode`]).
    #[error("bytes do not decode: {0}")]
    Decode(#[from] prost::DecodeError),
    /// A record of a snapshot is invalid.
    #[error("record {index} of the snapshot: {source}")]
    InRecord {
        /// Its position in the snapshot.
        index: usize,
        /// What is wrong with it.
        source: Box<MergeError>,
    },
}

/// One head of a field: a write not superseded by a later write that saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head<'a> {
    /// The write's clock.
    pub clock: Hlc,
    /// The value written; `None` if the write removed the field.
    pub value: Option<&'a proto::FieldValue>,
}

/// A field whose heads disagree: the winner and the other values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict<'a> {
    /// The field.
    pub key: &'a FieldKey,
    /// The head with the greatest clock: the value shown.
    pub winner: Head<'a>,
    /// The other heads whose value differs from the winner's, by increasing clock.
    pub others: Vec<Head<'a>>,
}

/// The merged state of one field: heads and superseded clocks.
///
/// Every clock held is greater than the record's `deleted_at` (older ones are forgotten, see
/// the module docs), so every head is visible.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldState {
    /// By increasing clock, each clock once. A field holds one head per writing device at most
    /// (usually one), so a sorted vector: a map's node would be allocated at its full width for
    /// every field of every record merged.
    heads: Vec<(Hlc, Option<proto::FieldValue>)>,
    superseded: BTreeSet<Hlc>,
}

impl FieldState {
    /// The heads, by increasing clock.
    pub fn heads(&self) -> impl DoubleEndedIterator<Item = Head<'_>> + '_ {
        self.heads.iter().map(|(clock, value)| Head {
            clock: *clock,
            value: value.as_ref(),
        })
    }

    /// The clocks of writes replaced by a later write.
    pub fn superseded(&self) -> &BTreeSet<Hlc> {
        &self.superseded
    }

    /// The heads as stored: clock and value (`None` = removed), by increasing clock.
    pub(crate) fn stored_heads(
        &self,
    ) -> impl Iterator<Item = (&Hlc, Option<&proto::FieldValue>)> + '_ {
        self.heads
            .iter()
            .map(|(clock, value)| (clock, value.as_ref()))
    }

    /// The clocks of the heads, by increasing clock.
    fn head_clocks(&self) -> impl DoubleEndedIterator<Item = &Hlc> + '_ {
        self.heads.iter().map(|(clock, _)| clock)
    }

    /// The head with the greatest clock, if any.
    pub fn winner(&self) -> Option<Head<'_>> {
        self.heads().next_back()
    }

    /// The field's value: the winner's, `None` if it removed the field (or there is no head).
    pub fn value(&self) -> Option<&proto::FieldValue> {
        self.winner().and_then(|head| head.value)
    }

    /// The other heads whose value differs from the winner's, by increasing clock.
    pub fn conflicting(&self) -> Vec<Head<'_>> {
        let Some(winner) = self.winner() else {
            return Vec::new();
        };
        self.heads()
            .filter(|head| head.clock != winner.clock && head.value != winner.value)
            .collect()
    }

    fn is_empty(&self) -> bool {
        self.heads.is_empty() && self.superseded.is_empty()
    }

    /// The greatest clock of the field, head or superseded.
    fn latest_clock(&self) -> Option<Hlc> {
        let head = self.head_clocks().next_back();
        head.max(self.superseded.last()).copied()
    }

    /// Whether a clock of `clock`'s writer greater than `clock` is known (head or superseded):
    /// then `clock` is superseded by the writer's own later write.
    fn knows_later_write_of_writer(&self, clock: Hlc) -> bool {
        let later = |known: &Hlc| known.device() == clock.device() && *known > clock;
        self.head_clocks().any(later) || self.superseded.iter().any(later)
    }

    /// Drops what `clock` implies: every earlier head and superseded clock of its writer.
    fn forget_earlier_of_writer(&mut self, clock: Hlc) {
        let earlier = |known: &Hlc| known.device() == clock.device() && *known < clock;
        self.heads.retain(|(known, _)| !earlier(known));
        self.superseded.retain(|known| !earlier(known));
    }

    /// Adds a head unless its clock is superseded. Returns whether the state changed. The
    /// value is cloned only if kept; a decoded value is handed over owned.
    fn insert_head(&mut self, clock: Hlc, value: Option<Cow<'_, proto::FieldValue>>) -> bool {
        if self.superseded.contains(&clock) || self.knows_later_write_of_writer(clock) {
            return false;
        }
        match self.heads.binary_search_by(|(known, _)| known.cmp(&clock)) {
            Err(at) => {
                self.heads.insert(at, (clock, value.map(Cow::into_owned)));
                self.forget_earlier_of_writer(clock);
                true
            }
            Ok(at) => {
                // Only a faulty writer reuses a clock: keep the greater value, on every replica.
                let rank = |value: Option<&proto::FieldValue>| value.map(Message::encode_to_vec);
                let held = &mut self.heads[at].1;
                if rank(value.as_deref()) > rank(held.as_ref()) {
                    *held = value.map(Cow::into_owned);
                    true
                } else {
                    false
                }
            }
        }
    }

    /// Marks `clock` superseded and drops its head. Returns whether the state changed.
    fn supersede(&mut self, clock: Hlc) -> bool {
        if self.superseded.contains(&clock) || self.knows_later_write_of_writer(clock) {
            return false;
        }
        self.superseded.insert(clock);
        self.heads.retain(|(known, _)| *known != clock);
        self.forget_earlier_of_writer(clock);
        true
    }

    /// Forgets every clock `<= deleted_at`.
    fn forget_through(&mut self, deleted_at: Hlc) {
        self.heads.retain(|(clock, _)| *clock > deleted_at);
        self.superseded.retain(|clock| *clock > deleted_at);
    }
}

/// The merged state of one record.
///
/// Never empty: it has a deletion clock or at least one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordState {
    id: RecordId,
    deleted_at: Option<Hlc>,
    fields: BTreeMap<FieldKey, FieldState>,
    /// [`RecordState::is_live`], a function of `fields` kept in step by every public method
    /// that changes them ([`RecordState::refresh_live`]). Asked of every state a pull or an
    /// import loads and writes, often on a thread that did not build the state, where walking
    /// its fields missed the cache at each node (BENCHMARKS.md, "Sync with merges (issue 11),
    /// eleventh session"). Equal states have equal fields, so it never makes them differ.
    live: bool,
}

impl RecordState {
    /// An empty record: no field, never deleted. Applying operations to it builds the record.
    pub fn new(id: RecordId) -> Self {
        Self {
            id,
            deleted_at: None,
            fields: BTreeMap::new(),
            live: false,
        }
    }

    /// The record's id.
    pub fn id(&self) -> RecordId {
        self.id
    }

    /// The greatest delete clock seen: writes up to it are hidden (and forgotten).
    pub fn deleted_at(&self) -> Option<Hlc> {
        self.deleted_at
    }

    /// Every field with state, including removed ones and those whose writes were all replaced.
    pub fn fields(&self) -> &BTreeMap<FieldKey, FieldState> {
        &self.fields
    }

    /// The state of one field.
    pub fn field(&self, key: &FieldKey) -> Option<&FieldState> {
        self.fields.get(key)
    }

    /// The visible value of one field.
    pub fn value(&self, key: &FieldKey) -> Option<&proto::FieldValue> {
        self.fields.get(key).and_then(FieldState::value)
    }

    /// Every visible field and its value, in key order.
    pub fn values(&self) -> impl Iterator<Item = (&FieldKey, &proto::FieldValue)> + '_ {
        self.fields
            .iter()
            .filter_map(|(key, field)| field.value().map(|value| (key, value)))
    }

    /// Whether any field describing the person is visible (`merged/…` and `distinct/…` links
    /// alone do not make a record live).
    pub fn is_live(&self) -> bool {
        self.live
    }

    /// Whether the fields make the record live, walked: what [`RecordState::is_live`] holds.
    fn walk_live(&self) -> bool {
        self.values().any(|(key, _)| !key.kind().is_link())
    }

    /// Sets `live` from the fields; called by every public method that changes them, once
    /// they are changed.
    fn refresh_live(&mut self) {
        self.live = self.walk_live();
    }

    /// The records this one names with a visible `merged/…` field (§8.4). The pair is one
    /// person only if the other names this one back ([`Groups`]).
    pub fn merged_with(&self) -> BTreeSet<RecordId> {
        self.linked(FieldKind::Merged)
    }

    /// The records this one names with a visible `distinct/…` field: separated by hand.
    pub fn distinct_from(&self) -> BTreeSet<RecordId> {
        self.linked(FieldKind::Distinct)
    }

    fn linked(&self, kind: FieldKind) -> BTreeSet<RecordId> {
        self.fields
            .iter()
            .filter(|(key, field)| key.kind() == kind && field.value().is_some())
            .filter_map(|(key, _)| key.linked_record())
            .collect()
    }

    /// Joins every field of `other` into this state (heads and superseded clocks, by the same
    /// rules as [`RecordState::merge`]) whatever its record id, leaving `deleted_at` as it is:
    /// how the view of a merged contact is built from its records ([`Groups::view`]).
    pub fn absorb(&mut self, other: &RecordState) {
        for (key, field) in &other.fields {
            for clock in &field.superseded {
                self.supersede(key, *clock);
            }
            for (clock, value) in &field.heads {
                self.insert_head(
                    Cow::Borrowed(key),
                    *clock,
                    value.as_ref().map(Cow::Borrowed),
                );
            }
        }
        self.refresh_live();
    }

    /// Every field whose heads disagree, in key order.
    pub fn conflicts(&self) -> Vec<Conflict<'_>> {
        self.fields
            .iter()
            .filter_map(|(key, field)| {
                let others = field.conflicting();
                let winner = field.winner()?;
                (!others.is_empty()).then_some(Conflict {
                    key,
                    winner,
                    others,
                })
            })
            .collect()
    }

    /// The clocks a new write of `key` should replace: every head, so that the write supersedes
    /// all the values this device has seen (and clears a conflict).
    pub fn replaces(&self, key: &FieldKey) -> Vec<Hlc> {
        self.fields
            .get(key)
            .map(|field| field.head_clocks().copied().collect())
            .unwrap_or_default()
    }

    /// The wire form, sorted (fields by key, heads and superseded clocks by clock).
    ///
    /// Fields of kinds later than protocol 1.0 go in `extension_fields` (§8.1).
    pub fn to_proto(&self) -> proto::RecordState {
        let mut wire = proto::RecordState {
            record_id: self.id.as_bytes().to_vec(),
            deleted_at: self.deleted_at.as_ref().map(Hlc::to_proto),
            ..Default::default()
        };
        for (key, field) in &self.fields {
            let state = proto::FieldState {
                key: key.as_str().to_owned(),
                heads: field
                    .heads
                    .iter()
                    .map(|(clock, value)| proto::StoredWrite {
                        clock: Some(clock.to_proto()),
                        value: value.as_ref().map(encode_value),
                    })
                    .collect(),
                superseded: field.superseded.iter().map(Hlc::to_proto).collect(),
            };
            if key.kind().is_protocol_1_0() {
                wire.fields.push(state);
            } else {
                wire.extension_fields.push(state);
            }
        }
        wire
    }

    /// The encoded wire form: the bytes of `to_proto().encode_to_vec()`, written without
    /// copying the state into prost messages first.
    pub fn encode_to_vec(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(self.encoded_len_estimate());
        record_state(self, &mut buf);
        buf
    }

    /// Appends [`RecordState::encode_to_vec`]'s bytes to `buf`, after what it holds: a caller
    /// that wraps the encoding (a nonce before it, a tag after it) writes it in place instead
    /// of copying it out of a vector of its own.
    ///
    /// ```
    /// use kith_protocol::RecordId;
    /// use kith_protocol::merge::RecordState;
    ///
    /// let record = RecordState::new(RecordId::from_bytes([9; 16]));
    /// let mut buf = b"nonce".to_vec();
    /// record.encode_into(&mut buf);
    /// assert_eq!(&buf[..5], b"nonce");
    /// assert_eq!(&buf[5..], &record.encode_to_vec()[..]);
    /// ```
    pub fn encode_into(&self, buf: &mut Vec<u8>) {
        record_state(self, buf);
    }

    /// Bytes to reserve for [`RecordState::encode_to_vec`]: an estimate from the number of
    /// fields (computing the exact length would walk every head once more), not a bound.
    pub fn encoded_len_estimate(&self) -> usize {
        (self.fields().len() + 1) * RECORD_STATE_BYTES_PER_FIELD
    }

    /// Decodes and validates a stored state (the bytes of [`RecordState::encode_to_vec`]):
    /// the same result, state or error, as `proto::RecordState::decode` followed by
    /// [`RecordState::from_proto`]. The encoding this crate writes is read in place, each key
    /// and value decoded once and moved into the state; anything else (a field repeated, out
    /// of order or unknown, or an error) is decided by that prost path. Never panics.
    ///
    /// ```
    /// use kith_protocol::RecordId;
    /// use kith_protocol::hlc::HlcClock;
    /// use kith_protocol::merge::{MergeError, RecordState};
    /// use kith_protocol::record::{FieldKey, FieldWrite, Operation, value};
    /// use kith_protocol::DeviceId;
    ///
    /// let id = RecordId::from_bytes([9; 16]);
    /// let mut clock = HlcClock::new(DeviceId::from_bytes([1; 16]));
    /// let write = FieldWrite::set(FieldKey::name(), value::text("Ada"), [])?;
    /// let mut record = RecordState::new(id);
    /// record.apply(&Operation::upsert(id, clock.tick(1_000), [write])?);
    /// let bytes = record.encode_to_vec();
    /// assert_eq!(RecordState::decode(&bytes), Ok(record));
    /// assert!(matches!(RecordState::decode(&bytes[..bytes.len() - 1]), Err(MergeError::Decode(_))));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn decode(bytes: &[u8]) -> Result<Self, MergeError> {
        if let Some(record) = reader::read_record_state(bytes) {
            return Ok(record);
        }
        Self::from_proto(&proto::RecordState::decode(bytes)?)
    }

    /// Parses and validates the wire form.
    ///
    /// The wire state is read as a set of facts and merged in, so repeated fields, heads that
    /// are also superseded and clocks below `deleted_at` are accepted and normalized away.
    pub fn from_proto(wire: &proto::RecordState) -> Result<Self, MergeError> {
        let mut record = Self::new(RecordId::from_slice(&wire.record_id)?);
        if let Some(deleted_at) = &wire.deleted_at {
            record.delete_at(Hlc::from_proto(deleted_at)?);
        }
        for field in wire.fields.iter().chain(&wire.extension_fields) {
            let key = FieldKey::parse(&field.key)?;
            for clock in &field.superseded {
                record.supersede(&key, Hlc::from_proto(clock)?);
            }
            for head in &field.heads {
                let clock = head
                    .clock
                    .as_ref()
                    .ok_or(MergeError::MissingClock { field: key.kind() })?;
                let value = head
                    .value
                    .as_deref()
                    .map(|bytes| decode_value(&key, bytes))
                    .transpose()?;
                record.insert_head(
                    Cow::Borrowed(&key),
                    Hlc::from_proto(clock)?,
                    value.map(Cow::Owned),
                );
            }
        }
        record.refresh_live();
        Ok(record)
    }

    fn is_empty(&self) -> bool {
        self.deleted_at.is_none() && self.fields.is_empty()
    }

    fn is_hidden(&self, clock: Hlc) -> bool {
        self.deleted_at
            .is_some_and(|deleted_at| clock <= deleted_at)
    }

    /// Applies one operation on this record; returns whether the state changed. An operation
    /// for another record changes nothing. Stores that keep one state per record use this and
    /// [`RecordState::merge`] directly; [`ContactSet`] uses them for a whole account.
    pub fn apply(&mut self, operation: &Operation) -> bool {
        if operation.record() != self.id {
            return false;
        }
        let clock = operation.clock();
        let changed = match operation.kind() {
            OperationKind::Delete => self.delete_at(clock),
            OperationKind::Upsert(writes) => {
                let mut changed = false;
                for write in writes {
                    changed |= self.apply_write(
                        Cow::Borrowed(write.key()),
                        clock,
                        write.value().map(Cow::Borrowed),
                        write.replaces(),
                    );
                }
                changed
            }
        };
        if changed {
            self.refresh_live();
        }
        changed
    }

    /// [`RecordState::apply`], moving the operation's keys and values into the state instead
    /// of copying them: the same state and the same answer. A pull applies every operation it
    /// decoded once and drops it; copying each key and value there (and freeing the originals)
    /// was about a tenth of the merging thread's time (BENCHMARKS.md, "B's pull (issue 18),
    /// twelfth session").
    pub fn apply_owned(&mut self, operation: Operation) -> bool {
        if operation.record() != self.id {
            return false;
        }
        let clock = operation.clock();
        let changed = match operation.into_kind() {
            OperationKind::Delete => self.delete_at(clock),
            OperationKind::Upsert(writes) => {
                let mut changed = false;
                for write in writes {
                    let (key, value, replaces) = write.into_parts();
                    changed |=
                        self.apply_write(Cow::Owned(key), clock, value.map(Cow::Owned), &replaces);
                }
                changed
            }
        };
        if changed {
            self.refresh_live();
        }
        changed
    }

    /// One write of an upsert at `clock`: the clocks it replaces superseded, then its head.
    fn apply_write(
        &mut self,
        key: Cow<'_, FieldKey>,
        clock: Hlc,
        value: Option<Cow<'_, proto::FieldValue>>,
        replaces: &BTreeSet<Hlc>,
    ) -> bool {
        let mut changed = false;
        for replaced in replaces {
            changed |= self.supersede(&key, *replaced);
        }
        changed | self.insert_head(key, clock, value)
    }

    /// Merges another state of the same record (join of the two); returns whether this state
    /// changed. A state of another record changes nothing.
    pub fn merge(&mut self, other: &RecordState) -> bool {
        if other.id != self.id {
            return false;
        }
        let mut changed = other
            .deleted_at
            .is_some_and(|deleted_at| self.delete_at(deleted_at));
        for (key, field) in &other.fields {
            for clock in &field.superseded {
                changed |= self.supersede(key, *clock);
            }
            for (clock, value) in &field.heads {
                changed |= self.insert_head(
                    Cow::Borrowed(key),
                    *clock,
                    value.as_ref().map(Cow::Borrowed),
                );
            }
        }
        if changed {
            self.refresh_live();
        }
        changed
    }

    /// Raises `deleted_at` to `clock` and forgets what it hides.
    fn delete_at(&mut self, clock: Hlc) -> bool {
        if self.deleted_at >= Some(clock) {
            return false;
        }
        self.deleted_at = Some(clock);
        self.fields.retain(|_, field| {
            field.forget_through(clock);
            !field.is_empty()
        });
        true
    }

    fn supersede(&mut self, key: &FieldKey, clock: Hlc) -> bool {
        if self.is_hidden(clock) {
            return false;
        }
        match self.fields.get_mut(key) {
            Some(field) => field.supersede(clock),
            None => {
                let mut field = FieldState::default();
                field.supersede(clock);
                self.fields.insert(key.clone(), field);
                true
            }
        }
    }

    /// Adds the head `(clock, value)` to the field `key`; the key is copied (if borrowed)
    /// only when the record does not hold the field yet, the value only when it is kept.
    fn insert_head(
        &mut self,
        key: Cow<'_, FieldKey>,
        clock: Hlc,
        value: Option<Cow<'_, proto::FieldValue>>,
    ) -> bool {
        if self.is_hidden(clock) {
            return false;
        }
        match self.fields.get_mut(&*key) {
            Some(field) => field.insert_head(clock, value),
            None => {
                let mut field = FieldState::default();
                field.insert_head(clock, value);
                self.fields.insert(key.into_owned(), field);
                true
            }
        }
    }

    /// The greatest clock held anywhere in the record (heads, superseded clocks, deletion):
    /// a delete must be later than it to hide everything this device has merged
    /// ([`HlcClock::tick_after`](crate::hlc::HlcClock::tick_after)).
    pub fn latest_clock(&self) -> Option<Hlc> {
        self.fields
            .values()
            .filter_map(FieldState::latest_clock)
            .chain(self.deleted_at)
            .max()
    }

    /// The greatest clock held for the fields `keys` (heads and superseded clocks) and the
    /// record's deletion clock: a write of those fields must be later than it, so that it
    /// replaces every value seen, is not hidden by the delete and is not taken for an earlier
    /// write of its own device ([`HlcClock::tick_after`](crate::hlc::HlcClock::tick_after)).
    ///
    /// ```
    /// use kith_protocol::{DeviceId, RecordId};
    /// use kith_protocol::hlc::{Hlc, HlcClock};
    /// use kith_protocol::merge::RecordState;
    /// use kith_protocol::record::{FieldKey, FieldWrite, Operation, value};
    ///
    /// let id = RecordId::from_bytes([9; 16]);
    /// // A device with its date ten years ahead set the company.
    /// let future = Hlc::new(2_000_000_000_000, 0, DeviceId::from_bytes([2; 16]));
    /// let write = FieldWrite::set(FieldKey::company(), value::text("From the future"), [])?;
    /// let mut record = RecordState::new(id);
    /// record.apply(&Operation::upsert(id, future, [write])?);
    ///
    /// // A device with the right date edits it: its write is later, and wins.
    /// let mut clock = HlcClock::new(DeviceId::from_bytes([1; 16]));
    /// let key = FieldKey::company();
    /// let at = clock.tick_after(1_700_000_000_000, record.latest_clock_of([&key]))?;
    /// let fix = FieldWrite::set(key.clone(), value::text("Fixed today"), record.replaces(&key))?;
    /// record.apply(&Operation::upsert(id, at, [fix])?);
    /// assert_eq!(record.value(&key), Some(&value::text("Fixed today")));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn latest_clock_of<'a>(&self, keys: impl IntoIterator<Item = &'a FieldKey>) -> Option<Hlc> {
        keys.into_iter()
            .filter_map(|key| self.fields.get(key).and_then(FieldState::latest_clock))
            .chain(self.deleted_at)
            .max()
    }
}

/// Every record of an account, merged: the state each device converges on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContactSet {
    records: BTreeMap<RecordId, RecordState>,
}

impl ContactSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one operation (local or received, in any order, any number of times).
    ///
    /// Returns the record's id if its stored state changed (its visible contact may or may
    /// not have); `None` if the operation was already known, superseded or hidden by a delete.
    pub fn apply(&mut self, operation: &Operation) -> Option<RecordId> {
        let id = operation.record();
        let changed = match self.records.get_mut(&id) {
            Some(record) => record.apply(operation),
            None => {
                let mut record = RecordState::new(id);
                let changed = record.apply(operation);
                if !record.is_empty() {
                    self.records.insert(id, record);
                }
                changed
            }
        };
        changed.then_some(id)
    }

    /// Applies operations in order; returns the ids of the records that changed.
    pub fn apply_all<'a>(
        &mut self,
        operations: impl IntoIterator<Item = &'a Operation>,
    ) -> BTreeSet<RecordId> {
        operations
            .into_iter()
            .filter_map(|operation| self.apply(operation))
            .collect()
    }

    /// Merges another state into this one; returns the ids of the records that changed.
    pub fn merge(&mut self, other: &ContactSet) -> BTreeSet<RecordId> {
        let mut changed = BTreeSet::new();
        for (id, theirs) in &other.records {
            let modified = match self.records.get_mut(id) {
                Some(ours) => ours.merge(theirs),
                None => {
                    self.records.insert(*id, theirs.clone());
                    true
                }
            };
            if modified {
                changed.insert(*id);
            }
        }
        changed
    }

    /// The state of one record (live or deleted).
    pub fn get(&self, id: &RecordId) -> Option<&RecordState> {
        self.records.get(id)
    }

    /// Every record with state, deleted ones included, by id.
    pub fn records(&self) -> impl Iterator<Item = &RecordState> + '_ {
        self.records.values()
    }

    /// How many records have state, deleted ones included.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether no record has state.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The greatest clock held anywhere. Scans the set.
    pub fn latest_clock(&self) -> Option<Hlc> {
        self.records
            .values()
            .filter_map(RecordState::latest_clock)
            .max()
    }

    /// A snapshot of this state (records sorted by id) covering the given stream positions.
    pub fn to_snapshot(&self, positions: Vec<proto::StreamPosition>) -> proto::Snapshot {
        proto::Snapshot {
            first_seq: 0,
            writer_view: None,
            records: self.records.values().map(RecordState::to_proto).collect(),
            positions,
        }
    }

    /// The state held by a snapshot; its stream positions are left to the caller.
    ///
    /// Records listed twice are merged; records with no content are skipped.
    pub fn from_snapshot(snapshot: &proto::Snapshot) -> Result<Self, MergeError> {
        let mut set = Self::new();
        for (index, wire) in snapshot.records.iter().enumerate() {
            let record = RecordState::from_proto(wire).map_err(|err| MergeError::InRecord {
                index,
                source: Box::new(err),
            })?;
            if record.is_empty() {
                continue;
            }
            match set.records.entry(record.id) {
                Entry::Vacant(entry) => {
                    entry.insert(record);
                }
                Entry::Occupied(mut entry) => {
                    entry.get_mut().merge(&record);
                }
            }
        }
        Ok(set)
    }

    /// Decodes a `Snapshot` from untrusted bytes (bounded by [`MAX_PAYLOAD_BYTES`] before
    /// decoding): its state and its raw stream positions, which the stream layer validates.
    pub fn decode_snapshot(bytes: &[u8]) -> Result<(Self, Vec<proto::StreamPosition>), MergeError> {
        if bytes.len() > MAX_PAYLOAD_BYTES {
            return Err(MergeError::SnapshotTooLarge { len: bytes.len() });
        }
        let snapshot = proto::Snapshot::decode(bytes)?;
        let set = Self::from_snapshot(&snapshot)?;
        Ok((set, snapshot.positions))
    }
}

/// Which records are one person: the groups that `merged/…` links make (docs/PROTOCOL.md §8.4).
///
/// Records X and Y are **linked** when X shows a visible `merged/Y` field, Y shows a visible
/// `merged/X` field, and neither shows `distinct/` of the other. A group is a connected
/// component of the links (so merging is transitive: A–B and B–C make one person of A, B
/// and C). Its **survivor**, the id the merged contact is shown under, is the smallest id of
/// its live members (the smallest id if none is live). Everything here is a function of the
/// merged state alone, which every device converges on, so every device computes the same
/// groups and the same merged contacts whatever order it received the operations in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Groups {
    /// Survivor of every record in a group of two or more.
    survivor: BTreeMap<RecordId, RecordId>,
    /// Members (sorted, survivor included) of each group of two or more, by survivor.
    members: BTreeMap<RecordId, Vec<RecordId>>,
}

/// Builds [`Groups`] from records read one at a time (a store scan), keeping only the link
/// facts of records that name another.
#[derive(Debug, Clone, Default)]
pub struct GroupsBuilder {
    merged: BTreeMap<RecordId, BTreeSet<RecordId>>,
    distinct: BTreeMap<RecordId, BTreeSet<RecordId>>,
    live: BTreeSet<RecordId>,
}

impl GroupsBuilder {
    /// Takes the link facts of one record's state.
    pub fn add(&mut self, record: &RecordState) {
        let merged = record.merged_with();
        if merged.is_empty() {
            return;
        }
        let distinct = record.distinct_from();
        if !distinct.is_empty() {
            self.distinct.insert(record.id, distinct);
        }
        if record.is_live() {
            self.live.insert(record.id);
        }
        self.merged.insert(record.id, merged);
    }

    /// The groups of every record added.
    pub fn build(self) -> Groups {
        let distinct = |a: &RecordId, b: &RecordId| {
            self.distinct.get(a).is_some_and(|set| set.contains(b))
                || self.distinct.get(b).is_some_and(|set| set.contains(a))
        };
        // Union-find over the links, the root of a set being its smallest id.
        let mut parent: BTreeMap<RecordId, RecordId> = BTreeMap::new();
        fn root(parent: &mut BTreeMap<RecordId, RecordId>, id: RecordId) -> RecordId {
            let mut at = id;
            while let Some(&up) = parent.get(&at) {
                if up == at {
                    break;
                }
                at = up;
            }
            // Path compression.
            let mut walk = id;
            while walk != at {
                let next = parent.get(&walk).copied().unwrap_or(at);
                parent.insert(walk, at);
                walk = next;
            }
            at
        }
        for (a, named) in &self.merged {
            for b in named {
                let reciprocal = self.merged.get(b).is_some_and(|set| set.contains(a));
                if a < b && reciprocal && !distinct(a, b) {
                    parent.entry(*a).or_insert(*a);
                    parent.entry(*b).or_insert(*b);
                    let (ra, rb) = (root(&mut parent, *a), root(&mut parent, *b));
                    let (low, high) = if ra < rb { (ra, rb) } else { (rb, ra) };
                    parent.insert(high, low);
                }
            }
        }
        let ids: Vec<RecordId> = parent.keys().copied().collect();
        let mut by_root: BTreeMap<RecordId, Vec<RecordId>> = BTreeMap::new();
        for id in ids {
            let r = root(&mut parent, id);
            by_root.entry(r).or_default().push(id);
        }
        let mut groups = Groups::default();
        for (_, members) in by_root {
            let survivor = members
                .iter()
                .find(|id| self.live.contains(id))
                .or(members.first())
                .copied();
            let Some(survivor) = survivor else { continue };
            for id in &members {
                groups.survivor.insert(*id, survivor);
            }
            groups.members.insert(survivor, members);
        }
        groups
    }
}

impl Groups {
    /// The groups of a set of records.
    pub fn from_records<'a>(records: impl IntoIterator<Item = &'a RecordState>) -> Self {
        let mut builder = GroupsBuilder::default();
        for record in records {
            builder.add(record);
        }
        builder.build()
    }

    /// The id `id`'s contact is shown under: its group's survivor (itself if not merged).
    pub fn survivor(&self, id: &RecordId) -> RecordId {
        self.survivor.get(id).copied().unwrap_or(*id)
    }

    /// Every record of `id`'s group, sorted (just `id` if it is not merged).
    pub fn members(&self, id: &RecordId) -> Vec<RecordId> {
        self.members
            .get(&self.survivor(id))
            .cloned()
            .unwrap_or_else(|| vec![*id])
    }

    /// Whether `id` is shown as a contact of its own or as its group's survivor (not merged
    /// into another record).
    pub fn is_survivor(&self, id: &RecordId) -> bool {
        self.survivor(id) == *id
    }

    /// Every group of two or more records: survivor and members.
    pub fn merged(&self) -> impl Iterator<Item = (&RecordId, &[RecordId])> + '_ {
        self.members
            .iter()
            .map(|(id, members)| (id, members.as_slice()))
    }

    /// The merged state shown for a group: every member's fields joined (heads and superseded
    /// clocks, so concurrent edits keep their conflict semantics and a write that replaced a
    /// member's value replaces it here too), under the survivor's id. Each member's own
    /// deletion has already removed what it hid, and hides nothing of the other members.
    pub fn view<'a>(
        survivor: RecordId,
        members: impl IntoIterator<Item = &'a RecordState>,
    ) -> RecordState {
        let mut view = RecordState::new(survivor);
        for member in members {
            view.absorb(member);
        }
        view
    }
}

impl ContactSet {
    /// The groups of records that are one person ([`Groups`]).
    pub fn groups(&self) -> Groups {
        Groups::from_records(self.records.values())
    }

    /// The merged view of `id`'s group ([`Groups::view`]); `None` if no member has state.
    pub fn merged_record(&self, groups: &Groups, id: &RecordId) -> Option<RecordState> {
        let members = groups.members(id);
        let states: Vec<&RecordState> =
            members.iter().filter_map(|m| self.records.get(m)).collect();
        (!states.is_empty()).then(|| Groups::view(groups.survivor(id), states))
    }
}

// --- The RecordState writer (crate::proto_writer) ---
// --- RecordState { record_id = 1; deleted_at = 2; fields = 3; extension_fields = 4 } ---
// --- FieldState { key = 1; repeated StoredWrite heads = 2; repeated Hlc superseded = 3 } ---
// --- StoredWrite { clock = 1; value = 2 } ---

fn stored_write_body_len(clock: &Hlc, value: Option<&proto::FieldValue>) -> usize {
    hlc_len(1, clock) + value_len(2, value)
}

fn field_state_body_len<'a>(
    key: &str,
    heads: impl Iterator<Item = (&'a Hlc, Option<&'a proto::FieldValue>)>,
    superseded: impl Iterator<Item = &'a Hlc>,
) -> usize {
    bytes_len(1, key.as_bytes())
        + heads
            .map(|(clock, value)| delimited_len(2, stored_write_body_len(clock, value)))
            .sum::<usize>()
        + superseded.map(|clock| hlc_len(3, clock)).sum::<usize>()
}

/// Bytes reserved for an encoded `RecordState` per field (and once for the id and deletion):
/// a field of an imported contact (key, clock, value) takes 40-90 bytes. An estimate, not the
/// exact length: computing that first walked every head's lengths once more, a third of the
/// encoding's time (a profile of a 300,000-row import: 6 % of the writer thread).
const RECORD_STATE_BYTES_PER_FIELD: usize = 96;

/// Appends `RecordState` to `buf`, byte for byte what `state.to_proto().encode_to_vec()`
/// gives.
fn record_state(state: &RecordState, buf: &mut Vec<u8>) {
    put_bytes(1, state.id().as_bytes(), buf);
    if let Some(clock) = state.deleted_at() {
        put_hlc(2, &clock, buf);
    }
    // Fields in tag order, as prost writes them: `fields`, then `extension_fields`.
    for tag in [3, 4] {
        let fields = state.fields().iter();
        for (key, field) in fields.filter(|(key, _)| record_field_tag(key) == tag) {
            let body = field_state_body_len(
                key.as_str(),
                field.stored_heads(),
                field.superseded().iter(),
            );
            put_delimited_header(tag, body, buf);
            put_bytes(1, key.as_str().as_bytes(), buf);
            for (clock, value) in field.stored_heads() {
                put_delimited_header(2, stored_write_body_len(clock, value), buf);
                put_hlc(1, clock, buf);
                put_value(2, value, buf);
            }
            for clock in field.superseded() {
                put_hlc(3, clock, buf);
            }
        }
    }
}

/// The `RecordState` field a field state travels in: protocol 1.0 kinds in `fields`, later
/// kinds in `extension_fields` (docs/PROTOCOL.md §8.1).
fn record_field_tag(key: &FieldKey) -> u32 {
    if key.kind().is_protocol_1_0() { 3 } else { 4 }
}

pub(crate) mod reader;

#[cfg(test)]
pub(crate) mod tests;
