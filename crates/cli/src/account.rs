//! `kith account info|delete`, `kith export json`, `kith completions`, and the `--json`
//! shapes of `sync`, `import` (documented in `crates/cli/README.md`).

use std::io::{IsTerminal, Write as _};
use std::path::Path;

use anyhow::{Context, Result, bail};
use kith_client::account::day_text;
use kith_client::import::{DroppedField, SkippedRow};
use kith_client::{AccountInfo, ImportSummary, SyncReport};
use serde::Serialize;

use crate::commands::{open, usage, write_private};
use crate::output::{self, ConflictJson, ContactJson, DeviceJson, count};

/// The `format` value of `kith export json`, and its version.
pub const EXPORT_FORMAT: &str = "kith-export";
/// Bumped when a key changes meaning or goes; new keys may appear within a version.
pub const EXPORT_VERSION: u32 = 1;

/// `kith sync --json`.
#[derive(Debug, Serialize)]
pub struct SyncJson {
    /// Envelopes pushed.
    pub pushed: usize,
    /// Envelopes pulled.
    pub pulled: usize,
    /// Full hex ids of the contacts that changed.
    pub changed: Vec<String>,
    /// Contacts on this device after the sync.
    pub contacts: u64,
    /// What healing a relay that was behind did, or `null`.
    pub healed: Option<String>,
    /// Streams the sync could not follow to their end (also said on stderr).
    pub warnings: Vec<String>,
}

impl SyncJson {
    /// The shape of a report.
    pub fn new(report: &SyncReport, contacts: u64) -> Self {
        Self {
            pushed: report.pushed,
            pulled: report.pulled,
            changed: report.changed.iter().map(|id| id.to_hex()).collect(),
            contacts,
            healed: report.healed.as_ref().map(ToString::to_string),
            warnings: report.warnings(),
        }
    }
}

/// `kith import --json`.
#[derive(Debug, Serialize)]
pub struct ImportJson {
    /// The file imported.
    pub file: String,
    /// Contacts found in it (for a LinkedIn export, which is streamed: rows).
    pub found: usize,
    /// What the import did: `added`, `updated`, `unchanged`, `skipped`, `merged`, `left_out`.
    #[serde(flatten)]
    pub summary: ImportSummary,
    /// Rows left out: `{line, reason}`.
    pub skipped_rows: Vec<serde_json::Value>,
    /// Fields left out of imported rows: `{line, field, reason}`.
    pub dropped_fields: Vec<serde_json::Value>,
    /// Further problems counted but not listed.
    pub unlisted_problems: usize,
}

impl ImportJson {
    /// The shape of an import.
    pub fn new(
        file: &Path,
        found: usize,
        summary: &ImportSummary,
        problems: &(Vec<SkippedRow>, Vec<DroppedField>, usize),
    ) -> Self {
        Self {
            file: file.display().to_string(),
            found,
            summary: summary.clone(),
            skipped_rows: problems
                .0
                .iter()
                .map(|r| serde_json::json!({ "line": r.line, "reason": r.reason }))
                .collect(),
            dropped_fields: problems
                .1
                .iter()
                .map(
                    |f| serde_json::json!({ "line": f.line, "field": f.field, "reason": f.reason }),
                )
                .collect(),
            unlisted_problems: problems.2,
        }
    }
}

/// `kith account info --json`.
#[derive(Debug, Serialize)]
pub struct AccountInfoJson {
    /// Full hex account id (what the relay's operator names it by).
    pub account_id: String,
    /// This device's full hex id.
    pub device_id: String,
    /// The account's devices, as `kith device list --json` prints them.
    pub devices: Vec<DeviceJson>,
    /// What the relay stores of the account, and its quotas there.
    pub relay: RelayAccountJson,
}

kith_client::relay_account_record! {
    /// The relay's part of `kith account info --json`.
    #[derive(Debug, Serialize)]
    pub struct RelayAccountJson {
        /// The relay's address.
        pub address: String,
    } usage {
        /// The last day a device was active, as the relay records it (`YYYY-MM-DD`, UTC).
        pub last_active_day: Option<String>,
        /// Each device stream: `{device_id, first_seq, last_seq, envelopes, bytes}`.
        pub streams: Option<Vec<serde_json::Value>>,
    }
}

fn relay_json(address: String, info: &AccountInfo) -> RelayAccountJson {
    let detail = info.detail.as_ref();
    let streams = detail.map(|d| {
        d.streams
            .iter()
            .map(|s| {
                serde_json::json!({
                    "device_id": s.device.to_hex(),
                    "first_seq": s.first_seq,
                    "last_seq": s.last_seq,
                    "envelopes": s.envelopes,
                    "bytes": s.bytes,
                })
            })
            .collect()
    });
    let last_active_day = detail.and_then(|d| d.last_active_day).map(day_text);
    RelayAccountJson::with_usage(info, address, last_active_day, streams)
}

/// `kith account info`.
pub async fn info(home: &Path, json: bool) -> Result<()> {
    let device = open(home)?;
    let info = device.account_info().await;
    device.close().await;
    let info = info.with_context(|| {
        format!(
            "cannot ask the relay at {} about the account",
            device.relay().address
        )
    })?;
    let devices = device.devices()?;
    let relay = relay_json(device.relay().address.clone(), &info);
    if json {
        return output::print_json(&AccountInfoJson {
            account_id: device.account_id().to_hex(),
            device_id: device.device_id().to_hex(),
            devices: devices.iter().map(DeviceJson::from).collect(),
            relay,
        });
    }
    let own = |set: Option<bool>| {
        if set == Some(true) {
            " (set for this account)"
        } else {
            ""
        }
    };
    outln!("Account {}", device.account_id());
    outln!("This device {}", device.device_id());
    outln!("Relay {}", relay.address);
    outln!(
        "  stored     {} of {}{} ({})",
        output::bytes(relay.bytes_used),
        output::bytes(relay.bytes_quota),
        own(relay.bytes_quota_set),
        count(relay.envelopes, "envelope")
    );
    outln!(
        "  devices    {} of {}{}",
        relay.devices,
        relay.devices_max,
        own(relay.devices_max_set)
    );
    match (&relay.last_active_day, info.detail.is_some()) {
        (Some(day), _) => outln!("  last active {day} (the relay keeps the day only)"),
        (None, true) => {}
        (None, false) => outln!(
            "  (the relay runs Kith 0.1.0: per-device figures and the day of last activity need a newer relay)"
        ),
    }
    out!("{}", output::devices_table(&devices));
    Ok(())
}

/// The whole of `kith export json`.
#[derive(Debug, Serialize)]
struct ExportJson {
    /// [`EXPORT_FORMAT`].
    format: &'static str,
    /// [`EXPORT_VERSION`].
    version: u32,
    /// When it was written (ms since the Unix epoch).
    exported_at_ms: u64,
    /// Full hex account id.
    account_id: String,
    /// Full hex id of the device that wrote it.
    device_id: String,
    /// Every contact, with its note, sources and history.
    contacts: Vec<ContactJson>,
    /// Kept conflicts: the concurrent values that lost.
    conflicts: Vec<ConflictJson>,
}

/// `kith export json PATH`.
pub fn export_json(home: &Path, path: &Path) -> Result<()> {
    let device = open(home)?;
    let contacts = device.contacts()?;
    let export = ExportJson {
        format: EXPORT_FORMAT,
        version: EXPORT_VERSION,
        exported_at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        account_id: device.account_id().to_hex(),
        device_id: device.device_id().to_hex(),
        contacts: contacts.iter().map(ContactJson::from).collect(),
        conflicts: device.conflicts()?.iter().map(ConflictJson::from).collect(),
    };
    let mut text = serde_json::to_string_pretty(&export)?;
    text.push('\n');
    if path == Path::new("-") {
        out!("{text}");
        std::io::stdout().flush()?;
        eprintln!("Exported {}.", count(contacts.len() as u64, "contact"));
        return Ok(());
    }
    write_private(path, text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    outln!(
        "Exported {} to {}.",
        count(contacts.len() as u64, "contact"),
        path.display()
    );
    Ok(())
}

/// `kith account delete`.
pub async fn delete(home: &Path, yes: bool, export: Option<&Path>) -> Result<()> {
    if let Some(path) = export {
        export_json(home, path).context("the export failed, so nothing was deleted")?;
    }
    delete_confirmed(home, yes, export.is_some()).await
}

async fn delete_confirmed(home: &Path, yes: bool, exported: bool) -> Result<()> {
    let device = open(home)?;
    let account = device.account_id();
    if !yes {
        if !(std::io::stdin().is_terminal() && std::io::stderr().is_terminal()) {
            return Err(usage(
                "`kith account delete` deletes the account on the relay and on every device: \
                 pass --yes to confirm when not on a terminal",
            ));
        }
        eprintln!(
            "This deletes account {account} on the relay at {}: every device of it loses it, and \
             this device's store and key are wiped. It cannot be undone.",
            device.relay().address
        );
        if !exported {
            eprintln!(
                "To keep a copy of everything first, stop here and run `kith export json FILE` \
                 (or `kith account delete --export FILE`)."
            );
        }
        eprint!(
            "Type the first 8 characters of the account id ({}) to delete it: ",
            &account.to_hex()[..8]
        );
        std::io::stderr().flush()?;
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if answer.trim() != &account.to_hex()[..8] {
            bail!("not confirmed: nothing was deleted");
        }
    }
    let deleted = device.delete_account().await;
    device.close().await;
    deleted.with_context(|| {
        format!(
            "cannot delete the account on the relay at {} (nothing was deleted here)",
            device.relay().address
        )
    })?;
    drop(device);
    wipe_home(home)?;
    outln!(
        "Deleted account {account} on the relay, and this device's store and key in {}.",
        home.display()
    );
    Ok(())
}

/// Removes this device's store and key, then the home if nothing else is left in it.
fn wipe_home(home: &Path) -> Result<()> {
    let store = home.join("store");
    if store.exists() {
        std::fs::remove_dir_all(&store)
            .with_context(|| format!("cannot remove {}", store.display()))?;
    }
    let key = home.join(kith_client::keystore::KEY_FILE_NAME);
    if key.exists() {
        std::fs::remove_file(&key).with_context(|| format!("cannot remove {}", key.display()))?;
    }
    let _ = std::fs::remove_dir(home);
    Ok(())
}

/// `kith completions SHELL`.
pub fn completions(shell: clap_complete::Shell) -> Result<()> {
    use clap::CommandFactory;
    let mut command = crate::cli::Cli::command();
    clap_complete::generate(shell, &mut command, "kith", &mut std::io::stdout());
    Ok(())
}
