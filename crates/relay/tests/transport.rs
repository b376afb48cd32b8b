//! The QUIC/TLS handshake between Kith's clients and the relay (docs/PROTOCOL.md §12,
//! "Transport"): the hybrid post-quantum group X25519MLKEM768 is negotiated, and a client that
//! offers only classical groups, as 0.1.0 does, still connects with X25519.

mod common;

use std::sync::Arc;

use common::{TestRelay, bounded};
use kith_protocol::proto::{self, request};
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
        client
            .request(request::Kind::GetChallenge(proto::GetChallenge {}))
            .await
            .unwrap();
        relay.handle.shutdown().await.unwrap();
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
        client
            .request(request::Kind::GetChallenge(proto::GetChallenge {}))
            .await
            .unwrap();
        relay.handle.shutdown().await.unwrap();
    })
    .await;
}
