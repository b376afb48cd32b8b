//! LinkedIn `Connections.csv` (`import::linkedin::import_bytes`). The body is
//! `kith_testkit::fuzz::import::linkedin`, which `cargo test` also replays over `corpus/linkedin/`.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kith_testkit::fuzz::import::linkedin(data);
});
