//! Envelopes shaped as the relay reads them (a valid header, an opaque body, a signature-sized
//! filler): the relay never opens an envelope, so its tests and the end-to-end tests need no
//! real sealing to fill its store. `kith-relay bench` builds the same shape at run time in the
//! relay binary itself (`crates/relay/src/bench.rs`), since a shipped binary cannot depend on
//! this unpublished crate.

use kith_protocol::ids::{AccountId, DeviceId};
use kith_protocol::proto;
use prost::Message;

/// The ciphertext length of a `size`-byte payload: Padmé-padded plus the AEAD tag, as the
/// protocol crate's framing check requires.
pub fn ciphertext_len(size: usize) -> usize {
    kith_protocol::padding::padded_len(size) as usize + kith_protocol::envelope::TAG_LEN
}

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
    let header = proto::EnvelopeHeader {
        format_version: 1,
        account_id: account.as_bytes().to_vec(),
        device_id: device.as_bytes().to_vec(),
        seq,
        epoch: 1,
        prev_hash: vec![0; 32],
        kind: proto::PayloadKind::Operations as i32,
        nonce: vec![7; 24],
    }
    .encode_to_vec();
    proto::Envelope {
        header,
        ciphertext: vec![fill; ciphertext_len(size)],
        signature: vec![1; 64],
    }
    .encode_to_vec()
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
