//! TLS 1.3 handshakes between Kith's client and server configurations, in memory: which key
//! exchange group they agree on (docs/PROTOCOL.md §12, "Transport").

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConnection, NamedGroup, ServerConnection};

/// A server configuration built as the relay builds its own (kith-relay `tls::server_config`).
fn server(provider: Arc<rustls::crypto::CryptoProvider>) -> (Arc<rustls::ServerConfig>, [u8; 32]) {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = CertificateDer::from(generated.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        generated.signing_key.serialize_der(),
    ));
    let pin = kith_tls::fingerprint(&cert);
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    config.alpn_protocols = vec![kith_tls::ALPN.to_vec()];
    (Arc::new(config), pin)
}

/// Runs the handshake to its end; returns the group each side reports.
fn handshake(
    client: rustls::ClientConfig,
    server: Arc<rustls::ServerConfig>,
) -> (NamedGroup, NamedGroup) {
    let name = "localhost".try_into().unwrap();
    let mut client = ClientConnection::new(Arc::new(client), name).unwrap();
    let mut server = ServerConnection::new(server).unwrap();
    for _ in 0..10 {
        let mut buf = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut buf).unwrap();
        }
        server.read_tls(&mut buf.as_slice()).unwrap();
        server.process_new_packets().unwrap();
        let mut buf = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut buf).unwrap();
        }
        client.read_tls(&mut buf.as_slice()).unwrap();
        client.process_new_packets().unwrap();
        if !client.is_handshaking() && !server.is_handshaking() {
            break;
        }
    }
    assert!(!client.is_handshaking() && !server.is_handshaking());
    (
        client.negotiated_key_exchange_group().unwrap().name(),
        server.negotiated_key_exchange_group().unwrap().name(),
    )
}

#[test]
fn kith_clients_and_relays_agree_on_x25519mlkem768() {
    let (server, pin) = server(kith_tls::provider());
    let client = kith_tls::pinned_client_config(pin).unwrap();
    assert_eq!(
        handshake(client, server),
        (NamedGroup::X25519MLKEM768, NamedGroup::X25519MLKEM768)
    );
}

#[test]
fn a_classical_client_still_completes_the_handshake_with_x25519() {
    // What a 0.1.0 client offers: ring's default groups, X25519 first.
    let (server, pin) = server(kith_tls::provider());
    let mut classical = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(kith_tls::PinnedCertVerifier::new(pin)))
    .with_no_client_auth();
    classical.alpn_protocols = vec![kith_tls::ALPN.to_vec()];
    assert_eq!(
        handshake(classical, server),
        (NamedGroup::X25519, NamedGroup::X25519)
    );
}

#[test]
fn a_kith_client_still_reaches_a_classical_relay() {
    // A 0.1.0 relay: ring's default groups only. It takes the X25519 share the client sends
    // beside the hybrid one.
    let (server, pin) = server(Arc::new(rustls::crypto::ring::default_provider()));
    let client = kith_tls::pinned_client_config(pin).unwrap();
    assert_eq!(
        handshake(client, server),
        (NamedGroup::X25519, NamedGroup::X25519)
    );
}
