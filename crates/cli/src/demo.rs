//! `kith demo`: the whole story in one process, with no setup. A relay on loopback in a
//! temporary directory, device A importing the bundled sample exports (every person in them
//! is invented), device B linked by a code, edits on both, a concurrent edit kept as a
//! conflict, B revoked, and a scan proving the relay's files hold none of the contact data.

use std::collections::{BTreeSet, HashMap};
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use kith_client::import::{self, ImportOptions, ImportReport};
use kith_client::net::RelayTarget;
use kith_client::{ClientError, ContactFields, Device, PendingLink};
use kith_protocol::RecordId;
use kith_protocol::proto::ErrorCode;
use kith_relay::{Relay, RelayConfig};

use crate::output::{bytes, count, short};

const LINKEDIN_CSV: &[u8] = include_bytes!("../demo-data/Connections.csv");
const FACEBOOK_JSON: &[u8] = include_bytes!("../demo-data/your_friends.json");
const VCARD: &[u8] = include_bytes!("../demo-data/contacts.vcf");
const CHAT_DB: &[u8] = include_bytes!("../demo-data/chat.db");
const ADDRESS_BOOK: &[u8] = include_bytes!("../demo-data/AddressBook-v22.abcddb");

/// Needles shorter than this could match ciphertext by chance; none of the sample data is.
const MIN_NEEDLE: usize = 4;

/// Prints one line of the story: who acts, then what happened.
fn say(who: &str, what: impl AsRef<str>) {
    // A closed standard output does not stop the demo: its exit code still tells the result.
    let line = format!("{who:<9} {}", what.as_ref());
    let _ = writeln!(std::io::stdout(), "{}", line.trim_end());
}

/// The contact data a relay must never see: every name, e-mail address and phone number
/// imported or typed during the demo.
#[derive(Default)]
struct Secrets(BTreeSet<String>);

impl Secrets {
    fn add(&mut self, text: &str) {
        let text = text.trim();
        if text.len() >= MIN_NEEDLE {
            self.0.insert(text.to_owned());
            self.0.insert(text.to_lowercase());
        }
    }

    fn add_report(&mut self, report: &ImportReport) {
        for contact in &report.contacts {
            if let Some(name) = &contact.name {
                self.add(name);
            }
            for email in &contact.emails {
                self.add(&email.address);
            }
            for phone in &contact.phones {
                self.add(&phone.e164);
            }
        }
    }

    fn add_fields(&mut self, fields: &ContactFields) {
        for text in [&fields.name, &fields.email, &fields.phone]
            .into_iter()
            .flatten()
        {
            self.add(text);
        }
    }
}

/// Runs the demo; fails if any step does not turn out as the story says.
pub async fn run() -> Result<()> {
    let started = Instant::now();
    let dir = tempfile::tempdir().context("cannot create a temporary directory for the demo")?;
    let relay_dir = dir.path().join("relay");
    let relay = Relay::start(RelayConfig::loopback(&relay_dir))
        .await
        .context("cannot start the demo relay")?;
    let result = story(dir.path(), &relay_dir, &relay).await;
    let stopped = relay
        .shutdown()
        .await
        .context("the demo relay did not shut down cleanly");
    let scan = match result {
        Ok(secrets) => scan(&relay_dir, &secrets)?,
        Err(e) => return Err(e),
    };
    stopped?;
    outln!(
        "relay storage scan: {} files, {} bytes, {} of {} names/emails/phones found",
        scan.files,
        scan.bytes,
        scan.found.len(),
        scan.needles
    );
    if !scan.found.is_empty() {
        // Which files, not which strings: the demo prints no contact data in its failure either.
        let files: BTreeSet<&str> = scan.found.iter().map(String::as_str).collect();
        bail!(
            "the relay's files contain contact data in plaintext ({}); this is a privacy bug, please report it",
            files.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    outln!(
        "Done in {:.1} s; everything lived in a temporary directory that is now removed.",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn story(dir: &Path, relay_dir: &Path, relay: &kith_relay::RelayHandle) -> Result<Secrets> {
    let address = relay.local_addr().to_string();
    let pin = hex::encode(relay.cert_sha256());
    let target = RelayTarget::pinned(address.clone(), &pin)?;
    let mut secrets = Secrets::default();
    say(
        "relay",
        format!(
            "listening on {address} (QUIC), certificate sha256 {}…, data in a temp dir",
            &pin[..16]
        ),
    );

    // Device A: a new account, then the sample exports.
    let (a, _recovery_key) = Device::create(&dir.join("a"), target.clone(), "laptop", None).await?;
    say(
        "device A",
        format!(
            "\"laptop\" created account {} (its recovery key is not needed here)",
            short(&a.account_id().to_hex())
        ),
    );
    let imports = sample_imports(dir)?;
    for (label, report) in imports {
        secrets.add_report(&report);
        let s = a.import(report).await?;
        say(
            "device A",
            format!(
                "imported {label}: {} added, {} updated, {} unchanged, {} skipped",
                s.added, s.updated, s.unchanged, s.skipped
            ),
        );
    }
    let pushed = a.sync().await?;
    say(
        "device A",
        format!(
            "synced: pushed {}; it has {} contacts",
            count(pushed.pushed as u64, "envelope"),
            a.contacts()?.len()
        ),
    );

    // Device B joins with a link code that A approves.
    let pending = PendingLink::new(&dir.join("b"), target.clone(), "phone")?;
    let code = pending.code().to_owned();
    say(
        "device B",
        format!(
            "\"phone\" shows a link code ({} characters: its public keys and a one-time secret)",
            code.len()
        ),
    );
    let (b, approved) = tokio::join!(
        pending.complete(Duration::from_secs(60)),
        a.approve_link(&code)
    );
    let (b, approved) = (b?, approved?.device);
    ensure!(
        approved == b.device_id(),
        "A approved another device than B"
    );
    say(
        "device A",
        format!(
            "approved {}; B opened the sealed bundle and pulled {} contacts",
            short(&approved.to_hex()),
            b.contacts()?.len()
        ),
    );

    // Edits on both, then sync.
    let contacts = a.contacts()?;
    let (first, second) = match contacts.as_slice() {
        [first, second, ..] => (first.id(), second.id()),
        _ => bail!("the sample exports gave fewer than two contacts"),
    };
    let company = ContactFields {
        company: Some("Kith Labs".into()),
        ..Default::default()
    };
    a.edit_contact(&first, &company).await?;
    say(
        "device A",
        format!(
            "sets the company of {} to \"Kith Labs\"",
            name_of(&a, &first)
        ),
    );
    let ada = ContactFields {
        name: Some("Ada Lovelace".into()),
        email: Some("ada@analytical-engine.example".into()),
        phone: Some("+44 20 7946 0958".into()),
        company: None,
        note: Some("Met at the demo".into()),
    };
    secrets.add_fields(&ada);
    let ada_id = b.add_contact(&ada).await?;
    secrets.add(
        &b.contact(&ada_id)?
            .phones()
            .first()
            .map(|p| p.e164.clone())
            .unwrap_or_default(),
    );
    say(
        "device B",
        "adds Ada Lovelace, with an e-mail, a phone and a private note",
    );
    a.sync().await?;
    b.sync().await?;
    a.sync().await?;
    ensure!(
        a.contact(&ada_id).is_ok(),
        "A did not receive B's new contact"
    );
    ensure!(
        b.contact(&first)?.company() == Some("Kith Labs"),
        "B did not receive A's edit"
    );
    say(
        "both",
        format!(
            "synced: A sees {} contacts, B sees {}, with each other's edits",
            a.contacts()?.len(),
            b.contacts()?.len()
        ),
    );

    // A concurrent edit of one field, made offline on both devices.
    let on_a = ContactFields {
        company: Some("Analytical Engines Ltd".into()),
        ..Default::default()
    };
    let on_b = ContactFields {
        company: Some("Difference Engines plc".into()),
        ..Default::default()
    };
    a.edit_contact(&second, &on_a).await?;
    b.edit_contact(&second, &on_b).await?;
    say(
        "offline",
        format!(
            "A and B both change the company of {}, without syncing",
            name_of(&a, &second)
        ),
    );
    a.sync().await?;
    b.sync().await?;
    a.sync().await?;
    let (on_a_view, on_b_view) = (a.contact(&second)?, b.contact(&second)?);
    ensure!(
        on_a_view.company() == on_b_view.company(),
        "A and B did not converge on the edited company"
    );
    let conflict = a
        .conflicts()?
        .into_iter()
        .find(|c| c.id == second.to_hex() && c.field == "company")
        .context("the merge did not report the concurrent edit as a conflict")?;
    ensure!(
        b.conflicts()?
            .iter()
            .any(|c| c.id == conflict.id && c.field == "company"),
        "B did not report the concurrent edit as a conflict"
    );
    say(
        "both",
        format!(
            "synced: both show {:?} and keep {:?} as a conflict",
            conflict.winner, conflict.other
        ),
    );

    // Revoke B: new roster, new account key, new epoch sealed only to A.
    let epoch_before = a.current_epoch();
    a.revoke(&b.device_id()).await?;
    let katherine = ContactFields {
        name: Some("Katherine Johnson".into()),
        email: Some("katherine@orbit.example".into()),
        ..Default::default()
    };
    secrets.add_fields(&katherine);
    let katherine_id = a.add_contact(&katherine).await?;
    a.sync().await?;
    say(
        "device A",
        format!(
            "revokes B (epoch {epoch_before} -> {}), then adds Katherine Johnson and syncs",
            a.current_epoch()
        ),
    );
    match b.sync().await {
        Err(e) if is_revoked(&e) => say(
            "device B",
            format!("sync refused: {}", ClientError::Revoked),
        ),
        Err(other) => bail!("B's sync after revocation failed, but not as revoked: {other}"),
        Ok(_) => bail!("B could still sync after it was revoked"),
    }
    ensure!(
        !b.has_epoch(a.current_epoch()),
        "B holds the key of the epoch started after its revocation"
    );
    ensure!(
        b.contact(&katherine_id).is_err(),
        "B received a contact written after its revocation"
    );
    say(
        "device B",
        format!(
            "holds no key for epoch {} and never got Katherine Johnson: {} contacts, frozen",
            a.current_epoch(),
            b.contacts()?.len()
        ),
    );

    // What each side holds.
    let usage = a.usage().await?;
    let (a_files, a_bytes) = dir_size(&dir.join("a"))?;
    let (relay_files, relay_bytes) = dir_size(relay_dir)?;
    say("", "");
    say(
        "device A",
        format!(
            "sees {} contacts, {}; local store {} in {a_files} files, encrypted",
            a.contacts()?.len(),
            count(a.conflicts()?.len() as u64, "conflict"),
            bytes(a_bytes)
        ),
    );
    say(
        "device B",
        format!("sees {} contacts (revoked)", b.contacts()?.len()),
    );
    say(
        "relay",
        format!(
            "stores {}, {} for the account, {}; its data dir: {} in {relay_files} files",
            count(usage.envelopes, "envelope"),
            bytes(usage.bytes_used),
            count(usage.devices, "device"),
            bytes(relay_bytes)
        ),
    );
    say(
        "",
        "ids, sizes and ciphertext only: no names, e-mails, phones, notes or device names",
    );
    drop((a, b));
    Ok(secrets)
}

/// Whether `error` says this device was removed: found by the client in the roster it
/// fetched, or refused by the relay on a connection opened before the removal.
fn is_revoked(error: &ClientError) -> bool {
    match error {
        ClientError::Revoked => true,
        ClientError::Net(net) => {
            matches!(
                net.relay_code(),
                Some(ErrorCode::DeviceRemoved | ErrorCode::UnknownDevice)
            )
        }
        _ => false,
    }
}

fn name_of(device: &Device, id: &RecordId) -> String {
    device
        .contact(id)
        .ok()
        .and_then(|c| c.name().map(str::to_owned))
        .unwrap_or_else(|| short(&id.to_hex()).to_owned())
}

/// The bundled exports, parsed: LinkedIn, Facebook, vCard, and iMessage with the address book
/// (the SQLite databases are written to the temporary directory first).
fn sample_imports(dir: &Path) -> Result<Vec<(&'static str, ImportReport)>> {
    let opts = ImportOptions::default();
    let chat_db = dir.join("chat.db");
    let address_book = dir.join("AddressBook-v22.abcddb");
    std::fs::write(&chat_db, CHAT_DB).context("cannot write the sample chat.db")?;
    std::fs::write(&address_book, ADDRESS_BOOK).context("cannot write the sample address book")?;
    Ok(vec![
        (
            "LinkedIn Connections.csv",
            import::linkedin::import_bytes(LINKEDIN_CSV, &opts)?,
        ),
        (
            "Facebook your_friends.json",
            import::facebook::import_bytes(FACEBOOK_JSON, &opts)?,
        ),
        (
            "vCard contacts.vcf",
            import::vcard::import_bytes(VCARD, &opts)?,
        ),
        (
            "iMessage chat.db + address book",
            import::imessage::import(&chat_db, Some(&address_book), &opts)?,
        ),
    ])
}

/// Files and bytes under `dir`.
fn dir_size(dir: &Path) -> Result<(usize, u64)> {
    let mut files = 0;
    let mut total = 0;
    for path in walk(dir)? {
        files += 1;
        total += std::fs::metadata(&path)
            .with_context(|| format!("cannot stat {}", path.display()))?
            .len();
    }
    Ok((files, total))
}

/// Every regular file under `dir`.
fn walk(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?
        {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// What the storage scan found.
struct Scan {
    files: usize,
    bytes: u64,
    needles: usize,
    /// Relay files (relative paths) holding any needle.
    found: Vec<String>,
}

/// Reads every file under `dir` and looks for every secret as bytes.
fn scan(dir: &Path, secrets: &Secrets) -> Result<Scan> {
    let needles: Vec<&[u8]> = secrets.0.iter().map(|s| s.as_bytes()).collect();
    let finder = Finder::new(&needles);
    let mut scan = Scan {
        files: 0,
        bytes: 0,
        needles: needles.len(),
        found: Vec::new(),
    };
    for path in walk(dir)? {
        let content =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        scan.files += 1;
        scan.bytes += content.len() as u64;
        if finder.any_in(&content) {
            scan.found.push(
                path.strip_prefix(dir)
                    .unwrap_or(&path)
                    .display()
                    .to_string(),
            );
        }
    }
    Ok(scan)
}

/// Finds any of many needles in one pass: needles are indexed by their first four bytes.
struct Finder<'a> {
    by_prefix: HashMap<[u8; MIN_NEEDLE], Vec<&'a [u8]>>,
}

impl<'a> Finder<'a> {
    fn new(needles: &[&'a [u8]]) -> Self {
        let mut by_prefix: HashMap<[u8; MIN_NEEDLE], Vec<&'a [u8]>> = HashMap::new();
        for needle in needles {
            if let Some(prefix) = needle.first_chunk::<MIN_NEEDLE>() {
                by_prefix.entry(*prefix).or_default().push(needle);
            }
        }
        Self { by_prefix }
    }

    fn any_in(&self, haystack: &[u8]) -> bool {
        haystack
            .windows(MIN_NEEDLE)
            .enumerate()
            .any(|(at, window)| {
                let Ok(prefix) = <[u8; MIN_NEEDLE]>::try_from(window) else {
                    return false;
                };
                self.by_prefix.get(&prefix).is_some_and(|candidates| {
                    candidates
                        .iter()
                        .any(|needle| haystack[at..].starts_with(needle))
                })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finder_finds_any_needle_and_nothing_else() {
        let needles: Vec<&[u8]> = vec![b"Ada Lovelace", b"+442079460958", b"grace@navy.example"];
        let finder = Finder::new(&needles);
        assert!(finder.any_in(b"xx\x00Ada Lovelace\x01"));
        assert!(finder.any_in(b"+442079460958"));
        assert!(!finder.any_in(b"Ada Lovelac"));
        assert!(!finder.any_in(b"grace@navy.exampl"));
        assert!(!finder.any_in(b""));
    }

    #[test]
    fn sample_exports_parse() {
        let dir = tempfile::tempdir().expect("temp dir");
        let imports = sample_imports(dir.path()).expect("sample exports parse");
        assert_eq!(imports.len(), 4);
        assert!(
            imports
                .iter()
                .all(|(_, report)| !report.contacts.is_empty())
        );
    }
}
