//! Stored record states (`RecordState::decode`): the in-place reader and the prost path agree on
//! every input, and a decoded state round-trips. The body is
//! `kith_testkit::fuzz::protocol::record_state`, which `cargo test` also replays over
//! `corpus/record_state/`.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kith_testkit::fuzz::protocol::record_state(data);
});
