//! What a roster shows the relay in plaintext (docs/PROTOCOL.md §11): ids, keys, versions and
//! epochs, never when a device was added or a roster written.

mod common;

use common::new_device;
use kith_protocol::epoch::{EpochKeys, account_key_for_epoch};
use kith_protocol::keys::{AccountSigningKey, EpochSecret, system_rng};
use kith_protocol::proto;
use kith_protocol::roster::VerifiedRoster;
use prost::Message;

fn body(roster: &VerifiedRoster) -> proto::RosterBody {
    let signed = proto::SignedRoster::decode(roster.encoded()).unwrap();
    proto::RosterBody::decode(signed.body.as_slice()).unwrap()
}

fn assert_no_timestamps(roster: &VerifiedRoster, what: &str) {
    let body = body(roster);
    assert_eq!(body.created_at_ms, 0, "{what}: created_at_ms in plaintext");
    for device in &body.devices {
        assert_eq!(device.added_at_ms, 0, "{what}: added_at_ms in plaintext");
    }
}

#[test]
fn rosters_carry_no_plaintext_timestamps() {
    let mut rng = system_rng();
    let key = AccountSigningKey::generate(&mut rng);
    let epoch1 = EpochSecret::generate(&mut rng);
    let (phone_key, phone) = new_device("phone");
    let now = 1_765_000_000_000;
    let genesis = VerifiedRoster::genesis(&key, phone, &epoch1, now, &mut rng).unwrap();
    assert_no_timestamps(&genesis, "genesis");
    let mut keys = EpochKeys::new(genesis.account_id());
    keys.insert(1, epoch1).unwrap();
    let (_, laptop) = new_device("laptop");
    let added = genesis
        .add_device(&key, laptop, &keys, now + 1000, &mut rng)
        .unwrap();
    assert_no_timestamps(&added, "a device added");
    let secret = EpochSecret::generate(&mut rng);
    let new_key = account_key_for_epoch(&added.account_id(), &secret);
    let removed = added
        .remove_device(
            &key,
            &phone_key.device_id(),
            0,
            &new_key,
            &secret,
            &keys,
            now + 2000,
            &mut rng,
        )
        .unwrap();
    assert_no_timestamps(&removed, "a device removed");
}

#[test]
fn rosters_of_older_writers_with_timestamps_still_verify() {
    // 0.1.0 wrote both timestamps; its rosters must keep verifying.
    let mut rng = system_rng();
    let key = AccountSigningKey::generate(&mut rng);
    let (_, phone) = new_device("phone");
    let genesis =
        VerifiedRoster::genesis(&key, phone, &EpochSecret::generate(&mut rng), 5, &mut rng)
            .unwrap();
    let mut old = body(&genesis);
    old.created_at_ms = 1_700_000_000_000;
    old.devices[0].added_at_ms = 1_700_000_000_000;
    let encoded = old.encode_to_vec();
    let signature = key
        .sign(
            kith_protocol::encoding::labels::ROSTER_SIGNATURE,
            &[&encoded],
        )
        .to_bytes()
        .to_vec();
    let signed = proto::SignedRoster {
        body: encoded,
        signature,
    }
    .encode_to_vec();
    VerifiedRoster::verify(&signed, Some(&genesis.account_id()), None).unwrap();
}
