//! Relay frames (docs/PROTOCOL.md §10): a 4-byte big-endian length, then that many bytes of
//! protobuf (`Request` from a client, `Response` from the relay).
//!
//! This is the pure half of framing, shared by the relay's and the client's stream readers
//! (`kith_relay::frame`, which add only the I/O) and by the `frame` fuzz target: the length is
//! checked against the limit by [`body_len`] before a byte of the body is buffered, and a body
//! is decoded once by [`decode_body`].
//!
//! ```
//! use kith_protocol::frame::{decode_request, encode_frame};
//! use kith_protocol::proto::{Request, request};
//!
//! let request = Request { kind: Some(request::Kind::GetChallenge(Default::default())) };
//! let bytes = encode_frame(&request);
//! let (decoded, used) = decode_request(&bytes, 1024)?.expect("one frame");
//! assert_eq!((decoded, used), (request, bytes.len()));
//! # Ok::<(), kith_protocol::frame::FrameError>(())
//! ```

use prost::Message;

use crate::proto::Request;

/// Bytes of the length prefix.
pub const HEADER_LEN: usize = 4;

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The announced length exceeds the limit; nothing after the prefix was looked at.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Announced length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The input ended inside a frame.
    #[error("input ended inside a frame")]
    Truncated,
    /// The body is not the expected protobuf message.
    #[error("frame does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
}

/// The body length announced by a frame's prefix, refused if it exceeds `max_len`.
pub fn body_len(header: [u8; HEADER_LEN], max_len: u32) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header);
    if len > max_len {
        return Err(FrameError::TooLarge {
            len: u64::from(len),
            max: u64::from(max_len),
        });
    }
    usize::try_from(len).map_err(|_| FrameError::TooLarge {
        len: u64::from(len),
        max: usize::MAX as u64,
    })
}

/// Decodes one frame's body as `M`.
pub fn decode_body<M: Message + Default>(body: &[u8]) -> Result<M, FrameError> {
    Ok(M::decode(body)?)
}

/// Decodes the first frame of `bytes` as `M`, returning it and the number of bytes it took
/// (prefix included). `Ok(None)` when `bytes` is empty (the stream ended before a frame began).
pub fn decode_frame<M: Message + Default>(
    bytes: &[u8],
    max_len: u32,
) -> Result<Option<(M, usize)>, FrameError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let (header, rest) = bytes
        .split_first_chunk::<HEADER_LEN>()
        .ok_or(FrameError::Truncated)?;
    let len = body_len(*header, max_len)?;
    let body = rest.get(..len).ok_or(FrameError::Truncated)?;
    Ok(Some((decode_body(body)?, HEADER_LEN + len)))
}

/// [`decode_frame`] for what a relay reads: a client's `Request`.
pub fn decode_request(bytes: &[u8], max_len: u32) -> Result<Option<(Request, usize)>, FrameError> {
    decode_frame(bytes, max_len)
}

/// Encodes a message as one frame (length prefix included) in a single buffer.
///
/// Messages the relay and its clients build are bounded far below 4 GiB (the relay's frame
/// limit is a `u32`); a larger one would get a prefix of `u32::MAX`, which every reader refuses.
pub fn encode_frame<M: Message>(message: &M) -> Vec<u8> {
    let len = message.encoded_len();
    let mut out = Vec::with_capacity(HEADER_LEN + len);
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    // Encoding into a Vec cannot run out of space.
    let _ = message.encode(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Response, request};

    fn ping() -> Request {
        Request {
            kind: Some(request::Kind::GetChallenge(Default::default())),
        }
    }

    #[test]
    fn a_frame_round_trips_and_reports_its_length() {
        let mut bytes = encode_frame(&ping());
        let len = bytes.len();
        bytes.extend_from_slice(b"next frame");
        assert_eq!(decode_request(&bytes, 100), Ok(Some((ping(), len))));
    }

    #[test]
    fn an_oversized_length_is_refused_before_the_body_is_read() {
        let bytes = u32::MAX.to_be_bytes();
        assert_eq!(
            decode_request(&bytes, 1024),
            Err(FrameError::TooLarge {
                len: 4_294_967_295,
                max: 1024
            })
        );
    }

    #[test]
    fn truncated_prefix_and_body_are_errors_and_empty_input_is_none() {
        assert_eq!(decode_request(&[], 10), Ok(None));
        assert_eq!(decode_request(&[0, 0], 10), Err(FrameError::Truncated));
        assert_eq!(
            decode_request(&[0, 0, 0, 5, 1, 2], 10),
            Err(FrameError::Truncated)
        );
    }

    #[test]
    fn garbage_body_is_a_decode_error() {
        let bytes = [0, 0, 0, 3, 0xff, 0xff, 0xff];
        assert!(matches!(
            decode_frame::<Response>(&bytes, 10),
            Err(FrameError::Decode(_))
        ));
    }
}
