//! The protocol crate's fuzz target bodies.
//!
//! Each `pub fn name(data: &[u8]) -> bool` here is the whole body of the cargo-fuzz target
//! `fuzz/fuzz_targets/name.rs`, and `tests/fuzz_corpus.rs` runs every file of
//! `fuzz/corpus/name/` through the same function on the stable toolchain, so a crash the fuzzer
//! found stays fixed. A body returns whether the decoder accepted the input (the replay test
//! checks that the `valid-*` seeds still are); it panics only on a bug: a panic in a decoder,
//! or a broken invariant asserted here (a round trip that differs, two decoders that disagree,
//! merge orders that diverge).
//!
//! # Reaching the code behind signatures and AEAD tags
//! Random bytes never carry a valid Ed25519 signature or Poly1305 tag, so the checks after them
//! would never run. Some fuzzing setups compile signature checks out under `cfg(fuzzing)`;
//! Kith does not, so no build of this crate ever accepts a forged signature. Instead, targets
//! have *harness-signed* modes (selected by the input's first byte): the harness takes the
//! fuzzed bytes as what would be signed or encrypted (a roster body, a padded plaintext, an
//! account bundle) and signs or seals them itself with a fixed key set, then runs the real
//! decoder on the result. The fixed key set (`Fixture`) is an account built once from a fixed
//! seed: rosters v1–v5 (three devices added, one removed, the account key rotated), epoch
//! secrets 1 and 2, a link code and a recovery key. Harness and replay build the same keys, so
//! the corpus means the same thing on every machine.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use chacha20poly1305::XChaCha20Poly1305;
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use prost::Message;

use crate::rng::CounterRng;
use kith_protocol::auth::{
    CHALLENGE_LEN, EXPORTER_LEN, verify_account_deletion, verify_relay_auth,
};
use kith_protocol::bundle::{
    AccountBundle, LinkCode, open_link_bundle, open_recovery_bundle, seal_link_bundle,
    seal_recovery_bundle,
};
use kith_protocol::encoding::labels;
use kith_protocol::envelope::{
    EnvelopeError, EnvelopeHash, ParsedEnvelope, PayloadKind, open_batch, peek_header, seal,
};
use kith_protocol::epoch::{
    EpochKeys, account_key_for_epoch, open_epoch_key, peek_sealed_epoch_key, seal_epoch_key,
};
use kith_protocol::frame;
use kith_protocol::ids::{AccountId, DeviceId};
use kith_protocol::keys::{
    AccountSigningKey, AccountVerifyingKey, DeviceAgreementKey, DeviceSigningKey, EpochSecret,
    PairingSecret, RecoveryKey, SymmetricKey,
};
use kith_protocol::limits::MAX_PAYLOAD_BYTES;
use kith_protocol::merge::{ContactSet, MergeError, RecordState};
use kith_protocol::padding;
use kith_protocol::proto;
use kith_protocol::record::{
    decode_batch, decode_batch_parts, decode_batch_parts_with_prost, encode_batch,
};
use kith_protocol::roster::{NewDevice, VerifiedRoster};
use kith_protocol::stream::StreamVerifier;

pub use super::corpus::{Body, Seed};

/// Every protocol target: its name (the fuzz target and corpus directory) and its body.
pub const TARGETS: &[(&str, Body)] = &[
    ("frame", frame),
    ("envelope_decode", envelope_decode),
    ("envelope_open", envelope_open),
    ("roster", roster),
    ("sealed_epoch_key", sealed_epoch_key),
    ("link_code", link_code),
    ("link_bundle", link_bundle),
    ("operations", operations),
    ("snapshot", snapshot),
    ("record_state", record_state),
    ("operation_batch", operation_batch),
];

/// The clock of the fixture, in milliseconds.
const NOW_MS: u64 = 1_700_000_000_000;

/// One device of the fixture account.
struct Device {
    signing: DeviceSigningKey,
    agreement: DeviceAgreementKey,
}

impl Device {
    fn id(&self) -> DeviceId {
        self.signing.device_id()
    }

    fn as_new(&self, name: &str) -> NewDevice {
        NewDevice {
            signing_key: self.signing.public(),
            agreement_key: self.agreement.public(),
            name: name.into(),
        }
    }
}

/// Indexes into [`Fixture::devices`].
const LAPTOP: usize = 0;
const PHONE: usize = 1;
const TABLET: usize = 2;
const NEW_PHONE: usize = 3;

/// The fixed key set every target opens with (see the module docs).
struct Fixture {
    account: AccountId,
    /// Genesis key, the key of epoch 2 (current) and the key of epoch 3 (not yet used).
    account_keys: [AccountSigningKey; 3],
    /// Epochs 1 and 2.
    epochs: EpochKeys,
    /// The secret of epoch 3, for harness-made removals.
    next_epoch: EpochSecret,
    /// Laptop (genesis), phone, tablet (removed at v4 with final seq 3), new phone (v5).
    devices: [Device; 4],
    /// Versions 1 to 5; the last is current.
    rosters: Vec<VerifiedRoster>,
    /// The new phone's link code.
    link_code: LinkCode,
    recovery_key: RecoveryKey,
    bundle: AccountBundle,
}

impl Fixture {
    fn build() -> Self {
        const BROKEN: &str = "the fuzz fixture is built from a fixed seed and cannot fail";
        let mut rng = CounterRng::new("kith/v1/fuzz/fixture");
        let genesis = AccountSigningKey::generate(&mut rng);
        let account = genesis.public().account_id();
        let epoch1 = EpochSecret::generate(&mut rng);
        let mut device = || Device {
            signing: DeviceSigningKey::generate(&mut rng),
            agreement: DeviceAgreementKey::generate(&mut rng),
        };
        let devices = [device(), device(), device(), device()];
        let mut epochs = EpochKeys::new(account);
        epochs.insert(1, epoch1.clone()).expect(BROKEN);

        let v1 = VerifiedRoster::genesis(
            &genesis,
            devices[LAPTOP].as_new("laptop"),
            &epoch1,
            NOW_MS,
            &mut rng,
        )
        .expect(BROKEN);
        let v2 = v1
            .add_device(
                &genesis,
                devices[PHONE].as_new("phone"),
                &epochs,
                NOW_MS + 1,
                &mut rng,
            )
            .expect(BROKEN);
        let v3 = v2
            .add_device(
                &genesis,
                devices[TABLET].as_new("tablet"),
                &epochs,
                NOW_MS + 2,
                &mut rng,
            )
            .expect(BROKEN);
        let epoch2 = EpochSecret::generate(&mut rng);
        let key2 = account_key_for_epoch(&account, &epoch2);
        let v4 = v3
            .remove_device(
                &genesis,
                &devices[TABLET].id(),
                3,
                &key2,
                &epoch2,
                &epochs,
                NOW_MS + 3,
                &mut rng,
            )
            .expect(BROKEN);
        epochs.insert(2, epoch2).expect(BROKEN);
        let v5 = v4
            .add_device(
                &key2,
                devices[NEW_PHONE].as_new("new phone"),
                &epochs,
                NOW_MS + 4,
                &mut rng,
            )
            .expect(BROKEN);
        let next_epoch = EpochSecret::generate(&mut rng);
        let key3 = account_key_for_epoch(&account, &next_epoch);
        let link_code = LinkCode::generate(
            devices[NEW_PHONE].signing.public(),
            devices[NEW_PHONE].agreement.public(),
            &mut rng,
        );
        let recovery_key = RecoveryKey::generate(&mut rng);
        let bundle = AccountBundle::new(key2.clone(), epochs.clone(), v5.clone()).expect(BROKEN);
        Fixture {
            account,
            account_keys: [genesis, key2, key3],
            epochs,
            next_epoch,
            devices,
            rosters: vec![v1, v2, v3, v4, v5],
            link_code,
            recovery_key,
            bundle,
        }
    }

    fn current(&self) -> &VerifiedRoster {
        &self.rosters[self.rosters.len() - 1]
    }

    fn first(&self) -> &VerifiedRoster {
        &self.rosters[0]
    }

    /// The fixture's account key with this public half, if it holds it.
    fn account_key(&self, public: &[u8]) -> Option<&AccountSigningKey> {
        self.account_keys
            .iter()
            .find(|key| key.public().as_bytes()[..] == *public)
    }

    fn pairing_secret(&self) -> &PairingSecret {
        self.link_code.pairing_secret()
    }
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(Fixture::build)
}

/// The input's first byte, choosing among `modes`, and the rest.
fn mode(data: &[u8], modes: u8) -> Option<(u8, &[u8])> {
    data.split_first()
        .map(|(&first, rest)| (first % modes, rest))
}

// ---------------------------------------------------------------------------------------------
// frame

/// The relay's default frame limit (`max_frame_bytes`).
const MAX_FRAME_BYTES: u32 = 4 * 1024 * 1024;
/// Frames read from one input (a subscription stream carries many).
const MAX_FRAMES: usize = 16;
/// The TLS exporter and challenge the harness authenticates against.
const EXPORTER: [u8; EXPORTER_LEN] = [0x42; EXPORTER_LEN];
const CHALLENGE: [u8; CHALLENGE_LEN] = [0x24; CHALLENGE_LEN];

/// Relay frames: the input is a stream of frames, each decoded as a `Request` (what the relay
/// reads) and as a `Response` (what a client reads from a relay it does not trust). Every
/// decoded message's byte fields then go through the decoders the relay or the client applies
/// to them: envelope headers of a push, rosters, sealed epoch keys, authentication and deletion
/// signatures, pulled envelopes, bundles.
pub fn frame(data: &[u8]) -> bool {
    let mut accepted = false;
    let mut rest = data;
    for _ in 0..MAX_FRAMES {
        let request = frame::decode_request(rest, MAX_FRAME_BYTES);
        let response = frame::decode_frame::<proto::Response>(rest, MAX_FRAME_BYTES);
        // Framing does not depend on the message type.
        match (&request, &response) {
            (Ok(None), Ok(None)) => break,
            (Err(frame::FrameError::Decode(_)), _) | (_, Err(frame::FrameError::Decode(_))) => {}
            (Ok(Some((_, a))), Ok(Some((_, b)))) => assert_eq!(a, b, "frame lengths differ"),
            (a, b) => assert_eq!(
                a.as_ref().err(),
                b.as_ref().err(),
                "framing depends on the message type"
            ),
        }
        let mut used = None;
        if let Ok(Some((request, len))) = request {
            let again = frame::decode_request(&frame::encode_frame(&request), MAX_FRAME_BYTES);
            assert!(
                matches!(&again, Ok(Some((r, _))) if *r == request),
                "request does not round-trip"
            );
            check_request(&request);
            used = Some(len);
        }
        if let Ok(Some((response, len))) = response {
            check_response(&response);
            used = Some(len);
        }
        match used.and_then(|len| rest.get(len..)) {
            Some(next) => {
                accepted = true;
                rest = next;
            }
            None => break,
        }
    }
    accepted
}

/// What the relay's handlers decode from a request's byte fields.
fn check_request(request: &proto::Request) {
    use proto::request::Kind;
    let f = fixture();
    let Some(kind) = &request.kind else { return };
    match kind {
        Kind::Authenticate(auth) => {
            let account = AccountId::from_slice(&auth.account_id);
            let device = DeviceId::from_slice(&auth.device_id);
            if let (Ok(account), Ok(device)) = (account, device)
                && let Some(entry) = f.current().device(&device)
            {
                let _ = verify_relay_auth(
                    entry.signing_key(),
                    &EXPORTER,
                    &CHALLENGE,
                    &account,
                    &device,
                    &auth.signature,
                );
            }
        }
        Kind::CreateAccount(create) => {
            let _ = DeviceId::from_slice(&create.device_id);
            let _ = VerifiedRoster::verify(&create.roster, None, None);
        }
        Kind::PutRoster(put) => {
            let _ = VerifiedRoster::verify(&put.roster, Some(&f.account), Some(f.current()));
        }
        Kind::RecoverDevice(recover) => {
            let _ = DeviceId::from_slice(&recover.device_id);
            let _ = VerifiedRoster::verify(&recover.roster, Some(&f.account), Some(f.current()));
        }
        Kind::Push(push) => {
            for envelope in &push.envelopes {
                let _ = peek_header(envelope);
            }
        }
        Kind::Pull(pull) => {
            for cursor in &pull.cursors {
                let _ = DeviceId::from_slice(&cursor.device_id);
            }
        }
        Kind::PutSealedEpochKeys(put) => {
            for key in &put.keys {
                let _ = peek_sealed_epoch_key(key);
            }
        }
        Kind::DeleteAccount(delete) => {
            if let Ok(account) = AccountId::from_slice(&delete.account_id) {
                let _ = verify_account_deletion(
                    f.current().current_account_key(),
                    &account,
                    delete.roster_version,
                    &delete.signature,
                );
            }
        }
        // Slot ids, lookup ids and bundles are opaque to the relay: length-checked and stored.
        _ => {}
    }
}

/// What a client decodes from a response's byte fields.
fn check_response(response: &proto::Response) {
    use proto::response::Kind;
    let f = fixture();
    let Some(kind) = &response.kind else { return };
    match kind {
        Kind::Pull(pull) => {
            let envelopes: Vec<&[u8]> = pull.envelopes.iter().map(|e| &e.envelope[..]).collect();
            open_received(&envelopes);
            for stream in &pull.streams {
                let _ = DeviceId::from_slice(&stream.device_id);
            }
        }
        Kind::Roster(roster) => {
            let _ = VerifiedRoster::verify(&roster.roster, Some(&f.account), Some(f.first()));
        }
        Kind::SealedEpochKeys(keys) => {
            let me = &f.devices[PHONE];
            for key in &keys.keys {
                let _ = open_epoch_key(key, &f.account, &me.id(), &me.agreement);
            }
        }
        Kind::PairingSlot(slot) => {
            let me = &f.devices[NEW_PHONE];
            let _ = open_link_bundle(
                &slot.bundle,
                &me.agreement,
                &me.signing.public(),
                f.pairing_secret(),
            );
        }
        Kind::RecoveryBundle(bundle) => {
            let _ = AccountId::from_slice(&bundle.account_id);
            let _ = open_recovery_bundle(&bundle.bundle, &f.recovery_key);
            let _ = VerifiedRoster::verify(&bundle.roster, None, None);
        }
        Kind::Notification(note) => {
            let _ = DeviceId::from_slice(&note.device_id);
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// envelopes

/// Envelope decoding as the relay (`peek_header`) and receivers (`ParsedEnvelope::decode`) do
/// it: both must agree, and a decoded envelope re-encodes to exactly its input.
pub fn envelope_decode(data: &[u8]) -> bool {
    let peeked = peek_header(data);
    let decoded = ParsedEnvelope::decode(data);
    match (&peeked, &decoded) {
        (Ok(header), Ok(envelope)) => {
            assert_eq!(header, envelope.header(), "peek and decode disagree");
            assert_eq!(
                envelope.to_bytes(),
                data,
                "decoded envelope is not canonical"
            );
            let hash = EnvelopeHash::compute(
                envelope.header_bytes(),
                envelope.ciphertext(),
                envelope.signature().as_bytes(),
            );
            assert_eq!(envelope.hash(), hash);
            true
        }
        (Err(a), Err(b)) => {
            assert_eq!(a, b, "peek and decode refuse for different reasons");
            false
        }
        _ => panic!("peek_header and decode disagree: {peeked:?} vs {decoded:?}"),
    }
}

/// Opening envelopes with the fixed key set. Modes (first byte mod 4):
/// - 0: the rest is one envelope, opened as received;
/// - 1: the rest is a batch, `[u16be len][envelope]…`, opened as received;
/// - 2: harness-signed: `[writer][epoch][seq][kind][prev]` and a padded plaintext, which the
///   harness encrypts and signs as that writer, so opening reaches decryption, padding and the
///   payload decoders;
/// - 3: round trip: the rest is a payload, sealed with `seal` and opened again.
pub fn envelope_open(data: &[u8]) -> bool {
    let Some((mode, rest)) = mode(data, 4) else {
        return false;
    };
    match mode {
        0 => open_received(&[rest]),
        1 => open_received(&split_batch(rest)),
        2 => open_harness_sealed(rest),
        _ => seal_and_open(rest),
    }
}

/// Envelopes in a batch input.
const MAX_BATCH: usize = 16;

fn split_batch(mut rest: &[u8]) -> Vec<&[u8]> {
    let mut envelopes = Vec::new();
    while envelopes.len() < MAX_BATCH {
        let Some((len, tail)) = rest.split_first_chunk::<2>() else {
            break;
        };
        let len = usize::from(u16::from_be_bytes(*len));
        let Some(envelope) = tail.get(..len) else {
            break;
        };
        envelopes.push(envelope);
        rest = &tail[len..];
    }
    envelopes
}

/// What a receiver does with pulled envelopes: decode, open the batch, check continuity per
/// writer, decode the payloads.
fn open_received(envelopes: &[&[u8]]) -> bool {
    let f = fixture();
    let parsed: Vec<ParsedEnvelope> = envelopes
        .iter()
        .filter_map(|bytes| ParsedEnvelope::decode(bytes).ok())
        .collect();
    if parsed.is_empty() {
        return false;
    }
    let mut streams: BTreeMap<DeviceId, StreamVerifier> = BTreeMap::new();
    for envelope in &parsed {
        let device = envelope.header().device_id;
        let stream = streams
            .entry(device)
            .or_insert_with(|| StreamVerifier::new(device));
        let mut truncated = stream.clone();
        let _ = stream.check(envelope);
        let _ = truncated.check_after_truncation(envelope, envelope.header().seq, None);
    }
    let Ok(payloads) = open_batch(&parsed, f.current(), &f.epochs) else {
        return false;
    };
    assert_eq!(payloads.len(), parsed.len());
    for (envelope, payload) in parsed.iter().zip(&payloads) {
        let alone = envelope.open(f.current(), &f.epochs);
        assert_eq!(
            alone.as_ref(),
            Ok(payload),
            "batch and single open disagree"
        );
        decode_payload(envelope.header().kind, payload);
    }
    true
}

/// The client's next step after opening: the payload decoder of the envelope's kind.
fn decode_payload(kind: PayloadKind, payload: &[u8]) {
    match kind {
        PayloadKind::Snapshot => {
            snapshot(payload);
        }
        _ => {
            operations(payload);
        }
    }
}

fn open_harness_sealed(rest: &[u8]) -> bool {
    let f = fixture();
    let Some((head, plaintext)) = rest.split_first_chunk::<5>() else {
        return false;
    };
    let [writer, epoch, seq, kind, prev] = *head;
    let writer = &f.devices[usize::from(writer) % f.devices.len()];
    // Epochs 0 and 3 are not the account's; 1 and 2 are.
    let epoch = u64::from(epoch % 4);
    let seq = u64::from(seq);
    let prev_hash = if prev & 1 == 0 { [0; 32] } else { [prev; 32] };
    let nonce = [prev; 24];
    // The plaintext as the harness gives it, zero-extended to a Padmé length so that the
    // ciphertext frames: what follows is up to the padding rules.
    let mut padded = plaintext.to_vec();
    let min = padded.len().max(padding::LENGTH_PREFIX_BYTES) as u64;
    let Ok(len) = usize::try_from(padding::padme(min)) else {
        return false;
    };
    padded.resize(len, 0);
    let expected = padding::unpad(&padded).map(<[u8]>::to_vec);

    let header = proto::EnvelopeHeader {
        format_version: 1,
        account_id: f.account.as_bytes().to_vec(),
        device_id: writer.id().as_bytes().to_vec(),
        seq,
        epoch,
        prev_hash: prev_hash.to_vec(),
        kind: i32::from(kind % 4),
        nonce: nonce.to_vec(),
    }
    .encode_to_vec();
    let key = f
        .epochs
        .content_key(epoch)
        .unwrap_or_else(|_| SymmetricKey::from_slice(&[7; 32]).expect("32 bytes"));
    let mut ciphertext = padded;
    let Ok(tag) = XChaCha20Poly1305::new(key.expose().into()).encrypt_inout_detached(
        (&nonce).into(),
        &header,
        ciphertext.as_mut_slice().into(),
    ) else {
        return false;
    };
    ciphertext.extend_from_slice(&tag);
    let signature = writer
        .signing
        .sign(labels::ENVELOPE_SIGNATURE, &[&header, &ciphertext]);
    let bytes = proto::Envelope {
        header,
        ciphertext,
        signature: signature.as_bytes().to_vec(),
    }
    .encode_to_vec();

    envelope_decode(&bytes);
    let Ok(envelope) = ParsedEnvelope::decode(&bytes) else {
        return false;
    };
    match envelope.open(f.current(), &f.epochs) {
        Ok(payload) => {
            assert_eq!(
                Ok(&payload),
                expected.as_ref(),
                "opened payload is not unpadded"
            );
            decode_payload(envelope.header().kind, &payload);
            true
        }
        Err(EnvelopeError::Padding { .. }) => {
            assert!(
                expected.is_err(),
                "padding accepted by unpad but not by open"
            );
            false
        }
        Err(_) => false,
    }
}

fn seal_and_open(payload: &[u8]) -> bool {
    let f = fixture();
    let writer = &f.devices[PHONE];
    let Ok(content_key) = f.epochs.content_key(2) else {
        return false;
    };
    let sealed = seal(
        &writer.signing,
        &f.account,
        1,
        2,
        &content_key,
        &EnvelopeHash::ZERO,
        PayloadKind::Operations,
        payload,
        &mut CounterRng::new("kith/v1/fuzz/seal"),
    );
    let Ok(sealed) = sealed else {
        assert!(payload.len() > MAX_PAYLOAD_BYTES, "seal refused a payload");
        return false;
    };
    let envelope = ParsedEnvelope::decode(&sealed.bytes);
    let envelope = envelope.expect("a sealed envelope decodes");
    assert_eq!(envelope.hash(), sealed.hash);
    let opened = envelope.open(f.current(), &f.epochs);
    assert_eq!(opened.as_deref(), Ok(payload), "seal then open differs");
    true
}

// ---------------------------------------------------------------------------------------------
// rosters

/// Roster verification. Modes (first byte mod 2):
/// - 0: the rest is a `SignedRoster`, verified as a first roster, and as the successor of the
///   fixture's first roster;
/// - 1: harness-signed: the rest is a `RosterBody`; the harness signs every key rotation whose
///   previous key, and the body if its current key, is one of the fixture's account keys.
///
/// A roster that verifies is then queried, and extended (a device added, one removed) with the
/// fixture's keys where it can be; each result must verify as the successor.
pub fn roster(data: &[u8]) -> bool {
    match mode(data, 2) {
        Some((0, rest)) => check_roster(rest),
        Some((_, rest)) => resign_roster(rest).is_some_and(|bytes| check_roster(&bytes)),
        None => false,
    }
}

fn check_roster(bytes: &[u8]) -> bool {
    let f = fixture();
    let fresh = VerifiedRoster::verify(bytes, None, None);
    let successor = VerifiedRoster::verify(bytes, Some(&f.account), Some(f.first()));
    if successor.is_ok() {
        assert!(fresh.is_ok(), "a successor that does not verify alone");
    }
    let Ok(roster) = fresh else {
        return false;
    };
    assert_eq!(roster.encoded(), bytes);
    exercise_roster(&roster);
    true
}

fn resign_roster(body_bytes: &[u8]) -> Option<Vec<u8>> {
    let f = fixture();
    let mut body = proto::RosterBody::decode(body_bytes).ok()?;
    let account = AccountVerifyingKey::from_slice(&body.genesis_key)
        .map(|key| key.account_id().as_bytes().to_vec())
        .unwrap_or_else(|_| body.account_id.clone());
    let mut current = body.genesis_key.clone();
    for rotation in &mut body.key_chain {
        if let Some(key) = f.account_key(&current) {
            let version = rotation.roster_version.to_be_bytes();
            let fields: [&[u8]; 3] = [&account, &version, &rotation.new_key];
            rotation.signature = key
                .sign(labels::ACCOUNT_KEY_ROTATION, &fields)
                .as_bytes()
                .to_vec();
        }
        current = rotation.new_key.clone();
    }
    let body = body.encode_to_vec();
    let signature = f
        .account_key(&current)
        .map(|key| {
            key.sign(labels::ROSTER_SIGNATURE, &[&body])
                .as_bytes()
                .to_vec()
        })
        .unwrap_or_default();
    Some(proto::SignedRoster { body, signature }.encode_to_vec())
}

fn exercise_roster(roster: &VerifiedRoster) {
    let f = fixture();
    let probes = [(1, 1), (1, 0), (u64::MAX, roster.epoch()), (3, u64::MAX)];
    for device in roster.devices() {
        let id = device.device_id();
        for (seq, epoch) in probes {
            let _ = roster.writer_key(&id, seq, epoch);
        }
        let _ = roster.device_name(&id, &f.epochs);
    }
    for gone in roster.removed() {
        for (seq, epoch) in probes {
            let _ = roster.writer_key(&gone.device_id(), seq, epoch);
        }
    }
    for (_, secret) in f.epochs.iter() {
        let _ = roster.confirm_epoch_secret(secret);
    }
    let _ = roster.derive_account_key(&f.epochs);

    let Some(key) = f.account_key(roster.current_account_key().as_bytes()) else {
        return;
    };
    let mut rng = CounterRng::new("kith/v1/fuzz/roster");
    let account = roster.account_id();
    let added = roster.add_device(
        key,
        f.devices[NEW_PHONE].as_new("added"),
        &f.epochs,
        NOW_MS,
        &mut rng,
    );
    if let Ok(next) = added {
        let again = VerifiedRoster::verify(next.encoded(), Some(&account), Some(roster));
        assert!(
            again.is_ok(),
            "add_device made a roster that does not verify"
        );
    }
    if let Some(first) = roster.devices().next() {
        let new_key = account_key_for_epoch(&account, &f.next_epoch);
        let removed = roster.remove_device(
            key,
            &first.device_id(),
            0,
            &new_key,
            &f.next_epoch,
            &f.epochs,
            NOW_MS,
            &mut rng,
        );
        if let Ok(next) = removed {
            let again = VerifiedRoster::verify(next.encoded(), Some(&account), Some(roster));
            assert!(
                again.is_ok(),
                "remove_device made a roster that does not verify"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// sealed epoch keys

/// Sealed epoch keys. Modes (first byte mod 2):
/// - 0: the rest is a `SealedEpochKey`, read as the relay does (`peek_sealed_epoch_key`) and
///   opened by the fixture's phone;
/// - 1: round trip: `[recipient][u64be epoch][32-byte secret]`, sealed and opened again.
pub fn sealed_epoch_key(data: &[u8]) -> bool {
    let f = fixture();
    match mode(data, 2) {
        Some((0, rest)) => {
            let view = peek_sealed_epoch_key(rest);
            let me = &f.devices[PHONE];
            if let Ok((epoch, _)) = open_epoch_key(rest, &f.account, &me.id(), &me.agreement) {
                let view = view.as_ref().expect("an opened key peeks");
                assert_eq!((view.epoch, view.recipient), (epoch, me.id()));
                assert_eq!(view.account, f.account);
            }
            view.is_ok()
        }
        Some((_, rest)) => {
            let Some((&recipient, rest)) = rest.split_first() else {
                return false;
            };
            let Some((epoch, secret)) = rest.split_first_chunk::<8>() else {
                return false;
            };
            let Ok(secret) = EpochSecret::from_slice(secret) else {
                return false;
            };
            let epoch = u64::from_be_bytes(*epoch);
            let me = &f.devices[usize::from(recipient) % f.devices.len()];
            let sealed = seal_epoch_key(
                &f.account,
                &me.id(),
                &me.agreement.public(),
                epoch,
                &secret,
                &mut CounterRng::new("kith/v1/fuzz/sealed-epoch-key"),
            );
            let opened = open_epoch_key(&sealed, &f.account, &me.id(), &me.agreement);
            if epoch == 0 {
                assert!(opened.is_err(), "epoch 0 opened");
                return false;
            }
            let (opened_epoch, opened_secret) = opened.expect("a sealed epoch key opens");
            assert!(opened_epoch == epoch && opened_secret == secret);
            true
        }
        None => false,
    }
}

// ---------------------------------------------------------------------------------------------
// link codes and bundles

/// The texts a person pastes: link codes (`LinkCode::parse`) and recovery keys
/// (`RecoveryKey::parse`). Both are read from the input as UTF-8 (invalid sequences replaced),
/// and what parses must print back to a text that parses to the same value.
pub fn link_code(data: &[u8]) -> bool {
    let text = String::from_utf8_lossy(data);
    let mut accepted = false;
    if let Ok(code) = LinkCode::parse(&text) {
        let printed = code.to_text();
        let again = LinkCode::parse(&printed).expect("a printed link code parses");
        assert_eq!(*again.to_text(), *printed, "link code does not round-trip");
        assert_eq!(again.pairing_secret(), code.pairing_secret());
        accepted = true;
    }
    if let Ok(key) = RecoveryKey::parse(&text) {
        let printed = key.to_text();
        let again = RecoveryKey::parse(&printed).expect("a printed recovery key parses");
        assert!(again == key, "recovery key does not round-trip");
        accepted = true;
    }
    accepted
}

/// Link and recovery bundles. Modes (first byte mod 3):
/// - 0: the rest is a sealed link bundle, opened by the fixture's new phone;
/// - 1: the rest is a sealed recovery bundle, opened with the fixture's recovery key;
/// - 2: harness-sealed: the rest is the plaintext `AccountBundle`, decoded and checked as an
///   opened bundle is; a bundle that passes is sealed and opened again both ways.
pub fn link_bundle(data: &[u8]) -> bool {
    let f = fixture();
    let me = &f.devices[NEW_PHONE];
    match mode(data, 3) {
        Some((0, rest)) => open_link_bundle(
            rest,
            &me.agreement,
            &me.signing.public(),
            f.pairing_secret(),
        )
        .is_ok(),
        Some((1, rest)) => open_recovery_bundle(rest, &f.recovery_key).is_ok(),
        Some((_, rest)) => {
            let Ok(bundle) = AccountBundle::decode(rest) else {
                return false;
            };
            let mut rng = CounterRng::new("kith/v1/fuzz/bundle");
            if let Ok(sealed) = seal_link_bundle(&bundle, &f.link_code, &mut rng) {
                let opened = open_link_bundle(
                    &sealed,
                    &me.agreement,
                    &me.signing.public(),
                    f.pairing_secret(),
                )
                .expect("a sealed link bundle opens");
                assert_same_bundle(&opened, &bundle);
            }
            let recovery = f.recovery_key.kem_key().public();
            if let Ok(sealed) =
                seal_recovery_bundle(&bundle, &recovery, &f.recovery_key.psk(), &mut rng)
            {
                let opened = open_recovery_bundle(&sealed, &f.recovery_key)
                    .expect("a sealed recovery bundle opens");
                assert_same_bundle(&opened, &bundle);
            }
            true
        }
        None => false,
    }
}

fn assert_same_bundle(a: &AccountBundle, b: &AccountBundle) {
    assert_eq!(a.account_id(), b.account_id());
    assert_eq!(a.account_key().public(), b.account_key().public());
    assert!(a.epochs() == b.epochs(), "bundle epochs differ");
    assert_eq!(a.roster().encoded(), b.roster().encoded());
}

// ---------------------------------------------------------------------------------------------
// payloads

/// Operation batches (`decode_batch`, an envelope's payload): what decodes must re-encode to
/// the same operations, and the merge must converge whatever the order: the batch applied once,
/// twice, backwards, or as two halves merged either way, gives one state, whose snapshot
/// decodes to that state again.
pub fn operations(data: &[u8]) -> bool {
    let Ok(ops) = decode_batch(data) else {
        return false;
    };
    if let Ok(encoded) = encode_batch(&ops) {
        assert_eq!(
            decode_batch(&encoded).as_ref(),
            Ok(&ops),
            "batch round trip"
        );
    }
    let mut once = ContactSet::new();
    once.apply_all(&ops);
    let mut twice = once.clone();
    twice.apply_all(&ops);
    assert_eq!(twice, once, "applying a batch twice changed the state");
    let mut backwards = ContactSet::new();
    backwards.apply_all(ops.iter().rev());
    assert_eq!(backwards, once, "the order of operations changed the state");
    let (left, right) = ops.split_at(ops.len() / 2);
    let (mut a, mut b) = (ContactSet::new(), ContactSet::new());
    a.apply_all(left);
    b.apply_all(right);
    let mut ab = a.clone();
    ab.merge(&b);
    b.merge(&a);
    assert_eq!(ab, once, "merging halves differs from applying them");
    assert_eq!(b, once, "merge is not commutative");
    check_snapshot_round_trip(&once, Vec::new());
    let _ = once.contacts().count();
    true
}

/// Snapshots (`ContactSet::decode_snapshot`, the payload of a snapshot envelope): what decodes
/// must encode to a snapshot that decodes to the same state and positions.
pub fn snapshot(data: &[u8]) -> bool {
    let Ok((set, positions)) = ContactSet::decode_snapshot(data) else {
        return false;
    };
    check_snapshot_round_trip(&set, positions);
    let _ = set.contacts().count();
    true
}

fn check_snapshot_round_trip(set: &ContactSet, positions: Vec<proto::StreamPosition>) {
    let encoded = set.to_snapshot(positions.clone()).encode_to_vec();
    if encoded.len() > MAX_PAYLOAD_BYTES {
        return;
    }
    let (again, again_positions) =
        ContactSet::decode_snapshot(&encoded).expect("an encoded snapshot decodes");
    assert_eq!(&again, set, "snapshot round trip changed the state");
    assert_eq!(again_positions, positions);
}

/// A stored record state (`RecordState::decode`, what a device reads back from its own store):
/// the in-place reader and the prost path (`proto::RecordState::decode`, then
/// `RecordState::from_proto`) must give the same result, state or error, on every input; a
/// decoded state re-encodes to bytes that decode to it again.
pub fn record_state(data: &[u8]) -> bool {
    let decoded = RecordState::decode(data);
    let by_prost = proto::RecordState::decode(data)
        .map_err(MergeError::from)
        .and_then(|wire| RecordState::from_proto(&wire));
    assert_eq!(decoded, by_prost, "the two record state decoders disagree");
    let Ok(state) = decoded else {
        return false;
    };
    let encoded = state.encode_to_vec();
    assert_eq!(
        RecordState::decode(&encoded).as_ref(),
        Ok(&state),
        "record state round trip"
    );
    true
}

/// An operation batch as a pulling device reads it (`decode_batch_parts`, every pulled
/// envelope's payload): the in-place reader and the prost path
/// (`decode_batch_parts_with_prost`) must give the same result, operations or error, on every
/// input.
pub fn operation_batch(data: &[u8]) -> bool {
    let decoded = decode_batch_parts(data);
    assert_eq!(
        decoded,
        decode_batch_parts_with_prost(data),
        "the two batch decoders disagree"
    );
    decoded.is_ok()
}

// ---------------------------------------------------------------------------------------------
// seeds

fn seed(target: &'static str, name: &str, bytes: Vec<u8>) -> Seed {
    Seed {
        target,
        name: name.to_owned(),
        bytes,
    }
}

fn with_mode(mode: u8, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 1);
    out.push(mode);
    out.extend_from_slice(bytes);
    out
}

/// The seed corpora of every protocol target, built from the fixture: one or more valid inputs
/// per target and mode. `tests/fuzz_corpus.rs` writes them to `fuzz/corpus/` when run with
/// `KITH_REGENERATE_FUZZ_SEEDS=1`.
pub fn seeds() -> Vec<Seed> {
    const BROKEN: &str = "seeds are built from the fixed fixture and cannot fail";
    let f = fixture();
    let mut rng = CounterRng::new("kith/v1/fuzz/seeds");
    let mut seeds = Vec::new();

    // Payloads: a batch that upserts, replaces and deletes, and the snapshot of its state.
    let ops = seed_operations();
    let batch = encode_batch(&ops).expect(BROKEN);
    let mut state = ContactSet::new();
    state.apply_all(&ops);
    let positions = vec![proto::StreamPosition {
        device_id: f.devices[PHONE].id().as_bytes().to_vec(),
        seq: 2,
    }];
    let snapshot = state.to_snapshot(positions.clone()).encode_to_vec();
    seeds.push(seed("operations", "valid-batch", batch.clone()));
    seeds.push(seed("operation_batch", "valid-batch", batch.clone()));
    // As a device seals it: its wall clock stated and its view of the account appended.
    let mut sealed_batch = batch.clone();
    kith_protocol::record::append_written_at(&mut sealed_batch, NOW_MS);
    let view = proto::WriterView {
        roster_version: 2,
        roster_hash: vec![7; 32],
        heads: positions,
    };
    prost::encoding::message::encode(4, &view, &mut sealed_batch);
    seeds.push(seed("operation_batch", "sealed-batch", sealed_batch));
    seeds.push(seed("snapshot", "valid-snapshot", snapshot.clone()));
    for (n, record) in state.records().enumerate() {
        seeds.push(seed(
            "record_state",
            &format!("valid-record-{n}"),
            record.encode_to_vec(),
        ));
    }

    // Envelopes: the phone's stream, seq 1 (operations) and seq 2 (snapshot), in epoch 2.
    let phone = &f.devices[PHONE];
    let content_key = f.epochs.content_key(2).expect(BROKEN);
    let first = seal(
        &phone.signing,
        &f.account,
        1,
        2,
        &content_key,
        &EnvelopeHash::ZERO,
        PayloadKind::Operations,
        &batch,
        &mut rng,
    )
    .expect(BROKEN);
    let second = seal(
        &phone.signing,
        &f.account,
        2,
        2,
        &content_key,
        &first.hash,
        PayloadKind::Snapshot,
        &snapshot,
        &mut rng,
    )
    .expect(BROKEN);
    seeds.push(seed("envelope_decode", "valid-seq1", first.bytes.clone()));
    seeds.push(seed("envelope_decode", "valid-seq2", second.bytes.clone()));
    seeds.push(seed(
        "envelope_open",
        "valid-one",
        with_mode(0, &first.bytes),
    ));
    let mut two = vec![1];
    for envelope in [&first.bytes, &second.bytes] {
        let len = u16::try_from(envelope.len()).expect(BROKEN);
        two.extend_from_slice(&len.to_be_bytes());
        two.extend_from_slice(envelope);
    }
    seeds.push(seed("envelope_open", "valid-batch", two));
    let mut padded = padding::pad(&batch).expect(BROKEN);
    let mut harness = vec![2, PHONE as u8, 2, 1, PayloadKind::Operations as u8, 0];
    harness.append(&mut padded);
    seeds.push(seed("envelope_open", "valid-harness-sealed", harness));
    seeds.push(seed(
        "envelope_open",
        "valid-round-trip",
        with_mode(3, &batch),
    ));

    // Rosters: the current one, and the body of it for the harness to sign.
    let current = f.current().encoded();
    let signed = proto::SignedRoster::decode(current).expect(BROKEN);
    seeds.push(seed("roster", "valid-current", with_mode(0, current)));
    seeds.push(seed(
        "roster",
        "valid-genesis",
        with_mode(0, f.first().encoded()),
    ));
    seeds.push(seed(
        "roster",
        "valid-resigned-body",
        with_mode(1, &signed.body),
    ));

    // Sealed epoch keys: epoch 2 sealed to the phone; a round-trip input.
    let sealed_key = seal_epoch_key(
        &f.account,
        &phone.id(),
        &phone.agreement.public(),
        2,
        f.epochs.get(2).expect(BROKEN),
        &mut rng,
    );
    seeds.push(seed(
        "sealed_epoch_key",
        "valid-sealed",
        with_mode(0, &sealed_key),
    ));
    let mut round_trip = vec![1, PHONE as u8];
    round_trip.extend_from_slice(&7u64.to_be_bytes());
    round_trip.extend_from_slice(&[9; 32]);
    seeds.push(seed("sealed_epoch_key", "valid-round-trip", round_trip));

    // Link codes and recovery keys, as printed and as pasted (wrapped, lower case).
    let code = f.link_code.to_text();
    seeds.push(seed(
        "link_code",
        "valid-link-code",
        code.as_bytes().to_vec(),
    ));
    let wrapped: String = code
        .as_bytes()
        .chunks(60)
        .map(|line| format!("  {}\n", String::from_utf8_lossy(line)))
        .collect();
    seeds.push(seed(
        "link_code",
        "valid-link-code-wrapped",
        wrapped.into_bytes(),
    ));
    let recovery = f.recovery_key.to_text();
    seeds.push(seed(
        "link_code",
        "valid-recovery-key",
        recovery.as_bytes().to_vec(),
    ));
    let pasted = recovery.to_lowercase().replace('-', " ");
    seeds.push(seed(
        "link_code",
        "valid-recovery-key-pasted",
        pasted.into_bytes(),
    ));

    // Bundles: sealed to the new phone and to the recovery key, and the plaintext.
    let link = seal_link_bundle(&f.bundle, &f.link_code, &mut rng).expect(BROKEN);
    seeds.push(seed("link_bundle", "valid-link", with_mode(0, &link)));
    let recovery_public = f.recovery_key.kem_key().public();
    let recovery_bundle =
        seal_recovery_bundle(&f.bundle, &recovery_public, &f.recovery_key.psk(), &mut rng)
            .expect(BROKEN);
    seeds.push(seed(
        "link_bundle",
        "valid-recovery",
        with_mode(1, &recovery_bundle),
    ));
    seeds.push(seed(
        "link_bundle",
        "valid-plaintext",
        with_mode(2, &f.bundle.encode()),
    ));

    // Frames: a request of every kind that carries bytes, and the responses a client decodes.
    use proto::{request, response};
    let requests = [
        request::Kind::GetChallenge(proto::GetChallenge {}),
        request::Kind::Push(proto::Push {
            envelopes: vec![first.bytes.clone(), second.bytes.clone()],
        }),
        request::Kind::PutRoster(proto::PutRoster {
            roster: current.to_vec(),
        }),
        request::Kind::PutSealedEpochKeys(proto::PutSealedEpochKeys {
            keys: vec![sealed_key.clone()],
            staged_account_key: Vec::new(),
        }),
        request::Kind::Authenticate(proto::Authenticate {
            account_id: f.account.as_bytes().to_vec(),
            device_id: phone.id().as_bytes().to_vec(),
            signature: kith_protocol::auth::sign_relay_auth(
                &phone.signing,
                &EXPORTER,
                &CHALLENGE,
                &f.account,
                &phone.id(),
            )
            .as_bytes()
            .to_vec(),
        }),
        request::Kind::Pull(proto::Pull {
            cursors: vec![proto::Cursor {
                device_id: phone.id().as_bytes().to_vec(),
                after_seq: 1,
            }],
            max_envelopes: 10,
            max_bytes: 0,
        }),
    ];
    for kind in requests {
        let name = format!("valid-request-{}", request_name(&kind));
        let bytes = frame::encode_frame(&proto::Request { kind: Some(kind) });
        seeds.push(seed("frame", &name, bytes));
    }
    let pulled = proto::Response {
        kind: Some(response::Kind::Pull(proto::PullResponse {
            envelopes: [&first, &second]
                .iter()
                .zip(1..)
                .map(|(sealed, seq)| proto::StoredEnvelope {
                    device_id: phone.id().as_bytes().to_vec(),
                    seq,
                    envelope: sealed.bytes.clone(),
                })
                .collect(),
            streams: Vec::new(),
            more: false,
        })),
    };
    let mut stream = frame::encode_frame(&pulled);
    stream.extend_from_slice(&frame::encode_frame(&proto::Response {
        kind: Some(response::Kind::Notification(proto::Notification {
            device_id: phone.id().as_bytes().to_vec(),
            last_seq: 2,
        })),
    }));
    seeds.push(seed(
        "frame",
        "valid-response-pull-then-notification",
        stream,
    ));
    seeds
}

fn request_name(kind: &proto::request::Kind) -> &'static str {
    use proto::request::Kind;
    match kind {
        Kind::GetChallenge(_) => "get-challenge",
        Kind::Push(_) => "push",
        Kind::PutRoster(_) => "put-roster",
        Kind::PutSealedEpochKeys(_) => "put-sealed-epoch-keys",
        Kind::Authenticate(_) => "authenticate",
        Kind::Pull(_) => "pull",
        _ => "other",
    }
}

/// Two records: one upserted with every kind of field, then partly replaced; one deleted.
fn seed_operations() -> Vec<kith_protocol::record::Operation> {
    use kith_protocol::hlc::Hlc;
    use kith_protocol::ids::RecordId;
    use kith_protocol::record::{FieldKey, FieldWrite, Operation, value};
    const BROKEN: &str = "seed operations are valid";
    let f = fixture();
    let device = f.devices[PHONE].id();
    let ada = RecordId::from_bytes([1; 16]);
    let gone = RecordId::from_bytes([2; 16]);
    let t1 = Hlc::new(NOW_MS, 0, device);
    let t2 = Hlc::new(NOW_MS + 1, 0, device);
    let set = |key: Result<FieldKey, _>, value, replaces: &[Hlc]| {
        FieldWrite::set(key.expect(BROKEN), value, replaces.iter().copied()).expect(BROKEN)
    };
    let first = Operation::upsert(
        ada,
        t1,
        vec![
            set(Ok(FieldKey::name()), value::text("Ada Lovelace"), &[]),
            set(
                Ok(FieldKey::company()),
                value::text("Analytical Engines"),
                &[],
            ),
            set(Ok(FieldKey::birthday()), value::date(1815, 12, 10), &[]),
            set(
                FieldKey::email("ada@example.com"),
                value::email("ada@example.com", "work"),
                &[],
            ),
            set(
                FieldKey::phone("+442079460018"),
                value::phone("+442079460018", "mobile"),
                &[],
            ),
            set(FieldKey::tag("friends"), value::tag(), &[]),
        ],
    )
    .expect(BROKEN);
    let second = Operation::upsert(
        ada,
        t2,
        vec![
            set(Ok(FieldKey::name()), value::text("Ada King"), &[t1]),
            FieldWrite::remove(FieldKey::tag("friends").expect(BROKEN), [t1]),
        ],
    )
    .expect(BROKEN);
    vec![first, second, Operation::delete(gone, t2)]
}
