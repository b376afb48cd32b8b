//! Streams of small envelopes to append to a [`Store`] and read back, for the store
//! conformance suite (`tests/store_conformance.rs`) and the sled backend's own unit tests
//! (`src/store/sled.rs` includes this file through `#[path]`).
#![allow(dead_code)]

use kith_protocol::ids::{AccountId, DeviceId};
use kith_relay::store::{ReadEnd, Store, StreamMeta};

/// Envelopes `from..from + n` of a stream: envelope `s` is `10 + s` bytes of `s as u8` (the
/// store does not read them).
pub fn envelopes(from: u64, n: u64) -> Vec<Vec<u8>> {
    (from..from + n)
        .map(|s| vec![s as u8; 10 + s as usize])
        .collect()
}

/// The meta of a stream holding [`envelopes`] `first_seq..=last_seq`.
pub fn meta_after(first_seq: u64, last_seq: u64) -> StreamMeta {
    let bytes = envelopes(first_seq, last_seq + 1 - first_seq)
        .iter()
        .map(|e| e.len() as u64)
        .sum();
    StreamMeta {
        first_seq,
        last_seq,
        bytes,
        envelopes: last_seq + 1 - first_seq,
    }
}

/// Appends [`envelopes`] `from..from + n` to `account`'s stream of `device` (a stream from
/// seq 1).
pub fn append_to(store: &dyn Store, account: &AccountId, device: &DeviceId, from: u64, n: u64) {
    let envs = envelopes(from, n);
    let refs: Vec<&[u8]> = envs.iter().map(Vec::as_slice).collect();
    store
        .append(account, device, from, &refs, &meta_after(1, from + n - 1))
        .unwrap();
}

/// Reads at most `max` envelopes after `after` of `account`'s stream of `device`, and checks
/// that the zero-copy path ([`Store::read_stream_bytes`]) serves the same.
pub fn read_from(
    store: &dyn Store,
    account: &AccountId,
    device: &DeviceId,
    after: u64,
    max: usize,
) -> (Vec<(u64, Vec<u8>)>, ReadEnd) {
    let mut out = Vec::new();
    let end = store
        .read_stream(account, device, after, &mut |seq, e| {
            keep(&mut out, max, seq, e)
        })
        .unwrap();
    let mut bytes = Vec::new();
    store
        .read_stream_bytes(account, device, after, &mut |seq, e| {
            keep(&mut bytes, max, seq, &e)
        })
        .unwrap();
    assert_eq!(out, bytes);
    (out, end)
}

/// A read's sink: keeps (`seq`, `envelope`) unless `out` already holds `max`.
fn keep(out: &mut Vec<(u64, Vec<u8>)>, max: usize, seq: u64, envelope: &[u8]) -> bool {
    if out.len() == max {
        return false;
    }
    out.push((seq, envelope.to_vec()));
    true
}
