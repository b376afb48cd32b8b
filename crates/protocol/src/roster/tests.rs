use super::build::sign_body;
use super::*;
use crate::epoch::account_key_for_epoch;
use crate::keys::{DeviceAgreementKey, DeviceSigningKey, system_rng};

// kith-testkit's device builder, compiled into this crate (a dev-dependency on kith-testkit
// would bring a second copy of this crate, whose `NewDevice` is another type here).
#[path = "../../../testkit/src/account.rs"]
mod test_account;
use test_account::new_device;

struct Account {
    key: AccountSigningKey,
    keys: EpochKeys,
    roster: VerifiedRoster,
    devices: Vec<DeviceSigningKey>,
}

/// An account with `n` devices named `device-0`, `device-1`, …
fn account(n: usize) -> Account {
    let mut rng = system_rng();
    let key = AccountSigningKey::generate(&mut rng);
    let epoch1 = EpochSecret::generate(&mut rng);
    let (first_key, first) = new_device("device-0");
    let mut roster = VerifiedRoster::genesis(&key, first, &epoch1, 10, &mut rng).unwrap();
    let mut keys = EpochKeys::new(roster.account_id());
    keys.insert(1, epoch1).unwrap();
    let mut devices = vec![first_key];
    for i in 1..n {
        let (device_key, device) = new_device(&format!("device-{i}"));
        roster = roster
            .add_device(&key, device, &keys, 20, &mut rng)
            .unwrap();
        devices.push(device_key);
    }
    Account {
        key,
        keys,
        roster,
        devices,
    }
}

impl Account {
    /// Removes device `i`, rotating the account key and starting a new epoch.
    fn remove(&mut self, i: usize, final_seq: u64) {
        let mut rng = system_rng();
        let secret = EpochSecret::generate(&mut rng);
        let new_key = account_key_for_epoch(&self.roster.account_id(), &secret);
        let id = self.devices[i].device_id();
        self.roster = self
            .roster
            .remove_device(
                &self.key, &id, final_seq, &new_key, &secret, &self.keys, 30, &mut rng,
            )
            .unwrap();
        self.keys.insert(self.roster.epoch(), secret).unwrap();
        self.key = new_key;
    }

    /// The current body, to tamper with and re-sign (as a successor: it names the
    /// current roster as its predecessor).
    fn body(&self) -> proto::RosterBody {
        let mut body = proto::RosterBody::decode(
            proto::SignedRoster::decode(self.roster.encoded())
                .unwrap()
                .body
                .as_slice(),
        )
        .unwrap();
        body.prev_roster_hash = self.roster.hash().to_vec();
        body
    }
}

fn verify_body(
    body: &proto::RosterBody,
    key: &AccountSigningKey,
    prev: Option<&VerifiedRoster>,
) -> Result<VerifiedRoster, RosterError> {
    VerifiedRoster::verify(&sign_body(body, key), None, prev)
}

#[test]
fn every_epochs_secret_is_confirmed_against_its_rotation() {
    let mut a = account(4);
    a.remove(1, 0);
    a.remove(2, 0);
    assert_eq!(a.roster.epoch(), 3);
    for epoch in 1..=3 {
        let secret = a.keys.get(epoch).unwrap();
        let result = a.roster.confirm_epoch_secret_of(epoch, secret);
        if epoch == 1 {
            // No rotation introduced the first epoch's secret.
            assert_eq!(
                result,
                Err(RosterError::Verify(
                    RosterVerifyError::EpochSecretUnconfirmable { epoch }
                ))
            );
        } else {
            assert_eq!(result, Ok(()), "epoch {epoch}");
        }
    }
    let forged = EpochSecret::generate(&mut system_rng());
    assert_eq!(
        a.roster.confirm_epoch_secret_of(2, &forged),
        Err(RosterError::Verify(
            RosterVerifyError::EpochSecretMismatch { epoch: 2 }
        ))
    );
    // The secret of another epoch is not this one's either.
    assert_eq!(
        a.roster.confirm_epoch_secret_of(2, a.keys.get(3).unwrap()),
        Err(RosterError::Verify(
            RosterVerifyError::EpochSecretMismatch { epoch: 2 }
        ))
    );
    assert_eq!(
        a.roster.confirm_epoch_secret_of(4, a.keys.get(3).unwrap()),
        Err(RosterError::Verify(
            RosterVerifyError::EpochSecretUnconfirmable { epoch: 4 }
        ))
    );
    // Before any rotation, the first epoch is the current one: its names confirm it.
    let fresh = account(1);
    assert_eq!(
        fresh
            .roster
            .confirm_epoch_secret_of(1, fresh.keys.get(1).unwrap()),
        Ok(())
    );
    assert!(fresh.roster.confirm_epoch_secret_of(1, &forged).is_err());
}

#[test]
fn a_device_dropped_without_being_listed_as_removed_is_refused() {
    let a = account(3);
    let trusted = a.roster.clone();
    let mut body = a.body();
    body.version += 1;
    body.devices.remove(1);
    let result = verify_body(&body, &a.key, Some(&trusted));
    assert!(
        result.is_err(),
        "device-1 vanished without a removal entry: {result:?}"
    );
}

#[test]
fn a_roster_built_on_a_fork_of_the_trusted_one_is_refused() {
    let mut rng = system_rng();
    let a = account(1);
    // Two devices of the account each sign a successor of version 1: the relay keeps one
    // and shows the other to some devices.
    let (_, x) = new_device("x");
    let (_, y) = new_device("y");
    let with_x = a
        .roster
        .add_device(&a.key, x, &a.keys, 40, &mut rng)
        .unwrap();
    let with_y = a
        .roster
        .add_device(&a.key, y, &a.keys, 40, &mut rng)
        .unwrap();
    let (_, z) = new_device("z");
    let after_y = with_y.add_device(&a.key, z, &a.keys, 50, &mut rng).unwrap();
    // A device that trusts the version 2 with x must not accept a version 3 built on the
    // version 2 with y.
    let result = VerifiedRoster::verify(after_y.encoded(), None, Some(&with_x));
    assert!(result.is_err(), "a fork was accepted: {result:?}");
    // Built on the one it trusts, it is accepted.
    assert!(VerifiedRoster::verify(after_y.encoded(), None, Some(&with_y)).is_ok());
}

#[test]
fn genesis_roster_verifies_and_derives_its_account_id() {
    let a = account(1);
    let verified = VerifiedRoster::verify(a.roster.encoded(), None, None).unwrap();
    assert_eq!(verified, a.roster);
    assert_eq!(verified.account_id(), a.key.public().account_id());
    assert_eq!(
        (
            verified.version(),
            verified.epoch(),
            verified.device_count()
        ),
        (1, 1, 1)
    );
    assert_eq!(verified.genesis_key(), &a.key.public());
    assert_eq!(verified.current_account_key(), &a.key.public());
    assert_eq!(
        verified
            .device_name(&a.devices[0].device_id(), &a.keys)
            .unwrap(),
        "device-0"
    );
}

#[test]
fn names_are_sealed_to_a_fixed_length() {
    let mut rng = system_rng();
    let key = AccountSigningKey::generate(&mut rng);
    let epoch1 = EpochSecret::generate(&mut rng);
    for name in ["", "x", &"y".repeat(MAX_NAME_BYTES)] {
        let (_, device) = new_device(name);
        let roster = VerifiedRoster::genesis(&key, device, &epoch1, 1, &mut rng).unwrap();
        let entry = &roster.devices[0];
        assert_eq!(entry.encrypted_name.len(), SEALED_NAME_LEN);
        let mut keys = EpochKeys::new(roster.account_id());
        keys.insert(1, epoch1.clone()).unwrap();
        assert_eq!(roster.device_name(&entry.device_id, &keys).unwrap(), name);
    }
}

#[test]
fn long_names_are_refused() {
    let mut rng = system_rng();
    let key = AccountSigningKey::generate(&mut rng);
    let (_, device) = new_device(&"é".repeat(33));
    assert_eq!(
        VerifiedRoster::genesis(&key, device, &EpochSecret::generate(&mut rng), 1, &mut rng),
        Err(RosterError::Misuse(RosterMisuseError::NameTooLong {
            len: 66,
            max: 64
        }))
    );
}

#[test]
fn wrong_epoch_key_cannot_open_names() {
    let a = account(2);
    let mut other = EpochKeys::new(a.roster.account_id());
    other
        .insert(1, EpochSecret::generate(&mut system_rng()))
        .unwrap();
    let device = a.devices[1].device_id();
    assert_eq!(
        a.roster.device_name(&device, &other),
        Err(RosterError::Verify(RosterVerifyError::DeviceName {
            device,
            epoch: 1
        }))
    );
    let empty = EpochKeys::new(a.roster.account_id());
    assert_eq!(
        a.roster.device_name(&device, &empty),
        Err(RosterError::Misuse(RosterMisuseError::MissingEpochSecret {
            epoch: 1
        }))
    );
    let foreign = EpochKeys::new(AccountId::from_bytes([9; 32]));
    assert!(matches!(
        a.roster.device_name(&device, &foreign),
        Err(RosterError::Misuse(
            RosterMisuseError::EpochKeysAccountMismatch { .. }
        ))
    ));
    assert!(
        a.roster
            .confirm_epoch_secret(a.keys.get(1).unwrap())
            .is_ok()
    );
    assert!(matches!(
        a.roster.confirm_epoch_secret(other.get(1).unwrap()),
        Err(RosterError::Verify(RosterVerifyError::DeviceName {
            epoch: 1,
            ..
        }))
    ));
}

#[test]
fn add_device_checks_key_duplicates_and_limits() {
    let mut rng = system_rng();
    let a = account(2);
    let (_, again) = new_device("again");
    let mut duplicate = again.clone();
    duplicate.signing_key = a.devices[1].public();
    assert_eq!(
        a.roster.add_device(&a.key, duplicate, &a.keys, 1, &mut rng),
        Err(RosterError::Verify(RosterVerifyError::DuplicateDevice {
            device: a.devices[1].device_id()
        }))
    );
    let stranger = AccountSigningKey::generate(&mut rng);
    assert_eq!(
        a.roster
            .add_device(&stranger, again.clone(), &a.keys, 1, &mut rng),
        Err(RosterError::Misuse(RosterMisuseError::WrongAccountKey))
    );
    let next = a
        .roster
        .add_device(&a.key, again, &a.keys, 1, &mut rng)
        .unwrap();
    assert_eq!(
        (next.version(), next.device_count()),
        (a.roster.version() + 1, 3)
    );
}

#[test]
fn roster_is_full_at_max_devices() {
    let mut rng = system_rng();
    let a = account(1);
    let mut roster = a.roster.clone();
    for i in 1..limits::MAX_DEVICES {
        let (_, device) = new_device(&format!("d{i}"));
        roster = roster
            .add_device(&a.key, device, &a.keys, 1, &mut rng)
            .unwrap();
    }
    assert_eq!(roster.device_count(), limits::MAX_DEVICES);
    let (_, one_more) = new_device("one more");
    assert_eq!(
        roster.add_device(&a.key, one_more, &a.keys, 1, &mut rng),
        Err(RosterError::Misuse(RosterMisuseError::TooManyDevices {
            max: limits::MAX_DEVICES
        }))
    );
}

#[test]
fn removal_rotates_key_bumps_epoch_and_reseals_names() {
    let mut a = account(3);
    let old_key = a.key.public();
    let gone = a.devices[2].device_id();
    let before = a.roster.clone();
    a.remove(2, 17);
    let r = &a.roster;
    assert_eq!(
        (r.version(), r.epoch(), r.device_count()),
        (before.version() + 1, 2, 2)
    );
    assert_eq!(r.key_chain(), &[old_key, a.key.public()]);
    assert!(r.is_removed(&gone));
    assert_eq!(r.removed_device(&gone).unwrap().final_seq(), 17);
    for (i, device) in a.devices.iter().take(2).enumerate() {
        assert_eq!(
            r.device_name(&device.device_id(), &a.keys).unwrap(),
            format!("device-{i}")
        );
    }
    // Remaining devices learn the new account key from the new epoch secret.
    assert_eq!(
        r.derive_account_key(&a.keys).unwrap().public(),
        a.key.public()
    );
    assert_eq!(
        before.derive_account_key(&a.keys).unwrap_err(),
        RosterError::Misuse(RosterMisuseError::AccountKeyNotRotated)
    );
    // The removed device's history verifies up to final_seq, in old epochs only.
    assert!(r.writer_key(&gone, 17, 1).is_ok());
    assert_eq!(
        r.writer_key(&gone, 18, 1),
        Err(RosterError::Verify(RosterVerifyError::DeviceRemoved {
            device: gone,
            final_seq: 17
        }))
    );
    assert!(matches!(
        r.writer_key(&gone, 3, 2),
        Err(RosterError::Verify(
            RosterVerifyError::EpochNotAllowed { .. }
        ))
    ));
}

#[test]
fn remove_device_errors_are_precise() {
    let mut rng = system_rng();
    let mut a = account(2);
    let secret = EpochSecret::generate(&mut rng);
    let derived = account_key_for_epoch(&a.roster.account_id(), &secret);
    let random = AccountSigningKey::generate(&mut rng);
    let d1 = a.devices[1].device_id();
    let r = a.roster.clone();
    assert_eq!(
        r.remove_device(&a.key, &d1, 0, &random, &secret, &a.keys, 1, &mut rng),
        Err(RosterError::Misuse(
            RosterMisuseError::AccountKeyNotFromEpoch
        ))
    );
    assert_eq!(
        r.remove_device(&random, &d1, 0, &derived, &secret, &a.keys, 1, &mut rng),
        Err(RosterError::Misuse(RosterMisuseError::WrongAccountKey))
    );
    let unknown = DeviceId::from_bytes([5; 16]);
    assert_eq!(
        r.remove_device(&a.key, &unknown, 0, &derived, &secret, &a.keys, 1, &mut rng),
        Err(RosterError::Verify(RosterVerifyError::UnknownDevice {
            device: unknown
        }))
    );
    a.remove(1, 4);
    let d0 = a.devices[0].device_id();
    let secret = EpochSecret::generate(&mut rng);
    let derived = account_key_for_epoch(&a.roster.account_id(), &secret);
    assert_eq!(
        a.roster
            .remove_device(&a.key, &d0, 0, &derived, &secret, &a.keys, 1, &mut rng),
        Err(RosterError::Misuse(RosterMisuseError::LastDevice {
            device: d0
        }))
    );
    assert_eq!(
        a.roster
            .remove_device(&a.key, &d1, 0, &derived, &secret, &a.keys, 1, &mut rng),
        Err(RosterError::Verify(RosterVerifyError::DeviceRemoved {
            device: d1,
            final_seq: 4
        }))
    );
    let (_, back) = new_device("back");
    let mut back = back;
    back.signing_key = a.devices[1].public();
    assert_eq!(
        a.roster.add_device(&a.key, back, &a.keys, 1, &mut rng),
        Err(RosterError::Verify(
            RosterVerifyError::RemovedDeviceReturned { device: d1 }
        ))
    );
}

#[test]
fn writer_key_follows_membership_and_epochs() {
    let mut rng = system_rng();
    let mut a = account(2);
    let d0 = a.devices[0].device_id();
    a.remove(1, 9);
    // Added after the removal, in epoch 2.
    let (late_key, late) = new_device("late");
    a.roster = a
        .roster
        .add_device(&a.key, late, &a.keys, 1, &mut rng)
        .unwrap();
    let late_id = late_key.device_id();
    assert_eq!(
        a.roster.writer_key(&d0, 100, 1).unwrap(),
        &a.devices[0].public()
    );
    assert_eq!(
        a.roster.writer_key(&late_id, 1, 2).unwrap(),
        &late_key.public()
    );
    assert_eq!(
        a.roster.writer_key(&late_id, 1, 1),
        Err(RosterError::Verify(RosterVerifyError::EpochNotAllowed {
            device: late_id,
            epoch: 1,
            allowed_from: 2,
            allowed_to: 2
        }))
    );
    assert!(matches!(
        a.roster.writer_key(&d0, 1, 3),
        Err(RosterError::Verify(
            RosterVerifyError::EpochNotAllowed { .. }
        ))
    ));
    let stranger = DeviceId::from_bytes([1; 16]);
    assert_eq!(
        a.roster.writer_key(&stranger, 1, 1),
        Err(RosterError::Verify(RosterVerifyError::UnknownDevice {
            device: stranger
        }))
    );
}

#[test]
fn verify_step_1_bounds_and_format() {
    let a = account(1);
    let huge = vec![0u8; limits::MAX_ROSTER_BYTES + 1];
    assert_eq!(
        VerifiedRoster::verify(&huge, None, None),
        Err(RosterError::Decode(RosterDecodeError::TooLarge {
            len: huge.len(),
            max: limits::MAX_ROSTER_BYTES
        }))
    );
    assert!(matches!(
        VerifiedRoster::verify(&[0xff, 0xff], None, None),
        Err(RosterError::Decode(RosterDecodeError::Malformed(_)))
    ));
    let mut body = a.body();
    body.format_version = 2;
    assert_eq!(
        verify_body(&body, &a.key, None),
        Err(RosterError::Decode(RosterDecodeError::WrongFormatVersion {
            found: 2
        }))
    );
    let mut body = a.body();
    body.removed = vec![proto::RemovedDevice::default(); limits::MAX_REMOVED_DEVICES + 1];
    assert_eq!(
        verify_body(&body, &a.key, None),
        Err(RosterError::Decode(RosterDecodeError::TooManyEntries {
            list: "removed devices",
            count: 257,
            max: 256
        }))
    );
    let mut body = a.body();
    body.version = 0;
    assert!(matches!(
        verify_body(&body, &a.key, None),
        Err(RosterError::Decode(RosterDecodeError::InvalidField {
            field: "version",
            ..
        }))
    ));
    let mut body = a.body();
    body.devices.clear();
    assert!(matches!(
        verify_body(&body, &a.key, None),
        Err(RosterError::Decode(RosterDecodeError::InvalidField {
            field: "devices",
            ..
        }))
    ));
}

#[test]
fn verify_step_2_account_id() {
    let a = account(1);
    let other = AccountId::from_bytes([3; 32]);
    assert_eq!(
        VerifiedRoster::verify(a.roster.encoded(), Some(&other), None),
        Err(RosterError::Verify(RosterVerifyError::AccountIdMismatch {
            expected: other,
            found: a.roster.account_id()
        }))
    );
    let mut body = a.body();
    body.account_id = other.as_bytes().to_vec();
    assert_eq!(
        verify_body(&body, &a.key, None),
        Err(RosterError::Verify(RosterVerifyError::GenesisMismatch))
    );
    let mut body = a.body();
    body.genesis_key = vec![1; 31];
    assert!(matches!(
        verify_body(&body, &a.key, None),
        Err(RosterError::Decode(RosterDecodeError::InvalidKey {
            field: "genesis_key",
            ..
        }))
    ));
}

#[test]
fn verify_step_3_key_chain() {
    let mut a = account(3);
    a.remove(2, 1);
    a.remove(1, 1);
    let body = a.body();
    assert_eq!(body.key_chain.len(), 2);

    let mut swapped = body.clone();
    swapped.key_chain[1].roster_version = swapped.key_chain[0].roster_version;
    assert_eq!(
        verify_body(&swapped, &a.key, None),
        Err(RosterError::Verify(RosterVerifyError::RotationOrder {
            index: 1
        }))
    );

    let mut future = body.clone();
    future.key_chain[1].roster_version = body.version + 1;
    assert_eq!(
        verify_body(&future, &a.key, None),
        Err(RosterError::Verify(RosterVerifyError::RotationOrder {
            index: 1
        }))
    );

    let mut forged = body.clone();
    forged.key_chain[0].signature[3] ^= 1;
    assert_eq!(
        verify_body(&forged, &a.key, None),
        Err(RosterError::Verify(
            RosterVerifyError::BadRotationSignature { index: 0 }
        ))
    );

    let mut short = body;
    short.key_chain[1].signature.pop();
    assert_eq!(
        verify_body(&short, &a.key, None),
        Err(RosterError::Verify(
            RosterVerifyError::BadRotationSignature { index: 1 }
        ))
    );
}

#[test]
fn verify_step_4_signature_under_the_current_key_only() {
    let mut a = account(2);
    let genesis = a.key.clone();
    a.remove(1, 0);
    let body = a.body();
    assert!(verify_body(&body, &a.key, None).is_ok());
    assert_eq!(
        verify_body(&body, &genesis, None),
        Err(RosterError::Verify(RosterVerifyError::BadSignature))
    );
    let mut signed = proto::SignedRoster::decode(a.roster.encoded()).unwrap();
    signed.signature.truncate(10);
    assert_eq!(
        VerifiedRoster::verify(&signed.encode_to_vec(), None, None),
        Err(RosterError::Verify(RosterVerifyError::BadSignature))
    );
}

#[test]
fn verify_step_5_devices() {
    let mut a = account(3);
    a.remove(2, 0);
    let body = a.body();

    let mut duplicate = body.clone();
    duplicate.devices.push(body.devices[0].clone());
    let d0 = a.devices[0].device_id();
    assert_eq!(
        verify_body(&duplicate, &a.key, None),
        Err(RosterError::Verify(RosterVerifyError::DuplicateDevice {
            device: d0
        }))
    );

    let mut mismatch = body.clone();
    mismatch.devices[0].device_id = vec![7; 16];
    assert_eq!(
        verify_body(&mismatch, &a.key, None),
        Err(RosterError::Verify(RosterVerifyError::DeviceIdMismatch {
            device: DeviceId::from_bytes([7; 16])
        }))
    );

    let mut both = body.clone();
    both.removed[0].device_id = body.devices[1].device_id.clone();
    both.removed[0].signing_key = body.devices[1].signing_key.clone();
    let d1 = a.devices[1].device_id();
    assert_eq!(
        verify_body(&both, &a.key, None),
        Err(RosterError::Verify(RosterVerifyError::PresentAndRemoved {
            device: d1
        }))
    );

    let mut future = body.clone();
    future.devices[1].added_in_epoch = 3;
    assert_eq!(
        verify_body(&future, &a.key, None),
        Err(RosterError::Verify(RosterVerifyError::AddedInFutureEpoch {
            device: d1,
            added_in_epoch: 3,
            epoch: 2
        }))
    );

    let mut twice_removed = body.clone();
    twice_removed.removed.push(body.removed[0].clone());
    let d2 = a.devices[2].device_id();
    assert_eq!(
        verify_body(&twice_removed, &a.key, None),
        Err(RosterError::Verify(RosterVerifyError::DuplicateDevice {
            device: d2
        }))
    );

    let mut nonce = body.clone();
    nonce.devices[0].name_nonce.pop();
    assert!(matches!(
        verify_body(&nonce, &a.key, None),
        Err(RosterError::Decode(RosterDecodeError::InvalidField {
            field: "devices.name_nonce",
            ..
        }))
    ));

    let mut name = body.clone();
    name.devices[0].encrypted_name = vec![0; SEALED_NAME_LEN + 1];
    assert!(matches!(
        verify_body(&name, &a.key, None),
        Err(RosterError::Decode(RosterDecodeError::InvalidField {
            field: "devices.encrypted_name",
            ..
        }))
    ));

    let mut agreement = body;
    agreement.devices[0].agreement_key = vec![0; 12];
    assert!(matches!(
        verify_body(&agreement, &a.key, None),
        Err(RosterError::Decode(RosterDecodeError::InvalidKey {
            field: "devices.agreement_key",
            ..
        }))
    ));
}

#[test]
fn verify_step_6_against_the_trusted_roster() {
    let mut rng = system_rng();
    let mut a = account(3);
    let v_old = a.roster.clone();
    let old_key = a.key.clone();
    a.remove(2, 5);
    let trusted = a.roster.clone();
    let body = a.body();

    // Same version again, or older: rollback.
    assert_eq!(
        VerifiedRoster::verify(v_old.encoded(), None, Some(&trusted)),
        Err(RosterError::Verify(RosterVerifyError::Rollback {
            stored: trusted.version(),
            offered: v_old.version()
        }))
    );
    assert_eq!(
        VerifiedRoster::verify(trusted.encoded(), None, Some(&trusted)),
        Err(RosterError::Verify(RosterVerifyError::Rollback {
            stored: trusted.version(),
            offered: trusted.version()
        }))
    );

    // The revoked device kept the old account key and signs a newer roster with it.
    let mut forged = v_old.body();
    forged.version = trusted.version() + 1;
    assert_eq!(
        verify_body(&forged, &old_key, Some(&trusted)),
        Err(RosterError::Verify(RosterVerifyError::ChainNotExtended))
    );

    let mut backwards = body.clone();
    backwards.version += 1;
    backwards.epoch = 1;
    backwards
        .devices
        .iter_mut()
        .for_each(|d| d.added_in_epoch = 1);
    assert_eq!(
        verify_body(&backwards, &a.key, Some(&trusted)),
        Err(RosterError::Verify(RosterVerifyError::EpochWentBackwards {
            stored: 2,
            offered: 1
        }))
    );

    let gone = a.devices[2].device_id();
    let mut returned = body.clone();
    returned.version += 1;
    let back = returned.removed.remove(0);
    returned.devices.push(proto::DeviceEntry {
        device_id: back.device_id,
        signing_key: back.signing_key,
        agreement_key: DeviceAgreementKey::generate(&mut rng).public().to_bytes(),
        added_at_ms: 0,
        added_in_epoch: 2,
        name_nonce: vec![0; 24],
        encrypted_name: vec![0; SEALED_NAME_LEN],
    });
    assert_eq!(
        verify_body(&returned, &a.key, Some(&trusted)),
        Err(RosterError::Verify(
            RosterVerifyError::RemovedDeviceReturned { device: gone }
        ))
    );

    let mut forgotten = body.clone();
    forgotten.version += 1;
    forgotten.removed.clear();
    assert_eq!(
        verify_body(&forgotten, &a.key, Some(&trusted)),
        Err(RosterError::Verify(
            RosterVerifyError::RemovedDeviceChanged { device: gone }
        ))
    );

    let mut extended = body;
    extended.removed[0].final_seq = 99;
    extended.version += 1;
    assert_eq!(
        verify_body(&extended, &a.key, Some(&trusted)),
        Err(RosterError::Verify(
            RosterVerifyError::RemovedDeviceChanged { device: gone }
        ))
    );

    let other = account(1);
    assert_eq!(
        VerifiedRoster::verify(other.roster.encoded(), None, Some(&trusted)),
        Err(RosterError::Verify(RosterVerifyError::AccountIdMismatch {
            expected: trusted.account_id(),
            found: other.roster.account_id()
        }))
    );
}

#[test]
fn counters_that_would_overflow_are_errors() {
    let mut rng = system_rng();
    let a = account(2);
    let mut body = a.body();
    body.version = u64::MAX;
    let roster = verify_body(&body, &a.key, None).unwrap();
    let (_, device) = new_device("late");
    assert_eq!(
        roster.add_device(&a.key, device, &a.keys, 1, &mut rng),
        Err(RosterError::Misuse(RosterMisuseError::Overflow {
            field: "version"
        }))
    );
    let secret = EpochSecret::generate(&mut rng);
    let new_key = account_key_for_epoch(&roster.account_id(), &secret);
    let d1 = a.devices[1].device_id();
    assert_eq!(
        roster.remove_device(&a.key, &d1, 0, &new_key, &secret, &a.keys, 1, &mut rng),
        Err(RosterError::Misuse(RosterMisuseError::Overflow {
            field: "version"
        }))
    );
}

#[test]
fn debug_shows_ids_not_names() {
    let a = account(1);
    let printed = format!("{:?}", a.roster);
    assert!(!printed.contains("device-0"), "{printed}");
    assert!(
        printed.contains(&a.devices[0].device_id().to_hex()),
        "{printed}"
    );
    let (_, device) = new_device("secret name");
    assert!(!format!("{device:?}").contains("secret name"));
}
