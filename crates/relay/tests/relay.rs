//! The relay over real QUIC on loopback: accounts, authentication, push/pull, limits, pairing,
//! recovery, deletion, subscriptions and hostile input.

mod common;

use std::time::Duration;

use common::{
    TestAccount, TestDevice, TestRelay, assert_refused, bounded, code, envelope, envelope_with,
    envelopes,
};
use kith_protocol::auth::{sign_account_deletion, sign_relay_auth};
use kith_protocol::keys::{AccountSigningKey, system_rng};
use kith_protocol::proto::{self, Cursor, ErrorCode, request, response};
use kith_relay::RegistrationMode;
use kith_relay::client::{RelayClient, RelayClientError};
use prost::Message;

async fn authenticate_raw(
    client: &RelayClient,
    account: &TestAccount,
    device: usize,
    exporter: [u8; 32],
) -> Result<(), RelayClientError> {
    let nonce = client.challenge().await?;
    let key = account.device(device);
    let signature = sign_relay_auth(key, &exporter, &nonce, &account.id, &key.device_id());
    client
        .expect_ok(request::Kind::Authenticate(proto::Authenticate {
            account_id: account.id.as_bytes().to_vec(),
            device_id: key.device_id().as_bytes().to_vec(),
            signature: signature.to_bytes().to_vec(),
        }))
        .await
}

#[tokio::test]
async fn open_registration_creates_the_account_and_authenticates_its_device() {
    bounded(async {
        let (relay, account, client) = TestRelay::with_account(2).await;
        let roster = match client
            .request(request::Kind::GetRoster(proto::GetRoster {}))
            .await
            .unwrap()
        {
            response::Kind::Roster(r) => r.roster,
            other => panic!("{other:?}"),
        };
        assert_eq!(roster, account.roster());
        // Creating it again is refused.
        let again = relay.connect().await;
        let err = again
            .create_account(account.roster(), account.device(1), &account.id, None)
            .await;
        assert_refused(err, ErrorCode::AccountExists);
        // The second device authenticates on its own connection.
        relay.connect_as(&account, 1).await;
        relay.stop().await;
    })
    .await;
}

#[tokio::test]
async fn token_registration_needs_a_single_use_token() {
    bounded(async {
        let relay = TestRelay::start_with(|c| c.registration = RegistrationMode::Token).await;
        let client = relay.connect().await;
        let account = TestAccount::new(1);
        let err = account.register(&client, None).await;
        assert_refused(err, ErrorCode::RegistrationClosed);
        let err = account.register(&client, Some("nope")).await;
        assert_refused(err, ErrorCode::RegistrationClosed);

        // What `kith-relay token create` does while the relay runs: a file in the inbox.
        let token = "0123456789abcdef0123456789abcdef";
        relay.issue_token(token);
        account.register(&client, Some(token)).await.unwrap();
        let other = TestAccount::new(1);
        let err = other.register(&client, Some(token)).await;
        assert_eq!(
            code(err),
            ErrorCode::RegistrationClosed,
            "a token is single-use"
        );
        relay.stop().await;
    })
    .await;
}

/// Asserts that an authentication was refused as every failure before a verified signature
/// is: `BAD_SIGNATURE` with the same message, whatever was wrong.
fn refused_alike(result: Result<(), RelayClientError>, what: &str) {
    match result {
        Err(RelayClientError::Refused { code, message }) => {
            assert_eq!(code, ErrorCode::BadSignature, "{what}: {message}");
            assert_eq!(message, "authentication failed", "{what}");
        }
        other => panic!("{what}: expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn authentication_tells_nothing_before_the_signature_verifies() {
    bounded(async {
        let (relay, mut account, owner) = TestRelay::with_account(3).await;
        let other = TestAccount::new(1);
        other.create(&relay.connect().await).await;

        let client = relay.connect().await;
        // A request that needs authentication, before it.
        let err = client.push(account.envelopes(0, 1, 1, 10)).await;
        assert_refused(err, ErrorCode::Unauthenticated);
        // No challenge.
        let err = client
            .expect_ok(request::Kind::Authenticate(proto::Authenticate {
                account_id: account.id.as_bytes().to_vec(),
                device_id: account.device(0).device_id().as_bytes().to_vec(),
                signature: vec![0; 64],
            }))
            .await;
        assert_refused(err, ErrorCode::NoChallenge);
        // An outsider probing which accounts and devices exist learns nothing: an unknown
        // device (a key not in the roster), a device of another account, an unknown account
        // and a forged signature are all answered alike.
        let stranger = TestDevice::new();
        refused_alike(
            client.authenticate(&stranger.key, &account.id).await,
            "unknown device",
        );
        refused_alike(
            client.authenticate(other.device(0), &account.id).await,
            "another account's device",
        );
        let nobody = TestAccount::new(1);
        refused_alike(
            client.authenticate(nobody.device(0), &nobody.id).await,
            "unknown account",
        );
        let nonce = client.challenge().await.unwrap();
        let forged = sign_relay_auth(
            &stranger.key,
            &client.exporter().unwrap(),
            &nonce,
            &account.id,
            &account.device(0).device_id(),
        );
        refused_alike(
            client
                .expect_ok(request::Kind::Authenticate(proto::Authenticate {
                    account_id: account.id.as_bytes().to_vec(),
                    device_id: account.device(0).device_id().as_bytes().to_vec(),
                    signature: forged.to_bytes().to_vec(),
                }))
                .await,
            "forged signature",
        );
        // The exporter of another TLS session: a relayed signature.
        let elsewhere = relay.connect().await;
        refused_alike(
            authenticate_raw(&client, &account, 0, elsewhere.exporter().unwrap()).await,
            "relayed signature",
        );
        // A challenge answers one attempt only: replaying the same nonce needs a new challenge.
        authenticate_raw(&client, &account, 0, client.exporter().unwrap())
            .await
            .unwrap();

        // A removed device is told so once its own signature verified (with the key the
        // roster's removed list keeps), at authentication and on its live connection; anyone
        // else naming it is answered as every other failure.
        let live = relay.connect_as(&account, 2).await;
        let removed = account.remove_device(2);
        owner
            .expect_ok(request::Kind::PutRoster(proto::PutRoster {
                roster: account.roster(),
            }))
            .await
            .unwrap();
        let fresh = relay.connect().await;
        assert_refused(
            fresh.authenticate(&removed.key, &account.id).await,
            ErrorCode::DeviceRemoved,
        );
        let nonce = fresh.challenge().await.unwrap();
        let impostor = sign_relay_auth(
            &stranger.key,
            &fresh.exporter().unwrap(),
            &nonce,
            &account.id,
            &removed.id(),
        );
        refused_alike(
            fresh
                .expect_ok(request::Kind::Authenticate(proto::Authenticate {
                    account_id: account.id.as_bytes().to_vec(),
                    device_id: removed.id().as_bytes().to_vec(),
                    signature: impostor.to_bytes().to_vec(),
                }))
                .await,
            "a removed device's id with another key's signature",
        );
        let err = live
            .push(envelopes(&account.id, &removed.id(), 1, 1, 10))
            .await;
        assert_refused(err, ErrorCode::DeviceRemoved);
        relay.stop().await;
    })
    .await;
}

#[tokio::test]
async fn failed_authentications_are_rate_limited_per_source_address() {
    bounded(async {
        let relay = TestRelay::start_with(|c| c.bounds.auth_failures_per_minute = 3).await;
        let account = TestAccount::new(1);
        account.create(&relay.connect().await).await;
        let guesser = relay.connect().await;
        let stranger = TestDevice::new();
        for attempt in 0..3 {
            refused_alike(
                guesser.authenticate(&stranger.key, &account.id).await,
                &format!("guess {attempt}"),
            );
        }
        // The address spent its failures: even a valid signature from it is refused,
        // unverified, until the bucket refills.
        assert_refused(
            guesser.authenticate(account.device(0), &account.id).await,
            ErrorCode::RateLimited,
        );
        assert_eq!(
            code(relay.authenticate_afresh(&account, 0).await),
            ErrorCode::RateLimited,
            "a new connection from the same address changes nothing"
        );
        // Another source address is not affected.
        let elsewhere = kith_relay::client::RelayClient::connect_from(
            "127.0.0.2:0".parse().unwrap(),
            relay.handle.local_addr(),
            relay.handle.cert_sha256(),
        )
        .await
        .unwrap();
        elsewhere
            .authenticate(account.device(0), &account.id)
            .await
            .unwrap();
        relay.stop().await;
    })
    .await;
}

#[tokio::test]
async fn pushed_envelopes_come_back_in_pages() {
    bounded(async {
        let (relay, account, a) = TestRelay::with_account(2).await;
        let b = relay.connect_as(&account, 1).await;
        let (da, db) = (account.device(0).device_id(), account.device(1).device_id());
        assert_eq!(
            a.push(envelopes(&account.id, &da, 1, 100, 500))
                .await
                .unwrap(),
            100
        );
        assert_eq!(
            a.push(envelopes(&account.id, &da, 101, 50, 500))
                .await
                .unwrap(),
            150
        );
        assert_eq!(
            b.push(envelopes(&account.id, &db, 1, 30, 200))
                .await
                .unwrap(),
            30
        );

        let mut cursors = std::collections::HashMap::new();
        let mut got = Vec::new();
        let mut pages = 0;
        loop {
            let list = cursors
                .iter()
                .map(|(d, s): (&Vec<u8>, &u64)| Cursor {
                    device_id: d.clone(),
                    after_seq: *s,
                })
                .collect();
            let page = b.pull(list, 40, 0).await.unwrap();
            assert!(page.envelopes.len() <= 40);
            for e in &page.envelopes {
                cursors.insert(e.device_id.clone(), e.seq);
                got.push((e.device_id.clone(), e.seq, e.envelope.clone()));
            }
            pages += 1;
            if !page.more {
                let mut info: Vec<_> = page
                    .streams
                    .iter()
                    .map(|s| (s.device_id.clone(), s.first_seq, s.last_seq))
                    .collect();
                info.sort();
                let mut want = vec![
                    (da.as_bytes().to_vec(), 1, 150),
                    (db.as_bytes().to_vec(), 1, 30),
                ];
                want.sort();
                assert_eq!(info, want);
                break;
            }
        }
        assert_eq!(got.len(), 180);
        assert!(pages >= 5);
        for (device, seq, bytes) in &got {
            let size = if *device == da.as_bytes() { 500 } else { 200 };
            let d = kith_protocol::ids::DeviceId::from_slice(device).unwrap();
            assert_eq!(*bytes, envelope(&account.id, &d, *seq, size));
        }
        // A byte bound also pages, and a page always holds at least one envelope.
        let page = b.pull(vec![], 0, 1).await.unwrap();
        assert_eq!(page.envelopes.len(), 1);
        assert!(page.more);
        relay.stop().await;
    })
    .await;
}

#[tokio::test]
async fn seq_gaps_and_conflicts_are_refused_and_identical_retransmits_acked() {
    bounded(async {
        let (relay, account, client) = TestRelay::with_account(2).await;
        let d = account.device(0).device_id();
        client
            .push(envelopes(&account.id, &d, 1, 10, 100))
            .await
            .unwrap();
        assert_refused(
            client.push(envelopes(&account.id, &d, 12, 1, 100)).await,
            ErrorCode::SeqGap,
        );
        // Identical retransmit, partly overlapping new seqs: acked, the new part stored.
        assert_eq!(
            client
                .push(envelopes(&account.id, &d, 9, 4, 100))
                .await
                .unwrap(),
            12
        );
        assert_eq!(
            client
                .push(envelopes(&account.id, &d, 5, 2, 100))
                .await
                .unwrap(),
            6
        );
        // A different envelope at a stored seq.
        let conflict = vec![envelope_with(&account.id, &d, 12, 100, 0xee)];
        assert_refused(client.push(conflict).await, ErrorCode::SeqConflict);
        // Non-consecutive seqs inside a batch, seq 0, headers naming another stream.
        let mut batch = envelopes(&account.id, &d, 13, 2, 100);
        batch.swap(0, 1);
        assert_refused(client.push(batch).await, ErrorCode::InvalidRequest);
        let other = account.device(1).device_id();
        assert_refused(
            client.push(envelopes(&account.id, &other, 13, 1, 10)).await,
            ErrorCode::WrongStream,
        );
        let foreign = TestAccount::new(1);
        assert_refused(
            client.push(envelopes(&foreign.id, &d, 13, 1, 10)).await,
            ErrorCode::WrongStream,
        );
        assert_refused(
            client.push(vec![b"not an envelope".to_vec()]).await,
            ErrorCode::Malformed,
        );
        let page = client.pull(vec![], 0, 0).await.unwrap();
        assert_eq!(page.envelopes.len(), 12);
        relay.stop().await;
    })
    .await;
}

#[tokio::test]
async fn oversized_batches_envelopes_and_frames_are_refused() {
    bounded(async {
        let (relay, account, client) = TestRelay::start_with_account(1, |c| {
            c.bounds.max_batch_envelopes = 10;
            c.bounds.max_envelope_bytes = 2500;
            c.bounds.max_frame_bytes = 16 * 1024;
            c.bounds.pull_max_bytes = 8 * 1024;
        })
        .await;
        let d = account.device(0).device_id();
        assert_refused(
            client.push(envelopes(&account.id, &d, 1, 11, 10)).await,
            ErrorCode::BatchTooLarge,
        );
        assert_refused(
            client.push(envelopes(&account.id, &d, 1, 1, 3000)).await,
            ErrorCode::EnvelopeTooLarge,
        );
        // The connection still works after those refusals.
        assert_eq!(
            client
                .push(envelopes(&account.id, &d, 1, 5, 1000))
                .await
                .unwrap(),
            5
        );
        // A frame longer than `max_frame_bytes` closes the connection (§12).
        assert!(
            client
                .push(envelopes(&account.id, &d, 6, 10, 1900))
                .await
                .is_err()
        );
        assert!(matches!(
            client.connection().closed().await,
            quinn::ConnectionError::ApplicationClosed(close)
                if close.error_code == kith_relay::server::FRAME_TOO_LARGE.into()
        ));
        let client = relay.connect().await;
        client
            .authenticate(account.device(0), &account.id)
            .await
            .unwrap();
        assert_eq!(
            client
                .push(envelopes(&account.id, &d, 6, 5, 1000))
                .await
                .unwrap(),
            10
        );
        relay.stop().await;
    })
    .await;
}

#[tokio::test]
async fn the_quota_and_the_device_limit_are_enforced() {
    bounded(async {
        let (relay, mut account, client) = TestRelay::start_with_account(2, |c| {
            c.bounds.max_account_bytes = 10_000;
            c.bounds.max_devices_per_account = 2;
        })
        .await;
        let d = account.device(0).device_id();
        client
            .push(envelopes(&account.id, &d, 1, 8, 1000))
            .await
            .unwrap();
        assert_refused(
            client.push(envelopes(&account.id, &d, 9, 2, 1000)).await,
            ErrorCode::QuotaExceeded,
        );
        let usage = match client
            .request(request::Kind::GetUsage(proto::GetUsage {}))
            .await
            .unwrap()
        {
            response::Kind::Usage(u) => u,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            (
                usage.envelopes,
                usage.devices,
                usage.devices_max,
                usage.bytes_quota
            ),
            (8, 2, 2, 10_000)
        );
        assert!(usage.bytes_used > 8000 && usage.bytes_used <= 10_000);

        account.devices.push(TestDevice::new());
        account.version += 1;
        let err = client
            .expect_ok(request::Kind::PutRoster(proto::PutRoster {
                roster: account.roster(),
            }))
            .await;
        assert_refused(err, ErrorCode::TooManyDevices);
        let crowded = TestAccount::new(3);
        let err = crowded.register(&relay.connect().await, None).await;
        assert_refused(err, ErrorCode::TooManyDevices);
        relay.stop().await;
    })
    .await;
}

#[tokio::test]
async fn rosters_must_extend_the_stored_chain() {
    bounded(async {
        let (relay, mut account, client) = TestRelay::with_account(3).await;
        let put = |roster: Vec<u8>| request::Kind::PutRoster(proto::PutRoster { roster });
        // Same version again: rollback.
        assert_refused(
            client.expect_ok(put(account.roster())).await,
            ErrorCode::RosterRollback,
        );
        // Next version signed by a key that is not the account's.
        account.version = 2;
        let stranger = AccountSigningKey::generate(&mut system_rng());
        assert_refused(
            client
                .expect_ok(put(account.roster_signed_by(&stranger)))
                .await,
            ErrorCode::RosterInvalid,
        );
        client.expect_ok(put(account.roster())).await.unwrap();
        // Removing a device rotates the key; afterwards the old key signs nothing that counts.
        let old_key = account.current.clone();
        account.remove_device(2);
        client.expect_ok(put(account.roster())).await.unwrap();
        account.version += 1;
        assert_refused(
            client
                .expect_ok(put(account.roster_signed_by(&old_key)))
                .await,
            ErrorCode::RosterInvalid,
        );
        client.expect_ok(put(account.roster())).await.unwrap();
        // An older version is a rollback.
        account.version -= 1;
        assert_refused(
            client.expect_ok(put(account.roster())).await,
            ErrorCode::RosterRollback,
        );
        assert_refused(
            client.expect_ok(put(b"junk".to_vec())).await,
            ErrorCode::RosterInvalid,
        );
        relay.stop().await;
    })
    .await;
}

/// A new device waits on its slot instead of polling: a take asking to wait is answered the
/// moment the approval is put, one waiting take costs one lookup however long it waits (so a
/// device can wait for minutes within a budget of three lookups a minute), a wait that ends
/// empty answers `NotFound`, and a relay shutting down ends a wait at once with `ShuttingDown`.
#[tokio::test]
async fn a_take_waits_for_its_slot_within_the_lookup_budget() {
    bounded(async {
        let (relay, _account, client) =
            TestRelay::start_with_account(1, |c| c.bounds.lookups_per_minute = 3).await;
        let take = |slot: [u8; 32], wait_ms: u32| {
            request::Kind::TakePairingSlot(proto::TakePairingSlot {
                slot_id: slot.to_vec(),
                wait_ms,
            })
        };
        let newcomer = std::sync::Arc::new(relay.connect().await); // not authenticated
        // Waits, then empty: NotFound after the wait (one lookup).
        assert_eq!(
            code(newcomer.request(take([7; 32], 300)).await),
            ErrorCode::NotFound
        );
        // The approval arrives while the take waits: answered with the bundle (second lookup).
        let waiting = tokio::spawn({
            let newcomer = newcomer.clone();
            async move { newcomer.request(take([7; 32], 15_000)).await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        client
            .expect_ok(request::Kind::PutPairingSlot(proto::PutPairingSlot {
                slot_id: [7; 32].to_vec(),
                bundle: b"sealed".to_vec(),
            }))
            .await
            .unwrap();
        match waiting.await.unwrap().unwrap() {
            response::Kind::PairingSlot(slot) => assert_eq!(slot.bundle, b"sealed"),
            other => panic!("{other:?}"),
        }
        // A wait on a slot that never comes ends at once when the relay shuts down (third).
        let waiting = tokio::spawn({
            let newcomer = newcomer.clone();
            async move { newcomer.request(take([8; 32], 20_000)).await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let shutdown = tokio::spawn(relay.handle.shutdown());
        assert_refused(waiting.await.unwrap(), ErrorCode::ShuttingDown);
        shutdown.await.unwrap().unwrap();
    })
    .await;
}

#[tokio::test]
async fn pairing_slots_are_taken_once_and_expire() {
    bounded(async {
        let relay =
            TestRelay::start_with(|c| c.bounds.pairing_slot_ttl = Duration::from_secs(1)).await;
        let account = TestAccount::new(1);
        let client = relay.connect().await;
        account.create(&client).await;
        let put = |slot: [u8; 32]| {
            request::Kind::PutPairingSlot(proto::PutPairingSlot {
                slot_id: slot.to_vec(),
                bundle: b"sealed".to_vec(),
            })
        };
        let take = |slot: [u8; 32]| {
            request::Kind::TakePairingSlot(proto::TakePairingSlot {
                slot_id: slot.to_vec(),
                wait_ms: 0,
            })
        };
        client.expect_ok(put([1; 32])).await.unwrap();
        assert_eq!(
            code(client.expect_ok(put([1; 32])).await),
            ErrorCode::SlotExists
        );
        let newcomer = relay.connect().await; // not authenticated
        match newcomer.request(take([1; 32])).await.unwrap() {
            response::Kind::PairingSlot(slot) => assert_eq!(slot.bundle, b"sealed"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            code(newcomer.request(take([1; 32])).await),
            ErrorCode::NotFound
        );
        client.expect_ok(put([2; 32])).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(
            code(newcomer.request(take([2; 32])).await),
            ErrorCode::NotFound
        );
        relay.stop().await;
    })
    .await;
}

#[tokio::test]
async fn recovery_bundles_are_served_without_auth_but_rate_limited() {
    bounded(async {
        let (relay, account, client) =
            TestRelay::start_with_account(1, |c| c.bounds.lookups_per_minute = 3).await;
        client
            .expect_ok(request::Kind::PutRecoveryBundle(proto::PutRecoveryBundle {
                lookup_id: vec![9; 32],
                bundle: b"sealed".to_vec(),
                replaces_lookup_id: Vec::new(),
            }))
            .await
            .unwrap();
        let stranger = relay.connect().await;
        let get = |id: u8| {
            request::Kind::GetRecoveryBundle(proto::GetRecoveryBundle {
                lookup_id: vec![id; 32],
            })
        };
        match stranger.request(get(9)).await.unwrap() {
            response::Kind::RecoveryBundle(b) => {
                assert_eq!(
                    (b.bundle.as_slice(), b.account_id.as_slice()),
                    (&b"sealed"[..], &account.id.as_bytes()[..])
                )
            }
            other => panic!("{other:?}"),
        }
        assert_refused(stranger.request(get(8)).await, ErrorCode::NotFound);
        assert!(
            stranger.request(get(9)).await.is_ok(),
            "third lookup within the burst"
        );
        assert_refused(stranger.request(get(9)).await, ErrorCode::RateLimited);
        // Also from another connection of the same address.
        assert_refused(
            relay.connect().await.request(get(9)).await,
            ErrorCode::RateLimited,
        );
        relay.stop().await;
    })
    .await;
}

#[tokio::test]
async fn deleting_an_account_leaves_nothing_of_it_in_storage() {
    bounded(async {
        let relay = TestRelay::start().await;
        let account = TestAccount::new(2);
        let keep = TestAccount::new(1);
        let client = relay.connect().await;
        account.create(&client).await;
        let kept = relay.connect().await;
        keep.create(&kept).await;
        let d = account.device(0).device_id();
        client
            .push(envelopes(&account.id, &d, 1, 20, 300))
            .await
            .unwrap();
        kept.push(keep.envelopes(0, 1, 5, 300)).await.unwrap();
        let sealed = proto::SealedEpochKey {
            account_id: account.id.as_bytes().to_vec(),
            recipient_device_id: account.device(1).device_id().as_bytes().to_vec(),
            epoch: 1,
            key_id: vec![3; 16],
            encapped_key: vec![4; 1120],
            ciphertext: vec![5; 48],
            signature: Vec::new(),
        };
        client
            .expect_ok(request::Kind::PutSealedEpochKeys(
                proto::PutSealedEpochKeys {
                    keys: vec![sealed.encode_to_vec()],
                    staged_account_key: Vec::new(),
                },
            ))
            .await
            .unwrap();
        client
            .expect_ok(request::Kind::PutPairingSlot(proto::PutPairingSlot {
                slot_id: vec![6; 32],
                bundle: b"b".to_vec(),
            }))
            .await
            .unwrap();
        client
            .expect_ok(request::Kind::PutRecoveryBundle(proto::PutRecoveryBundle {
                lookup_id: vec![7; 32],
                bundle: b"r".to_vec(),
                replaces_lookup_id: Vec::new(),
            }))
            .await
            .unwrap();
        let subscriber = relay.connect_as(&account, 1).await;
        let mut subscription = subscriber.subscribe().await.unwrap();

        let delete = |version: u64, key: &AccountSigningKey| {
            request::Kind::DeleteAccount(proto::DeleteAccount {
                account_id: account.id.as_bytes().to_vec(),
                roster_version: version,
                signature: sign_account_deletion(key, &account.id, version)
                    .to_bytes()
                    .to_vec(),
            })
        };
        let stranger = AccountSigningKey::generate(&mut system_rng());
        assert_refused(
            client.expect_ok(delete(1, &stranger)).await,
            ErrorCode::BadSignature,
        );
        assert_refused(
            client.expect_ok(delete(2, &account.current)).await,
            ErrorCode::InvalidRequest,
        );
        client.expect_ok(delete(1, &account.current)).await.unwrap();
        assert_eq!(
            subscription.next().await.unwrap_err().code(),
            Some(ErrorCode::UnknownAccount)
        );
        assert_refused(
            client.push(envelopes(&account.id, &d, 21, 1, 10)).await,
            ErrorCode::Unauthenticated,
        );
        assert_refused(
            subscriber.pull(vec![], 0, 0).await,
            ErrorCode::UnknownAccount,
        );
        assert_eq!(
            code(relay.authenticate_afresh(&account, 0).await),
            ErrorCode::BadSignature,
            "a deleted account is answered as an account that never existed (§10)"
        );

        let dir = relay.stop_keeping_data().await;
        let db = sled::open(kith_relay::db_dir(dir.path())).unwrap();
        let needles: Vec<Vec<u8>> = vec![
            account.id.as_bytes().to_vec(),
            d.as_bytes().to_vec(),
            account.device(1).device_id().as_bytes().to_vec(),
            vec![6; 32],
            vec![7; 32],
        ];
        let mut kept_bytes = 0;
        for name in db.tree_names() {
            for item in db.open_tree(&name).unwrap().iter() {
                let (k, v) = item.unwrap();
                for needle in &needles {
                    assert!(
                        !k.windows(needle.len()).any(|w| w == needle.as_slice()),
                        "key mentions the account"
                    );
                    assert!(
                        !v.windows(needle.len()).any(|w| w == needle.as_slice()),
                        "value mentions the account"
                    );
                }
                if k.starts_with(keep.id.as_bytes()) {
                    kept_bytes += v.len();
                }
            }
        }
        assert!(kept_bytes > 5 * 300, "the other account is intact");
    })
    .await;
}

#[tokio::test]
async fn garbage_and_truncated_frames_do_not_disturb_other_clients() {
    bounded(async {
        let (relay, account, good) = TestRelay::with_account(1).await;
        let d = account.device(0).device_id();
        let mut attacker = relay.connect().await;
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for round in 0..30u64 {
            // The relay closes a connection after 16 bad frames, and at once at a length beyond
            // `max_frame_bytes` (§12): the attacker reconnects.
            if attacker.connection().close_reason().is_some() {
                attacker = relay.connect().await;
            }
            let Ok((mut send, mut recv)) = attacker.connection().open_bi().await else {
                attacker = relay.connect().await;
                continue;
            };
            let mut junk = vec![0u8; 1 + (round as usize * 37) % 700];
            for byte in junk.iter_mut() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                *byte = seed as u8;
            }
            match round % 3 {
                0 => {}
                1 => junk.splice(0..0, [0u8, 0, 0, 200]).for_each(drop), // truncated frame
                _ => junk.splice(0..0, [0xffu8, 0xff, 0xff, 0xff]).for_each(drop), // huge length
            }
            let _ = send.write_all(&junk).await;
            let _ = send.finish();
            let answer = kith_net::read_message::<proto::Response, _>(&mut recv, 1 << 20).await;
            if let Ok(Some(proto::Response {
                kind: Some(response::Kind::Error(err)),
            })) = answer
            {
                let code = ErrorCode::try_from(err.code).unwrap();
                assert!(
                    matches!(
                        code,
                        ErrorCode::Malformed
                            | ErrorCode::FrameTooLarge
                            | ErrorCode::Unauthenticated
                            | ErrorCode::NoChallenge
                            | ErrorCode::InvalidRequest
                            | ErrorCode::NotFound
                            | ErrorCode::RosterInvalid
                            | ErrorCode::UnknownAccount
                            | ErrorCode::RateLimited
                    ),
                    "{code:?}"
                );
            }
            good.push(envelopes(&account.id, &d, round + 1, 1, 100))
                .await
                .unwrap();
        }
        // Streams opened and abandoned mid-frame, on a new connection (the last round's huge
        // length closed the one before).
        let attacker = relay.connect().await;
        for _ in 0..10 {
            let (mut send, _recv) = attacker.connection().open_bi().await.unwrap();
            send.write_all(&[0, 0, 1]).await.unwrap();
        }
        assert_eq!(good.pull(vec![], 0, 0).await.unwrap().envelopes.len(), 30);
        relay.stop().await;
    })
    .await;
}

#[tokio::test]
async fn subscribers_hear_of_other_devices_pushes() {
    bounded(async {
        let (relay, account, writer) = TestRelay::with_account(2).await;
        let reader = relay.connect_as(&account, 1).await;
        let mut subscription = reader.subscribe().await.unwrap();
        let d0 = account.device(0).device_id();
        let d1 = account.device(1).device_id();
        reader
            .push(envelopes(&account.id, &d1, 1, 1, 10))
            .await
            .unwrap(); // its own: silent
        writer
            .push(envelopes(&account.id, &d0, 1, 3, 10))
            .await
            .unwrap();
        let note = subscription.next().await.unwrap().unwrap();
        assert_eq!(
            (note.device_id.as_slice(), note.last_seq),
            (&d0.as_bytes()[..], 3)
        );
        writer
            .push(envelopes(&account.id, &d0, 4, 2, 10))
            .await
            .unwrap();
        assert_eq!(subscription.next().await.unwrap().unwrap().last_seq, 5);
        // Shutdown ends the subscription with a clear code.
        relay.stop().await;
        let end = subscription.next().await;
        assert!(matches!(end, Err(_) | Ok(None)), "{end:?}");
    })
    .await;
}

#[tokio::test]
async fn truncation_drops_the_head_of_a_stream_and_keeps_its_position() {
    bounded(async {
        let (relay, account, client) = TestRelay::with_account(1).await;
        let d = account.device(0).device_id();
        client
            .push(envelopes(&account.id, &d, 1, 10, 100))
            .await
            .unwrap();
        let truncate =
            |before_seq| request::Kind::TruncateStream(proto::TruncateStream { before_seq });
        assert_refused(
            client.expect_ok(truncate(11)).await,
            ErrorCode::InvalidRequest,
        );
        client.expect_ok(truncate(8)).await.unwrap();
        let page = client.pull(vec![], 0, 0).await.unwrap();
        assert_eq!(
            page.envelopes.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![8, 9, 10]
        );
        assert_eq!(
            (page.streams[0].first_seq, page.streams[0].last_seq),
            (8, 10)
        );
        assert_refused(
            client.push(envelopes(&account.id, &d, 3, 1, 100)).await,
            ErrorCode::SeqConflict,
        );
        assert_eq!(
            client
                .push(envelopes(&account.id, &d, 11, 1, 100))
                .await
                .unwrap(),
            11
        );
        relay.stop().await;
    })
    .await;
}

/// A sealed epoch key for `account`'s device `recipient`, its bytes all `fill` (the relay
/// checks who may store it, not what it seals), unsigned.
fn sealed_key(account: &TestAccount, recipient: usize, epoch: u64, fill: u8) -> Vec<u8> {
    proto::SealedEpochKey {
        account_id: account.id.as_bytes().to_vec(),
        recipient_device_id: account.device(recipient).device_id().as_bytes().to_vec(),
        epoch,
        key_id: vec![fill; 16],
        encapped_key: vec![fill; 1120],
        ciphertext: vec![fill; 48],
        signature: Vec::new(),
    }
    .encode_to_vec()
}

/// `PutSealedEpochKeys` of `keys`, staged for the next epoch under `staged`'s key if given.
fn put_sealed(keys: Vec<Vec<u8>>, staged: Option<&AccountSigningKey>) -> request::Kind {
    request::Kind::PutSealedEpochKeys(proto::PutSealedEpochKeys {
        keys,
        staged_account_key: staged
            .map(|key| key.public().as_bytes().to_vec())
            .unwrap_or_default(),
    })
}

/// The sealed keys the relay holds for `client`'s device, from `min_epoch` on.
async fn held_sealed(client: &RelayClient, min_epoch: u64) -> Vec<Vec<u8>> {
    match client
        .request(request::Kind::GetSealedEpochKeys(
            proto::GetSealedEpochKeys { min_epoch },
        ))
        .await
        .unwrap()
    {
        response::Kind::SealedEpochKeys(keys) => keys.keys,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn sealed_epoch_keys_are_stored_per_recipient_and_epoch() {
    bounded(async {
        let (relay, account, client) = TestRelay::with_account(2).await;
        let sealed =
            |recipient: usize, epoch: u64| sealed_key(&account, recipient, epoch, epoch as u8);
        let put = |keys| put_sealed(keys, None);
        client
            .expect_ok(put(vec![sealed(0, 1), sealed(1, 1)]))
            .await
            .unwrap();
        assert_eq!(
            code(client.expect_ok(put(vec![sealed(1, 3)])).await),
            ErrorCode::InvalidRequest,
            "future epoch"
        );
        let other = relay.connect_as(&account, 1).await;
        assert_eq!(held_sealed(&other, 1).await, vec![sealed(1, 1)]);
        relay.stop().await;
    })
    .await;
}

/// A member cannot overwrite the sealed key another member holds for an epoch that started
/// (it could make that device refuse the epoch, or never get it); the recipient can replace its
/// own, and an identical retransmit is acknowledged again.
#[tokio::test]
async fn no_member_can_overwrite_another_members_sealed_key() {
    bounded(async {
        let (relay, account, client) = TestRelay::with_account(2).await;
        let sealed = |recipient: usize, fill: u8| sealed_key(&account, recipient, 1, fill);
        let put = |keys| put_sealed(keys, None);
        client.expect_ok(put(vec![sealed(1, 1)])).await.unwrap();
        client.expect_ok(put(vec![sealed(1, 1)])).await.unwrap();

        let other = relay.connect_as(&account, 1).await;
        let held = || held_sealed(&other, 1);
        // Device 0 tries to replace device 1's key of epoch 1.
        assert!(
            client.expect_ok(put(vec![sealed(1, 7)])).await.is_err(),
            "a member overwrote another member's sealed key"
        );
        assert_eq!(held().await, vec![sealed(1, 1)]);
        // Device 1 replaces its own.
        other.expect_ok(put(vec![sealed(1, 9)])).await.unwrap();
        assert_eq!(held().await, vec![sealed(1, 9)]);
        // Signed by the account key of epoch 1 (the genesis key), device 0 may replace it; a
        // signature by another key does not do.
        let by_other_key = kith_protocol::epoch::sign_sealed_epoch_key(
            &sealed(1, 5),
            &AccountSigningKey::generate(&mut system_rng()),
        )
        .unwrap();
        assert_refused(
            client.expect_ok(put(vec![by_other_key])).await,
            ErrorCode::SlotExists,
        );
        let signed =
            kith_protocol::epoch::sign_sealed_epoch_key(&sealed(1, 5), &account.genesis).unwrap();
        client.expect_ok(put(vec![signed.clone()])).await.unwrap();
        assert_eq!(held().await, vec![signed]);
        relay.stop().await;
    })
    .await;
}

/// Keys staged for the next epoch (before the roster that starts it) belong to the key that
/// signed them, the next epoch's account key, which only the revoking device holds: another
/// member (a thief, before the revocation lands) can neither replace them with keys of its own
/// signed by another key, nor unsigned ones, nor by naming another key; the revoker may store
/// them again, and each device may replace its own.
#[tokio::test]
async fn no_member_can_overwrite_a_staged_key_of_the_next_epoch() {
    bounded(async {
        let (relay, account, revoker) = TestRelay::with_account(3).await;
        let thief = relay.connect_as(&account, 1).await;
        let recipient = relay.connect_as(&account, 2).await;
        let next_key = AccountSigningKey::generate(&mut system_rng());
        let thief_key = AccountSigningKey::generate(&mut system_rng());
        let sealed = |fill: u8, signer: Option<&AccountSigningKey>| {
            let bytes = sealed_key(&account, 2, 2, fill);
            match signer {
                Some(key) => kith_protocol::epoch::sign_sealed_epoch_key(&bytes, key).unwrap(),
                None => bytes,
            }
        };
        let put = put_sealed;
        let held = || held_sealed(&recipient, 2);
        let staged = sealed(1, Some(&next_key));
        revoker
            .expect_ok(put(vec![staged.clone()], Some(&next_key)))
            .await
            .unwrap();
        for (forged, named) in [
            (sealed(7, Some(&thief_key)), Some(&thief_key)),
            (sealed(7, Some(&thief_key)), None),
            (sealed(7, None), None),
            (sealed(7, Some(&thief_key)), Some(&next_key)),
        ] {
            assert_eq!(
                code(thief.expect_ok(put(vec![forged], named)).await),
                ErrorCode::SlotExists,
                "a member overwrote a staged key of another device"
            );
            assert_eq!(held().await, vec![staged.clone()]);
        }
        // The revoker stages again (a retry after STREAM_AHEAD seals afresh).
        let again = sealed(3, Some(&next_key));
        revoker
            .expect_ok(put(vec![again.clone()], Some(&next_key)))
            .await
            .unwrap();
        assert_eq!(held().await, vec![again]);
        // The recipient replaces its own.
        let own = sealed(4, None);
        recipient
            .expect_ok(put(vec![own.clone()], None))
            .await
            .unwrap();
        assert_eq!(held().await, vec![own]);
        relay.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_device_over_its_request_rate_is_refused() {
    bounded(async {
        let (relay, _account, client) = TestRelay::start_with_account(1, |c| {
            c.bounds.requests_per_second = 1;
            c.bounds.request_burst = 5;
        })
        .await;
        let mut refused = 0;
        for _ in 0..10 {
            if let Err(err) = client
                .request(request::Kind::GetUsage(proto::GetUsage {}))
                .await
            {
                assert_eq!(err.code(), Some(ErrorCode::RateLimited));
                refused += 1;
            }
        }
        assert!(refused >= 4, "{refused}");
        relay.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_request_of_a_later_release_is_unsupported_not_malformed() {
    bounded(async {
        let gateway = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", gateway.local_addr().unwrap());
        let (relay, _account, client) = TestRelay::start_with_account(1, |c| {
            c.push = Some(kith_relay::config::PushConfig::new(url.parse().unwrap()));
        })
        .await;
        // Request field 99 (a kind no release defines yet): one length-delimited field, its
        // key the varint 99 << 3 | 2 = 794.
        let body = [0x9a, 0x06, 6, 1, 2, 3, 4, 5, 6];
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        let answer = client.call_frame(bytes::Bytes::from(frame)).await.unwrap();
        match proto::Response::decode(answer).unwrap().kind {
            Some(response::Kind::Error(e)) => {
                assert_eq!(e.code, ErrorCode::Unsupported as i32, "{}", e.message);
                assert!(e.message.contains("update"), "{}", e.message);
            }
            other => panic!("{other:?}"),
        }
        // An empty request is still malformed.
        let answer = client
            .call_frame(bytes::Bytes::from_static(&[0, 0, 0, 0]))
            .await
            .unwrap();
        match proto::Response::decode(answer).unwrap().kind {
            Some(response::Kind::Error(e)) => assert_eq!(e.code, ErrorCode::Malformed as i32),
            other => panic!("{other:?}"),
        }
        // Push targets: bounded, one per device, refused before authentication.
        let stranger = relay.connect().await;
        let register =
            |token: Vec<u8>| request::Kind::RegisterPushTarget(proto::RegisterPushTarget { token });
        assert_eq!(
            code(stranger.expect_ok(register(vec![1; 10])).await),
            ErrorCode::Unauthenticated
        );
        assert_eq!(
            code(client.expect_ok(register(vec![1; 1025])).await),
            ErrorCode::InvalidRequest
        );
        assert_refused(
            client.expect_ok(register(Vec::new())).await,
            ErrorCode::InvalidRequest,
        );
        client.expect_ok(register(vec![1; 1024])).await.unwrap();
        client
            .expect_ok(request::Kind::UnregisterPushTarget(
                proto::UnregisterPushTarget {},
            ))
            .await
            .unwrap();
        relay.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_relay_without_a_push_gateway_refuses_push_targets_as_unsupported() {
    bounded(async {
        let (relay, _account, client) = TestRelay::with_account(1).await;
        let err = client
            .expect_ok(request::Kind::RegisterPushTarget(
                proto::RegisterPushTarget { token: vec![1; 16] },
            ))
            .await;
        assert_refused(err, ErrorCode::Unsupported);
        relay.stop().await;
    })
    .await;
}
