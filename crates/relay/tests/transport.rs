//! The QUIC/TLS handshake between Kith's clients and the relay (docs/PROTOCOL.md §12,
//! "Transport"): the hybrid post-quantum group X25519MLKEM768 is negotiated, and a client that
//! offers only classical groups, as 0.1.0 does, still connects with X25519.

mod common;

use std::sync::Arc;

use common::{TestRelay, bounded};
use kith_relay::client::RelayClient;
use rustls::NamedGroup;

/// The key exchange group a connection's handshake agreed on.
fn group(connection: &quinn::Connection) -> NamedGroup {
    connection
        .handshake_data()
        .unwrap()
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .unwrap()
        .negotiated_key_exchange_group
}

#[tokio::test]
async fn kith_clients_and_the_relay_negotiate_x25519mlkem768() {
    bounded(async {
        let relay = TestRelay::start().await;
        // The relay's test client builds its TLS configuration with
        // `kith_tls::pinned_client_config`, exactly as kith-client does (net.rs).
        let client = relay.connect().await;
        assert_eq!(group(client.connection()), NamedGroup::X25519MLKEM768);
        client.challenge().await.unwrap();
        relay.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_classical_client_still_connects_with_x25519() {
    bounded(async {
        let relay = TestRelay::start().await;
        // What a 0.1.0 client offers: ring's default groups.
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(kith_tls::PinnedCertVerifier::new(
            relay.handle.cert_sha256(),
        )))
        .with_no_client_auth();
        tls.alpn_protocols = vec![kith_tls::ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        let client = RelayClient::connect_with(endpoint, relay.handle.local_addr())
            .await
            .unwrap();
        assert_eq!(group(client.connection()), NamedGroup::X25519);
        client.challenge().await.unwrap();
        relay.stop().await;
    })
    .await;
}

/// The largest datagram the connection has had acknowledged on its path (quinn's path MTU).
fn mtu(client: &RelayClient) -> u16 {
    client.connection().stats().path.current_mtu
}

/// Round trips until the client's datagrams grow past an Ethernet path's 1,452 bytes; how
/// many it took.
async fn round_trips_until_past_ethernet(client: &RelayClient) -> usize {
    let mut trips = 0;
    while mtu(client) <= 1452 {
        client.challenge().await.unwrap();
        trips += 1;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    trips
}

#[tokio::test]
async fn datagrams_grow_past_ethernet_size_where_the_path_carries_them() {
    bounded(async {
        let relay = TestRelay::start().await;
        // Loopback carries 64 KiB datagrams: the relay accepts, and its clients probe for, up
        // to kith_net::MAX_UDP_PAYLOAD; quinn's defaults would stop at 1,452 (test timeout).
        let client = relay.connect().await;
        let trips = round_trips_until_past_ethernet(&client).await;
        assert!(mtu(&client) <= kith_net::MAX_UDP_PAYLOAD);

        // A client held to an Ethernet path's size stays there over more round trips than
        // the first one needed, on the same relay.
        let endpoint =
            kith_relay::client::shared_endpoint_up_to(relay.handle.cert_sha256(), 1452).unwrap();
        let held = RelayClient::connect_with(endpoint, relay.handle.local_addr())
            .await
            .unwrap();
        for _ in 0..(trips + 1) * 3 {
            held.challenge().await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(mtu(&held) <= 1452, "{}", mtu(&held));
        relay.stop().await;
    })
    .await;
}
