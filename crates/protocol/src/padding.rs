//! Padmé padding of envelope plaintexts (docs/PROTOCOL.md §7).
//!
//! A payload of `n` bytes becomes `u32be(n) || payload || zeros`, `Padmé(n + 4)` bytes long.
//! Padmé (Nikitin et al., "Reducing Metadata Leakage from Encrypted Files and Communication with
//! PURBs", PETS 2019) rounds a length `L` so that only `O(log log L)` bits of it remain visible,
//! at most `2^-(⌊log2 ⌊log2 L⌋⌋ + 1)` overhead: below 12.5 % from 16 bytes up and below 6.25 %
//! from 256 bytes up.
//!
//! ```
//! use kith_protocol::padding::{pad, unpad};
//!
//! let padded = pad(b"hello, kith").unwrap();
//! assert_eq!(padded.len(), 16); // Padmé(11 + 4)
//! assert_eq!(unpad(&padded).unwrap(), b"hello, kith");
//! ```

use crate::limits::MAX_PAYLOAD_BYTES;

/// Length of the big-endian length prefix in front of the payload.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// Why a buffer is not a well-formed padded plaintext, or a payload cannot be padded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PaddingError {
    /// The buffer is shorter than the 4-byte length prefix.
    #[error("padded plaintext of {len} bytes is shorter than its 4-byte length prefix")]
    MissingLengthPrefix {
        /// The buffer's length.
        len: usize,
    },
    /// The length prefix claims more bytes than the buffer holds.
    #[error("length prefix claims {declared} payload bytes but only {available} follow it")]
    LengthBeyondBuffer {
        /// The payload length the prefix declares.
        declared: u64,
        /// The bytes after the prefix.
        available: usize,
    },
    /// The buffer is not exactly `Padmé(declared + 4)` bytes long.
    #[error("padded plaintext is {actual} bytes, Padmé of its declared length is {expected}")]
    WrongPaddedSize {
        /// `Padmé(declared + 4)`.
        expected: u64,
        /// The buffer's length.
        actual: usize,
    },
    /// A padding byte is not zero.
    #[error("padding byte at offset {offset} is not zero")]
    NonZeroPadding {
        /// Offset of the first non-zero padding byte in the buffer.
        offset: usize,
    },
    /// The payload is larger than any envelope may carry.
    #[error("payload of {len} bytes exceeds the limit of {max} bytes")]
    PayloadTooLarge {
        /// The payload's length.
        len: usize,
        /// [`MAX_PAYLOAD_BYTES`].
        max: usize,
    },
}

/// `Padmé(L)`: `E = ⌊log2 L⌋`, `S = ⌊log2 E⌋ + 1`, `z = E − S`, `m = 2^z − 1`, result
/// `(L + m) & !m`. Lengths below 2 are returned unchanged; lengths so close to `u64::MAX` that
/// rounding up overflows (far beyond any protocol bound) give `u64::MAX`.
///
/// ```
/// use kith_protocol::padding::padme;
/// assert_eq!(padme(600), 608);
/// assert_eq!(padme(1000), 1024);
/// ```
pub const fn padme(len: u64) -> u64 {
    if len < 2 {
        return len;
    }
    let e = len.ilog2(); // ≥ 1
    let s = e.ilog2() + 1; // ≤ e
    let z = e - s; // ≤ 62
    let mask = (1u64 << z) - 1;
    match len.checked_add(mask) {
        Some(sum) => sum & !mask,
        // Only lengths within 2^57 of u64::MAX, far beyond any bound: never below `len`.
        None => u64::MAX,
    }
}

/// The length of the padded plaintext for a payload of `payload_len` bytes:
/// `Padmé(payload_len + 4)`.
pub const fn padded_len(payload_len: usize) -> u64 {
    padme((payload_len as u64).saturating_add(LENGTH_PREFIX_BYTES as u64))
}

/// Pads `payload` (at most [`MAX_PAYLOAD_BYTES`]): `u32be(len) || payload || zeros`, in total
/// `Padmé(len + 4)` bytes.
pub fn pad(payload: &[u8]) -> Result<Vec<u8>, PaddingError> {
    let mut out = Vec::new();
    pad_into(payload, &mut out)?;
    Ok(out)
}

/// Appends the padded form of `payload` to `out` (what [`pad`] returns), without an
/// intermediate buffer. Returns the number of bytes appended.
pub fn pad_into(payload: &[u8], out: &mut Vec<u8>) -> Result<usize, PaddingError> {
    let too_large = PaddingError::PayloadTooLarge {
        len: payload.len(),
        max: MAX_PAYLOAD_BYTES,
    };
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(too_large);
    }
    let prefix = u32::try_from(payload.len()).map_err(|_| too_large)?;
    // ≤ Padmé(1 MiB) fits a usize on every platform Kith builds for (≥ 32 bits).
    let total = usize::try_from(padded_len(payload.len())).map_err(|_| too_large)?;
    out.reserve(total);
    out.extend_from_slice(&prefix.to_be_bytes());
    out.extend_from_slice(payload);
    out.resize(out.len() + (total - LENGTH_PREFIX_BYTES - payload.len()), 0);
    Ok(total)
}

/// Checks and strips the padding of a decrypted plaintext, returning the payload.
///
/// Rejects a buffer shorter than the prefix, a prefix beyond the buffer, a buffer whose length
/// is not `Padmé(declared + 4)` and non-zero padding: exactly one encoding is valid per payload.
pub fn unpad(padded: &[u8]) -> Result<&[u8], PaddingError> {
    let Some((prefix, rest)) = padded.split_first_chunk::<LENGTH_PREFIX_BYTES>() else {
        return Err(PaddingError::MissingLengthPrefix { len: padded.len() });
    };
    let declared = u32::from_be_bytes(*prefix);
    let declared_len = declared as usize;
    if declared_len > rest.len() {
        return Err(PaddingError::LengthBeyondBuffer {
            declared: u64::from(declared),
            available: rest.len(),
        });
    }
    let expected = padme(u64::from(declared) + LENGTH_PREFIX_BYTES as u64);
    if expected != padded.len() as u64 {
        return Err(PaddingError::WrongPaddedSize {
            expected,
            actual: padded.len(),
        });
    }
    let (payload, padding) = rest.split_at(declared_len);
    if let Some(position) = padding.iter().position(|&b| b != 0) {
        return Err(PaddingError::NonZeroPadding {
            offset: LENGTH_PREFIX_BYTES + declared_len + position,
        });
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn padme_matches_the_paper_on_known_lengths() {
        // E, S, z worked by hand: 9 → E=3,S=2,z=1; 600 → E=9,S=4,z=5; 70000 → E=16,S=5,z=11.
        assert_eq!(padme(0), 0);
        assert_eq!(padme(1), 1);
        assert_eq!(padme(2), 2);
        assert_eq!(padme(7), 7);
        assert_eq!(padme(9), 10);
        assert_eq!(padme(600), 608);
        assert_eq!(padme(70_000), 71_680);
        assert_eq!(padme(1 << 63), 1 << 63);
        assert_eq!(padme(u64::MAX - 5), u64::MAX);
    }

    #[test]
    fn round_trip_of_the_empty_payload() {
        let padded = pad(b"").unwrap();
        assert_eq!(padded, vec![0, 0, 0, 0]);
        assert_eq!(unpad(&padded).unwrap(), b"");
    }

    #[test]
    fn short_buffer_is_missing_its_prefix() {
        assert_eq!(
            unpad(&[0, 0, 1]),
            Err(PaddingError::MissingLengthPrefix { len: 3 })
        );
    }

    #[test]
    fn prefix_beyond_buffer_is_rejected() {
        let mut padded = pad(b"abcdef").unwrap(); // 10 → Padmé 10
        padded[3] = 200;
        assert_eq!(
            unpad(&padded),
            Err(PaddingError::LengthBeyondBuffer {
                declared: 200,
                available: 6
            })
        );
    }

    #[test]
    fn wrong_padded_size_is_rejected() {
        let mut padded = pad(&[7u8; 600]).unwrap();
        assert_eq!(padded.len(), 608);
        padded.push(0);
        assert_eq!(
            unpad(&padded),
            Err(PaddingError::WrongPaddedSize {
                expected: 608,
                actual: 609
            })
        );
        // A shorter declared length with the same buffer is a different Padmé bucket too.
        let mut shrunk = pad(&[7u8; 600]).unwrap();
        shrunk[..4].copy_from_slice(&10u32.to_be_bytes());
        assert_eq!(
            unpad(&shrunk),
            Err(PaddingError::WrongPaddedSize {
                expected: 14,
                actual: 608
            })
        );
    }

    #[test]
    fn non_zero_padding_is_rejected() {
        let mut padded = pad(&[7u8; 600]).unwrap();
        padded[606] = 1;
        assert_eq!(
            unpad(&padded),
            Err(PaddingError::NonZeroPadding { offset: 606 })
        );
    }

    #[test]
    fn oversized_payload_is_refused() {
        let payload = vec![0u8; MAX_PAYLOAD_BYTES + 1];
        assert_eq!(
            pad(&payload),
            Err(PaddingError::PayloadTooLarge {
                len: MAX_PAYLOAD_BYTES + 1,
                max: MAX_PAYLOAD_BYTES
            })
        );
        assert!(pad(&payload[1..]).is_ok());
    }

    proptest! {
        #[test]
        fn padme_overhead_is_at_most_12_percent_from_256_bytes(len in 256u64..(1u64 << 40)) {
            let padded = padme(len);
            prop_assert!(padded >= len);
            prop_assert!((padded - len) * 100 <= len * 12, "{len} → {padded}");
            // Padmé is idempotent: a padded length is its own bucket.
            prop_assert_eq!(padme(padded), padded);
        }

        #[test]
        fn padded_payload_overhead_is_at_most_12_percent(payload in prop::collection::vec(any::<u8>(), 256..4096)) {
            let padded = pad(&payload).unwrap();
            prop_assert!((padded.len() - payload.len()) * 100 <= payload.len() * 12);
        }

        #[test]
        fn pad_then_unpad_round_trips(payload in prop::collection::vec(any::<u8>(), 0..5000)) {
            let padded = pad(&payload).unwrap();
            prop_assert_eq!(padded.len() as u64, padded_len(payload.len()));
            prop_assert_eq!(unpad(&padded).unwrap(), &payload[..]);
        }

        #[test]
        fn unpad_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = unpad(&bytes);
        }
    }
}
