//! Opening envelopes against a verified roster and the epoch keys held (docs/PROTOCOL.md §7):
//! what a malicious relay or a revoked device can try, and the error each attempt meets.

use std::sync::OnceLock;

use kith_protocol::AccountId;
use kith_protocol::envelope::{
    EnvelopeError, EnvelopeHash, ParsedEnvelope, PayloadKind, open_batch, open_batch_with, seal,
    verify_batch,
};
use kith_protocol::epoch::{EpochKeys, account_key_for_epoch};
use kith_protocol::keys::{
    AccountSigningKey, DeviceSigningKey, EpochSecret, SymmetricKey, system_rng,
};
use kith_protocol::roster::{RosterError, RosterVerifyError, VerifiedRoster};
use kith_protocol::stream::{StreamError, StreamVerifier};
use kith_testkit::new_device;
use proptest::prelude::*;

/// An account with devices `a` and `b` in epoch 1; then `b` is removed after its seq 2, which
/// starts epoch 2. `keys` holds both epochs, `keys_epoch1` only the first.
struct World {
    a: DeviceSigningKey,
    b: DeviceSigningKey,
    outsider: DeviceSigningKey,
    account: AccountId,
    roster_before: VerifiedRoster,
    roster: VerifiedRoster,
    keys: EpochKeys,
    keys_epoch1: EpochKeys,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let mut rng = system_rng();
        let account_key = AccountSigningKey::generate(&mut rng);
        let epoch1 = EpochSecret::generate(&mut rng);
        let (a, first) = new_device("a");
        let genesis = VerifiedRoster::genesis(&account_key, first, &epoch1, 1, &mut rng).unwrap();
        let account = genesis.account_id();
        let mut keys = EpochKeys::new(account);
        keys.insert(1, epoch1.clone()).unwrap();
        let mut keys_epoch1 = EpochKeys::new(account);
        keys_epoch1.insert(1, epoch1).unwrap();
        let (b, second) = new_device("b");
        let roster_before = genesis
            .add_device(&account_key, second, &keys, 2, &mut rng)
            .unwrap();
        let epoch2 = EpochSecret::generate(&mut rng);
        let new_account_key = account_key_for_epoch(&account, &epoch2);
        let roster = roster_before
            .remove_device(
                &account_key,
                &b.device_id(),
                2,
                &new_account_key,
                &epoch2,
                &keys,
                3,
                &mut rng,
            )
            .unwrap();
        keys.insert(2, epoch2).unwrap();
        World {
            a,
            b,
            outsider: DeviceSigningKey::generate(&mut rng),
            account,
            roster_before,
            roster,
            keys,
            keys_epoch1,
        }
    })
}

fn content_key(w: &World, epoch: u64) -> SymmetricKey {
    w.keys.content_key(epoch).unwrap()
}

fn seal_by(
    w: &World,
    key: &DeviceSigningKey,
    seq: u64,
    epoch: u64,
    prev: EnvelopeHash,
    payload: &[u8],
) -> Vec<u8> {
    seal(
        key,
        &w.account,
        seq,
        epoch,
        &content_key(w, epoch),
        &prev,
        PayloadKind::Operations,
        payload,
        &mut system_rng(),
    )
    .unwrap()
    .bytes
}

fn parse(bytes: &[u8]) -> ParsedEnvelope {
    ParsedEnvelope::decode(bytes).unwrap()
}

/// A stream of `n` envelopes by `key` in `epoch`, chained from seq 1.
fn stream(w: &World, key: &DeviceSigningKey, epoch: u64, n: u64) -> Vec<ParsedEnvelope> {
    let mut prev = EnvelopeHash::ZERO;
    (1..=n)
        .map(|seq| {
            let envelope = parse(&seal_by(
                w,
                key,
                seq,
                epoch,
                prev,
                format!("op {seq}").as_bytes(),
            ));
            prev = envelope.hash();
            envelope
        })
        .collect()
}

#[test]
fn members_envelopes_open_in_order() {
    let w = world();
    let mut envelopes = stream(w, &w.a, 2, 3);
    envelopes.extend(stream(w, &w.b, 1, 2)); // b wrote up to its final seq, in epoch 1
    let payloads = open_batch(&envelopes, &w.roster, &w.keys).unwrap();
    let expected: Vec<&[u8]> = vec![b"op 1", b"op 2", b"op 3", b"op 1", b"op 2"];
    assert_eq!(payloads, expected);
    assert_eq!(envelopes[0].open(&w.roster, &w.keys).unwrap(), b"op 1");
    assert_eq!(
        open_batch(&[], &w.roster, &w.keys).unwrap(),
        Vec::<Vec<u8>>::new()
    );
}

#[test]
fn device_not_in_the_roster_is_rejected() {
    let w = world();
    let envelopes = stream(w, &w.outsider, 1, 1);
    let device = w.outsider.device_id();
    assert_eq!(
        open_batch(&envelopes, &w.roster, &w.keys),
        Err(EnvelopeError::Membership {
            device,
            seq: 1,
            error: RosterError::Verify(RosterVerifyError::UnknownDevice { device })
        })
    );
}

#[test]
fn removed_device_is_rejected_after_its_final_seq() {
    let w = world();
    let envelopes = stream(w, &w.b, 1, 3);
    let device = w.b.device_id();
    assert!(open_batch(&envelopes[..2], &w.roster, &w.keys).is_ok());
    assert_eq!(
        open_batch(&envelopes, &w.roster, &w.keys),
        Err(EnvelopeError::Membership {
            device,
            seq: 3,
            error: RosterError::Verify(RosterVerifyError::DeviceRemoved {
                device,
                final_seq: 2
            })
        })
    );
    // Before the removal, the same envelope was admissible.
    assert!(open_batch(&envelopes, &w.roster_before, &w.keys).is_ok());
}

#[test]
fn removed_device_cannot_write_in_the_epoch_that_excludes_it() {
    let w = world();
    let envelopes = stream(w, &w.b, 2, 1);
    assert!(matches!(
        open_batch(&envelopes, &w.roster, &w.keys),
        Err(EnvelopeError::Membership {
            seq: 1,
            error: RosterError::Verify(RosterVerifyError::EpochNotAllowed { epoch: 2, .. }),
            ..
        })
    ));
}

#[test]
fn epoch_whose_key_is_absent_is_unknown() {
    let w = world();
    let envelopes = stream(w, &w.a, 2, 2);
    assert_eq!(
        open_batch(&envelopes, &w.roster, &w.keys_epoch1),
        Err(EnvelopeError::UnknownEpoch {
            device: w.a.device_id(),
            seq: 1,
            epoch: 2
        })
    );
}

#[test]
fn envelope_of_another_account_is_rejected() {
    let w = world();
    let other = AccountId::from_bytes([0xee; 32]);
    let bytes = seal(
        &w.a,
        &other,
        1,
        1,
        &content_key(w, 1),
        &EnvelopeHash::ZERO,
        PayloadKind::Operations,
        b"x",
        &mut system_rng(),
    )
    .unwrap()
    .bytes;
    assert_eq!(
        open_batch(&[parse(&bytes)], &w.roster, &w.keys),
        Err(EnvelopeError::WrongAccount {
            device: w.a.device_id(),
            seq: 1
        })
    );
}

/// `open_batch_with` is `open_batch` with the signatures verified by the function given: it
/// is given every envelope with its writer's key, only once every writer is admitted, and
/// nothing is opened unless it accepts.
#[test]
fn open_batch_with_verifies_through_its_function_between_admission_and_decryption() {
    let w = world();
    let mut envelopes = stream(w, &w.a, 2, 2);
    envelopes.extend(stream(w, &w.b, 1, 2));
    let mut seen = Vec::new();
    let payloads = open_batch_with(&envelopes, &w.roster, &w.keys, |items| {
        seen.extend(items.iter().map(|(e, k)| (e.header().seq, k.device_id())));
        verify_batch(items)
    });
    assert_eq!(payloads, open_batch(&envelopes, &w.roster, &w.keys));
    let (a, b) = (w.a.device_id(), w.b.device_id());
    assert_eq!(seen, [(1, a), (2, a), (1, b), (2, b)]);
    // Its refusal is the batch's error.
    let refused = EnvelopeError::BadSignature { device: b, seq: 2 };
    assert_eq!(
        open_batch_with(&envelopes, &w.roster, &w.keys, |_| Err(refused.clone())),
        Err(refused)
    );
    // A writer the roster does not admit fails before any signature is verified.
    envelopes.extend(stream(w, &w.outsider, 2, 1));
    assert!(matches!(
        open_batch_with(&envelopes, &w.roster, &w.keys, |_| unreachable!("verified")),
        Err(EnvelopeError::Membership { .. })
    ));
}

#[test]
fn epoch_keys_of_another_account_are_refused() {
    let w = world();
    let foreign = EpochKeys::new(AccountId::from_bytes([0xee; 32]));
    assert_eq!(
        open_batch(&stream(w, &w.a, 1, 1), &w.roster, &foreign),
        Err(EnvelopeError::KeysForAnotherAccount {
            expected: w.account,
            found: AccountId::from_bytes([0xee; 32])
        })
    );
}

#[test]
fn signature_by_another_member_is_a_bad_signature() {
    // b signs an envelope whose header names a: the roster gives a's key, which fails.
    let w = world();
    let honest = parse(&seal_by(w, &w.a, 1, 1, EnvelopeHash::ZERO, b"x"));
    let forged_bytes = {
        let mut bytes = honest.to_bytes();
        let forged = w.b.sign(
            kith_protocol::encoding::labels::ENVELOPE_SIGNATURE,
            &[honest.header_bytes(), honest.ciphertext()],
        );
        let len = bytes.len();
        bytes[len - 64..].copy_from_slice(forged.as_bytes());
        bytes
    };
    let mut envelopes = stream(w, &w.a, 2, 2);
    envelopes.push(parse(&forged_bytes));
    assert_eq!(
        open_batch(&envelopes, &w.roster, &w.keys),
        Err(EnvelopeError::BadSignature {
            device: w.a.device_id(),
            seq: 1
        })
    );
}

#[test]
fn batch_names_the_tampered_envelope() {
    let w = world();
    let mut envelopes = stream(w, &w.a, 2, 6);
    let mut bytes = envelopes[4].to_bytes();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    envelopes[4] = parse(&bytes);
    assert_eq!(
        open_batch(&envelopes, &w.roster, &w.keys),
        Err(EnvelopeError::BadSignature {
            device: w.a.device_id(),
            seq: 5
        })
    );
}

#[test]
fn opened_envelopes_feed_the_stream_verifier() {
    // The whole receive path: open the batch, then check continuity per writer.
    let w = world();
    let envelopes = stream(w, &w.a, 2, 3);
    open_batch(&envelopes, &w.roster, &w.keys).unwrap();
    let mut verifier = StreamVerifier::new(w.a.device_id());
    verifier.check(&envelopes[0]).unwrap();
    assert_eq!(
        verifier.check(&envelopes[2]),
        Err(StreamError::Gap {
            device: w.a.device_id(),
            expected: 2,
            got: 3
        })
    );
    verifier.check(&envelopes[1]).unwrap();
    verifier.check(&envelopes[2]).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Flipping any bit pattern in any byte of an encoded envelope — framing, header (nonce
    /// included), ciphertext, tag or signature — makes decoding or opening fail.
    #[test]
    fn tampered_envelope_is_rejected(
        index in any::<prop::sample::Index>(),
        flip in 1u8..=255,
        contact in prop::collection::vec(any::<u8>(), 0..700),
    ) {
        let w = world();
        let mut bytes = seal_by(w, &w.a, 1, 2, EnvelopeHash::ZERO, &contact);
        prop_assert!(parse(&bytes).open(&w.roster, &w.keys).is_ok());
        let i = index.index(bytes.len());
        bytes[i] ^= flip;
        if let Ok(envelope) = ParsedEnvelope::decode(&bytes) {
            let opened = envelope.open(&w.roster, &w.keys);
            prop_assert!(opened.is_err(), "byte {i} ^ {flip:#04x} went unnoticed");
        }
    }
}
