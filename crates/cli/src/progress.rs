//! Progress bars and spinners on standard error, only when it is a terminal: scripts, pipes
//! and tests see nothing of them.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// Imports smaller than this finish before a bar would be worth drawing.
const MIN_IMPORT_FOR_BAR: usize = 500;

/// Whether progress may be drawn (standard error is a terminal).
pub fn enabled() -> bool {
    std::io::stderr().is_terminal()
}

/// A bar for an import of `total` contacts, or a hidden one.
pub fn import_bar(total: usize) -> ProgressBar {
    if !enabled() || total < MIN_IMPORT_FOR_BAR {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total as u64);
    if let Ok(style) =
        ProgressStyle::with_template("{prefix} [{bar:40}] {pos}/{len} contacts ({eta} left)")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix("importing");
    bar
}

/// A running count of imported contacts, for an export read a row at a time (its length is
/// not known before the end), or a hidden one.
pub fn import_counter() -> ProgressBar {
    if !enabled() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{prefix} {pos} contacts ({elapsed})") {
        bar.set_style(style);
    }
    bar.set_prefix("importing");
    bar
}

/// A spinner with `message` while a network operation runs, or a hidden one.
pub fn spinner(message: &'static str) -> ProgressBar {
    if !enabled() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} {elapsed}") {
        bar.set_style(style);
    }
    bar.set_message(message);
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}
