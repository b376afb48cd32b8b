//! A small app on `kith-client`: opens the device set up in a home directory (by `kith init`,
//! `kith device request` or `kith recover`) and prints every contact another device changes,
//! as it happens, until Ctrl-C.
//!
//! ```text
//! cargo run -p kith-client --example watch -- ~/.local/share/kith
//! ```
#![forbid(unsafe_code)]

use std::path::PathBuf;

use kith_client::{Device, SyncReport};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Some(home) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: watch HOME (the directory of a device set up with the kith CLI)");
        std::process::exit(2);
    };
    let device = Device::open(&home)?;
    println!(
        "watching account {} as device {} ({} contacts); Ctrl-C to stop",
        device.account_id(),
        device.device_id(),
        device.contact_count()?
    );
    let (changes, mut reports) = tokio::sync::mpsc::channel::<SyncReport>(16);
    let watcher = {
        let device = device.clone();
        tokio::spawn(async move { device.watch(changes).await })
    };
    loop {
        tokio::select! {
            report = reports.recv() => {
                let Some(report) = report else { break };
                for id in &report.changed {
                    match device.contact(id) {
                        Ok(contact) => println!(
                            "changed: {} {}",
                            id.to_hex(),
                            contact.name().unwrap_or("(no name)")
                        ),
                        // Deleted by the other device.
                        Err(_) => println!("deleted: {}", id.to_hex()),
                    }
                }
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    // The watch ends by itself only on a permanent error (this device was revoked …).
    let outcome = if watcher.is_finished() {
        watcher.await?
    } else {
        watcher.abort();
        Ok(())
    };
    device.close().await;
    Ok(outcome?)
}
