//! Kith's frames on streams (docs/PROTOCOL.md §10): a 4-byte big-endian length, then that many
//! bytes of protobuf. This is the one I/O path for frames: the relay's server, the client's
//! connection and the relay's load tool all read and write through it.
//!
//! The length is checked against the caller's limit before a byte of the body is buffered, and
//! the body buffer then grows only as bytes actually arrive, so a peer that announces a large
//! frame and sends nothing costs nothing. The pure half (length bound, body decoding,
//! encoding) is [`kith_protocol::frame`], which the `frame` fuzz target exercises; this crate
//! adds only the I/O.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod socket;

use bytes::{Bytes, BytesMut};
use kith_protocol::frame as pure;
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub use kith_protocol::frame::{HEADER_LEN, encode_frame};

/// Initial body buffer; it grows as data arrives, up to the announced (bounded) length.
const INITIAL_BODY_CAPACITY: usize = 16 * 1024;

/// Why a frame could not be read from a stream (the pure decoding errors, plus the transport's).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The announced length exceeds the limit; nothing was buffered.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Announced length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// The body is not the expected protobuf message.
    #[error("frame does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
    /// The transport failed.
    #[error("stream error: {0}")]
    Io(#[from] std::io::Error),
    /// A framing error of a later `kith-protocol` than this crate knows (`FrameError` is
    /// `#[non_exhaustive]`).
    #[error(transparent)]
    Frame(pure::FrameError),
}

impl From<pure::FrameError> for ReadError {
    fn from(error: pure::FrameError) -> Self {
        match error {
            pure::FrameError::TooLarge { len, max } => ReadError::TooLarge { len, max },
            pure::FrameError::Truncated => ReadError::Truncated,
            pure::FrameError::Decode(error) => ReadError::Decode(error),
            other => ReadError::Frame(other),
        }
    }
}

/// Reads one frame's body. `Ok(None)` when the stream ended cleanly before a frame began.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max_len: u32,
) -> Result<Option<Vec<u8>>, ReadError> {
    let mut header = [0u8; HEADER_LEN];
    let mut filled = 0;
    while filled < HEADER_LEN {
        let n = reader.read(&mut header[filled..]).await?;
        if n == 0 {
            return if filled == 0 {
                Ok(None)
            } else {
                Err(ReadError::Truncated)
            };
        }
        filled += n;
    }
    let len = pure::body_len(header, max_len)?;
    let mut body = Vec::with_capacity(len.min(INITIAL_BODY_CAPACITY));
    reader.take(len as u64).read_to_end(&mut body).await?;
    if body.len() != len {
        return Err(ReadError::Truncated);
    }
    Ok(Some(body))
}

/// Reads one frame's body from a QUIC stream into a single [`Bytes`], taking the stream's
/// chunks without an intermediate buffer. `Ok(None)` when the stream ended cleanly before a
/// frame began. At most `prealloc` bytes are reserved before they arrive (the relay passes a
/// small value so that a peer announcing a large frame and sending nothing costs little; the
/// buffer then grows as data arrives); never more than the frame is read from the stream.
pub async fn read_frame_bytes(
    recv: &mut quinn::RecvStream,
    max_len: u32,
    prealloc: usize,
) -> Result<Option<Bytes>, ReadError> {
    match read_frame_header(recv, max_len).await? {
        Some(len) => read_frame_body(recv, len, prealloc).await.map(Some),
        None => Ok(None),
    }
}

/// Reads a frame's 4-byte length from a QUIC stream and checks it against `max_len` (the
/// relay reserves room for the frame between the two halves). `Ok(None)` when the stream
/// ended cleanly before a frame began.
pub async fn read_frame_header(
    recv: &mut quinn::RecvStream,
    max_len: u32,
) -> Result<Option<usize>, ReadError> {
    let mut header = [0u8; HEADER_LEN];
    let mut filled = 0;
    while filled < HEADER_LEN {
        match recv
            .read_chunk(HEADER_LEN - filled, true)
            .await
            .map_err(std::io::Error::from)?
        {
            Some(chunk) => {
                header[filled..filled + chunk.bytes.len()].copy_from_slice(&chunk.bytes);
                filled += chunk.bytes.len();
            }
            None if filled == 0 => return Ok(None),
            None => return Err(ReadError::Truncated),
        }
    }
    Ok(Some(pure::body_len(header, max_len)?))
}

/// Reads the `len`-byte body of a frame whose header [`read_frame_header`] read (see
/// [`read_frame_bytes`] for `prealloc`).
pub async fn read_frame_body(
    recv: &mut quinn::RecvStream,
    len: usize,
    prealloc: usize,
) -> Result<Bytes, ReadError> {
    let mut body = BytesMut::with_capacity(len.min(prealloc));
    while body.len() < len {
        match recv
            .read_chunk(len - body.len(), true)
            .await
            .map_err(std::io::Error::from)?
        {
            Some(chunk) => {
                // The first chunk of a frame that fits in one is taken as is.
                if body.is_empty() && chunk.bytes.len() == len {
                    return Ok(chunk.bytes);
                }
                if body.capacity() - body.len() < chunk.bytes.len() {
                    // Grow to twice what arrived (bounded by the frame), not by a chunk.
                    let want = (body.len() * 2)
                        .max(chunk.bytes.len())
                        .min(len - body.len());
                    body.reserve(want);
                }
                body.extend_from_slice(&chunk.bytes);
            }
            None => return Err(ReadError::Truncated),
        }
    }
    Ok(body.freeze())
}

/// The largest UDP payload Kith's QUIC endpoints offer to receive and probe for: 6,550 bytes,
/// the most that quinn's batches of up to 10 datagrams (one UDP generic-segmentation send)
/// keep within the 65,507 bytes a single UDP send may carry. Larger datagrams (a 9,000-byte
/// jumbo MTU) make quinn 0.11 build batches the kernel refuses (`EMSGSIZE`, which quinn-udp
/// drops silently as it expects it only of MTU probes): every batch would be lost.
///
/// quinn's defaults stop at 1,472 bytes accepted and 1,452 probed, an Ethernet path. Every
/// packet costs a fixed share of work at both ends (header protection, frame parsing, an
/// acknowledgement, stream reassembly, a system call per batch), so where the path carries
/// larger datagrams (a relay on the same host as its clients, a LAN or data-centre link with
/// jumbo frames) a push of 100 envelopes takes ~13 packets instead of ~60. On an Internet path
/// nothing changes: MTU discovery (RFC 8899, quinn's `MtuDiscoveryConfig`) probes upward from
/// 1,200 bytes and keeps the largest size that was acknowledged, so packets stay at the path's
/// MTU; the probes lost on the way cost a few datagrams per connection every ten minutes.
pub const MAX_UDP_PAYLOAD: u16 = 6550;

/// The longest the peer is asked to hold back an acknowledgement ([`probe_udp_payload`]).
pub const PEER_MAX_ACK_DELAY: std::time::Duration = std::time::Duration::from_millis(1);

/// Lets `transport` discover and use datagrams of up to `max` bytes (at least 1,200; see
/// [`MAX_UDP_PAYLOAD`]) where the path carries them, and asks the peer to acknowledge within
/// 1 ms (QUIC's ACK-frequency extension; ignored by a peer without it).
///
/// The second half is what makes the first safe: with datagrams of 6,550 bytes a push of 100
/// envelopes is about 13 packets, and when the last one is the odd one out the receiver
/// waits its whole `max_ack_delay` (25 ms by default) before acknowledging it. The paced
/// 100-device benchmark showed it as an ack p99 of 28 ms instead of 6 ms (BENCHMARKS.md,
/// "Relay push CPU, fifth session"); with a 1 ms bound it is back to 5–11 ms.
pub fn probe_udp_payload(transport: &mut quinn::TransportConfig, max: u16) {
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(max.max(1200));
    transport.mtu_discovery_config(Some(mtu));
    let mut ack = quinn::AckFrequencyConfig::default();
    ack.max_ack_delay(Some(PEER_MAX_ACK_DELAY));
    transport.ack_frequency_config(Some(ack));
}

/// An endpoint configuration that accepts datagrams of up to `max` bytes (at least 1,200; the
/// `max_udp_payload_size` transport parameter, which bounds what the peer sends; see
/// [`MAX_UDP_PAYLOAD`]). quinn's receive buffer is sized from it.
pub fn endpoint_config(max: u16) -> quinn::EndpointConfig {
    let mut endpoint = quinn::EndpointConfig::default();
    // 1,200 to 65,527 is the range quinn accepts, which `u16` and the bound below keep to.
    let _ = endpoint.max_udp_payload_size(max.clamp(1200, 65_527));
    endpoint
}

/// Writes an encoded frame to a QUIC stream without copying it.
pub async fn write_frame(send: &mut quinn::SendStream, frame: Bytes) -> std::io::Result<()> {
    send.write_chunk(frame).await.map_err(std::io::Error::from)
}

/// Reads and decodes one message. `Ok(None)` when the stream ended cleanly.
pub async fn read_message<M: Message + Default, R: AsyncRead + Unpin>(
    reader: &mut R,
    max_len: u32,
) -> Result<Option<M>, ReadError> {
    match read_frame(reader, max_len).await? {
        Some(body) => Ok(Some(pure::decode_body(&body)?)),
        None => Ok(None),
    }
}

/// Writes one message as a frame.
pub async fn write_message<M: Message, W: AsyncWrite + Unpin>(
    writer: &mut W,
    message: &M,
) -> std::io::Result<()> {
    writer.write_all(&encode_frame(message)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use kith_protocol::proto::{Request, request};

    fn ping() -> Request {
        Request {
            kind: Some(request::Kind::GetChallenge(Default::default())),
        }
    }

    #[tokio::test]
    async fn a_frame_round_trips() {
        let bytes = encode_frame(&ping());
        let decoded: Request = read_message(&mut bytes.as_slice(), 100)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(decoded, ping());
    }

    #[tokio::test]
    async fn an_oversized_length_is_refused_before_reading_the_body() {
        let mut bytes = u32::MAX.to_be_bytes().to_vec();
        bytes.push(0);
        let err = read_frame(&mut bytes.as_slice(), 1024).await.unwrap_err();
        assert!(matches!(
            err,
            ReadError::TooLarge {
                len: 4_294_967_295,
                max: 1024
            }
        ));
    }

    #[tokio::test]
    async fn truncated_header_and_body_are_errors_and_clean_end_is_none() {
        assert!(read_frame(&mut &[][..], 10).await.unwrap().is_none());
        assert!(matches!(
            read_frame(&mut &[0, 0][..], 10).await,
            Err(ReadError::Truncated)
        ));
        assert!(matches!(
            read_frame(&mut &[0, 0, 0, 5, 1, 2][..], 10).await,
            Err(ReadError::Truncated)
        ));
    }

    #[tokio::test]
    async fn garbage_body_is_a_decode_error() {
        let bytes = [0, 0, 0, 3, 0xff, 0xff, 0xff];
        let err = read_message::<Request, _>(&mut &bytes[..], 10)
            .await
            .unwrap_err();
        assert!(matches!(err, ReadError::Decode(_)));
    }

    #[test]
    fn larger_datagrams_come_with_a_short_acknowledgement_delay() {
        // Without the ACK-frequency request, a 6,550-byte datagram size delays the last packet
        // of a push by the peer's 25 ms max_ack_delay (see probe_udp_payload).
        let mut transport = quinn::TransportConfig::default();
        probe_udp_payload(&mut transport, MAX_UDP_PAYLOAD);
        let shown = format!("{transport:?}");
        assert!(
            shown.contains(&format!("max_ack_delay: Some({PEER_MAX_ACK_DELAY:?})")),
            "{shown}"
        );
        assert!(
            shown.contains(&format!("upper_bound: {MAX_UDP_PAYLOAD}")),
            "{shown}"
        );
    }
}
