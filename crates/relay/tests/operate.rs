//! Running the `kith-relay` binary as an operator does (issue 15 items 2 and 3): settings from
//! the environment (`KITH_RELAY_<KEY>`), JSON log lines, the metrics listener with `/healthz`,
//! `kith-relay health` against a live relay, a wrong pin and a dead address, and
//! `kith-relay config check`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn kith_relay() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kith-relay"));
    // Nothing of the test runner's environment may configure the relay under test.
    for (key, _) in std::env::vars() {
        if key.starts_with("KITH_RELAY_") {
            command.env_remove(key);
        }
    }
    command
}

/// A `kith-relay serve` configured only through the environment.
struct Served {
    child: Child,
    addr: SocketAddr,
    pin: String,
    metrics: SocketAddr,
}

impl Served {
    fn start(data: &Path, log_format: &str) -> Self {
        let mut child = kith_relay()
            .args(["serve", "--log-format", log_format])
            .env("KITH_RELAY_LISTEN", "127.0.0.1:0")
            .env("KITH_RELAY_DATA", data)
            .env("KITH_RELAY_METRICS_LISTEN", "127.0.0.1:0")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kith-relay");
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let (mut addr, mut pin, mut metrics) = (None, None, None);
        while metrics.is_none() {
            let line = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("the relay printed its addresses (metrics listener from the environment)");
            if let Some(rest) = line.strip_prefix("listening on ") {
                addr = Some(rest.parse().unwrap());
            } else if let Some(rest) = line.strip_prefix("certificate sha256 ") {
                pin = Some(rest.to_owned());
            } else if let Some(rest) = line.strip_prefix("metrics on http://") {
                metrics = Some(rest.trim_end_matches("/metrics").parse().unwrap());
            }
        }
        Self {
            child,
            addr: addr.unwrap(),
            pin: pin.unwrap(),
            metrics: metrics.unwrap(),
        }
    }

    /// SIGTERM, then everything it wrote to stderr.
    fn stop(mut self) -> String {
        Command::new("kill")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        let mut log = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut log)
            .unwrap();
        assert!(self.child.wait().unwrap().success(), "{log}");
        log
    }
}

fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: relay\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

fn health(addr: &str, pin: &str) -> Output {
    kith_relay()
        .args(["health", "--relay", addr, "--cert-sha256", pin])
        .args(["--timeout-secs", "5"])
        .output()
        .unwrap()
}

#[test]
fn a_relay_configured_from_the_environment_logs_json_and_answers_health_checks() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Served::start(&dir.path().join("data"), "json");
    assert!(
        dir.path().join("data").join("db").is_dir(),
        "KITH_RELAY_DATA chose the data directory"
    );

    let (status, body) = http_get(relay.metrics, "/healthz");
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", "ok\n")
    );
    let (status, _) = http_get(relay.metrics, "/nothing");
    assert_eq!(status, "HTTP/1.1 404 Not Found");

    let ok = health(&relay.addr.to_string(), &relay.pin);
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(out.starts_with("ok: "), "{out}");
    // `health` sent a real request: the relay counted the challenge it answered.
    let (status, metrics) = http_get(relay.metrics, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        metrics.contains("kith_relay_requests_total{kind=\"get_challenge\",result=\"OK\"} 1"),
        "{metrics}"
    );

    // A wrong pin: the handshake fails, the check fails.
    let wrong = health(&relay.addr.to_string(), &"00".repeat(32));
    assert_eq!(wrong.status.code(), Some(1));
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(err.starts_with("error: "), "{err}");
    let garbled = health(&relay.addr.to_string(), "not-hex");
    assert_eq!(garbled.status.code(), Some(1));

    let addr = relay.addr;
    let log = relay.stop();
    // Every log line is one JSON object, with the fields a log collector indexes.
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines.len() >= 2, "{log}");
    for line in &lines {
        let object: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(object["level"].is_string(), "{line}");
        assert!(object["timestamp"].is_string(), "{line}");
        assert!(object["fields"]["message"].is_string(), "{line}");
    }
    assert!(log.contains("\"relay started\""), "{log}");

    // Nothing answers any more: the check fails (within its timeout).
    let dead = health(&addr.to_string(), &"00".repeat(32));
    assert_eq!(dead.status.code(), Some(1));
}

fn check(file: &Path, env: &[(&str, &str)]) -> Output {
    let mut command = kith_relay();
    command.args(["config", "check"]).arg(file);
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().unwrap()
}

#[test]
fn config_check_reads_the_file_and_the_environment_as_serve_does() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("relay.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:4433\"\nmetrics_listen = \"127.0.0.1:9464\"\nmax_frame_bytes = 4194304\n",
    )
    .unwrap();
    let valid = check(&file, &[]);
    let out = String::from_utf8_lossy(&valid.stdout);
    assert!(
        valid.status.success(),
        "{}",
        String::from_utf8_lossy(&valid.stderr)
    );
    assert!(out.contains(": valid"), "{out}");
    assert!(out.contains("listen 127.0.0.1:4433"), "{out}");
    assert!(out.contains("metrics_listen 127.0.0.1:9464"), "{out}");
    assert!(out.contains("registration Open"), "{out}");

    // The environment overrides the file (and a public address closes registration).
    let public = check(
        &file,
        &[
            ("KITH_RELAY_LISTEN", "0.0.0.0:4433"),
            ("KITH_RELAY_MAX_ENVELOPE_BYTES", "65536"),
        ],
    );
    let out = String::from_utf8_lossy(&public.stdout);
    assert!(
        public.status.success(),
        "{}",
        String::from_utf8_lossy(&public.stderr)
    );
    assert!(out.contains("listen 0.0.0.0:4433"), "{out}");
    assert!(out.contains("registration Token"), "{out}");
    assert!(out.contains("max_envelope_bytes: 65536"), "{out}");

    // A value from the environment that does not parse, or settings that contradict each
    // other: exit 1, one line saying what.
    let bad = check(&file, &[("KITH_RELAY_MAX_FRAME_BYTES", "lots")]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "clap's usage error: {err}");
    assert!(
        err.contains("max-frame-bytes") && err.contains("lots"),
        "{err}"
    );
    let contradictory = check(&file, &[("KITH_RELAY_MAX_ENVELOPE_BYTES", "8388608")]);
    let err = String::from_utf8_lossy(&contradictory.stderr);
    assert_eq!(contradictory.status.code(), Some(1), "{err}");
    assert!(err.contains("max_envelope_bytes"), "{err}");

    // A key the relay does not know (a typo) is an error, not silently ignored.
    std::fs::write(&file, "listen = \"127.0.0.1:4433\"\nmax_frame_byte = 1\n").unwrap();
    let typo = check(&file, &[]);
    let err = String::from_utf8_lossy(&typo.stderr);
    assert_eq!(typo.status.code(), Some(1), "{err}");
    assert!(err.contains("max_frame_byte"), "{err}");
    assert!(err.starts_with("error: invalid config file"), "{err}");

    let missing = check(&dir.path().join("absent.toml"), &[]);
    assert_eq!(missing.status.code(), Some(1));
}
