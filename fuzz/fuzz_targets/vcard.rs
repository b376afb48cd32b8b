//! vCard 2.1/3.0/4.0 (`import::vcard::import_bytes`). The body is `kith_testkit::fuzz::import::vcard`,
//! which `cargo test` also replays over `corpus/vcard/`.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kith_testkit::fuzz::import::vcard(data);
});
