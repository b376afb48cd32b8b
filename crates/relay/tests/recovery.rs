//! A recovery lookup id belongs to the account that stored a bundle under it first
//! (docs/PROTOCOL.md §6, §12; issue 10 finding 3). Whoever learnt it - an ex-device keeps it -
//! cannot put a bundle of another account in its place, nor delete it through that account.

mod common;

use common::{TestAccount, TestRelay, assert_refused, bounded, code};
use kith_protocol::proto::{self, ErrorCode, request, response};
use kith_relay::client::{RelayClient, RelayClientError};

fn put(lookup: u8, bundle: &[u8]) -> request::Kind {
    request::Kind::PutRecoveryBundle(proto::PutRecoveryBundle {
        lookup_id: vec![lookup; 32],
        bundle: bundle.to_vec(),
        replaces_lookup_id: Vec::new(),
    })
}

/// The account and bundle the relay serves under a lookup id.
async fn lookup(client: &RelayClient, lookup: u8) -> (Vec<u8>, Vec<u8>) {
    match client
        .request(request::Kind::GetRecoveryBundle(proto::GetRecoveryBundle {
            lookup_id: vec![lookup; 32],
        }))
        .await
        .unwrap()
    {
        response::Kind::RecoveryBundle(found) => (found.account_id, found.bundle),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_recovery_lookup_id_belongs_to_the_account_that_stored_it_first() {
    bounded(async {
        let relay = TestRelay::start().await;
        let victim = TestAccount::new(1);
        let attacker = TestAccount::new(1);
        let victims = relay.connect().await;
        victim.create(&victims).await;
        let attackers = relay.connect().await;
        attacker.create(&attackers).await;
        victims.expect_ok(put(7, b"victim's")).await.unwrap();

        // An ex-device of the victim knows the lookup id; from an account of its own it tries
        // to put a bundle there (sealed with the recovery PSK it also kept).
        assert_refused(
            attackers.expect_ok(put(7, b"attacker's")).await,
            ErrorCode::SlotExists,
        );
        let stranger = relay.connect().await;
        assert_eq!(
            lookup(&stranger, 7).await,
            (victim.id.as_bytes().to_vec(), b"victim's".to_vec())
        );

        // The attacker's account, deleted, takes nothing of the victim's with it.
        attackers.expect_ok(put(8, b"attacker's")).await.unwrap();
        let signature = kith_protocol::auth::sign_account_deletion(
            &attacker.current,
            &attacker.id,
            attacker.version,
        );
        attackers
            .expect_ok(request::Kind::DeleteAccount(proto::DeleteAccount {
                account_id: attacker.id.as_bytes().to_vec(),
                roster_version: attacker.version,
                signature: signature.to_bytes().to_vec(),
            }))
            .await
            .unwrap();
        assert_eq!(
            lookup(&stranger, 7).await,
            (victim.id.as_bytes().to_vec(), b"victim's".to_vec())
        );
        // The owner still replaces its own bundle, under the same or a new lookup id.
        victims.expect_ok(put(7, b"victim's v2")).await.unwrap();
        assert_eq!(lookup(&stranger, 7).await.1, b"victim's v2".to_vec());
        relay.stop().await;
    })
    .await;
}

fn rotate(lookup: u8, bundle: &[u8], replaces: &[u8]) -> request::Kind {
    request::Kind::PutRecoveryBundle(proto::PutRecoveryBundle {
        lookup_id: vec![lookup; 32],
        bundle: bundle.to_vec(),
        replaces_lookup_id: replaces.to_vec(),
    })
}

/// The account's own bundle, asked for with an empty lookup id.
async fn own(client: &RelayClient) -> Result<(Vec<u8>, Vec<u8>), RelayClientError> {
    match client
        .request(request::Kind::GetRecoveryBundle(proto::GetRecoveryBundle {
            lookup_id: Vec::new(),
        }))
        .await?
    {
        response::Kind::RecoveryBundle(found) => Ok((found.lookup_id, found.bundle)),
        other => panic!("{other:?}"),
    }
}

/// Issue 10 finding 11: an account has one recovery bundle. A new lookup id (a rotated key)
/// must name the one it replaces, which the relay then removes; a device that missed the
/// rotation cannot bring the old key back by sealing under it again, and finds the account's
/// current bundle through its authenticated connection.
#[tokio::test]
async fn a_rotated_recovery_lookup_id_replaces_the_old_one_and_cannot_be_undone_by_a_stale_device()
{
    bounded(async {
        let (relay, _account, client) = TestRelay::with_account(1).await;
        assert_refused(own(&client).await, ErrorCode::NotFound);
        client.expect_ok(put(1, b"old key's")).await.unwrap();
        assert_eq!(
            own(&client).await.unwrap(),
            (vec![1; 32], b"old key's".to_vec())
        );

        // A new lookup id that does not name the current one is refused.
        assert_refused(
            client.expect_ok(put(2, b"new key's")).await,
            ErrorCode::RecoveryRotated,
        );
        assert_eq!(
            code(client.expect_ok(rotate(2, b"new key's", &[9; 32])).await),
            ErrorCode::RecoveryRotated
        );
        client
            .expect_ok(rotate(2, b"new key's", &[1; 32]))
            .await
            .unwrap();
        let stranger = relay.connect().await;
        assert_eq!(lookup(&stranger, 2).await.1, b"new key's".to_vec());
        let gone = stranger
            .request(request::Kind::GetRecoveryBundle(proto::GetRecoveryBundle {
                lookup_id: vec![1; 32],
            }))
            .await;
        assert_eq!(
            code(gone),
            ErrorCode::NotFound,
            "the old key's bundle is removed"
        );

        // A device still holding the old key's material re-seals: refused, nothing changes.
        assert_refused(
            client.expect_ok(put(1, b"old key's again")).await,
            ErrorCode::RecoveryRotated,
        );
        assert_eq!(
            own(&client).await.unwrap(),
            (vec![2; 32], b"new key's".to_vec())
        );
        // The current lookup id is re-sealed as before.
        client.expect_ok(put(2, b"new key's v2")).await.unwrap();
        assert_eq!(own(&client).await.unwrap().1, b"new key's v2".to_vec());
        // Unauthenticated, the account's own bundle is not to be had.
        assert_refused(own(&stranger).await, ErrorCode::Unauthenticated);
        relay.stop().await;
    })
    .await;
}
