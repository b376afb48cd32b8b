//! Realtime (issue 15 item 8): how long after an edit on device A does device B, watching
//! through the library (`Device::watch`: a subscription on a live connection), have it?
//!
//! - `library`: A edits through the library and pushes on its live connection
//!   (`edit_contact`, then `sync`); target p99 < 20 ms on loopback.
//! - `cli`: A is a `kith` process started for the edit: `kith contacts edit ID --company …`
//!   then `kith sync` (the edit command writes locally; the sync pushes); target p99 < 100 ms.
//!
//! Each edit waits until B has it before the next starts; the latency runs from just before
//! the edit to B's watch reporting the record changed. The relay runs in this process, on
//! loopback. `cargo bench -p kith-e2e --bench realtime` runs both; `-- library` or `-- cli`
//! one. `KITH_BENCH_EDITS` (default 1000) sets the number of edits; `KITH` the `kith` binary
//! (default: `target/release/kith`, else `target/debug/kith`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use kith_client::net::RelayTarget;
use kith_client::{ContactFields, Device, SyncReport};
use kith_protocol::ids::RecordId;
use kith_relay::{Relay, RelayConfig, RelayHandle};
use tokio::sync::mpsc;

/// How long one edit may take to reach B before the benchmark gives up.
const EDIT_TIMEOUT: Duration = Duration::from_secs(30);

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn target(relay: &RelayHandle) -> RelayTarget {
    RelayTarget::pinned(
        relay.local_addr().to_string(),
        &hex::encode(relay.key_sha256()),
    )
    .unwrap()
}

fn kith_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("KITH") {
        return path.into();
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let release = root.join("target/release/kith");
    if release.exists() {
        release
    } else {
        root.join("target/debug/kith")
    }
}

/// B's watch reports, each stamped when it arrived.
struct Watcher {
    reports: mpsc::Receiver<(Instant, SyncReport)>,
    _task: tokio::task::JoinHandle<()>,
}

impl Watcher {
    fn start(b: &Device) -> Self {
        let (tx, mut rx) = mpsc::channel::<SyncReport>(1024);
        let (stamped_tx, stamped) = mpsc::channel(1024);
        let b = b.clone();
        let task = tokio::spawn(async move {
            let watch = tokio::spawn(async move { b.watch(tx).await });
            while let Some(report) = rx.recv().await {
                if stamped_tx.send((Instant::now(), report)).await.is_err() {
                    break;
                }
            }
            watch.abort();
        });
        Self {
            reports: stamped,
            _task: task,
        }
    }

    /// Drops reports already received.
    fn drain(&mut self) {
        while self.reports.try_recv().is_ok() {}
    }

    /// When B first reported `id` changed.
    async fn seen(&mut self, id: &RecordId) -> Instant {
        tokio::time::timeout(EDIT_TIMEOUT, async {
            loop {
                let (at, report) = self.reports.recv().await.expect("the watch ended");
                if report.changed.contains(id) {
                    return at;
                }
            }
        })
        .await
        .expect("B never saw the edit")
    }
}

fn company(value: String) -> ContactFields {
    ContactFields {
        company: Some(value),
        ..Default::default()
    }
}

fn summary(what: &str, mut latencies: Vec<Duration>) {
    latencies.sort();
    let n = latencies.len();
    let rank = |p: f64| latencies[((p * n as f64).ceil() as usize).clamp(1, n) - 1];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{what}: {n} edits: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, mean {:.2} ms",
        ms(rank(0.50)),
        ms(rank(0.99)),
        ms(latencies[n - 1]),
        latencies.iter().map(|d| ms(*d)).sum::<f64>() / n as f64
    );
}

struct Setup {
    _dir: tempfile::TempDir,
    relay: RelayHandle,
    a_home: PathBuf,
    a: Device,
    b: Device,
    id: RecordId,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let mut config = RelayConfig::for_tests(dir.path().join("relay"));
    config.bounds.requests_per_second = 100_000;
    let relay = Relay::start(config).await.unwrap();
    let a_home = dir.path().join("a");
    let (a, _) = Device::create(&a_home, target(&relay), "a", None)
        .await
        .unwrap();
    let b = kith_e2e::link(&a, &dir.path().join("b"), target(&relay), "b").await;
    let id = a
        .add_contact(&ContactFields {
            name: Some("Ada Lovelace".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    a.sync().await.unwrap();
    b.sync().await.unwrap();
    Setup {
        _dir: dir,
        relay,
        a_home,
        a,
        b,
        id,
    }
}

async fn bench_library(edits: usize) {
    let s = setup().await;
    let mut watcher = Watcher::start(&s.b);
    // The watch's first sync, and a warm-up edit (first push on A's connection).
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.a.edit_contact(&s.id, &company("warm-up".into()))
        .await
        .unwrap();
    s.a.sync().await.unwrap();
    watcher.seen(&s.id).await;
    let mut latencies = Vec::with_capacity(edits);
    for i in 0..edits {
        watcher.drain();
        let start = Instant::now();
        s.a.edit_contact(&s.id, &company(format!("library {i}")))
            .await
            .unwrap();
        s.a.sync().await.unwrap();
        latencies.push(watcher.seen(&s.id).await - start);
    }
    let last = s.b.contact(&s.id).unwrap();
    assert_eq!(
        last.company(),
        Some(format!("library {}", edits - 1).as_str())
    );
    summary("library edit -> library watcher", latencies);
    s.a.close().await;
    s.b.close().await;
    s.relay.shutdown().await.unwrap();
}

fn kith(bin: &Path, home: &Path, args: &[&str]) {
    let output = std::process::Command::new(bin)
        .arg("--home")
        .arg(home)
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .expect("run kith");
    assert!(
        output.status.success(),
        "kith {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

async fn bench_cli(edits: usize) {
    let bin = kith_binary();
    assert!(
        bin.exists(),
        "no kith binary at {} (set KITH)",
        bin.display()
    );
    let s = setup().await;
    // The process is A from now on.
    s.a.close().await;
    drop(s.a);
    let mut watcher = Watcher::start(&s.b);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let id = s.id.to_hex();
    let mut latencies = Vec::with_capacity(edits);
    for i in 0..edits {
        watcher.drain();
        let start = Instant::now();
        let (home, id_hex, bin) = (s.a_home.clone(), id.clone(), bin.clone());
        let value = format!("cli {i}");
        tokio::task::spawn_blocking(move || {
            kith(
                &bin,
                &home,
                &["contacts", "edit", &id_hex, "--company", &value],
            );
            kith(&bin, &home, &["sync"]);
        })
        .await
        .unwrap();
        latencies.push(watcher.seen(&s.id).await - start);
    }
    summary(
        &format!(
            "`kith contacts edit` + `kith sync` ({}) -> library watcher",
            bin.display()
        ),
        latencies,
    );
    s.b.close().await;
    s.relay.shutdown().await.unwrap();
}

fn main() {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted = |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let edits = env_usize("KITH_BENCH_EDITS", 1000);
    runtime.block_on(async {
        if wanted("library") {
            bench_library(edits).await;
        }
        if wanted("cli") {
            bench_cli(edits).await;
        }
    });
}
