//! A recovery lookup id belongs to the account that stored a bundle under it first
//! (docs/PROTOCOL.md §6, §12; issue 10 finding 3). Whoever learnt it - an ex-device keeps it -
//! cannot put a bundle of another account in its place, nor delete it through that account.

mod common;

use common::{TestAccount, TestRelay, bounded};
use kith_protocol::proto::{self, ErrorCode, request, response};
use kith_relay::client::{ClientError, RelayClient};

fn code<T: std::fmt::Debug>(result: Result<T, ClientError>) -> ErrorCode {
    match result {
        Err(err) => err.code().unwrap_or_else(|| panic!("not a refusal: {err}")),
        Ok(value) => panic!("expected a refusal, got {value:?}"),
    }
}

fn put(lookup: u8, bundle: &[u8]) -> request::Kind {
    request::Kind::PutRecoveryBundle(proto::PutRecoveryBundle {
        lookup_id: vec![lookup; 32],
        bundle: bundle.to_vec(),
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
        assert_eq!(
            code(attackers.expect_ok(put(7, b"attacker's")).await),
            ErrorCode::SlotExists
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
        relay.handle.shutdown().await.unwrap();
    })
    .await;
}
