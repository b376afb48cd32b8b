//! Errors: [`RequestError`] is what a client is told (a code and a message that never echoes
//! request contents); [`RelayError`] is why the relay could not start or stop cleanly.

use std::borrow::Cow;

use kith_protocol::proto::{self, ErrorCode, response};

use crate::config::ConfigError;
use crate::store::StoreError;
use crate::tls::TlsError;

/// A refused request: the code and message sent back in an `Error` response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct RequestError {
    /// The code from `relay.proto`.
    pub code: ErrorCode,
    /// A human-readable reason; never contains request contents.
    pub message: Cow<'static, str>,
}

impl RequestError {
    /// A refusal with `code`.
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// Storage failed: the client should retry later.
    pub fn storage(err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "storage failure");
        Self::new(
            ErrorCode::Storage,
            "the relay could not store durably; retry later",
        )
    }

    /// Something that should not happen; reported as a storage (retryable) failure.
    pub fn internal(message: &'static str) -> Self {
        tracing::error!(message, "internal error");
        Self::new(ErrorCode::Storage, message)
    }

    /// The request is decodable but semantically invalid.
    pub fn invalid(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }

    /// The account was deleted (while the request waited, or before it was made): nothing of
    /// it is written again.
    pub fn account_deleted() -> Self {
        Self::new(ErrorCode::UnknownAccount, "the account was deleted")
    }

    /// The account the request names does not exist on this relay.
    pub fn no_account() -> Self {
        Self::new(ErrorCode::UnknownAccount, "the account does not exist")
    }

    /// As a response frame.
    pub fn to_response(&self) -> proto::Response {
        proto::Response {
            kind: Some(response::Kind::Error(proto::Error {
                code: self.code as i32,
                message: self.message.to_string(),
            })),
        }
    }
}

/// Why the relay could not start or shut down.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// TLS setup failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A socket or file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
}

impl RelayError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| RelayError::Io { what, source }
    }
}
