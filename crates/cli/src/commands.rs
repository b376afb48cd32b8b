//! One function per command: open the device, call the library, print the result.

use std::io::{IsTerminal, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use kith_client::import::{self, ImportOptions, ImportReport};
use kith_client::net::RelayTarget;
use kith_client::{ContactFields, Device, PendingLink, SyncReport};
use kith_protocol::DeviceId;

use crate::cli::{
    Cli, Command, ContactsCommand, DeviceCommand, ExportCommand, FieldArgs, ImportKind, RelayArgs,
};
use crate::output::{self, ConflictJson, ContactJson, DeviceJson, count, short};
use crate::{demo, progress, qr};

/// Skipped rows and dropped fields listed after an import; the rest are counted.
const MAX_PROBLEMS_LISTED: usize = 50;
/// Changed ids listed per `sync --watch` report; the rest are counted.
const MAX_IDS_LISTED: usize = 8;

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> Result<()> {
    if let Command::Demo = cli.command {
        return demo::run().await;
    }
    let home = home_dir(cli.home)?;
    match cli.command {
        Command::Init {
            relay,
            device_name,
            registration_token,
        } => init(&home, &relay, device_name, registration_token).await,
        Command::Import {
            kind,
            path,
            address_book,
        } => import(&home, kind, &path, address_book).await,
        Command::Contacts(command) => contacts(&home, command).await,
        Command::Sync { watch: false } => sync(&home).await,
        Command::Sync { watch: true } => watch(&home).await,
        Command::Compact => compact(&home).await,
        Command::Device(command) => device(&home, command).await,
        Command::Recover {
            relay,
            recovery_key,
            device_name,
        } => recover(&home, &relay, &recovery_key, device_name).await,
        Command::Export(ExportCommand::Vcard { path }) => export_vcard(&home, &path),
        Command::Demo => unreachable!("handled above"),
    }
}

/// `--home`, `KITH_HOME`, or the platform data directory.
fn home_dir(home: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(home) = home {
        return Ok(home);
    }
    directories::ProjectDirs::from("", "", "kith")
        .map(|dirs| dirs.data_dir().to_path_buf())
        .context("cannot find a data directory for this user (is HOME set?): pass --home DIR or set KITH_HOME")
}

fn open(home: &Path) -> Result<Device> {
    Ok(Device::open(home)?)
}

fn relay_target(relay: &RelayArgs) -> Result<RelayTarget> {
    let port = relay
        .relay
        .rsplit_once(':')
        .map(|(_, port)| port.parse::<u16>());
    if !matches!(port, Some(Ok(_))) {
        bail!(
            "--relay must be HOST:PORT, e.g. relay.example.org:4433 or 127.0.0.1:4433 (got '{}')",
            relay.relay
        );
    }
    RelayTarget::pinned(relay.relay.clone(), &relay.relay_cert_sha256)
        .context("invalid --relay-cert-sha256")
}

/// A default device name: the host's name, which people recognise in `kith device list`.
fn default_device_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "kith device".to_owned())
}

async fn init(
    home: &Path,
    relay: &RelayArgs,
    device_name: Option<String>,
    registration_token: Option<String>,
) -> Result<()> {
    let target = relay_target(relay)?;
    let name = device_name.unwrap_or_else(default_device_name);
    let spinner = progress::spinner("creating the account");
    let created = Device::create(home, target, &name, registration_token).await;
    spinner.finish_and_clear();
    let (device, recovery_key) = created
        .with_context(|| format!("cannot create the account on the relay at {}", relay.relay))?;
    outln!(
        "Created account {} with this device {} ({name}).",
        device.account_id(),
        device.device_id()
    );
    outln!();
    outln!("RECOVERY KEY (shown only this once):");
    outln!();
    outln!("    {}", recovery_key.0.as_str());
    outln!();
    outln!("Write it down and keep it somewhere safe, away from this device. If you lose every");
    outln!("device, `kith recover --recovery-key KEY` is the only way back to your contacts;");
    outln!("anyone who has it can read them.");
    Ok(())
}

async fn import(
    home: &Path,
    kind: ImportKind,
    path: &Path,
    address_book: Option<PathBuf>,
) -> Result<()> {
    if address_book.is_some() && kind != ImportKind::Imessage {
        bail!("--address-book only applies to `kith import imessage`");
    }
    let device = open(home)?;
    let owned_path = path.to_path_buf();
    let report = tokio::task::spawn_blocking(move || {
        read_export(kind, &owned_path, address_book.as_deref())
    })
    .await
    .context("the importer stopped unexpectedly")?
    .with_context(|| format!("cannot import {}", path.display()))?;
    let found = report.contacts.len();
    let problems = (
        report.skipped.clone(),
        report.dropped.clone(),
        report.unlisted_problems,
    );
    let bar = progress::import_bar(found);
    let summary = device
        .import_with_progress(report, |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        })
        .await;
    bar.finish_and_clear();
    let summary = summary.context("cannot save the imported contacts")?;
    outln!(
        "Imported {} from {}: {} added, {} updated, {} unchanged, {} skipped.",
        count(found as u64, "contact"),
        path.display(),
        summary.added,
        summary.updated,
        summary.unchanged,
        summary.skipped
    );
    let (skipped, dropped, unlisted) = problems;
    if !skipped.is_empty() {
        outln!("Skipped:");
        for row in skipped.iter().take(MAX_PROBLEMS_LISTED) {
            outln!("  line {}: {}", row.line, row.reason);
        }
        if skipped.len() > MAX_PROBLEMS_LISTED {
            outln!("  … and {} more", skipped.len() - MAX_PROBLEMS_LISTED);
        }
    }
    if !dropped.is_empty() {
        outln!("Fields left out (the rest of the row was imported):");
        for field in dropped.iter().take(MAX_PROBLEMS_LISTED) {
            outln!("  line {}, {}: {}", field.line, field.field, field.reason);
        }
        if dropped.len() > MAX_PROBLEMS_LISTED {
            outln!("  … and {} more", dropped.len() - MAX_PROBLEMS_LISTED);
        }
    }
    if unlisted > 0 {
        outln!("{unlisted} further problems were counted but not listed.");
    }
    if summary.added + summary.updated > 0 {
        outln!("Run `kith sync` to send them to your other devices.");
    }
    Ok(())
}

fn read_export(kind: ImportKind, path: &Path, address_book: Option<&Path>) -> Result<ImportReport> {
    let opts = ImportOptions::default();
    Ok(match kind {
        ImportKind::Linkedin => import::linkedin::import(path, &opts)?,
        ImportKind::Facebook => import::facebook::import(path, &opts)?,
        ImportKind::Imessage => import::imessage::import(path, address_book, &opts)?,
        ImportKind::Vcard => import::vcard::import(path, &opts)?,
    })
}

async fn contacts(home: &Path, command: ContactsCommand) -> Result<()> {
    let device = open(home)?;
    match command {
        ContactsCommand::List { json } => {
            let contacts = device.contacts()?;
            if json {
                return output::print_json(
                    &contacts.iter().map(ContactJson::from).collect::<Vec<_>>(),
                );
            }
            if contacts.is_empty() {
                outln!(
                    "No contacts yet: add one with `kith contacts add --name NAME` or import an export with `kith import`."
                );
            } else {
                out!("{}", output::contacts_table(&contacts));
                outln!("{}", count(contacts.len() as u64, "contact"));
            }
        }
        ContactsCommand::Show { id, json } => {
            let id = device.resolve_id(&id)?;
            let contact = device.contact(&id)?;
            if json {
                return output::print_json(&ContactJson::from(&contact));
            }
            let hex = id.to_hex();
            let conflicts: Vec<_> = device
                .conflicts()?
                .into_iter()
                .filter(|c| c.id == hex)
                .collect();
            out!("{}", output::contact_details(&contact, &conflicts));
        }
        ContactsCommand::Search { query, json } => {
            let found = device.search(&query)?;
            if json {
                return output::print_json(
                    &found.iter().map(ContactJson::from).collect::<Vec<_>>(),
                );
            }
            if found.is_empty() {
                outln!("No contact matches.");
            } else {
                out!("{}", output::contacts_table(&found));
                outln!("{} found", found.len());
            }
        }
        ContactsCommand::Add { name, fields } => {
            let id = device
                .add_contact(&contact_fields(Some(name), fields))
                .await?;
            outln!("Added contact {id}.");
        }
        ContactsCommand::Edit { id, name, fields } => {
            let changes = contact_fields(name, fields);
            if changes == ContactFields::default() {
                bail!(
                    "nothing to change: give at least one of --name, --email, --phone, --company, --note"
                );
            }
            let id = device.resolve_id(&id)?;
            device.edit_contact(&id, &changes).await?;
            outln!("Updated contact {id}.");
        }
        ContactsCommand::Delete { id } => {
            let id = device.resolve_id(&id)?;
            device.delete_contact(&id).await?;
            outln!("Deleted contact {id}.");
        }
        ContactsCommand::Conflicts { json } => {
            let conflicts = device.conflicts()?;
            if json {
                return output::print_json(
                    &conflicts.iter().map(ConflictJson::from).collect::<Vec<_>>(),
                );
            }
            if conflicts.is_empty() {
                outln!("No conflicts.");
                return Ok(());
            }
            outln!(
                "Concurrent edits the merge kept (the first value is shown; edit the field to settle it):"
            );
            for conflict in &conflicts {
                let name = kith_protocol::RecordId::from_hex(&conflict.id)
                    .and_then(|id| device.contact(&id).ok())
                    .and_then(|c| c.name().map(str::to_owned))
                    .unwrap_or_default();
                outln!(
                    "  {}  {name}  {}: {:?} / {:?}",
                    short(&conflict.id),
                    conflict.field,
                    conflict.winner,
                    conflict.other
                );
            }
        }
    }
    Ok(())
}

fn contact_fields(name: Option<String>, fields: FieldArgs) -> ContactFields {
    ContactFields {
        name,
        email: fields.email,
        phone: fields.phone,
        company: fields.company,
        note: fields.note,
    }
}

fn relay_context(device: &Device) -> String {
    format!("cannot sync with the relay at {}", device.relay().address)
}

async fn sync(home: &Path) -> Result<()> {
    let device = open(home)?;
    let spinner = progress::spinner("syncing");
    let report = device.sync().await;
    // The relay frees the connection at once instead of at its idle timeout.
    device.close().await;
    spinner.finish_and_clear();
    let report = report.with_context(|| relay_context(&device))?;
    outln!(
        "Synced: pushed {}, pulled {}, {} changed; {} in all.",
        count(report.pushed as u64, "envelope"),
        report.pulled,
        count(report.changed.len() as u64, "contact"),
        count(device.contacts()?.len() as u64, "contact")
    );
    Ok(())
}

fn describe_changes(report: &SyncReport) -> String {
    let ids: Vec<String> = report
        .changed
        .iter()
        .take(MAX_IDS_LISTED)
        .map(|id| short(&id.to_hex()).to_owned())
        .collect();
    let mut text = format!(
        "pushed {}, pulled {}, {} changed",
        report.pushed,
        report.pulled,
        count(report.changed.len() as u64, "contact")
    );
    if !ids.is_empty() {
        text.push_str(": ");
        text.push_str(&ids.join(" "));
        if report.changed.len() > MAX_IDS_LISTED {
            text.push_str(&format!(
                " and {} more",
                report.changed.len() - MAX_IDS_LISTED
            ));
        }
    }
    text
}

async fn watch(home: &Path) -> Result<()> {
    let device = open(home)?;
    let (sender, mut changes) = tokio::sync::mpsc::channel(16);
    let watcher = device.clone();
    let mut task = tokio::spawn(async move { watcher.watch(sender).await });
    eprintln!("Watching for changes from other devices (Ctrl-C to stop).");
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut first = true;
    loop {
        tokio::select! {
            _ = &mut ctrl_c => {
                drop(changes);
                task.abort();
                eprintln!("Stopped.");
                return Ok(());
            }
            report = changes.recv() => match report {
                // The first sync always says where things stand; later ones only when
                // something moved.
                Some(report) if first || report.pushed > 0 || report.pulled > 0 || !report.changed.is_empty() => {
                    first = false;
                    outln!("{}", describe_changes(&report));
                    std::io::stdout().flush()?;
                }
                Some(_) => {}
                None => break,
            },
        }
    }
    // The watcher dropped its sender: it stopped on an error it cannot retry.
    match (&mut task).await {
        Ok(result) => result.with_context(|| relay_context(&device)),
        Err(join) => Err(anyhow::anyhow!(
            "the sync task stopped unexpectedly: {join}"
        )),
    }
}

async fn compact(home: &Path) -> Result<()> {
    let device = open(home)?;
    let spinner = progress::spinner("compacting");
    let report = device.compact().await;
    device.close().await;
    spinner.finish_and_clear();
    let report = report
        .with_context(|| format!("cannot compact on the relay at {}", device.relay().address))?;
    outln!(
        "Compacted: wrote {}; relay storage for this account {} -> {} ({} -> {} bytes).",
        count(report.snapshot_envelopes as u64, "snapshot envelope"),
        output::bytes(report.relay_bytes_before),
        output::bytes(report.relay_bytes_after),
        report.relay_bytes_before,
        report.relay_bytes_after
    );
    Ok(())
}

async fn device(home: &Path, command: DeviceCommand) -> Result<()> {
    match command {
        DeviceCommand::Request {
            relay,
            device_name,
            timeout,
        } => request_link(home, &relay, device_name, timeout).await,
        DeviceCommand::Approve { code } => {
            let device = open(home)?;
            let spinner = progress::spinner("approving");
            let approved = device.approve_link(code.trim()).await;
            spinner.finish_and_clear();
            let id = approved.with_context(|| {
                format!(
                    "cannot approve the new device through the relay at {}",
                    device.relay().address
                )
            })?;
            outln!("Approved device {id}; it finishes linking on its own.");
            Ok(())
        }
        DeviceCommand::List { json } => {
            let device = open(home)?;
            let devices = device.devices()?;
            if json {
                return output::print_json(
                    &devices.iter().map(DeviceJson::from).collect::<Vec<_>>(),
                );
            }
            out!("{}", output::devices_table(&devices));
            Ok(())
        }
        DeviceCommand::Revoke { id } => {
            let device = open(home)?;
            let target = resolve_device(&device, &id)?;
            let spinner = progress::spinner("revoking");
            let revoked = device.revoke(&target).await;
            spinner.finish_and_clear();
            revoked.with_context(|| format!("cannot revoke device {target}"))?;
            outln!(
                "Revoked device {target}: the relay refuses it from now on, and the account key and content key \
                 were replaced, so it cannot read anything written after this."
            );
            Ok(())
        }
    }
}

/// A device id from full hex or a unique prefix of one in the roster.
fn resolve_device(device: &Device, text: &str) -> Result<DeviceId> {
    let text = text.trim().to_lowercase();
    if let Some(id) = DeviceId::from_hex(&text) {
        return Ok(id);
    }
    if text.len() < 4 || !text.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!(
            "'{text}' is not a device id: give the id or at least 4 of its first hex digits (see `kith device list`)"
        );
    }
    let devices = device.devices()?;
    let matches: Vec<_> = devices.iter().filter(|d| d.id.starts_with(&text)).collect();
    match matches.as_slice() {
        [one] => DeviceId::from_hex(&one.id).context("the roster holds a malformed device id"),
        [] => bail!(
            "no device {text} in this account (see `kith device list`; run `kith sync` first if it joined recently)"
        ),
        _ => bail!("device id prefix {text} matches several devices; type more of it"),
    }
}

async fn request_link(
    home: &Path,
    relay: &RelayArgs,
    device_name: Option<String>,
    timeout: u64,
) -> Result<()> {
    let target = relay_target(relay)?;
    let name = device_name.unwrap_or_else(default_device_name);
    let pending = PendingLink::new(home, target, &name)?;
    // The code is the first line of standard output: scripts and tests read it from there.
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{}", pending.code())?;
    if stdout.is_terminal() {
        let columns = console::Term::stdout()
            .size_checked()
            .map_or(80, |(_, columns)| columns);
        match qr::render(pending.code(), usize::from(columns)) {
            Ok(art) => writeln!(stdout, "{art}")?,
            Err(qr::Skipped::TooWide(needed)) => eprintln!(
                "(A QR code of the link code needs a terminal {needed} columns wide; widen this one and run again to see it.)"
            ),
            Err(qr::Skipped::TooLong) => {}
        }
    }
    stdout.flush()?;
    eprintln!(
        "Waiting up to {timeout} s for approval: on a device of the account, run `kith device approve CODE` with the code above."
    );
    let spinner = progress::spinner("waiting for approval");
    let linked = pending.complete(Duration::from_secs(timeout)).await;
    spinner.finish_and_clear();
    let device = linked.with_context(|| {
        format!(
            "cannot link this device through the relay at {}",
            relay.relay
        )
    })?;
    outln!(
        "Linked: this is device {} of account {}; {} synced.",
        device.device_id(),
        device.account_id(),
        count(device.contacts()?.len() as u64, "contact")
    );
    Ok(())
}

async fn recover(
    home: &Path,
    relay: &RelayArgs,
    key: &str,
    device_name: Option<String>,
) -> Result<()> {
    let target = relay_target(relay)?;
    let name = device_name.unwrap_or_else(default_device_name);
    let spinner = progress::spinner("recovering");
    let recovered = Device::recover(home, target, key.trim(), &name).await;
    spinner.finish_and_clear();
    let device = recovered.with_context(|| {
        format!(
            "cannot recover the account from the relay at {}",
            relay.relay
        )
    })?;
    outln!(
        "Recovered account {} on this new device {}; {} restored.",
        device.account_id(),
        device.device_id(),
        count(device.contacts()?.len() as u64, "contact")
    );
    Ok(())
}

fn export_vcard(home: &Path, path: &Path) -> Result<()> {
    let device = open(home)?;
    let exported = device.contacts()?.len();
    let text = device.export_vcard()?;
    if path == Path::new("-") {
        out!("{text}");
        std::io::stdout().flush()?;
        eprintln!("Exported {}.", count(exported as u64, "contact"));
        return Ok(());
    }
    write_private(path, text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    outln!(
        "Exported {} to {}.",
        count(exported as u64, "contact"),
        path.display()
    );
    Ok(())
}

/// Writes a file only its owner can read: an export holds every contact in plaintext.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}
