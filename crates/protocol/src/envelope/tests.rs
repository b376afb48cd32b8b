use super::*;
use crate::keys::system_rng;
use proptest::prelude::*;

struct Fixture {
    key: DeviceSigningKey,
    account: AccountId,
    content_key: SymmetricKey,
}

fn fixture() -> Fixture {
    let mut rng = system_rng();
    Fixture {
        key: DeviceSigningKey::generate(&mut rng),
        account: AccountId::from_bytes([3; 32]),
        content_key: SymmetricKey::generate(&mut rng),
    }
}

fn seal_at(f: &Fixture, seq: u64, prev: &EnvelopeHash, payload: &[u8]) -> SealedEnvelope {
    seal(
        &f.key,
        &f.account,
        seq,
        1,
        &f.content_key,
        prev,
        PayloadKind::Operations,
        payload,
        &mut system_rng(),
    )
    .unwrap()
}

/// An envelope whose header is `header` (re-signed, so only the header rule is at stake).
fn with_header(f: &Fixture, header: &proto::EnvelopeHeader) -> Vec<u8> {
    let header = header.encode_to_vec();
    let ciphertext = vec![0u8; 4 + TAG_LEN];
    let signature = f
        .key
        .sign(labels::ENVELOPE_SIGNATURE, &[&header, &ciphertext]);
    encode_envelope(&header, &ciphertext, signature.as_bytes())
}

fn valid_header(f: &Fixture) -> proto::EnvelopeHeader {
    proto::EnvelopeHeader {
        format_version: 1,
        account_id: f.account.as_bytes().to_vec(),
        device_id: f.key.device_id().as_bytes().to_vec(),
        seq: 2,
        epoch: 1,
        prev_hash: vec![9; 32],
        kind: PayloadKind::Operations as i32,
        nonce: vec![1; 24],
    }
}

#[test]
fn seal_then_open_round_trips() {
    let f = fixture();
    let sealed = seal_at(&f, 1, &EnvelopeHash::ZERO, b"payload");
    let parsed = ParsedEnvelope::decode(&sealed.bytes).unwrap();
    assert_eq!(parsed.hash(), sealed.hash);
    assert_eq!(parsed.to_bytes(), sealed.bytes);
    parsed.verify_signature(&f.key.public()).unwrap();
    assert_eq!(parsed.decrypt(&f.content_key).unwrap(), b"payload");
    let view = peek_header(&sealed.bytes).unwrap();
    assert_eq!(view, *parsed.header());
    assert_eq!(view.device_id, f.key.device_id());
    assert_eq!(view.kind, PayloadKind::Operations);
}

#[test]
fn encoding_is_what_prost_writes() {
    let f = fixture();
    let sealed = seal_at(&f, 1, &EnvelopeHash::ZERO, &[5; 700]);
    let decoded = proto::Envelope::decode(sealed.bytes.as_slice()).unwrap();
    assert_eq!(decoded.encode_to_vec(), sealed.bytes);
    let parsed = ParsedEnvelope::decode(&sealed.bytes).unwrap();
    assert_eq!(parsed.header_bytes(), decoded.header);
    assert_eq!(parsed.ciphertext(), decoded.ciphertext);
    assert_eq!(parsed.signature().as_bytes()[..], decoded.signature[..]);
    assert_eq!(
        parsed.hash(),
        EnvelopeHash::compute(&decoded.header, &decoded.ciphertext, &decoded.signature)
    );
    assert_eq!(parsed.ciphertext().len(), 704 + TAG_LEN); // Padmé(704)
}

#[test]
fn signature_covers_the_domain_separated_encoding() {
    let f = fixture();
    let sealed = seal_at(&f, 1, &EnvelopeHash::ZERO, b"x");
    let parsed = ParsedEnvelope::decode(&sealed.bytes).unwrap();
    f.key
        .public()
        .verify(
            labels::ENVELOPE_SIGNATURE,
            &[parsed.header_bytes(), parsed.ciphertext()],
            parsed.signature(),
        )
        .unwrap();
}

#[test]
fn largest_payload_fits_the_envelope_limit() {
    let f = fixture();
    let sealed = seal_at(&f, 1, &EnvelopeHash::ZERO, &vec![0; MAX_PAYLOAD_BYTES]);
    assert!(sealed.bytes.len() <= MAX_ENVELOPE_BYTES);
    let parsed = ParsedEnvelope::decode(&sealed.bytes).unwrap();
    assert_eq!(
        parsed.decrypt(&f.content_key).unwrap().len(),
        MAX_PAYLOAD_BYTES
    );
}

#[test]
fn too_large_envelope_is_rejected_before_parsing() {
    let bytes = vec![0u8; MAX_ENVELOPE_BYTES + 1];
    let expected = EnvelopeError::TooLarge {
        size: MAX_ENVELOPE_BYTES + 1,
        max: MAX_ENVELOPE_BYTES,
    };
    assert_eq!(peek_header(&bytes).unwrap_err(), expected);
    assert_eq!(ParsedEnvelope::decode(&bytes).unwrap_err(), expected);
}

#[test]
fn oversized_payload_is_refused() {
    let f = fixture();
    let err = seal(
        &f.key,
        &f.account,
        1,
        1,
        &f.content_key,
        &EnvelopeHash::ZERO,
        PayloadKind::Operations,
        &vec![0; MAX_PAYLOAD_BYTES + 1],
        &mut system_rng(),
    )
    .unwrap_err();
    assert_eq!(
        err,
        EnvelopeError::PayloadTooLarge {
            size: MAX_PAYLOAD_BYTES + 1,
            max: MAX_PAYLOAD_BYTES
        }
    );
}

#[test]
fn seal_refuses_invalid_positions_and_kinds() {
    let f = fixture();
    let attempt = |seq, prev: EnvelopeHash, kind| {
        seal(
            &f.key,
            &f.account,
            seq,
            1,
            &f.content_key,
            &prev,
            kind,
            b"",
            &mut system_rng(),
        )
    };
    assert_eq!(
        attempt(0, EnvelopeHash::ZERO, PayloadKind::Operations).unwrap_err(),
        EnvelopeError::MalformedHeader {
            what: "seq must be at least 1"
        }
    );
    assert_eq!(
        attempt(
            1,
            EnvelopeHash::from_bytes([1; 32]),
            PayloadKind::Operations
        )
        .unwrap_err(),
        EnvelopeError::MalformedHeader {
            what: "prev_hash must be zero at seq 1"
        }
    );
    assert_eq!(
        attempt(3, EnvelopeHash::ZERO, PayloadKind::Unspecified).unwrap_err(),
        EnvelopeError::UnknownKind {
            device: f.key.device_id(),
            seq: 3,
            kind: 0
        }
    );
    assert!(attempt(2, EnvelopeHash::ZERO, PayloadKind::Snapshot).is_ok());
}

#[test]
fn framing_errors_are_precise() {
    let f = fixture();
    let sealed = seal_at(&f, 1, &EnvelopeHash::ZERO, &[1; 600]).bytes;
    let malformed = |what| Err(EnvelopeError::Malformed { what });
    assert_eq!(peek_header(&[]), malformed("header must come first"));
    assert_eq!(peek_header(&sealed[..1]), malformed("truncated length"));
    assert_eq!(
        peek_header(&sealed[..20]),
        malformed("field extends past the end")
    );
    let mut trailing = sealed.clone();
    trailing.push(0);
    assert_eq!(
        peek_header(&trailing),
        malformed("bytes after the signature")
    );
    let mut swapped = sealed.clone();
    swapped[0] = CIPHERTEXT_KEY;
    assert_eq!(peek_header(&swapped), malformed("header must come first"));
    // A header length written in two bytes where one suffices.
    let header_len = usize::from(sealed[1]);
    let mut padded_varint = vec![HEADER_KEY, sealed[1] | 0x80, 0];
    padded_varint.extend_from_slice(&sealed[2..]);
    assert_eq!(
        peek_header(&padded_varint),
        malformed("non-minimal length varint")
    );
    let mut long_varint = vec![HEADER_KEY, 0x80, 0x80, 0x80, 0x80, 0x80, 1];
    long_varint.extend_from_slice(&sealed[2..]);
    assert_eq!(
        peek_header(&long_varint),
        malformed("length varint too long")
    );
    // A signature of 63 bytes.
    let mut short_sig = sealed[..sealed.len() - 66].to_vec();
    short_sig.extend_from_slice(&[SIGNATURE_KEY, 63]);
    short_sig.extend_from_slice(&[0; 63]);
    assert_eq!(
        peek_header(&short_sig),
        malformed("signature must be 64 bytes")
    );
    let no_sig = &sealed[..sealed.len() - 66];
    assert_eq!(
        peek_header(no_sig),
        malformed("signature must follow the ciphertext")
    );
    let header_only = &sealed[..2 + header_len];
    assert_eq!(
        peek_header(header_only),
        malformed("ciphertext must follow the header")
    );
    // A ciphertext one byte too long for any Padmé bucket.
    let parsed = ParsedEnvelope::decode(&sealed).unwrap();
    let mut odd = parsed.ciphertext().to_vec();
    odd.push(0);
    let bad = encode_envelope(parsed.header_bytes(), &odd, parsed.signature().as_bytes());
    assert_eq!(
        peek_header(&bad),
        malformed("ciphertext length is not a padded length plus the tag")
    );
    let tiny = encode_envelope(
        parsed.header_bytes(),
        &[0; TAG_LEN + 3],
        parsed.signature().as_bytes(),
    );
    assert_eq!(
        peek_header(&tiny),
        malformed("ciphertext length is not a padded length plus the tag")
    );
}

#[test]
fn header_too_large_is_rejected() {
    let header = vec![0u8; MAX_HEADER_BYTES + 1];
    let bytes = encode_envelope(&header, &[0; 4 + TAG_LEN], &[0; 64]);
    assert_eq!(
        peek_header(&bytes),
        Err(EnvelopeError::HeaderTooLarge {
            size: MAX_HEADER_BYTES + 1,
            max: MAX_HEADER_BYTES
        })
    );
}

#[test]
fn header_errors_are_precise() {
    let f = fixture();
    let check = |edit: &dyn Fn(&mut proto::EnvelopeHeader)| {
        let mut header = valid_header(&f);
        edit(&mut header);
        let bytes = with_header(&f, &header);
        let peeked = peek_header(&bytes);
        assert_eq!(
            peeked.clone().map(|_| ()),
            ParsedEnvelope::decode(&bytes).map(|_| ())
        );
        peeked
    };
    let header_err = |what| Err(EnvelopeError::MalformedHeader { what });
    assert!(check(&|_| {}).is_ok());
    assert_eq!(
        check(&|h| h.format_version = 2),
        Err(EnvelopeError::WrongFormatVersion { version: 2 })
    );
    assert_eq!(
        check(&|h| {
            h.account_id.pop();
        }),
        header_err("account_id must be 32 bytes")
    );
    assert_eq!(
        check(&|h| h.device_id.push(0)),
        header_err("device_id must be 16 bytes")
    );
    assert_eq!(
        check(&|h| h.prev_hash.clear()),
        header_err("prev_hash must be 32 bytes")
    );
    assert_eq!(
        check(&|h| h.nonce.truncate(12)),
        header_err("nonce must be 24 bytes")
    );
    assert_eq!(check(&|h| h.seq = 0), header_err("seq must be at least 1"));
    assert_eq!(
        check(&|h| h.seq = 1),
        header_err("prev_hash must be zero at seq 1")
    );
    assert_eq!(
        check(&|h| h.kind = 7),
        Err(EnvelopeError::UnknownKind {
            device: f.key.device_id(),
            seq: 2,
            kind: 7
        })
    );
    assert_eq!(
        check(&|h| h.kind = 0),
        Err(EnvelopeError::UnknownKind {
            device: f.key.device_id(),
            seq: 2,
            kind: 0
        })
    );
    // Garbage, and a valid header followed by an unknown field (not canonical).
    let garbage = encode_envelope(&[0xff; 8], &[0; 4 + TAG_LEN], &[0; 64]);
    assert_eq!(peek_header(&garbage), header_err("not an EnvelopeHeader"));
    let mut extended = valid_header(&f).encode_to_vec();
    extended.extend_from_slice(&[0x48, 0x01]); // field 9, varint 1
    let extended = encode_envelope(&extended, &[0; 4 + TAG_LEN], &[0; 64]);
    assert_eq!(
        peek_header(&extended),
        header_err("not canonically encoded")
    );
}

#[test]
fn wrong_key_is_a_bad_signature() {
    let f = fixture();
    let other = DeviceSigningKey::generate(&mut system_rng());
    let sealed = seal_at(&f, 4, &EnvelopeHash::from_bytes([1; 32]), b"x");
    let parsed = ParsedEnvelope::decode(&sealed.bytes).unwrap();
    assert_eq!(
        parsed.verify_signature(&other.public()),
        Err(EnvelopeError::BadSignature {
            device: f.key.device_id(),
            seq: 4
        })
    );
}

#[test]
fn wrong_content_key_fails_to_decrypt() {
    let f = fixture();
    let sealed = seal_at(&f, 1, &EnvelopeHash::ZERO, b"x");
    let parsed = ParsedEnvelope::decode(&sealed.bytes).unwrap();
    let other = SymmetricKey::generate(&mut system_rng());
    assert_eq!(
        parsed.decrypt(&other),
        Err(EnvelopeError::DecryptFailed {
            device: f.key.device_id(),
            seq: 1
        })
    );
}

#[test]
fn bad_padding_under_a_valid_tag_is_a_padding_error() {
    // A writer (holding the content key) encrypts a non-zero "padding" byte.
    let f = fixture();
    let mut header = valid_header(&f);
    header.nonce = vec![4; 24];
    let header = header.encode_to_vec();
    let mut buffer = padding::pad(&[7; 600]).unwrap();
    buffer[606] = 1;
    let tag = XChaCha20Poly1305::new(f.content_key.expose().into())
        .encrypt_inout_detached((&[4u8; 24]).into(), &header, buffer.as_mut_slice().into())
        .unwrap();
    buffer.extend_from_slice(&tag);
    let signature = f.key.sign(labels::ENVELOPE_SIGNATURE, &[&header, &buffer]);
    let bytes = encode_envelope(&header, &buffer, signature.as_bytes());
    let parsed = ParsedEnvelope::decode(&bytes).unwrap();
    parsed.verify_signature(&f.key.public()).unwrap();
    assert_eq!(
        parsed.decrypt(&f.content_key),
        Err(EnvelopeError::Padding {
            device: f.key.device_id(),
            seq: 2,
            error: PaddingError::NonZeroPadding { offset: 606 }
        })
    );
}

#[test]
fn small_order_r_list_is_exactly_the_weak_points() {
    for encoding in SMALL_ORDER_R {
        for sign in [0u8, 0x80] {
            let mut point = encoding;
            point[31] |= sign;
            if let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(&point) {
                assert!(key.is_weak(), "{}", hex::encode(point));
            }
            let mut sig = [0u8; 64];
            sig[..32].copy_from_slice(&point);
            assert!(!r_is_strict(&Signature::from_slice(&sig).unwrap()));
        }
    }
    // Non-canonical y = p and y = 2^255 − 1 are refused; y = p − 1 (order 2) too.
    let mut sig = [0xffu8; 64];
    sig[31] = 0x7f;
    assert!(!r_is_strict(&Signature::from_slice(&sig).unwrap()));
    sig[0] = 0xed;
    assert!(!r_is_strict(&Signature::from_slice(&sig).unwrap()));
    // Real signatures pass.
    let f = fixture();
    let sealed = seal_at(&f, 1, &EnvelopeHash::ZERO, b"x");
    assert!(r_is_strict(
        ParsedEnvelope::decode(&sealed.bytes).unwrap().signature()
    ));
}

#[test]
fn batch_verification_names_the_first_bad_envelope() {
    let writers: Vec<Fixture> = (0..5).map(|_| fixture()).collect();
    let parsed: Vec<ParsedEnvelope> = writers
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let prev = if i == 0 {
                EnvelopeHash::ZERO
            } else {
                EnvelopeHash::from_bytes([1; 32])
            };
            let sealed = seal_at(f, i as u64 + 1, &prev, &[i as u8; 100]);
            ParsedEnvelope::decode(&sealed.bytes).unwrap()
        })
        .collect();
    let keys: Vec<DeviceVerifyingKey> = writers.iter().map(|f| f.key.public()).collect();
    let items: Vec<(&ParsedEnvelope, &DeviceVerifyingKey)> = parsed.iter().zip(&keys).collect();
    verify_batch(&items).unwrap();
    verify_batch(&items[..1]).unwrap();
    verify_batch(&[]).unwrap();
    // Envelopes 2 and 4 paired with the wrong keys: 2 is named.
    let mut wrong = items.clone();
    wrong[2].1 = &keys[0];
    wrong[4].1 = &keys[0];
    assert_eq!(
        verify_batch(&wrong),
        Err(EnvelopeError::BadSignature {
            device: writers[2].key.device_id(),
            seq: 3
        })
    );
}

/// `bytes` with each edit applied: a byte changed (0), inserted (1) or removed (2).
fn mutate(bytes: &[u8], edits: Vec<(prop::sample::Index, u8, u8)>) -> Vec<u8> {
    let mut mutated = bytes.to_vec();
    for (at, byte, how) in edits {
        if mutated.is_empty() {
            mutated.push(byte);
            continue;
        }
        let i = at.index(mutated.len());
        match how {
            0 => mutated[i] = byte,
            1 => mutated.insert(i, byte),
            _ => {
                mutated.remove(i);
            }
        }
    }
    mutated
}

/// The canonical fast path reads exactly the headers prost re-encodes identically, with
/// the same fields: never accepts a non-canonical header, never misreads one.
fn fast_path_agrees(bytes: &[u8]) {
    let slow = proto::EnvelopeHeader::decode(bytes)
        .ok()
        .filter(|h| h.encode_to_vec() == bytes);
    match (read_canonical_header(bytes), slow) {
        (Some(raw), Some(h)) => {
            assert_eq!(raw.format_version, h.format_version);
            assert_eq!(raw.account_id, &h.account_id[..]);
            assert_eq!(raw.device_id, &h.device_id[..]);
            assert_eq!((raw.seq, raw.epoch, raw.kind), (h.seq, h.epoch, h.kind));
            assert_eq!(raw.prev_hash, &h.prev_hash[..]);
            assert_eq!(raw.nonce, &h.nonce[..]);
        }
        (None, None) => {}
        (fast, slow) => panic!("fast {fast:?}, slow {slow:?} for {bytes:02x?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn the_canonical_header_fast_path_matches_prost(
        version in prop_oneof![Just(0u32), Just(1), any::<u32>()],
        account in prop::collection::vec(any::<u8>(), 0..40),
        device in prop::collection::vec(any::<u8>(), 0..20),
        seq in prop_oneof![Just(0u64), 1..1000u64, any::<u64>()],
        epoch in prop_oneof![Just(0u64), any::<u64>()],
        prev in prop::collection::vec(any::<u8>(), 0..40),
        kind in prop_oneof![Just(0i32), 1..3i32, any::<i32>()],
        nonce in prop::collection::vec(any::<u8>(), 0..30),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 0..3),
    ) {
        let header = proto::EnvelopeHeader {
            format_version: version,
            account_id: account,
            device_id: device,
            seq,
            epoch,
            prev_hash: prev,
            kind,
            nonce,
        }
        .encode_to_vec();
        fast_path_agrees(&header);
        // Mutations: a byte changed, inserted or removed.
        let mutated = mutate(&header, edits);
        fast_path_agrees(&mutated);
    }
}

/// The fixed-layout reader accepts only headers the general reader accepts, with the same
/// fields; and it does take every header a writer seals.
fn fixed_path_agrees(bytes: &[u8]) {
    if let Some(fixed) = read_fixed_header(bytes) {
        assert_eq!(
            Some(fixed),
            read_any_canonical_header(bytes),
            "{bytes:02x?}"
        );
    }
}

#[test]
fn sealed_headers_take_the_fixed_layout_path() {
    let f = fixture();
    for seq in [1u64, 2, 127, 128, 16_383, 16_384, u64::MAX >> 1] {
        let prev = if seq == 1 {
            EnvelopeHash::ZERO
        } else {
            EnvelopeHash::from_bytes([7; 32])
        };
        let sealed = seal_at(&f, seq, &prev, b"contact");
        let header = split_envelope(&sealed.bytes).unwrap().header;
        let fixed = read_fixed_header(header).expect("a sealed header has the fixed layout");
        assert_eq!(Some(fixed), read_any_canonical_header(header));
        assert_eq!(peek_header(&sealed.bytes).unwrap().seq, seq);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn the_fixed_layout_header_path_matches_the_general_one(
        version in prop_oneof![Just(0u32), Just(1), 127..130u32, any::<u32>()],
        account_len in prop_oneof![Just(32usize), 0..40usize],
        device_len in prop_oneof![Just(16usize), 0..20usize],
        seq in prop_oneof![Just(0u64), 1..1000u64, any::<u64>()],
        epoch in prop_oneof![Just(0u64), 1..1000u64, any::<u64>()],
        prev_len in prop_oneof![Just(32usize), 0..40usize],
        kind in prop_oneof![Just(0i32), 1..3i32, 126..130i32, any::<i32>()],
        nonce_len in prop_oneof![Just(24usize), 0..30usize],
        fill in any::<u8>(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 0..3),
    ) {
        let header = proto::EnvelopeHeader {
            format_version: version,
            account_id: vec![fill; account_len],
            device_id: vec![fill ^ 1; device_len],
            seq,
            epoch,
            prev_hash: vec![fill ^ 2; prev_len],
            kind,
            nonce: vec![fill ^ 3; nonce_len],
        }
        .encode_to_vec();
        fixed_path_agrees(&header);
        fast_path_agrees(&header);
        let mutated = mutate(&header, edits);
        fixed_path_agrees(&mutated);
        fast_path_agrees(&mutated);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn peek_and_decode_never_panic_on_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let peeked = peek_header(&bytes);
        let decoded = ParsedEnvelope::decode(&bytes);
        prop_assert_eq!(peeked.is_ok(), decoded.is_ok());
    }

    #[test]
    fn peek_and_decode_never_panic_on_mutated_envelopes(
        index in any::<prop::sample::Index>(),
        value in any::<u8>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let f = fixture();
        let sealed = seal_at(&f, 2, &EnvelopeHash::from_bytes([1; 32]), b"contact").bytes;
        let mut bytes = sealed.clone();
        let i = index.index(bytes.len());
        bytes[i] = value;
        let _ = peek_header(&bytes);
        let _ = ParsedEnvelope::decode(&bytes);
        let truncated = &sealed[..cut.index(sealed.len())];
        prop_assert!(peek_header(truncated).is_err());
        prop_assert!(ParsedEnvelope::decode(truncated).is_err());
    }
}
