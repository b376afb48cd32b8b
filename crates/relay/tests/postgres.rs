//! Several relays in front of one PostgreSQL database, schema migrations, and
//! `kith-relay migrate-store` (sled to PostgreSQL and back). Each test starts on a throwaway
//! cluster (`common/pg.rs`); without PostgreSQL installed they say so and pass as skipped
//! (under `CI=true` they fail).

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::pg::PgCluster;
use common::process::RelayProcess;
use common::{TestAccount, assert_refused, bounded, code, envelopes};
use kith_protocol::auth::sign_account_deletion;
use kith_protocol::ids::DeviceId;
use kith_protocol::proto::{self, ErrorCode, request};
use kith_relay::client::RelayClient;
use kith_relay::{Relay, RelayConfig, RelayHandle};

/// Every envelope of the account, per device.
async fn pull_all(client: &RelayClient) -> HashMap<DeviceId, Vec<(u64, Vec<u8>)>> {
    common::pull_account(client).await.0
}

/// Two in-process relays on one database.
async fn two_relays(url: &str) -> (tempfile::TempDir, RelayHandle, RelayHandle) {
    let dir = tempfile::tempdir().unwrap();
    let start = |name: &str| {
        let mut config = RelayConfig::for_tests(dir.path().join(name));
        config.store = url.parse().unwrap();
        Relay::start(config)
    };
    let one = start("one").await.unwrap();
    let two = start("two").await.unwrap();
    (dir, one, two)
}

async fn connect(relay: &RelayHandle) -> RelayClient {
    RelayClient::connect(relay.local_addr(), relay.cert_sha256())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_on_two_relays_sync_watch_and_are_revoked_through_one_database() {
    let Some(cluster) = PgCluster::shared() else {
        return;
    };
    let url = cluster.database();
    bounded(async {
        let (_dir, one, two) = two_relays(&url).await;
        let mut account = TestAccount::new(2);
        let (da, db) = (account.device(0).device_id(), account.device(1).device_id());
        // Device A on relay 1 creates the account; device B signs in on relay 2.
        let a = connect(&one).await;
        account.create(&a).await;
        let b = connect(&two).await;
        b.authenticate(account.device(1), &account.id)
            .await
            .unwrap();
        // B watches on relay 2; A pushes on relay 1; B hears it and pulls it from relay 2.
        let mut watch = b.subscribe().await.unwrap();
        assert_eq!(
            a.push(envelopes(&account.id, &da, 1, 5, 200))
                .await
                .unwrap(),
            5
        );
        let heard = tokio::time::timeout(Duration::from_secs(20), watch.next())
            .await
            .expect("a notification through the database")
            .unwrap()
            .unwrap();
        assert_eq!(
            (heard.device_id.as_slice(), heard.last_seq),
            (da.as_bytes().as_slice(), 5)
        );
        let seen = pull_all(&b).await;
        assert_eq!(
            seen.get(&da).unwrap(),
            &(1..=5)
                .zip(envelopes(&account.id, &da, 1, 5, 200))
                .collect::<Vec<_>>()
        );
        // B pushes on relay 2; A pulls it from relay 1 right after the ack.
        assert_eq!(
            b.push(envelopes(&account.id, &db, 1, 3, 200))
                .await
                .unwrap(),
            3
        );
        assert_eq!(pull_all(&a).await.get(&db).map(Vec::len), Some(3));

        // The same device on both relays at once: its stream never forks. A pushes seqs 6..
        // on relay 1, then (a stale client) the same seqs with other bytes on relay 2.
        let a_on_two = connect(&two).await;
        a_on_two
            .authenticate(account.device(0), &account.id)
            .await
            .unwrap();
        assert_eq!(
            a.push(envelopes(&account.id, &da, 6, 2, 200))
                .await
                .unwrap(),
            7
        );
        assert_eq!(
            code(a_on_two.push(envelopes(&account.id, &da, 6, 2, 300)).await),
            ErrorCode::SeqConflict,
            "relay 2 decides on the stored stream, not on what it held"
        );
        // An identical retransmit through the other relay is acknowledged again.
        assert_eq!(
            a_on_two
                .push(envelopes(&account.id, &da, 6, 2, 200))
                .await
                .unwrap(),
            7
        );

        // Revoke B through relay 1: relay 2 refuses B's pushes from then on.
        let removed = account.remove_device(1);
        account.removed.last_mut().unwrap().final_seq = 3;
        a.expect_ok(request::Kind::PutRoster(proto::PutRoster {
            roster: account.roster(),
        }))
        .await
        .unwrap();
        assert_eq!(removed.id(), db);
        let refused = code(b.push(envelopes(&account.id, &db, 4, 1, 200)).await);
        assert!(
            matches!(
                refused,
                ErrorCode::DeviceRemoved | ErrorCode::Unauthenticated
            ),
            "{refused:?}"
        );
        assert_eq!(
            pull_all(&a).await.get(&db).map(Vec::len),
            Some(3),
            "nothing past final_seq"
        );
        // A stale roster put through relay 2 (it held version 1) is refused as a rollback.
        assert_refused(
            a_on_two
                .expect_ok(request::Kind::PutRoster(proto::PutRoster {
                    roster: account.roster(),
                }))
                .await,
            ErrorCode::RosterRollback,
        );

        // Deleting the account through relay 1 ends a subscription on relay 2.
        let watcher = connect(&two).await;
        watcher
            .authenticate(account.device(0), &account.id)
            .await
            .unwrap();
        let mut watch = watcher.subscribe().await.unwrap();
        a.expect_ok(request::Kind::DeleteAccount(proto::DeleteAccount {
            account_id: account.id.as_bytes().to_vec(),
            roster_version: account.version,
            signature: sign_account_deletion(&account.current, &account.id, account.version)
                .to_bytes()
                .to_vec(),
        }))
        .await
        .unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match watch.next().await {
                    Ok(Some(_)) => continue,
                    other => return other,
                }
            }
        })
        .await
        .expect("the subscription ends");
        assert!(
            matches!(&ended, Err(err) if err.code() == Some(ErrorCode::UnknownAccount)),
            "{ended:?}"
        );
        assert_refused(
            a_on_two.push(envelopes(&account.id, &da, 8, 1, 200)).await,
            ErrorCode::UnknownAccount,
        );
        one.shutdown().await.unwrap();
        two.shutdown().await.unwrap();
    })
    .await;
}

/// A new device waits for its link bundle on relay 2 while the approving device puts it
/// through relay 1: the put is announced through the database and answers the waiting take
/// (without it, the take would wait out its 20 s and answer `NotFound`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_take_waiting_on_one_relay_is_answered_by_a_put_through_the_other() {
    let Some(cluster) = PgCluster::shared() else {
        return;
    };
    let url = cluster.database();
    bounded(async {
        let (_dir, one, two) = two_relays(&url).await;
        let account = TestAccount::new(1);
        let approver = connect(&one).await;
        account.create(&approver).await;
        let newcomer = Arc::new(connect(&two).await); // not authenticated
        let waiting = tokio::spawn({
            let newcomer = newcomer.clone();
            async move {
                newcomer
                    .request(request::Kind::TakePairingSlot(proto::TakePairingSlot {
                        slot_id: [9; 32].to_vec(),
                        wait_ms: 20_000,
                    }))
                    .await
            }
        });
        // The take is waiting on relay 2 (it found no slot) before the put.
        tokio::time::sleep(Duration::from_secs(2)).await;
        approver
            .expect_ok(request::Kind::PutPairingSlot(proto::PutPairingSlot {
                slot_id: [9; 32].to_vec(),
                bundle: b"sealed".to_vec(),
            }))
            .await
            .unwrap();
        match waiting.await.unwrap().unwrap() {
            proto::response::Kind::PairingSlot(slot) => assert_eq!(slot.bundle, b"sealed"),
            other => panic!("{other:?}"),
        }
        one.shutdown().await.unwrap();
        two.shutdown().await.unwrap();
    })
    .await;
}

/// Copies relay 1's certificate and keys into relay 2's data directory: relays behind one
/// address share them (only them: what the README says to copy).
fn share_identity(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for file in kith_relay::tls::SHARED_IDENTITY_FILES {
        std::fs::copy(from.join(file), to.join(file)).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_mid_push_loses_nothing_acknowledged_and_the_other_serves_on() {
    let Some(cluster) = PgCluster::shared() else {
        return;
    };
    let url = cluster.database();
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let (d1, d2) = (dir.path().join("one"), dir.path().join("two"));
        let flags = ["--store", url.as_str(), "--requests-per-second", "100000"];
        let mut one = RelayProcess::spawn(&d1, &flags);
        share_identity(&d1, &d2);
        let two = RelayProcess::spawn(&d2, &flags);
        assert_eq!(one.pin, two.pin, "one certificate for both");
        let account = Arc::new(TestAccount::new(1));
        let device = account.device(0).device_id();
        account.create(&one.connect().await).await;
        let acked = Arc::new(AtomicU64::new(0));
        let writer = {
            let (client, account, acked) = (one.connect().await, account.clone(), acked.clone());
            client
                .authenticate(account.device(0), &account.id)
                .await
                .unwrap();
            tokio::spawn(async move {
                let mut next = 1;
                while let Ok(last) = client
                    .push(envelopes(&account.id, &device, next, 20, 500))
                    .await
                {
                    acked.store(last, Ordering::SeqCst);
                    next = last + 1;
                }
            })
        };
        while acked.load(Ordering::SeqCst) < 400 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        one.kill9();
        writer.abort();
        let acked = acked.load(Ordering::SeqCst);
        // The device moves to relay 2: everything acknowledged is there, intact.
        let client = two.connect().await;
        client
            .authenticate(account.device(0), &account.id)
            .await
            .unwrap();
        let stored = pull_all(&client).await.remove(&device).unwrap();
        assert!(
            stored.len() as u64 >= acked,
            "acked {acked}, stored {}",
            stored.len()
        );
        let last = stored.len() as u64;
        assert_eq!(
            stored,
            (1..=last)
                .zip(envelopes(&account.id, &device, 1, last, 500))
                .collect::<Vec<_>>()
        );
        // The batch in flight at the kill is either stored (a retransmit is acknowledged) or
        // not (it is stored now): the writer resumes after what it saw acknowledged.
        let resumed = acked + 1;
        assert_eq!(
            client
                .push(envelopes(&account.id, &device, resumed, 20, 500))
                .await
                .unwrap(),
            resumed + 19
        );
    })
    .await;
}

fn relay_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kith-relay"))
}

fn run(command: &mut Command) -> String {
    let out = command.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{command:?} failed: {text}");
    text
}

#[test]
fn migrations_are_versioned_and_run_once_and_a_newer_schema_is_refused() {
    let Some(cluster) = PgCluster::shared() else {
        return;
    };
    let url = cluster.database();
    let first = run(relay_bin().args(["migrate", "--store", &url]));
    assert!(first.contains("applied migration 1"), "{first}");
    let again = run(relay_bin().arg("migrate").env("KITH_RELAY_STORE", &url));
    assert!(again.contains("up to date"), "{again}");
    // A database a newer release migrated: this one refuses to serve it.
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    client
        .execute("INSERT INTO kith_schema (version) VALUES (99)", &[])
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let refused = RelayProcess::try_spawn(dir.path(), &["--store", &url])
        .err()
        .expect("the relay refuses a newer schema");
    assert!(refused.contains("stored schema version 99"), "{refused}");
    // The error names the database, never its password.
    assert!(!refused.contains("password"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_store_copies_a_sled_relay_into_postgres_and_back() {
    let Some(cluster) = PgCluster::shared() else {
        return;
    };
    let url = cluster.database();
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let (sled_dir, back_dir) = (dir.path().join("sled"), dir.path().join("back"));
        // A sled relay with two accounts, a truncated stream, sealed keys and a token.
        let accounts = [TestAccount::new(2), TestAccount::new(1)];
        {
            let mut relay = RelayProcess::spawn(&sled_dir, &[]);
            for (i, account) in accounts.iter().enumerate() {
                let client = relay.connect().await;
                account.create(&client).await;
                let device = account.device(0).device_id();
                client
                    .push(envelopes(&account.id, &device, 1, 300, 700))
                    .await
                    .unwrap();
                if i == 0 {
                    client
                        .expect_ok(request::Kind::TruncateStream(proto::TruncateStream {
                            before_seq: 101,
                        }))
                        .await
                        .unwrap();
                    let second = relay.connect_as(account, 1).await;
                    let d1 = account.device(1).device_id();
                    second
                        .push(envelopes(&account.id, &d1, 1, 7, 100))
                        .await
                        .unwrap();
                }
            }
            run(relay_bin()
                .args(["token", "create", "--data"])
                .arg(&sled_dir));
            relay.terminate(Duration::from_secs(10));
        }
        let stats_of = |args: &[&str]| run(relay_bin().arg("stats").args(args));
        let sled_stats = stats_of(&["--data", sled_dir.to_str().unwrap()]);

        // Into PostgreSQL.
        let out = run(relay_bin()
            .args(["migrate-store", "--from"])
            .arg(&sled_dir)
            .args(["--to", &url]));
        assert!(
            out.contains("copied 2 accounts, 3 streams, 507 envelopes"),
            "{out}"
        );
        assert!(out.contains("verified"), "{out}");
        assert!(
            out.contains("copied 1 unused tokens from the token inbox"),
            "{out}"
        );
        // The same totals, plus the token that waited in the sled relay's inbox.
        assert_eq!(
            stats_of(&["--store", &url]),
            sled_stats.replace("registration_tokens 0", "registration_tokens 1")
        );
        // A second copy into the now non-empty database is refused.
        let out = relay_bin()
            .args(["migrate-store", "--from"])
            .arg(&sled_dir)
            .args(["--to", &url])
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));

        // A relay on PostgreSQL serves the copied streams.
        let relay = RelayProcess::spawn(&sled_dir, &["--store", &url]);
        let client = relay.connect().await;
        client
            .authenticate(accounts[0].device(0), &accounts[0].id)
            .await
            .unwrap();
        let d0 = accounts[0].device(0).device_id();
        let streams = pull_all(&client).await;
        assert_eq!(
            streams.get(&d0).unwrap(),
            &(101..=300)
                .zip(envelopes(&accounts[0].id, &d0, 101, 200, 700))
                .collect::<Vec<_>>()
        );
        assert_eq!(
            streams
                .get(&accounts[0].device(1).device_id())
                .map(Vec::len),
            Some(7)
        );
        assert_eq!(
            client
                .push(envelopes(&accounts[0].id, &d0, 301, 1, 700))
                .await
                .unwrap(),
            301
        );
        client.close().await;
        drop(relay);

        // And back into a fresh sled directory.
        let out = run(relay_bin()
            .args(["migrate-store", "--from", &url, "--to"])
            .arg(&back_dir));
        assert!(
            out.contains("copied 2 accounts, 3 streams, 508 envelopes"),
            "{out}"
        );
        let back = stats_of(&["--data", back_dir.to_str().unwrap()]);
        assert!(back.contains("envelopes 508"), "{back}");
        assert!(back.contains("registration_tokens 1"), "{back}");
    })
    .await;
}
