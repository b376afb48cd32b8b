//! Opening envelopes with a fixed key set: received, batched, harness-signed plaintexts, and
//! seal/open round trips. The body is `kith_testkit::fuzz::protocol::envelope_open`, which `cargo test`
//! also replays over `corpus/envelope_open/`.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kith_testkit::fuzz::protocol::envelope_open(data);
});
