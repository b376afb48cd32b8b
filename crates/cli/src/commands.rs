//! One function per command: open the device, call the library, print the result.

use std::io::{IsTerminal, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use kith_client::import::Region;
use kith_client::import::{self, ImportOptions, ImportReport};
use kith_client::net::{RelayTarget, RelayTrust};
use kith_client::{ClearField, ContactFields, Device, EditOptions, PendingLink, SyncReport};
use kith_protocol::DeviceId;

use crate::cli::{
    Cli, Command, ContactsCommand, DeviceCommand, ExportCommand, FieldArgs, ImportKind, RelayArgs,
    RelayCommand, SourceName, SourcesCommand,
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
            me,
        } => import(&home, kind, &path, address_book, me).await,
        Command::Meetings { since, json } => meetings(&home, since.as_deref(), json),
        Command::Sources(SourcesCommand::Forget { source }) => forget(&home, source).await,
        Command::Contacts(command) => contacts(&home, command).await,
        Command::Sync { watch: false } => sync(&home).await,
        Command::Sync { watch: true } => watch(&home).await,
        Command::Compact => compact(&home).await,
        Command::Device(command) => device(&home, command).await,
        Command::Relay(command) => relay(&home, command).await,
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
        return Err(usage(format!(
            "--relay must be HOST:PORT, e.g. relay.example.org:4433 or 127.0.0.1:4433 (got '{}')",
            relay.relay
        )));
    }
    RelayTarget::pinned(relay.relay.clone(), &relay.relay_cert_sha256)
        .map_err(|e| usage(format!("invalid --relay-cert-sha256: {e}")))
}

/// A command line that parsed but cannot mean anything (a flag value of the wrong shape, a
/// flag that does not apply): exits 2 like clap's own usage errors (crates/cli/README.md).
#[derive(Debug)]
pub struct UsageError(String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn usage(message: impl Into<String>) -> anyhow::Error {
    UsageError(message.into()).into()
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
    me: Vec<String>,
) -> Result<()> {
    if address_book.is_some() && kind != ImportKind::Imessage {
        return Err(usage(
            "--address-book only applies to `kith import imessage`",
        ));
    }
    if !me.is_empty() && !matches!(kind, ImportKind::Mail | ImportKind::Calendar) {
        bail!("--me only applies to `kith import mail` and `kith import calendar`");
    }
    if me.is_empty() && kind == ImportKind::Mail {
        bail!("`kith import mail` needs --me EMAIL (your own address; repeat it for each one)");
    }
    let device = open(home)?;
    let owned_path = path.to_path_buf();
    let report = tokio::task::spawn_blocking(move || {
        read_export(kind, &owned_path, address_book.as_deref(), &me)
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
    if summary.left_out > 0 {
        outln!(
            "{} left out: recorded only on a contact you already have (people who only wrote to you, one-way follows), or deleted by hand.",
            count(summary.left_out as u64, "contact")
        );
    }
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

fn read_export(
    kind: ImportKind,
    path: &Path,
    address_book: Option<&Path>,
    me: &[String],
) -> Result<ImportReport> {
    let opts = ImportOptions::default();
    Ok(match kind {
        ImportKind::Calendar => {
            import::calendar::import(path, me, import::calendar::now_unix(), &opts)?
        }
        ImportKind::Mail => import::mail::import(path, me, &opts)?,
        ImportKind::Twitter => import::twitter::import(path, &opts)?,
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
            let region = fields.region.or_else(locale_region);
            let id = device
                .add_contact_in(&contact_fields(Some(name), fields), region)
                .await?;
            outln!("Added contact {id}.");
        }
        ContactsCommand::Edit {
            id,
            name,
            fields,
            clear,
            remove_email,
            remove_phone,
        } => {
            let options = EditOptions {
                clear: clear.into_iter().map(ClearField::from).collect(),
                remove_emails: remove_email,
                remove_phones: remove_phone,
                region: fields.region.or_else(locale_region),
            };
            let changes = contact_fields(name, fields);
            let removes_nothing = options.clear.is_empty()
                && options.remove_emails.is_empty()
                && options.remove_phones.is_empty();
            if changes == ContactFields::default() && removes_nothing {
                return Err(usage(
                    "nothing to change: give at least one of --name, --email, --phone, --company, --note, \
                     --clear, --remove-email, --remove-phone",
                ));
            }
            let id = device.resolve_id(&id)?;
            if !device.edit_contact_with(&id, &changes, &options).await? {
                bail!(
                    "nothing changed: contact {} already has these values",
                    short(&id.to_hex())
                );
            }
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

/// The region of the person's locale: the territory of `LC_ALL`, `LC_TELEPHONE` or `LANG`
/// (`en_GB.UTF-8` → GB), the first of them that is set, as POSIX orders them.
fn locale_region() -> Option<Region> {
    ["LC_ALL", "LC_TELEPHONE", "LANG"]
        .iter()
        .filter_map(|name| std::env::var(name).ok())
        .find(|value| !value.is_empty())
        .and_then(|locale| region_of_locale(&locale))
}

fn region_of_locale(locale: &str) -> Option<Region> {
    let territory = locale.split(['.', '@']).next()?.split_once('_')?.1;
    territory.parse().ok()
}

/// `kith relay …`.
async fn relay(home: &Path, command: RelayCommand) -> Result<()> {
    let device = open(home)?;
    match command {
        RelayCommand::Show => {
            let relay = device.relay();
            outln!("relay: {}", relay.address);
            match &relay.trust {
                RelayTrust::PinnedSha256(pin) => outln!("certificate sha256: {}", hex::encode(pin)),
                RelayTrust::CaRoots(roots) => {
                    outln!(
                        "certificate: verified against {} CA certificates",
                        roots.len()
                    )
                }
            }
        }
        RelayCommand::Set { relay } => {
            let target = relay_target(&relay)?;
            device.set_relay(target).await?;
            outln!(
                "This device now syncs with {}; run `kith sync`.",
                relay.relay
            );
        }
        RelayCommand::Move {
            relay,
            registration_token,
        } => {
            let target = relay_target(&relay)?;
            let spinner = progress::spinner("moving the account");
            let result = device.move_to_relay(target, registration_token).await;
            device.close().await;
            spinner.finish_and_clear();
            let heal =
                result.with_context(|| format!("cannot move to the relay at {}", relay.relay))?;
            outln!("Moved the account to {}: {heal}.", relay.relay);
            outln!(
                "On every other device run: kith relay set --relay {} --relay-cert-sha256 {}",
                relay.relay,
                relay.relay_cert_sha256
            );
        }
        RelayCommand::Rebuild { registration_token } => {
            let result = device.rebuild_account(registration_token).await;
            device.close().await;
            let heal = result.with_context(|| relay_context(&device))?;
            outln!("Rebuilt: {heal}.");
        }
    }
    Ok(())
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
    if let Some(healed) = &report.healed {
        outln!("The relay was behind: {healed}.");
    }
    outln!(
        "Synced: pushed {}, pulled {}, {} changed; {} in all.",
        count(report.pushed as u64, "envelope"),
        report.pulled,
        count(report.changed.len() as u64, "contact"),
        count(device.contact_count()?, "contact")
    );
    warn_stopped_streams(&report);
    Ok(())
}

/// Streams a sync could not follow to their end, said on stderr: the rest of the sync worked.
fn warn_stopped_streams(report: &SyncReport) {
    for newer in &report.newer_format {
        eprintln!("warning: {newer}");
    }
    for end in &report.past_end {
        eprintln!(
            "warning: the relay served device {} past the end the roster gives its stream \
             (seq {} after {}); that stream ends there and the rest synced",
            end.device, end.seq, end.final_seq
        );
    }
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
    if let Some(healed) = &report.healed {
        text = format!("the relay was behind: {healed}; {text}");
    }
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
    // Stopped streams are said once, not on every sync that finds them again.
    let mut warned = (Vec::new(), Vec::new());
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
                Some(report) => {
                    let stopped = (report.newer_format.clone(), report.past_end.clone());
                    if stopped != warned {
                        warn_stopped_streams(&report);
                        warned = stopped;
                    }
                    if first || report.pushed > 0 || report.pulled > 0 || !report.changed.is_empty() {
                        first = false;
                        outln!("{}", describe_changes(&report));
                        std::io::stdout().flush()?;
                    }
                }
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
            let approval = approved.with_context(|| {
                format!(
                    "cannot approve the new device through the relay at {}",
                    device.relay().address
                )
            })?;
            let id = approval.device;
            if approval.joined {
                outln!("Approved device {id}: it has joined the account.");
            } else {
                outln!(
                    "Approved device {id}: it joins the account when `kith device request` on it \
                     picks the approval up. If it does not within 10 minutes, the approval lapses \
                     and the account stays as it was."
                );
            }
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
            if device.is_revoked()? {
                outln!(
                    "This device ({}) was revoked from the account: it can no longer read or write \
                     anything new. The devices it knew of:",
                    short(&device.device_id().to_hex())
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
    let mut pending = PendingLink::new(home, target, &name)?;
    // A relay that cannot be reached is reported before a code is shown that nobody could use.
    let spinner = progress::spinner("connecting to the relay");
    let connected = pending.connect().await;
    spinner.finish_and_clear();
    connected.with_context(|| {
        format!(
            "cannot link this device through the relay at {}",
            relay.relay
        )
    })?;
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
        count(device.contact_count()?, "contact")
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
        count(device.contact_count()?, "contact")
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

/// `kith meetings`.
fn meetings(home: &Path, since: Option<&str>, json: bool) -> Result<()> {
    let since_unix = match since {
        None => 0,
        Some(text) => output::parse_day(text)
            .with_context(|| format!("--since {text:?} is not a date (YYYY-MM-DD)"))?,
    };
    let device = open(home)?;
    let meetings = device.meetings(since_unix)?;
    if json {
        return output::print_json(&meetings);
    }
    if meetings.is_empty() {
        outln!("No meetings yet: import a calendar with `kith import calendar PATH`.");
        return Ok(());
    }
    out!("{}", output::meetings_text(&meetings));
    Ok(())
}

/// `kith sources forget`.
async fn forget(home: &Path, source: SourceName) -> Result<()> {
    let source = match source {
        SourceName::Linkedin => import::Source::LinkedIn,
        SourceName::Facebook => import::Source::Facebook,
        SourceName::Imessage => import::Source::IMessage,
        SourceName::AddressBook => import::Source::AddressBook,
        SourceName::Vcard => import::Source::VCard,
        SourceName::Calendar => import::Source::Calendar,
        SourceName::Mail => import::Source::Mail,
        SourceName::Twitter => import::Source::Twitter,
    };
    let device = open(home)?;
    let (changed, emptied) = device.forget_source(source).await?;
    outln!(
        "Forgot {source}: {} changed, {emptied} of them held nothing else and are now empty.",
        count(changed as u64, "contact")
    );
    if changed > 0 {
        outln!("Run `kith sync` to forget it on your other devices too.");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_region_comes_from_the_locale_territory() {
        assert_eq!(
            region_of_locale("en_GB.UTF-8").map(|r| r.to_string()),
            Some("GB".into())
        );
        assert_eq!(
            region_of_locale("de_DE@euro").map(|r| r.to_string()),
            Some("DE".into())
        );
        assert_eq!(
            region_of_locale("fr_FR").map(|r| r.to_string()),
            Some("FR".into())
        );
        assert_eq!(region_of_locale("C.UTF-8"), None);
        assert_eq!(region_of_locale("POSIX"), None);
        assert_eq!(region_of_locale("en_ZZ.UTF-8"), None);
    }
}
