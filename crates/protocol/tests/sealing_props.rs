//! Property tests of sealed epoch keys (§5), link codes and bundles (§6): tampering is always
//! detected, and no input makes a decoder panic.

use std::sync::OnceLock;

use kith_protocol::AccountId;
use kith_protocol::bundle::{
    AccountBundle, BundleError, LinkCode, open_link_bundle, open_recovery_bundle, seal_link_bundle,
    seal_recovery_bundle,
};
use kith_protocol::epoch::{
    EpochError, EpochKeys, open_epoch_key, peek_sealed_epoch_key, seal_epoch_key,
};
use kith_protocol::keys::{
    AccountSigningKey, DeviceAgreementKey, DeviceSigningKey, EpochSecret, PairingSecret,
    RecoveryKey, system_rng,
};
use kith_protocol::roster::{NewDevice, VerifiedRoster};
use proptest::prelude::*;

struct Fixture {
    account: AccountId,
    device: DeviceSigningKey,
    agreement: DeviceAgreementKey,
    other: DeviceSigningKey,
    other_agreement: DeviceAgreementKey,
    secret: EpochSecret,
    sealed_key: Vec<u8>,
    code: LinkCode,
    link_bundle: Vec<u8>,
    recovery: RecoveryKey,
    recovery_bundle: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let mut rng = system_rng();
        let account_key = AccountSigningKey::generate(&mut rng);
        let epoch1 = EpochSecret::generate(&mut rng);
        let first = NewDevice {
            signing_key: DeviceSigningKey::generate(&mut rng).public(),
            agreement_key: DeviceAgreementKey::generate(&mut rng).public(),
            name: "first".into(),
        };
        let roster = VerifiedRoster::genesis(&account_key, first, &epoch1, 1, &mut rng).unwrap();
        let account = roster.account_id();
        let mut epochs = EpochKeys::new(account);
        epochs.insert(1, epoch1.clone()).unwrap();
        let device = DeviceSigningKey::generate(&mut rng);
        let agreement = DeviceAgreementKey::generate(&mut rng);
        let code = LinkCode::generate(device.public(), agreement.public(), &mut rng);
        let new = NewDevice {
            signing_key: device.public(),
            agreement_key: agreement.public(),
            name: "new".into(),
        };
        let roster = roster
            .add_device(&account_key, new, &epochs, 2, &mut rng)
            .unwrap();
        let bundle = AccountBundle::new(account_key, epochs, roster).unwrap();
        let link_bundle = seal_link_bundle(&bundle, &code, &mut rng).unwrap();
        let recovery = RecoveryKey::generate(&mut rng);
        let recovery_bundle = seal_recovery_bundle(
            &bundle,
            &recovery.kem_key().public(),
            &recovery.psk(),
            &mut rng,
        )
        .unwrap();
        let sealed_key = seal_epoch_key(
            &account,
            &device.device_id(),
            &agreement.public(),
            1,
            &epoch1,
            &mut rng,
        );
        Fixture {
            account,
            other: DeviceSigningKey::generate(&mut rng),
            other_agreement: DeviceAgreementKey::generate(&mut rng),
            device,
            agreement,
            secret: epoch1,
            sealed_key,
            code,
            link_bundle,
            recovery,
            recovery_bundle,
        }
    })
}

fn flip(bytes: &[u8], index: prop::sample::Index, bit: u8) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let at = index.index(out.len());
    out[at] ^= 1 << bit;
    out
}

#[test]
fn sealed_epoch_key_to_the_wrong_device_or_account_is_a_precise_error() {
    let f = fixture();
    let me = f.device.device_id();
    assert_eq!(
        open_epoch_key(&f.sealed_key, &f.account, &me, &f.agreement).unwrap(),
        (1, f.secret.clone())
    );
    let other = f.other.device_id();
    assert_eq!(
        open_epoch_key(&f.sealed_key, &f.account, &other, &f.other_agreement),
        Err(EpochError::WrongRecipient {
            expected: other,
            found: me
        })
    );
    let stranger = AccountId::from_bytes([0x55; 32]);
    assert_eq!(
        open_epoch_key(&f.sealed_key, &stranger, &me, &f.agreement),
        Err(EpochError::WrongAccount {
            expected: stranger,
            found: f.account
        })
    );
    // The right device id but another device's key (a relay that swapped keys).
    assert_eq!(
        open_epoch_key(&f.sealed_key, &f.account, &me, &f.other_agreement),
        Err(EpochError::DecryptFailed)
    );
}

#[test]
fn link_bundle_sealed_with_the_wrong_pairing_secret_is_rejected() {
    // What a relay would do: it knows the device's public keys from the roster, not the secret.
    let f = fixture();
    let relay_secret = PairingSecret::generate(&mut system_rng());
    assert_eq!(
        open_link_bundle(
            &f.link_bundle,
            &f.agreement,
            &f.device.public(),
            &relay_secret
        )
        .unwrap_err(),
        BundleError::DecryptFailed
    );
    let opened = open_link_bundle(
        &f.link_bundle,
        &f.agreement,
        &f.device.public(),
        f.code.pairing_secret(),
    )
    .unwrap();
    assert_eq!(opened.account_id(), f.account);
}

#[test]
fn recovery_bundle_round_trips() {
    let f = fixture();
    let opened = open_recovery_bundle(&f.recovery_bundle, &f.recovery).unwrap();
    assert_eq!(opened.account_id(), f.account);
    assert_eq!(opened.epochs().get(1), Some(&f.secret));
    // The recovery key as the person types it back.
    let typed = RecoveryKey::parse(&f.recovery.to_text().to_lowercase()).unwrap();
    assert!(open_recovery_bundle(&f.recovery_bundle, &typed).is_ok());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A bit flipped anywhere in a sealed epoch key never yields another secret: the opener
    /// returns an error, or (for a flip that protobuf decodes to the same fields) the same one.
    #[test]
    fn tampered_sealed_epoch_key_is_rejected(index in any::<prop::sample::Index>(), bit in 0u8..8) {
        let f = fixture();
        let tampered = flip(&f.sealed_key, index, bit);
        match open_epoch_key(&tampered, &f.account, &f.device.device_id(), &f.agreement) {
            Err(_) => {}
            Ok((epoch, secret)) => {
                prop_assert_eq!(epoch, 1);
                prop_assert_eq!(secret, f.secret.clone());
            }
        }
    }

    /// A bit flipped anywhere in a sealed link or recovery bundle is rejected.
    #[test]
    fn tampered_bundles_are_rejected(index in any::<prop::sample::Index>(), bit in 0u8..8) {
        let f = fixture();
        let link = flip(&f.link_bundle, index, bit);
        let pairing = f.code.pairing_secret();
        if let Ok(opened) = open_link_bundle(&link, &f.agreement, &f.device.public(), pairing) {
            prop_assert_eq!(opened.account_id(), f.account);
        }
        let recovery = flip(&f.recovery_bundle, index, bit);
        if let Ok(opened) = open_recovery_bundle(&recovery, &f.recovery) {
            prop_assert_eq!(opened.account_id(), f.account);
        }
    }

    /// Arbitrary bytes never panic the epoch-key and bundle decoders.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
        let f = fixture();
        let _ = peek_sealed_epoch_key(&bytes);
        let _ = open_epoch_key(&bytes, &f.account, &f.device.device_id(), &f.agreement);
        let _ = open_link_bundle(&bytes, &f.agreement, &f.device.public(), f.code.pairing_secret());
        let _ = open_recovery_bundle(&bytes, &f.recovery);
    }

    /// Any link code survives its text form.
    #[test]
    fn link_code_text_round_trips(secret in proptest::array::uniform32(any::<u8>())) {
        let f = fixture();
        let code = LinkCode::new(
            f.device.public(),
            f.agreement.public(),
            PairingSecret::from_slice(&secret).unwrap(),
        );
        let parsed = LinkCode::parse(&code.to_text()).unwrap();
        prop_assert_eq!(parsed.pairing_secret().expose(), &secret);
        prop_assert_eq!(parsed.signing_key(), code.signing_key());
        prop_assert_eq!(parsed.agreement_key(), code.agreement_key());
    }

    /// Garbage text is an error, never a panic: random strings, random base64 after the
    /// prefix, and valid codes with a character changed.
    #[test]
    fn garbage_link_codes_are_errors(
        text in ".{0,300}",
        body in "[A-Za-z0-9_-]{0,2000}",
        index in any::<prop::sample::Index>(),
        replacement in any::<char>(),
    ) {
        prop_assert!(LinkCode::parse(&text).is_err() || text.starts_with(LinkCode::PREFIX));
        let _ = LinkCode::parse(&format!("{}{body}", LinkCode::PREFIX));
        let good = fixture().code.to_text();
        let mut chars: Vec<char> = good.chars().collect();
        let at = index.index(chars.len());
        chars[at] = replacement;
        let changed: String = chars.into_iter().collect();
        if let Ok(parsed) = LinkCode::parse(&changed) {
            // A changed character that still parses is a different code (the bundle for it
            // would be sealed to other keys or under another secret), unless nothing changed.
            let original = &fixture().code;
            let same = parsed.pairing_secret() == original.pairing_secret()
                && parsed.signing_key() == original.signing_key()
                && parsed.agreement_key() == original.agreement_key();
            prop_assert!(!same || changed == *good);
        }
    }
}
