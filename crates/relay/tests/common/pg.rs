//! A throwaway PostgreSQL cluster for tests: `initdb` into a temporary directory, `postgres` on
//! a free loopback port, stopped and removed when dropped.
//!
//! The server binaries are looked for in `KITH_PG_BIN`, then Debian's
//! `/usr/lib/postgresql/<version>/bin` (newest first, what `dpkg -S bin/initdb` shows), then
//! `PATH`. When there are none, [`PgCluster::start`] says so loudly on stderr and returns
//! `None` (the test counts as skipped) — except with `CI=true`, where it panics: CI must run
//! the PostgreSQL tests (`.ci/run` installs Debian's `postgresql` package).
//! Used by kith-relay's tests and, through `#[path]`, by the end-to-end tests.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long the server may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

pub struct PgCluster {
    child: Option<Child>,
    pub port: u16,
    /// Holds the data directory and the socket directory; removed on drop.
    dir: tempfile::TempDir,
    bin: PathBuf,
    databases: AtomicU32,
}

/// The directory holding `initdb` and `postgres`, if any.
pub fn find_bin() -> Option<PathBuf> {
    let has = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(dir) = std::env::var_os("KITH_PG_BIN").map(PathBuf::from)
        && has(&dir)
    {
        return Some(dir);
    }
    let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, dir)| has(dir))
        .collect();
    debian.sort();
    if let Some((_, dir)) = debian.pop() {
        return Some(dir);
    }
    std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .find(|dir| has(dir))
}

/// The account the server runs as: `initdb` and `postgres` refuse root, so a root test run
/// drops to `KITH_PG_USER` (default `postgres`, which Debian's package creates) via `setpriv`.
fn run_as() -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return None;
    }
    Some(std::env::var("KITH_PG_USER").unwrap_or_else(|_| "postgres".into()))
}

/// `program` as a command, run as [`run_as`]'s user when the tests run as root.
fn server_command(program: &Path) -> Command {
    match run_as() {
        Some(user) => {
            let mut command = Command::new("setpriv");
            command
                .arg(format!("--reuid={user}"))
                .arg(format!("--regid={user}"))
                .arg("--init-groups")
                .arg("--")
                .arg(program);
            command
        }
        None => Command::new(program),
    }
}

/// Runs `f` on a thread of its own: the synchronous `postgres` client starts a runtime of its
/// own, which it may not do on a thread driving the test's runtime.
fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| match scope.spawn(f).join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl PgCluster {
    /// Starts a cluster, or `None` (after saying so loudly) when PostgreSQL is not installed;
    /// panics under `CI=true` instead.
    pub fn start() -> Option<Self> {
        off_runtime(Self::start_here)
    }

    fn start_here() -> Option<Self> {
        let Some(bin) = find_bin() else {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            let message = "PostgreSQL server binaries (initdb, postgres) not found: install \
                 Debian's `postgresql` package or set KITH_PG_BIN";
            if ci {
                panic!("{message}; CI=true requires the PostgreSQL tests to run");
            }
            eprintln!("\n!!!!!!!! SKIPPED: {message} !!!!!!!!\n");
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("kith-pg-")
            .tempdir()
            .expect("temp dir");
        let data = dir.path().join("data");
        if let Some(user) = run_as() {
            let chown = Command::new("chown")
                .arg(&user)
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(chown.success(), "chown {user} {}", dir.path().display());
        }
        let out = server_command(&bin.join("initdb"))
            .args(["-A", "trust", "-U", "kith", "-E", "UTF8", "--no-sync", "-D"])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The port may be taken between probing and binding: try a few.
        for _ in 0..5 {
            let port = free_port();
            let mut child = server_command(&bin.join("postgres"))
                .arg("-D")
                .arg(&data)
                .args(["-p", &port.to_string()])
                .args(["-c", "listen_addresses=127.0.0.1"])
                .arg("-c")
                .arg(format!("unix_socket_directories={}", dir.path().display()))
                .args(["-c", "max_connections=200", "-c", "fsync=on"])
                .args(["-c", "synchronous_commit=on"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start postgres");
            let started = Instant::now();
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // exited: the port was taken, try another
                }
                if postgres::Client::connect(
                    &format!("postgres://kith@127.0.0.1:{port}/postgres"),
                    postgres::NoTls,
                )
                .is_ok()
                {
                    return Some(Self {
                        child: Some(child),
                        port,
                        dir,
                        bin,
                        databases: AtomicU32::new(0),
                    });
                }
                if started.elapsed() > READY_TIMEOUT {
                    let _ = child.kill();
                    panic!("postgres did not accept connections within {READY_TIMEOUT:?}");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("postgres could not bind a free port");
    }

    /// One cluster for the whole test process, started on first use. A static is never
    /// dropped, so a watchdog shell stops the server and removes its directory once the test
    /// process is gone (whichever tests ran, however it ended).
    pub fn shared() -> Option<&'static PgCluster> {
        static SHARED: std::sync::OnceLock<Option<PgCluster>> = std::sync::OnceLock::new();
        SHARED
            .get_or_init(|| {
                let cluster = Self::start()?;
                let pid = std::fs::read_to_string(cluster.dir.path().join("data/postmaster.pid"))
                    .ok()
                    .and_then(|text| text.lines().next().map(str::to_owned))
                    .expect("postmaster.pid");
                // The server removes postmaster.pid when it has stopped (`kill -0` would
                // still find it as a zombie of the vanished test process).
                let script = "while kill -0 \"$1\" 2>/dev/null; do sleep 1; done; \
                     kill -QUIT \"$2\" 2>/dev/null; n=0; \
                     while [ -e \"$3/data/postmaster.pid\" ] && [ $n -lt 300 ]; do \
                     sleep 0.1; n=$((n+1)); done; rm -rf \"$3\"";
                // Outlives this process on purpose: never waited for.
                #[allow(clippy::zombie_processes)]
                Command::new("sh")
                    .args(["-c", script, "watchdog"])
                    .arg(std::process::id().to_string())
                    .arg(pid)
                    .arg(cluster.dir.path())
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start the watchdog");
                Some(cluster)
            })
            .as_ref()
    }

    /// The connection string of database `name`.
    pub fn url_of(&self, name: &str) -> String {
        format!("postgres://kith@127.0.0.1:{}/{name}", self.port)
    }

    /// A new, empty database; its connection string.
    pub fn database(&self) -> String {
        off_runtime(|| self.create_database())
    }

    fn create_database(&self) -> String {
        let name = format!("kith_{}", self.databases.fetch_add(1, Ordering::SeqCst));
        let mut client =
            postgres::Client::connect(&self.url_of("postgres"), postgres::NoTls).expect("connect");
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create database");
        self.url_of(&name)
    }

    /// The directory of the server binaries (`pg_dump`, `psql`).
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// Stops the server at once (what a crash of the database host looks like to the relay).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // Immediate shutdown (SIGQUIT), no checkpoint: the data directory is removed anyway.
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-QUIT", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
