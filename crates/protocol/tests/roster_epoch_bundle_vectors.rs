//! Kith's own test vectors for rosters (§4), sealed epoch keys (§5) and bundles (§6):
//! `tests/vectors/roster.json`, `epoch.json` and `bundle.json`.
//!
//! Everything derives from fixed seeds through the SHA-256 counter-mode generator of
//! `tests/common`, so the files are reproducible byte for byte. Each test regenerates its file's
//! content and compares; `KITH_REGENERATE_VECTORS=1 cargo test -p kith-protocol` rewrites the
//! files instead. Independently, the stored bytes are checked twice: with this crate's API, and
//! with the bare primitives (SHA-256, HKDF, Ed25519, XChaCha20-Poly1305, HPKE) following the
//! spec's byte-exact encodings, so another implementation can check itself against the spec.

mod common;

use std::path::PathBuf;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use hkdf::Hkdf;
use hpke::Deserializable;
use kith_protocol::bundle::{
    AccountBundle, LinkCode, open_link_bundle, open_recovery_bundle, seal_link_bundle,
    seal_recovery_bundle,
};
use kith_protocol::epoch::{EpochKeys, account_key_for_epoch, open_epoch_key, seal_epoch_key};
use kith_protocol::keys::{
    AccountSigningKey, DeviceAgreementKey, DeviceSigningKey, EpochSecret, RecoveryKey,
};
use kith_protocol::roster::{NewDevice, VerifiedRoster};
use kith_protocol::{AccountId, proto};
use prost::Message;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use common::{CounterRng, regenerating, unhex};

fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors")
        .join(name)
}

/// A vector file: the seed of the counter RNG its vectors were generated with, then their keys.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Seeded<T> {
    seed: String,
    #[serde(flatten)]
    vectors: T,
}

/// Generates the vectors of `tests/vectors/{name}.json` from the counter RNG seeded with
/// `kith/v1/test-vectors/{name}` and compares them with the stored file (or rewrites the file
/// when regenerating); the stored vectors.
fn check_or_write<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(
    name: &str,
    generate: impl FnOnce(CounterRng) -> T,
) -> T {
    let seed = format!("kith/v1/test-vectors/{name}");
    let generated = Seeded {
        vectors: generate(CounterRng::new(&seed)),
        seed,
    };
    let file = format!("{name}.json");
    if regenerating() {
        let mut text = serde_json::to_string_pretty(&generated).expect("serializable");
        text.push('\n');
        std::fs::write(path(&file), text).expect("write vectors");
    }
    let text = std::fs::read_to_string(path(&file)).expect("vector file exists");
    let stored: Seeded<T> = serde_json::from_str(&text).expect("vector file parses");
    assert_eq!(
        stored, generated,
        "{file} changed; if intended, rerun with KITH_REGENERATE_VECTORS=1"
    );
    stored.vectors
}

/// `LP(f1) || LP(f2) || …`, written out here so the vectors pin the spec, not the crate.
fn lp(fields: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for field in fields {
        out.extend_from_slice(&(field.len() as u32).to_be_bytes());
        out.extend_from_slice(field);
    }
    out
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn hkdf32(ikm: &[u8], salt: Option<&[u8]>, info: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    Hkdf::<Sha256>::new(salt, ikm)
        .expand(info.as_bytes(), &mut out)
        .unwrap();
    out
}

fn ed25519_verify(public: &[u8], message: &[u8], signature: &[u8]) {
    let key = VerifyingKey::from_bytes(public.try_into().unwrap()).unwrap();
    let signature = Signature::from_slice(signature).unwrap();
    key.verify_strict(message, &signature)
        .expect("signature verifies with ed25519 alone");
}

type HpkeKem = hpke::kem::XWing;
type HpkeAead = hpke::aead::ChaCha20Poly1305;
type HpkeKdf = hpke::kdf::HkdfSha256;

fn hpke_open(
    secret: &[u8],
    psk: Option<(&[u8], &[u8])>,
    info: &[u8],
    enc: &[u8],
    ciphertext: &[u8],
) -> Vec<u8> {
    let key = <HpkeKem as hpke::Kem>::PrivateKey::from_bytes(secret).unwrap();
    let enc = <HpkeKem as hpke::Kem>::EncappedKey::from_bytes(enc).unwrap();
    let mode = match psk {
        None => hpke::OpModeR::Base,
        Some((psk, id)) => hpke::OpModeR::Psk(hpke::PskBundle::new(psk, id).unwrap()),
    };
    let mut context =
        hpke::setup_receiver::<HpkeAead, HpkeKdf, HpkeKem>(&mode, &key, &enc, info).unwrap();
    context
        .open(ciphertext, b"")
        .expect("opens with HPKE alone")
}

// ---------------------------------------------------------------------------------------------
// Rosters

#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct RosterVectors {
    genesis_account_key: String,
    devices: Vec<DeviceVector>,
    epochs: Vec<EpochEntry>,
    rosters: Vec<RosterVector>,
}

#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct DeviceVector {
    name: String,
    signing_key_secret: String,
    signing_key: String,
    device_id: String,
    agreement_key_secret: String,
}

#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct EpochEntry {
    epoch: u64,
    secret: String,
}

#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct RosterVector {
    step: String,
    account_id: String,
    version: u64,
    epoch: u64,
    current_account_key: String,
    devices: Vec<String>,
    removed: Vec<String>,
    signed_roster: String,
}

fn roster_vector(step: &str, roster: &VerifiedRoster) -> RosterVector {
    RosterVector {
        step: step.to_owned(),
        account_id: roster.account_id().to_hex(),
        version: roster.version(),
        epoch: roster.epoch(),
        current_account_key: hex::encode(roster.current_account_key().as_bytes()),
        devices: roster.devices().map(|d| d.device_id().to_hex()).collect(),
        removed: roster.removed().map(|d| d.device_id().to_hex()).collect(),
        signed_roster: hex::encode(roster.encoded()),
    }
}

fn generate_rosters(mut rng: CounterRng) -> RosterVectors {
    let account_key = AccountSigningKey::generate(&mut rng);
    let mut devices = Vec::new();
    let mut new_devices = Vec::new();
    for name in ["laptop", "phone", "tablet"] {
        let signing = DeviceSigningKey::generate(&mut rng);
        let agreement = DeviceAgreementKey::generate(&mut rng);
        new_devices.push(NewDevice {
            signing_key: signing.public(),
            agreement_key: agreement.public(),
            name: name.to_owned(),
        });
        devices.push(DeviceVector {
            name: name.to_owned(),
            signing_key_secret: hex::encode(*signing.to_secret_bytes()),
            signing_key: hex::encode(signing.public().as_bytes()),
            device_id: signing.device_id().to_hex(),
            agreement_key_secret: hex::encode(&*agreement.to_secret_bytes()),
        });
    }
    let epoch1 = EpochSecret::generate(&mut rng);
    let mut new_devices = new_devices.into_iter();
    let genesis = VerifiedRoster::genesis(
        &account_key,
        new_devices.next().unwrap(),
        &epoch1,
        1_000,
        &mut rng,
    )
    .unwrap();
    let mut keys = EpochKeys::new(genesis.account_id());
    keys.insert(1, epoch1.clone()).unwrap();
    let mut rosters = vec![roster_vector("genesis with laptop", &genesis)];
    let mut roster = genesis;
    for step in ["add phone", "add tablet"] {
        roster = roster
            .add_device(
                &account_key,
                new_devices.next().unwrap(),
                &keys,
                2_000,
                &mut rng,
            )
            .unwrap();
        rosters.push(roster_vector(step, &roster));
    }
    let epoch2 = EpochSecret::generate(&mut rng);
    let new_key = account_key_for_epoch(&roster.account_id(), &epoch2);
    let phone = roster.devices().nth(1).unwrap().device_id();
    roster = roster
        .remove_device(
            &account_key,
            &phone,
            7,
            &new_key,
            &epoch2,
            &keys,
            3_000,
            &mut rng,
        )
        .unwrap();
    rosters.push(roster_vector("remove phone after seq 7", &roster));
    RosterVectors {
        genesis_account_key: hex::encode(*account_key.to_secret_bytes()),
        devices,
        epochs: vec![
            EpochEntry {
                epoch: 1,
                secret: hex::encode(epoch1.expose()),
            },
            EpochEntry {
                epoch: 2,
                secret: hex::encode(epoch2.expose()),
            },
        ],
        rosters,
    }
}

#[test]
fn roster_vectors_match() {
    let v = check_or_write("roster", generate_rosters);
    // With the crate: the rosters verify in sequence, and the names open.
    let mut prev: Option<VerifiedRoster> = None;
    let account = AccountId::from_hex(&v.rosters[0].account_id).unwrap();
    let mut keys = EpochKeys::new(account);
    for e in &v.epochs {
        keys.insert(e.epoch, EpochSecret::from_slice(&unhex(&e.secret)).unwrap())
            .unwrap();
    }
    for stored in &v.rosters {
        let roster =
            VerifiedRoster::verify(&unhex(&stored.signed_roster), Some(&account), prev.as_ref())
                .unwrap();
        assert_eq!(roster_vector(&stored.step, &roster), *stored);
        for device in roster.devices() {
            let name = roster.device_name(&device.device_id(), &keys).unwrap();
            let listed = v
                .devices
                .iter()
                .find(|d| d.device_id == device.device_id().to_hex());
            assert_eq!(Some(name), listed.map(|d| d.name.clone()));
        }
        prev = Some(roster);
    }
    assert_eq!(
        prev.unwrap()
            .derive_account_key(&keys)
            .unwrap()
            .public()
            .as_bytes()
            .to_vec(),
        unhex(&v.rosters[3].current_account_key)
    );
}

#[test]
fn roster_vectors_check_with_primitives_alone() {
    let text = std::fs::read_to_string(path("roster.json")).unwrap();
    let v: RosterVectors = serde_json::from_str(&text).unwrap();
    let last = v.rosters.last().unwrap();
    let signed = proto::SignedRoster::decode(unhex(&last.signed_roster).as_slice()).unwrap();
    let body = proto::RosterBody::decode(signed.body.as_slice()).unwrap();

    // account_id = H("kith/v1/account-id", genesis_key).
    let genesis = SigningKey::from_bytes(&unhex(&v.genesis_account_key).try_into().unwrap());
    assert_eq!(body.genesis_key, genesis.verifying_key().as_bytes());
    let account_id = sha256(&lp(&[b"kith/v1/account-id", &body.genesis_key]));
    assert_eq!(body.account_id, account_id);

    // The rotation: signed by the genesis key over (account_id, u64be(version), new_key), and the
    // new key is derived from epoch 2's secret.
    let rotation = &body.key_chain[0];
    assert_eq!(rotation.roster_version, body.version);
    let message = lp(&[
        b"kith/v1/account-key-rotation",
        &account_id,
        &rotation.roster_version.to_be_bytes(),
        &rotation.new_key,
    ]);
    ed25519_verify(&body.genesis_key, &message, &rotation.signature);
    let epoch2 = unhex(&v.epochs[1].secret);
    let seed = hkdf32(&epoch2, Some(&account_id), "kith/v1/account-key");
    assert_eq!(
        SigningKey::from_bytes(&seed).verifying_key().as_bytes(),
        &rotation.new_key[..]
    );

    // Each roster names its predecessor: H("kith/v1/roster-hash", encoded SignedRoster).
    let first = proto::SignedRoster::decode(unhex(&v.rosters[0].signed_roster).as_slice()).unwrap();
    let first_body = proto::RosterBody::decode(first.body.as_slice()).unwrap();
    assert!(first_body.prev_roster_hash.is_empty());
    for pair in v.rosters.windows(2) {
        let next = proto::SignedRoster::decode(unhex(&pair[1].signed_roster).as_slice()).unwrap();
        let next_body = proto::RosterBody::decode(next.body.as_slice()).unwrap();
        assert_eq!(
            next_body.prev_roster_hash,
            sha256(&lp(&[
                b"kith/v1/roster-hash",
                &unhex(&pair[0].signed_roster)
            ]))
        );
    }

    // The roster signature, by the current key, over LP("kith/v1/roster") || LP(body).
    ed25519_verify(
        &rotation.new_key,
        &lp(&[b"kith/v1/roster", &signed.body]),
        &signed.signature,
    );

    // Device ids and names: XChaCha20-Poly1305 under HKDF(epoch secret, account_id,
    // "kith/v1/device-name"), AAD LP("kith/v1/device-name") || LP(account_id) || LP(device_id),
    // plaintext = u8 length || name || zeros, 65 bytes.
    let name_key = hkdf32(&epoch2, Some(&account_id), "kith/v1/device-name");
    let cipher = XChaCha20Poly1305::new((&name_key).into());
    for entry in &body.devices {
        let id = &sha256(&lp(&[b"kith/v1/device-id", &entry.signing_key]))[..16];
        assert_eq!(entry.device_id, id);
        let aad = lp(&[b"kith/v1/device-name", &account_id, &entry.device_id]);
        let nonce = XNonce::from(<[u8; 24]>::try_from(entry.name_nonce.as_slice()).unwrap());
        let plain = cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: &entry.encrypted_name,
                    aad: &aad,
                },
            )
            .unwrap();
        assert_eq!(plain.len(), 65);
        let len = usize::from(plain[0]);
        assert!(plain[1 + len..].iter().all(|b| *b == 0));
        let name = std::str::from_utf8(&plain[1..=len]).unwrap();
        let listed = v
            .devices
            .iter()
            .find(|d| unhex(&d.device_id) == entry.device_id)
            .unwrap();
        assert_eq!(name, listed.name);
    }
    assert_eq!(body.removed[0].final_seq, 7);
    assert_eq!(body.epoch, 2);
}

// ---------------------------------------------------------------------------------------------
// Sealed epoch keys

#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct EpochVectors {
    account_id: String,
    recipient_device_id: String,
    recipient_agreement_key_secret: String,
    epoch: u64,
    secret: String,
    key_id: String,
    content_key: String,
    device_name_key: String,
    record_id_key: String,
    rotated_account_key: String,
    sealed_epoch_key: String,
}

fn generate_epoch(mut rng: CounterRng) -> EpochVectors {
    let account = AccountSigningKey::generate(&mut rng).public().account_id();
    let device = DeviceSigningKey::generate(&mut rng).device_id();
    let agreement = DeviceAgreementKey::generate(&mut rng);
    let secret = EpochSecret::generate(&mut rng);
    let epoch = 3;
    let sealed = seal_epoch_key(
        &account,
        &device,
        &agreement.public(),
        epoch,
        &secret,
        &mut rng,
    );
    EpochVectors {
        account_id: account.to_hex(),
        recipient_device_id: device.to_hex(),
        recipient_agreement_key_secret: hex::encode(&*agreement.to_secret_bytes()),
        epoch,
        secret: hex::encode(secret.expose()),
        key_id: hex::encode(secret.key_id(&account, epoch)),
        content_key: hex::encode(secret.content_key(&account).expose()),
        device_name_key: hex::encode(secret.device_name_key(&account).expose()),
        record_id_key: hex::encode(secret.record_id_key(&account).expose()),
        rotated_account_key: hex::encode(
            account_key_for_epoch(&account, &secret).public().as_bytes(),
        ),
        sealed_epoch_key: hex::encode(&sealed),
    }
}

#[test]
fn epoch_vectors_match() {
    let v = check_or_write("epoch", generate_epoch);
    let account = AccountId::from_hex(&v.account_id).unwrap();
    let device = kith_protocol::DeviceId::from_hex(&v.recipient_device_id).unwrap();
    let agreement =
        DeviceAgreementKey::from_secret_bytes(&unhex(&v.recipient_agreement_key_secret)).unwrap();
    let (epoch, secret) =
        open_epoch_key(&unhex(&v.sealed_epoch_key), &account, &device, &agreement).unwrap();
    assert_eq!(epoch, v.epoch);
    assert_eq!(hex::encode(secret.expose()), v.secret);
}

#[test]
fn epoch_vectors_check_with_primitives_alone() {
    let text = std::fs::read_to_string(path("epoch.json")).unwrap();
    let v: EpochVectors = serde_json::from_str(&text).unwrap();
    let (account, secret) = (unhex(&v.account_id), unhex(&v.secret));
    let epoch = v.epoch.to_be_bytes();
    let key_id = &sha256(&lp(&[b"kith/v1/epoch-key-id", &account, &epoch, &secret]))[..16];
    assert_eq!(hex::encode(key_id), v.key_id);
    for (label, expected) in [
        ("kith/v1/content-key", &v.content_key),
        ("kith/v1/device-name", &v.device_name_key),
        ("kith/v1/record-id", &v.record_id_key),
    ] {
        assert_eq!(
            hex::encode(hkdf32(&secret, Some(&account), label)),
            *expected,
            "{label}"
        );
    }
    let sealed = proto::SealedEpochKey::decode(unhex(&v.sealed_epoch_key).as_slice()).unwrap();
    assert_eq!(sealed.key_id, key_id);
    assert_eq!(sealed.encapped_key.len(), 1120);
    let info = lp(&[
        b"kith/v1/sealed-epoch-key",
        &account,
        &unhex(&v.recipient_device_id),
        &epoch,
        key_id,
    ]);
    let opened = hpke_open(
        &unhex(&v.recipient_agreement_key_secret),
        None,
        &info,
        &sealed.encapped_key,
        &sealed.ciphertext,
    );
    assert_eq!(opened, secret);
}

// ---------------------------------------------------------------------------------------------
// Link and recovery bundles

#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct BundleVectors {
    account_id: String,
    new_device_signing_key: String,
    new_device_agreement_key_secret: String,
    link_code: String,
    sealed_link_bundle: String,
    recovery_key: String,
    recovery_lookup_id: String,
    sealed_recovery_bundle: String,
}

fn generate_bundle(mut rng: CounterRng) -> BundleVectors {
    let account_key = AccountSigningKey::generate(&mut rng);
    let epoch1 = EpochSecret::generate(&mut rng);
    let first = NewDevice {
        signing_key: DeviceSigningKey::generate(&mut rng).public(),
        agreement_key: DeviceAgreementKey::generate(&mut rng).public(),
        name: "laptop".into(),
    };
    let roster = VerifiedRoster::genesis(&account_key, first, &epoch1, 1, &mut rng).unwrap();
    let mut epochs = EpochKeys::new(roster.account_id());
    epochs.insert(1, epoch1).unwrap();
    let signing = DeviceSigningKey::generate(&mut rng);
    let agreement = DeviceAgreementKey::generate(&mut rng);
    let code = LinkCode::generate(signing.public(), agreement.public(), &mut rng);
    let new = NewDevice {
        signing_key: signing.public(),
        agreement_key: agreement.public(),
        name: "phone".into(),
    };
    let roster = roster
        .add_device(&account_key, new, &epochs, 2, &mut rng)
        .unwrap();
    let bundle = AccountBundle::new(account_key, epochs, roster).unwrap();
    let sealed_link = seal_link_bundle(&bundle, &code, &mut rng).unwrap();
    let recovery = RecoveryKey::generate(&mut rng);
    let sealed_recovery = seal_recovery_bundle(
        &bundle,
        &recovery.kem_key().public(),
        &recovery.psk(),
        &mut rng,
    )
    .unwrap();
    BundleVectors {
        account_id: bundle.account_id().to_hex(),
        new_device_signing_key: hex::encode(signing.public().as_bytes()),
        new_device_agreement_key_secret: hex::encode(&*agreement.to_secret_bytes()),
        link_code: code.to_text().to_string(),
        sealed_link_bundle: hex::encode(&sealed_link),
        recovery_key: recovery.to_text().to_string(),
        recovery_lookup_id: hex::encode(recovery.lookup_id()),
        sealed_recovery_bundle: hex::encode(&sealed_recovery),
    }
}

#[test]
fn bundle_vectors_match() {
    let v = check_or_write("bundle", generate_bundle);
    let code = LinkCode::parse(&v.link_code).unwrap();
    let agreement =
        DeviceAgreementKey::from_secret_bytes(&unhex(&v.new_device_agreement_key_secret)).unwrap();
    assert_eq!(code.agreement_key(), &agreement.public());
    let opened = open_link_bundle(
        &unhex(&v.sealed_link_bundle),
        &agreement,
        code.signing_key(),
        code.pairing_secret(),
    )
    .unwrap();
    assert_eq!(opened.account_id().to_hex(), v.account_id);
    let recovery = RecoveryKey::parse(&v.recovery_key).unwrap();
    assert_eq!(hex::encode(recovery.lookup_id()), v.recovery_lookup_id);
    let recovered = open_recovery_bundle(&unhex(&v.sealed_recovery_bundle), &recovery).unwrap();
    assert_eq!(recovered.roster(), opened.roster());
}

#[test]
fn bundle_vectors_check_with_primitives_alone() {
    use base64::Engine as _;
    let text = std::fs::read_to_string(path("bundle.json")).unwrap();
    let v: BundleVectors = serde_json::from_str(&text).unwrap();

    // Link code: "kith-link1:" + unpadded base64url of proto LinkCode.
    let encoded = v.link_code.strip_prefix("kith-link1:").unwrap();
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded)
        .unwrap();
    let code = proto::LinkCode::decode(raw.as_slice()).unwrap();
    assert_eq!(code.format_version, 1);
    assert_eq!(hex::encode(&code.signing_key), v.new_device_signing_key);

    // Link bundle: HPKE PSK mode, psk = pairing secret, psk_id "kith/v1/link-psk",
    // info = LP("kith/v1/link-bundle") || LP(agreement_key).
    let sealed = proto::SealedBundle::decode(unhex(&v.sealed_link_bundle).as_slice()).unwrap();
    let info = lp(&[b"kith/v1/link-bundle", &code.agreement_key]);
    let plain = hpke_open(
        &unhex(&v.new_device_agreement_key_secret),
        Some((&code.pairing_secret, b"kith/v1/link-psk")),
        &info,
        &sealed.encapped_key,
        &sealed.ciphertext,
    );
    let bundle = proto::AccountBundle::decode(plain.as_slice()).unwrap();
    assert_eq!(hex::encode(&bundle.account_id), v.account_id);
    let signed = proto::SignedRoster::decode(bundle.roster.as_slice()).unwrap();
    let body = proto::RosterBody::decode(signed.body.as_slice()).unwrap();
    assert!(
        body.devices
            .iter()
            .any(|d| d.signing_key == code.signing_key)
    );

    // Recovery bundle: the key pair is X-Wing DeriveKeyPair(HKDF(recovery key, none,
    // "kith/v1/recovery-kem")), psk = HKDF(recovery key, none, "kith/v1/recovery-psk"),
    // psk_id "kith/v1/recovery-psk", info = LP("kith/v1/recovery-bundle").
    let recovery = RecoveryKey::parse(&v.recovery_key).unwrap();
    let seed = hkdf32(recovery.expose(), None, "kith/v1/recovery-kem");
    let (secret, _) = <HpkeKem as hpke::Kem>::derive_keypair(&seed);
    let psk = hkdf32(recovery.expose(), None, "kith/v1/recovery-psk");
    assert_eq!(
        hex::encode(hkdf32(recovery.expose(), None, "kith/v1/recovery-lookup")),
        v.recovery_lookup_id
    );
    let sealed = proto::SealedBundle::decode(unhex(&v.sealed_recovery_bundle).as_slice()).unwrap();
    let plain = hpke_open(
        &hpke::Serializable::to_bytes(&secret),
        Some((&psk, b"kith/v1/recovery-psk")),
        &lp(&[b"kith/v1/recovery-bundle"]),
        &sealed.encapped_key,
        &sealed.ciphertext,
    );
    let recovered = proto::AccountBundle::decode(plain.as_slice()).unwrap();
    assert_eq!(recovered.roster, bundle.roster);
}
