//! Test and fuzz support for Kith, kept out of the shipped libraries (as rustls keeps
//! `rustls-test` and `rustls-fuzzing-provider`). Never published (`publish = false`).
//!
//! | module | what it holds | used by |
//! |---|---|---|
//! | [`fuzz::protocol`] | the bodies of the protocol fuzz targets, the fixed fixture account and the seeds of their corpora | `fuzz/`, `tests/fuzz_corpus.rs` |
//! | `fuzz::import` (feature `importers`, on by default) | the bodies of the importer fuzz targets | `fuzz/ --features importers`, `tests/fuzz_corpus_import.rs` |
//! | [`rng`] | [`rng::CounterRng`] and [`rng::FixedRng`], deterministic generators | the fixture, the protocol crate's vector tests |
//! | [`account`] | [`new_device`] | the protocol crate's integration tests |
//! | [`apple_db`] | the schema of macOS Messages' `chat.db`; SQLite files built from SQL (feature `sqlite`) | the importers' tests, `fuzz::import` |
//! | [`envelope`] | relay-shaped envelopes with opaque bodies | the relay's tests |
//! | [`secret_service`] | a throwaway Linux Secret Service (GNOME Keyring on a private D-Bus session) | the keychain tests of the client and the CLI |
//!
//! The fuzz bodies reach the code behind signatures and AEAD tags through *harness-signed*
//! modes ([`fuzz::protocol`]): no build of any Kith crate compiles a check out.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod account;
pub mod apple_db;
pub mod envelope;
pub mod rng;
pub mod secret_service;

/// Fuzz target bodies: each `pub fn name(data: &[u8]) -> bool` is the whole body of the
/// cargo-fuzz target `fuzz/fuzz_targets/name.rs`, and a test of this crate replays every file of
/// `fuzz/corpus/name/` through it on the stable toolchain.
pub mod fuzz {
    pub mod corpus;
    #[cfg(feature = "importers")]
    pub mod import;
    pub mod protocol;
}

pub use account::new_device;
