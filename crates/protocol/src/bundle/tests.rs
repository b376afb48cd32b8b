use super::*;
use crate::epoch::account_key_for_epoch;
use crate::keys::{DeviceSigningKey, system_rng};
use crate::roster::NewDevice;
use crate::roster::RosterVerifyError;

struct NewPhone {
    signing: DeviceSigningKey,
    agreement: DeviceAgreementKey,
    code: LinkCode,
}

fn new_phone() -> NewPhone {
    let mut rng = system_rng();
    let signing = DeviceSigningKey::generate(&mut rng);
    let agreement = DeviceAgreementKey::generate(&mut rng);
    let code = LinkCode::generate(signing.public(), agreement.public(), &mut rng);
    NewPhone {
        signing,
        agreement,
        code,
    }
}

fn as_new_device(code: &LinkCode) -> NewDevice {
    NewDevice {
        signing_key: *code.signing_key(),
        agreement_key: code.agreement_key().clone(),
        name: "phone".into(),
    }
}

/// An account of one device, and a bundle that already lists `phone`.
fn bundle_for(phone: &NewPhone) -> AccountBundle {
    let mut rng = system_rng();
    let key = AccountSigningKey::generate(&mut rng);
    let epoch1 = EpochSecret::generate(&mut rng);
    let first = NewDevice {
        signing_key: DeviceSigningKey::generate(&mut rng).public(),
        agreement_key: DeviceAgreementKey::generate(&mut rng).public(),
        name: "laptop".into(),
    };
    let roster = VerifiedRoster::genesis(&key, first, &epoch1, 1, &mut rng).unwrap();
    let mut epochs = EpochKeys::new(roster.account_id());
    epochs.insert(1, epoch1).unwrap();
    let roster = roster
        .add_device(&key, as_new_device(&phone.code), &epochs, 2, &mut rng)
        .unwrap();
    AccountBundle::new(key, epochs, roster).unwrap()
}

fn open_as(phone: &NewPhone, sealed: &[u8]) -> Result<AccountBundle, BundleError> {
    open_link_bundle(
        sealed,
        &phone.agreement,
        &phone.signing.public(),
        phone.code.pairing_secret(),
    )
}

#[test]
fn link_bundle_round_trips() {
    let phone = new_phone();
    let bundle = bundle_for(&phone);
    let sealed = seal_link_bundle(&bundle, &phone.code, &mut system_rng()).unwrap();
    let opened = open_as(&phone, &sealed).unwrap();
    assert_eq!(opened.account_id(), bundle.account_id());
    assert_eq!(opened.account_key().public(), bundle.account_key().public());
    assert_eq!(opened.epochs(), bundle.epochs());
    assert_eq!(opened.roster(), bundle.roster());
    assert_eq!(
        opened.recovery(),
        None,
        "a bundle without recovery material still opens"
    );
}

#[test]
fn link_bundle_carries_the_recovery_sealing_material() {
    // A linked device must be able to re-seal the recovery bundle after it rotates the
    // account key (docs/PROTOCOL.md §6).
    let phone = new_phone();
    let recovery = RecoveryKey::generate(&mut system_rng());
    let bundle = bundle_for(&phone).with_recovery(Some(recovery.sealing()));
    let sealed = seal_link_bundle(&bundle, &phone.code, &mut system_rng()).unwrap();
    let opened = open_as(&phone, &sealed).unwrap();
    assert_eq!(opened.recovery(), Some(&recovery.sealing()));
    // What the linked device re-seals, the recovery key opens.
    let sealing = opened.recovery().unwrap();
    let resealed =
        seal_recovery_bundle(&opened, sealing.public(), sealing.psk(), &mut system_rng()).unwrap();
    assert_eq!(
        open_recovery_bundle(&resealed, &recovery).unwrap().roster(),
        bundle.roster()
    );
}

#[test]
fn malformed_recovery_material_in_a_bundle_is_rejected() {
    let phone = new_phone();
    let bundle =
        bundle_for(&phone).with_recovery(Some(RecoveryKey::generate(&mut system_rng()).sealing()));
    let mut wire = proto::AccountBundle::decode(bundle.encode().as_slice()).unwrap();
    if let Some(recovery) = &mut wire.recovery {
        recovery.lookup_id.truncate(31);
    }
    assert_eq!(
        AccountBundle::decode(&wire.encode_to_vec()).unwrap_err(),
        BundleError::InvalidField {
            field: "recovery.lookup_id",
            reason: "must be 32 bytes"
        }
    );
}

#[test]
fn bundle_sealed_without_the_pairing_secret_is_rejected() {
    // The relay knows the new device's public keys (from the roster) but not the secret.
    let mut rng = system_rng();
    let phone = new_phone();
    let bundle = bundle_for(&phone);
    let relay_code = LinkCode::generate(
        *phone.code.signing_key(),
        phone.code.agreement_key().clone(),
        &mut rng,
    );
    let forged = seal_link_bundle(&bundle, &relay_code, &mut rng).unwrap();
    assert_eq!(
        open_as(&phone, &forged).unwrap_err(),
        BundleError::DecryptFailed
    );
}

#[test]
fn bundle_for_another_device_is_rejected() {
    let phone = new_phone();
    let other = new_phone();
    let bundle = bundle_for(&phone);
    let sealed = seal_link_bundle(&bundle, &phone.code, &mut system_rng()).unwrap();
    assert_eq!(
        open_as(&other, &sealed).unwrap_err(),
        BundleError::DecryptFailed
    );
    assert_eq!(
        seal_link_bundle(&bundle, &other.code, &mut system_rng()).unwrap_err(),
        BundleError::DeviceNotInRoster {
            device: other.code.device_id()
        }
    );
}

#[test]
fn stale_bundle_without_the_device_is_a_precise_error() {
    // Sealed by someone who knows the pairing secret, but with a roster that lacks the device.
    let mut rng = system_rng();
    let phone = new_phone();
    let other = new_phone();
    let bundle = bundle_for(&other);
    let sealed = seal_bundle(
        &bundle,
        phone.code.agreement_key(),
        phone.code.pairing_secret().expose(),
        labels::LINK_PSK,
        &link_info(phone.code.agreement_key()),
        &mut rng,
    )
    .unwrap();
    assert_eq!(
        open_as(&phone, &sealed).unwrap_err(),
        BundleError::DeviceNotInRoster {
            device: phone.code.device_id()
        }
    );
}

#[test]
fn roster_listing_another_agreement_key_is_a_precise_error() {
    let mut rng = system_rng();
    let phone = new_phone();
    let impostor = NewPhone {
        signing: phone.signing.clone(),
        agreement: DeviceAgreementKey::generate(&mut rng),
        code: LinkCode::new(
            phone.signing.public(),
            phone.code.agreement_key().clone(),
            phone.code.pairing_secret().clone(),
        ),
    };
    let bundle = bundle_for(&phone);
    let sealed = seal_bundle(
        &bundle,
        &impostor.agreement.public(),
        phone.code.pairing_secret().expose(),
        labels::LINK_PSK,
        &link_info(&impostor.agreement.public()),
        &mut rng,
    )
    .unwrap();
    assert_eq!(
        open_as(&impostor, &sealed).unwrap_err(),
        BundleError::DeviceKeyMismatch {
            device: phone.code.device_id()
        }
    );
}

#[test]
fn recovery_bundle_round_trips_and_needs_the_recovery_key() {
    let mut rng = system_rng();
    let phone = new_phone();
    let bundle = bundle_for(&phone);
    let recovery = RecoveryKey::generate(&mut rng);
    let sealed = seal_recovery_bundle(
        &bundle,
        &recovery.kem_key().public(),
        &recovery.psk(),
        &mut rng,
    )
    .unwrap();
    let opened = open_recovery_bundle(&sealed, &recovery).unwrap();
    assert_eq!(opened.roster(), bundle.roster());
    let wrong = RecoveryKey::generate(&mut rng);
    assert_eq!(
        open_recovery_bundle(&sealed, &wrong).unwrap_err(),
        BundleError::DecryptFailed
    );
    // Right KEM key, wrong PSK: someone who saw only the recovery public key.
    let forged = seal_recovery_bundle(
        &bundle,
        &recovery.kem_key().public(),
        &wrong.psk(),
        &mut rng,
    )
    .unwrap();
    assert_eq!(
        open_recovery_bundle(&forged, &recovery).unwrap_err(),
        BundleError::DecryptFailed
    );
}

#[test]
fn bundle_parts_must_agree() {
    let mut rng = system_rng();
    let phone = new_phone();
    let (key, epochs, roster) = bundle_for(&phone).into_parts();
    assert_eq!(
        AccountBundle::new(
            AccountSigningKey::generate(&mut rng),
            epochs.clone(),
            roster.clone()
        )
        .unwrap_err(),
        BundleError::AccountKeyMismatch
    );
    let foreign = EpochKeys::new(AccountId::from_bytes([1; 32]));
    assert_eq!(
        AccountBundle::new(key.clone(), foreign, roster.clone()).unwrap_err(),
        BundleError::AccountIdMismatch {
            bundle: AccountId::from_bytes([1; 32]),
            roster: roster.account_id()
        }
    );
    let empty = EpochKeys::new(roster.account_id());
    assert_eq!(
        AccountBundle::new(key.clone(), empty, roster.clone()).unwrap_err(),
        BundleError::MissingEpoch { epoch: 1 }
    );
    let mut wrong = EpochKeys::new(roster.account_id());
    wrong.insert(1, EpochSecret::generate(&mut rng)).unwrap();
    assert!(matches!(
        AccountBundle::new(key, wrong, roster).unwrap_err(),
        BundleError::Roster(RosterError::Verify(RosterVerifyError::DeviceName { .. }))
    ));
}

#[test]
fn bundle_after_a_removal_carries_the_rotated_key() {
    let mut rng = system_rng();
    let phone = new_phone();
    let (key, mut epochs, roster) = bundle_for(&phone).into_parts();
    let secret = EpochSecret::generate(&mut rng);
    let new_key = account_key_for_epoch(&roster.account_id(), &secret);
    let laptop = roster.devices().next().unwrap().device_id();
    let roster = roster
        .remove_device(&key, &laptop, 3, &new_key, &secret, &epochs, 5, &mut rng)
        .unwrap();
    epochs.insert(2, secret).unwrap();
    // The old key no longer makes a bundle.
    assert_eq!(
        AccountBundle::new(key, epochs.clone(), roster.clone()).unwrap_err(),
        BundleError::AccountKeyMismatch
    );
    let bundle = AccountBundle::new(new_key, epochs, roster).unwrap();
    let sealed = seal_link_bundle(&bundle, &phone.code, &mut rng).unwrap();
    let opened = open_as(&phone, &sealed).unwrap();
    assert_eq!(opened.epochs().len(), 2);
}

/// Seals an arbitrary `proto::AccountBundle` as a link bundle to `phone`.
fn seal_message(phone: &NewPhone, message: &proto::AccountBundle) -> Vec<u8> {
    let info = link_info(phone.code.agreement_key());
    let sealed = hpke_seal(
        phone.code.agreement_key(),
        Some((
            phone.code.pairing_secret().expose(),
            labels::LINK_PSK.as_bytes(),
        )),
        &info,
        &message.encode_to_vec(),
        &mut system_rng(),
    )
    .unwrap();
    proto::SealedBundle {
        encapped_key: sealed.encapped_key,
        ciphertext: sealed.ciphertext,
        recovery_info: None,
    }
    .encode_to_vec()
}

#[test]
fn malformed_bundle_contents_are_precise_errors() {
    let phone = new_phone();
    let bundle = bundle_for(&phone);
    let good = proto::AccountBundle::decode(&bundle.encode()[..]).unwrap();
    let open = |message: &proto::AccountBundle| open_as(&phone, &seal_message(&phone, message));
    assert!(open(&good).is_ok());

    let mut m = good.clone();
    m.account_id.pop();
    assert!(matches!(
        open(&m),
        Err(BundleError::InvalidField {
            field: "account_id",
            ..
        })
    ));

    let mut m = good.clone();
    m.account_signing_key.pop();
    assert!(matches!(
        open(&m),
        Err(BundleError::InvalidKey {
            field: "account_signing_key",
            ..
        })
    ));

    let mut m = good.clone();
    m.epochs.push(m.epochs[0].clone());
    assert_eq!(
        open(&m).unwrap_err(),
        BundleError::DuplicateEpoch { epoch: 1 }
    );

    let mut m = good.clone();
    m.epochs[0].epoch = 0;
    assert!(matches!(
        open(&m),
        Err(BundleError::InvalidField {
            field: "epochs.epoch",
            ..
        })
    ));

    let mut m = good.clone();
    m.epochs[0].secret.pop();
    assert!(matches!(
        open(&m),
        Err(BundleError::InvalidField {
            field: "epochs.secret",
            ..
        })
    ));

    let mut m = good.clone();
    m.epochs = (1..=limits::MAX_BUNDLE_EPOCHS as u64 + 1)
        .map(|epoch| proto::EpochSecretEntry {
            epoch,
            secret: vec![0; 32],
        })
        .collect();
    assert_eq!(
        open(&m).unwrap_err(),
        BundleError::TooManyEpochs {
            count: 1026,
            max: 1025
        }
    );

    let mut m = good.clone();
    m.roster[5] ^= 1;
    assert!(matches!(open(&m), Err(BundleError::Roster(_))));

    let mut m = good;
    m.account_id = vec![9; 32];
    assert!(matches!(
        open(&m),
        Err(BundleError::Roster(RosterError::Verify(
            RosterVerifyError::AccountIdMismatch { .. }
        )))
    ));

    let phone_open = |bytes: &[u8]| open_as(&phone, bytes);
    assert!(matches!(
        phone_open(&[0xff; 3]),
        Err(BundleError::Malformed(_))
    ));
    assert!(matches!(
        phone_open(
            &proto::SealedBundle {
                encapped_key: vec![1; 10],
                ciphertext: vec![],
                recovery_info: None,
            }
            .encode_to_vec()
        ),
        Err(BundleError::InvalidField {
            field: "encapped_key",
            ..
        })
    ));
    assert_eq!(
        phone_open(&vec![0; limits::MAX_BUNDLE_BYTES + 1]).unwrap_err(),
        BundleError::TooLarge {
            len: limits::MAX_BUNDLE_BYTES + 1,
            max: limits::MAX_BUNDLE_BYTES
        }
    );
    let bad_plaintext = hpke_seal(
        phone.code.agreement_key(),
        Some((
            phone.code.pairing_secret().expose(),
            labels::LINK_PSK.as_bytes(),
        )),
        &link_info(phone.code.agreement_key()),
        &[0xff, 0xff],
        &mut system_rng(),
    )
    .unwrap();
    let sealed = proto::SealedBundle {
        encapped_key: bad_plaintext.encapped_key,
        ciphertext: bad_plaintext.ciphertext,
        recovery_info: None,
    }
    .encode_to_vec();
    assert!(matches!(
        phone_open(&sealed),
        Err(BundleError::Malformed(_))
    ));
}

#[test]
fn link_code_text_round_trips_and_tolerates_whitespace() {
    let phone = new_phone();
    let text = phone.code.to_text();
    assert!(text.starts_with(LinkCode::PREFIX));
    let parsed = LinkCode::parse(&text).unwrap();
    assert_eq!(parsed.signing_key(), phone.code.signing_key());
    assert_eq!(parsed.agreement_key(), phone.code.agreement_key());
    assert_eq!(parsed.pairing_secret(), phone.code.pairing_secret());
    let wrapped: String = text
        .as_bytes()
        .chunks(60)
        .map(|line| format!("  {}\r\n", std::str::from_utf8(line).unwrap()))
        .collect();
    assert_eq!(
        LinkCode::parse(&wrapped).unwrap().pairing_secret(),
        phone.code.pairing_secret()
    );
}

#[test]
fn link_code_carries_a_bounded_device_name() {
    let phone = new_phone();
    let named = phone.code.clone().with_device_name("Seán's phone");
    assert_eq!(
        LinkCode::parse(&named.to_text()).unwrap().device_name(),
        "Seán's phone"
    );
    // Cut at a character boundary, never inside one.
    let long = "é".repeat(40);
    assert_eq!(
        phone
            .code
            .clone()
            .with_device_name(&long)
            .device_name()
            .len(),
        64
    );
}

#[test]
fn link_code_errors_are_precise() {
    let phone = new_phone();
    let text = phone.code.to_text();
    assert_eq!(
        LinkCode::parse(&"a".repeat(limits::MAX_LINK_CODE_CHARS + 1)).unwrap_err(),
        BundleError::LinkCodeTooLong {
            len: limits::MAX_LINK_CODE_CHARS + 1,
            max: limits::MAX_LINK_CODE_CHARS
        }
    );
    assert_eq!(
        LinkCode::parse(&text.replace("kith-link1:", "kith-link2:")).unwrap_err(),
        BundleError::LinkCodeMissingPrefix
    );
    assert!(matches!(
        LinkCode::parse(&format!("{}!", text.as_str())),
        Err(BundleError::LinkCodeBase64(_))
    ));
    assert!(matches!(
        LinkCode::parse("kith-link1:_w"),
        Err(BundleError::Malformed(_))
    ));
    let encode = |message: &proto::LinkCode| {
        format!(
            "{}{}",
            LinkCode::PREFIX,
            URL_SAFE_NO_PAD.encode(message.encode_to_vec())
        )
    };
    let good = proto::LinkCode {
        format_version: 1,
        signing_key: phone.code.signing_key().to_bytes().to_vec(),
        agreement_key: phone.code.agreement_key().to_bytes(),
        pairing_secret: phone.code.pairing_secret().expose().to_vec(),
        device_name: "phone".into(),
    };
    assert_eq!(
        LinkCode::parse(&encode(&good)).unwrap().device_name(),
        "phone"
    );
    let mut m = good.clone();
    m.device_name = "x".repeat(limits::MAX_DEVICE_NAME_BYTES + 1);
    assert!(matches!(
        LinkCode::parse(&encode(&m)),
        Err(BundleError::InvalidField {
            field: "device_name",
            ..
        })
    ));
    let mut m = good.clone();
    m.format_version = 2;
    assert_eq!(
        LinkCode::parse(&encode(&m)).unwrap_err(),
        BundleError::WrongFormatVersion { found: 2 }
    );
    let mut m = good.clone();
    m.signing_key.pop();
    assert!(matches!(
        LinkCode::parse(&encode(&m)),
        Err(BundleError::InvalidKey {
            field: "signing_key",
            ..
        })
    ));
    let mut m = good.clone();
    m.agreement_key.pop();
    assert!(matches!(
        LinkCode::parse(&encode(&m)),
        Err(BundleError::InvalidKey {
            field: "agreement_key",
            ..
        })
    ));
    let mut m = good;
    m.pairing_secret.pop();
    assert!(matches!(
        LinkCode::parse(&encode(&m)),
        Err(BundleError::InvalidField {
            field: "pairing_secret",
            ..
        })
    ));
}

#[test]
fn debug_prints_no_secrets() {
    let phone = new_phone();
    let bundle = bundle_for(&phone);
    let secret_hex = hex::encode(phone.code.pairing_secret().expose());
    assert!(!format!("{:?}", phone.code).contains(&secret_hex));
    let printed = format!("{bundle:?}");
    let key_hex = hex::encode(*bundle.account_key().to_secret_bytes());
    assert!(!printed.contains(&key_hex), "{printed}");
    let epoch_hex = hex::encode(bundle.epochs().get(1).unwrap().expose());
    assert!(!printed.contains(&epoch_hex), "{printed}");
}
