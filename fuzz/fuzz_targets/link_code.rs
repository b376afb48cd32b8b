//! Pasted texts: `LinkCode::parse` and `RecoveryKey::parse`, with print/parse round trips. The body
//! is `kith_testkit::fuzz::protocol::link_code`, which `cargo test` also replays over
//! `corpus/link_code/`.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kith_testkit::fuzz::protocol::link_code(data);
});
