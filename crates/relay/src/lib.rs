//! Kith's relay: a thin QUIC server that stores opaque, signed envelopes per device.
//!
//! It authenticates devices against their account's signed roster, orders and stores what
//! they push, serves it back by cursor, and never holds a content key. See `README.md` in this
//! crate for running it and `docs/PROTOCOL.md` §10–§12 for the protocol.
//!
//! ```no_run
//! # async fn run() -> Result<(), kith_relay::RelayError> {
//! let relay = kith_relay::Relay::start(kith_relay::RelayConfig::for_tests("/tmp/relay")).await?;
//! println!("{} {}", relay.local_addr(), hex::encode(relay.cert_sha256()));
//! relay.shutdown().await
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod client;
pub mod config;
pub mod control;
pub mod error;
pub mod frame;
mod handlers;
pub mod limits;
pub mod server;
mod state;
pub mod store;
pub mod tls;
pub mod wire;

use std::path::{Path, PathBuf};

pub use config::{Limits, RegistrationMode, RelayConfig, Settings};
pub use error::{RelayError, RequestError};
pub use server::{MemoryCounts, Relay, RelayHandle};

/// Where the database lives inside the data directory.
pub fn db_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("db")
}

/// Where `kith-relay token create` leaves tokens for a running relay (one file per token,
/// named by the hex SHA-256 of the token; the relay removes it when the token is used).
pub fn token_inbox(data_dir: &Path) -> PathBuf {
    data_dir.join("tokens")
}
