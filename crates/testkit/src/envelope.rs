//! Envelopes shaped as the relay reads them (a valid header, an opaque body, a signature-sized
//! filler): the relay never opens an envelope, so its tests and the end-to-end tests need no
//! real sealing to fill its store. The shape itself is
//! `kith_protocol::envelope::unsealed_for_relay`, which `kith-relay bench` calls too (a shipped
//! binary cannot depend on this unpublished crate).

use kith_protocol::envelope::unsealed_for_relay;
use kith_protocol::ids::{AccountId, DeviceId};

pub use kith_protocol::envelope::ciphertext_len;

/// An envelope with a valid header for (account, device, seq) and the ciphertext of a
/// `size`-byte payload (opaque bytes: the relay never decrypts).
pub fn envelope(account: &AccountId, device: &DeviceId, seq: u64, size: usize) -> Vec<u8> {
    envelope_with(account, device, seq, size, seq as u8)
}

/// [`envelope`] with the ciphertext filled with `fill`.
pub fn envelope_with(
    account: &AccountId,
    device: &DeviceId,
    seq: u64,
    size: usize,
    fill: u8,
) -> Vec<u8> {
    unsealed_for_relay(account, device, seq, vec![fill; ciphertext_len(size)])
}

/// Envelopes `from..from + n` of one device, each of a `size`-byte payload.
pub fn envelopes(
    account: &AccountId,
    device: &DeviceId,
    from: u64,
    n: u64,
    size: usize,
) -> Vec<Vec<u8>> {
    (from..from + n)
        .map(|seq| envelope(account, device, seq, size))
        .collect()
}
