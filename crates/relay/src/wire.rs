//! Zero-copy forms of the two bulk messages, for the relay's hot paths.
//!
//! `kith_protocol::proto` decodes `bytes` fields into `Vec<u8>`: a push of 100 envelopes costs
//! 100 allocations and copies, and a pull page as many again. The types here have the same
//! wire format (field numbers and types of `proto/kith/v1/relay.proto`) with [`Bytes`] fields,
//! so that decoding from a [`Bytes`] frame body slices it instead of copying, and a pull page
//! is encoded from slices of what the store read. The tests check that both forms encode to
//! the same bytes and decode each other.
//!
//! Only a request that is exactly one `push` field takes the zero-copy path
//! ([`push_payload`]); anything else is decoded as a `proto::Request`, so both paths accept
//! the same inputs with the same meaning.

use bytes::{BufMut, Bytes, BytesMut};
use kith_protocol::proto::StreamInfo;
use prost::Message;
use prost::encoding::{WireType, decode_varint, encode_key, encode_varint, encoded_len_varint};

/// Field number of `push` in `Request.kind`.
pub const REQUEST_PUSH: u32 = 6;
/// Field number of `put_sealed_epoch_keys` in `Request.kind`.
pub const REQUEST_PUT_SEALED_EPOCH_KEYS: u32 = 9;
/// Field number of `pull` in `Response.kind`.
const RESPONSE_PULL: u32 = 6;

/// `kith.v1.Push` with envelopes as slices of the frame they arrived in.
#[derive(Clone, PartialEq, Message)]
pub struct Push {
    /// Encoded envelopes, consecutive seqs.
    #[prost(bytes = "bytes", repeated, tag = "1")]
    pub envelopes: Vec<Bytes>,
}

impl Push {
    /// Decodes a `Push` payload that holds only `envelopes` entries, each its one-byte key,
    /// a length and the bytes (what every client writes), in one pass: the general decoder
    /// costs about twice as much per envelope, and the relay decodes one per pushed
    /// envelope. `None` for anything else (an unknown or misplaced field, a bad length), which
    /// [`Message::decode`] then decides; for what this accepts both give the same `Push`.
    pub fn decode_plain(payload: &Bytes) -> Option<Push> {
        const ENVELOPES_KEY: u8 = 1 << 3 | WireType::LengthDelimited as u8;
        let mut envelopes = Vec::new();
        let mut rest = &payload[..];
        while let Some((&key, after)) = rest.split_first() {
            if key != ENVELOPES_KEY {
                return None;
            }
            rest = after;
            let len = usize::try_from(decode_varint(&mut rest).ok()?).ok()?;
            if len > rest.len() {
                return None;
            }
            let start = payload.len() - rest.len();
            envelopes.push(payload.slice(start..start + len));
            rest = &rest[len..];
        }
        Some(Push { envelopes })
    }
}

/// `kith.v1.StoredEnvelope` with shared byte fields.
#[derive(Clone, PartialEq, Message)]
pub struct StoredEnvelope {
    /// The writing device.
    #[prost(bytes = "bytes", tag = "1")]
    pub device_id: Bytes,
    /// Its seq.
    #[prost(uint64, tag = "2")]
    pub seq: u64,
    /// The encoded envelope.
    #[prost(bytes = "bytes", tag = "3")]
    pub envelope: Bytes,
}

/// `kith.v1.PullResponse` with shared byte fields.
#[derive(Clone, PartialEq, Message)]
pub struct PullResponse {
    /// Envelopes of the page.
    #[prost(message, repeated, tag = "1")]
    pub envelopes: Vec<StoredEnvelope>,
    /// Every stream of the account.
    #[prost(message, repeated, tag = "2")]
    pub streams: Vec<StreamInfo>,
    /// Whether a bound cut the page short.
    #[prost(bool, tag = "3")]
    pub more: bool,
}

/// The payload of a message body that is exactly one length-delimited field `field`.
fn single_field(body: &Bytes, field: u32) -> Option<Bytes> {
    let mut rest = &body[..];
    let key = decode_varint(&mut rest).ok()?;
    if key != u64::from(field << 3 | WireType::LengthDelimited as u32) {
        return None;
    }
    let len = decode_varint(&mut rest).ok()?;
    if u64::try_from(rest.len()).ok()? != len {
        return None;
    }
    Some(body.slice(body.len() - rest.len()..))
}

/// The `Push` payload of a `Request` body that holds exactly one field, `push`; `None` for
/// any other request (decode it as `proto::Request`).
pub fn push_payload(body: &Bytes) -> Option<Bytes> {
    single_field(body, REQUEST_PUSH)
}

/// The `PullResponse` payload of a `Response` body that holds exactly one field, `pull`.
pub fn pull_payload(body: &Bytes) -> Option<Bytes> {
    single_field(body, RESPONSE_PULL)
}

/// Why a request was refused before it was decoded ([`check_request`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unbounded {
    /// The body is larger than its kind allows.
    TooLarge,
    /// A list holds more elements than its kind allows (the kind's field number in
    /// `Request.kind`).
    TooMany(u32),
    /// The body is not exactly one length-delimited field.
    Malformed,
}

/// The largest body and the longest list (field 1 of the kind's message, if it is a list) a
/// request of kind `field` (its field number in `Request.kind`) may have.
fn request_bounds(field: u32, limits: &crate::config::Bounds) -> (usize, Option<usize>) {
    use kith_protocol::limits::{
        MAX_BUNDLE_BYTES, MAX_DEVICES, MAX_REMOVED_DEVICES, MAX_ROSTER_BYTES,
        MAX_SEALED_EPOCH_KEY_BYTES,
    };
    /// Room for the fields beside a roster or bundle (ids, signature, token).
    const ENVELOPE_OF_FIELDS: usize = 1024;
    match field {
        // Push: the frame limit, and the batch bound.
        REQUEST_PUSH => (
            limits.max_frame_bytes as usize,
            Some(limits.max_batch_envelopes as usize),
        ),
        // CreateAccount, PutRoster, RecoverDevice: one roster.
        3 | 4 | 18 => (MAX_ROSTER_BYTES + ENVELOPE_OF_FIELDS, None),
        // Pull: a cursor (16-byte id, seq) per device, present or removed.
        7 => (16 * 1024, Some(MAX_DEVICES + MAX_REMOVED_DEVICES)),
        // PutSealedEpochKeys.
        REQUEST_PUT_SEALED_EPOCH_KEYS => {
            let keys = limits.max_sealed_keys_per_request as usize;
            (
                keys * (MAX_SEALED_EPOCH_KEY_BYTES + 4) + ENVELOPE_OF_FIELDS,
                Some(keys),
            )
        }
        // RegisterPushTarget: one token (its bound is checked again after decoding).
        19 => (kith_protocol::limits::MAX_PUSH_TOKEN_BYTES + 16, None),
        // PutPairingSlot, PutRecoveryBundle: one sealed bundle.
        11 | 14 => (MAX_BUNDLE_BYTES + ENVELOPE_OF_FIELDS, None),
        // Everything else holds ids, a signature, a number or nothing.
        _ => (ENVELOPE_OF_FIELDS, None),
    }
}

/// Reads one protobuf field's key and skips its value; `None` if it does not parse.
fn skip_field(rest: &mut &[u8]) -> Option<u32> {
    let key = decode_varint(rest).ok()?;
    let field = u32::try_from(key >> 3).ok()?;
    let skip = match key & 7 {
        0 => {
            decode_varint(rest).ok()?;
            0
        }
        1 => 8,
        2 => usize::try_from(decode_varint(rest).ok()?).ok()?,
        5 => 4,
        _ => return None,
    };
    if rest.len() < skip {
        return None;
    }
    *rest = &rest[skip..];
    Some(field)
}

/// Checks a request body against its kind's bounds *before* it is decoded: decoding allocates
/// per element (a 4 MiB pull of empty cursors would be 100,000 vectors), so the body's size and
/// its list's length are bounded by a scan that allocates nothing. An empty body (no kind)
/// passes; the decoder refuses it.
pub fn check_request(body: &[u8], limits: &crate::config::Bounds) -> Result<(), Unbounded> {
    if body.is_empty() {
        return Ok(());
    }
    let mut rest = body;
    let key = decode_varint(&mut rest).map_err(|_| Unbounded::Malformed)?;
    let field = u32::try_from(key >> 3).map_err(|_| Unbounded::Malformed)?;
    if key & 7 != WireType::LengthDelimited as u64 {
        return Err(Unbounded::Malformed);
    }
    let len = decode_varint(&mut rest).map_err(|_| Unbounded::Malformed)?;
    if u64::try_from(rest.len()).ok() != Some(len) {
        return Err(Unbounded::Malformed);
    }
    let (max_bytes, max_list) = request_bounds(field, limits);
    if rest.len() > max_bytes {
        return Err(Unbounded::TooLarge);
    }
    if let Some(max_list) = max_list {
        let mut elements = 0usize;
        while !rest.is_empty() {
            if skip_field(&mut rest).ok_or(Unbounded::Malformed)? == 1 {
                elements += 1;
                if elements > max_list {
                    return Err(Unbounded::TooMany(field));
                }
            }
        }
    }
    Ok(())
}

/// Encodes `Response { kind: pull(page) }` as one frame, length prefix included.
pub fn pull_frame(page: &PullResponse) -> Bytes {
    let inner = page.encoded_len();
    let body = 1 + encoded_len_varint(inner as u64) + inner;
    let mut out = BytesMut::with_capacity(kith_net::HEADER_LEN + body);
    out.put_u32(u32::try_from(body).unwrap_or(u32::MAX));
    encode_key(RESPONSE_PULL, WireType::LengthDelimited, &mut out);
    encode_varint(inner as u64, &mut out);
    page.encode_raw(&mut out);
    out.freeze()
}

/// Encodes `Request { kind: push(push) }` as one frame, length prefix included.
pub fn push_frame(push: &Push) -> Bytes {
    let inner = push.encoded_len();
    let body = 1 + encoded_len_varint(inner as u64) + inner;
    let mut out = BytesMut::with_capacity(kith_net::HEADER_LEN + body);
    out.put_u32(u32::try_from(body).unwrap_or(u32::MAX));
    encode_key(REQUEST_PUSH, WireType::LengthDelimited, &mut out);
    encode_varint(inner as u64, &mut out);
    push.encode_raw(&mut out);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kith_protocol::frame::encode_frame;
    use kith_protocol::proto::{self, Request, Response, request, response};

    fn canonical_page() -> proto::PullResponse {
        proto::PullResponse {
            envelopes: (1..=3)
                .map(|seq| proto::StoredEnvelope {
                    device_id: vec![7; 16],
                    seq,
                    envelope: vec![seq as u8; 300 * seq as usize],
                })
                .collect(),
            streams: vec![proto::StreamInfo {
                device_id: vec![7; 16],
                first_seq: 1,
                last_seq: 3,
            }],
            more: true,
        }
    }

    fn zero_copy_page(page: &proto::PullResponse) -> PullResponse {
        PullResponse {
            envelopes: page
                .envelopes
                .iter()
                .map(|e| StoredEnvelope {
                    device_id: Bytes::from(e.device_id.clone()),
                    seq: e.seq,
                    envelope: Bytes::from(e.envelope.clone()),
                })
                .collect(),
            streams: page.streams.clone(),
            more: page.more,
        }
    }

    #[test]
    fn a_pull_frame_is_the_canonical_encoding_and_decodes_both_ways() {
        for page in [canonical_page(), proto::PullResponse::default()] {
            let canonical = encode_frame(&Response {
                kind: Some(response::Kind::Pull(page.clone())),
            });
            let fast = pull_frame(&zero_copy_page(&page));
            assert_eq!(&fast[..], &canonical[..]);
            let body = fast.slice(4..);
            let payload = pull_payload(&body).unwrap();
            assert_eq!(
                PullResponse::decode(payload).unwrap(),
                zero_copy_page(&page)
            );
        }
    }

    #[test]
    fn a_push_frame_is_the_canonical_encoding_and_its_payload_is_found() {
        let envelopes: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 200 + usize::from(i)]).collect();
        let canonical = encode_frame(&Request {
            kind: Some(request::Kind::Push(proto::Push {
                envelopes: envelopes.clone(),
            })),
        });
        let fast = push_frame(&Push {
            envelopes: envelopes.iter().cloned().map(Bytes::from).collect(),
        });
        assert_eq!(&fast[..], &canonical[..]);
        let body = Bytes::from(canonical[4..].to_vec());
        let push = Push::decode(push_payload(&body).unwrap()).unwrap();
        assert_eq!(push.envelopes, envelopes);
        let plain = Push::decode_plain(&push_payload(&body).unwrap()).unwrap();
        assert_eq!(plain, push);
        let range = body.as_ptr() as usize..body.as_ptr() as usize + body.len();
        assert!(range.contains(&(plain.envelopes[4].as_ptr() as usize)));
        // Zero-copy: the envelopes point into the body.
        let range = body.as_ptr() as usize..body.as_ptr() as usize + body.len();
        assert!(range.contains(&(push.envelopes[0].as_ptr() as usize)));
    }

    #[test]
    fn requests_are_bounded_by_kind_before_decoding() {
        let limits = crate::config::Bounds::default();
        let body = |kind| {
            let frame = encode_frame(&Request { kind: Some(kind) });
            frame[4..].to_vec()
        };
        let pull = |n: usize| {
            body(request::Kind::Pull(proto::Pull {
                cursors: vec![proto::Cursor::default(); n],
                ..Default::default()
            }))
        };
        assert_eq!(check_request(&pull(320), &limits), Ok(()));
        assert_eq!(
            check_request(&pull(321), &limits),
            Err(Unbounded::TooMany(7))
        );
        assert_eq!(
            check_request(&pull(9000), &limits),
            Err(Unbounded::TooLarge)
        );
        let push = |n: usize| {
            body(request::Kind::Push(proto::Push {
                envelopes: vec![vec![1]; n],
            }))
        };
        assert_eq!(check_request(&push(1000), &limits), Ok(()));
        assert_eq!(
            check_request(&push(1001), &limits),
            Err(Unbounded::TooMany(REQUEST_PUSH))
        );
        let roster = |n: usize| {
            body(request::Kind::PutRoster(proto::PutRoster {
                roster: vec![0; n],
            }))
        };
        assert_eq!(check_request(&roster(256 * 1024), &limits), Ok(()));
        assert_eq!(
            check_request(&roster(300 * 1024), &limits),
            Err(Unbounded::TooLarge)
        );
        let challenge = body(request::Kind::GetChallenge(proto::GetChallenge {}));
        assert_eq!(check_request(&challenge, &limits), Ok(()));
        let mut twice = challenge.clone();
        twice.extend_from_slice(&challenge);
        assert_eq!(check_request(&twice, &limits), Err(Unbounded::Malformed));
        assert_eq!(check_request(&[], &limits), Ok(()));
        assert_eq!(
            check_request(&[0xff; 8], &limits),
            Err(Unbounded::Malformed)
        );
    }

    #[test]
    fn other_requests_and_unusual_encodings_take_the_general_path() {
        let challenge = encode_frame(&Request {
            kind: Some(request::Kind::GetChallenge(proto::GetChallenge {})),
        });
        assert_eq!(push_payload(&Bytes::from(challenge[4..].to_vec())), None);
        // Two push fields (the last one wins in protobuf): not "exactly one field".
        let one = encode_frame(&Request {
            kind: Some(request::Kind::Push(proto::Push {
                envelopes: vec![vec![1]],
            })),
        });
        let mut two = one[4..].to_vec();
        two.extend_from_slice(&one[4..]);
        assert_eq!(push_payload(&Bytes::from(two)), None);
        // Truncated, empty, garbage.
        assert_eq!(
            push_payload(&Bytes::from(one[4..one.len() - 1].to_vec())),
            None
        );
        assert_eq!(push_payload(&Bytes::new()), None);
        assert_eq!(push_payload(&Bytes::from_static(&[0xff; 12])), None);
    }

    /// The one-pass push decoder gives what prost gives, or leaves the decision to prost.
    fn plain_push_agrees(payload: &[u8]) {
        let payload = Bytes::copy_from_slice(payload);
        if let Some(plain) = Push::decode_plain(&payload) {
            assert_eq!(
                Push::decode(payload.clone()).ok(),
                Some(plain),
                "{payload:02x?}"
            );
        }
    }

    #[test]
    fn the_plain_push_decoder_agrees_with_prost() {
        let push = proto::Push {
            envelopes: vec![vec![1; 3], vec![], vec![2; 300]],
        }
        .encode_to_vec();
        assert!(Push::decode_plain(&Bytes::from(push.clone())).is_some());
        assert_eq!(
            Push::decode_plain(&Bytes::new()),
            Some(Push::default()),
            "no field: no envelope, as prost reads it"
        );
        plain_push_agrees(&push);
        // Every byte changed, every cut: accepted only when prost agrees.
        for i in 0..push.len() {
            for value in [0x00, 0x01, 0x0a, 0x12, 0x7f, 0x80, 0xff] {
                let mut changed = push.clone();
                changed[i] = value;
                plain_push_agrees(&changed);
            }
            plain_push_agrees(&push[..i]);
        }
        // An unknown field, a field 1 of another wire type, a non-minimal length: prost decides.
        let mut unknown = push.clone();
        unknown.extend_from_slice(&[0x12, 0x01, 0x00]);
        assert_eq!(Push::decode_plain(&Bytes::from(unknown)), None);
        assert_eq!(Push::decode_plain(&Bytes::from_static(&[0x08, 0x01])), None);
        let long = Bytes::from_static(&[0x0a, 0x81, 0x00, 0x05]);
        assert_eq!(
            Push::decode_plain(&long).map(|p| p.envelopes),
            Some(vec![Bytes::from_static(&[0x05])])
        );
        plain_push_agrees(&long);
    }
}
