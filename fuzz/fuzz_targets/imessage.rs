//! `chat.db` and the Contacts database from raw bytes written to a temporary SQLite file. The body
//! is `kith_testkit::fuzz::import::imessage`, which `cargo test` also replays over `corpus/imessage/`.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kith_testkit::fuzz::import::imessage(data);
});
