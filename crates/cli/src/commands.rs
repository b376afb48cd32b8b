//! One function per command: open the device, call the library, print the result.

use std::io::{IsTerminal, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use kith_client::import::Region;
use kith_client::import::{self, ImportOptions, ImportReport};
use kith_client::keystore::{
    FileKeyStore, KdfParams, KeyProtection, KeyStore, KeyStoreError, Keychain, KeychainPersistence,
    Passphrase,
};
use kith_client::net::{RelayTarget, RelayTrust};
use kith_client::{
    ClientError, ContactFields, Device, EditOptions, PendingLink, RecoveryState, SyncReport,
};

use crate::account;
use crate::cli::{
    AccountCommand, Cli, Command, ContactsCommand, DeviceCommand, ExportCommand, FieldArgs,
    ImportKind, KeyCommand, RecoveryCommand, RelayArgs, RelayCommand, SourceName, SourcesCommand,
    TrustArgs,
};
use crate::output::{self, ConflictJson, ContactJson, DeviceJson, count, short};
use crate::{progress, qr};

/// Skipped rows and dropped fields listed after an import; the rest are counted.
const MAX_PROBLEMS_LISTED: usize = 50;
/// Changed ids listed per `sync --watch` report; the rest are counted.
const MAX_IDS_LISTED: usize = 8;

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> Result<()> {
    if let Command::Completions { shell } = cli.command {
        return account::completions(shell);
    }
    if let Command::Demo = cli.command {
        #[cfg(feature = "demo")]
        return crate::demo::run().await;
        #[cfg(not(feature = "demo"))]
        anyhow::bail!(
            "this kith was built without the demo (the `demo` feature, on by default, links a relay \
             into the binary for it)"
        );
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
            json,
        } => import(&home, kind, &path, address_book, me, json).await,
        Command::Meetings { since, json } => meetings(&home, since.as_deref(), json),
        Command::Sources(SourcesCommand::Forget { source }) => forget(&home, source).await,
        Command::Contacts(command) => contacts(&home, command).await,
        Command::Sync { watch: false, json } => sync(&home, json).await,
        Command::Sync { watch: true, json } => watch(&home, json).await,
        Command::Compact { json } => compact(&home, json).await,
        Command::Account(AccountCommand::Info { json }) => account::info(&home, json).await,
        Command::Account(AccountCommand::Delete { yes, export }) => {
            account::delete(&home, yes, export.as_deref()).await
        }
        Command::Completions { shell } => account::completions(shell),
        Command::Device(command) => device(&home, command).await,
        Command::Relay(command) => relay(&home, command).await,
        Command::Recover {
            relay,
            recovery_key,
            device_name,
        } => recover(&home, &relay, &recovery_key, device_name).await,
        Command::Export(ExportCommand::Vcard { path }) => export_vcard(&home, &path),
        Command::Export(ExportCommand::Json { path }) => account::export_json(&home, &path),
        Command::Key(KeyCommand::Encrypt) => encrypt_key(&home),
        Command::Recovery(RecoveryCommand::Status { json }) => recovery_status(&home, json).await,
        Command::Recovery(RecoveryCommand::Rotate) => rotate_recovery(&home).await,
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

/// The passphrase of the device key: `KITH_PASSPHRASE` (read once; an empty value counts as
/// none).
fn passphrase_from_env(name: &str) -> Option<Passphrase> {
    std::env::var(name)
        .ok()
        .filter(|text| !text.is_empty())
        .map(Passphrase::new)
}

/// Whether a person is there to type a passphrase.
fn on_terminal() -> bool {
    std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
}

/// Asks for a passphrase on the terminal, without echo.
fn ask_passphrase(prompt: &str) -> Result<Passphrase> {
    let term = console::Term::stderr();
    term.write_str(prompt)?;
    Ok(Passphrase::new(term.read_secure_line()?))
}

/// Asks twice for a new passphrase; `None` if the person leaves it empty.
fn ask_new_passphrase(prompt: &str) -> Result<Option<Passphrase>> {
    loop {
        let first = ask_passphrase(prompt)?;
        if first.is_empty() {
            return Ok(None);
        }
        let again = ask_passphrase("Type it again: ")?;
        if first.matches(&again) {
            return Ok(Some(first));
        }
        eprintln!("The two differ; once more.");
    }
}

/// The key store of an existing device: with `KITH_PASSPHRASE` (which also encrypts a plain
/// key file, the migration of a 0.1 home), else asking on a terminal if the file is
/// encrypted, else the file as it is (an encrypted one is then refused with a hint).
fn existing_keystore(home: &Path) -> Result<Option<Arc<dyn KeyStore>>> {
    let file = FileKeyStore::in_home(home);
    if let Some(passphrase) = passphrase_from_env("KITH_PASSPHRASE") {
        if file.protection().ok().flatten() == Some(KeyProtection::Plain) {
            eprintln!(
                "Encrypting this device's key with the passphrase in KITH_PASSPHRASE (it was stored unencrypted)."
            );
        }
        return Ok(Some(Arc::new(FileKeyStore::with_passphrase(
            file.path(),
            passphrase,
        ))));
    }
    if on_terminal() && matches!(file.protection(), Ok(Some(KeyProtection::Passphrase(_)))) {
        let passphrase = ask_passphrase("Passphrase of this device's key: ")?;
        return Ok(Some(Arc::new(FileKeyStore::with_passphrase(
            file.path(),
            passphrase,
        ))));
    }
    Ok(None)
}

/// The key store of a device being set up (init, link, recover), as `KITH_KEY_STORE` says
/// (`keychain`, `passphrase` or `plain`), else the first that works of: a passphrase in
/// `KITH_PASSPHRASE`; the platform keychain where it keeps keys for good (macOS, Windows, and
/// on Linux the Secret Service when one answers on the session bus, checked by a bounded
/// round trip); a passphrase asked on a terminal; the plain file, the last resort, with a
/// warning.
///
/// The Linux kernel keyring is a keychain only on request (`KITH_KEY_STORE=keychain` where no
/// Secret Service answers): it forgets its keys at reboot, and with them the only key that
/// opens the file.
fn new_keystore(home: &Path) -> Result<Option<Arc<dyn KeyStore>>> {
    let path = FileKeyStore::in_home(home).path().to_path_buf();
    let with_passphrase = |passphrase| -> Option<Arc<dyn KeyStore>> {
        Some(Arc::new(FileKeyStore::with_passphrase(&path, passphrase)))
    };
    let asked = || {
        ask_new_passphrase(
            "A passphrase to encrypt this device's key (empty: store it unencrypted): ",
        )
    };
    let wanted = std::env::var("KITH_KEY_STORE").unwrap_or_default();
    match wanted.as_str() {
        "keychain" => {
            let keychain = Keychain::os();
            keychain
                .probe()
                .map_err(ClientError::from)
                .context("KITH_KEY_STORE=keychain, but this machine's keychain does not work")?;
            if keychain.persistence() == KeychainPersistence::UntilReboot {
                eprintln!(
                    "warning: this device's key is sealed by the kernel keyring, which forgets it \
                     at reboot (or when your last session ends): this home then no longer opens \
                     and the device must be set up again; keep the recovery key"
                );
            }
            return Ok(Some(Arc::new(FileKeyStore::with_keychain(&path, keychain))));
        }
        "passphrase" => {
            return match passphrase_from_env("KITH_PASSPHRASE") {
                Some(passphrase) => Ok(with_passphrase(passphrase)),
                None if on_terminal() => Ok(asked()?.and_then(with_passphrase)),
                None => Err(usage(
                    "KITH_KEY_STORE=passphrase: give the passphrase in KITH_PASSPHRASE",
                )),
            };
        }
        "plain" => return Ok(None),
        "" => {}
        other => {
            return Err(usage(format!(
                "KITH_KEY_STORE={other:?}: say keychain, passphrase or plain (or leave it unset)"
            )));
        }
    }
    if let Some(passphrase) = passphrase_from_env("KITH_PASSPHRASE") {
        return Ok(with_passphrase(passphrase));
    }
    let keychain = Keychain::os();
    if keychain.persistence() == KeychainPersistence::Durable {
        match keychain.probe() {
            Ok(()) => return Ok(Some(Arc::new(FileKeyStore::with_keychain(&path, keychain)))),
            Err(why) => eprintln!("warning: the keychain cannot keep this device's key ({why})"),
        }
    }
    if on_terminal() {
        return Ok(asked()?.and_then(with_passphrase));
    }
    Ok(None)
}

/// After a device was set up without a passphrase or keychain (`keystore` is `None`): says
/// that its key is stored unencrypted, the last resort.
fn warn_if_plain(keystore: &Option<Arc<dyn KeyStore>>) {
    if keystore.is_none() {
        eprintln!(
            "warning: this device's key is stored unencrypted, in a file only you can read; \
             set KITH_PASSPHRASE and run `kith key encrypt` to encrypt it"
        );
    }
}

pub(crate) fn open(home: &Path) -> Result<Device> {
    Ok(Device::open_with_keystore(home, existing_keystore(home)?)?)
}

/// `kith key encrypt`.
fn encrypt_key(home: &Path) -> Result<()> {
    let file = FileKeyStore::in_home(home);
    let Some(protection) = file.protection()? else {
        return Err(ClientError::NotInitialized(home.display().to_string()).into());
    };
    let current: Arc<dyn KeyStore> = match protection {
        // The keychain opens a sealed file without being asked.
        KeyProtection::Plain | KeyProtection::Keychain => Arc::new(file.clone()),
        KeyProtection::Passphrase(_) => existing_keystore(home)?.ok_or_else(|| {
            ClientError::from(KeyStoreError::PassphraseRequired(file.path().to_path_buf()))
        })?,
    };
    let secrets = current
        .load()
        .map_err(ClientError::from)?
        .ok_or_else(|| ClientError::NotInitialized(home.display().to_string()))?;
    let new = match passphrase_from_env("KITH_NEW_PASSPHRASE") {
        Some(new) => new,
        None if on_terminal() => ask_new_passphrase("The new passphrase: ")?
            .ok_or_else(|| usage("an empty passphrase encrypts nothing"))?,
        None if !matches!(protection, KeyProtection::Passphrase(_)) => {
            passphrase_from_env("KITH_PASSPHRASE")
                .ok_or_else(|| usage("give the new passphrase in KITH_NEW_PASSPHRASE"))?
        }
        None => return Err(usage("give the new passphrase in KITH_NEW_PASSPHRASE")),
    };
    FileKeyStore::with_passphrase(file.path(), new).save(&secrets)?;
    let kdf = KdfParams::DEFAULT;
    outln!(
        "Encrypted this device's key with the new passphrase (Argon2id, {} MiB, {} passes). \
         Give it in KITH_PASSPHRASE, or type it when asked.",
        kdf.memory_kib / 1024,
        kdf.iterations
    );
    Ok(())
}

fn relay_target(relay: &RelayArgs) -> Result<RelayTarget> {
    check_address(&relay.relay)?;
    let trust = relay_trust(&relay.trust)?.ok_or_else(|| {
        usage(
            "say how to trust the relay: --relay-cert-sha256 HEX (the `key sha256` kith-relay \
             prints) or --relay-ca system|FILE",
        )
    })?;
    Ok(RelayTarget {
        address: relay.relay.clone(),
        trust,
    })
}

fn check_address(address: &str) -> Result<()> {
    let port = address
        .rsplit_once(':')
        .map(|(_, port)| port.parse::<u16>());
    if !matches!(port, Some(Ok(_))) {
        return Err(usage(format!(
            "--relay must be HOST:PORT, e.g. relay.example.org:4433 or 127.0.0.1:4433 (got '{address}')"
        )));
    }
    Ok(())
}

/// The trust the flags give, if any.
fn relay_trust(trust: &TrustArgs) -> Result<Option<RelayTrust>> {
    if let Some(pins) = &trust.relay_cert_sha256 {
        let target = RelayTarget::pinned(String::new(), pins)
            .map_err(|e| usage(format!("invalid --relay-cert-sha256: {e}")))?;
        return Ok(Some(target.trust));
    }
    match trust.relay_ca.as_deref() {
        None => Ok(None),
        Some("system") => Ok(Some(RelayTrust::SystemRoots)),
        Some(file) => {
            let roots = kith_client::net::read_ca_file(Path::new(file))
                .map_err(|e| usage(format!("invalid --relay-ca: {e}")))?;
            Ok(Some(RelayTrust::CaRoots(roots)))
        }
    }
}

/// `--relay-cert-sha256 HEX` or `--relay-ca …` as another device should be told it.
fn trust_flags(trust: &TrustArgs) -> String {
    match (&trust.relay_cert_sha256, &trust.relay_ca) {
        (Some(pins), _) => format!("--relay-cert-sha256 {pins}"),
        (None, Some(ca)) => format!("--relay-ca {ca}"),
        (None, None) => String::new(),
    }
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

pub(crate) fn usage(message: impl Into<String>) -> anyhow::Error {
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
    let keystore = new_keystore(home)?;
    let created =
        Device::create_with_keystore(home, target, &name, registration_token, keystore.clone())
            .await;
    spinner.finish_and_clear();
    let (device, recovery_key) = created
        .with_context(|| format!("cannot create the account on the relay at {}", relay.relay))?;
    warn_if_plain(&keystore);
    outln!(
        "Created account {} with this device {} ({name}).",
        device.account_id(),
        device.device_id()
    );
    outln!();
    print_recovery_key(&recovery_key)
}

/// The recovery key, shown once, and what to do with it.
fn print_recovery_key(recovery_key: &kith_client::RecoveryKeyText) -> Result<()> {
    outln!("RECOVERY KEY (shown only this once):");
    outln!();
    outln!("    {}", recovery_key.0.as_str());
    outln!();
    outln!("Write it down and keep it somewhere safe, away from this device. If you lose every");
    outln!("device, `kith recover --recovery-key KEY` is the only way back to your contacts;");
    outln!("anyone who has it can read them.");
    Ok(())
}

/// `kith recovery status`.
async fn recovery_status(home: &Path, json: bool) -> Result<()> {
    let device = open(home)?;
    let status = device.recovery_status().await;
    device.close().await;
    let status = status.with_context(|| relay_context(&device))?;
    if json {
        return output::print_json(&status);
    }
    let sealed = match (status.sealed_roster_version, status.sealed_epoch) {
        (Some(version), Some(epoch)) => format!("roster version {version}, epoch {epoch}"),
        _ => "it does not say what for".to_owned(),
    };
    match status.state {
        RecoveryState::Current => outln!(
            "Recovery bundle: current (sealed for {sealed}; the account is at roster version {}, \
             epoch {}): the recovery key restores everything written so far.",
            status.roster_version,
            status.epoch
        ),
        RecoveryState::Stale => outln!(
            "Recovery bundle: STALE (sealed for {sealed}; the account is at roster version {}, \
             epoch {}): the recovery key restores the account only as it was then. Run \
             `kith recovery rotate` for a new key and a current bundle.",
            status.roster_version,
            status.epoch
        ),
        RecoveryState::Unverifiable => outln!(
            "Recovery bundle: present, sealed by an older version that does not say for which \
             key and epoch. Run `kith recovery rotate` to be sure it is current."
        ),
        RecoveryState::Missing => outln!(
            "Recovery bundle: MISSING on the relay: the recovery key restores nothing. Run \
             `kith recovery rotate` for a new key."
        ),
    }
    if !status.this_device_can_reseal && status.state != RecoveryState::Missing {
        outln!(
            "This device does not hold the current recovery key's sealing material, so it cannot \
             keep the bundle current when it revokes a device; `kith recovery rotate` on it fixes that."
        );
    }
    Ok(())
}

/// `kith recovery rotate`.
async fn rotate_recovery(home: &Path) -> Result<()> {
    let device = open(home)?;
    let spinner = progress::spinner("replacing the recovery key");
    let rotated = device.rotate_recovery_key().await;
    device.close().await;
    spinner.finish_and_clear();
    let key = rotated.with_context(|| relay_context(&device))?;
    outln!(
        "Replaced the recovery key: the relay removed the bundle of the old key, and every \
         device seals to the new one from now on. The old key opens nothing written after this."
    );
    outln!();
    print_recovery_key(&key)
}

async fn import(
    home: &Path,
    kind: ImportKind,
    path: &Path,
    address_book: Option<PathBuf>,
    me: Vec<String>,
    json: bool,
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
    let streamed = kind == ImportKind::Linkedin;
    let (summary, found, problems) = if streamed {
        // LinkedIn exports can hold every connection of a large network: read a row at a time
        // so the import runs in the memory of one chunk whatever the file holds.
        let mut rows = import::linkedin::rows_from_path(path, &ImportOptions::default())
            .with_context(|| format!("cannot import {}", path.display()))?;
        let bar = progress::import_counter();
        let mut found = 0;
        let summary = device
            .import_stream(rows.by_ref(), |done| {
                found = done;
                bar.set_position(done as u64);
            })
            .await;
        bar.finish_and_clear();
        let mut summary = summary.with_context(|| format!("cannot import {}", path.display()))?;
        let report = rows.finish();
        summary.skipped += report.skipped.len();
        let problems = (report.skipped, report.dropped, report.unlisted_problems);
        (summary, found, problems)
    } else {
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
        (summary, found, problems)
    };
    if json {
        return output::print_json(&account::ImportJson::new(path, found, &summary, &problems));
    }
    outln!(
        "Imported {} from {}: {} added, {} updated, {} unchanged, {} skipped.",
        // A streamed export is counted in rows: a connection listed twice is two rows.
        count(found as u64, if streamed { "row" } else { "contact" }),
        path.display(),
        summary.added,
        summary.updated,
        summary.unchanged,
        summary.skipped
    );
    if summary.merged > 0 {
        outln!(
            "{} merged with another record of the same person (shared e-mail, phone or LinkedIn URL).",
            count(summary.merged as u64, "contact")
        );
    }
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
    if summary.added + summary.updated + summary.merged > 0 {
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
    Ok(import::read_export(
        kind,
        path,
        address_book,
        me,
        &ImportOptions::default(),
    )?)
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
            // Only this contact's records are read: showing one contact costs the same
            // whatever the store holds.
            let conflicts = device.contact_conflicts(&contact.id())?;
            out!("{}", output::contact_details(&contact, &conflicts));
            let records = device.merged_records(&contact.id())?;
            if records.len() > 1 {
                outln!("  merged from {} records:", records.len());
                for record in &records {
                    outln!("    {record}");
                }
                outln!("  (`kith contacts unmerge ID` separates one again)");
            }
        }
        ContactsCommand::Merge { ids } => {
            let ids = ids
                .iter()
                .map(|id| device.resolve_id(id))
                .collect::<Result<Vec<_>, _>>()?;
            let survivor = device.merge_contacts(&ids).await?;
            outln!(
                "Merged {} into contact {survivor}.",
                count(ids.len() as u64, "contact")
            );
        }
        ContactsCommand::Unmerge { id } => {
            let id = device.resolve_id(&id)?;
            let (separated, rest) = device.unmerge_contact(&id).await?;
            outln!(
                "Separated contact {separated} from contact {rest}; they stay two people on every device."
            );
        }
        ContactsCommand::Duplicates { json } => {
            let suggestions = device.duplicate_suggestions()?;
            if json {
                return output::print_json(&suggestions);
            }
            if suggestions.is_empty() {
                outln!("No likely duplicates.");
                return Ok(());
            }
            for suggestion in &suggestions {
                outln!("{}:", suggestion.reason);
                for (id, name) in suggestion.ids.iter().zip(&suggestion.names) {
                    outln!("  {}  {name}", short(id));
                }
            }
            outln!("Merge one set with `kith contacts merge ID ID…`.");
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
                clear,
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
                RelayTrust::PinnedSha256(pin) => outln!("pin sha256: {}", hex::encode(pin)),
                RelayTrust::PinSet(pins) => {
                    outln!("pin sha256: {}", kith_client::net::pins_to_hex(pins))
                }
                RelayTrust::CaRoots(roots) => {
                    outln!(
                        "certificate: verified against {} CA certificates",
                        roots.len()
                    )
                }
                RelayTrust::SystemRoots => {
                    outln!("certificate: verified against the system's CA certificates")
                }
            }
        }
        RelayCommand::Set { relay, trust } => {
            let current = device.relay();
            if let Some(address) = &relay {
                check_address(address)?;
            }
            let trust = relay_trust(&trust)?;
            if relay.is_none() && trust.is_none() {
                return Err(usage(
                    "give the relay's new --relay HOST:PORT, its new --relay-cert-sha256 HEX or \
                     --relay-ca system|FILE, or both",
                ));
            }
            let target = RelayTarget {
                address: relay.unwrap_or(current.address),
                trust: trust.unwrap_or(current.trust),
            };
            let address = target.address.clone();
            device.set_relay(target).await?;
            outln!("This device now syncs with {address}; run `kith sync`.");
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
                "{} kith relay set --relay {} {}",
                if heal.move_notice_left {
                    "The other devices follow at their next sync. One that cannot reach the old \
                     relay any more:"
                } else {
                    "On every other device run:"
                },
                relay.relay,
                trust_flags(&relay.trust)
            );
        }
        RelayCommand::RegisterPushTarget { token } => {
            let result = device.register_push_target(token.as_bytes()).await;
            device.close().await;
            result.with_context(|| relay_context(&device))?;
            outln!(
                "The relay at {} wakes this device when another device pushes.",
                device.relay().address
            );
        }
        RelayCommand::UnregisterPushTarget => {
            let result = device.unregister_push_target().await;
            device.close().await;
            result.with_context(|| relay_context(&device))?;
            outln!("The relay no longer wakes this device.");
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

async fn sync(home: &Path, json: bool) -> Result<()> {
    let device = open(home)?;
    let spinner = progress::spinner("syncing");
    let report = device.sync().await;
    // The relay frees the connection at once instead of at its idle timeout.
    device.close().await;
    spinner.finish_and_clear();
    let report = report.with_context(|| relay_context(&device))?;
    if json {
        warn_stopped_streams(&report);
        return output::print_json(&account::SyncJson::new(&report, device.contact_count()?));
    }
    if let Some(moved) = &report.relay_moved {
        outln!("The account moved: {moved}.");
    }
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
    for warning in report.warnings() {
        eprintln!("warning: {warning}");
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
    if let Some(moved) = &report.relay_moved {
        text = format!("{moved}; {text}");
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

async fn watch(home: &Path, json: bool) -> Result<()> {
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
                        if json {
                            let line = account::SyncJson::new(&report, device.contact_count()?);
                            outln!("{}", serde_json::to_string(&line)?);
                        } else {
                            outln!("{}", describe_changes(&report));
                        }
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

async fn compact(home: &Path, json: bool) -> Result<()> {
    let device = open(home)?;
    let spinner = progress::spinner("compacting");
    let report = device.compact().await;
    device.close().await;
    spinner.finish_and_clear();
    let report = report
        .with_context(|| format!("cannot compact on the relay at {}", device.relay().address))?;
    if json {
        return output::print_json(&serde_json::json!({
            "snapshot_envelopes": report.snapshot_envelopes,
            "relay_bytes_before": report.relay_bytes_before,
            "relay_bytes_after": report.relay_bytes_after,
        }));
    }
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
            json,
        } => request_link(home, &relay, device_name, timeout, json).await,
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
            let target = device.resolve_device(&id)?;
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

async fn request_link(
    home: &Path,
    relay: &RelayArgs,
    device_name: Option<String>,
    timeout: u64,
    json: bool,
) -> Result<()> {
    let target = relay_target(relay)?;
    let name = device_name.unwrap_or_else(default_device_name);
    let keystore = new_keystore(home)?;
    let mut pending = PendingLink::new_with_keystore(home, target, &name, keystore.clone())?;
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
    if json {
        writeln!(stdout, "{}", serde_json::json!({ "code": pending.code() }))?;
    } else {
        writeln!(stdout, "{}", pending.code())?;
    }
    if stdout.is_terminal() && !json {
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
    warn_if_plain(&keystore);
    if json {
        outln!(
            "{}",
            serde_json::json!({
                "device_id": device.device_id().to_hex(),
                "account_id": device.account_id().to_hex(),
                "contacts": device.contact_count()?,
            })
        );
        return Ok(());
    }
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
    let keystore = new_keystore(home)?;
    let recovered =
        Device::recover_with_keystore(home, target, key.trim(), &name, keystore.clone()).await;
    spinner.finish_and_clear();
    let device = recovered.with_context(|| {
        format!(
            "cannot recover the account from the relay at {}",
            relay.relay
        )
    })?;
    warn_if_plain(&keystore);
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
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
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
