//! What a phone's notification extension does when a wake-up arrives: open the device's store,
//! sync once, exit. Prints how long opening the store took, how long the sync took, what it
//! merged, and the process's peak RSS as the OS counts it (`VmHWM`, Linux), so
//! `scripts/bench-background.sh` can check the background budget (issue 16 item 5: open under
//! 100 ms, peak RSS under 24 MB).
//!
//! ```text
//! cargo run --release -p kith-client --example background_sync -- HOME
//! ```
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Instant;

use kith_client::Device;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Some(home) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: background_sync HOME (a device set up with the kith CLI)");
        std::process::exit(2);
    };
    // One thread, as an extension with a small budget would run it.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let rss_start = peak_rss_kib();
    let opened = Instant::now();
    let device = Device::open(&home)?;
    let open_ms = opened.elapsed().as_secs_f64() * 1e3;
    let rss_open = peak_rss_kib();
    let synced = Instant::now();
    let report = runtime.block_on(device.sync())?;
    let sync_ms = synced.elapsed().as_secs_f64() * 1e3;
    runtime.block_on(device.close());
    println!(
        "open_ms={open_ms:.1} sync_ms={sync_ms:.1} pulled={} changed={} \
         peak_rss_kib_at_start={} peak_rss_kib_after_open={} peak_rss_kib={}",
        report.pulled,
        report.changed.len(),
        rss_start.unwrap_or(0),
        rss_open.unwrap_or(0),
        peak_rss_kib().unwrap_or(0)
    );
    Ok(())
}

/// The process's peak resident set (`VmHWM` in `/proc/self/status`), in KiB; `None` where
/// the OS does not say.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}
