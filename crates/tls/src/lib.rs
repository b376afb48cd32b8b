//! `kith-tls`: the TLS pieces the relay and every client of it share (docs/PROTOCOL.md §12).
//!
//! - [`ALPN`], the protocol id both sides require;
//! - [`provider`], the one rustls crypto provider both sides use: ring, with the hybrid
//!   post-quantum key exchange [`X25519MLKEM768`] first and classical X25519 after it;
//! - [`key_sha256`], the SHA-256 of a certificate's public key (its DER SubjectPublicKeyInfo):
//!   what `kith-relay` prints as `key sha256` and what a client pins, so that a certificate
//!   renewed with the same key keeps the pin;
//! - [`fingerprint`], the SHA-256 of a whole DER certificate: the older pin, printed as
//!   `certificate sha256` and still accepted;
//! - [`PinnedCertVerifier`], a server certificate verifier that accepts a certificate whose key
//!   (or, for an older pin, whole encoding) has one of the pinned hashes, and checks TLS 1.3
//!   handshake signatures with its key as usual.
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

pub use hybrid::{
    MLKEM768_CIPHERTEXT_LEN, MLKEM768_ENCAPSULATION_KEY_LEN, X25519_LEN, X25519MLKEM768,
};
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

/// A rustls client configuration for the relay protocol that accepts a certificate whose key
/// (SPKI) or whole encoding has the SHA-256 `pin` ([`PinnedCertVerifier`]): TLS 1.3 only, ALPN
/// [`ALPN`], no client certificate.
pub fn pinned_client_config(pin: [u8; 32]) -> Result<rustls::ClientConfig, rustls::Error> {
    pinned_set_client_config(vec![pin])
}

/// [`pinned_client_config`] with several pins, any of which may match: the key in use and the
/// next one, while a relay's operator rotates to a new key.
pub fn pinned_set_client_config(
    pins: Vec<[u8; 32]>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let verifier = Arc::new(PinnedCertVerifier::with_pins(pins));
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

/// The SHA-256 fingerprint of a whole DER certificate (the pin of releases before key pins;
/// it changes with every renewal).
pub fn fingerprint(cert: &CertificateDer<'_>) -> [u8; 32] {
    Sha256::digest(cert.as_ref()).into()
}

/// The SHA-256 of a DER certificate's SubjectPublicKeyInfo (RFC 5280 §4.1.2.7, outer
/// `SEQUENCE` included, as in RFC 7469 §2.4): the key pin, which a certificate renewed with the
/// same key keeps. `None` when the certificate cannot be parsed.
pub fn key_sha256(cert: &CertificateDer<'_>) -> Option<[u8; 32]> {
    let parsed = webpki::EndEntityCert::try_from(cert).ok()?;
    Some(Sha256::digest(parsed.subject_public_key_info().as_ref()).into())
}

/// Which pin a certificate matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinMatch {
    /// The SHA-256 of its public key ([`key_sha256`]).
    Key,
    /// The SHA-256 of the whole certificate ([`fingerprint`]): an older pin, which the next
    /// renewal breaks; a client replaces it with the key pin.
    Certificate,
}

/// Whether `cert` matches `pin`, and how: by its key first, else by its whole encoding.
/// Compared in constant time (hashes of public data, compared as every tag is).
pub fn matches_pin(cert: &CertificateDer<'_>, pin: &[u8; 32]) -> Option<PinMatch> {
    if key_sha256(cert).is_some_and(|key| bool::from(key.ct_eq(pin))) {
        Some(PinMatch::Key)
    } else if bool::from(fingerprint(cert).ct_eq(pin)) {
        Some(PinMatch::Certificate)
    } else {
        None
    }
}

/// Accepts a server certificate whose public key ([`key_sha256`]) or, for a pin of an older
/// release, whole encoding ([`fingerprint`]) has one of the pinned SHA-256 hashes, whatever its
/// names, issuer or dates (a self-signed relay certificate has no other trust anchor); checks
/// the TLS 1.3 handshake signature with the certificate's key as usual, and refuses TLS 1.2.
/// The two hashes are of different inputs (a SubjectPublicKeyInfo is never a certificate), so
/// accepting either grants nothing a SHA-256 second preimage would not.
#[derive(Debug)]
pub struct PinnedCertVerifier {
    pins: Vec<[u8; 32]>,
    provider: Arc<CryptoProvider>,
}

impl PinnedCertVerifier {
    /// Pins the certificate whose key (or whole encoding) has the SHA-256 `pin`.
    pub fn new(pin: [u8; 32]) -> Self {
        Self::with_pins(vec![pin])
    }

    /// Pins a set: a certificate matching any of them is accepted.
    pub fn with_pins(pins: Vec<[u8; 32]>) -> Self {
        Self {
            pins,
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
        if self
            .pins
            .iter()
            .any(|pin| matches_pin(end_entity, pin).is_some())
        {
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
pub const PIN_MISMATCH: &str = "the relay's certificate does not match the pinned SHA-256 \
     (neither its public key nor the whole certificate): the relay has another key than the one \
     pinned. If its operator changed the key, take the new `key sha256` that kith-relay prints \
     and run `kith relay set --relay-cert-sha256 HEX`";

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate() -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["relay.example".to_string()]).unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    /// A certificate of `key` for `name`, valid from `year`: two calls with one key are a
    /// renewal.
    fn certificate_of(key: &rcgen::KeyPair, name: &str, year: i32) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(year, 1, 1);
        params.self_signed(key).unwrap().der().clone()
    }

    #[test]
    fn a_renewal_with_the_same_key_keeps_the_key_pin_and_changes_the_certificate_pin() {
        let key = rcgen::KeyPair::generate().unwrap();
        let first = certificate_of(&key, "relay.example", 2025);
        let renewed = certificate_of(&key, "relay.example", 2026);
        assert_ne!(fingerprint(&first), fingerprint(&renewed));
        assert_eq!(key_sha256(&first), key_sha256(&renewed));
        // The pin is the hash of the DER SubjectPublicKeyInfo, as rcgen encodes it.
        assert_eq!(
            key_sha256(&first).unwrap(),
            <[u8; 32]>::from(Sha256::digest(
                rcgen::PublicKeyData::subject_public_key_info(&key)
            ))
        );

        let by_key = PinnedCertVerifier::new(key_sha256(&first).unwrap());
        assert_eq!(verify(&by_key, &renewed), Ok(()));
        assert_eq!(
            matches_pin(&renewed, &key_sha256(&first).unwrap()),
            Some(PinMatch::Key)
        );
        // The older pin still opens the certificate it was taken from, and only that one.
        let by_certificate = PinnedCertVerifier::new(fingerprint(&first));
        assert_eq!(verify(&by_certificate, &first), Ok(()));
        assert_eq!(
            matches_pin(&first, &fingerprint(&first)),
            Some(PinMatch::Certificate)
        );
        assert!(verify(&by_certificate, &renewed).is_err());

        let other_key = rcgen::KeyPair::generate().unwrap();
        let rekeyed = certificate_of(&other_key, "relay.example", 2026);
        let refused = verify(&by_key, &rekeyed).unwrap_err();
        assert!(refused.contains(PIN_MISMATCH), "{refused}");
    }

    #[test]
    fn a_pin_set_accepts_the_next_key_before_the_relay_rotates_to_it() {
        let current = rcgen::KeyPair::generate().unwrap();
        let next = rcgen::KeyPair::generate().unwrap();
        let stranger = rcgen::KeyPair::generate().unwrap();
        let pin = |key: &rcgen::KeyPair| key_sha256(&certificate_of(key, "r", 2026)).unwrap();
        let verifier = PinnedCertVerifier::with_pins(vec![pin(&current), pin(&next)]);
        assert_eq!(
            verify(&verifier, &certificate_of(&current, "r", 2025)),
            Ok(())
        );
        assert_eq!(verify(&verifier, &certificate_of(&next, "r", 2027)), Ok(()));
        assert!(verify(&verifier, &certificate_of(&stranger, "r", 2027)).is_err());
    }

    #[test]
    fn garbage_is_no_certificate_and_matches_no_key_pin() {
        let garbage = CertificateDer::from(b"not a certificate".to_vec());
        assert_eq!(key_sha256(&garbage), None);
        assert_eq!(matches_pin(&garbage, &[0; 32]), None);
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
