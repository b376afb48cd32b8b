//! Deterministic generators that stand in for the system generator in tests, fixtures and
//! harness-sealed fuzz inputs. Their output is public: they must never leave test code.

use std::convert::Infallible;

use rand_core::utils::next_word_via_fill;
use rand_core::{TryCryptoRng, TryRng};
use sha2::{Digest, Sha256};

/// The word methods of a [`TryRng`] whose bytes come from its `try_fill_bytes` alone.
macro_rules! words_via_fill {
    () => {
        fn try_next_u32(&mut self) -> Result<u32, Infallible> {
            next_word_via_fill(self)
        }

        fn try_next_u64(&mut self) -> Result<u64, Infallible> {
            next_word_via_fill(self)
        }
    };
}

/// A deterministic generator: block `i` is `SHA-256(SHA-256(seed) ||
/// u64be(i))`, consumed front to back. Marked cryptographic so that it can stand in for the
/// system generator; its output is public, so it must never leave
/// tests (this crate is never published).
#[derive(Debug)]
pub struct CounterRng {
    seed: [u8; 32],
    counter: u64,
    block: [u8; 32],
    used: usize,
}

impl CounterRng {
    /// A generator for `seed`.
    pub fn new(seed: &str) -> Self {
        Self {
            seed: Sha256::digest(seed.as_bytes()).into(),
            counter: 0,
            block: [0; 32],
            used: 32,
        }
    }
}

impl TryRng for CounterRng {
    type Error = Infallible;

    words_via_fill!();

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        for byte in dst {
            if self.used == self.block.len() {
                let mut hasher = Sha256::new();
                hasher.update(self.seed);
                hasher.update(self.counter.to_be_bytes());
                self.block = hasher.finalize().into();
                self.counter = self.counter.wrapping_add(1);
                self.used = 0;
            }
            *byte = self.block[self.used];
            self.used += 1;
        }
        Ok(())
    }
}

impl TryCryptoRng for CounterRng {}

/// A generator that yields exactly the given bytes (to replay an RFC's `ikmE`), then panics.
#[derive(Debug)]
pub struct FixedRng {
    bytes: Vec<u8>,
}

impl FixedRng {
    /// A generator that yields `bytes` once.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self { bytes }
    }
}

impl TryRng for FixedRng {
    type Error = Infallible;

    words_via_fill!();

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        assert!(dst.len() <= self.bytes.len(), "FixedRng ran out of bytes");
        let rest = self.bytes.split_off(dst.len());
        dst.copy_from_slice(&self.bytes);
        self.bytes = rest;
        Ok(())
    }
}

impl TryCryptoRng for FixedRng {}
