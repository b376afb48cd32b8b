//! Pipelined pushes (docs/PROTOCOL.md §12, "Pipelined pushes"): several pushes of one device
//! in flight on one connection, appended in the order their streams were opened whatever order
//! their frames arrive in, one group commit for every batch that arrived before it, a window
//! the relay enforces with a typed refusal, and a window cut off mid-way (connection dropped)
//! retried without loss or duplicates.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use common::faulty_store::FaultyStore;
use common::{TestAccount, TestRelay, bounded, envelopes};
use kith_protocol::ids::DeviceId;
use kith_protocol::proto::{self, ErrorCode, Response, response};
use kith_relay::client::{RelayClient, RelayClientError};
use kith_relay::{MAX_PUSHES_IN_FLIGHT, Relay, RelayConfig, wire};
use prost::Message;

/// A push frame of `n` envelopes of `device` from `first`.
fn push_frame(account: &TestAccount, device: &DeviceId, first: u64, n: u64) -> Bytes {
    let envelopes = envelopes(&account.id, device, first, n, 300)
        .into_iter()
        .map(Bytes::from)
        .collect();
    wire::push_frame(&wire::Push { envelopes })
}

/// Every envelope of `device`'s stream, pulled page by page: (seq, bytes).
async fn stream_of(client: &RelayClient, device: &DeviceId) -> Vec<(u64, Vec<u8>)> {
    let mut got = Vec::new();
    loop {
        let after = got.last().map_or(0, |(seq, _)| *seq);
        let cursor = proto::Cursor {
            device_id: device.as_bytes().to_vec(),
            after_seq: after,
        };
        let page = client.pull(vec![cursor], 0, 0).await.unwrap();
        got.extend(page.envelopes.into_iter().map(|e| (e.seq, e.envelope)));
        if !page.more {
            return got;
        }
    }
}

/// The stream `account`'s device 0 must hold after pushing seqs 1..=last.
fn expected(account: &TestAccount, last: u64) -> Vec<(u64, Vec<u8>)> {
    let device = account.device(0).device_id();
    envelopes(&account.id, &device, 1, last, 300)
        .into_iter()
        .enumerate()
        .map(|(i, e)| (i as u64 + 1, e))
        .collect()
}

/// The relay's error code in an answer body, if it is a refusal.
fn refusal(body: &Bytes) -> Option<ErrorCode> {
    match Response::decode(body.clone()).ok()?.kind {
        Some(response::Kind::Error(e)) => ErrorCode::try_from(e.code).ok(),
        _ => None,
    }
}

async fn relay_on_faulty_store() -> (kith_relay::RelayHandle, Arc<FaultyStore>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = RelayConfig::for_tests(dir.path());
    let store = Arc::new(FaultyStore::new(Relay::open_store(&config).unwrap()));
    let handle = Relay::start_with_store(config, store.clone())
        .await
        .unwrap();
    (handle, store, dir)
}

async fn connect(handle: &kith_relay::RelayHandle) -> RelayClient {
    RelayClient::connect(handle.local_addr(), handle.cert_sha256())
        .await
        .unwrap()
}

/// Waits (polling, within the test's bound) until `done` holds.
async fn until(mut done: impl FnMut() -> bool) {
    while !done() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_push_whose_frame_arrives_first_waits_for_the_push_opened_before_it() {
    bounded(async {
        let (relay, account, client) = TestRelay::with_account(1).await;
        let device = account.device(0).device_id();
        // Two streams opened in seq order; the second's frame is sent first, the first's only
        // once the relay has had every chance to handle the second alone (without ordering
        // it would be refused as SEQ_GAP).
        let (mut send_a, mut recv_a) = client.connection().open_bi().await.unwrap();
        let (mut send_b, mut recv_b) = client.connection().open_bi().await.unwrap();
        send_b
            .write_chunk(push_frame(&account, &device, 101, 100))
            .await
            .unwrap();
        send_b.finish().unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        send_a
            .write_chunk(push_frame(&account, &device, 1, 100))
            .await
            .unwrap();
        send_a.finish().unwrap();
        for (recv, last) in [(&mut recv_a, 100), (&mut recv_b, 200)] {
            let body = kith_net::read_frame_bytes(recv, 1 << 20, 1024)
                .await
                .unwrap()
                .unwrap();
            match Response::decode(body).unwrap().kind {
                Some(response::Kind::PushAck(ack)) => assert_eq!(ack.last_seq, last),
                other => panic!("expected an ack of {last}, got {other:?}"),
            }
        }
        assert_eq!(stream_of(&client, &device).await, expected(&account, 200));
        relay.stop().await;
    })
    .await;
}

/// The relay buffers at most `max_frame_bytes` of a connection's requests at once; pushes that
/// arrived first and wait for the push opened before them hold that room. The push they wait
/// for must still get in: kith-client keeps 4 pushes of up to 2 MiB in flight, against the
/// default 4 MiB, and a 1,000,000-contact sync once lost a whole attempt this way (the first
/// push was cut off by the request timeout, "stream reset by peer: error 2", and the others
/// refused as SEQ_GAP).
#[tokio::test]
async fn a_push_whose_later_pushes_filled_the_frame_budget_still_gets_in() {
    bounded(async {
        let (relay, account, client) = TestRelay::start_with_account(1, |config| {
            config.bounds.max_frame_bytes = 4 * 1024 * 1024;
            config.bounds.request_timeout = Duration::from_secs(5);
        })
        .await;
        let device = account.device(0).device_id();
        // Three pushes of about 1.5 MiB each, in seq order.
        let frame = |first| {
            let envelopes = envelopes(&account.id, &device, first, 100, 15_000)
                .into_iter()
                .map(Bytes::from)
                .collect();
            wire::push_frame(&wire::Push { envelopes })
        };
        let mut streams = Vec::new();
        for _ in 0..3 {
            streams.push(client.connection().open_bi().await.unwrap());
        }
        // The second and third frames arrive whole first and take 3 MiB of the 4 MiB budget;
        // the first arrives last and needs 1.5 MiB.
        for (i, first) in [(1, 101), (2, 201)] {
            streams[i].0.write_all(&frame(first)).await.unwrap();
            streams[i].0.finish().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        streams[0].0.write_all(&frame(1)).await.unwrap();
        streams[0].0.finish().unwrap();
        for ((_, recv), last) in streams.iter_mut().zip([100, 200, 300]) {
            let body = kith_net::read_frame_bytes(recv, 1 << 20, 1024)
                .await
                .unwrap_or_else(|e| panic!("push up to {last}: {e}"))
                .unwrap();
            match Response::decode(body).unwrap().kind {
                Some(response::Kind::PushAck(ack)) => assert_eq!(ack.last_seq, last),
                other => panic!("expected an ack of {last}, got {other:?}"),
            }
        }
        let stored = stream_of(&client, &device).await;
        assert_eq!(stored.len(), 300);
        assert_eq!(stored.last().map(|(seq, _)| *seq), Some(300));
        relay.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_real_gap_is_still_refused_once_the_earlier_streams_have_passed() {
    bounded(async {
        let (relay, account, client) = TestRelay::with_account(1).await;
        let device = account.device(0).device_id();
        let first = client
            .send_frame(push_frame(&account, &device, 1, 10))
            .await
            .unwrap();
        // Seqs 11..=20 are never sent: the push from 21 has a gap no earlier push fills.
        let gapped = client
            .send_frame(push_frame(&account, &device, 21, 10))
            .await
            .unwrap();
        assert_eq!(first.push_ack().await.unwrap(), 10);
        match gapped.push_ack().await {
            Err(RelayClientError::Refused { code, .. }) => assert_eq!(code, ErrorCode::SeqGap),
            other => panic!("expected SEQ_GAP, got {other:?}"),
        }
        relay.stop().await;
    })
    .await;
}

#[tokio::test]
async fn one_group_commit_takes_every_batch_of_a_connection_that_arrived_before_it() {
    bounded(async {
        let (handle, store, _dir) = relay_on_faulty_store().await;
        let account = TestAccount::new(1);
        let client = connect(&handle).await;
        account.create(&client).await;
        let device = account.device(0).device_id();
        let (appends, flushes) = (
            store.appends.load(Ordering::SeqCst),
            store.flushes.load(Ordering::SeqCst),
        );
        // The disk is slow: the first batch's commit is under way while four more arrive.
        store.hold_flushes(true);
        let mut acks = vec![
            client
                .send_frame(push_frame(&account, &device, 1, 100))
                .await
                .unwrap(),
        ];
        until(|| {
            store.appends.load(Ordering::SeqCst) == appends + 1
                && store.flushes.load(Ordering::SeqCst) == flushes + 1
        })
        .await;
        for b in 1..5 {
            acks.push(
                client
                    .send_frame(push_frame(&account, &device, 1 + b * 100, 100))
                    .await
                    .unwrap(),
            );
        }
        until(|| store.appends.load(Ordering::SeqCst) == appends + 5).await;
        // Each push asks for durability right after its append; let the last ask arrive.
        tokio::time::sleep(Duration::from_millis(100)).await;
        store.hold_flushes(false);
        for (b, ack) in acks.into_iter().enumerate() {
            assert_eq!(ack.push_ack().await.unwrap(), (b as u64 + 1) * 100);
        }
        assert_eq!(
            store.flushes.load(Ordering::SeqCst) - flushes,
            2,
            "the four batches that arrived during the first commit share the second"
        );
        assert_eq!(stream_of(&client, &device).await, expected(&account, 500));
        handle.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_push_beyond_the_window_is_refused_with_a_typed_error_and_nothing_is_lost() {
    bounded(async {
        let (relay, account, client) = TestRelay::with_account(1).await;
        let device = account.device(0).device_id();
        let window = MAX_PUSHES_IN_FLIGHT as u64;
        // The stream of seq 1 is opened and its frame held back: every later push waits for it,
        // in flight, until one more than the window has arrived.
        let (mut held, mut held_recv) = client.connection().open_bi().await.unwrap();
        let mut later = Vec::new();
        for seq in 2..=window + 2 {
            later.push((
                seq,
                client
                    .send_frame(push_frame(&account, &device, seq, 1))
                    .await
                    .unwrap(),
            ));
        }
        // Exactly one of the window + 1 waiting pushes is refused, at once.
        let mut refused = None;
        while refused.is_none() {
            for (seq, request) in &mut later {
                if request.is_finished() {
                    refused = Some(*seq);
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let refused = refused.unwrap();
        held.write_chunk(push_frame(&account, &device, 1, 1))
            .await
            .unwrap();
        held.finish().unwrap();
        let body = kith_net::read_frame_bytes(&mut held_recv, 1 << 20, 1024)
            .await
            .unwrap()
            .unwrap();
        // Admitted although the window is full: every push in it waits for this one.
        assert_eq!(refusal(&body), None, "the held push is acknowledged");
        for (seq, request) in later {
            let body = request.answer().await.unwrap();
            let code = refusal(&body);
            if seq == refused {
                assert_eq!(code, Some(ErrorCode::PushWindowFull));
            } else if seq < refused {
                assert_eq!(code, None, "push of seq {seq} before the refused one");
            } else {
                assert_eq!(code, Some(ErrorCode::SeqGap), "push of seq {seq}");
            }
        }
        // The device sends again from the refused seq: the stream is whole, once.
        let last = window + 2;
        assert_eq!(
            client
                .push_frame(push_frame(&account, &device, refused, last + 1 - refused))
                .await
                .unwrap(),
            last
        );
        assert_eq!(stream_of(&client, &device).await, expected(&account, last));
        relay.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_window_cut_off_by_a_dropped_connection_is_retried_without_loss_or_duplicates() {
    bounded(async {
        let (relay, account, client) = TestRelay::with_account(1).await;
        let device = account.device(0).device_id();
        // Six batches in flight; the connection drops once the first is acknowledged, the
        // others stored or not (the device cannot know which).
        let mut in_flight = Vec::new();
        for b in 0..6u64 {
            in_flight.push(
                client
                    .send_frame(push_frame(&account, &device, 1 + b * 100, 100))
                    .await
                    .unwrap(),
            );
        }
        let mut in_flight = in_flight.into_iter();
        assert_eq!(in_flight.next().unwrap().push_ack().await.unwrap(), 100);
        client.connection().close(0u32.into(), b"gone");
        for request in in_flight {
            // Acknowledged or lost with the connection: either way sent again below.
            let _ = request.answer().await;
        }
        // A new connection sends every unacknowledged batch again, four at a time, and one
        // more batch: retransmits of stored batches are acknowledged again, the rest stored.
        let client = relay.connect_as(&account, 0).await;
        let mut window = std::collections::VecDeque::new();
        for b in 1..7u64 {
            if window.len() == 4 {
                let (last, request): (u64, kith_relay::client::InFlight) =
                    window.pop_front().unwrap();
                assert_eq!(request.push_ack().await.unwrap(), last);
            }
            let request = client
                .send_frame(push_frame(&account, &device, 1 + b * 100, 100))
                .await
                .unwrap();
            window.push_back(((b + 1) * 100, request));
        }
        for (last, request) in window {
            assert_eq!(request.push_ack().await.unwrap(), last);
        }
        assert_eq!(stream_of(&client, &device).await, expected(&account, 700));
        relay.stop().await;
    })
    .await;
}
