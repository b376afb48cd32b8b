//! Property tests of the roster (docs/PROTOCOL.md §4): what verification accepts and refuses.

use std::sync::OnceLock;

use kith_protocol::encoding::labels;
use kith_protocol::epoch::{EpochKeys, account_key_for_epoch};
use kith_protocol::keys::{AccountSigningKey, DeviceSigningKey, EpochSecret, system_rng};
use kith_protocol::proto;
use kith_protocol::roster::{RosterError, RosterVerifyError, VerifiedRoster};
use kith_testkit::new_device;
use proptest::prelude::*;
use prost::Message;

/// An account's life: every roster it went through, oldest first, with the keys of each step.
struct History {
    rosters: Vec<VerifiedRoster>,
    /// The account key that signed each roster.
    signers: Vec<AccountSigningKey>,
    keys: EpochKeys,
    devices: Vec<DeviceSigningKey>,
}

/// `ops[i]` = true adds a device, false removes the oldest remaining one (when more than one).
fn history(ops: &[bool]) -> History {
    let mut rng = system_rng();
    let mut key = AccountSigningKey::generate(&mut rng);
    let epoch1 = EpochSecret::generate(&mut rng);
    let (first_key, first) = new_device("first");
    let genesis = VerifiedRoster::genesis(&key, first, &epoch1, 1, &mut rng).unwrap();
    let mut keys = EpochKeys::new(genesis.account_id());
    keys.insert(1, epoch1).unwrap();
    let mut rosters = vec![genesis];
    let mut signers = vec![key.clone()];
    let mut devices = vec![first_key];
    let mut present: Vec<usize> = vec![0];
    for (step, add) in ops.iter().enumerate() {
        let roster = rosters.last().unwrap();
        let next = if *add || present.len() == 1 {
            let (device_key, device) = new_device(&format!("device {step}"));
            devices.push(device_key);
            present.push(devices.len() - 1);
            roster
                .add_device(&key, device, &keys, step as u64, &mut rng)
                .unwrap()
        } else {
            let gone = present.remove(0);
            let secret = EpochSecret::generate(&mut rng);
            let new_key = account_key_for_epoch(&roster.account_id(), &secret);
            let next = roster
                .remove_device(
                    &key,
                    &devices[gone].device_id(),
                    step as u64,
                    &new_key,
                    &secret,
                    &keys,
                    step as u64,
                    &mut rng,
                )
                .unwrap();
            keys.insert(next.epoch(), secret).unwrap();
            key = new_key;
            next
        };
        rosters.push(next);
        signers.push(key.clone());
    }
    History {
        rosters,
        signers,
        keys,
        devices,
    }
}

/// One fixed history with two removals, shared by the cheaper properties.
fn fixed() -> &'static History {
    static HISTORY: OnceLock<History> = OnceLock::new();
    HISTORY.get_or_init(|| history(&[true, true, false, true, false]))
}

fn body_of(roster: &VerifiedRoster) -> proto::RosterBody {
    let signed = proto::SignedRoster::decode(roster.encoded()).unwrap();
    proto::RosterBody::decode(signed.body.as_slice()).unwrap()
}

fn sign(body: &proto::RosterBody, key: &AccountSigningKey) -> Vec<u8> {
    let body = body.encode_to_vec();
    let signature = key
        .sign(labels::ROSTER_SIGNATURE, &[&body])
        .to_bytes()
        .to_vec();
    proto::SignedRoster { body, signature }.encode_to_vec()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Every roster a builder produces verifies as a first roster and as the successor of the
    /// one before it, and verifying it again gives the same roster.
    #[test]
    fn built_rosters_verify_in_sequence(ops in proptest::collection::vec(any::<bool>(), 0..8)) {
        let h = history(&ops);
        let account = h.rosters[0].account_id();
        for (i, roster) in h.rosters.iter().enumerate() {
            let alone = VerifiedRoster::verify(roster.encoded(), Some(&account), None).unwrap();
            prop_assert_eq!(&alone, roster);
            if i > 0 {
                let chained =
                    VerifiedRoster::verify(roster.encoded(), None, Some(&h.rosters[i - 1])).unwrap();
                prop_assert_eq!(&chained, roster);
            }
            prop_assert_eq!(roster.current_account_key(), &h.signers[i].public());
            for device in roster.devices() {
                prop_assert!(roster.device_name(&device.device_id(), &h.keys).is_ok());
            }
        }
        // Any later roster extends any earlier one.
        let last = h.rosters.last().unwrap();
        prop_assert!(VerifiedRoster::verify(last.encoded(), None, Some(&h.rosters[0])).is_ok()
            || h.rosters.len() == 1);
    }

    /// An older (or the same) roster offered after a newer one is a rollback.
    #[test]
    fn rollback_is_refused(older in 0usize..6, newer in 0usize..6) {
        let h = fixed();
        prop_assume!(older <= newer);
        let (old, new) = (&h.rosters[older], &h.rosters[newer]);
        prop_assert_eq!(
            VerifiedRoster::verify(old.encoded(), None, Some(new)),
            Err(RosterError::Verify(RosterVerifyError::Rollback { stored: new.version(), offered: old.version() }))
        );
    }

    /// A device removed while the account key rotated keeps the old account key. Whatever it
    /// signs with that key — a newer version of an old roster, a re-signed current roster, or a
    /// chain forked at its own rotation — no holder of the current roster accepts it.
    #[test]
    fn removed_device_with_the_old_key_cannot_produce_an_accepted_roster(
        ahead in 1u64..1000,
        strategy in 0u8..3,
        readd in any::<bool>(),
    ) {
        let h = fixed();
        // Rosters 3 and 5 are removals; the device removed at 3 held the key of roster 2.
        let trusted = &h.rosters[3];
        let old_key = &h.signers[2];
        prop_assert_ne!(old_key.public(), h.signers[3].public());
        let mut body = match strategy {
            0 => body_of(&h.rosters[2]),
            1 => body_of(trusted),
            _ => {
                let mut fork = body_of(&h.rosters[2]);
                let own = AccountSigningKey::generate(&mut system_rng());
                let version = trusted.version() + ahead;
                let account = trusted.account_id();
                let signature = old_key.sign(
                    labels::ACCOUNT_KEY_ROTATION,
                    &[account.as_bytes(), &version.to_be_bytes(), own.public().as_bytes()],
                );
                fork.key_chain.push(proto::AccountKeyRotation {
                    roster_version: version,
                    new_key: own.public().to_bytes().to_vec(),
                    signature: signature.to_bytes().to_vec(),
                });
                fork.version = version;
                fork.epoch = trusted.epoch();
                let bytes = sign(&fork, &own);
                prop_assert_eq!(
                    VerifiedRoster::verify(&bytes, None, Some(trusted)),
                    Err(RosterError::Verify(RosterVerifyError::ChainNotExtended))
                );
                return Ok(());
            }
        };
        body.version = trusted.version() + ahead;
        if readd {
            body.removed.clear();
        }
        let result = VerifiedRoster::verify(&sign(&body, old_key), None, Some(trusted));
        prop_assert!(
            matches!(
                result,
                Err(RosterError::Verify(
                    RosterVerifyError::ChainNotExtended | RosterVerifyError::BadSignature
                ))
            ),
            "{:?}", result
        );
        // Against the relay's stored roster and against any later one alike.
        let latest = h.rosters.last().unwrap();
        prop_assert!(VerifiedRoster::verify(&sign(&body, old_key), None, Some(latest)).is_err());
    }

    /// A trusted chain must be a prefix of the offered one: dropping, replacing or reordering
    /// rotations (even with valid signatures from a fork) is refused.
    #[test]
    fn trusted_key_chain_must_be_a_prefix(cut in 0usize..2) {
        let h = fixed();
        let trusted = h.rosters.last().unwrap();
        let mut body = body_of(trusted);
        body.key_chain.truncate(cut);
        body.version += 1;
        let signer = &h.signers[if cut == 0 { 0 } else { 3 }];
        prop_assert_eq!(
            VerifiedRoster::verify(&sign(&body, signer), None, Some(trusted)),
            Err(RosterError::Verify(RosterVerifyError::ChainNotExtended))
        );
    }

    /// Flipping any bit of the signed body breaks verification.
    #[test]
    fn flipped_body_bit_fails_verification(index in any::<prop::sample::Index>(), bit in 0u8..8) {
        let h = fixed();
        let roster = h.rosters.last().unwrap();
        let mut signed = proto::SignedRoster::decode(roster.encoded()).unwrap();
        let at = index.index(signed.body.len());
        signed.body[at] ^= 1 << bit;
        prop_assert!(VerifiedRoster::verify(&signed.encode_to_vec(), None, None).is_err());
    }

    /// Flipping any bit of the encoded signed roster breaks verification (or, where the flip
    /// only touches protobuf framing that decodes to the same fields, changes nothing).
    #[test]
    fn flipped_roster_bit_fails_verification(index in any::<prop::sample::Index>(), bit in 0u8..8) {
        let h = fixed();
        let roster = h.rosters.last().unwrap();
        let mut bytes = roster.encoded().to_vec();
        let at = index.index(bytes.len());
        bytes[at] ^= 1 << bit;
        match VerifiedRoster::verify(&bytes, None, None) {
            Err(_) => {}
            Ok(same) => {
                prop_assert_eq!(same.version(), roster.version());
                prop_assert_eq!(same.key_chain(), roster.key_chain());
                prop_assert_eq!(same.devices().collect::<Vec<_>>(), roster.devices().collect::<Vec<_>>());
            }
        }
    }

    /// Arbitrary bytes never panic the verifier.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = VerifiedRoster::verify(&bytes, None, None);
        let _ = VerifiedRoster::verify(&bytes, None, Some(&fixed().rosters[0]));
    }
}

#[test]
fn removed_devices_history_stays_valid_only_up_to_final_seq() {
    let h = fixed();
    let latest = h.rosters.last().unwrap();
    for removed in latest.removed() {
        let id = removed.device_id();
        assert!(latest.writer_key(&id, removed.final_seq(), 1).is_ok());
        assert_eq!(
            latest.writer_key(&id, removed.final_seq() + 1, 1),
            Err(RosterError::Verify(RosterVerifyError::DeviceRemoved {
                device: id,
                final_seq: removed.final_seq()
            }))
        );
    }
    assert_eq!(latest.removed().count(), 2);
    assert!(h.devices.len() >= 4);
}
