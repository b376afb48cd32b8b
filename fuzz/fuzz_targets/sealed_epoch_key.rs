//! Sealed epoch keys: `peek_sealed_epoch_key` and `open_epoch_key`, and seal/open round trips. The
//! body is `kith_testkit::fuzz::protocol::sealed_epoch_key`, which `cargo test` also replays over
//! `corpus/sealed_epoch_key/`.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kith_testkit::fuzz::protocol::sealed_epoch_key(data);
});
