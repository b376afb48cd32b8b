//! TLS: the relay's certificate (self-signed on first start, or a configured chain), reloaded
//! while the relay runs ([`CertificateSource`]), the QUIC server and client configurations,
//! and pinning by the SHA-256 of the certificate's public key for clients.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use kith_tls::provider;
pub use kith_tls::{ALPN, PinnedCertVerifier, fingerprint, key_sha256};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::{Bounds, RelayConfig};

/// File name, in the data directory, of the secret that keys QUIC stateless resets.
pub const RESET_KEY: &str = "reset.key";
/// Length of that secret.
const RESET_KEY_LEN: usize = 64;

/// File names of the self-signed certificate and key in the data directory.
pub const SELF_SIGNED_CERT: &str = "cert.pem";
/// See [`SELF_SIGNED_CERT`].
pub const SELF_SIGNED_KEY: &str = "key.pem";

/// The files of a data directory that relays behind one address share (copied from the first
/// relay's): the self-signed certificate and key that clients pin, and the stateless-reset
/// key, so that a reset sent by any of them is accepted.
pub const SHARED_IDENTITY_FILES: [&str; 3] = [SELF_SIGNED_CERT, SELF_SIGNED_KEY, RESET_KEY];

/// TLS setup failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A certificate or key file could not be read or written.
    #[error("{what} {path}: {source}")]
    File {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// A PEM file holds no usable certificate or key.
    #[error("{0}")]
    Pem(String),
    /// The stateless-reset key could not be made, or its file is damaged.
    #[error("{0}")]
    ResetKey(String),
    /// rcgen could not generate the certificate.
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// quinn refused the TLS configuration.
    #[error("QUIC TLS configuration: {0}")]
    Quic(String),
}

/// The relay's certificate chain and key, and the pins of its end-entity certificate.
#[derive(Debug)]
pub struct ServerIdentity {
    /// Chain, end-entity first.
    pub chain: Vec<CertificateDer<'static>>,
    /// Private key.
    pub key: PrivateKeyDer<'static>,
    /// The pins of `chain[0]`.
    pub pins: Pins,
}

/// The two SHA-256 pins of a certificate, as `kith-relay serve` prints them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pins {
    /// SHA-256 of the whole certificate (`certificate sha256`): the pin of older releases,
    /// which every renewal changes.
    pub cert_sha256: [u8; 32],
    /// SHA-256 of its public key, the DER SubjectPublicKeyInfo (`key sha256`): what clients
    /// pin, unchanged by a renewal with the same key.
    pub key_sha256: [u8; 32],
}

fn file_error(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> TlsError {
    let path = path.to_owned();
    move |source| TlsError::File { what, path, source }
}

/// The QUIC endpoint configuration, keyed by a secret read from the data directory (created on
/// first start, mode 0600): the stateless-reset key, and the key of the hashed connection ids.
/// Because both survive restarts, a relay that was killed and started again recognizes its old
/// connections' ids and answers their packets with a stateless reset their clients accept, so
/// they reconnect at once instead of waiting out their idle timeout.
pub fn endpoint_config(config: &RelayConfig) -> Result<quinn::EndpointConfig, TlsError> {
    endpoint_config_and_cid_key(config).map(|(endpoint, _)| endpoint)
}

/// [`endpoint_config`], and the key of its hashed connection ids (with which the socket gate,
/// `crate::gate`, tells a packet of a handshake under way from a new connection's).
pub(crate) fn endpoint_config_and_cid_key(
    config: &RelayConfig,
) -> Result<(quinn::EndpointConfig, u64), TlsError> {
    let path = config.data_dir.join(RESET_KEY);
    let secret = match std::fs::read(&path) {
        Ok(bytes) => zeroize::Zeroizing::new(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut fresh = zeroize::Zeroizing::new(vec![0u8; RESET_KEY_LEN]);
            getrandom::fill(&mut fresh)
                .map_err(|e| TlsError::ResetKey(format!("no randomness for {RESET_KEY}: {e}")))?;
            write_private(&path, &fresh, 0o600)?;
            fresh
        }
        Err(e) => return Err(file_error("cannot read", &path)(e)),
    };
    if secret.len() != RESET_KEY_LEN {
        return Err(TlsError::ResetKey(format!(
            "{} holds {} bytes, not {RESET_KEY_LEN}: remove it and a new one is made",
            path.display(),
            secret.len()
        )));
    }
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
    // A separate key for the connection-id hash, derived from the same secret.
    let cid_tag = ring::hmac::sign(&key, b"kith-relay/v1/connection-id-key");
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&cid_tag.as_ref()[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    // Datagrams larger than an Ethernet path's where the path carries them (kith_net::MAX_UDP_PAYLOAD).
    let mut endpoint = kith_net::endpoint_config(kith_net::MAX_UDP_PAYLOAD);
    endpoint.reset_key(Arc::new(key)).cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    Ok((endpoint, cid_key))
}

fn write_private(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(file_error("cannot write", &tmp))?;
    file.write_all(contents)
        .map_err(file_error("cannot write", &tmp))?;
    file.sync_all().map_err(file_error("cannot sync", &tmp))?;
    std::fs::rename(&tmp, path).map_err(file_error("cannot rename", path))
}

fn read_pem(cert: &Path, key: &Path) -> Result<ServerIdentity, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Pem(format!("certificate {}: {e}", cert.display())))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError::Pem(format!("key {}: {e}", key.display())))?;
    let first = chain
        .first()
        .ok_or_else(|| TlsError::Pem(format!("no certificate in {}", cert.display())))?;
    let key_sha256 = key_sha256(first).ok_or_else(|| {
        TlsError::Pem(format!(
            "the first certificate in {} cannot be parsed",
            cert.display()
        ))
    })?;
    let pins = Pins {
        cert_sha256: fingerprint(first),
        key_sha256,
    };
    Ok(ServerIdentity { chain, key, pins })
}

/// The certificate and key files the relay serves: the configured ones, or the self-signed
/// pair in the data directory (generated and persisted on first start, for `localhost` and
/// the listen address).
pub fn certificate_files(config: &RelayConfig) -> Result<(PathBuf, PathBuf), TlsError> {
    if let (Some(cert), Some(key)) = (&config.cert, &config.key) {
        return Ok((cert.clone(), key.clone()));
    }
    let cert_path = config.data_dir.join(SELF_SIGNED_CERT);
    let key_path = config.data_dir.join(SELF_SIGNED_KEY);
    if !(cert_path.exists() && key_path.exists()) {
        create_self_signed(config, &cert_path, &key_path)?;
    }
    Ok((cert_path, key_path))
}

/// The configured chain, or the self-signed certificate in the data directory (see
/// [`certificate_files`]).
pub fn load_or_create(config: &RelayConfig) -> Result<ServerIdentity, TlsError> {
    let (cert, key) = certificate_files(config)?;
    read_pem(&cert, &key)
}

fn create_self_signed(
    config: &RelayConfig,
    cert_path: &Path,
    key_path: &Path,
) -> Result<(), TlsError> {
    let mut names = vec!["localhost".to_owned()];
    if !config.listen.ip().is_unspecified() {
        names.push(config.listen.ip().to_string());
    }
    let generated = rcgen::generate_simple_self_signed(names)?;
    write_private(
        key_path,
        generated.signing_key.serialize_pem().as_bytes(),
        0o600,
    )?;
    write_private(cert_path, generated.cert.pem().as_bytes(), 0o644)?;
    tracing::info!(path = %cert_path.display(), "generated a self-signed certificate");
    Ok(())
}

/// What the relay serves in TLS handshakes: a certificate and key read from two files, which
/// [`CertificateSource::reload`] reads again (on `SIGHUP`, or when
/// [`CertificateSource::changed`] sees the files change) and swaps in for the handshakes that
/// follow. Connections already established keep their session: nothing is dropped.
#[derive(Debug)]
pub struct CertificateSource {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Served>,
    /// What the files were like when last read, to notice a change.
    stamp: std::sync::Mutex<Option<FileStamp>>,
}

#[derive(Debug, Clone)]
struct Served {
    certified: Arc<CertifiedKey>,
    pins: Pins,
}

/// Inode, length and modification time of the certificate and key files (through symbolic
/// links: certbot's `live/` links point at a new file on each renewal).
type FileStamp = [(u64, u64, Option<std::time::SystemTime>); 2];

fn stamp(cert: &Path, key: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let one = |path: &Path| {
        std::fs::metadata(path)
            .ok()
            .map(|m| (m.ino(), m.len(), m.modified().ok()))
    };
    Some([one(cert)?, one(key)?])
}

impl CertificateSource {
    /// Reads the relay's certificate and key (see [`certificate_files`]).
    pub fn load(config: &RelayConfig) -> Result<Self, TlsError> {
        let (cert, key) = certificate_files(config)?;
        let stamp = stamp(&cert, &key);
        let served = Self::read(&cert, &key)?;
        Ok(Self {
            cert,
            key,
            current: RwLock::new(served),
            stamp: std::sync::Mutex::new(stamp),
        })
    }

    fn read(cert: &Path, key: &Path) -> Result<Served, TlsError> {
        let identity = read_pem(cert, key)?;
        let signing = provider()
            .key_provider
            .load_private_key(identity.key)
            .map_err(|e| TlsError::Pem(format!("key {}: {e}", key.display())))?;
        let certified = CertifiedKey::new(identity.chain, signing);
        // A certificate renewed with a new key, read before its key file was replaced, is
        // refused here, and the pair read again once the key file changes too.
        certified.keys_match().map_err(|_| {
            TlsError::Pem(format!(
                "the key in {} is not the key of the certificate in {}",
                key.display(),
                cert.display()
            ))
        })?;
        Ok(Served {
            certified: Arc::new(certified),
            pins: identity.pins,
        })
    }

    /// The pins of the certificate served now.
    pub fn pins(&self) -> Pins {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pins
    }

    /// The certificate and key files.
    pub fn files(&self) -> (&Path, &Path) {
        (&self.cert, &self.key)
    }

    /// Reads the files again and serves what they hold from the next handshake on. On error
    /// the certificate served so far stays.
    pub fn reload(&self) -> Result<Pins, TlsError> {
        *self
            .stamp
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = stamp(&self.cert, &self.key);
        let served = Self::read(&self.cert, &self.key)?;
        let pins = served.pins;
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = served;
        Ok(pins)
    }

    /// Whether either file changed (inode, length or modification time) since it was last
    /// read; a file missing for the moment (being replaced) is no change yet.
    pub fn changed(&self) -> bool {
        let Some(now) = stamp(&self.cert, &self.key) else {
            return false;
        };
        let last = self
            .stamp
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        last.as_ref() != Some(&now)
    }
}

impl ResolvesServerCert for CertificateSource {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .certified
                .clone(),
        )
    }
}

fn transport(limits: &Bounds) -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    let window = limits.connection_window_bytes;
    let stream_window = u64::from(limits.max_frame_bytes) + 4;
    transport
        .max_concurrent_bidi_streams(limits.max_streams_per_connection.into())
        .max_concurrent_uni_streams(0u32.into())
        .receive_window(quinn::VarInt::from_u64(window).unwrap_or(quinn::VarInt::MAX))
        .stream_receive_window(
            quinn::VarInt::from_u64(stream_window.min(window)).unwrap_or(quinn::VarInt::MAX),
        )
        .send_window(window.saturating_mul(2))
        .max_idle_timeout(quinn::IdleTimeout::try_from(limits.idle_timeout).ok());
    kith_net::probe_udp_payload(&mut transport, kith_net::MAX_UDP_PAYLOAD);
    transport
}

/// The QUIC server configuration: TLS 1.3 only, ALPN `kith/1`, the transport limits, and the
/// certificate `source` serves at each handshake.
pub fn server_config(
    source: Arc<CertificateSource>,
    limits: &Bounds,
) -> Result<quinn::ServerConfig, TlsError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(source);
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.max_early_data_size = 0;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport(limits)));
    config.migration(true);
    Ok(config)
}

/// A QUIC client configuration that trusts only the pinned certificate (by the SHA-256 of its
/// key, or of the whole certificate), speaking `kith/1`, probing for datagrams of up to
/// [`kith_net::MAX_UDP_PAYLOAD`] bytes.
pub fn client_config(pin: [u8; 32]) -> Result<quinn::ClientConfig, TlsError> {
    client_config_up_to(pin, kith_net::MAX_UDP_PAYLOAD)
}

/// [`client_config`] sending datagrams of at most `max_udp_payload` bytes (1,452: what an
/// Ethernet path allows, whatever the path to the relay would carry).
pub fn client_config_up_to(
    pin: [u8; 32],
    max_udp_payload: u16,
) -> Result<quinn::ClientConfig, TlsError> {
    let tls = kith_tls::pinned_client_config(pin)?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(client_transport(max_udp_payload));
    Ok(config)
}

/// The transport settings of [`client_config_up_to`]: keep-alives every 15 s, datagrams of up
/// to `max_udp_payload` bytes probed for.
pub fn client_transport(max_udp_payload: u16) -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(std::time::Duration::from_secs(15)));
    kith_net::probe_udp_payload(&mut transport, max_udp_payload);
    Arc::new(transport)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_self_signed_certificate_is_persisted_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let config = RelayConfig::for_tests(dir.path());
        let first = load_or_create(&config).unwrap();
        let second = load_or_create(&config).unwrap();
        assert_eq!(first.pins, second.pins);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join(SELF_SIGNED_KEY))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o077, 0, "the key is private to its owner");
    }

    #[test]
    fn the_reset_key_is_persisted_private_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let config = RelayConfig::for_tests(dir.path());
        std::fs::create_dir_all(dir.path()).unwrap();
        endpoint_config(&config).unwrap();
        let path = dir.path().join(RESET_KEY);
        let first = std::fs::read(&path).unwrap();
        assert_eq!(first.len(), RESET_KEY_LEN);
        endpoint_config(&config).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), first, "reused, not replaced");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o077, 0, "the reset key is private to its owner");

        std::fs::write(&path, b"short").unwrap();
        let refused = endpoint_config(&config).unwrap_err().to_string();
        assert!(refused.contains("5 bytes"), "{refused}");
    }
}
