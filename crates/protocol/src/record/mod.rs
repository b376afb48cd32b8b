//! Contact records on the wire and in the app (docs/PROTOCOL.md §8).
//!
//! - `key`: [`FieldKey`], a validated field key (`name`, `email/<address>`, `source/linkedin`, …).
//! - [`value`]: the checks a value passes against its key, its codec ([`decode_value`],
//!   [`encode_value`]) and builders.
//! - `operation`: [`FieldWrite`] and [`Operation`], what a device writes, parsed from and
//!   encoded to `proto::Operation`; [`decode_batch`] is the one entry point for untrusted
//!   operation bytes.
//!
//! The read-only typed view of a merged record is [`crate::contact::Contact`], built after
//! [`crate::merge`]; this module depends on neither.
//!
//! # Field keys and their values
//!
//! | key | value (`proto::FieldValue`) |
//! |---|---|
//! | `name`, `company`, `title`, `note` | `text` |
//! | `birthday` | `date` (year 0 = unknown) |
//! | `email/<address, trimmed and lowercased>` | `email` whose address normalizes to the key |
//! | `phone/<E.164>` | `phone` whose `e164` normalizes to the key |
//! | `url/<url, trimmed>` | `url` whose url normalizes to the key |
//! | `handle/<service, lowercased>:<handle>` | `handle` matching the key |
//! | `tag/<tag, trimmed>` | `flag: true` |
//! | `source/<linkedin, facebook, imessage, address-book or vcard>` | that source's message |
//! | `source/calendar`, `source/mail` | `calendar`, `mail`: joined, not last-writer-wins ([`crate::history`]) |
//! | `source/twitter` | `twitter` |
//! | `custom/<name, trimmed>` | any value |
//!
//! A write without a value removes the field (or the set element: `email/…`, `tag/…`). Every
//! string, key or value, is at most [`MAX_TEXT_BYTES`] long.
//!
//! # Replacing several heads at once
//!
//! A write lists every clock it replaces: after a conflict, an edit made having seen both
//! values replaces both and so clears the conflict (see [`crate::merge`]). On the wire,
//! `FieldWrite.replaces` holds one clock, so a write replacing `n > 1` clocks is encoded as `n`
//! `FieldWrite`s with the same key and value, one per replaced clock; decoding groups them back.
//! Two wire writes of the same key with different values in one operation are an error.
//!
//! ```
//! use kith_protocol::{DeviceId, RecordId};
//! use kith_protocol::hlc::HlcClock;
//! use kith_protocol::record::{FieldKey, FieldWrite, Operation, decode_batch, encode_batch, value};
//!
//! let mut clock = HlcClock::new(DeviceId::from_bytes([1; 16]));
//! let name = FieldWrite::set(FieldKey::name(), value::text("Ada Lovelace"), [])?;
//! let email = FieldWrite::set(
//!     FieldKey::email(" Ada@Example.org")?,
//!     value::email("Ada@Example.org", "work"),
//!     [],
//! )?;
//! let op = Operation::upsert(RecordId::from_bytes([9; 16]), clock.tick(1_000), [name, email])?;
//! let bytes = encode_batch(std::slice::from_ref(&op))?;
//! assert_eq!(decode_batch(&bytes)?, vec![op]);
//! # Ok::<(), kith_protocol::record::RecordError>(())
//! ```

mod key;
mod operation;
mod reader;
pub mod value;

#[cfg(test)]
mod tests;

use crate::hlc::HlcError;
use crate::ids::IdLengthError;
use crate::limits::{
    MAX_OPERATIONS_PER_BATCH, MAX_PAYLOAD_BYTES, MAX_TEXT_BYTES, MAX_WRITES_PER_OPERATION,
};

pub use key::{FieldKey, FieldKind, KeyProblem, SourceKind};
pub use operation::{
    BatchParts, FieldWrite, Operation, OperationKind, append_written_at, decode_batch,
    decode_batch_parts, decode_batch_parts_with_prost, decode_batch_written_at, encode_batch,
    encode_batch_written_at, operations_only_count,
};
pub use value::{decode_value, encode_value};

/// Why a field key, a field value, an operation or a batch was rejected.
///
/// Messages name the field kind and the problem, never the contact data itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The field key is longer than [`MAX_TEXT_BYTES`].
    #[error("field key is {len} bytes, more than {max}", max = MAX_TEXT_BYTES)]
    FieldKeyTooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The field key starts with no known prefix (or names no known source).
    #[error("unknown field key starting {key_prefix:?}")]
    UnknownFieldKey {
        /// At most 12 bytes of the key.
        key_prefix: String,
    },
    /// The key has a known prefix but the rest is not in canonical form.
    #[error("invalid {field} key: {problem}")]
    InvalidFieldKey {
        /// The kind of field.
        field: FieldKind,
        /// What is wrong with it.
        problem: KeyProblem,
    },
    /// A `FieldValue` with no value set (use an absent value to remove a field).
    #[error("{field} value is empty")]
    EmptyValue {
        /// The kind of field.
        field: FieldKind,
    },
    /// The value's type is not the one the field takes.
    #[error("{field} value must be {expected}")]
    WrongValueType {
        /// The kind of field.
        field: FieldKind,
        /// The value type the field takes.
        expected: &'static str,
    },
    /// The value names another element than its key (e.g. `email/a@x` holding `b@x`).
    #[error("{field} value does not match its key")]
    ValueDoesNotMatchKey {
        /// The kind of field.
        field: FieldKind,
    },
    /// A string in the value is longer than [`MAX_TEXT_BYTES`].
    #[error("{field} value holds a string of {len} bytes, more than {max}", max = MAX_TEXT_BYTES)]
    TextTooLong {
        /// The kind of field.
        field: FieldKind,
        /// The string's length in bytes.
        len: usize,
    },
    /// A calendar or mail history holds more elements than its bounds, or a sketch that is
    /// not sorted ([`crate::history`]).
    #[error("{field} value is out of bounds or not canonical")]
    HistoryOutOfBounds {
        /// The kind of field.
        field: FieldKind,
    },
    /// A date in the value is not a calendar date.
    #[error("{field} value holds an invalid date")]
    InvalidDate {
        /// The kind of field.
        field: FieldKind,
    },
    /// The operation's record id is not 16 bytes.
    #[error("invalid record id: {0}")]
    InvalidRecordId(#[from] IdLengthError),
    /// The operation has no clock.
    #[error("operation has no clock")]
    MissingClock,
    /// A clock of the operation is invalid.
    #[error("invalid clock: {0}")]
    InvalidClock(#[from] HlcError),
    /// The operation is neither an upsert nor a delete.
    #[error("operation is neither an upsert nor a delete")]
    MissingOperationKind,
    /// The same field is written twice in one operation (with different values, on the wire).
    #[error("{field} field written twice in one operation")]
    DuplicateFieldKey {
        /// The kind of field.
        field: FieldKind,
    },
    /// A write replaces a clock that is not earlier than the operation's own clock.
    #[error("{field} write replaces a clock not earlier than its own")]
    ReplacesNotEarlier {
        /// The kind of field.
        field: FieldKind,
    },
    /// More than [`MAX_WRITES_PER_OPERATION`] field writes (as encoded) in one operation.
    #[error("operation has {count} field writes, more than {max}", max = MAX_WRITES_PER_OPERATION)]
    TooManyWrites {
        /// How many.
        count: usize,
    },
    /// More than [`MAX_OPERATIONS_PER_BATCH`] operations in one batch.
    #[error("batch has {count} operations, more than {max}", max = MAX_OPERATIONS_PER_BATCH)]
    TooManyOperations {
        /// How many.
        count: usize,
    },
    /// The encoded batch is larger than [`MAX_PAYLOAD_BYTES`].
    #[error("batch is {len} bytes, more than {max}", max = MAX_PAYLOAD_BYTES)]
    BatchTooLarge {
        /// Its length in bytes.
        len: usize,
    },
    /// The batch is not a valid protobuf `OperationBatch`.
    #[error("batch does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
    /// An operation of a batch is invalid.
    #[error("operation {index} of the batch: {source}")]
    InOperation {
        /// Its position in the batch.
        index: usize,
        /// What is wrong with it.
        source: Box<RecordError>,
    },
}
