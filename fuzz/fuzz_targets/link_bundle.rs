//! Link and recovery bundles: sealed ones opened with fixed keys, and the plaintext `AccountBundle`
//! decoder. The body is `kith_testkit::fuzz::protocol::link_bundle`, which `cargo test` also replays over
//! `corpus/link_bundle/`.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kith_testkit::fuzz::protocol::link_bundle(data);
});
