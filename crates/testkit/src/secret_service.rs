//! A throwaway Linux Secret Service for the keychain tests: a private D-Bus session bus
//! (`dbus-run-session`) with GNOME Keyring's secrets component, its login collection (the
//! default one) created and unlocked with a password given on stdin, all of its files under a
//! directory of the test. Processes given [`SecretService::address`] as
//! `DBUS_SESSION_BUS_ADDRESS` reach it; nothing of the user's own session is touched.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};

/// Run under `dbus-run-session`: unlocks (creating) the login keyring, prints the bus address,
/// then lives until its stdin closes, which ends the session (the bus, then the daemon, which
/// exits when it loses the bus).
const SCRIPT: &str = r#"printf %s "$1" | gnome-keyring-daemon --unlock --components=secrets >/dev/null || exit 1
echo "$DBUS_SESSION_BUS_ADDRESS"
exec cat >/dev/null"#;

/// A running Secret Service on its own session bus; ended when dropped.
#[derive(Debug)]
pub struct SecretService {
    child: Child,
    stdin: Option<ChildStdin>,
    address: String,
}

/// Whether `program` is on the `PATH`.
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

impl SecretService {
    /// Starts one whose files live under `dir`. `None`, saying so on stderr, where
    /// `dbus-run-session` or `gnome-keyring-daemon` is missing (Debian: `dbus-daemon`,
    /// `gnome-keyring`); under `CI=true` that is a failure instead, as CI installs them
    /// (`.ci/run`). `test` names the test in the message.
    pub fn start(dir: &Path, test: &str) -> Option<Self> {
        let missing: Vec<&str> = ["dbus-run-session", "gnome-keyring-daemon"]
            .into_iter()
            .filter(|program| !on_path(program))
            .collect();
        if !missing.is_empty() {
            let message = format!(
                "{test}: {} not found (Debian: apt-get install gnome-keyring dbus-daemon)",
                missing.join(", ")
            );
            if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                panic!("{message}; CI=true requires the Secret Service tests to run");
            }
            eprintln!("SKIPPED {message}");
            return None;
        }
        let run = dir.join("run");
        std::fs::create_dir_all(&run).expect("the daemon's runtime dir");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700))
                .expect("chmod 0700 the daemon's runtime dir");
        }
        let mut child = Command::new("dbus-run-session")
            .args(["--", "sh", "-c", SCRIPT, "sh", "kith-test-keyring"])
            .env("HOME", dir)
            .env("XDG_DATA_HOME", dir.join("data"))
            .env("XDG_CONFIG_HOME", dir.join("config"))
            .env("XDG_CACHE_HOME", dir.join("cache"))
            .env("XDG_RUNTIME_DIR", &run)
            // No display: nothing may show a prompt.
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY")
            .env_remove("DBUS_SESSION_BUS_ADDRESS")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn dbus-run-session");
        let stdin = child.stdin.take();
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read the session bus address");
        let address = line.trim().to_owned();
        assert!(
            !address.is_empty(),
            "{test}: the Secret Service did not start (gnome-keyring-daemon --unlock failed)"
        );
        Some(Self {
            child,
            stdin,
            address,
        })
    }

    /// The session bus address (`DBUS_SESSION_BUS_ADDRESS`) on which it answers.
    pub fn address(&self) -> &str {
        &self.address
    }
}

impl Drop for SecretService {
    fn drop(&mut self) {
        // Closing stdin ends the script, and with it the session.
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.flush();
        }
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
