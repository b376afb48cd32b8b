//! Operation batches as a pulling device reads them (`decode_batch_parts`): the in-place reader
//! and the prost path agree on every input. The body is
//! `kith_testkit::fuzz::protocol::operation_batch`, which `cargo test` also replays over
//! `corpus/operation_batch/`.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kith_testkit::fuzz::protocol::operation_batch(data);
});
