//! Envelope framing and header: `peek_header` (relay) and `ParsedEnvelope::decode` (receivers) must
//! agree. The body is `kith_testkit::fuzz::protocol::envelope_decode`, which `cargo test` also replays
//! over `corpus/envelope_decode/`.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kith_testkit::fuzz::protocol::envelope_decode(data);
});
