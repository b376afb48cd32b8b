//! Envelopes: the signed, padded ciphertext a device appends to its stream (docs/PROTOCOL.md §7).
//!
//! Untrusted bytes are read once, at the edge: [`peek_header`] (the relay, on every push) reads
//! the framing and the header without copying or hashing anything; [`ParsedEnvelope::decode`]
//! (receivers) keeps the header bytes verbatim, the ciphertext and the signature, and computes
//! the envelope's hash. Signatures are then checked ([`ParsedEnvelope::verify_signature`],
//! [`verify_batch`]) before anything is decrypted ([`ParsedEnvelope::decrypt`]).
//!
//! ```
//! use kith_protocol::envelope::{EnvelopeHash, ParsedEnvelope, PayloadKind, peek_header, seal};
//! use kith_protocol::keys::{DeviceSigningKey, SymmetricKey, system_rng};
//! use kith_protocol::AccountId;
//!
//! let mut rng = system_rng();
//! let device = DeviceSigningKey::generate(&mut rng);
//! let account = AccountId::from_bytes([1; 32]);
//! let content_key = SymmetricKey::generate(&mut rng);
//! let sealed = seal(
//!     &device, &account, 1, 1, &content_key, &EnvelopeHash::ZERO,
//!     PayloadKind::Operations, b"ops", &mut rng,
//! )?;
//! assert_eq!(peek_header(&sealed.bytes)?.seq, 1);
//!
//! let parsed = ParsedEnvelope::decode(&sealed.bytes)?;
//! parsed.verify_signature(&device.public())?;
//! assert_eq!(parsed.decrypt(&content_key)?, b"ops");
//! assert_eq!(parsed.hash(), sealed.hash);
//! # Ok::<(), kith_protocol::envelope::EnvelopeError>(())
//! ```
//!
//! # Wire encoding
//! The `Envelope` message is read in its canonical protobuf form only: field 1 (header), field 2
//! (ciphertext), field 3 (signature), each exactly once, in that order, with minimal length
//! varints and nothing after. That is what `prost` writes, and it makes the envelope's bytes a
//! function of its three fields, so the relay can compare retransmits byte for byte. The header
//! must likewise be the canonical encoding of the `EnvelopeHeader` it decodes to.

use std::fmt;
use std::ops::Range;

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305};
use prost::Message;
use rand_core::CryptoRng;
use zeroize::Zeroizing;

use crate::encoding::{hash, labels, push_lp};
use crate::epoch::EpochKeys;
use crate::ids::{AccountId, DeviceId};
use crate::keys::{DeviceSigningKey, DeviceVerifyingKey, Signature, SymmetricKey};
use crate::limits::{MAX_ENVELOPE_BYTES, MAX_HEADER_BYTES, MAX_PAYLOAD_BYTES};
use crate::padding::{self, PaddingError};
use crate::proto;
use crate::roster::{RosterError, VerifiedRoster};

pub use crate::proto::PayloadKind;

/// The only envelope format version this code reads and writes.
pub const FORMAT_VERSION: u32 = crate::PROTOCOL_VERSION;
/// Length of the XChaCha20-Poly1305 nonce in the header.
pub const NONCE_LEN: usize = 24;
/// Length of the Poly1305 tag at the end of the ciphertext.
pub const TAG_LEN: usize = 16;
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// Protobuf keys (field number << 3 | wire type 2) of the `Envelope` fields, in order.
const HEADER_KEY: u8 = (1 << 3) | 2;
const CIPHERTEXT_KEY: u8 = (2 << 3) | 2;
const SIGNATURE_KEY: u8 = (3 << 3) | 2;

/// Why an envelope was rejected. Errors name the writer device and seq once the header is
/// known, never any content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The encoded envelope exceeds [`MAX_ENVELOPE_BYTES`].
    #[error("envelope of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The envelope is not the canonical encoding of an `Envelope` message.
    #[error("malformed envelope: {what}")]
    Malformed {
        /// What is wrong with it.
        what: &'static str,
    },
    /// The encoded header exceeds [`MAX_HEADER_BYTES`].
    #[error("envelope header of {size} bytes exceeds the limit of {max} bytes")]
    HeaderTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The header does not decode, is not canonical, or a field has an invalid value.
    #[error("malformed envelope header: {what}")]
    MalformedHeader {
        /// What is wrong with it.
        what: &'static str,
    },
    /// The header's `format_version` is not [`FORMAT_VERSION`].
    #[error(
        "envelope format version {version} is not supported: this release reads version 1; update Kith to read it"
    )]
    WrongFormatVersion {
        /// The version found.
        version: u32,
    },
    /// The payload kind is neither operations nor snapshot.
    #[error("envelope from device {device} seq {seq} has unknown payload kind {kind}")]
    UnknownKind {
        /// The writer.
        device: DeviceId,
        /// Its sequence number.
        seq: u64,
        /// The raw kind value.
        kind: i32,
    },
    /// The envelope names another account than the roster's.
    #[error("envelope from device {device} seq {seq} belongs to another account")]
    WrongAccount {
        /// The writer.
        device: DeviceId,
        /// Its sequence number.
        seq: u64,
    },
    /// The writer may not write this envelope: not in the roster, removed before this seq,
    /// or outside the epochs it may write in.
    #[error("envelope from device {device} seq {seq} is not admitted by the roster: {error}")]
    Membership {
        /// The writer.
        device: DeviceId,
        /// Its sequence number.
        seq: u64,
        /// Why the roster refuses it.
        #[source]
        error: RosterError,
    },
    /// The epoch keys given to the opener belong to another account than the roster.
    #[error("epoch keys are for account {found}, the roster for {expected}")]
    KeysForAnotherAccount {
        /// The roster's account.
        expected: AccountId,
        /// The epoch keys' account.
        found: AccountId,
    },
    /// The envelope's signature does not verify under the writer's key.
    #[error("envelope from device {device} seq {seq} has a bad signature")]
    BadSignature {
        /// The writer.
        device: DeviceId,
        /// Its sequence number.
        seq: u64,
    },
    /// No content key is held for the envelope's epoch.
    #[error("envelope from device {device} seq {seq} is sealed in unknown epoch {epoch}")]
    UnknownEpoch {
        /// The writer.
        device: DeviceId,
        /// Its sequence number.
        seq: u64,
        /// The epoch named in the header.
        epoch: u64,
    },
    /// AEAD decryption failed (wrong key, or ciphertext, nonce or header modified).
    #[error("envelope from device {device} seq {seq} does not decrypt")]
    DecryptFailed {
        /// The writer.
        device: DeviceId,
        /// Its sequence number.
        seq: u64,
    },
    /// The decrypted plaintext is not correctly padded.
    #[error("envelope from device {device} seq {seq} has invalid padding: {error}")]
    Padding {
        /// The writer.
        device: DeviceId,
        /// Its sequence number.
        seq: u64,
        /// What is wrong with the padding.
        #[source]
        error: PaddingError,
    },
    /// A payload to seal exceeds [`MAX_PAYLOAD_BYTES`].
    #[error("payload of {size} bytes exceeds the limit of {max} bytes")]
    PayloadTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
}

/// The hash of an envelope, `H("kith/v1/envelope-hash", header, ciphertext, signature)`,
/// chained through the next envelope's `prev_hash`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EnvelopeHash([u8; 32]);

impl EnvelopeHash {
    /// Length in bytes.
    pub const LEN: usize = 32;

    /// The `prev_hash` of a stream's first envelope (seq 1): 32 zero bytes.
    pub const ZERO: Self = Self([0; 32]);

    /// Wraps raw bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Parses a hash from untrusted bytes of exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(Self)
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// `H("kith/v1/envelope-hash", header, ciphertext, signature)`.
    pub fn compute(header: &[u8], ciphertext: &[u8], signature: &[u8]) -> Self {
        Self(hash(
            labels::ENVELOPE_HASH,
            &[header, ciphertext, signature],
        ))
    }
}

impl fmt::Debug for EnvelopeHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "envelope-hash:{}", hex::encode(self.0))
    }
}

impl fmt::Display for EnvelopeHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// The cleartext header fields of an envelope, as validated by [`peek_header`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderView {
    /// The account whose stream this is.
    pub account_id: AccountId,
    /// The writer device.
    pub device_id: DeviceId,
    /// Position in the writer's stream, from 1.
    pub seq: u64,
    /// The epoch whose content key encrypts the payload.
    pub epoch: u64,
    /// Hash of the writer's envelope at `seq - 1` ([`EnvelopeHash::ZERO`] at seq 1).
    pub prev_hash: EnvelopeHash,
    /// What the plaintext holds: [`PayloadKind::Operations`] or [`PayloadKind::Snapshot`].
    pub kind: PayloadKind,
}

/// The three fields of a canonically framed envelope, borrowed from the input.
struct Framing<'a> {
    header: &'a [u8],
    ciphertext: &'a [u8],
    signature: &'a [u8; SIGNATURE_LEN],
}

/// Reads a minimally encoded protobuf length varint at `*pos`. Three 7-bit groups reach 2 MiB,
/// beyond [`MAX_ENVELOPE_BYTES`]; longer varints are refused before they are summed.
fn read_length(bytes: &[u8], pos: &mut usize) -> Result<usize, EnvelopeError> {
    let mut value = 0usize;
    for shift in 0..3 {
        let byte = *bytes.get(*pos).ok_or(EnvelopeError::Malformed {
            what: "truncated length",
        })?;
        *pos += 1;
        value |= usize::from(byte & 0x7f) << (7 * shift);
        if byte & 0x80 == 0 {
            if byte == 0 && shift > 0 {
                return Err(EnvelopeError::Malformed {
                    what: "non-minimal length varint",
                });
            }
            return Ok(value);
        }
    }
    Err(EnvelopeError::Malformed {
        what: "length varint too long",
    })
}

/// Reads one length-delimited field with protobuf key `key` at `*pos`.
fn read_field<'a>(
    bytes: &'a [u8],
    pos: &mut usize,
    key: u8,
    missing: &'static str,
) -> Result<&'a [u8], EnvelopeError> {
    if bytes.get(*pos) != Some(&key) {
        return Err(EnvelopeError::Malformed { what: missing });
    }
    *pos += 1;
    let len = read_length(bytes, pos)?;
    let end = pos.checked_add(len).filter(|&end| end <= bytes.len());
    let end = end.ok_or(EnvelopeError::Malformed {
        what: "field extends past the end",
    })?;
    let field = &bytes[*pos..end];
    *pos = end;
    Ok(field)
}

/// Splits a canonical envelope into its fields: O(1), no copy, no allocation.
fn split_envelope(bytes: &[u8]) -> Result<Framing<'_>, EnvelopeError> {
    if bytes.len() > MAX_ENVELOPE_BYTES {
        return Err(EnvelopeError::TooLarge {
            size: bytes.len(),
            max: MAX_ENVELOPE_BYTES,
        });
    }
    let mut pos = 0;
    let header = read_field(bytes, &mut pos, HEADER_KEY, "header must come first")?;
    if header.len() > MAX_HEADER_BYTES {
        return Err(EnvelopeError::HeaderTooLarge {
            size: header.len(),
            max: MAX_HEADER_BYTES,
        });
    }
    let ciphertext = read_field(
        bytes,
        &mut pos,
        CIPHERTEXT_KEY,
        "ciphertext must follow the header",
    )?;
    // The plaintext is always a Padmé length of at least the 4-byte prefix; anything else
    // cannot decrypt to a valid envelope, so even the relay can refuse it.
    let padded = ciphertext
        .len()
        .checked_sub(TAG_LEN)
        .filter(|&n| n >= padding::LENGTH_PREFIX_BYTES);
    if padded.is_none_or(|n| padding::padme(n as u64) != n as u64) {
        return Err(EnvelopeError::Malformed {
            what: "ciphertext length is not a padded length plus the tag",
        });
    }
    let signature = read_field(
        bytes,
        &mut pos,
        SIGNATURE_KEY,
        "signature must follow the ciphertext",
    )?;
    let signature =
        <&[u8; SIGNATURE_LEN]>::try_from(signature).map_err(|_| EnvelopeError::Malformed {
            what: "signature must be 64 bytes",
        })?;
    if pos != bytes.len() {
        return Err(EnvelopeError::Malformed {
            what: "bytes after the signature",
        });
    }
    Ok(Framing {
        header,
        ciphertext,
        signature,
    })
}

/// Decodes and validates header bytes (at most [`MAX_HEADER_BYTES`]).
fn decode_header(header: &[u8]) -> Result<(HeaderView, [u8; NONCE_LEN]), EnvelopeError> {
    // The fast path reads a canonical header in place (no allocation, no re-encoding): what
    // every honest writer produces. Anything else takes the path below, which decides the
    // error exactly as before.
    if let Some(raw) = read_canonical_header(header)
        && raw.format_version == FORMAT_VERSION
    {
        return header_view(&raw);
    }
    let decoded =
        proto::EnvelopeHeader::decode(header).map_err(|_| EnvelopeError::MalformedHeader {
            what: "not an EnvelopeHeader",
        })?;
    if decoded.format_version != FORMAT_VERSION {
        return Err(EnvelopeError::WrongFormatVersion {
            version: decoded.format_version,
        });
    }
    // Exactly one encoding per header: no unknown or repeated fields, no default values written.
    if decoded.encoded_len() != header.len() || decoded.encode_to_vec() != header {
        return Err(EnvelopeError::MalformedHeader {
            what: "not canonically encoded",
        });
    }
    header_view(&RawHeader {
        format_version: decoded.format_version,
        account_id: &decoded.account_id,
        device_id: &decoded.device_id,
        seq: decoded.seq,
        epoch: decoded.epoch,
        prev_hash: &decoded.prev_hash,
        kind: decoded.kind,
        nonce: &decoded.nonce,
    })
}

/// The fields of an `EnvelopeHeader`, borrowed from its encoding.
#[derive(Debug, Default, PartialEq, Eq)]
struct RawHeader<'a> {
    format_version: u32,
    account_id: &'a [u8],
    device_id: &'a [u8],
    seq: u64,
    epoch: u64,
    prev_hash: &'a [u8],
    kind: i32,
    nonce: &'a [u8],
}

/// Reads `header` if it is exactly the encoding prost writes for its fields (ascending field
/// numbers, each at most once, no default value written, minimal varints, values in range):
/// then decoding and re-encoding it would give the same bytes. `None` for anything else
/// (which may still decode, or be an error: the caller decides on the slow path).
fn read_canonical_header(bytes: &[u8]) -> Option<RawHeader<'_>> {
    read_fixed_header(bytes).or_else(|| read_any_canonical_header(bytes))
}

/// Offsets of the fixed-layout header ([`read_fixed_header`]): the fields before `seq`.
const FIXED_ACCOUNT_AT: usize = 4;
const FIXED_DEVICE_AT: usize = FIXED_ACCOUNT_AT + 32 + 2;
const FIXED_SEQ_KEY_AT: usize = FIXED_DEVICE_AT + 16;
/// Bytes of the fixed-layout header after `epoch`: prev_hash, kind, nonce with their keys.
const FIXED_TAIL: usize = 2 + 32 + 2 + 2 + NONCE_LEN;

/// The header every writer produces, read by position: all eight fields present, ids and
/// hashes of their exact sizes, one-byte version and kind; only `seq` and `epoch` vary in
/// length. Accepts a subset of what [`read_any_canonical_header`] accepts, with the same
/// fields (a test checks it), at a fraction of its cost: the relay reads one header per
/// pushed envelope. `None` for anything else, which the general reader then decides.
#[inline]
fn read_fixed_header(h: &[u8]) -> Option<RawHeader<'_>> {
    // 0x08 version | 0x12 32 account | 0x1a 16 device | 0x20 seq | 0x28 epoch |
    // 0x32 32 prev_hash | 0x38 kind | 0x42 24 nonce
    if h.len() < FIXED_SEQ_KEY_AT + 1 + 1 + 1 + 1 + FIXED_TAIL
        || h[0] != 0x08
        || !(1..0x80).contains(&h[1])
        || h[2..4] != [0x12, 32]
        || h[FIXED_DEVICE_AT - 2..FIXED_DEVICE_AT] != [0x1a, 16]
        || h[FIXED_SEQ_KEY_AT] != 0x20
    {
        return None;
    }
    let mut rest = &h[FIXED_SEQ_KEY_AT + 1..];
    let seq = read_minimal_varint(&mut rest).filter(|&v| v != 0)?;
    let (&epoch_key, after) = rest.split_first()?;
    if epoch_key != 0x28 {
        return None;
    }
    rest = after;
    let epoch = read_minimal_varint(&mut rest).filter(|&v| v != 0)?;
    let tail: &[u8; FIXED_TAIL] = rest.try_into().ok()?;
    if tail[..2] != [0x32, 32]
        || tail[34] != 0x38
        || !(1..0x80).contains(&tail[35])
        || tail[36..38] != [0x42, NONCE_LEN as u8]
    {
        return None;
    }
    Some(RawHeader {
        format_version: u32::from(h[1]),
        account_id: &h[FIXED_ACCOUNT_AT..FIXED_ACCOUNT_AT + 32],
        device_id: &h[FIXED_DEVICE_AT..FIXED_DEVICE_AT + 16],
        seq,
        epoch,
        prev_hash: &tail[2..34],
        kind: i32::from(tail[35]),
        nonce: &tail[38..],
    })
}

/// [`read_canonical_header`] of any field sizes and values, field by field.
fn read_any_canonical_header(mut bytes: &[u8]) -> Option<RawHeader<'_>> {
    let mut raw = RawHeader::default();
    let mut last_field = 0;
    while !bytes.is_empty() {
        let key = read_minimal_varint(&mut bytes)?;
        let (field, wire_type) = (key >> 3, key & 7);
        if field <= last_field {
            return None;
        }
        last_field = field;
        match (field, wire_type) {
            (1 | 4 | 5 | 7, 0) => {
                let value = read_minimal_varint(&mut bytes)?;
                if value == 0 {
                    return None;
                }
                match field {
                    1 => raw.format_version = u32::try_from(value).ok()?,
                    4 => raw.seq = value,
                    5 => raw.epoch = value,
                    _ => {
                        // An int32 is written sign-extended to 64 bits.
                        let kind = value as i32;
                        if i64::from(kind) as u64 != value {
                            return None;
                        }
                        raw.kind = kind;
                    }
                }
            }
            (2 | 3 | 6 | 8, 2) => {
                let len = usize::try_from(read_minimal_varint(&mut bytes)?).ok()?;
                if len == 0 || len > bytes.len() {
                    return None;
                }
                let (value, rest) = bytes.split_at(len);
                bytes = rest;
                match field {
                    2 => raw.account_id = value,
                    3 => raw.device_id = value,
                    6 => raw.prev_hash = value,
                    _ => raw.nonce = value,
                }
            }
            _ => return None,
        }
    }
    Some(raw)
}

/// A varint of at most 10 bytes in its shortest form (no trailing zero byte), or `None`.
///
/// Every key and length of a header, and most of its numbers, are one byte: that case is
/// inlined into the header reader, the rest is [`read_long_varint`].
#[inline(always)]
fn read_minimal_varint(bytes: &mut &[u8]) -> Option<u64> {
    match bytes.split_first() {
        Some((&byte, rest)) if byte < 0x80 => {
            *bytes = rest;
            Some(u64::from(byte))
        }
        _ => read_long_varint(bytes),
    }
}

/// [`read_minimal_varint`] of anything but a one-byte varint (or of nothing).
#[inline(never)]
fn read_long_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (i, &byte) in bytes.iter().enumerate().take(10) {
        if i == 9 && byte > 1 {
            return None;
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            if i > 0 && byte == 0 {
                return None;
            }
            *bytes = &bytes[i + 1..];
            return Some(value);
        }
    }
    None
}

/// Checks the fields of a decoded header and builds its view.
fn header_view(raw: &RawHeader<'_>) -> Result<(HeaderView, [u8; NONCE_LEN]), EnvelopeError> {
    let field = |what| EnvelopeError::MalformedHeader { what };
    let account_id =
        AccountId::from_slice(raw.account_id).map_err(|_| field("account_id must be 32 bytes"))?;
    let device_id =
        DeviceId::from_slice(raw.device_id).map_err(|_| field("device_id must be 16 bytes"))?;
    let prev_hash =
        EnvelopeHash::from_slice(raw.prev_hash).ok_or(field("prev_hash must be 32 bytes"))?;
    let nonce =
        <[u8; NONCE_LEN]>::try_from(raw.nonce).map_err(|_| field("nonce must be 24 bytes"))?;
    check_position(raw.seq, &prev_hash)?;
    let kind = checked_kind(raw.kind, device_id, raw.seq)?;
    let view = HeaderView {
        account_id,
        device_id,
        seq: raw.seq,
        epoch: raw.epoch,
        prev_hash,
        kind,
    };
    Ok((view, nonce))
}

/// Rules on `seq` and `prev_hash` that hold for every header, sealed or received.
fn check_position(seq: u64, prev_hash: &EnvelopeHash) -> Result<(), EnvelopeError> {
    if seq == 0 {
        return Err(EnvelopeError::MalformedHeader {
            what: "seq must be at least 1",
        });
    }
    if seq == 1 && *prev_hash != EnvelopeHash::ZERO {
        return Err(EnvelopeError::MalformedHeader {
            what: "prev_hash must be zero at seq 1",
        });
    }
    Ok(())
}

fn checked_kind(kind: i32, device: DeviceId, seq: u64) -> Result<PayloadKind, EnvelopeError> {
    match PayloadKind::try_from(kind) {
        Ok(kind @ (PayloadKind::Operations | PayloadKind::Snapshot)) => Ok(kind),
        _ => Err(EnvelopeError::UnknownKind { device, seq, kind }),
    }
}

/// Reads and validates an envelope's framing and header, without copying, hashing or
/// checking any signature: what the relay needs to file a pushed envelope.
///
/// Bounded work on any input: the size is checked first, the framing is read in O(1) and the
/// header (at most [`MAX_HEADER_BYTES`]) is decoded once. Never panics.
///
/// The result is *unauthenticated*: only [`ParsedEnvelope::verify_signature`] or
/// [`verify_batch`] with the writer's key from a verified roster makes it trustworthy.
pub fn peek_header(envelope_bytes: &[u8]) -> Result<HeaderView, EnvelopeError> {
    let framing = split_envelope(envelope_bytes)?;
    decode_header(framing.header).map(|(view, _)| view)
}

/// The ciphertext length [`seal`] produces for a `payload_len`-byte payload: the Padmé-padded
/// length plus the tag, which [`peek_header`]'s framing check requires.
pub const fn ciphertext_len(payload_len: usize) -> usize {
    padding::padded_len(payload_len) as usize + TAG_LEN
}

/// An envelope that [`peek_header`] accepts but nobody sealed: a canonical header for
/// (`account`, `device`, `seq`) in epoch 1 with a zero `prev_hash` and a filler nonce,
/// `ciphertext` as given (make it [`ciphertext_len`] long) and a filler signature.
///
/// What the relay checks of a push and nothing more, so that a load tool (`kith-relay bench`)
/// and tests can fill a relay without keys; any receiver refuses it (the signature does not
/// verify).
pub fn unsealed_for_relay(
    account: &AccountId,
    device: &DeviceId,
    seq: u64,
    ciphertext: Vec<u8>,
) -> Vec<u8> {
    let header = proto::EnvelopeHeader {
        format_version: FORMAT_VERSION,
        account_id: account.as_bytes().to_vec(),
        device_id: device.as_bytes().to_vec(),
        seq,
        epoch: 1,
        prev_hash: vec![0; 32],
        kind: PayloadKind::Operations as i32,
        nonce: vec![7; NONCE_LEN],
    }
    .encode_to_vec();
    proto::Envelope {
        header,
        ciphertext,
        signature: vec![1; SIGNATURE_LEN],
    }
    .encode_to_vec()
}

/// An envelope decoded once from untrusted bytes: header bytes kept verbatim (they are the
/// AEAD's associated data and are signed, so they are never re-encoded), the validated header
/// fields, the ciphertext, the signature and the envelope's hash.
///
/// Decoding proves only that the envelope is well formed. Check the signature
/// ([`Self::verify_signature`], [`verify_batch`]) before trusting any field.
pub struct ParsedEnvelope {
    /// The exact Ed25519 signing input `LP("kith/v1/envelope") || LP(header) || LP(ciphertext)`,
    /// which holds the header and ciphertext bytes: one copy serves verification and decryption.
    signed: Vec<u8>,
    header_range: Range<usize>,
    ciphertext_range: Range<usize>,
    view: HeaderView,
    nonce: [u8; NONCE_LEN],
    signature: Signature,
    hash: EnvelopeHash,
}

/// Builds the signing input in a buffer sized exactly for it.
fn signing_input(header: &[u8], ciphertext: &[u8]) -> (Vec<u8>, Range<usize>, Range<usize>) {
    let context = labels::ENVELOPE_SIGNATURE.as_bytes();
    let mut signed = Vec::with_capacity(12 + context.len() + header.len() + ciphertext.len());
    push_lp(&mut signed, context);
    push_lp(&mut signed, header);
    let header_range = signed.len() - header.len()..signed.len();
    push_lp(&mut signed, ciphertext);
    let ciphertext_range = signed.len() - ciphertext.len()..signed.len();
    (signed, header_range, ciphertext_range)
}

impl ParsedEnvelope {
    /// Decodes an encoded `Envelope` (at most [`MAX_ENVELOPE_BYTES`], canonical framing, valid
    /// header) and computes its hash. Never panics.
    pub fn decode(envelope_bytes: &[u8]) -> Result<Self, EnvelopeError> {
        let framing = split_envelope(envelope_bytes)?;
        let (view, nonce) = decode_header(framing.header)?;
        let hash = EnvelopeHash::compute(framing.header, framing.ciphertext, framing.signature);
        let signature =
            Signature::from_slice(framing.signature).map_err(|_| EnvelopeError::Malformed {
                what: "signature must be 64 bytes",
            })?;
        let (signed, header_range, ciphertext_range) =
            signing_input(framing.header, framing.ciphertext);
        Ok(Self {
            signed,
            header_range,
            ciphertext_range,
            view,
            nonce,
            signature,
            hash,
        })
    }

    /// The validated header fields.
    pub fn header(&self) -> &HeaderView {
        &self.view
    }

    /// The header exactly as encoded by the writer.
    pub fn header_bytes(&self) -> &[u8] {
        &self.signed[self.header_range.clone()]
    }

    /// The ciphertext (padded plaintext encrypted, then the 16-byte tag).
    pub fn ciphertext(&self) -> &[u8] {
        &self.signed[self.ciphertext_range.clone()]
    }

    /// The writer's signature.
    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// This envelope's hash: the next envelope's `prev_hash`.
    pub fn hash(&self) -> EnvelopeHash {
        self.hash
    }

    /// The canonical encoding: byte-identical to the bytes this envelope was decoded from.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode_envelope(
            self.header_bytes(),
            self.ciphertext(),
            self.signature.as_bytes(),
        )
    }

    /// Verifies the signature (strict Ed25519) with `key`, the writer's key from the roster.
    pub fn verify_signature(&self, key: &DeviceVerifyingKey) -> Result<(), EnvelopeError> {
        key.dalek()
            .verify_strict(&self.signed, &self.signature.to_dalek())
            .map_err(|_| EnvelopeError::BadSignature {
                device: self.view.device_id,
                seq: self.view.seq,
            })
    }

    /// Decrypts with the content key of the envelope's epoch (associated data: the verbatim
    /// header bytes) and strips the padding, returning the payload.
    ///
    /// Call only after the signature verified: decryption authenticates the ciphertext under
    /// the content key, which every member device holds, not the writer.
    pub fn decrypt(&self, content_key: &SymmetricKey) -> Result<Vec<u8>, EnvelopeError> {
        let device = self.view.device_id;
        let seq = self.view.seq;
        let decrypt_failed = EnvelopeError::DecryptFailed { device, seq };
        let ciphertext = self.ciphertext();
        let split = ciphertext
            .len()
            .checked_sub(TAG_LEN)
            .ok_or(decrypt_failed.clone())?;
        let (encrypted, tag) = ciphertext.split_at(split);
        let tag = Tag::try_from(tag).map_err(|_| decrypt_failed.clone())?;
        // The plaintext is secret until returned: wiped if padding turns out invalid.
        let mut buffer = Zeroizing::new(encrypted.to_vec());
        XChaCha20Poly1305::new(content_key.expose().into())
            .decrypt_inout_detached(
                (&self.nonce).into(),
                self.header_bytes(),
                buffer.as_mut_slice().into(),
                &tag,
            )
            .map_err(|_| decrypt_failed)?;
        let payload_len = padding::unpad(&buffer)
            .map_err(|error| EnvelopeError::Padding { device, seq, error })?
            .len();
        let mut payload = std::mem::take(&mut *buffer);
        payload.drain(..padding::LENGTH_PREFIX_BYTES);
        // What is cut off is zero padding, checked above.
        payload.truncate(payload_len);
        Ok(payload)
    }
}

impl fmt::Debug for ParsedEnvelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParsedEnvelope")
            .field("header", &self.view)
            .field("ciphertext_len", &self.ciphertext_range.len())
            .field("hash", &self.hash)
            .finish_non_exhaustive()
    }
}

/// Appends a minimal protobuf varint.
fn push_varint(out: &mut Vec<u8>, mut value: usize) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn varint_len(value: usize) -> usize {
    (usize::BITS - (value | 1).leading_zeros()).div_ceil(7) as usize
}

/// The canonical `Envelope` encoding (what `prost` writes for three non-empty fields).
fn encode_envelope(header: &[u8], ciphertext: &[u8], signature: &[u8; SIGNATURE_LEN]) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        3 + varint_len(header.len())
            + varint_len(ciphertext.len())
            + 1
            + header.len()
            + ciphertext.len()
            + SIGNATURE_LEN,
    );
    out.push(HEADER_KEY);
    push_varint(&mut out, header.len());
    out.extend_from_slice(header);
    out.push(CIPHERTEXT_KEY);
    push_varint(&mut out, ciphertext.len());
    out.extend_from_slice(ciphertext);
    out.push(SIGNATURE_KEY);
    push_varint(&mut out, SIGNATURE_LEN);
    out.extend_from_slice(signature);
    out
}

/// A freshly sealed envelope: its canonical encoding and its hash (the next `prev_hash`).
#[derive(Clone, PartialEq, Eq)]
pub struct SealedEnvelope {
    /// The encoded `Envelope`, ready to push.
    pub bytes: Vec<u8>,
    /// Its hash: pass it as `prev_hash` when sealing the next envelope of the stream.
    pub hash: EnvelopeHash,
}

impl fmt::Debug for SealedEnvelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedEnvelope")
            .field("len", &self.bytes.len())
            .field("hash", &self.hash)
            .finish()
    }
}

/// Seals `payload` as envelope `seq` of `key`'s stream in `epoch` (docs/PROTOCOL.md §7):
/// pads it (Padmé), encrypts it with XChaCha20-Poly1305 under `content_key` with a random
/// nonce and the encoded header as associated data, and signs header and ciphertext.
///
/// `prev_hash` is the hash of envelope `seq - 1` ([`EnvelopeHash::ZERO`] for seq 1); `kind`
/// must be [`PayloadKind::Operations`] or [`PayloadKind::Snapshot`]. Refuses to produce what
/// receivers would reject (seq 0, a non-zero `prev_hash` at seq 1, an oversized payload).
#[allow(clippy::too_many_arguments)] // Every argument is a distinct header field or key.
pub fn seal(
    key: &DeviceSigningKey,
    account: &AccountId,
    seq: u64,
    epoch: u64,
    content_key: &SymmetricKey,
    prev_hash: &EnvelopeHash,
    kind: PayloadKind,
    payload: &[u8],
    rng: &mut impl CryptoRng,
) -> Result<SealedEnvelope, EnvelopeError> {
    let device = key.device_id();
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(EnvelopeError::PayloadTooLarge {
            size: payload.len(),
            max: MAX_PAYLOAD_BYTES,
        });
    }
    check_position(seq, prev_hash)?;
    let kind = checked_kind(kind as i32, device, seq)?;
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    let header = proto::EnvelopeHeader {
        format_version: FORMAT_VERSION,
        account_id: account.as_bytes().to_vec(),
        device_id: device.as_bytes().to_vec(),
        seq,
        epoch,
        prev_hash: prev_hash.as_bytes().to_vec(),
        kind: kind as i32,
        nonce: nonce.to_vec(),
    }
    .encode_to_vec();
    if header.len() > MAX_HEADER_BYTES {
        // Unreachable with fixed-size ids and u64 counters (at most 145 bytes), kept as a guard.
        return Err(EnvelopeError::HeaderTooLarge {
            size: header.len(),
            max: MAX_HEADER_BYTES,
        });
    }

    // Build the envelope in place: framing, header, then the padded plaintext, encrypted where
    // it lies. The capacity is exact, so the plaintext is never left behind by a reallocation.
    let too_large = EnvelopeError::PayloadTooLarge {
        size: payload.len(),
        max: MAX_PAYLOAD_BYTES,
    };
    let padded_len =
        usize::try_from(padding::padded_len(payload.len())).map_err(|_| too_large.clone())?;
    let ciphertext_len = padded_len + TAG_LEN;
    let mut out = Vec::with_capacity(
        3 + varint_len(header.len())
            + varint_len(ciphertext_len)
            + 1
            + header.len()
            + ciphertext_len
            + SIGNATURE_LEN,
    );
    out.push(HEADER_KEY);
    push_varint(&mut out, header.len());
    out.extend_from_slice(&header);
    out.push(CIPHERTEXT_KEY);
    push_varint(&mut out, ciphertext_len);
    let ciphertext_start = out.len();
    padding::pad_into(payload, &mut out).map_err(|_| too_large.clone())?;
    let tag = XChaCha20Poly1305::new(content_key.expose().into())
        .encrypt_inout_detached(
            (&nonce).into(),
            &header,
            (&mut out[ciphertext_start..]).into(),
        )
        // Only for plaintexts beyond 256 GiB, excluded by MAX_PAYLOAD_BYTES.
        .map_err(|_| too_large)?;
    out.extend_from_slice(&tag);
    let ciphertext = &out[ciphertext_start..];
    let signature = key.sign(labels::ENVELOPE_SIGNATURE, &[header.as_slice(), ciphertext]);
    let hash = EnvelopeHash::compute(&header, ciphertext, signature.as_bytes());
    out.push(SIGNATURE_KEY);
    push_varint(&mut out, SIGNATURE_LEN);
    out.extend_from_slice(signature.as_bytes());
    Ok(SealedEnvelope { bytes: out, hash })
}

/// Signature `R` encodings that strict verification rejects but a cofactorless batch equation
/// might not: the small-order points (canonical y, either sign of x). Non-canonical `y`
/// (≥ 2^255 − 19) is rejected separately.
const SMALL_ORDER_R: [[u8; 32]; 5] = [
    // Identity (y = 1).
    [
        1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0,
    ],
    // Order 2 (y = −1).
    [
        0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
    // Order 4 (y = 0).
    [0; 32],
    // Order 8.
    [
        0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10, 0x67,
        0x0f, 0x2a, 0x20, 0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77, 0x92, 0xac,
        0x03, 0x7a,
    ],
    [
        0x26, 0xe8, 0x95, 0x8f, 0xc2, 0xb2, 0x27, 0xb0, 0x45, 0xc3, 0xf4, 0x89, 0xf2, 0xef, 0x98,
        0xf0, 0xd5, 0xdf, 0xac, 0x05, 0xd3, 0xc6, 0x33, 0x39, 0xb1, 0x38, 0x02, 0x88, 0x6d, 0x53,
        0xfc, 0x05,
    ],
];

/// Whether the signature's `R` is canonical (y < 2^255 − 19) and not of small order: the
/// conditions `verify_strict` adds to the verification equation, checked on bytes.
fn r_is_strict(signature: &Signature) -> bool {
    let mut y = [0u8; 32];
    y.copy_from_slice(&signature.as_bytes()[..32]);
    y[31] &= 0x7f; // Drop the sign of x.
    if SMALL_ORDER_R.contains(&y) {
        return false;
    }
    // y < p = 2^255 − 19, i.e. not in [2^255 − 19, 2^255 − 1]: the top 31 bytes all 0xff
    // (0x7f for the last) with the low byte ≥ 0xed is non-canonical.
    let high_all_ones = y[1..31].iter().all(|&b| b == 0xff) && y[31] == 0x7f;
    !(high_all_ones && y[0] >= 0xed)
}

/// Verifies many envelopes' signatures at once (Ed25519 batch verification), each under the
/// writer key paired with it. On failure, names the first envelope whose strict single
/// verification fails: `BadSignature { device, seq }`.
///
/// Accepts exactly what [`ParsedEnvelope::verify_signature`] accepts except for one case only
/// a writer can construct: a signature whose `R` or key has a small-order component mixed
/// into a prime-order point, which the batch equation accepts with probability 1/8 and strict
/// verification rejects (docs/PROTOCOL.md §7).
pub fn verify_batch(items: &[(&ParsedEnvelope, &DeviceVerifyingKey)]) -> Result<(), EnvelopeError> {
    match items {
        [] => return Ok(()),
        [(envelope, key)] => return envelope.verify_signature(key),
        _ => {}
    }
    if items
        .iter()
        .all(|(envelope, _)| r_is_strict(&envelope.signature))
    {
        let messages: Vec<&[u8]> = items.iter().map(|(e, _)| e.signed.as_slice()).collect();
        let signatures: Vec<ed25519_dalek::Signature> =
            items.iter().map(|(e, _)| e.signature.to_dalek()).collect();
        let keys: Vec<ed25519_dalek::VerifyingKey> =
            items.iter().map(|(_, k)| *k.dalek()).collect();
        if ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok() {
            return Ok(());
        }
    }
    // Name the culprit: the first envelope that fails on its own.
    items
        .iter()
        .try_for_each(|(envelope, key)| envelope.verify_signature(key))
}

/// Opens envelopes of `roster`'s account (docs/PROTOCOL.md §7, opening steps 2–4), returning
/// their payloads in order.
///
/// 2. every envelope names the roster's account and a writer the roster admits at that seq
///    and epoch ([`VerifiedRoster::writer_key`]);
/// 3. all signatures are verified at once ([`verify_batch`]);
/// 4. each envelope is decrypted with its epoch's content key and unpadded.
///
/// Each step runs over the whole batch before the next, so an error names the first envelope
/// that fails the earliest step. Nothing is decrypted unless every signature verified. Stream
/// continuity is the caller's next step ([`crate::stream::StreamVerifier`]).
pub fn open_batch(
    envelopes: &[ParsedEnvelope],
    roster: &VerifiedRoster,
    keys: &EpochKeys,
) -> Result<Vec<Vec<u8>>, EnvelopeError> {
    open_batch_with(envelopes, roster, keys, verify_batch)
}

/// [`open_batch`] with step 3 done by `verify`, given each envelope paired with its writer's
/// key, which must accept what [`verify_batch`] accepts and name the same envelope when it
/// refuses: [`verify_batch`] over parts of the batch in order (a pull verifies a large page's
/// halves on two threads), the first part's error first. Steps 2 and 4 are
/// [`open_batch`]'s, and nothing is decrypted unless `verify` returned `Ok`.
pub fn open_batch_with(
    envelopes: &[ParsedEnvelope],
    roster: &VerifiedRoster,
    keys: &EpochKeys,
    verify: impl FnOnce(&[(&ParsedEnvelope, &DeviceVerifyingKey)]) -> Result<(), EnvelopeError>,
) -> Result<Vec<Vec<u8>>, EnvelopeError> {
    let account = roster.account_id();
    if keys.account_id() != account {
        return Err(EnvelopeError::KeysForAnotherAccount {
            expected: account,
            found: keys.account_id(),
        });
    }
    let mut items = Vec::with_capacity(envelopes.len());
    for envelope in envelopes {
        let HeaderView {
            account_id,
            device_id: device,
            seq,
            epoch,
            ..
        } = envelope.view;
        if account_id != account {
            return Err(EnvelopeError::WrongAccount { device, seq });
        }
        let key = roster
            .writer_key(&device, seq, epoch)
            .map_err(|error| EnvelopeError::Membership { device, seq, error })?;
        items.push((envelope, key));
    }
    verify(&items)?;
    // Envelopes of one pull are mostly in one epoch: derive each content key once in a row.
    let mut content_key: Option<(u64, SymmetricKey)> = None;
    let mut payloads = Vec::with_capacity(envelopes.len());
    for envelope in envelopes {
        let HeaderView {
            device_id: device,
            seq,
            epoch,
            ..
        } = envelope.view;
        let key = match content_key.take() {
            Some((held, key)) if held == epoch => key,
            // The only way `content_key` fails is an epoch whose secret is not held.
            _ => keys
                .content_key(epoch)
                .map_err(|_| EnvelopeError::UnknownEpoch { device, seq, epoch })?,
        };
        payloads.push(envelope.decrypt(&key)?);
        content_key = Some((epoch, key));
    }
    Ok(payloads)
}

impl ParsedEnvelope {
    /// Opens this one envelope: [`open_batch`] of one.
    pub fn open(
        &self,
        roster: &VerifiedRoster,
        keys: &EpochKeys,
    ) -> Result<Vec<u8>, EnvelopeError> {
        let mut payloads = open_batch(std::slice::from_ref(self), roster, keys)?;
        payloads
            .pop()
            .ok_or(EnvelopeError::Malformed { what: "no payload" })
    }
}

#[cfg(test)]
mod tests;
