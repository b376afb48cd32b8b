//! Kith's sans-I/O protocol: everything both ends must agree on.
//!
//! No sockets, no async runtime and no clock of its own: time and randomness come in as
//! arguments, so every behaviour is deterministic under test. See `docs/PROTOCOL.md`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

/// Generated protobuf types (`proto/kith/v1/*.proto`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/kith.v1.rs"));
}

pub mod auth;
pub mod encoding;
pub mod ids;
pub mod keys;
pub mod limits;
pub mod padding;

mod borrowed;
pub mod history;
pub mod hlc;
pub mod merge;
pub mod record;

pub mod bundle;
pub mod envelope;
pub mod epoch;
pub mod roster;
pub mod stream;

pub mod frame;

#[doc(hidden)]
pub mod fuzzing;

pub use ids::{AccountId, DeviceId, RecordId};

/// The protocol version: the `format_version` of every format in `docs/PROTOCOL.md` and the
/// `kith/<n>` ALPN. Releases extend protocol 1 only as §8.1 allows; `kith --version` and
/// `kith-relay --version` print it after the release number.
pub const PROTOCOL_VERSION: u32 = 1;

/// `<release> (protocol <n>)`, for the binaries' `--version`, given the binary's own
/// `CARGO_PKG_VERSION`.
pub fn version_line(release: &str) -> String {
    format!("{release} (protocol {PROTOCOL_VERSION})")
}
