//! Relay frames: requests as the relay reads them, responses as a client reads them, and the
//! decoders behind their byte fields. The body is `kith_testkit::fuzz::protocol::frame`, which `cargo
//! test` also replays over `corpus/frame/`.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kith_testkit::fuzz::protocol::frame(data);
});
