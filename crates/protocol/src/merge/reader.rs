//! The stored encoding of a [`RecordState`] read in place: [`RecordState::decode`]'s fast path.
//!
//! `proto::RecordState::decode` followed by [`RecordState::from_proto`] copies every key, value
//! and clock into prost messages, decodes each value from its copy, and clones key and value
//! once more into the state; reading the states a pull updates was most of the merging
//! thread's reads (BENCHMARKS.md, "Sync with merges (issue 11), ninth session"). This reader
//! takes the encoding [`RecordState::encode_to_vec`] writes (prost's: fields in tag order, each
//! singular field at most once, no unknown field) and builds the state from borrowed slices,
//! applying exactly what `from_proto` applies, in the same order: the deletion clock, then
//! each field's superseded clocks, then its heads. It answers `None` for anything else (a
//! field repeated, out of order or unknown, a wire type or length that does not fit, a key,
//! clock or value `from_proto` would refuse, a key listed twice), and the caller then decides
//! on the prost path: every input that reader accepts gives the state `from_proto` gives, and
//! every other input gets `from_proto`'s result, error included. Nothing is allocated from a
//! length read here: a length only selects a slice of the input, once checked against it.

use std::borrow::Cow;

use prost::encoding::decode_varint;

use super::{FieldState, RecordState};
use crate::hlc::Hlc;
use crate::ids::RecordId;
use crate::record::{FieldKey, decode_value};

/// The value of one field of a message, as the reader accepts it.
pub(crate) enum WireValue<'a> {
    Varint(u64),
    Delimited(&'a [u8]),
}

/// Reads one field (key and value) from the front of `rest`; `None` for a malformed key,
/// varint or length, and for the wire types no field of a `RecordState` has (fixed-width and
/// groups). Shared with the operation batch reader (`record/reader.rs`).
pub(crate) fn next_field<'a>(rest: &mut &'a [u8]) -> Option<(u64, WireValue<'a>)> {
    let key = decode_varint(rest).ok()?;
    let tag = key >> 3;
    match key & 0b111 {
        0 => Some((tag, WireValue::Varint(decode_varint(rest).ok()?))),
        2 => {
            let len = usize::try_from(decode_varint(rest).ok()?).ok()?;
            if len > rest.len() {
                return None;
            }
            let (body, after) = rest.split_at(len);
            *rest = after;
            Some((tag, WireValue::Delimited(body)))
        }
        _ => None,
    }
}

/// Reads one length-delimited field whose tag is greater than `after` (or equal, with
/// `repeated`), advancing `after`; `None` otherwise.
pub(crate) fn next_delimited<'a>(
    rest: &mut &'a [u8],
    after: &mut u64,
    repeated: bool,
) -> Option<(u64, &'a [u8])> {
    match next_field(rest)? {
        (tag, WireValue::Delimited(body)) if tag > *after || (repeated && tag == *after) => {
            *after = tag;
            Some((tag, body))
        }
        _ => None,
    }
}

/// `RecordState { record_id = 1; deleted_at = 2; repeated fields = 3; repeated
/// extension_fields = 4 }`.
pub(super) fn read_record_state(bytes: &[u8]) -> Option<RecordState> {
    let mut rest = bytes;
    let mut after = 0;
    let (1, id) = next_delimited(&mut rest, &mut after, false)? else {
        return None;
    };
    let mut record = RecordState::new(RecordId::from_slice(id).ok()?);
    while !rest.is_empty() {
        match next_delimited(&mut rest, &mut after, true)? {
            (2, clock) if record.deleted_at.is_none() => {
                record.delete_at(read_hlc(clock)?);
            }
            (3 | 4, field) => read_field_state(&mut record, field)?,
            _ => return None,
        }
    }
    record.refresh_live();
    Some(record)
}

/// `Hlc { wall_ms = 1; counter = 2; device_id = 3 }`, validated as [`Hlc::from_proto`] does.
pub(crate) fn read_hlc(bytes: &[u8]) -> Option<Hlc> {
    let mut rest = bytes;
    let (mut wall_ms, mut counter, mut device): (u64, u32, &[u8]) = (0, 0, &[]);
    let mut after = 0;
    while !rest.is_empty() {
        let (tag, value) = next_field(&mut rest)?;
        if tag <= after {
            return None;
        }
        after = tag;
        match (tag, value) {
            (1, WireValue::Varint(wall)) => wall_ms = wall,
            (2, WireValue::Varint(count)) => counter = u32::try_from(count).ok()?,
            (3, WireValue::Delimited(id)) => device = id,
            _ => return None,
        }
    }
    Hlc::from_wire_parts(wall_ms, counter, device).ok()
}

/// `FieldState { key = 1; repeated StoredWrite heads = 2; repeated Hlc superseded = 3 }`,
/// merged into `record` as `from_proto` merges it: superseded clocks first, then heads.
fn read_field_state(record: &mut RecordState, bytes: &[u8]) -> Option<()> {
    let mut rest = bytes;
    let mut after = 0;
    let (1, key) = next_delimited(&mut rest, &mut after, false)? else {
        return None;
    };
    let key = FieldKey::parse(std::str::from_utf8(key).ok()?).ok()?;
    if record.fields.contains_key(&key) {
        // Listed twice: the two are joined, which the prost path does.
        return None;
    }
    let (writes_after_key, key_tag) = (rest, after);
    let mut field = FieldState::default();
    while !rest.is_empty() {
        match next_delimited(&mut rest, &mut after, true)? {
            (2, _) => {}
            (3, clock) => {
                let clock = read_hlc(clock)?;
                if !record.is_hidden(clock) {
                    field.supersede(clock);
                }
            }
            _ => return None,
        }
    }
    let (mut rest, mut after) = (writes_after_key, key_tag);
    while !rest.is_empty() {
        let (tag, write) = next_delimited(&mut rest, &mut after, true)?;
        if tag != 2 {
            break;
        }
        let (clock, value) = read_stored_write(write)?;
        // Checked even when hidden, as `from_proto` checks it.
        let value = value
            .map(|bytes| decode_value(&key, bytes))
            .transpose()
            .ok()?;
        if !record.is_hidden(clock) {
            field.insert_head(clock, value.map(Cow::Owned));
        }
    }
    if !field.is_empty() {
        record.fields.insert(key, field);
    }
    Some(())
}

/// `StoredWrite { Hlc clock = 1; optional bytes value = 2 }`: the clock (required) and the
/// encoded value, if any.
fn read_stored_write(bytes: &[u8]) -> Option<(Hlc, Option<&[u8]>)> {
    let mut rest = bytes;
    let mut after = 0;
    let (1, clock) = next_delimited(&mut rest, &mut after, false)? else {
        return None;
    };
    let clock = read_hlc(clock)?;
    let value = if rest.is_empty() {
        None
    } else {
        match next_delimited(&mut rest, &mut after, false)? {
            (2, value) if rest.is_empty() => Some(value),
            _ => return None,
        }
    };
    Some((clock, value))
}
