//! ICalendar files and zips of them (`import::calendar::import_bytes`). The body is
//! `kith_testkit::fuzz::import::calendar`, which `cargo test` also replays over `corpus/calendar/`.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kith_testkit::fuzz::import::calendar(data);
});
