//! The `kith-relay` binary as an operator meets it: its log in a file has no colour codes, its
//! errors are one line without a backtrace, `token create` and `stats` refuse a directory that
//! is not a relay's, and SIGTERM stops it promptly, even with a client connected.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::process::RelayProcess;
use kith_protocol::proto::{self, request};

fn relay_command(args: &[&str], data: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kith-relay"))
        .args(args)
        .arg("--data")
        .arg(data)
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run kith-relay")
}

#[test]
fn token_and_stats_refuse_a_directory_that_is_not_a_relays() {
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("kith-relay-dta");
    for args in [&["token", "create"][..], &["stats"][..]] {
        let output = relay_command(args, &typo);
        let err = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            output.stdout.is_empty(),
            "{args:?} printed {:?}",
            output.stdout
        );
        assert!(err.contains("not a kith-relay data directory"), "{err}");
        assert!(
            !err.contains("backtrace"),
            "a routine error prints no backtrace: {err}"
        );
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(!typo.exists(), "{args:?} created the directory");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_has_no_colour_codes_stats_counts_streams_and_sigterm_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = RelayProcess::spawn(dir.path(), &["--lookups-per-minute", "3"]);
    let client = std::sync::Arc::new(relay.connect().await);
    let take = |slot: u8, wait_ms: u32| {
        request::Kind::TakePairingSlot(proto::TakePairingSlot {
            slot_id: vec![slot; 32],
            wait_ms,
        })
    };
    // A client holds a waiting take of a pairing slot open while the relay is stopped.
    let waiting = tokio::spawn({
        let client = client.clone();
        async move { client.request(take(3, 20_000)).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Lookups past the per-address budget (3 a minute here) are refused; being unauthenticated,
    // the refusals are logged at debug only (a line each at info would let anyone fill the
    // disk, docs/PROTOCOL.md §12 "Before authentication").
    for _ in 0..3 {
        let _ = client.request(take(2, 0)).await;
    }
    // Generous: the relay stops at once; the bound only keeps a hung relay from hanging the
    // test.
    let status = tokio::task::spawn_blocking(move || {
        let status = relay.terminate(Duration::from_secs(15));
        (status, relay.stderr())
    })
    .await
    .unwrap();
    let (status, log) = status;
    assert!(
        status.is_some_and(|s| s.success()),
        "SIGTERM: {status:?}\n{log}"
    );
    assert!(log.contains("relay stopped"), "{log}");
    assert!(
        !log.lines()
            .any(|l| l.contains("request refused") && l.contains("RateLimited")),
        "an unauthenticated refusal reached the info log: {log}"
    );
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a piped log: {log:?}"
    );
    let answer = waiting.await.unwrap();
    assert_eq!(
        answer.err().and_then(|e| e.code()),
        Some(proto::ErrorCode::ShuttingDown),
        "a waiting take is told the relay is shutting down"
    );

    let output = relay_command(&["stats"], dir.path());
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{out}");
    assert!(out.lines().any(|l| l.starts_with("streams ")), "{out}");
    assert!(!out.lines().any(|l| l.starts_with("devices ")), "{out}");
}
