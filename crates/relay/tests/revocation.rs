//! A removed device's stream ends exactly at the roster's `final_seq` (docs/PROTOCOL.md §4,
//! issue 10 finding 1): the relay decides it under the lock that orders pushes, so nothing
//! past `final_seq` is ever stored or served.

mod common;

use common::{TestAccount, TestRelay, bounded, envelopes};
use kith_protocol::proto::{self, ErrorCode, request};
use kith_relay::client::RelayClientError;

fn code<T: std::fmt::Debug>(result: Result<T, RelayClientError>) -> ErrorCode {
    match result {
        Err(err) => err.code().unwrap_or_else(|| panic!("not a refusal: {err}")),
        Ok(value) => panic!("expected a refusal, got {value:?}"),
    }
}

fn put_roster(roster: Vec<u8>) -> request::Kind {
    request::Kind::PutRoster(proto::PutRoster { roster })
}

#[tokio::test]
async fn a_roster_ending_a_stream_before_its_head_is_refused_and_the_device_fenced() {
    bounded(async {
        let relay = TestRelay::start().await;
        let mut account = TestAccount::new(2);
        let revoker = relay.connect().await;
        account.create(&revoker).await;
        let pusher = relay.connect().await;
        pusher
            .authenticate(account.device(1), &account.id)
            .await
            .unwrap();
        let gone = account.device(1).device_id();
        pusher
            .push(envelopes(&account.id, &gone, 1, 3, 100))
            .await
            .unwrap();

        // The revoker saw seq 2 only: the relay holds 3, so that roster would hide seq 3 from
        // every device that has not pulled it yet, and serve it to those that have.
        account.remove_device(1);
        account.removed[0].final_seq = 2;
        assert_eq!(
            code(revoker.expect_ok(put_roster(account.roster())).await),
            ErrorCode::StreamAhead
        );
        // Until the revoker signs again, the device may not extend its stream.
        assert_eq!(
            code(pusher.push(envelopes(&account.id, &gone, 4, 1, 100)).await),
            ErrorCode::DeviceFenced
        );
        // Signed again with the stream's real end: accepted, and the device is removed.
        account.removed[0].final_seq = 3;
        revoker
            .expect_ok(put_roster(account.roster()))
            .await
            .unwrap();
        assert_eq!(
            code(pusher.push(envelopes(&account.id, &gone, 4, 1, 100)).await),
            ErrorCode::DeviceRemoved
        );
        let page = revoker.pull(Vec::new(), 0, 0).await.unwrap();
        let served: Vec<u64> = page.envelopes.iter().map(|e| e.seq).collect();
        assert_eq!(served, [1, 2, 3], "the stream ends at final_seq");
        relay.handle.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_stream_shorter_than_final_seq_does_not_block_a_revocation() {
    // A relay that lost the tail of a stream (restored from an old backup) must still let the
    // account revoke that device: only envelopes past final_seq are dangerous.
    bounded(async {
        let relay = TestRelay::start().await;
        let mut account = TestAccount::new(2);
        let revoker = relay.connect().await;
        account.create(&revoker).await;
        account.remove_device(1);
        account.removed[0].final_seq = 7;
        revoker
            .expect_ok(put_roster(account.roster()))
            .await
            .unwrap();
        relay.handle.shutdown().await.unwrap();
    })
    .await;
}
