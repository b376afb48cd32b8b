//! Benchmarks of the calendar, mail and Twitter importers (issue 12's targets; figures in
//! `BENCHMARKS.md`).
//!
//! ```text
//! cargo run --release -p kith-client --no-default-features --example import_sources -- gen-mbox /tmp/bench.mbox
//! cargo run --release -p kith-client --no-default-features --example import_sources -- mail /tmp/bench.mbox
//! cargo run --release -p kith-client --no-default-features --example import_sources -- calendar
//! cargo run --release -p kith-client --no-default-features --example import_sources -- twitter
//! ```
//!
//! `gen-mbox` writes 100,000 messages of 10 KiB (1 GiB) in a separate process, so the import's
//! peak memory (`VmHWM`, printed after it) is the importer's alone. `calendar` and `twitter`
//! generate their input in memory first and time only the import.
#![forbid(unsafe_code)]

use std::io::{BufWriter, Write as _};
use std::path::Path;
use std::time::Instant;

use kith_client::import::{ImportOptions, calendar, mail, testing, twitter};

/// 2026-12-01T00:00:00Z: the fixed "now" of the calendar benchmark.
const NOW: i64 = 1_796_083_200;

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse().ok())
        })
        .unwrap_or(0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let opts = ImportOptions::default();
    match args.get(1).map(String::as_str) {
        Some("gen-mbox") => {
            let path = args.get(2).ok_or("gen-mbox PATH")?;
            let mut out = BufWriter::new(std::fs::File::create(path)?);
            testing::write_mbox(&mut out, 100_000, 10 * 1024)?;
            out.flush()?;
            println!("wrote {} bytes", std::fs::metadata(path)?.len());
        }
        Some("mail") => {
            let path = args.get(2).ok_or("mail PATH")?;
            let started = Instant::now();
            let report = mail::import(Path::new(path), &["me@example.com".to_owned()], &opts)?;
            let elapsed = started.elapsed();
            println!(
                "mail: {} bytes, {} contacts in {:.3} s, peak RSS {} MiB",
                std::fs::metadata(path)?.len(),
                report.contacts.len(),
                elapsed.as_secs_f64(),
                peak_rss_kib() / 1024
            );
        }
        Some("calendar") => {
            let ics = testing::generate_calendar(20_000, NOW);
            let started = Instant::now();
            let report = calendar::import_bytes(ics.as_bytes(), &[], NOW, &opts)?;
            let elapsed = started.elapsed();
            println!(
                "calendar: 20,000 events ({} bytes), {} contacts in {:.3} s, peak RSS {} MiB",
                ics.len(),
                report.contacts.len(),
                elapsed.as_secs_f64(),
                peak_rss_kib() / 1024
            );
        }
        Some("twitter") => {
            let members = testing::generate_twitter_members(200_000);
            let mut bytes = Vec::new();
            {
                let mut zip = zip::ZipWriter::new(std::io::Cursor::new(&mut bytes));
                for (name, content) in &members {
                    zip.start_file(name.as_str(), zip::write::SimpleFileOptions::default())?;
                    zip.write_all(content.as_bytes())?;
                }
                zip.finish()?;
            }
            let started = Instant::now();
            let report = twitter::import_bytes(&bytes, &opts)?;
            let elapsed = started.elapsed();
            println!(
                "twitter: 200,000 follows each way ({} bytes zipped), {} accounts in {:.3} s",
                bytes.len(),
                report.contacts.len(),
                elapsed.as_secs_f64()
            );
        }
        _ => {
            return Err(
                "usage: import_sources gen-mbox PATH | mail PATH | calendar | twitter".into(),
            );
        }
    }
    Ok(())
}
