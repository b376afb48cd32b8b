//! Mbox files (`import::mail::import_bytes`). The body is
//! `kith_testkit::fuzz::import::mail`, which `cargo test` also replays over `corpus/mail/`.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kith_testkit::fuzz::import::mail(data);
});
