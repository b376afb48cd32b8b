//! Facebook friends JSON (`import::facebook::import_bytes`). The body is
//! `kith_testkit::fuzz::import::facebook`, which `cargo test` also replays over `corpus/facebook/`.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kith_testkit::fuzz::import::facebook(data);
});
