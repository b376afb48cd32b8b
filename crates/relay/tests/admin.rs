//! `kith-relay admin …` against a running relay (the built binary, as an operator runs both):
//! every command through the control socket, and what each change does to the accounts'
//! devices — a suspended account's devices are refused with `ACCOUNT_SUSPENDED`, quotas set
//! for one account are enforced with `QUOTA_EXCEEDED` and `TOO_MANY_DEVICES`, a deleted account
//! cannot come back, a revoked token opens nothing. The offline `stats` and `token create`
//! keep working on a stopped relay's data directory.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::process::RelayProcess;
use common::{TestAccount, TestDevice, assert_refused, bounded};
use kith_protocol::proto::{self, ErrorCode, request, response};
use serde_json::Value;

/// Runs `kith-relay ARGS --data DATA`; (exit success, stdout, stderr).
fn relay(data: &Path, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_kith-relay"))
        .args(args)
        .arg("--data")
        .arg(data)
        .output()
        .expect("run kith-relay");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `kith-relay admin ARGS --json`, which must succeed; its JSON answer.
fn admin_json(data: &Path, args: &[&str]) -> Value {
    let mut all = vec!["admin"];
    all.extend_from_slice(args);
    all.push("--json");
    let (ok, out, err) = relay(data, &all);
    assert!(ok, "kith-relay {all:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{all:?} printed {out:?}: {e}"))
}

/// `kith-relay admin ARGS`, which must fail; its stderr.
fn admin_fails(data: &Path, args: &[&str]) -> String {
    let mut all = vec!["admin"];
    all.extend_from_slice(args);
    let (ok, out, err) = relay(data, &all);
    assert!(!ok, "kith-relay {all:?} succeeded: {out}");
    err
}

/// `kith-relay admin accounts quota`: `account`'s byte quota and device limit (a number, or
/// `default` for the relay's own); the account's new limits.
fn set_quota(data: &Path, account: &TestAccount, bytes: &str, devices: &str) -> Value {
    let id = hex_id(account);
    admin_json(
        data,
        &[
            "accounts",
            "quota",
            &id,
            "--bytes",
            bytes,
            "--devices",
            devices,
        ],
    )
}

fn hex_id(account: &TestAccount) -> String {
    hex::encode(account.id.as_bytes())
}

fn today() -> String {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 86_400;
    kith_relay::admin::day_string(u32::try_from(days).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_are_listed_shown_suspended_limited_and_deleted_while_the_relay_runs() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let relay_process = RelayProcess::spawn(dir.path(), &[]);
        let data = dir.path();
        let mut alice = TestAccount::new(1);
        let bob = TestAccount::new(1);
        let a = relay_process.connect().await;
        alice.create(&a).await;
        a.push(alice.envelopes(0, 1, 3, 200)).await.unwrap();
        let b = relay_process.connect().await;
        bob.create(&b).await;

        // list: exactly id, devices, bytes, last active day.
        let list = admin_json(data, &["accounts", "list"]);
        let rows = list.as_array().unwrap();
        assert_eq!(rows.len(), 2, "{list}");
        let alice_row = rows.iter().find(|r| r["id"] == hex_id(&alice)).unwrap();
        let mut keys: Vec<&String> = alice_row.as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(keys, ["bytes", "devices", "id", "last_active_day"]);
        assert_eq!(alice_row["devices"], 1);
        assert!(alice_row["bytes"].as_u64().unwrap() >= 600, "{alice_row}");
        assert_eq!(alice_row["last_active_day"], today());
        let (ok, text, _) = relay(data, &["admin", "accounts", "list"]);
        assert!(ok);
        assert!(
            text.starts_with("id\tdevices\tbytes\tlast_active_day\n"),
            "{text}"
        );
        assert!(text.contains(&hex_id(&bob)), "{text}");

        // show, by a unique prefix.
        let shown = admin_json(data, &["accounts", "show", &hex_id(&alice)[..10]]);
        assert_eq!(shown["id"], hex_id(&alice));
        assert_eq!(shown["envelopes"], 3);
        assert_eq!(shown["suspended"], false);
        assert_eq!(shown["bytes_quota_set"], false);
        assert!(admin_fails(data, &["accounts", "show", "00"]).contains("at least 8"));

        // suspend: the connected device is refused at its next request, a new connection at
        // its authentication; the other account is untouched.
        let suspended = admin_json(data, &["accounts", "suspend", &hex_id(&alice)]);
        assert_eq!(suspended["suspended"], true);
        assert_refused(
            a.push(alice.envelopes(0, 4, 1, 200)).await,
            ErrorCode::AccountSuspended,
        );
        let again = relay_process.connect().await;
        assert_refused(
            again.authenticate(alice.device(0), &alice.id).await,
            ErrorCode::AccountSuspended,
        );
        b.push(bob.envelopes(0, 1, 1, 100)).await.unwrap();
        admin_json(data, &["accounts", "unsuspend", &hex_id(&alice)]);
        assert_eq!(a.push(alice.envelopes(0, 4, 1, 200)).await.unwrap(), 4);

        // quotas for this account alone.
        let used = admin_json(data, &["accounts", "show", &hex_id(&alice)])["bytes"]
            .as_u64()
            .unwrap();
        let limited = set_quota(data, &alice, &(used + 100).to_string(), "1");
        assert_eq!(limited["bytes_quota"], used + 100);
        assert_eq!(limited["bytes_quota_set"], true);
        assert_eq!(limited["devices_max"], 1);
        assert_refused(
            a.push(alice.envelopes(0, 5, 1, 400)).await,
            ErrorCode::QuotaExceeded,
        );
        let info = match a
            .request(request::Kind::GetAccountInfo(proto::GetAccountInfo {}))
            .await
            .unwrap()
        {
            response::Kind::AccountInfo(info) => info,
            other => panic!("{other:?}"),
        };
        let usage = info.usage.unwrap();
        assert_eq!((usage.bytes_quota, usage.devices_max), (used + 100, 1));
        assert!(info.bytes_quota_set && info.devices_max_set);
        assert_eq!(info.streams.len(), 1);
        assert_eq!(info.streams[0].last_seq, 4);
        alice.devices.push(TestDevice::new());
        alice.version += 1;
        let grown = &alice;
        assert_refused(
            a.expect_ok(request::Kind::PutRoster(proto::PutRoster {
                roster: grown.roster(),
            }))
            .await,
            ErrorCode::TooManyDevices,
        );
        // Back to the relay's limits: the push and the new device go through.
        let reset = set_quota(data, &alice, "default", "default");
        assert_eq!(reset["bytes_quota_set"], false);
        a.push(alice.envelopes(0, 5, 1, 400)).await.unwrap();
        a.expect_ok(request::Kind::PutRoster(proto::PutRoster {
            roster: grown.roster(),
        }))
        .await
        .unwrap();

        // delete: gone from the list, and its device cannot create it again.
        let deleted = admin_json(data, &["accounts", "delete", &hex_id(&alice)]);
        assert_eq!(deleted["deleted"], true);
        let list = admin_json(data, &["accounts", "list"]);
        assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
        let back = relay_process.connect().await;
        assert_refused(grown.register(&back, None).await, ErrorCode::UnknownAccount);
        assert!(
            admin_fails(data, &["accounts", "show", &hex_id(&alice)]).contains("no such account")
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_created_listed_and_revoked_while_the_relay_runs_and_stats_are_live() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        let mut relay_process = RelayProcess::spawn(data, &["--registration", "token"]);
        let (ok, token, err) = relay(data, &["admin", "tokens", "create"]);
        assert!(ok, "{err}");
        let token = token.trim().to_string();
        assert_eq!(token.len(), 32, "{token}");
        // The offline command (the inbox) still works beside it.
        let (ok, inbox_token, err) = relay(data, &["token", "create"]);
        assert!(ok, "{err}");
        let inbox_token = inbox_token.trim().to_string();
        let listed = admin_json(data, &["tokens", "list"]);
        assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");

        // A created token opens one account.
        let alice = TestAccount::new(1);
        let client = relay_process.connect().await;
        alice.register(&client, Some(&token)).await.unwrap();
        assert_eq!(
            admin_json(data, &["tokens", "list"])
                .as_array()
                .unwrap()
                .len(),
            1
        );

        // Revoked, by the token itself or by its id, a token opens nothing.
        admin_json(data, &["tokens", "revoke", &inbox_token]);
        let (ok, second, _) = relay(data, &["admin", "tokens", "create"]);
        assert!(ok);
        let listed = admin_json(data, &["tokens", "list"]);
        let id = listed[0]["id"].as_str().unwrap().to_string();
        let revoked = admin_json(data, &["tokens", "revoke", &id]);
        assert_eq!(revoked["revoked"], id);
        assert_eq!(
            admin_json(data, &["tokens", "list"])
                .as_array()
                .unwrap()
                .len(),
            0
        );
        for revoked_token in [inbox_token.as_str(), second.trim()] {
            let bob = TestAccount::new(1);
            let client = relay_process.connect().await;
            assert_refused(
                bob.register(&client, Some(revoked_token)).await,
                ErrorCode::RegistrationClosed,
            );
        }

        // Live stats while a device is connected.
        let stats = admin_json(data, &["stats"]);
        assert_eq!(stats["accounts"], 1, "{stats}");
        assert!(stats["connections"].as_u64().unwrap() >= 1, "{stats}");
        assert_eq!(stats["registration_tokens"], 0);
        let (ok, text, _) = relay(data, &["admin", "stats"]);
        assert!(ok && text.contains("accounts 1\n"), "{text}");

        // Stopped: the admin commands say the relay is not running; the offline ones work.
        drop(client);
        relay_process.terminate(Duration::from_secs(20));
        let err = admin_fails(data, &["stats"]);
        assert!(err.contains("is the relay running"), "{err}");
        let (ok, text, err) = relay(data, &["stats"]);
        assert!(ok, "{err}");
        assert!(text.contains("accounts 1\n"), "{text}");
        let (ok, _, err) = relay(data, &["token", "create"]);
        assert!(ok, "{err}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_kind_the_relay_does_not_know_is_answered_unsupported() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let relay_process = RelayProcess::spawn(dir.path(), &[]);
        let client = relay_process.connect().await;
        // Field 99 of `Request`, empty: a request kind of some future release.
        let body = [0x9a, 0x06, 0x00];
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        let answer = client.call_frame(frame.into()).await.unwrap();
        let response = <proto::Response as prost::Message>::decode(answer).unwrap();
        match response.kind {
            Some(response::Kind::Error(e)) => {
                assert_eq!(e.code, ErrorCode::Unsupported as i32, "{e:?}");
            }
            other => panic!("{other:?}"),
        }
        // The connection stays usable.
        let alice = TestAccount::new(1);
        alice.create(&client).await;
    })
    .await;
}
