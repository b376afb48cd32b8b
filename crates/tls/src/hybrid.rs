//! X25519MLKEM768: the hybrid post-quantum TLS 1.3 key exchange of
//! draft-ietf-tls-ecdhe-mlkem (code point 0x11EC), in pure Rust over the `ml-kem` crate and
//! the provider's X25519.
//!
//! Encoding (draft §3, "X25519MLKEM768"): the ML-KEM part comes first everywhere.
//! - client share: ML-KEM-768 encapsulation key (1184 bytes) `||` X25519 public key (32);
//! - server share: ML-KEM-768 ciphertext (1088 bytes) `||` X25519 public key (32);
//! - shared secret: ML-KEM shared secret (32 bytes) `||` X25519 shared secret (32).
//!
//! The client also offers its X25519 share alone ([`ActiveKeyExchange::hybrid_component`]),
//! so a server that knows only X25519 (an older Kith relay) completes the handshake without a
//! retry, with the same X25519 key.

use ml_kem::{Decapsulate, Encapsulate, Generate, KeyExport, MlKem768, TryKeyInit, kem::Kem};
use rustls::crypto::{ActiveKeyExchange, CompletedKeyExchange, SharedSecret, SupportedKxGroup};
use rustls::ffdhe_groups::FfdheGroup;
use rustls::{Error, NamedGroup, PeerMisbehaved, ProtocolVersion};
use zeroize::Zeroizing;

/// Length of an ML-KEM-768 encapsulation key.
pub const MLKEM768_ENCAPSULATION_KEY_LEN: usize = 1184;
/// Length of an ML-KEM-768 ciphertext.
pub const MLKEM768_CIPHERTEXT_LEN: usize = 1088;
/// Length of an X25519 public key.
pub const X25519_LEN: usize = 32;

type DecapsulationKey = <MlKem768 as Kem>::DecapsulationKey;
type EncapsulationKey = <MlKem768 as Kem>::EncapsulationKey;

/// The X25519MLKEM768 key exchange group (see the module docs).
pub static X25519MLKEM768: &dyn SupportedKxGroup = &X25519MlKem768;

const INVALID_KEY_SHARE: Error = Error::PeerMisbehaved(PeerMisbehaved::InvalidKeyShare);

/// The classical half: the provider's X25519.
fn classical() -> &'static dyn SupportedKxGroup {
    rustls::crypto::ring::kx_group::X25519
}

#[derive(Debug)]
struct X25519MlKem768;

impl SupportedKxGroup for X25519MlKem768 {
    /// The client's half: a fresh ML-KEM-768 key pair and a fresh X25519 key.
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, Error> {
        let decapsulation = DecapsulationKey::try_generate_from_rng(&mut getrandom::SysRng)
            .map_err(|_| Error::FailedToGetRandomBytes)?;
        let classical = classical().start()?;
        let mut share = Vec::with_capacity(MLKEM768_ENCAPSULATION_KEY_LEN + X25519_LEN);
        share.extend_from_slice(&decapsulation.encapsulation_key().to_bytes());
        share.extend_from_slice(classical.pub_key());
        Ok(Box::new(ActiveX25519MlKem768 {
            decapsulation: Box::new(decapsulation),
            classical,
            share,
        }))
    }

    /// The server's half: encapsulates to the client's key and completes X25519 at once.
    fn start_and_complete(&self, client_share: &[u8]) -> Result<CompletedKeyExchange, Error> {
        if client_share.len() != MLKEM768_ENCAPSULATION_KEY_LEN + X25519_LEN {
            return Err(INVALID_KEY_SHARE);
        }
        let (encapsulation_key, x25519) = client_share.split_at(MLKEM768_ENCAPSULATION_KEY_LEN);
        // `new_from_slice` checks the length and that every coefficient is reduced (FIPS 203
        // §7.2 "modulus check"): a malformed key is refused, not encapsulated to.
        let encapsulation_key =
            EncapsulationKey::new_from_slice(encapsulation_key).map_err(|_| INVALID_KEY_SHARE)?;
        let (ciphertext, pq_secret) =
            encapsulation_key.encapsulate_with_rng(&mut rand_core::UnwrapErr(getrandom::SysRng));
        let pq_secret = Zeroizing::new(pq_secret);
        let classical = classical().start_and_complete(x25519)?;
        let mut share = Vec::with_capacity(MLKEM768_CIPHERTEXT_LEN + X25519_LEN);
        share.extend_from_slice(&ciphertext);
        share.extend_from_slice(&classical.pub_key);
        Ok(CompletedKeyExchange {
            group: NamedGroup::X25519MLKEM768,
            pub_key: share,
            secret: combine(&pq_secret, classical.secret.secret_bytes()),
        })
    }

    fn ffdhe_group(&self) -> Option<FfdheGroup<'static>> {
        None
    }

    fn name(&self) -> NamedGroup {
        NamedGroup::X25519MLKEM768
    }

    fn usable_for_version(&self, version: ProtocolVersion) -> bool {
        version == ProtocolVersion::TLSv1_3
    }
}

/// ML-KEM secret first, then X25519's (draft §3).
fn combine(post_quantum: &[u8], classical: &[u8]) -> SharedSecret {
    let mut secret = Zeroizing::new(Vec::with_capacity(post_quantum.len() + classical.len()));
    secret.extend_from_slice(post_quantum);
    secret.extend_from_slice(classical);
    SharedSecret::from(&secret[..])
}

/// A client's key exchange in progress. The decapsulation key is boxed (not copied around the
/// stack) and zeroized on drop by `ml-kem`.
struct ActiveX25519MlKem768 {
    decapsulation: Box<DecapsulationKey>,
    classical: Box<dyn ActiveKeyExchange>,
    share: Vec<u8>,
}

impl ActiveKeyExchange for ActiveX25519MlKem768 {
    fn complete(self: Box<Self>, server_share: &[u8]) -> Result<SharedSecret, Error> {
        if server_share.len() != MLKEM768_CIPHERTEXT_LEN + X25519_LEN {
            return Err(INVALID_KEY_SHARE);
        }
        let (ciphertext, x25519) = server_share.split_at(MLKEM768_CIPHERTEXT_LEN);
        let pq_secret = Zeroizing::new(
            self.decapsulation
                .decapsulate_slice(ciphertext)
                .map_err(|_| INVALID_KEY_SHARE)?,
        );
        let classical = self.classical.complete(x25519)?;
        Ok(combine(&pq_secret, classical.secret_bytes()))
    }

    fn hybrid_component(&self) -> Option<(NamedGroup, &[u8])> {
        Some((self.classical.group(), self.classical.pub_key()))
    }

    fn complete_hybrid_component(
        self: Box<Self>,
        server_share: &[u8],
    ) -> Result<SharedSecret, Error> {
        self.classical.complete(server_share)
    }

    fn pub_key(&self) -> &[u8] {
        &self.share
    }

    fn ffdhe_group(&self) -> Option<FfdheGroup<'static>> {
        None
    }

    fn group(&self) -> NamedGroup {
        NamedGroup::X25519MLKEM768
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client and a server exchange, in the draft's encoding; returns the client's
    /// decapsulation key and X25519 share, the server's share and both secrets.
    fn exchange() -> (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>) {
        let client = X25519MLKEM768.start().unwrap();
        let client_share = client.pub_key().to_vec();
        let server = X25519MLKEM768.start_and_complete(&client_share).unwrap();
        let client_secret = client.complete(&server.pub_key).unwrap();
        (
            client_share,
            server.pub_key.clone(),
            client_secret.secret_bytes().to_vec(),
            server.secret.secret_bytes().to_vec(),
        )
    }

    #[test]
    fn both_sides_derive_the_same_64_byte_secret_from_shares_of_the_drafts_sizes() {
        let (client_share, server_share, client_secret, server_secret) = exchange();
        assert_eq!(client_share.len(), 1184 + 32);
        assert_eq!(server_share.len(), 1088 + 32);
        assert_eq!(client_secret.len(), 64);
        assert_eq!(client_secret, server_secret);
    }

    #[test]
    fn shares_and_secret_put_ml_kem_first_and_x25519_last() {
        // Draft §3: client share = ek || x25519, server share = ct || x25519, secret =
        // ML-KEM ss || X25519 ss. Check each part against the component algorithms alone.
        let client = X25519MLKEM768.start().unwrap();
        let client_share = client.pub_key().to_vec();
        let (encapsulation_key, client_x25519) = client_share.split_at(1184);
        // The X25519 half is exactly the classical share the client also offers alone.
        assert_eq!(
            client.hybrid_component(),
            Some((NamedGroup::X25519, client_x25519))
        );
        // A server built from the components: ML-KEM encapsulation to the first part, X25519
        // with the second.
        let ek = EncapsulationKey::new_from_slice(encapsulation_key).unwrap();
        let (ciphertext, ml_kem_secret) =
            ek.encapsulate_with_rng(&mut rand_core::UnwrapErr(getrandom::SysRng));
        let x25519 = classical().start_and_complete(client_x25519).unwrap();
        let mut server_share = ciphertext.to_vec();
        server_share.extend_from_slice(&x25519.pub_key);
        let secret = client.complete(&server_share).unwrap();
        assert_eq!(&secret.secret_bytes()[..32], &ml_kem_secret[..]);
        assert_eq!(&secret.secret_bytes()[32..], x25519.secret.secret_bytes());
    }

    #[test]
    fn the_classical_half_alone_completes_against_a_classical_server() {
        let client = X25519MLKEM768.start().unwrap();
        let (_, x25519) = client.hybrid_component().unwrap();
        let server = classical().start_and_complete(x25519).unwrap();
        let secret = client.complete_hybrid_component(&server.pub_key).unwrap();
        assert_eq!(secret.secret_bytes(), server.secret.secret_bytes());
    }

    #[test]
    fn malformed_shares_are_refused() {
        let (client_share, server_share, _, _) = exchange();
        for bad in [&client_share[..1215], &[0u8; 1217][..], &[][..]] {
            assert!(X25519MLKEM768.start_and_complete(bad).is_err());
        }
        // An encapsulation key whose coefficients are not reduced (all bits set).
        let mut unreduced = vec![0xff; 1184];
        unreduced.extend_from_slice(&client_share[1184..]);
        assert!(X25519MLKEM768.start_and_complete(&unreduced).is_err());
        for bad in [&server_share[..1119], &[0u8; 1121][..]] {
            let client = X25519MLKEM768.start().unwrap();
            assert!(client.complete(bad).is_err());
        }
    }
}
