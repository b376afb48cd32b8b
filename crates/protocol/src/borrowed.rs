//! Protobuf encoding straight from the protocol types, without building the prost structs.
//!
//! [`Operation::to_proto`] and [`RecordState::to_proto`] copy every key, value and clock into
//! owned prost messages that live only until they are encoded; for an import of 100,000
//! contacts those copies cost four times the encoding itself. The functions here write the
//! same bytes from borrowed data. They follow prost's rules exactly (fields in tag order,
//! proto3 defaults omitted, an empty `Some` message still written), and the tests hold them to
//! byte equality with `to_proto().encode_to_vec()`.

use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

use crate::hlc::Hlc;
use crate::merge::RecordState;
use crate::proto;
use crate::record::{FieldKey, FieldWrite, Operation, OperationKind, encoded_value_len};

/// Length of a length-delimited field (key, length prefix, body) with a body of `len` bytes.
fn delimited_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

fn put_delimited_header(tag: u32, len: usize, buf: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
}

/// A `bytes` or `string` field, omitted when empty (proto3).
fn bytes_len(tag: u32, bytes: &[u8]) -> usize {
    if bytes.is_empty() {
        0
    } else {
        delimited_len(tag, bytes.len())
    }
}

fn put_bytes(tag: u32, bytes: &[u8], buf: &mut Vec<u8>) {
    if !bytes.is_empty() {
        put_delimited_header(tag, bytes.len(), buf);
        buf.extend_from_slice(bytes);
    }
}

/// A `uint64`/`uint32` field, omitted when zero (proto3).
fn varint_len(tag: u32, value: u64) -> usize {
    if value == 0 {
        0
    } else {
        key_len(tag) + encoded_len_varint(value)
    }
}

fn put_varint(tag: u32, value: u64, buf: &mut Vec<u8>) {
    if value != 0 {
        encode_key(tag, WireType::Varint, buf);
        encode_varint(value, buf);
    }
}

// --- Hlc { wall_ms = 1; counter = 2; device_id = 3 } ---

fn hlc_body_len(clock: &Hlc) -> usize {
    varint_len(1, clock.wall_ms())
        + varint_len(2, u64::from(clock.counter()))
        + bytes_len(3, clock.device().as_bytes())
}

fn put_hlc(tag: u32, clock: &Hlc, buf: &mut Vec<u8>) {
    put_delimited_header(tag, hlc_body_len(clock), buf);
    put_varint(1, clock.wall_ms(), buf);
    put_varint(2, u64::from(clock.counter()), buf);
    put_bytes(3, clock.device().as_bytes(), buf);
}

fn hlc_len(tag: u32, clock: &Hlc) -> usize {
    delimited_len(tag, hlc_body_len(clock))
}

// --- FieldValue (a prost message already: encoded as is; an opaque value verbatim) ---

fn value_len(tag: u32, value: Option<&proto::FieldValue>) -> usize {
    value.map_or(0, |value| delimited_len(tag, encoded_value_len(value)))
}

fn put_value(tag: u32, value: Option<&proto::FieldValue>, buf: &mut Vec<u8>) {
    let Some(value) = value else { return };
    if let Some(proto::field_value::Value::Opaque(bytes)) = &value.value {
        put_delimited_header(tag, bytes.len(), buf);
        buf.extend_from_slice(bytes);
    } else {
        put_delimited_header(tag, value.encoded_len(), buf);
        value.encode_raw(buf);
    }
}

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
pub(crate) fn operation_batch(operations: &[Operation], written_at_ms: u64) -> Vec<u8> {
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

fn record_state_body_len(state: &RecordState) -> usize {
    bytes_len(1, state.id().as_bytes())
        + state
            .deleted_at()
            .as_ref()
            .map_or(0, |clock| hlc_len(2, clock))
        + state
            .fields()
            .iter()
            .map(|(key, field)| {
                delimited_len(
                    record_field_tag(key),
                    field_state_body_len(
                        key.as_str(),
                        field.stored_heads(),
                        field.superseded().iter(),
                    ),
                )
            })
            .sum::<usize>()
}

/// `RecordState`, byte for byte what `state.to_proto().encode_to_vec()` gives.
pub(crate) fn record_state(state: &RecordState) -> Vec<u8> {
    let mut buf = Vec::with_capacity(record_state_body_len(state));
    put_bytes(1, state.id().as_bytes(), &mut buf);
    if let Some(clock) = state.deleted_at() {
        put_hlc(2, &clock, &mut buf);
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
            put_delimited_header(tag, body, &mut buf);
            put_bytes(1, key.as_str().as_bytes(), &mut buf);
            for (clock, value) in field.stored_heads() {
                put_delimited_header(2, stored_write_body_len(clock, value), &mut buf);
                put_hlc(1, clock, &mut buf);
                put_value(2, value, &mut buf);
            }
            for clock in field.superseded() {
                put_hlc(3, clock, &mut buf);
            }
        }
    }
    buf
}

/// The `RecordState` field a field state travels in: protocol 1.0 kinds in `fields`, later
/// kinds in `extension_fields` (docs/PROTOCOL.md §8.1).
fn record_field_tag(key: &FieldKey) -> u32 {
    if key.kind().is_protocol_1_0() { 3 } else { 4 }
}
