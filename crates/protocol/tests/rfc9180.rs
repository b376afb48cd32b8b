//! RFC 9180 known-answer test for the `hpke` crate that Kith seals with.
//!
//! Kith's suite is X-Wing + HKDF-SHA256 + ChaCha20-Poly1305 (PROTOCOL.md §5, §6). RFC 9180 has
//! no X-Wing vectors, but its key schedule, PSK handling, AEAD nonce sequence and exporter are
//! the same code for every KEM. Appendix A.2.2 (DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
//! ChaCha20-Poly1305, PSK mode) exercises exactly the KDF, AEAD and mode Kith uses, so this test
//! pins the library's behaviour on them: `tests/vectors/rfc9180_a22.json`.

mod common;

use hkdf::Hkdf;
use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, PskBundle, Serializable};
use serde::Deserialize;
use sha2::Sha256;

use common::{FixedRng, unhex};

type Kem = X25519HkdfSha256;

#[derive(Deserialize)]
struct Vector {
    mode: u8,
    kem_id: u16,
    kdf_id: u16,
    aead_id: u16,
    info: String,
    #[serde(rename = "ikmE")]
    ikm_e: String,
    #[serde(rename = "pkEm")]
    pk_em: String,
    #[serde(rename = "skEm")]
    sk_em: String,
    #[serde(rename = "ikmR")]
    ikm_r: String,
    #[serde(rename = "pkRm")]
    pk_rm: String,
    #[serde(rename = "skRm")]
    sk_rm: String,
    psk: String,
    psk_id: String,
    enc: String,
    exporter_secret: String,
    encryptions: Vec<Encryption>,
    exports: Vec<Export>,
}

#[derive(Deserialize)]
struct Export {
    exporter_context: String,
    length: usize,
    exported_value: String,
}

#[derive(Deserialize)]
struct Encryption {
    sequence_number: u64,
    plaintext: String,
    aad: String,
    ciphertext: String,
}

fn vector() -> Vector {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/vectors/rfc9180_a22.json"
    );
    let text = std::fs::read_to_string(path).expect("vector file exists");
    serde_json::from_str(&text).expect("vector file parses")
}

#[test]
fn vector_is_the_suite_kith_uses() {
    let v = vector();
    assert_eq!(
        (v.mode, v.kdf_id, v.aead_id),
        (1, 1, 3),
        "PSK mode, HKDF-SHA256, ChaCha20Poly1305"
    );
    assert_eq!(v.kem_id, Kem::KEM_ID);
}

#[test]
fn derive_keypair_matches_the_rfc() {
    let v = vector();
    let (sk_e, pk_e) = Kem::derive_keypair(&unhex(&v.ikm_e));
    assert_eq!(sk_e.to_bytes().to_vec(), clamped(unhex(&v.sk_em)));
    assert_eq!(pk_e.to_bytes().to_vec(), unhex(&v.pk_em));
    let (sk_r, pk_r) = Kem::derive_keypair(&unhex(&v.ikm_r));
    assert_eq!(sk_r.to_bytes().to_vec(), clamped(unhex(&v.sk_rm)));
    assert_eq!(pk_r.to_bytes().to_vec(), unhex(&v.pk_rm));
}

/// The library stores X25519 secret scalars clamped (RFC 7748 §5); the RFC prints them raw.
fn clamped(mut scalar: Vec<u8>) -> Vec<u8> {
    scalar[0] &= 248;
    scalar[31] &= 127;
    scalar[31] |= 64;
    scalar
}

#[test]
fn psk_mode_sender_matches_the_rfc() {
    let v = vector();
    let (psk, psk_id, info) = (unhex(&v.psk), unhex(&v.psk_id), unhex(&v.info));
    let pk_r = <Kem as hpke::Kem>::PublicKey::from_bytes(&unhex(&v.pk_rm)).unwrap();
    let mode = OpModeS::Psk(PskBundle::new(&psk, &psk_id).unwrap());
    // The library draws the ephemeral key as DeriveKeyPair(random(Nsk)): replay ikmE.
    let mut rng = FixedRng::new(unhex(&v.ikm_e));
    let (enc, mut context) = hpke::setup_sender_with_rng::<ChaCha20Poly1305, HkdfSha256, Kem>(
        &mode, &pk_r, &info, &mut rng,
    )
    .unwrap();
    assert_eq!(enc.to_bytes().to_vec(), unhex(&v.enc), "encapsulation");

    // The key schedule's key and base nonce show in every ciphertext of the sequence.
    let last = v
        .encryptions
        .iter()
        .map(|e| e.sequence_number)
        .max()
        .unwrap();
    for seq in 0..=last {
        let expected = v.encryptions.iter().find(|e| e.sequence_number == seq);
        let aad = format!("Count-{seq}");
        let plaintext = unhex(&v.encryptions[0].plaintext);
        let ciphertext = context.seal(&plaintext, aad.as_bytes()).unwrap();
        if let Some(expected) = expected {
            assert_eq!(unhex(&expected.aad), aad.as_bytes());
            assert_eq!(unhex(&expected.plaintext), plaintext);
            assert_eq!(
                ciphertext,
                unhex(&expected.ciphertext),
                "ciphertext of sequence {seq}"
            );
        }
    }

    assert_eq!(v.exports.len(), 3);
    for export in &v.exports {
        let exporter_context = unhex(&export.exporter_context);
        let mut exported = vec![0u8; export.length];
        context.export(&exporter_context, &mut exported).unwrap();
        assert_eq!(exported, unhex(&export.exported_value), "export");
        // And the RFC's own exporter_secret, through §5.3 by hand, gives the same value.
        assert_eq!(
            exported,
            expected_export(&v, &exporter_context),
            "export by hand"
        );
    }
}

#[test]
fn psk_mode_receiver_matches_the_rfc() {
    let v = vector();
    let (psk, psk_id, info) = (unhex(&v.psk), unhex(&v.psk_id), unhex(&v.info));
    let sk_r = <Kem as hpke::Kem>::PrivateKey::from_bytes(&unhex(&v.sk_rm)).unwrap();
    let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(&unhex(&v.enc)).unwrap();
    let mode = OpModeR::Psk(PskBundle::new(&psk, &psk_id).unwrap());
    let mut context =
        hpke::setup_receiver::<ChaCha20Poly1305, HkdfSha256, Kem>(&mode, &sk_r, &enc, &info)
            .unwrap();
    let first = &v.encryptions[0];
    assert_eq!(first.sequence_number, 0);
    let opened = context
        .open(&unhex(&first.ciphertext), &unhex(&first.aad))
        .unwrap();
    assert_eq!(opened, unhex(&first.plaintext));
    let mut exported = [0u8; 32];
    context.export(b"TestContext", &mut exported).unwrap();
    assert_eq!(exported, expected_export(&v, b"TestContext"));

    // The wrong PSK (what a relay that never saw the pairing secret would use) does not open.
    let wrong = [0u8; 32];
    let mode = OpModeR::Psk(PskBundle::new(&wrong, &psk_id).unwrap());
    let mut context =
        hpke::setup_receiver::<ChaCha20Poly1305, HkdfSha256, Kem>(&mode, &sk_r, &enc, &info)
            .unwrap();
    assert!(
        context
            .open(&unhex(&first.ciphertext), &unhex(&first.aad))
            .is_err()
    );
}

/// RFC 9180 §5.3, computed from the vector's `exporter_secret` with HKDF alone (so the
/// exporter secret of the key schedule is checked, not just the library's exporter):
/// `Export(ctx, L) = LabeledExpand(exporter_secret, "sec", ctx, L)`, where
/// `LabeledExpand(prk, label, info, L) = Expand(prk, I2OSP(L, 2) || "HPKE-v1" || suite_id ||
/// label || info, L)` and `suite_id = "HPKE" || I2OSP(kem_id, 2) || I2OSP(kdf_id, 2) ||
/// I2OSP(aead_id, 2)`.
fn expected_export(v: &Vector, exporter_context: &[u8]) -> [u8; 32] {
    let prk = unhex(&v.exporter_secret);
    let hkdf = Hkdf::<Sha256>::from_prk(&prk).unwrap();
    let mut suite_id = b"HPKE".to_vec();
    for id in [v.kem_id, v.kdf_id, v.aead_id] {
        suite_id.extend_from_slice(&id.to_be_bytes());
    }
    let mut out = [0u8; 32];
    hkdf.expand_multi_info(
        &[
            &32u16.to_be_bytes(),
            b"HPKE-v1",
            &suite_id,
            b"sec",
            exporter_context,
        ],
        &mut out,
    )
    .unwrap();
    out
}
