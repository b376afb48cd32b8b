//! The built `kith-relay` binary as a child process: started on loopback port 0, its address
//! and certificate pin read from its stdout, its stderr kept (bounded) for diagnosis, killed
//! with `SIGKILL` on demand and always on drop.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use kith_relay::client::RelayClient;

/// How long a relay may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How much of the relay's stderr is kept (the tail).
const STDERR_KEPT: usize = 64 * 1024;

pub struct RelayProcess {
    child: Child,
    pub addr: SocketAddr,
    /// `certificate sha256`: the SHA-256 of the whole certificate.
    pub pin: [u8; 32],
    /// `key sha256`: the SHA-256 of the certificate's public key.
    pub key_pin: [u8; 32],
    stderr: Arc<Mutex<String>>,
}

impl RelayProcess {
    /// Starts the relay on `data` with extra `serve` flags; panics if it does not come up.
    pub fn spawn(data: &Path, flags: &[&str]) -> Self {
        Self::try_spawn(data, flags).unwrap_or_else(|why| panic!("kith-relay did not start: {why}"))
    }

    /// Starts the relay; `Err` with its stderr when it exits (or stalls) before listening.
    pub fn try_spawn(data: &Path, flags: &[&str]) -> Result<Self, String> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kith-relay"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .args(flags)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn: {e}"))?;
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().expect("stderr");
        let kept = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut text = kept.lock().unwrap();
                text.push_str(&String::from_utf8_lossy(&buf[..n]));
                if text.len() > STDERR_KEPT {
                    let mut cut = text.len() - STDERR_KEPT;
                    while !text.is_char_boundary(cut) {
                        cut += 1;
                    }
                    text.drain(..cut);
                }
            }
        });
        // Read stdout on a thread so that a relay that never prints cannot hang the test.
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                // After the banner nobody listens; keep draining so the relay never blocks.
                let _ = tx.send(line);
            }
        });
        let mut addr = None;
        let mut pin = None;
        let mut key_pin = None;
        while addr.is_none() || pin.is_none() || key_pin.is_none() {
            let line = match rx.recv_timeout(START_TIMEOUT) {
                Ok(line) => line,
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    // Give the stderr thread a moment to collect the last words.
                    std::thread::sleep(Duration::from_millis(50));
                    let text = stderr.lock().unwrap().clone();
                    return Err(format!("no address printed; stderr:\n{text}"));
                }
            };
            if let Some(rest) = line.strip_prefix("listening on ") {
                addr = Some(rest.parse().map_err(|e| format!("address {rest}: {e}"))?);
            } else if let Some(rest) = line.strip_prefix("certificate sha256 ") {
                let mut bytes = [0u8; 32];
                hex::decode_to_slice(rest, &mut bytes).map_err(|e| format!("pin: {e}"))?;
                pin = Some(bytes);
            } else if let Some(rest) = line.strip_prefix("key sha256 ") {
                let mut bytes = [0u8; 32];
                hex::decode_to_slice(rest, &mut bytes).map_err(|e| format!("key pin: {e}"))?;
                key_pin = Some(bytes);
            }
        }
        Ok(Self {
            child,
            addr: addr.unwrap_or_else(|| unreachable!()),
            pin: pin.unwrap_or_else(|| unreachable!()),
            key_pin: key_pin.unwrap_or_else(|| unreachable!()),
            stderr,
        })
    }

    pub async fn connect(&self) -> RelayClient {
        RelayClient::connect(self.addr, self.pin).await.unwrap()
    }

    /// A new connection, authenticated as `account`'s device `device`.
    pub async fn connect_as(&self, account: &super::TestAccount, device: usize) -> RelayClient {
        account.authenticated(self.connect().await, device).await
    }

    /// `kill -9`, then reaps the process.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `SIGTERM` (graceful shutdown), then waits up to `within` for the exit; `None` if it did
    /// not exit in time (it is then killed).
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill9();
        None
    }

    /// Sends a signal (`HUP`, `TERM` …) with kill(1).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name}");
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The tail of what the relay wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}
