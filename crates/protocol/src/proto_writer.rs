//! A writer of protobuf's wire format over the protocol's own types.
//!
//! [`Operation::to_proto`](crate::record::Operation::to_proto) and
//! [`RecordState::to_proto`](crate::merge::RecordState::to_proto) copy every key, value and
//! clock into owned prost messages that live only until they are encoded; for an import of
//! 100,000 contacts those copies cost four times the encoding itself. The operation batch
//! (`record::operation`) and record state (`merge`) encoders write the same bytes from
//! borrowed data with the primitives here. They follow prost's rules exactly (fields in tag
//! order, proto3 defaults omitted, an empty `Some` message still written), and the tests hold
//! them to byte equality with `to_proto().encode_to_vec()`.

use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

use crate::hlc::Hlc;
use crate::proto;
use crate::proto::field_value::Value;

/// The length of [`crate::record::encode_value`]'s result, without encoding.
pub(crate) fn encoded_value_len(value: &proto::FieldValue) -> usize {
    match &value.value {
        Some(Value::Opaque(bytes)) => bytes.len(),
        _ => value.encoded_len(),
    }
}

/// Length of a length-delimited field (key, length prefix, body) with a body of `len` bytes.
pub(crate) fn delimited_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

pub(crate) fn put_delimited_header(tag: u32, len: usize, buf: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
}

/// A `bytes` or `string` field, omitted when empty (proto3).
pub(crate) fn bytes_len(tag: u32, bytes: &[u8]) -> usize {
    if bytes.is_empty() {
        0
    } else {
        delimited_len(tag, bytes.len())
    }
}

pub(crate) fn put_bytes(tag: u32, bytes: &[u8], buf: &mut Vec<u8>) {
    if !bytes.is_empty() {
        put_delimited_header(tag, bytes.len(), buf);
        buf.extend_from_slice(bytes);
    }
}

/// A `uint64`/`uint32` field, omitted when zero (proto3).
pub(crate) fn varint_len(tag: u32, value: u64) -> usize {
    if value == 0 {
        0
    } else {
        key_len(tag) + encoded_len_varint(value)
    }
}

pub(crate) fn put_varint(tag: u32, value: u64, buf: &mut Vec<u8>) {
    if value != 0 {
        encode_key(tag, WireType::Varint, buf);
        encode_varint(value, buf);
    }
}

// --- Hlc { wall_ms = 1; counter = 2; device_id = 3 } ---

pub(crate) fn hlc_body_len(clock: &Hlc) -> usize {
    varint_len(1, clock.wall_ms())
        + varint_len(2, u64::from(clock.counter()))
        + bytes_len(3, clock.device().as_bytes())
}

pub(crate) fn put_hlc(tag: u32, clock: &Hlc, buf: &mut Vec<u8>) {
    put_delimited_header(tag, hlc_body_len(clock), buf);
    put_varint(1, clock.wall_ms(), buf);
    put_varint(2, u64::from(clock.counter()), buf);
    put_bytes(3, clock.device().as_bytes(), buf);
}

pub(crate) fn hlc_len(tag: u32, clock: &Hlc) -> usize {
    delimited_len(tag, hlc_body_len(clock))
}

// --- FieldValue (a prost message already: encoded as is; an opaque value verbatim) ---

pub(crate) fn value_len(tag: u32, value: Option<&proto::FieldValue>) -> usize {
    value.map_or(0, |value| delimited_len(tag, encoded_value_len(value)))
}

pub(crate) fn put_value(tag: u32, value: Option<&proto::FieldValue>, buf: &mut Vec<u8>) {
    let Some(value) = value else { return };
    if let Some(proto::field_value::Value::Opaque(bytes)) = &value.value {
        put_delimited_header(tag, bytes.len(), buf);
        buf.extend_from_slice(bytes);
    } else {
        put_delimited_header(tag, value.encoded_len(), buf);
        value.encode_raw(buf);
    }
}
