//! An `OperationBatch` read in place: [`decode_batch_parts`](super::decode_batch_parts)'s fast
//! path, as `merge/reader.rs` is [`RecordState::decode`](crate::merge::RecordState::decode)'s.
//!
//! `proto::OperationBatch::decode` followed by [`Operation::from_proto`] copies every key,
//! value and clock of a batch into prost messages, then decodes each value from its copy:
//! about a tenth of a pulling device's CPU (BENCHMARKS.md, "B's pull (issue 18), eleventh
//! session"). This reader takes the encoding writers produce (prost's: fields in tag order,
//! each singular field at most once, no unknown field, the writer's view appended as field 4)
//! and builds each operation from borrowed slices, ending in the same
//! [`Operation::from_wire_writes`] as `from_proto`, with the wire writes in the same order.
//! It answers `None` for anything else (a field repeated, out of order or unknown, a wire type
//! or length that does not fit, a bound exceeded, a key, clock or value `from_proto` would
//! refuse), and the caller then decides on the prost path: every input this reader accepts
//! gives what the prost path gives, and every other input gets the prost path's result, error
//! included. Nothing is allocated from a length read here: a length only selects a slice of
//! the input, once checked against it.

use prost::Message;

use super::operation::WireWrite;
use super::{BatchParts, FieldKey, Operation, decode_value};
use crate::ids::RecordId;
use crate::limits::{MAX_OPERATIONS_PER_BATCH, MAX_WRITES_PER_OPERATION};
use crate::merge::reader::{WireValue, next_delimited, next_field, read_hlc};
use crate::proto;

/// `OperationBatch { repeated Operation operations = 1; uint64 written_at_ms = 2; RelayMoved
/// relay_moved = 3; WriterView writer_view = 4 }`. The relay-move notice and the writer's
/// view are decoded by prost (one each per batch at most): the notice is returned, the view
/// only checked to decode, as the prost path decodes it (its reader is `WriterView::read`).
pub(super) fn read_batch(bytes: &[u8]) -> Option<BatchParts> {
    let mut rest = bytes;
    let mut after = 0;
    let (mut operations, mut written_at, mut relay_moved) = (Vec::new(), None, None);
    while !rest.is_empty() {
        let (tag, value) = next_field(&mut rest)?;
        if tag < after || (tag == after && tag != 1) {
            return None;
        }
        after = tag;
        match (tag, value) {
            (1, WireValue::Delimited(operation)) => {
                if operations.len() == MAX_OPERATIONS_PER_BATCH {
                    return None;
                }
                operations.push(read_operation(operation)?);
            }
            (2, WireValue::Varint(at)) => written_at = (at != 0).then_some(at),
            (3, WireValue::Delimited(moved)) => {
                relay_moved = Some(proto::RelayMoved::decode(moved).ok()?);
            }
            (4, WireValue::Delimited(view)) => {
                proto::WriterView::decode(view).ok()?;
            }
            _ => return None,
        }
    }
    Some((operations, written_at, relay_moved))
}

/// `Operation { bytes record_id = 1; Hlc clock = 2; oneof kind { Upsert upsert = 3; Delete
/// delete = 4 } }`, every field present, validated as [`Operation::from_proto`] does.
fn read_operation(bytes: &[u8]) -> Option<Operation> {
    let mut rest = bytes;
    let mut after = 0;
    let (1, id) = next_delimited(&mut rest, &mut after, false)? else {
        return None;
    };
    let record = RecordId::from_slice(id).ok()?;
    let (2, clock) = next_delimited(&mut rest, &mut after, false)? else {
        return None;
    };
    let clock = read_hlc(clock)?;
    let (kind, body) = next_delimited(&mut rest, &mut after, false)?;
    if !rest.is_empty() {
        return None;
    }
    match kind {
        4 if body.is_empty() => Some(Operation::delete(record, clock)),
        3 => {
            // `Upsert { repeated FieldWrite writes = 1; repeated FieldWrite extension_writes
            // = 2 }`: `writes` first, as `from_proto` chains them.
            let (mut rest, mut after) = (body, 0);
            let mut wire_writes = Vec::new();
            while !rest.is_empty() {
                let (tag, write) = next_delimited(&mut rest, &mut after, true)?;
                if tag > 2 || wire_writes.len() == MAX_WRITES_PER_OPERATION {
                    return None;
                }
                wire_writes.push(read_field_write(write)?);
            }
            Operation::from_wire_writes(record, clock, wire_writes).ok()
        }
        _ => None,
    }
}

/// `FieldWrite { string key = 1; optional bytes value = 2; Hlc replaces = 3 }`, the key
/// parsed and the value decoded as [`Operation::from_proto`] does.
fn read_field_write(bytes: &[u8]) -> Option<WireWrite> {
    let mut rest = bytes;
    let mut after = 0;
    let (1, key) = next_delimited(&mut rest, &mut after, false)? else {
        return None;
    };
    let key = FieldKey::parse(std::str::from_utf8(key).ok()?).ok()?;
    let (mut value, mut replaces) = (None, None);
    while !rest.is_empty() {
        match next_delimited(&mut rest, &mut after, false)? {
            (2, bytes) => value = Some(decode_value(&key, bytes).ok()?),
            (3, clock) => replaces = Some(read_hlc(clock)?),
            _ => return None,
        }
    }
    Some((key, value, replaces))
}
