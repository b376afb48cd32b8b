//! Helpers shared by the protocol crate's integration tests.
#![allow(dead_code)]

use std::convert::Infallible;

use rand_core::{TryCryptoRng, TryRng};
use sha2::{Digest, Sha256};

/// A deterministic generator for test vectors only: block `i` is `SHA-256(SHA-256(seed) ||
/// u64be(i))`, consumed front to back. Marked cryptographic so that it can stand in for the
/// system generator; its output is public, so it must never leave tests.
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

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut bytes = [0u8; 4];
        self.try_fill_bytes(&mut bytes)?;
        Ok(u32::from_le_bytes(bytes))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut bytes = [0u8; 8];
        self.try_fill_bytes(&mut bytes)?;
        Ok(u64::from_le_bytes(bytes))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        for byte in dst {
            if self.used == self.block.len() {
                let mut hasher = Sha256::new();
                hasher.update(self.seed);
                hasher.update(self.counter.to_be_bytes());
                self.block = hasher.finalize().into();
                self.counter += 1;
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

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut bytes = [0u8; 4];
        self.try_fill_bytes(&mut bytes)?;
        Ok(u32::from_le_bytes(bytes))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut bytes = [0u8; 8];
        self.try_fill_bytes(&mut bytes)?;
        Ok(u64::from_le_bytes(bytes))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        assert!(dst.len() <= self.bytes.len(), "FixedRng ran out of bytes");
        let rest = self.bytes.split_off(dst.len());
        dst.copy_from_slice(&self.bytes);
        self.bytes = rest;
        Ok(())
    }
}

impl TryCryptoRng for FixedRng {}

/// Whether the vector tests should rewrite their files (`KITH_REGENERATE_VECTORS=1`).
pub fn regenerating() -> bool {
    std::env::var_os("KITH_REGENERATE_VECTORS").is_some_and(|v| v == "1")
}

/// Decodes hex from a vector file.
pub fn unhex(text: &str) -> Vec<u8> {
    hex::decode(text).expect("vector file holds hex")
}

/// A new device's keys and its roster entry, named `name`.
pub fn new_device(
    name: &str,
) -> (
    kith_protocol::keys::DeviceSigningKey,
    kith_protocol::roster::NewDevice,
) {
    use kith_protocol::keys::{DeviceAgreementKey, DeviceSigningKey, system_rng};
    let mut rng = system_rng();
    let key = DeviceSigningKey::generate(&mut rng);
    let device = kith_protocol::roster::NewDevice {
        signing_key: key.public(),
        agreement_key: DeviceAgreementKey::generate(&mut rng).public(),
        name: name.to_owned(),
    };
    (key, device)
}
