//! The one HTTP request the relay makes: `POST` of a small JSON body to the push gateway.
//!
//! HTTP/1.1 over a tokio `TcpStream`, with TLS 1.3 through `tokio-rustls` for `https://`
//! (rustls is already the relay's TLS library; no hyper or reqwest for one request kind). One
//! connection per request (`Connection: close`): wake-ups are coalesced per device, so they
//! are rare, and a connection that is never reused cannot be left in a bad state. Only the
//! status line of the answer is read.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::ConfigError;

/// Longest status line and headers read from the gateway before giving up on its answer.
const MAX_ANSWER_HEAD: usize = 8 * 1024;
/// Time for one request, connection and TLS handshake included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A parsed `http://` or `https://` URL: host, port and path. No user info, no fragment.
#[derive(Clone, PartialEq, Eq)]
pub struct GatewayUrl {
    tls: bool,
    host: String,
    port: u16,
    /// Path and query, starting with `/`.
    path: String,
}

impl std::fmt::Debug for GatewayUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The path may hold a secret of the operator's (an API key in a query): not shown.
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}:{}/…", self.host, self.port)
    }
}

impl std::str::FromStr for GatewayUrl {
    type Err = ConfigError;

    fn from_str(url: &str) -> Result<Self, ConfigError> {
        let invalid = |why: &str| ConfigError::Invalid(format!("push_gateway: {why}"));
        let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(invalid("must start with https:// or http://"));
        };
        if url.chars().any(|c| c.is_ascii_control() || c == ' ') || url.contains('#') {
            return Err(invalid(
                "must not contain spaces, control characters or '#'",
            ));
        }
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest[i..].starts_with('?') => (&rest[..i], format!("/{}", &rest[i..])),
            Some(i) => (&rest[..i], rest[i..].to_owned()),
            None => (rest, "/".to_owned()),
        };
        if authority.contains('@') {
            return Err(invalid("user info in the URL is not supported"));
        }
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| invalid("unclosed '[' in the host"))?;
            let port = match after.strip_prefix(':') {
                Some(port) => Some(port),
                None if after.is_empty() => None,
                None => return Err(invalid("unexpected text after the host")),
            };
            (host, port)
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(invalid("no host"));
        }
        let port = match port {
            Some(port) => port
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| invalid("the port must be 1..=65535"))?,
            None => default_port,
        };
        if tls && ServerName::try_from(host.to_owned()).is_err() {
            return Err(invalid("the host is not a valid DNS name or IP address"));
        }
        Ok(Self {
            tls,
            host: host.to_owned(),
            port,
            path,
        })
    }
}

impl GatewayUrl {
    /// The `Host` header's value.
    fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == if self.tls { 443 } else { 80 } {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// Why a request to the gateway did not get an answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpError {
    /// Connecting, the TLS handshake, writing or reading failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The answer is not an HTTP/1.x status line.
    #[error("the gateway's answer is not HTTP/1.x")]
    BadAnswer,
    /// The request took longer than its timeout.
    #[error("the gateway did not answer within {0:?}")]
    Timeout(Duration),
}

/// A client for one gateway.
#[derive(Clone)]
pub(crate) struct Gateway {
    url: GatewayUrl,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("url", &self.url).finish()
    }
}

impl Gateway {
    /// A client for `url`, trusting the CA certificates in `ca_file` (PEM), else the built-in
    /// web roots (Mozilla's, from `webpki-roots`).
    pub(crate) fn new(
        url: GatewayUrl,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Self, ConfigError> {
        let tls = if url.tls {
            let mut roots = rustls::RootCertStore::empty();
            match ca_file {
                Some(path) => {
                    let invalid = |e: &dyn std::fmt::Display| {
                        ConfigError::Invalid(format!("push_gateway_ca {}: {e}", path.display()))
                    };
                    for cert in CertificateDer::pem_file_iter(path).map_err(|e| invalid(&e))? {
                        roots
                            .add(cert.map_err(|e| invalid(&e))?)
                            .map_err(|e| invalid(&e))?;
                    }
                    if roots.is_empty() {
                        return Err(invalid(&"no certificate in the file"));
                    }
                }
                None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            }
            let config = rustls::ClientConfig::builder_with_provider(kith_tls::provider())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .map_err(|e| ConfigError::Invalid(format!("push gateway TLS: {e}")))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Some(tokio_rustls::TlsConnector::from(Arc::new(config)))
        } else {
            None
        };
        Ok(Self { url, tls })
    }

    /// POSTs `body` (JSON) and returns the answer's status code.
    pub(crate) async fn post(&self, body: &[u8]) -> Result<u16, HttpError> {
        tokio::time::timeout(REQUEST_TIMEOUT, self.post_unbounded(body))
            .await
            .map_err(|_| HttpError::Timeout(REQUEST_TIMEOUT))?
    }

    async fn post_unbounded(&self, body: &[u8]) -> Result<u16, HttpError> {
        let tcp = TcpStream::connect((self.url.host.as_str(), self.url.port)).await?;
        tcp.set_nodelay(true)?;
        match &self.tls {
            Some(connector) => {
                let name = ServerName::try_from(self.url.host.clone())
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                let stream = connector.connect(name, tcp).await?;
                self.exchange(stream, body).await
            }
            None => self.exchange(tcp, body).await,
        }
    }

    async fn exchange(
        &self,
        mut stream: impl AsyncRead + AsyncWrite + Unpin,
        body: &[u8],
    ) -> Result<u16, HttpError> {
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: kith-relay/{}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.url.path,
            self.url.host_header(),
            env!("CARGO_PKG_VERSION"),
            body.len()
        );
        let mut request = Vec::with_capacity(head.len() + body.len());
        request.extend_from_slice(head.as_bytes());
        request.extend_from_slice(body);
        stream.write_all(&request).await?;
        stream.flush().await?;
        let mut answer = Vec::with_capacity(256);
        let mut chunk = [0u8; 512];
        loop {
            if let Some(status) = status_code(&answer)? {
                // Closing without reading the rest is fine: the connection is not reused.
                let _ = stream.shutdown().await;
                return Ok(status);
            }
            if answer.len() >= MAX_ANSWER_HEAD {
                return Err(HttpError::BadAnswer);
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(HttpError::BadAnswer);
            }
            answer.extend_from_slice(&chunk[..n]);
        }
    }
}

/// The status code of `HTTP/1.x NNN …\r\n`, once the line is complete; an error if what
/// arrived cannot be one.
fn status_code(answer: &[u8]) -> Result<Option<u16>, HttpError> {
    let Some(end) = answer.windows(2).position(|w| w == b"\r\n") else {
        let prefix = &answer[..answer.len().min(9)];
        return if b"HTTP/1.".starts_with(&prefix[..prefix.len().min(7)]) {
            Ok(None)
        } else {
            Err(HttpError::BadAnswer)
        };
    };
    let line = &answer[..end];
    let rest = line
        .strip_prefix(b"HTTP/1.")
        .filter(|r| r.len() >= 5 && r[1] == b' ')
        .ok_or(HttpError::BadAnswer)?;
    let code = &rest[2..5];
    if !code.iter().all(u8::is_ascii_digit) || rest.get(5).is_some_and(|&b| b != b' ') {
        return Err(HttpError::BadAnswer);
    }
    Ok(Some(
        code.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0')),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_into_host_port_and_path() {
        let url: GatewayUrl = "https://push.example.org/_kith/wake?k=1".parse().unwrap();
        assert!(url.tls);
        assert_eq!(url.host, "push.example.org");
        assert_eq!(url.port, 443);
        assert_eq!(url.path, "/_kith/wake?k=1");
        assert_eq!(url.host_header(), "push.example.org");
        let url: GatewayUrl = "http://127.0.0.1:8080".parse().unwrap();
        assert_eq!((url.port, url.path.as_str()), (8080, "/"));
        assert_eq!(url.host_header(), "127.0.0.1:8080");
        let url: GatewayUrl = "http://[::1]:9/x".parse().unwrap();
        assert_eq!(url.host, "::1");
        assert_eq!(url.host_header(), "[::1]:9");
        assert!(!format!("{url:?}").contains("/x"), "the path is not shown");
        for bad in [
            "ftp://x/",
            "https://",
            "http://user:pw@host/",
            "http://host:0/",
            "http://host:99999/",
            "http://host/a b",
            "http://host/#frag",
            "http://[::1/",
        ] {
            assert!(bad.parse::<GatewayUrl>().is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn status_lines_are_read_or_refused() {
        assert_eq!(status_code(b"HTTP/1.1 200 OK\r\n").unwrap(), Some(200));
        assert_eq!(status_code(b"HTTP/1.0 503\r\n").unwrap(), Some(503));
        assert_eq!(status_code(b"HTTP/1.1 2").unwrap(), None);
        assert_eq!(status_code(b"HT").unwrap(), None);
        assert!(status_code(b"SSH-2.0-x\r\n").is_err());
        assert!(status_code(b"HTTP/1.1 2x0 OK\r\n").is_err());
        assert!(status_code(b"HTTP/1.1 2000 OK\r\n").is_err());
    }
}
