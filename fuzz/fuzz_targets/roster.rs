//! Signed rosters: `VerifiedRoster::verify`, raw and with harness-signed bodies, then queries and
//! extensions. The body is `kith_testkit::fuzz::protocol::roster`, which `cargo test` also replays over
//! `corpus/roster/`.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kith_testkit::fuzz::protocol::roster(data);
});
