//! Twitter archive zips (`import::twitter::import_bytes`). The body is
//! `kith_testkit::fuzz::import::twitter`, which `cargo test` also replays over `corpus/twitter/`.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kith_testkit::fuzz::import::twitter(data);
});
