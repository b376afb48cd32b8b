//! `kith-tls`: the TLS pieces the relay and every client of it share (docs/PROTOCOL.md §12).
//!
//! - [`ALPN`], the protocol id both sides require;
//! - [`provider`], the one rustls crypto provider both sides use: ring, with the hybrid
//!   post-quantum key exchange [`X25519MLKEM768`] first and classical X25519 after it;
//! - [`fingerprint`], the SHA-256 of a DER certificate: what `kith-relay` prints at start-up and
//!   what a client pins;
//! - [`PinnedCertVerifier`], a server certificate verifier that accepts exactly the pinned
//!   certificate and checks TLS 1.3 handshake signatures with its key as usual.
//!
//! ```
//! let pin = [0u8; 32];
//! let verifier = kith_tls::PinnedCertVerifier::new(pin);
//! # let _ = verifier;
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod hybrid;

use std::sync::Arc;

pub use hybrid::X25519MLKEM768;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The ALPN protocol id of Kith's relay protocol.
pub const ALPN: &[u8] = b"kith/1";

/// The crypto provider of every Kith TLS configuration: rustls with ring, whose key exchange
/// groups are, in order of preference, [`X25519MLKEM768`] (so that recorded traffic stays
/// closed to a future quantum computer) and then ring's classical groups (X25519 first), which
/// older clients and relays speak. A client sends both an X25519MLKEM768 and an X25519 share;
/// a relay picks X25519MLKEM768 whenever the client offers it.
pub fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.kx_groups.insert(0, X25519MLKEM768);
    Arc::new(provider)
}

/// A rustls client configuration for the relay protocol that accepts exactly the certificate
/// whose SHA-256 is `cert_sha256`: TLS 1.3 only, ALPN [`ALPN`], no client certificate.
pub fn pinned_client_config(cert_sha256: [u8; 32]) -> Result<rustls::ClientConfig, rustls::Error> {
    let verifier = Arc::new(PinnedCertVerifier::new(cert_sha256));
    Ok(with_alpn(
        tls13_client()?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth(),
    ))
}

/// The same as [`pinned_client_config`], but verifying the relay's chain against `roots`.
pub fn ca_client_config(
    roots: rustls::RootCertStore,
) -> Result<rustls::ClientConfig, rustls::Error> {
    Ok(with_alpn(
        tls13_client()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

fn tls13_client()
-> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier>, rustls::Error> {
    rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
}

fn with_alpn(mut config: rustls::ClientConfig) -> rustls::ClientConfig {
    config.alpn_protocols = vec![ALPN.to_vec()];
    config
}

/// The SHA-256 fingerprint of a DER certificate.
pub fn fingerprint(cert: &CertificateDer<'_>) -> [u8; 32] {
    Sha256::digest(cert.as_ref()).into()
}

/// Accepts exactly the server certificate whose SHA-256 is pinned, whatever its names, issuer
/// or dates (a self-signed relay certificate has no other trust anchor); checks the TLS 1.3
/// handshake signature with the certificate's key as usual, and refuses TLS 1.2.
#[derive(Debug)]
pub struct PinnedCertVerifier {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl PinnedCertVerifier {
    /// Pins the certificate whose SHA-256 is `cert_sha256`.
    pub fn new(cert_sha256: [u8; 32]) -> Self {
        Self {
            pin: cert_sha256,
            provider: provider(),
        }
    }
}

impl ServerCertVerifier for PinnedCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // A hash of public data; compared in constant time all the same, as every tag is.
        if bool::from(fingerprint(end_entity).ct_eq(&self.pin)) {
            Ok(ServerCertVerified::assertion())
        } else {
            // `General` rather than `InvalidCertificate`: its text reaches the person who typed
            // the fingerprint, through quinn's handshake error.
            Err(rustls::Error::General(PIN_MISMATCH.into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// What a pinned verifier says when it refuses a certificate.
pub const PIN_MISMATCH: &str = "the relay's certificate does not match the pinned SHA-256";

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate() -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["relay.example".to_string()]).unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    fn verify(verifier: &PinnedCertVerifier, cert: &CertificateDer<'_>) -> Result<(), String> {
        let name = ServerName::try_from("anything.invalid").unwrap();
        verifier
            .verify_server_cert(cert, &[], &name, &[], UnixTime::now())
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn only_the_pinned_certificate_is_accepted_whatever_the_name() {
        let pinned = certificate();
        let other = certificate();
        let verifier = PinnedCertVerifier::new(fingerprint(&pinned));
        assert_eq!(verify(&verifier, &pinned), Ok(()));
        let refused = verify(&verifier, &other).unwrap_err();
        assert!(refused.contains(PIN_MISMATCH), "{refused}");
    }

    #[test]
    fn one_flipped_bit_of_the_pin_refuses_the_certificate() {
        let cert = certificate();
        for bit in [0, 7, 128, 255] {
            let mut pin = fingerprint(&cert);
            pin[bit / 8] ^= 1 << (bit % 8);
            assert!(
                verify(&PinnedCertVerifier::new(pin), &cert).is_err(),
                "bit {bit}"
            );
        }
    }

    #[test]
    fn the_fingerprint_is_the_sha256_of_the_der_bytes() {
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        assert_eq!(
            fingerprint(&CertificateDer::from(b"abc".to_vec())),
            [
                0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40, 0xde, 0x5d, 0xae,
                0x22, 0x23, 0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61,
                0xf2, 0x00, 0x15, 0xad
            ]
        );
    }

    #[test]
    fn handshake_signatures_use_the_providers_algorithms() {
        let verifier = PinnedCertVerifier::new([0; 32]);
        let schemes = verifier.supported_verify_schemes();
        assert!(schemes.contains(&SignatureScheme::ED25519), "{schemes:?}");
        assert!(
            schemes.contains(&SignatureScheme::ECDSA_NISTP256_SHA256),
            "{schemes:?}"
        );
    }
}
