//! What the CLI's test files share: running a `kith` (or `kith-relay`) process, bounded in time.
#![allow(dead_code)] // each test file uses its own part

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::time::Duration;

/// Longest any one command may take before the test fails.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// Waits for `child` at most [`COMMAND_TIMEOUT`], reading its output as it comes (a command
/// whose output fills the pipe must not block), killing it and failing the test past that.
pub fn wait(child: Child, what: &str) -> Output {
    let pid = child.id();
    let (send, receive) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = send.send(child.wait_with_output());
    });
    match receive.recv_timeout(COMMAND_TIMEOUT) {
        Ok(output) => output.expect("output"),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("`{what}` took longer than {COMMAND_TIMEOUT:?}");
        }
    }
}

/// The relay built from this checkout: the `kith-relay` binary next to `kith` in the target
/// dir (`cargo test --workspace` builds it; `cargo test -p kith-cli` alone does not).
pub fn new_relay_bin() -> Option<PathBuf> {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_kith")).with_file_name("kith-relay");
    if bin.exists() {
        return Some(bin);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "{} is missing: CI runs `cargo test --workspace`",
            bin.display()
        );
    }
    eprintln!(
        "SKIPPED: {} is missing (run `cargo build -p kith-relay` or `cargo test --workspace`)",
        bin.display()
    );
    None
}

/// A `kith-relay serve` process (an old or a new one) on loopback; killed (`kill -9`) when
/// dropped.
pub struct RelayProcess {
    child: Child,
    /// `HOST:PORT` it listens on.
    pub address: String,
    /// The hex SHA-256 of its certificate.
    pub pin: String,
}

impl RelayProcess {
    pub fn start(bin: &Path, data: &Path) -> Self {
        Self::start_on(bin, data, "127.0.0.1:0")
    }

    /// On a given address: a device stores its relay's address, so a relay that is replaced
    /// by another release must come back where it was.
    pub fn start_on(bin: &Path, data: &Path, listen: &str) -> Self {
        Self::start_with(bin, data, listen, &[])
    }

    /// With more `serve` flags (`--store postgres://…`).
    pub fn start_with(bin: &Path, data: &Path, listen: &str, flags: &[&str]) -> Self {
        let mut child = Command::new(bin)
            .env("RUST_LOG", "warn")
            .args(["serve", "--listen", listen, "--data"])
            .arg(data)
            .args(flags)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn kith-relay");
        let (address, pin) = read_announcement(child.stdout.take().expect("stdout"));
        Self {
            child,
            address,
            pin,
        }
    }

    /// `--relay ADDR --relay-cert-sha256 PIN`.
    pub fn args(&self) -> [String; 4] {
        [
            "--relay".into(),
            self.address.clone(),
            "--relay-cert-sha256".into(),
            self.pin.clone(),
        ]
    }

    /// `kill -9`: no flush, no graceful close.
    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `listening on ADDR` and `certificate sha256 HEX`, as `kith-relay serve` prints them. The
/// rest of its output is drained until it exits: a relay that prints to a closed pipe fails.
fn read_announcement(stdout: ChildStdout) -> (String, String) {
    let (send, receive) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut address, mut pin) = (None, None);
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on ").nth(1) {
                address = rest.split_whitespace().next().map(str::to_owned);
            }
            if let Some(rest) = line.split("certificate sha256 ").nth(1) {
                pin = rest.split_whitespace().next().map(str::to_owned);
            }
            if let (Some(address), Some(pin)) = (&address, &pin) {
                let _ = send.send((address.clone(), pin.clone()));
            }
        }
    });
    receive
        .recv_timeout(COMMAND_TIMEOUT)
        .expect("the relay announced its address and certificate pin")
}

/// `kith --home HOME …`, with no `KITH_HOME` from the environment.
pub fn kith(home: &Path) -> Command {
    with_home(Command::new(env!("CARGO_BIN_EXE_kith")), home)
}

/// A session bus address where nothing listens.
pub const NO_SESSION_BUS: &str = "unix:path=/nonexistent/kith-test-no-session-bus";

/// `command … --home HOME`, with none of the caller's `KITH_*` settings.
pub fn with_home(mut command: Command, home: &Path) -> Command {
    command
        .env_remove("KITH_HOME")
        // How a new device keeps its key is each test's choice, not the caller's environment.
        .env_remove("KITH_KEY_STORE")
        .env_remove("KITH_PASSPHRASE")
        // No session bus, so no Secret Service: a new device's key is sealed by the user's own
        // GNOME Keyring / KWallet only in the tests that start a throwaway one.
        .env("DBUS_SESSION_BUS_ADDRESS", NO_SESSION_BUS)
        .env("RUST_LOG", "error")
        .arg("--home")
        .arg(home);
    command
}

/// Runs a command to completion (bounded) and returns its output.
pub fn run(mut command: Command) -> Output {
    let what = format!("{command:?}");
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kith");
    wait(child, &what)
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs a command that must succeed; returns its standard output.
pub fn ok(command: Command) -> String {
    let what = format!("{command:?}");
    let output = run(command);
    assert!(
        output.status.success(),
        "`{what}` failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        stdout(&output),
        stderr(&output)
    );
    stdout(&output)
}

/// The child's standard output, line by line, read on a thread of its own (so the child never
/// blocks on a full pipe).
pub fn stdout_lines(child: &mut Child) -> std::sync::mpsc::Receiver<String> {
    let out = child.stdout.take().expect("stdout");
    let (send, receive) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if send.send(line).is_err() {
                break;
            }
        }
    });
    receive
}

/// The child's first line of standard output, with the reader of the rest, read on a thread
/// of its own.
pub fn stdout_first_line(
    child: &mut Child,
) -> std::sync::mpsc::Receiver<(String, BufReader<std::process::ChildStdout>)> {
    let out = child.stdout.take().expect("stdout");
    let (send, receive) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(out);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = send.send((line, reader));
    });
    receive
}

/// A relay on loopback, served by its own runtime while the test thread runs commands.
pub struct TestRelay {
    pub runtime: tokio::runtime::Runtime,
    pub handle: Option<kith_relay::RelayHandle>,
    pub address: String,
    pub pin: String,
    pub dir: tempfile::TempDir,
}

impl TestRelay {
    pub fn start() -> Self {
        Self::start_with(|_| {})
    }

    /// A relay whose configuration `configure` changes first (a certificate of its own).
    pub fn start_with(configure: impl FnOnce(&mut kith_relay::RelayConfig)) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let dir = tempfile::tempdir().expect("relay dir");
        let mut config = kith_relay::RelayConfig::for_tests(dir.path());
        configure(&mut config);
        let handle = runtime
            .block_on(kith_relay::Relay::start(config))
            .expect("relay starts");
        let address = handle.local_addr().to_string();
        let pin = hex::encode(handle.cert_sha256());
        Self {
            runtime,
            handle: Some(handle),
            address,
            pin,
            dir,
        }
    }

    /// An administration request to the relay through its control socket, as
    /// `kith-relay admin` sends it.
    pub fn admin(&self, line: &str) -> serde_json::Value {
        self.runtime
            .block_on(kith_relay::control::admin(self.dir.path(), line))
            .unwrap_or_else(|e| panic!("admin {line}: {e}"))
    }

    /// `--relay ADDR --relay-cert-sha256 PIN`.
    pub fn args(&self) -> [String; 4] {
        [
            "--relay".into(),
            self.address.clone(),
            "--relay-cert-sha256".into(),
            self.pin.clone(),
        ]
    }
}

impl Drop for TestRelay {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            let _ = self.runtime.block_on(async {
                tokio::time::timeout(Duration::from_secs(20), handle.shutdown()).await
            });
        }
    }
}
