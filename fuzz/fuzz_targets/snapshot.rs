//! Snapshots (`ContactSet::decode_snapshot`): round trip. The body is
//! `kith_testkit::fuzz::protocol::snapshot`, which `cargo test` also replays over `corpus/snapshot/`.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kith_testkit::fuzz::protocol::snapshot(data);
});
