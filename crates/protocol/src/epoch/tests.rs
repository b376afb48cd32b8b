use super::*;
use crate::keys::{DeviceSigningKey, system_rng};

struct Device {
    id: DeviceId,
    agreement: DeviceAgreementKey,
}

fn device() -> Device {
    let mut rng = system_rng();
    Device {
        id: DeviceSigningKey::generate(&mut rng).device_id(),
        agreement: DeviceAgreementKey::generate(&mut rng),
    }
}

fn sealed_to(device: &Device, account: &AccountId, epoch: u64) -> (Vec<u8>, EpochSecret) {
    let mut rng = system_rng();
    let secret = EpochSecret::generate(&mut rng);
    let bytes = seal_epoch_key(
        account,
        &device.id,
        &device.agreement.public(),
        epoch,
        &secret,
        &mut rng,
    );
    (bytes, secret)
}

#[test]
fn sealed_key_round_trips_and_peeks() {
    let account = AccountId::from_bytes([1; 32]);
    let d = device();
    let (bytes, secret) = sealed_to(&d, &account, 3);
    assert!(bytes.len() <= limits::MAX_SEALED_EPOCH_KEY_BYTES);
    assert_eq!(
        peek_sealed_epoch_key(&bytes).unwrap(),
        SealedEpochKeyView {
            account,
            recipient: d.id,
            epoch: 3
        }
    );
    assert_eq!(
        open_epoch_key(&bytes, &account, &d.id, &d.agreement).unwrap(),
        (3, secret)
    );
}

#[test]
fn sealed_key_for_another_account_or_device_is_a_precise_error() {
    let account = AccountId::from_bytes([1; 32]);
    let other_account = AccountId::from_bytes([2; 32]);
    let d = device();
    let other = device();
    let (bytes, _) = sealed_to(&d, &account, 1);
    assert_eq!(
        open_epoch_key(&bytes, &other_account, &d.id, &d.agreement),
        Err(EpochError::WrongAccount {
            expected: other_account,
            found: account
        })
    );
    assert_eq!(
        open_epoch_key(&bytes, &account, &other.id, &other.agreement),
        Err(EpochError::WrongRecipient {
            expected: other.id,
            found: d.id
        })
    );
}

#[test]
fn sealed_key_relabelled_for_another_device_does_not_decrypt() {
    // The relay rewrites the recipient so that another device tries to open it.
    let account = AccountId::from_bytes([1; 32]);
    let d = device();
    let other = device();
    let (bytes, _) = sealed_to(&d, &account, 1);
    let mut sealed = proto::SealedEpochKey::decode(bytes.as_slice()).unwrap();
    sealed.recipient_device_id = other.id.as_bytes().to_vec();
    let relabelled = sealed.encode_to_vec();
    assert_eq!(
        open_epoch_key(&relabelled, &account, &other.id, &other.agreement),
        Err(EpochError::DecryptFailed)
    );
}

#[test]
fn tampered_fields_are_rejected() {
    let account = AccountId::from_bytes([1; 32]);
    let d = device();
    let (bytes, _) = sealed_to(&d, &account, 4);
    let original = proto::SealedEpochKey::decode(bytes.as_slice()).unwrap();
    let open = |sealed: &proto::SealedEpochKey| {
        open_epoch_key(&sealed.encode_to_vec(), &account, &d.id, &d.agreement)
    };

    let mut other_epoch = original.clone();
    other_epoch.epoch = 5;
    assert_eq!(open(&other_epoch), Err(EpochError::DecryptFailed));

    let mut flipped = original.clone();
    flipped.ciphertext[0] ^= 1;
    assert_eq!(open(&flipped), Err(EpochError::DecryptFailed));

    let mut key_id = original.clone();
    key_id.key_id[0] ^= 1;
    assert_eq!(open(&key_id), Err(EpochError::DecryptFailed));

    let mut encapped = original.clone();
    encapped.encapped_key[100] ^= 1;
    assert_eq!(open(&encapped), Err(EpochError::DecryptFailed));

    let mut zero = original.clone();
    zero.epoch = 0;
    assert_eq!(open(&zero), Err(EpochError::EpochZero));

    let mut short = original;
    short.key_id.pop();
    assert_eq!(
        open(&short),
        Err(EpochError::BadLength {
            field: "key_id",
            expected: 16,
            actual: 15
        })
    );
}

#[test]
fn secret_that_does_not_match_its_key_id_is_a_precise_error() {
    // A sealer that commits to one secret and seals another.
    let mut rng = system_rng();
    let account = AccountId::from_bytes([1; 32]);
    let d = device();
    let committed = EpochSecret::generate(&mut rng);
    let sealed_secret = EpochSecret::generate(&mut rng);
    let key_id = committed.key_id(&account, 2);
    let info = sealed_key_info(&account, &d.id, 2, &key_id);
    let parts = hpke_seal(
        &d.agreement.public(),
        None,
        &info,
        sealed_secret.expose(),
        &mut rng,
    )
    .unwrap();
    let bytes = proto::SealedEpochKey {
        account_id: account.as_bytes().to_vec(),
        recipient_device_id: d.id.as_bytes().to_vec(),
        epoch: 2,
        key_id: key_id.to_vec(),
        encapped_key: parts.encapped_key,
        ciphertext: parts.ciphertext,
        signature: Vec::new(),
    }
    .encode_to_vec();
    assert_eq!(
        open_epoch_key(&bytes, &account, &d.id, &d.agreement),
        Err(EpochError::KeyIdMismatch { epoch: 2 })
    );
}

#[test]
fn garbage_and_oversized_input_are_errors() {
    let account = AccountId::from_bytes([1; 32]);
    let d = device();
    assert!(matches!(
        open_epoch_key(&[0xff; 10], &account, &d.id, &d.agreement),
        Err(EpochError::Malformed(_))
    ));
    assert_eq!(
        peek_sealed_epoch_key(&vec![0; limits::MAX_SEALED_EPOCH_KEY_BYTES + 1]),
        Err(EpochError::TooLarge {
            len: 2049,
            max: 2048
        })
    );
    assert_eq!(
        peek_sealed_epoch_key(&[]),
        Err(EpochError::BadLength {
            field: "account_id",
            expected: 32,
            actual: 0
        })
    );
}

#[test]
fn epoch_keys_refuse_a_second_secret_for_an_epoch() {
    let mut rng = system_rng();
    let mut keys = EpochKeys::new(AccountId::from_bytes([1; 32]));
    let first = EpochSecret::generate(&mut rng);
    keys.insert(1, first.clone()).unwrap();
    keys.insert(1, first).unwrap();
    assert_eq!(
        keys.insert(1, EpochSecret::generate(&mut rng)),
        Err(EpochError::ConflictingSecret { epoch: 1 })
    );
    assert_eq!(
        keys.insert(0, EpochSecret::generate(&mut rng)),
        Err(EpochError::EpochZero)
    );
    assert_eq!(keys.len(), 1);
}

#[test]
fn epoch_keys_derive_per_epoch_and_record_ids_from_epoch_one() {
    let mut rng = system_rng();
    let account = AccountId::from_bytes([1; 32]);
    let mut keys = EpochKeys::new(account);
    assert_eq!(
        keys.record_id_key().unwrap_err(),
        EpochError::UnknownEpoch { epoch: 1 }
    );
    assert!(keys.latest().is_none());
    let one = EpochSecret::generate(&mut rng);
    let two = EpochSecret::generate(&mut rng);
    keys.insert(2, two.clone()).unwrap();
    keys.insert(1, one.clone()).unwrap();
    assert_eq!(
        keys.latest().map(|(e, s)| (e, s.clone())),
        Some((2, two.clone()))
    );
    assert_eq!(keys.content_key(2).unwrap(), two.content_key(&account));
    assert_eq!(
        keys.device_name_key(1).unwrap(),
        one.device_name_key(&account)
    );
    assert_eq!(keys.record_id_key().unwrap(), one.record_id_key(&account));
    assert_eq!(keys.iter().map(|(e, _)| e).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(
        keys.device_name_key(3).unwrap_err(),
        EpochError::UnknownEpoch { epoch: 3 }
    );
}

#[test]
fn debug_prints_no_secret() {
    let mut keys = EpochKeys::new(AccountId::from_bytes([1; 32]));
    let secret = EpochSecret::from_slice(&[0xab; 32]).unwrap();
    keys.insert(1, secret).unwrap();
    let printed = format!("{keys:?}");
    assert!(!printed.contains("abab"), "{printed}");
    assert!(printed.contains("epochs: [1]"), "{printed}");
}

#[test]
fn rotated_account_key_depends_on_account_and_secret() {
    let secret = EpochSecret::from_slice(&[3; 32]).unwrap();
    let a = account_key_for_epoch(&AccountId::from_bytes([1; 32]), &secret).public();
    let b = account_key_for_epoch(&AccountId::from_bytes([2; 32]), &secret).public();
    let again = account_key_for_epoch(&AccountId::from_bytes([1; 32]), &secret).public();
    assert_ne!(a, b);
    assert_eq!(a, again);
}
