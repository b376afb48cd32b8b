//! Scale benchmarks over real clients and a real relay on loopback (`harness = false`):
//!
//! - import of a generated 100,000-row LinkedIn export into a device's store (target < 5 s);
//! - 100,000 contacts created on device A, synced through the relay and fully merged on
//!   device B (target < 10 s end to end);
//! - merging (issue 11): the same LinkedIn import, then a 100,000-card vCard half of whose
//!   cards carry the LinkedIn URL of one connection and the e-mail of another, so that each
//!   links two existing records into one person (target < 5 s each);
//! - the same sync when the operations include merges (`sync-merges`: 10,000 of them at
//!   100,000 contacts; issue 11 asks for no more than 10 % slower than `sync`), and its
//!   control, the same cards linking nothing (`sync-cards`);
//! - the same 100,000 contacts merged on B while B watches, from the start of A's sync until B
//!   shows them all (`watch`: how a person sees it, target < 2 s);
//! - a device linked into an account of 100,000 contacts, compacted into a snapshot: from
//!   approval to every contact shown on the new device (`join`; target < 3 s);
//! - the relay's bytes for an account of 10,000 contacts after 10 rounds of edits to every
//!   contact, before and after `compact`.
//!
//! `cargo bench -p kith-e2e --bench scale` runs them all; `-- import`, `-- sync` (with
//! `sync-cards` and `sync-merges`), `-- merge`, `-- watch`, `-- join` or `-- compact` runs one. Sizes can be scaled down with `KITH_BENCH_CONTACTS` (default 100000)
//! and `KITH_BENCH_COMPACT_CONTACTS` (default 10000) for a quick check;
//! `KITH_BENCH_COMPACT_ROUNDS` (default 10) sets the edit rounds before `compact`.

use std::time::{Duration, Instant};

/// mimalloc, as in the `kith` and `kith-relay` binaries: the client allocates and frees many
/// small strings per contact, which glibc's allocator handles at about 1.4× the time.
/// `--features system-allocator` measures with the system allocator instead.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use kith_client::import::{ImportOptions, linkedin, testing::generate_linkedin_csv};
use kith_client::net::RelayTarget;
use kith_client::{ContactFields, Device};
use kith_relay::{Relay, RelayConfig, RelayHandle};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn target(relay: &RelayHandle) -> RelayTarget {
    RelayTarget::pinned(
        relay.local_addr().to_string(),
        &hex::encode(relay.cert_sha256()),
    )
    .unwrap()
}

async fn relay(dir: &std::path::Path) -> RelayHandle {
    let mut config = RelayConfig::for_tests(dir.join("relay"));
    // Large imports push ~100 MB; keep the per-account quota out of the way.
    config.bounds.max_account_bytes = 16 * 1024 * 1024 * 1024;
    config.bounds.requests_per_second = 100_000;
    Relay::start(config).await.unwrap()
}

async fn link(dir: &std::path::Path, relay: &RelayHandle, a: &Device, name: &str) -> Device {
    kith_e2e::link(a, &dir.join(name), target(relay), name).await
}

/// A relay in `dir` and an account of one device on it, A.
async fn one_device(dir: &std::path::Path) -> (RelayHandle, Device) {
    let relay = relay(dir).await;
    let (a, _) = Device::create(&dir.join("a"), target(&relay), "a", None)
        .await
        .unwrap();
    (relay, a)
}

/// A relay in `dir` and an account of two devices on it: A, and B linked to it.
async fn linked_pair(dir: &std::path::Path) -> (RelayHandle, Device, Device) {
    let (relay, a) = one_device(dir).await;
    let b = link(dir, &relay, &a, "b").await;
    (relay, a, b)
}

/// The contacts of a generated export of `n` LinkedIn rows.
fn linkedin_rows(n: usize) -> kith_client::import::ImportReport {
    let csv = generate_linkedin_csv(n);
    linkedin::import_bytes(csv.as_bytes(), &ImportOptions::default()).unwrap()
}

/// Resets the process's peak resident set (`VmHWM`) to its current size (Linux; elsewhere
/// nothing), so that [`rss_mib`] then gives the peak of what runs after.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The process's resident set and its peak since [`reset_peak_rss`] (`VmRSS`, `VmHWM`), in
/// MiB; zeros where /proc is not available.
fn rss_mib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map_or(0, |kib| kib / 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

async fn bench_import(n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let (relay, a) = one_device(dir.path()).await;
    let csv = generate_linkedin_csv(n);
    let started = Instant::now();
    let report = linkedin::import_bytes(csv.as_bytes(), &ImportOptions::default()).unwrap();
    let parsed = started.elapsed();
    let rows = report.contacts.len();
    let summary = a.import(report).await.unwrap();
    let total = started.elapsed();
    println!(
        "import: {n} LinkedIn rows ({} bytes) -> {rows} contacts, {} added: parse {}, total {} ({:.0} contacts/s)",
        csv.len(),
        summary.added,
        secs(parsed),
        secs(total),
        rows as f64 / total.as_secs_f64()
    );
    relay.shutdown().await.unwrap();
}

/// `n` vCard cards: each has its own name, UID and phone number; every even card also carries
/// the LinkedIn URL of connection `k` and the e-mail of another connection (one of the rows of
/// `generate_linkedin_csv` with an e-mail), which links those two records.
fn generate_linking_vcard(n: usize) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(n * 200);
    for k in 0..n {
        let _ = write!(
            out,
            "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:bench-{k}\r\nFN:Card {k}\r\nTEL;type=CELL:+1 415 {:07}\r\n",
            k
        );
        if k % 2 == 0 {
            // Row k's profile, and the e-mail of the nearest other row with one (i % 3 == 0).
            let other = if k % 3 == 0 { k + 3 } else { k - k % 3 };
            let _ = write!(
                out,
                "URL:https://www.linkedin.com/in/person-{k:x}\r\nEMAIL;type=INTERNET:person-{other:x}@example.com\r\n"
            );
        }
        out.push_str("END:VCARD\r\n");
    }
    out
}

async fn bench_merge(n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let (relay, a) = one_device(dir.path()).await;
    let csv = generate_linkedin_csv(n);
    let started = Instant::now();
    let report = linkedin::import_bytes(csv.as_bytes(), &ImportOptions::default()).unwrap();
    let linkedin_summary = a.import(report).await.unwrap();
    let linkedin_time = started.elapsed();
    let cards = generate_linking_vcard(n);
    let started = Instant::now();
    let report =
        kith_client::import::vcard::import_bytes(cards.as_bytes(), &ImportOptions::default())
            .unwrap();
    let parsed = started.elapsed();
    let summary = a.import(report).await.unwrap();
    let vcard_time = started.elapsed();
    let shown = a.contact_count().unwrap();
    println!(
        "merge: {n} LinkedIn rows -> {} added in {}; then {n} vCard cards: {} added, {} updated, {} records merged: parse {}, total {}; {} records",
        linkedin_summary.added,
        secs(linkedin_time),
        summary.added,
        summary.updated,
        summary.merged,
        secs(parsed),
        secs(vcard_time),
        shown
    );
    relay.shutdown().await.unwrap();
}

async fn bench_sync(n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let (relay, a, b) = linked_pair(dir.path()).await;
    let report = linkedin_rows(n);
    let contacts = report.contacts.len();
    let created = Instant::now();
    a.import(report).await.unwrap();
    let create_time = created.elapsed();
    let push_cpu_before = process_cpu();
    let started = Instant::now();
    let pushed = a.sync().await.unwrap();
    let push_time = started.elapsed();
    // A's sync is the only work of the process while it runs, with the relay's.
    let push_cpu = process_cpu() - push_cpu_before;
    // B's pull is the only work of the process while it runs (the relay serves it): the rise
    // of the peak above the resident set before it is what the pull itself holds.
    reset_peak_rss();
    let (rss_before, _) = rss_mib();
    let cpu_before = process_cpu();
    let faults_before = process_page_faults();
    let (written_before, wchar_before) = process_written();
    let pulled = b.sync().await.unwrap();
    let total = started.elapsed();
    let pull_cpu = process_cpu() - cpu_before;
    let pull_faults = process_page_faults() - faults_before;
    let (written_after, wchar_after) = process_written();
    let (pull_written, pull_wchar) = (written_after - written_before, wchar_after - wchar_before);
    let (_, pull_peak) = rss_mib();
    let b_files = |suffix: &str| {
        std::fs::metadata(
            dir.path()
                .join("b/store")
                .join(format!("kith.sqlite3{suffix}")),
        )
        .map_or(0, |m| m.len())
    };
    let (b_database, b_wal) = (b_files(""), b_files("-wal"));
    let on_b = b.contacts().unwrap().len();
    assert_eq!(on_b, contacts, "b must hold every contact");
    let usage = a.usage().await.unwrap();
    println!(
        "sync: {contacts} contacts created on A in {}; A sealed+pushed {} envelopes in {} (process CPU {}); B pulled+verified+merged {} envelopes in {} (process CPU {}, {pull_faults} page faults, {} MiB written to storage, {} MiB in write calls; B's database {} MiB, WAL {} MiB at its end); end to end (push + pull + merge) {}; relay holds {} bytes ({:.0} B/contact); process RSS {rss_before} MiB before B's pull, peak {pull_peak} MiB during it",
        secs(create_time),
        pushed.pushed,
        secs(push_time),
        secs(push_cpu),
        pulled.pulled,
        secs(total - push_time),
        secs(pull_cpu),
        pull_written >> 20,
        pull_wchar >> 20,
        b_database >> 20,
        b_wal >> 20,
        secs(total),
        usage.bytes_used,
        usage.bytes_used as f64 / contacts as f64
    );
    relay.shutdown().await.unwrap();
}

/// The sync of `bench_sync` as people see it: B is open and watching (subscribed) while A
/// pushes, so B pulls and merges A's first envelopes while A seals and pushes the rest. Timed
/// from the start of A's sync until B shows every contact.
async fn bench_watch(n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let (relay, a, b) = linked_pair(dir.path()).await;
    let report = linkedin_rows(n);
    let contacts = report.contacts.len();
    a.import(report).await.unwrap();
    let (changes, mut reports) = tokio::sync::mpsc::channel(64);
    let watcher = {
        let b = b.clone();
        tokio::spawn(async move { b.watch(changes).await })
    };
    // The watcher's first sync (nothing to pull) and its subscription.
    reports.recv().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let pushed = a.sync().await.unwrap();
    let push_time = started.elapsed();
    let mut syncs = 0;
    while b.contact_count().unwrap() < contacts as u64 {
        tokio::time::timeout(Duration::from_secs(120), reports.recv())
            .await
            .expect("B merged everything within 2 minutes")
            .expect("the watcher runs");
        syncs += 1;
    }
    let total = started.elapsed();
    println!(
        "watch: {contacts} contacts; A sealed+pushed {} envelopes in {}; B, watching, showed every contact {} after A's sync started ({syncs} syncs; {:.0} contacts/s end to end)",
        pushed.pushed,
        secs(push_time),
        secs(total),
        contacts as f64 / total.as_secs_f64()
    );
    watcher.abort();
    relay.shutdown().await.unwrap();
}

/// `pairs` cards for rows of `generate_linkedin_csv`, one per pair of rows `3j` and `3j + 1`
/// (pairs with a row that repeats an earlier one, every 50th row, left out): the card carries
/// the e-mail of row `3j` (every third row has one), which names that row's record, and a
/// LinkedIn profile URL. With `link`, the URL is row `3j + 1`'s, so the card links the two
/// existing records, which the identity rule merges (one merge per card); without, it is a
/// profile of the same length that no row has, so the card adds the same fields to row `3j`'s
/// record (the vCard source, the URL) and links nothing. The card's name (`FN`) is not written
/// (the record has one).
fn generate_card_vcard(pairs: usize, link: bool) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(pairs * 160);
    let profile = if link { "person" } else { "nobody" };
    let repeated = |row: usize| row % 50 == 49;
    let rows = (0..)
        .map(|j| (3 * j + 1, 3 * j))
        .filter(|&(k, other)| !repeated(k) && !repeated(other));
    for (k, other) in rows.take(pairs) {
        let _ = write!(
            out,
            "BEGIN:VCARD\r\nVERSION:3.0\r\nFN:Card {k}\r\nURL:https://www.linkedin.com/in/{profile}-{k:x}\r\nEMAIL;type=INTERNET:person-{other:x}@example.com\r\nEND:VCARD\r\n"
        );
    }
    out
}

/// Numeric fields of `/proc/self/stat` after the command name (which may hold spaces), from
/// `state` (field 3) on, at the given positions; zeros where /proc is not available.
fn process_stat<const N: usize>(at: [usize; N]) -> [u64; N] {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    at.map(|at| {
        fields
            .get(at)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    })
}

/// The CPU time the process has used (user + system, from `/proc/self/stat` in clock ticks of
/// 1/100 s; zero where /proc is not available). Load on the machine does not change it much,
/// where it stretches wall-clock times.
fn process_cpu() -> Duration {
    let [user, system] = process_stat([11, 12]);
    Duration::from_millis((user + system) * 10)
}

/// What the process has written (`/proc/self/io`): the bytes it caused to be sent to storage
/// (`write_bytes`, counted as pages of the page cache become dirty, fsynced or not) and the
/// bytes it passed to `write`-family calls (`wchar`); zeros where /proc is not available. Not
/// affected by load.
fn process_written() -> (u64, u64) {
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    let field = |name: &str| {
        io.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0)
    };
    (field("write_bytes:"), field("wchar:"))
}

/// The minor page faults the process has taken (`minflt`): each is a page the kernel mapped,
/// most of them fresh memory it zeroed first (BENCHMARKS.md, "B's pull (issue 18), tenth
/// session"). Not affected by load.
fn process_page_faults() -> u64 {
    let [faults] = process_stat([7]);
    faults
}

/// The sync of `bench_sync`, after A also imported `pairs` vCard cards
/// ([`generate_card_vcard`]): with `link`, each card merges two records (`sync-merges`: 10,000
/// merges at 100,000 contacts; issue 11 asks for no more than 10 % slower than `sync`);
/// without, the same cards add the same fields and merge nothing (`sync-cards`, the control:
/// the difference between the two is the merges alone).
async fn bench_sync_cards(n: usize, pairs: usize, link: bool) {
    let dir = tempfile::tempdir().unwrap();
    let (relay, a, b) = linked_pair(dir.path()).await;
    let report = linkedin_rows(n);
    let records = report.contacts.len();
    a.import(report).await.unwrap();
    let cards = generate_card_vcard(pairs, link);
    let report =
        kith_client::import::vcard::import_bytes(cards.as_bytes(), &ImportOptions::default())
            .unwrap();
    let summary = a.import(report).await.unwrap();
    assert_eq!(summary.added, 0, "every card names an existing record");
    assert_eq!(summary.updated, pairs, "every card updates its record");
    assert_eq!(summary.merged, if link { pairs } else { 0 });
    let contacts = a.contacts().unwrap().len();
    let started = Instant::now();
    let pushed = a.sync().await.unwrap();
    let push_time = started.elapsed();
    let cpu_before = process_cpu();
    let faults_before = process_page_faults();
    let pull_started = Instant::now();
    let pulled = b.sync().await.unwrap();
    let total = started.elapsed();
    let pull_cpu = process_cpu() - cpu_before;
    let pull_faults = process_page_faults() - faults_before;
    let pull_time = pull_started.elapsed();
    let on_b = b.contacts().unwrap().len();
    assert_eq!(on_b, contacts, "b must show every contact, merged");
    println!(
        "{}: {records} records, {contacts} contacts after {} merges ({} records updated by {pairs} cards); A sealed+pushed {} envelopes in {}; B pulled+verified+merged {} envelopes in {} (process CPU {}, {pull_faults} page faults); end to end (push + pull + merge) {}",
        if link { "sync-merges" } else { "sync-cards" },
        summary.merged,
        summary.updated,
        pushed.pushed,
        secs(push_time),
        pulled.pulled,
        secs(pull_time),
        secs(pull_cpu),
        secs(total),
    );
    relay.shutdown().await.unwrap();
}

/// A device linked into an account of `n` contacts that device A has compacted into a
/// snapshot (issue 18: all shown within 3 s of approval). The new device asks first, as a
/// person's second device does while they open the first; the clock starts when A approves
/// and stops when the new device's link has completed, which includes its first sync: every
/// contact pulled, verified and merged.
async fn bench_join(n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let (relay, a) = one_device(dir.path()).await;
    let csv = generate_linkedin_csv(n);
    let report = linkedin::import_bytes(csv.as_bytes(), &ImportOptions::default()).unwrap();
    a.import(report).await.unwrap();
    a.sync().await.unwrap();
    let compacted = a.compact().await.unwrap();
    let contacts = a.contact_count().unwrap();
    let pending =
        kith_client::PendingLink::new(&dir.path().join("b"), target(&relay), "b").unwrap();
    let code = pending.code().to_string();
    let asked = tokio::spawn(pending.complete(Duration::from_secs(120)));
    // The request reaches the relay before the person approves it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let approval = a.approve_link(&code).await.unwrap();
    let approved = started.elapsed();
    let b = asked.await.unwrap().unwrap();
    let joined = started.elapsed();
    assert_eq!(
        b.contact_count().unwrap(),
        contacts,
        "b must show every contact"
    );
    println!(
        "join: {contacts} contacts in {} snapshot envelopes; approval returned in {} (joined: {}); the new device showed every contact {} after approval ({:.0} contacts/s)",
        compacted.snapshot_envelopes,
        secs(approved),
        approval.joined,
        secs(joined),
        contacts as f64 / joined.as_secs_f64()
    );
    relay.shutdown().await.unwrap();
}

async fn bench_compact(n: usize, rounds: usize) {
    let dir = tempfile::tempdir().unwrap();
    let (relay, a) = one_device(dir.path()).await;
    let csv = generate_linkedin_csv(n);
    let report = linkedin::import_bytes(csv.as_bytes(), &ImportOptions::default()).unwrap();
    a.import(report).await.unwrap();
    a.sync().await.unwrap();
    let ids: Vec<_> = a.contacts().unwrap().iter().map(|c| c.id()).collect();
    let started = Instant::now();
    for round in 0..rounds {
        let edits: Vec<_> = ids
            .iter()
            .map(|id| {
                (
                    *id,
                    ContactFields {
                        note: Some(format!("round {round}")),
                        ..Default::default()
                    },
                )
            })
            .collect();
        a.edit_contacts(&edits).await.unwrap();
        a.sync().await.unwrap();
    }
    let edit_time = started.elapsed();
    let started = Instant::now();
    let report = a.compact().await.unwrap();
    let compact_time = started.elapsed();
    // A device linked after compaction converges from the snapshot.
    let c = link(dir.path(), &relay, &a, "c").await;
    assert_eq!(c.contacts().unwrap().len(), ids.len());
    println!(
        "compact: {} contacts x {rounds} edit rounds ({}): relay bytes {} before, {} after compact ({:.1}x smaller, {:.0} B/contact), {} snapshot envelopes in {}",
        ids.len(),
        secs(edit_time),
        report.relay_bytes_before,
        report.relay_bytes_after,
        report.relay_bytes_before as f64 / report.relay_bytes_after.max(1) as f64,
        report.relay_bytes_after as f64 / ids.len() as f64,
        report.snapshot_envelopes,
        secs(compact_time),
    );
    relay.shutdown().await.unwrap();
}

fn main() {
    // With RUST_LOG set, the client's and relay's logs go to stderr: a sync that fails and is
    // retried says so there (`sync failed; retrying`), which a timed line alone does not show.
    if let Ok(directives) = tracing_subscriber::EnvFilter::try_from_default_env() {
        tracing_subscriber::fmt()
            .with_env_filter(directives)
            .with_writer(std::io::stderr)
            .init();
    }
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    // Names match exactly, except that `sync` also runs `sync-cards` and `sync-merges` (the
    // three are compared).
    let wanted = |name: &str| {
        filter.is_empty()
            || filter.iter().any(|f| {
                f == name || (f == "sync" && (name == "sync-cards" || name == "sync-merges"))
            })
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let contacts = env_usize("KITH_BENCH_CONTACTS", 100_000);
    let compact_contacts = env_usize("KITH_BENCH_COMPACT_CONTACTS", 10_000);
    let compact_rounds = env_usize("KITH_BENCH_COMPACT_ROUNDS", 10);
    // 10,000 at 100,000 rows (issue 11); the cards use rows up to about 32,000.
    let merges = contacts / 10;
    runtime.block_on(async {
        if wanted("import") {
            bench_import(contacts).await;
        }
        if wanted("sync") {
            bench_sync(contacts).await;
        }
        if wanted("sync-cards") {
            bench_sync_cards(contacts, merges, false).await;
        }
        if wanted("sync-merges") {
            bench_sync_cards(contacts, merges, true).await;
        }
        if wanted("merge") {
            bench_merge(contacts).await;
        }
        if wanted("watch") {
            bench_watch(contacts).await;
        }
        if wanted("join") {
            bench_join(contacts).await;
        }
        if wanted("compact") {
            bench_compact(compact_contacts, compact_rounds).await;
        }
    });
}
