//! Nothing before authentication can exhaust the relay (docs/PROTOCOL.md §12 "Before
//! authentication", §14 finding 7): idle unauthenticated connections are closed, connections
//! per source address are capped, handshakes above a rate get a QUIC Retry, requests are
//! bounded before they are decoded, registration tokens are checked before any verification,
//! a connection's frame buffers stay within `max_frame_bytes` (and one announcing more is
//! closed), and one account's stalled pulls cannot stall another's.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::{TestAccount, TestRelay, assert_refused, bounded, code};
use kith_protocol::frame::encode_frame;
use kith_protocol::proto::{self, ErrorCode, Request, request};
use kith_relay::RegistrationMode;
use kith_relay::client::{RelayClient, RelayClientError};

async fn connect_from(relay: &TestRelay, ip: &str) -> Result<RelayClient, RelayClientError> {
    let bind: SocketAddr = format!("{ip}:0").parse().unwrap();
    RelayClient::connect_from(bind, relay.handle.local_addr(), relay.handle.cert_sha256()).await
}

/// A `CreateAccount` that cannot verify (`roster_len` bytes of garbage for a roster, zeros for
/// the device and signature), with `token`.
fn garbage_creation(roster_len: usize, token: impl Into<String>) -> request::Kind {
    request::Kind::CreateAccount(proto::CreateAccount {
        roster: vec![0xff; roster_len],
        device_id: vec![0; 16],
        signature: vec![0; 64],
        registration_token: token.into(),
    })
}

/// Panics unless a new connection from `ip` is accepted and served.
async fn assert_served_from(relay: &TestRelay, ip: &str) {
    let client = connect_from(relay, ip).await.unwrap();
    client.challenge().await.unwrap();
}

/// Panics unless the relay refused the connection at its first packet (`CONNECTION_REFUSED`).
fn assert_connection_refused(result: Result<RelayClient, RelayClientError>, why: &str) {
    match result {
        Err(RelayClientError::Connection(quinn::ConnectionError::ConnectionClosed(close)))
            if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED => {}
        other => panic!("a connection {why} was not refused: {:?}", other.err()),
    }
}

#[tokio::test]
async fn an_idle_unauthenticated_connection_is_closed_after_the_auth_timeout() {
    bounded(async {
        let relay = TestRelay::start_with(|c| c.bounds.auth_timeout = Duration::from_secs(2)).await;
        let account = TestAccount::new(1);
        account.create(&relay.connect().await).await;
        let idle = relay.connect().await;
        let authenticated = relay.connect_as(&account, 0).await;
        // A new device waiting for its approval holds a take open past the deadline: a
        // connection with a request in flight is not idle.
        let waiting = relay.connect().await;
        let take = tokio::spawn(async move {
            let result = waiting
                .request(request::Kind::TakePairingSlot(proto::TakePairingSlot {
                    slot_id: vec![9; 32],
                    wait_ms: 4_000,
                }))
                .await;
            (waiting, result)
        });
        // The client's keep-alives would hold the idle connection open for ever: only the
        // relay's deadline closes it (well within the bound, however slow the machine).
        let closed = tokio::time::timeout(Duration::from_secs(30), idle.connection().closed())
            .await
            .expect("the idle unauthenticated connection is still open");
        assert!(
            matches!(closed, quinn::ConnectionError::ApplicationClosed(ref close)
                if close.reason.as_ref() == b"authenticate in time"),
            "{closed:?}"
        );
        let (waiting, result) = take.await.unwrap();
        assert_eq!(code(result), ErrorCode::NotFound, "the take ran its course");
        assert!(waiting.connection().close_reason().is_none());
        // An authenticated connection is never closed by the deadline.
        tokio::time::sleep(Duration::from_secs(3)).await;
        authenticated
            .request(request::Kind::GetRoster(proto::GetRoster {}))
            .await
            .unwrap();
        relay.stop().await;
    })
    .await;
}

#[tokio::test]
async fn connections_per_source_address_are_capped() {
    bounded(async {
        let relay = TestRelay::start_with(|c| c.bounds.max_connections_per_address = 3).await;
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(connect_from(&relay, "127.0.0.2").await.unwrap());
        }
        let refused = connect_from(&relay, "127.0.0.2").await;
        assert!(
            matches!(refused, Err(RelayClientError::Connection(_))),
            "a fourth connection from one address was accepted (error: {:?})",
            refused.as_ref().err()
        );
        // Another address is not affected.
        let other = connect_from(&relay, "127.0.0.1").await.unwrap();
        other.challenge().await.unwrap();
        // Closing one makes room again.
        held.pop().unwrap().close().await;
        let mut again = None;
        for _ in 0..50 {
            if let Ok(client) = connect_from(&relay, "127.0.0.2").await {
                again = Some(client);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(again.is_some(), "the address's slot was given back");
        relay.stop().await;
    })
    .await;
}

/// An address at its cap is refused at the first packet of each new connection: no Retry
/// (which would cost a round trip and the handshake rate's budget for a connection refused
/// anyway) and no TLS handshake (a key exchange and a signature each), however fast it tries.
#[tokio::test]
async fn connections_over_an_addresss_cap_are_refused_before_any_retry_or_handshake() {
    bounded(async {
        let relay = TestRelay::start_with(|c| {
            c.bounds.max_connections_per_address = 2;
            // Every unvalidated connection beyond one a second would be asked to Retry.
            c.bounds.retry_above_handshakes_per_second = 1;
            // Every attempt answered, to count one refusal per attempt (the quiet period
            // after a refusal has its own test below).
            c.bounds.refused_address_quiet = Duration::ZERO;
        })
        .await;
        let mut held = Vec::new();
        for _ in 0..2 {
            held.push(connect_from(&relay, "127.0.0.2").await.unwrap());
        }
        let handshakes = relay.handle.handshakes_started();
        let retries = relay.handle.retries_sent();
        let refused = relay.handle.connections_refused();
        let attempts = 20;
        for _ in 0..attempts {
            assert_connection_refused(connect_from(&relay, "127.0.0.2").await, "over the cap");
        }
        assert_eq!(
            relay.handle.connections_refused() - refused,
            attempts,
            "each attempt was refused by the cap"
        );
        assert_eq!(
            relay.handle.retries_sent() - retries,
            0,
            "an address at its cap was sent a Retry before being refused"
        );
        assert_eq!(
            relay.handle.handshakes_started() - handshakes,
            0,
            "a refused connection reached the TLS handshake"
        );
        // The held connections are served, and another address still connects.
        for client in &held {
            client.challenge().await.unwrap();
        }
        assert_served_from(&relay, "127.0.0.1").await;
        assert_eq!(relay.handle.handshakes_started() - handshakes, 1);
        relay.stop().await;
    })
    .await;
}

/// An address that keeps closing and reopening connections (the abuser's idle connections
/// are closed after `auth_timeout` and come back, its flooders after `MAX_BAD_FRAMES`) gets a
/// handshake only within its per-address budget: past it, each new connection is refused at its
/// first packet, before any TLS work, while other addresses still connect.
#[tokio::test]
async fn an_address_reopening_connections_is_refused_handshakes_past_its_budget() {
    bounded(async {
        let relay = TestRelay::start_with(|c| {
            c.bounds.max_connections_per_address = 3;
            // Three at once, then one a minute: none more within this test.
            c.bounds.handshakes_per_address_per_minute = 1;
            // Every attempt answered, to count one refusal per attempt.
            c.bounds.refused_address_quiet = Duration::ZERO;
        })
        .await;
        for _ in 0..3 {
            let client = connect_from(&relay, "127.0.0.2").await.unwrap();
            client.challenge().await.unwrap();
            client.close().await;
        }
        // Its connections are closed: the cap has room, the handshake budget has none.
        for _ in 0..100 {
            if relay.handle.memory().connections == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            relay.handle.memory().connections,
            0,
            "the closed connections are gone"
        );
        let handshakes = relay.handle.handshakes_started();
        let refused = relay.handle.connections_refused();
        for _ in 0..5 {
            assert_connection_refused(
                connect_from(&relay, "127.0.0.2").await,
                "past the address's handshake budget",
            );
        }
        assert_eq!(relay.handle.connections_refused() - refused, 5);
        assert_eq!(
            relay.handle.handshakes_started() - handshakes,
            0,
            "a refused connection reached the TLS handshake"
        );
        // Another address has a budget of its own.
        assert_served_from(&relay, "127.0.0.1").await;
        relay.stop().await;
    })
    .await;
}

/// After a per-address limit refused an address, its new connections are not answered for
/// `refused_address_quiet`: their Initial packets are dropped as the relay's socket is read,
/// before quinn derives a key for them and before the relay builds a refusal. Its established
/// connections and every other address are served as before.
#[tokio::test]
async fn an_address_refused_by_a_limit_is_not_answered_for_its_quiet_period() {
    bounded(async {
        let relay = TestRelay::start_with(|c| {
            c.bounds.max_connections_per_address = 2;
            // Longer than the test: every attempt after the first refusal falls inside it.
            c.bounds.refused_address_quiet = Duration::from_secs(600);
        })
        .await;
        let held = [
            connect_from(&relay, "127.0.0.2").await.unwrap(),
            connect_from(&relay, "127.0.0.2").await.unwrap(),
        ];
        let refused = relay.handle.connections_refused();
        assert_connection_refused(connect_from(&relay, "127.0.0.2").await, "over the cap");
        assert_eq!(relay.handle.connections_refused() - refused, 1);
        let dropped = relay.handle.initials_dropped();
        let attempts = 5;
        for _ in 0..attempts {
            // No answer comes: the client gives up on its own.
            let attempt = tokio::time::timeout(
                Duration::from_millis(300),
                connect_from(&relay, "127.0.0.2"),
            )
            .await;
            assert!(
                attempt.is_err(),
                "an attempt in the quiet period was answered: {:?}",
                attempt.map(|r| r.err())
            );
        }
        // Every attempt's Initial reaches the relay's socket and is dropped there (waited
        // for, not timed: a busy machine reads the socket late).
        while relay.handle.initials_dropped() - dropped < attempts {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            relay.handle.connections_refused() - refused,
            1,
            "an attempt in the quiet period reached the accept loop"
        );
        // The address's established connections are served; another address connects.
        for client in &held {
            client.challenge().await.unwrap();
        }
        assert_served_from(&relay, "127.0.0.1").await;
        relay.stop().await;
    })
    .await;
}

#[tokio::test]
async fn handshakes_above_the_rate_get_a_retry_and_still_connect() {
    bounded(async {
        let relay = TestRelay::start_with(|c| c.bounds.retry_above_handshakes_per_second = 1).await;
        let mut clients = Vec::new();
        for _ in 0..6 {
            clients.push(relay.connect().await);
        }
        for client in &clients {
            client.challenge().await.unwrap();
        }
        assert!(
            relay.handle.retries_sent() >= 1,
            "six handshakes at once, one a second allowed: some had to prove their address"
        );
        relay.stop().await;
    })
    .await;
}

#[tokio::test]
async fn requests_are_bounded_by_kind_before_they_are_decoded() {
    bounded(async {
        let relay = TestRelay::start().await;
        let client = relay.connect().await;
        // A RecoverDevice "roster" of 1 MiB (within the frame limit, four times a roster's):
        // refused on its size, not decoded.
        client.challenge().await.unwrap();
        let err = client
            .request(request::Kind::RecoverDevice(proto::RecoverDevice {
                roster: vec![0; 1024 * 1024],
                device_id: vec![0; 16],
                signature: vec![0; 64],
            }))
            .await;
        assert_refused(err, ErrorCode::FrameTooLarge);
        // A pull naming 100,000 devices: refused before 100,000 cursors are allocated.
        let account = TestAccount::new(1);
        account.create(&client).await;
        let cursors = (0..100_000u32)
            .map(|i| proto::Cursor {
                device_id: i.to_be_bytes().repeat(4),
                after_seq: 1,
            })
            .collect();
        let err = client.pull(cursors, 0, 0).await;
        assert_refused(err, ErrorCode::FrameTooLarge);
        // 300,000 empty sealed keys (600 KB): refused on its size, not decoded into 300,000
        // vectors first.
        let keys = vec![Vec::new(); 300_000];
        let err = client
            .request(request::Kind::PutSealedEpochKeys(
                proto::PutSealedEpochKeys {
                    keys,
                    staged_account_key: Vec::new(),
                },
            ))
            .await;
        assert_refused(err, ErrorCode::FrameTooLarge);
        // The ordinary requests still pass.
        client.push(account.envelopes(0, 1, 10, 100)).await.unwrap();
        client.pull(Vec::new(), 0, 0).await.unwrap();
        relay.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_registration_token_is_checked_before_anything_is_verified() {
    bounded(async {
        let relay = TestRelay::start_with(|c| c.registration = RegistrationMode::Token).await;
        let client = relay.connect().await;
        client.challenge().await.unwrap();
        // Garbage roster, no token: refused for the token, before the roster is looked at.
        let err = client.expect_ok(garbage_creation(200 * 1024, "")).await;
        assert_refused(err, ErrorCode::RegistrationClosed);
        client.challenge().await.unwrap();
        let err = client
            .expect_ok(garbage_creation(200 * 1024, "not a token"))
            .await;
        assert_refused(err, ErrorCode::RegistrationClosed);
        // A valid token with a request that fails verification is given back, unspent.
        let token = "0123456789abcdef0123456789abcdef";
        relay.issue_token(token);
        client.challenge().await.unwrap();
        let err = client.expect_ok(garbage_creation(1024, token)).await;
        assert_refused(err, ErrorCode::RosterInvalid);
        let account = TestAccount::new(1);
        account.register(&client, Some(token)).await.unwrap();
        relay.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_connections_frame_buffers_stay_within_max_frame_bytes() {
    bounded(async {
        let relay = TestRelay::start().await;
        let max = relay_max_frame();
        let client = relay.connect().await;
        // 32 streams (the per-connection maximum), each announcing a maximal frame and
        // sending a little of it.
        let mut streams = Vec::new();
        for _ in 0..32 {
            let (mut send, recv) = client.connection().open_bi().await.unwrap();
            let mut start = max.to_be_bytes().to_vec();
            start.extend_from_slice(&[0u8; 1024]);
            send.write_all(&start).await.unwrap();
            streams.push((send, recv));
        }
        // Let the relay take what it will. The reserve of another `max_frame_bytes` is only for
        // the stream every earlier one has passed; the first never passes (its frame never
        // ends), so none of the others may take it.
        let mut reserved = 0;
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            reserved = reserved.max(relay.handle.memory().frame_bytes);
        }
        assert!(reserved > 0, "the relay is reading the frames");
        assert!(
            reserved <= max as usize,
            "one connection made the relay reserve {reserved} bytes for frames, more than \
             max_frame_bytes ({max})"
        );
        drop(streams);
        relay.stop().await;
    })
    .await;
}

fn relay_max_frame() -> u32 {
    kith_relay::Bounds::default().max_frame_bytes
}

/// Sends a pull on its own stream and never reads the answer: the page stays in the relay's
/// send buffer, unacknowledged.
async fn stalled_pull(client: &RelayClient) -> (quinn::SendStream, quinn::RecvStream) {
    let (mut send, recv) = client.connection().open_bi().await.unwrap();
    let frame = encode_frame(&Request {
        kind: Some(request::Kind::Pull(proto::Pull {
            cursors: Vec::new(),
            max_envelopes: 0,
            max_bytes: 0,
        })),
    });
    send.write_chunk(Bytes::from(frame)).await.unwrap();
    send.finish().unwrap();
    (send, recv)
}

#[tokio::test]
async fn one_accounts_stalled_pulls_do_not_stall_another_accounts_pull() {
    bounded(async {
        // Stalled pulls would hold their pages for five minutes.
        let relay =
            TestRelay::start_with(|c| c.bounds.request_timeout = Duration::from_secs(300)).await;
        let hog = TestAccount::new(1);
        let hog_client = relay.connect().await;
        hog.create(&hog_client).await;
        // 2.5 MB stored: every pull page is as large as the relay allows (2 MiB).
        for batch in 0..5u64 {
            hog_client
                .push(hog.envelopes(0, batch * 25 + 1, 25, 20_000))
                .await
                .unwrap();
        }
        // Two connections of 31 stalled pulls each: more than the whole pull budget.
        let (mut stalled, mut clients) = (Vec::new(), Vec::new());
        for _ in 0..2 {
            let client = relay.connect_as(&hog, 0).await;
            for _ in 0..31 {
                stalled.push(stalled_pull(&client).await);
            }
            clients.push(client);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Another tenant pulls: it is served now, not when the stalled pulls time out.
        let honest = TestAccount::new(1);
        let client = relay.connect().await;
        honest.create(&client).await;
        client.push(honest.envelopes(0, 1, 10, 1000)).await.unwrap();
        let page = client.pull(Vec::new(), 0, 0).await.unwrap();
        assert_eq!(page.envelopes.len(), 10);
        drop((stalled, clients));
        relay.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_connection_that_keeps_sending_bad_frames_is_closed() {
    bounded(async {
        let relay = TestRelay::start().await;
        let flooder = relay.connect().await;
        // A frame of 4 bytes that is no request: within every size bound, undecodable.
        let garbage = [0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff].to_vec();
        let mut refused = 0;
        for _ in 0..40 {
            match flooder.call_frame(Bytes::from(garbage.clone())).await {
                Ok(_) => refused += 1,
                Err(_) => break,
            }
        }
        assert_eq!(refused, 16, "each bad frame is answered, up to the bound");
        let closed = tokio::time::timeout(Duration::from_secs(30), flooder.connection().closed())
            .await
            .expect("the flooding connection is still open");
        assert!(
            matches!(closed, quinn::ConnectionError::ApplicationClosed(ref close)
                if close.reason.as_ref() == b"too many bad frames"),
            "{closed:?}"
        );
        // Others are not disturbed.
        relay.connect().await.challenge().await.unwrap();
        relay.stop().await;
    })
    .await;
}

/// A frame announcing more than `max_frame_bytes` closes its connection at once (§12): a flood
/// of them costs its sender a handshake per frame, not per 17.
#[tokio::test]
async fn a_frame_announcing_more_than_max_frame_bytes_closes_its_connection() {
    bounded(async {
        let relay = TestRelay::start().await;
        let flooder = relay.connect().await;
        let mut oversized = (relay_max_frame() + 1).to_be_bytes().to_vec();
        oversized.extend_from_slice(&[0u8; 16 * 1024]);
        // The relay closes the connection instead of answering on the stream.
        let answer = flooder.call_frame(Bytes::from(oversized.clone())).await;
        assert!(
            answer.is_err(),
            "the oversized frame was answered: {answer:?}"
        );
        // The client's keep-alives would hold the connection open for ever: only the relay
        // closes it (well within the bound, however slow the machine).
        let closed = tokio::time::timeout(Duration::from_secs(30), flooder.connection().closed())
            .await
            .expect("the connection that sent an oversized frame is still open");
        assert!(
            matches!(closed, quinn::ConnectionError::ApplicationClosed(ref close)
                if close.error_code == kith_relay::server::FRAME_TOO_LARGE.into()
                    && close.reason.as_ref() == b"frame too large"),
            "{closed:?}"
        );
        // A frame of exactly the limit's length announced is not closed for its size: it is
        // read (here: cut short, and answered as a bad frame), and the connection goes on.
        let client = relay.connect().await;
        let mut at_limit = relay_max_frame().to_be_bytes().to_vec();
        at_limit.extend_from_slice(&[0u8; 1024]);
        let (mut send, mut recv) = client.connection().open_bi().await.unwrap();
        send.write_all(&at_limit).await.unwrap();
        send.finish().unwrap();
        let answer = kith_net::read_frame_bytes(&mut recv, 1 << 20, 1024).await;
        assert!(
            answer.is_ok(),
            "a frame within the limit got no answer: {answer:?}"
        );
        client
            .request(request::Kind::GetChallenge(proto::GetChallenge {}))
            .await
            .unwrap();
        // Others are not disturbed.
        relay
            .connect()
            .await
            .request(request::Kind::GetChallenge(proto::GetChallenge {}))
            .await
            .unwrap();
        relay.handle.shutdown().await.unwrap();
    })
    .await;
}
