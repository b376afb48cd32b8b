//! Old and new together: the previous release's `kith` and `kith-relay` (built from its commit
//! by `scripts/build-release.sh`, as people have them) beside this release's, on one account.
//!
//! - a new relay with an old device and a new device: both sync, each sees the other's edits,
//!   and what the new device writes that the old one cannot read never stops the old one;
//! - an old relay with new devices;
//! - a home made by the old release opened by the new one, and an old relay's data directory
//!   served by the new relay.
//!
//! The old binaries are built once per checkout (a few minutes, cached under
//! `target/releases/`); `.ci/run` builds them before the tests. When they cannot be built (no
//! git history, say) the tests say so loudly and pass, except in CI (`CI=true`), where that is
//! a failure.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

mod support;
use support::{COMMAND_TIMEOUT, RelayProcess, new_relay_bin, ok, wait, with_home};

/// The release these tests hold this one to: the newest line of `scripts/releases.txt`.
const PREVIOUS: &str = "0.1.0";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The previous release's binaries, building them if needed; `None` (after saying why) when
/// they cannot be built outside CI.
fn previous_bin(name: &str) -> Option<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let output = Command::new("bash")
            .arg(repo().join("scripts/build-release.sh"))
            .arg(PREVIOUS)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run scripts/build-release.sh: {e}"))?;
        if output.status.success() {
            Ok(repo().join("target/releases").join(PREVIOUS).join("bin"))
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    });
    match dir {
        Ok(dir) => Some(dir.join(name)),
        Err(why) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI must build Kith {PREVIOUS} for the compatibility tests: {why}")
        }
        Err(why) => {
            eprintln!(
                "SKIPPED: Kith {PREVIOUS} could not be built, so old/new compatibility is NOT \
                 tested here: {why}"
            );
            None
        }
    }
}

fn new_kith() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kith"))
}

fn kith(bin: &Path, home: &Path) -> Command {
    with_home(Command::new(bin), home)
}

/// The tests that run two releases' processes take turns: run side by side on a busy 2-core
/// machine, debug builds of both releases can miss each other's handshake timeouts.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TURN.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn init(bin: &Path, home: &Path, relay: &RelayProcess, name: &str) {
    let mut command = kith(bin, home);
    command
        .arg("init")
        .args(relay.args())
        .args(["--device-name", name]);
    ok(command);
}

/// Links a device made by `new_bin` in `new_home` through the approval of `approver` (run with
/// `approver_bin`): the requester prints its code and waits, as a person would run it.
fn link(
    approver_bin: &Path,
    approver: &Path,
    new_bin: &Path,
    new_home: &Path,
    relay: &RelayProcess,
) {
    let mut request = kith(new_bin, new_home);
    request
        .args(["device", "request"])
        .args(relay.args())
        .args(["--device-name", "new", "--timeout", "60"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = request.spawn().expect("spawn device request");
    // Its first line is the link code; the rest of its output is drained until it exits.
    let stdout = child.stdout.take().expect("stdout");
    let (send, receive) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(code) = line
                .split_whitespace()
                .find(|word| word.starts_with("kith-link1:"))
            {
                let _ = send.send(code.to_owned());
            }
        }
    });
    let code = receive
        .recv_timeout(COMMAND_TIMEOUT)
        .expect("device request printed a link code");
    let mut approve = kith(approver_bin, approver);
    approve.args(["device", "approve", &code]);
    ok(approve);
    let output = wait(child, "device request");
    assert!(
        output.status.success(),
        "device request failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn sync(bin: &Path, home: &Path) -> String {
    let mut command = kith(bin, home);
    command.arg("sync");
    ok(command)
}

fn contacts(bin: &Path, home: &Path) -> Vec<Value> {
    let mut command = kith(bin, home);
    command.args(["contacts", "list", "--json"]);
    match serde_json::from_str(&ok(command)).expect("contacts list --json") {
        Value::Array(items) => items,
        other => panic!("not an array: {other}"),
    }
}

fn names(bin: &Path, home: &Path) -> Vec<String> {
    let mut names: Vec<String> = contacts(bin, home)
        .iter()
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

fn add(bin: &Path, home: &Path, name: &str, email: &str) {
    let mut command = kith(bin, home);
    command.args(["contacts", "add", "--name", name, "--email", email]);
    ok(command);
}

fn sample(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("demo-data")
        .join(name)
}

/// Both devices hold the same names after syncing twice each (pushes, then pulls).
fn converge(a: (&Path, &Path), b: (&Path, &Path)) -> Vec<String> {
    for _ in 0..2 {
        sync(a.0, a.1);
        sync(b.0, b.1);
    }
    let (on_a, on_b) = (names(a.0, a.1), names(b.0, b.1));
    assert_eq!(on_a, on_b, "the two devices converge");
    on_a
}

#[test]
fn versions_name_the_protocol() {
    let mut command = Command::new(new_kith());
    command.arg("--version");
    let out = ok(command);
    assert_eq!(
        out.trim(),
        format!(
            "kith {} (protocol {})",
            env!("CARGO_PKG_VERSION"),
            kith_protocol::PROTOCOL_VERSION
        )
    );
    let Some(relay) = new_relay_bin() else {
        return;
    };
    let mut command = Command::new(relay);
    command.arg("--version");
    let out = ok(command);
    assert_eq!(
        out.trim(),
        format!("kith-relay {} (protocol 1)", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn an_old_and_a_new_device_share_an_account_on_a_new_relay() {
    let _turn = one_at_a_time();
    let (Some(old), Some(new_relay)) = (previous_bin("kith"), new_relay_bin()) else {
        return;
    };
    let new = new_kith();
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(&new_relay, &dir.path().join("relay"));
    let (a, b) = (dir.path().join("old"), dir.path().join("new"));
    init(&old, &a, &relay, "old-phone");
    let mut import = kith(&old, &a);
    import
        .arg("import")
        .arg("linkedin")
        .arg(sample("Connections.csv"));
    ok(import);
    link(&old, &a, &new, &b, &relay);
    add(&new, &b, "Grace Hopper", "grace@navy.example");
    add(&old, &a, "Alan Turing", "alan@bletchley.example");
    let names = converge((&old, &a), (&new, &b));
    assert!(names.contains(&"Grace Hopper".to_owned()));
    assert!(names.contains(&"Alan Turing".to_owned()));
    // Data of kinds the old release does not know, written by the new device (any later
    // kind the new release imports), never stops the old device: it keeps syncing the rest.
    write_newer_kinds(&new, &b);
    add(&new, &b, "Katherine Johnson", "katherine@nasa.example");
    let names = converge((&old, &a), (&new, &b));
    assert!(names.contains(&"Katherine Johnson".to_owned()));
    add(&old, &a, "Edsger Dijkstra", "ewd@eindhoven.example");
    let names = converge((&old, &a), (&new, &b));
    assert!(names.contains(&"Edsger Dijkstra".to_owned()));
}

/// Writes, on a new device, data of the kinds this release added since the previous one: the
/// calendar import when this release has it. Without any later kind, there is nothing to write.
fn write_newer_kinds(new: &Path, home: &Path) {
    let calendar = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures/calendar/calendar.ics");
    let mut help = Command::new(new);
    help.args(["import", "--help"]);
    if ok(help).contains("calendar") && calendar.exists() {
        let mut import = kith(new, home);
        import.args(["import", "calendar"]).arg(&calendar);
        ok(import);
    }
}

#[test]
fn new_devices_work_through_an_old_relay() {
    let _turn = one_at_a_time();
    let Some(old_relay) = previous_bin("kith-relay") else {
        return;
    };
    let new = new_kith();
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(&old_relay, &dir.path().join("relay"));
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    init(&new, &a, &relay, "laptop");
    link(&new, &a, &new, &b, &relay);
    add(&new, &a, "Ada Lovelace", "ada@engine.example");
    add(&new, &b, "Charles Babbage", "charles@engine.example");
    let names = converge((&new, &a), (&new, &b));
    assert_eq!(names, ["Ada Lovelace", "Charles Babbage"]);
    // A request the old relay does not know (GetAccountInfo, 0.2.0) is answered as such, and
    // `account info` falls back to what it does know.
    let mut info = kith(&new, &a);
    info.args(["account", "info", "--json"]);
    let info: Value = serde_json::from_str(&ok(info)).unwrap();
    assert_eq!(info["relay"]["devices"], 2, "{info}");
    assert!(info["relay"]["bytes_used"].as_u64().unwrap() > 0, "{info}");
    assert!(info["relay"]["streams"].is_null(), "{info}");
    let mut info = kith(&new, &a);
    info.args(["account", "info"]);
    assert!(ok(info).contains("need a newer relay"));
}

#[test]
fn an_old_home_and_an_old_relay_directory_open_with_the_new_release() {
    let _turn = one_at_a_time();
    let (Some(old), Some(old_relay), Some(new_relay)) = (
        previous_bin("kith"),
        previous_bin("kith-relay"),
        new_relay_bin(),
    ) else {
        return;
    };
    let new = new_kith();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("relay");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let (address, pin) = {
        let relay = RelayProcess::start(&old_relay, &data);
        init(&old, &a, &relay, "laptop");
        let mut import = kith(&old, &a);
        import
            .arg("import")
            .arg("vcard")
            .arg(sample("contacts.vcf"));
        ok(import);
        link(&old, &a, &old, &b, &relay);
        add(&old, &a, "Ada Lovelace", "ada@engine.example");
        converge((&old, &a), (&old, &b));
        let announced = (relay.address.clone(), relay.pin.clone());
        relay.stop();
        announced
    };
    let before = names(&old, &a);
    assert!(before.len() > 1);
    // The new relay serves the old data directory, on the address and with the certificate
    // the devices stored.
    let relay = RelayProcess::start_on(&new_relay, &data, &address);
    assert_eq!(relay.pin, pin, "the relay kept its certificate");
    // The new release opens both homes and keeps syncing; nothing written before is lost.
    assert_eq!(names(&new, &a), before);
    add(&new, &a, "Grace Hopper", "grace@navy.example");
    let after = converge((&new, &a), (&new, &b));
    assert_eq!(after.len(), before.len() + 1);
    assert!(after.contains(&"Grace Hopper".to_owned()));
}
