//! A removed device's stream ends exactly at the roster's `final_seq` (docs/PROTOCOL.md §4,
//! issue 10 finding 1): the relay decides it under the lock that orders pushes, so nothing
//! past `final_seq` is ever stored or served.

mod common;

use common::{TestRelay, assert_refused, bounded, envelopes};
use kith_protocol::proto::{self, ErrorCode, request};

fn put_roster(roster: Vec<u8>) -> request::Kind {
    request::Kind::PutRoster(proto::PutRoster { roster })
}

#[tokio::test]
async fn a_roster_ending_a_stream_before_its_head_is_refused_and_the_device_fenced() {
    bounded(async {
        let (relay, mut account, revoker) = TestRelay::with_account(2).await;
        let pusher = relay.connect_as(&account, 1).await;
        let gone = account.device(1).device_id();
        pusher
            .push(envelopes(&account.id, &gone, 1, 3, 100))
            .await
            .unwrap();

        // The revoker saw seq 2 only: the relay holds 3, so that roster would hide seq 3 from
        // every device that has not pulled it yet, and serve it to those that have.
        account.remove_device(1);
        account.removed[0].final_seq = 2;
        assert_refused(
            revoker.expect_ok(put_roster(account.roster())).await,
            ErrorCode::StreamAhead,
        );
        // Until the revoker signs again, the device may not extend its stream.
        assert_refused(
            pusher.push(envelopes(&account.id, &gone, 4, 1, 100)).await,
            ErrorCode::DeviceFenced,
        );
        // Signed again with the stream's real end: accepted, and the device is removed.
        account.removed[0].final_seq = 3;
        revoker
            .expect_ok(put_roster(account.roster()))
            .await
            .unwrap();
        assert_refused(
            pusher.push(envelopes(&account.id, &gone, 4, 1, 100)).await,
            ErrorCode::DeviceRemoved,
        );
        let page = revoker.pull(Vec::new(), 0, 0).await.unwrap();
        let served: Vec<u64> = page.envelopes.iter().map(|e| e.seq).collect();
        assert_eq!(served, [1, 2, 3], "the stream ends at final_seq");
        relay.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_stream_shorter_than_final_seq_does_not_block_a_revocation() {
    // A relay that lost the tail of a stream (restored from an old backup) must still let the
    // account revoke that device: only envelopes past final_seq are dangerous.
    bounded(async {
        let (relay, mut account, revoker) = TestRelay::with_account(2).await;
        account.remove_device(1);
        account.removed[0].final_seq = 7;
        revoker
            .expect_ok(put_roster(account.roster()))
            .await
            .unwrap();
        relay.stop().await;
    })
    .await;
}
