//! Kith's relay: a thin QUIC server that stores opaque, signed envelopes per device.
//!
//! It authenticates devices against their account's signed roster, orders and stores what
//! they push, serves it back by cursor, and never holds a content key. See `README.md` in this
//! crate for running it and `docs/PROTOCOL.md` §10–§12 for the protocol.
//!
//! # Layout
//!
//! | module | what it holds |
//! |---|---|
//! | [`server`] | the QUIC endpoint: accepts connections, reads each stream's one request frame (through `kith-net`), decodes it once, dispatches it and writes the answer |
//! | `handlers` (private) | one file per request kind (`push.rs`, `pull.rs`, `roster.rs`, …); `handlers/mod.rs` holds the dispatch, `authorized` and what handlers share |
//! | `state` (private) | what a running relay keeps in memory: accounts (verified roster, stream heads, subscribers), connections, live counts |
//! | [`store`] | the [`store::Store`] trait, the embedded [`store::SledStore`] (an index in sled, envelope bytes in the segment log of `store/log.rs`) and [`store::GroupCommit`] |
//! | [`wire`] | the zero-copy paths: push requests decoded without copying envelopes, pull pages encoded straight from the store |
//! | [`metrics`] | what the relay counts ([`metrics::Metrics`], passed to the accept loop, the dispatch and the group commit) and the HTTP listener serving `/metrics` and `/healthz` |
//! | [`config`], [`rate_limit`], [`tls`], [`error`] | settings and size bounds, per-address and per-device token buckets, the certificate, the errors a request can end with |
//! | [`client`] | a minimal client of the relay's own, for the load tool and tests (devices use `kith-client`) |
//! | `main.rs`, `bench.rs` | the `kith-relay` binary and its `bench` load tool |
//!
//! # Life of a push, from the device to the disk
//!
//! 1. `kith_client::Device::sync` (`crates/client/src/sync.rs`) seals pending operations into
//!    envelopes (`kith_protocol::envelope::seal`; `crates/protocol/src/lib.rs` has that half of
//!    the walk-through) and `push_outbox` sends them, 64 or 2 MiB at a time, as `Push`
//!    requests through `crates/client/src/net.rs`: one bidirectional QUIC stream per request,
//!    one frame written by `kith_net::write_frame`.
//! 2. `server.rs` `connection` accepts the connection (TLS pinned by the certificate's SHA-256,
//!    ALPN `kith/1`) and serves each stream in its own task: `kith_net::read_frame_bytes` reads
//!    the frame within the size limit, [`wire`] decodes a push without copying its envelopes,
//!    and the request is dispatched to `handlers/push.rs`.
//! 3. `handlers/push.rs` checks that the connection authenticated as a device of the account
//!    (`handlers::authorized`), that the device is neither fenced nor removed, that every header
//!    names its stream and that seqs follow the stream's head or retransmit identical bytes,
//!    under the account's lock (`state.rs`), then appends the batch to the store: the envelope
//!    bytes to the segment log (`store/log.rs`) and their index to sled (`store/sled.rs`).
//! 4. It waits on [`store::GroupCommit::durable`]: one flusher task `fdatasync`s the log and
//!    flushes sled for every push that arrived before the flush began.
//! 5. Only then is the seq marked durable (`state.rs`, `made_durable`: pulls serve it from now
//!    on), the account's subscribers are notified (`handlers/subscribe.rs`), and the `PushAck`
//!    goes back; the client drops the batch from its outbox.
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

// Lets unit tests include test helpers written against this crate's public paths (the sled
// store's tests include `tests/common/streams.rs`).
#[cfg(test)]
extern crate self as kith_relay;

pub mod admin;
pub mod client;
pub mod config;
pub mod control;
pub mod error;
mod gate;
mod handlers;
pub mod metrics;
pub mod rate_limit;
pub mod server;
mod state;
pub mod store;
pub mod tls;
pub mod wake;
pub mod wire;

use std::path::{Path, PathBuf};

pub use config::{Bounds, RegistrationMode, RelayConfig, Settings};
pub use error::{RelayError, RequestError};
pub use handlers::push::MAX_PUSHES_IN_FLIGHT;
pub use server::{CertificateReloader, MemoryCounts, Relay, RelayHandle};

/// Where the database lives inside the data directory.
pub fn db_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("db")
}

/// Where `kith-relay token create` leaves tokens for a running relay (one file per token,
/// named by the hex SHA-256 of the token; the relay removes it when the token is used).
pub fn token_inbox(data_dir: &Path) -> PathBuf {
    data_dir.join("tokens")
}
