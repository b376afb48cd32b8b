//! What the CLI's test files share: running a `kith` (or `kith-relay`) process, bounded in time.

use std::process::{Child, Command, Output};
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
