//! Operation batches (`decode_batch`): round trip and merge convergence in every order. The body is
//! `kith_testkit::fuzz::protocol::operations`, which `cargo test` also replays over `corpus/operations/`.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kith_testkit::fuzz::protocol::operations(data);
});
