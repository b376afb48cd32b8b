//! Helpers shared by the protocol crate's integration tests.
#![allow(dead_code, unused_imports)]

pub use kith_testkit::new_device;
pub use kith_testkit::rng::{CounterRng, FixedRng};

/// Whether the vector tests should rewrite their files (`KITH_REGENERATE_VECTORS=1`).
pub fn regenerating() -> bool {
    std::env::var_os("KITH_REGENERATE_VECTORS").is_some_and(|v| v == "1")
}

/// Decodes hex from a vector file.
pub fn unhex(text: &str) -> Vec<u8> {
    hex::decode(text).expect("vector file holds hex")
}
