//! `chat.db` built by the harness with the real schema and fuzzed rows. The body is
//! `kith_testkit::fuzz::import::imessage_rows`, which `cargo test` also replays over
//! `corpus/imessage_rows/`.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kith_testkit::fuzz::import::imessage_rows(data);
});
