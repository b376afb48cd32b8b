//! Operations: [`FieldWrite`]s grouped into an [`Operation`] on one record, and the
//! `OperationBatch` codec, the one entry point for untrusted operation bytes.

use std::collections::BTreeSet;

use prost::Message;

use crate::hlc::Hlc;
use crate::ids::RecordId;
use crate::limits::{MAX_OPERATIONS_PER_BATCH, MAX_PAYLOAD_BYTES, MAX_WRITES_PER_OPERATION};
use crate::proto;

use crate::proto_writer::{
    bytes_len, delimited_len, hlc_len, put_bytes, put_delimited_header, put_hlc, put_value,
    put_varint, value_len, varint_len,
};

use super::{FieldKey, RecordError, decode_value, encode_value};

///
/// `replaces` are the clocks of the values the writer saw: usually
/// [`RecordState::replaces`](crate::merge::RecordState::replaces) for that key. Replacing every head clears a conflict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldWrite {
    key: FieldKey,
    value: Option<proto::FieldValue>,
    replaces: BTreeSet<Hlc>,
}

impl FieldWrite {
    /// Sets `key` to `value`; fails if the value does not fit the key
    /// ([`FieldKey::check_value`]).
    pub fn set(
        key: FieldKey,
        value: proto::FieldValue,
        replaces: impl IntoIterator<Item = Hlc>,
    ) -> Result<Self, RecordError> {
        key.check_value(&value)?;
        Ok(Self {
            key,
            value: Some(value),
            replaces: replaces.into_iter().collect(),
        })
    }

    /// Removes `key` (the field, or the set element).
    pub fn remove(key: FieldKey, replaces: impl IntoIterator<Item = Hlc>) -> Self {
        Self {
            key,
            value: None,
            replaces: replaces.into_iter().collect(),
        }
    }

    /// The field written.
    pub fn key(&self) -> &FieldKey {
        &self.key
    }

    /// The new value; `None` removes the field.
    pub fn value(&self) -> Option<&proto::FieldValue> {
        self.value.as_ref()
    }

    /// The clocks this write replaces.
    pub fn replaces(&self) -> &BTreeSet<Hlc> {
        &self.replaces
    }

    /// The key, the value and the replaced clocks, moved out.
    pub fn into_parts(self) -> (FieldKey, Option<proto::FieldValue>, BTreeSet<Hlc>) {
        (self.key, self.value, self.replaces)
    }

    /// How many wire `FieldWrite`s this takes: one per replaced clock, at least one.
    fn wire_len(&self) -> usize {
        self.replaces.len().max(1)
    }
}

/// What an [`Operation`] does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperationKind {
    /// Writes fields; at most one write per key, sorted by key.
    Upsert(Vec<FieldWrite>),
    /// Deletes the record: hides every write with a clock up to the operation's.
    Delete,
}

/// One change to one record, stamped with one clock. Valid by construction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    record: RecordId,
    clock: Hlc,
    kind: OperationKind,
}

impl Operation {
    /// Writes fields of `record` at `clock`.
    ///
    /// Fails if a key is written twice, a write replaces a clock not earlier than `clock`, or
    /// the encoding would take more than [`MAX_WRITES_PER_OPERATION`] wire writes.
    pub fn upsert(
        record: RecordId,
        clock: Hlc,
        writes: impl IntoIterator<Item = FieldWrite>,
    ) -> Result<Self, RecordError> {
        let mut writes: Vec<FieldWrite> = writes.into_iter().collect();
        writes.sort_by(|a, b| a.key.cmp(&b.key));
        if let Some(pair) = writes.windows(2).find(|pair| pair[0].key == pair[1].key) {
            return Err(RecordError::DuplicateFieldKey {
                field: pair[0].key.kind(),
            });
        }
        if let Some(write) = writes
            .iter()
            .find(|write| write.replaces.last().is_some_and(|last| *last >= clock))
        {
            return Err(RecordError::ReplacesNotEarlier {
                field: write.key.kind(),
            });
        }
        let count = writes.iter().map(FieldWrite::wire_len).sum();
        if count > MAX_WRITES_PER_OPERATION {
            return Err(RecordError::TooManyWrites { count });
        }
        Ok(Self {
            record,
            clock,
            kind: OperationKind::Upsert(writes),
        })
    }

    /// Deletes `record` at `clock`: every write with a clock up to `clock` is hidden, later
    /// writes bring the record back with only their fields.
    pub fn delete(record: RecordId, clock: Hlc) -> Self {
        Self {
            record,
            clock,
            kind: OperationKind::Delete,
        }
    }

    /// The record changed.
    pub fn record(&self) -> RecordId {
        self.record
    }

    /// The operation's clock, shared by all its writes.
    pub fn clock(&self) -> Hlc {
        self.clock
    }

    /// What it does.
    pub fn kind(&self) -> &OperationKind {
        &self.kind
    }

    /// What the operation does, moved out (its writes' keys and values with it).
    pub fn into_kind(self) -> OperationKind {
        self.kind
    }

    /// The wire form; a write replacing several clocks becomes one wire write per clock.
    pub fn to_proto(&self) -> proto::Operation {
        let kind = match &self.kind {
            OperationKind::Delete => proto::operation::Kind::Delete(proto::Delete {}),
            OperationKind::Upsert(writes) => {
                let mut upsert = proto::Upsert::default();
                for write in writes {
                    let wire = if write.key.kind().is_protocol_1_0() {
                        &mut upsert.writes
                    } else {
                        &mut upsert.extension_writes
                    };
                    let wire_write = |replaces: Option<&Hlc>| proto::FieldWrite {
                        key: write.key.as_str().to_owned(),
                        value: write.value.as_ref().map(encode_value),
                        replaces: replaces.map(Hlc::to_proto),
                    };
                    if write.replaces.is_empty() {
                        wire.push(wire_write(None));
                    } else {
                        wire.extend(write.replaces.iter().map(|r| wire_write(Some(r))));
                    }
                }
                proto::operation::Kind::Upsert(upsert)
            }
        };
        proto::Operation {
            record_id: self.record.as_bytes().to_vec(),
            clock: Some(self.clock.to_proto()),
            kind: Some(kind),
        }
    }

    /// Parses and validates the wire form.
    pub fn from_proto(wire: &proto::Operation) -> Result<Self, RecordError> {
        let record = RecordId::from_slice(&wire.record_id)?;
        let clock = Hlc::from_proto(wire.clock.as_ref().ok_or(RecordError::MissingClock)?)?;
        let upsert = match wire
            .kind
            .as_ref()
            .ok_or(RecordError::MissingOperationKind)?
        {
            proto::operation::Kind::Delete(_) => return Ok(Self::delete(record, clock)),
            proto::operation::Kind::Upsert(upsert) => upsert,
        };
        let count = upsert.writes.len() + upsert.extension_writes.len();
        if count > MAX_WRITES_PER_OPERATION {
            return Err(RecordError::TooManyWrites { count });
        }
        // Both lists alike: which one a write travels in matters only to 0.1.0 readers.
        let mut wire_writes = Vec::with_capacity(count);
        for wire_write in upsert.writes.iter().chain(&upsert.extension_writes) {
            let key = FieldKey::parse(&wire_write.key)?;
            let value = wire_write
                .value
                .as_deref()
                .map(|bytes| decode_value(&key, bytes))
                .transpose()?;
            let replaces = wire_write
                .replaces
                .as_ref()
                .map(Hlc::from_proto)
                .transpose()?;
            wire_writes.push((key, value, replaces));
        }
        Self::from_wire_writes(record, clock, wire_writes)
    }

    /// The upsert of `record` at `clock` made of its decoded wire writes, in wire order
    /// (`writes`, then `extension_writes`): what [`Operation::from_proto`] and the batch reader
    /// (`record/reader.rs`) both end with.
    pub(super) fn from_wire_writes(
        record: RecordId,
        clock: Hlc,
        mut wire_writes: Vec<WireWrite>,
    ) -> Result<Self, RecordError> {
        // The wire writes of one key (one per replaced clock) are grouped into one write: they
        // must agree on the value. A stable sort keeps them in wire order, and writers send
        // keys sorted, so this is usually a check (no map per operation, no key copied).
        wire_writes.sort_by(|a, b| a.0.cmp(&b.0));
        let mut writes: Vec<FieldWrite> = Vec::with_capacity(wire_writes.len());
        for (key, value, replaces) in wire_writes {
            match writes.last_mut() {
                Some(write) if write.key == key => {
                    if write.value != value {
                        return Err(RecordError::DuplicateFieldKey { field: key.kind() });
                    }
                    write.replaces.extend(replaces);
                }
                _ => writes.push(FieldWrite {
                    key,
                    value,
                    replaces: replaces.into_iter().collect(),
                }),
            }
        }
        Self::upsert(record, clock, writes)
    }
}

/// One wire `FieldWrite`, decoded: its key, its value (`None` removes) and the clock it
/// replaces, if any.
pub(super) type WireWrite = (FieldKey, Option<proto::FieldValue>, Option<Hlc>);

/// Encodes operations as an `OperationBatch`, the payload of an envelope, without a
/// `written_at_ms` ([`encode_batch_written_at`]).
pub fn encode_batch(operations: &[Operation]) -> Result<Vec<u8>, RecordError> {
    encode_batch_written_at(operations, 0)
}

/// Encodes operations as an `OperationBatch` stating the writer's wall clock when it sealed
/// them (`written_at_ms`, 0 = not stated), which receivers compare with theirs to report a
/// device whose date is wrong ([`decode_batch_written_at`]).
pub fn encode_batch_written_at(
    operations: &[Operation],
    written_at_ms: u64,
) -> Result<Vec<u8>, RecordError> {
    if operations.len() > MAX_OPERATIONS_PER_BATCH {
        return Err(RecordError::TooManyOperations {
            count: operations.len(),
        });
    }
    let bytes = operation_batch(operations, written_at_ms);
    if bytes.len() > MAX_PAYLOAD_BYTES {
        return Err(RecordError::BatchTooLarge { len: bytes.len() });
    }
    Ok(bytes)
}

/// How many operations `bytes` holds, read from its framing alone, if it is an encoded
/// `OperationBatch` of operations only (field 1, as [`encode_batch`] writes it): `None` if it
/// holds any other field or its framing is malformed. The operations themselves are not
/// decoded, so this is for bytes this device encoded itself (its own pending operations), not
/// for untrusted input.
///
/// Such batches concatenate: the bytes of several, one after the other, are the batch of all
/// their operations in order, byte for byte what [`encode_batch`] writes for them, and
/// [`append_written_at`] then gives what [`encode_batch_written_at`] writes. A device seals its
/// pending operations that way, without decoding and encoding them again.
pub fn operations_only_count(bytes: &[u8]) -> Option<usize> {
    // Field 1, length-delimited.
    const OPERATION_KEY: u8 = (1 << 3) | 2;
    let mut rest = bytes;
    let mut count = 0;
    while let Some((&key, after)) = rest.split_first() {
        if key != OPERATION_KEY {
            return None;
        }
        let mut after = after;
        let len = prost::encoding::decode_varint(&mut after).ok()?;
        let len = usize::try_from(len)
            .ok()
            .filter(|&len| len <= after.len())?;
        rest = &after[len..];
        count += 1;
    }
    Some(count)
}

/// Appends the writer's wall clock (`written_at_ms`, omitted when 0) to an encoded batch of
/// operations only ([`operations_only_count`]): the result is what [`encode_batch_written_at`]
/// writes for those operations.
pub fn append_written_at(batch: &mut Vec<u8>, written_at_ms: u64) {
    put_varint(2, written_at_ms, batch);
}

/// Decodes and validates an `OperationBatch` from untrusted bytes.
///
/// The length is bounded before decoding ([`MAX_PAYLOAD_BYTES`]), then the operation count,
/// then each operation. Never panics.
pub fn decode_batch(bytes: &[u8]) -> Result<Vec<Operation>, RecordError> {
    decode_batch_written_at(bytes).map(|(operations, _)| operations)
}

/// [`decode_batch`], with the writer's stated wall clock when it sealed the batch (`None` if
/// not stated). Unauthenticated beyond the envelope's signature: a member can state any time.
pub fn decode_batch_written_at(bytes: &[u8]) -> Result<(Vec<Operation>, Option<u64>), RecordError> {
    decode_batch_parts(bytes).map(|(operations, written_at, _)| (operations, written_at))
}

/// What an `OperationBatch` holds: its operations, the writer's stated wall clock, and a
/// relay-move notice (docs/PROTOCOL.md §13.1).
pub type BatchParts = (Vec<Operation>, Option<u64>, Option<proto::RelayMoved>);

/// [`decode_batch_written_at`], with the batch's relay-move notice if it carries one
/// (docs/PROTOCOL.md §13.1). The notice is returned as decoded: its reader checks it.
///
/// The encoding writers produce (fields in tag order, each singular field once, no unknown
/// field) is read in place (`record/reader.rs`), each key and value decoded once; anything
/// else, errors included, is decided by [`decode_batch_parts_with_prost`], so the result is
/// that function's on every input.
pub fn decode_batch_parts(bytes: &[u8]) -> Result<BatchParts, RecordError> {
    if bytes.len() > MAX_PAYLOAD_BYTES {
        return Err(RecordError::BatchTooLarge { len: bytes.len() });
    }
    if let Some(parts) = super::reader::read_batch(bytes) {
        return Ok(parts);
    }
    decode_batch_parts_with_prost(bytes)
}

/// [`decode_batch_parts`] by prost alone: `proto::OperationBatch::decode`, then
/// [`Operation::from_proto`] for each operation. The reference the in-place reader is held to
/// (property tests, and the `operation_batch` fuzz target); callers use
/// [`decode_batch_parts`].
pub fn decode_batch_parts_with_prost(bytes: &[u8]) -> Result<BatchParts, RecordError> {
    if bytes.len() > MAX_PAYLOAD_BYTES {
        return Err(RecordError::BatchTooLarge { len: bytes.len() });
    }
    let batch = proto::OperationBatch::decode(bytes)?;
    if batch.operations.len() > MAX_OPERATIONS_PER_BATCH {
        return Err(RecordError::TooManyOperations {
            count: batch.operations.len(),
        });
    }
    let operations = batch
        .operations
        .iter()
        .enumerate()
        .map(|(index, operation)| {
            Operation::from_proto(operation).map_err(|err| RecordError::InOperation {
                index,
                source: Box::new(err),
            })
        })
        .collect::<Result<_, _>>()?;
    Ok((
        operations,
        (batch.written_at_ms != 0).then_some(batch.written_at_ms),
        batch.relay_moved,
    ))
}

// --- The OperationBatch writer (crate::proto_writer) ---
// --- FieldWrite { key = 1; value = 2; replaces = 3 } (one wire write per replaced clock) ---

fn wire_write_body_len(write: &FieldWrite, replaces: Option<&Hlc>) -> usize {
    bytes_len(1, write.key().as_str().as_bytes())
        + value_len(2, write.value())
        + replaces.map_or(0, |clock| hlc_len(3, clock))
}

fn put_wire_write(tag: u32, write: &FieldWrite, replaces: Option<&Hlc>, buf: &mut Vec<u8>) {
    put_delimited_header(tag, wire_write_body_len(write, replaces), buf);
    put_bytes(1, write.key().as_str().as_bytes(), buf);
    put_value(2, write.value(), buf);
    if let Some(clock) = replaces {
        put_hlc(3, clock, buf);
    }
}

/// Calls `each` once per wire write of `write`: one per replaced clock, or one without.
fn for_each_wire_write(write: &FieldWrite, mut each: impl FnMut(Option<&Hlc>)) {
    if write.replaces().is_empty() {
        each(None);
    } else {
        write.replaces().iter().for_each(|clock| each(Some(clock)));
    }
}

// --- Operation { record_id = 1; clock = 2; oneof kind { Upsert upsert = 3; Delete delete = 4 } } ---
// --- Upsert { repeated FieldWrite writes = 1; repeated FieldWrite extension_writes = 2 } ---

/// The `Upsert` field a write travels in: protocol 1.0 kinds in `writes`, later kinds in
/// `extension_writes` (docs/PROTOCOL.md §8.1).
fn upsert_tag(write: &FieldWrite) -> u32 {
    if write.key().kind().is_protocol_1_0() {
        1
    } else {
        2
    }
}

fn upsert_body_len(writes: &[FieldWrite]) -> usize {
    let mut len = 0;
    for write in writes {
        for_each_wire_write(write, |replaces| {
            len += delimited_len(upsert_tag(write), wire_write_body_len(write, replaces));
        });
    }
    len
}

fn operation_body_len(operation: &Operation) -> usize {
    let kind = match operation.kind() {
        OperationKind::Delete => delimited_len(4, 0),
        OperationKind::Upsert(writes) => delimited_len(3, upsert_body_len(writes)),
    };
    bytes_len(1, operation.record().as_bytes()) + hlc_len(2, &operation.clock()) + kind
}

fn put_operation(tag: u32, operation: &Operation, buf: &mut Vec<u8>) {
    put_delimited_header(tag, operation_body_len(operation), buf);
    put_bytes(1, operation.record().as_bytes(), buf);
    put_hlc(2, &operation.clock(), buf);
    match operation.kind() {
        OperationKind::Delete => put_delimited_header(4, 0, buf),
        OperationKind::Upsert(writes) => {
            put_delimited_header(3, upsert_body_len(writes), buf);
            // Fields in tag order, as prost writes them: `writes`, then `extension_writes`.
            for tag in [1, 2] {
                for write in writes.iter().filter(|write| upsert_tag(write) == tag) {
                    for_each_wire_write(write, |replaces| {
                        put_wire_write(tag, write, replaces, buf)
                    });
                }
            }
        }
    }
}

/// `OperationBatch { repeated Operation operations = 1; uint64 written_at_ms = 2 }`, byte for
/// byte what `OperationBatch { operations: ops.iter().map(Operation::to_proto), written_at_ms }
/// .encode_to_vec()` gives.
fn operation_batch(operations: &[Operation], written_at_ms: u64) -> Vec<u8> {
    let len = operations
        .iter()
        .map(|op| delimited_len(1, operation_body_len(op)))
        .sum::<usize>()
        + varint_len(2, written_at_ms);
    let mut buf = Vec::with_capacity(len);
    for operation in operations {
        put_operation(1, operation, &mut buf);
    }
    put_varint(2, written_at_ms, &mut buf);
    buf
}
