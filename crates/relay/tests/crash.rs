//! Durability: every acknowledged push survives `kill -9` of the relay process.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::process::RelayProcess;
use common::{TestAccount, bounded, envelope};
use kith_protocol::proto::Cursor;
use kith_relay::client::RelayClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_push_survives_kill_9() {
    survives_kill_9(&[]).await;
}

/// The same with the relay on PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_push_survives_kill_9_on_postgres() {
    let Some(cluster) = common::pg::PgCluster::shared() else {
        return;
    };
    let url = cluster.database();
    survives_kill_9(&["--store", &url]).await;
}

/// Pushes from four writers, `kill -9` in the middle, then everything acknowledged is read
/// back from a restarted relay; `store` are the flags naming its store.
async fn survives_kill_9(store: &[&str]) {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let mut relay = RelayProcess::spawn(dir.path(), store);
        let (addr, pin) = (relay.addr, relay.pin);
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
        relay.kill9();
        // No ack can arrive from a dead process: what is recorded now is final.
        for writer in writers {
            writer.abort();
        }
        let acked: Vec<u64> = acked.iter().map(|a| a.load(Ordering::SeqCst)).collect();

        let relay = RelayProcess::spawn(dir.path(), store);
        let (addr, pin) = (relay.addr, relay.pin);
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
        drop(relay); // kill -9
    })
    .await;
}
