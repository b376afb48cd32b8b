//! Kith's sans-I/O protocol: everything both ends must agree on.
//!
//! No sockets, no async runtime and no clock of its own: time and randomness come in as
//! arguments, so every behaviour is deterministic under test. See `docs/PROTOCOL.md`.
//!
//! # Layout
//!
//! The modules in the order a reader meets them, from bytes up to the account:
//!
//! | module | what it holds | spec |
//! |---|---|---|
//! | [`proto`] | the generated protobuf types of `proto/kith/v1/*.proto` | everywhere |
//! | [`ids`], [`keys`] | identifiers parsed once from untrusted bytes; secret newtypes that zeroize and never print | §2 |
//! | [`encoding`] | the length-prefixed encoding under every hash, signature and HKDF input, and every label | §2.1 |
//! | [`limits`], [`padding`] | bounds on everything decoded; Padmé padding of plaintexts | §7, §11 |
//! | [`hlc`], [`record`], [`merge`], [`contact`], [`history`] | clocks; contact records (field keys, values, operations and their codec); the CRDT that merges them; the typed view of a merged contact; interaction history | §8 |
//! | [`envelope`], [`stream`], [`writer_view`] | sealing and opening envelopes; the per-writer chain of seqs and hashes; what each writer states it held (roster, stream heads) | §4, §7, §9 |
//! | [`roster`], [`epoch`], [`bundle`], [`auth`] | who is in the account; the secrets content is encrypted under and their sealing to devices; linking and recovery; authenticating to the relay | §4–§6, §10 |
//! | [`frame`] | the pure half of the relay's framing (the I/O half is the `kith-net` crate) | §10 |
//!
//! # Life of a push, file by file
//!
//! 1. `kith_client::Device::sync` (`crates/client/src/sync.rs`) turns pending operations into
//!    envelopes with [`envelope::seal`]: [`record`] encodes them, [`padding`] pads them, the
//!    epoch's content key ([`epoch`]) encrypts them with the header as associated data, the
//!    device key ([`keys`]) signs the domain-separated encoding ([`encoding`]), and [`stream`]
//!    chains them to the device's previous envelope. They wait in the client's outbox.
//! 2. `push_outbox` (same file) sends them in `Push` requests through
//!    `crates/client/src/net.rs`, one QUIC stream per request, framed by `kith-net` over
//!    [`frame`].
//! 3. The relay (`crates/relay/src/lib.rs` continues the walk-through) stores them without
//!    opening them: it reads only headers ([`envelope::peek_header`]) and checks rosters
//!    ([`roster`]), never content.
//! 4. Another device's pull serves them back; `crates/client/src/sync.rs` `pull` checks each
//!    against the roster and the writer's chain ([`envelope::open_batch`],
//!    [`stream::StreamVerifier`]) and merges the records ([`merge`]).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

// Lets unit tests include test support written against this crate's public paths (see
// `roster/tests.rs`, which includes kith-testkit's `account.rs`).
#[cfg(test)]
extern crate self as kith_protocol;

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

pub mod contact;
pub mod history;
pub mod hlc;
pub mod merge;
mod proto_writer;
pub mod record;

pub mod bundle;
pub mod envelope;
pub mod epoch;
pub mod recovery;
pub mod roster;
pub mod stream;
pub mod writer_view;

pub mod frame;

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
