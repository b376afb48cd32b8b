//! Durability: every acknowledged push survives `kill -9` of the relay process.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{TestAccount, bounded, envelope};
use kith_protocol::proto::Cursor;
use kith_relay::client::RelayClient;

/// Starts the built binary on loopback port 0; returns it with its address and certificate pin.
fn spawn_relay(data: &Path) -> (Child, SocketAddr, [u8; 32]) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kith-relay"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn kith-relay");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut addr = None;
    let mut pin = None;
    while addr.is_none() || pin.is_none() {
        let line = lines.next().expect("relay output").expect("line");
        if let Some(rest) = line.strip_prefix("listening on ") {
            addr = Some(rest.parse().expect("address"));
        } else if let Some(rest) = line.strip_prefix("certificate sha256 ") {
            let mut bytes = [0u8; 32];
            hex::decode_to_slice(rest, &mut bytes).expect("fingerprint");
            pin = Some(bytes);
        }
    }
    // Keep draining stdout so the relay never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (
        child,
        addr.unwrap_or_else(|| unreachable!()),
        pin.unwrap_or_else(|| unreachable!()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_push_survives_kill_9() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let (mut child, addr, pin) = spawn_relay(dir.path());
        const WRITERS: usize = 4;
        let accounts: Vec<Arc<TestAccount>> = (0..WRITERS)
            .map(|_| Arc::new(TestAccount::new(1)))
            .collect();
        let acked: Vec<Arc<AtomicU64>> =
            (0..WRITERS).map(|_| Arc::new(AtomicU64::new(0))).collect();
        let mut writers = Vec::new();
        for (account, acked) in accounts.iter().cloned().zip(acked.iter().cloned()) {
            let client = RelayClient::connect(addr, pin).await.unwrap();
            account.create(&client).await;
            writers.push(tokio::spawn(async move {
                let device = account.device(0).device_id();
                let mut next = 1u64;
                loop {
                    let batch: Vec<_> = (next..next + 20)
                        .map(|s| envelope(&account.id, &device, s, 700))
                        .collect();
                    match client.push(batch).await {
                        Ok(last) => {
                            acked.store(last, Ordering::SeqCst);
                            next = last + 1;
                        }
                        Err(_) => return, // the relay died
                    }
                }
            }));
        }
        // Let pushes run, then kill -9 in the middle of them.
        while acked.iter().map(|a| a.load(Ordering::SeqCst)).sum::<u64>() < 2000 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        // No ack can arrive from a dead process: what is recorded now is final.
        for writer in writers {
            writer.abort();
        }
        let acked: Vec<u64> = acked.iter().map(|a| a.load(Ordering::SeqCst)).collect();

        let (mut child, addr, pin) = spawn_relay(dir.path());
        for (account, acked) in accounts.iter().zip(acked) {
            assert!(acked > 0);
            let client = RelayClient::connect(addr, pin).await.unwrap();
            client
                .authenticate(account.device(0), &account.id)
                .await
                .unwrap();
            let device = account.device(0).device_id();
            let mut after = 0;
            loop {
                let cursor = Cursor {
                    device_id: device.as_bytes().to_vec(),
                    after_seq: after,
                };
                let page = client.pull(vec![cursor], 0, 0).await.unwrap();
                for stored in &page.envelopes {
                    assert_eq!(stored.seq, after + 1, "no gap");
                    assert_eq!(
                        stored.envelope,
                        envelope(&account.id, &device, stored.seq, 700),
                        "intact"
                    );
                    after = stored.seq;
                }
                if !page.more {
                    break;
                }
            }
            assert!(after >= acked, "acked up to {acked}, found up to {after}");
        }
        child.kill().unwrap();
        child.wait().unwrap();
    })
    .await;
}
