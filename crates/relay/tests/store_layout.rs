//! Measures how a pushed batch should be stored: one sled value per envelope, or consecutive
//! envelopes packed into larger values. Not a pass/fail test: run with
//! `cargo test -p kith-relay --release --test store_layout -- --ignored --nocapture`.

use std::time::Instant;

use kith_protocol::ids::{AccountId, DeviceId};
use kith_relay::store::{SledStore, Store, StreamMeta};

#[tokio::test]
#[ignore = "measurement; prints numbers"]
async fn measure_value_packing() {
    const DEVICES: u64 = 20;
    const BATCHES: u64 = 50;
    const BATCH: u64 = 100;
    const SIZE: usize = 1200; // a 1 KiB payload after padding, tag, header and signature
    let envelope = vec![0x5au8; SIZE];
    for value_bytes in [0usize, 16 * 1024, 64 * 1024, 128 * 1024, 1024 * 1024] {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 64 * 1024 * 1024, value_bytes).unwrap();
        let account = AccountId::from_bytes([1; 32]);
        let start = Instant::now();
        for b in 0..BATCHES {
            for d in 0..DEVICES {
                let device = DeviceId::from_bytes([d as u8; 16]);
                let refs: Vec<&[u8]> = (0..BATCH).map(|_| envelope.as_slice()).collect();
                let meta = StreamMeta {
                    first_seq: 1,
                    last_seq: (b + 1) * BATCH,
                    bytes: 0,
                    envelopes: 0,
                };
                store
                    .append(&account, &device, b * BATCH + 1, &refs, &meta)
                    .unwrap();
            }
            // Group commit: one flush per round of pushes from every device.
            store.flush().await.unwrap();
        }
        let total = DEVICES * BATCHES * BATCH;
        let push = start.elapsed();
        let start = Instant::now();
        let mut read = 0u64;
        for d in 0..DEVICES {
            let device = DeviceId::from_bytes([d as u8; 16]);
            store
                .read_stream(&account, &device, 0, &mut |_, _| {
                    read += 1;
                    true
                })
                .unwrap();
        }
        assert_eq!(read, total);
        let pull = start.elapsed();
        let disk: u64 = walk(dir.path());
        println!(
            "value_bytes {:>8}: append+flush {:>9.0} envelopes/s, read {:>9.0} envelopes/s, {:>5} MB on disk",
            value_bytes,
            total as f64 / push.as_secs_f64(),
            total as f64 / pull.as_secs_f64(),
            disk / 1_000_000
        );
    }
}

fn walk(path: &std::path::Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => walk(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}
