//! The command line, as `clap` parses it. The commands and flags are a contract (issue 4 and
//! `crates/cli/README.md`): tests and docs use exactly these.

use std::path::PathBuf;
use std::sync::LazyLock;

use clap::{Args, Parser, Subcommand, ValueEnum};
use kith_client::ClearField;
use kith_client::import::Region;

/// `kith --version`: the release and the protocol it speaks (docs/PROTOCOL.md §8.1).
static VERSION: LazyLock<String> =
    LazyLock::new(|| kith_protocol::version_line(env!("CARGO_PKG_VERSION")));

/// Kith: your contacts, end-to-end encrypted, synced through a relay that sees only ciphertext.
#[derive(Debug, Parser)]
#[command(name = "kith", version = VERSION.as_str(), about, long_about = None)]
pub struct Cli {
    /// Where this device keeps its keys and encrypted store (default: the platform data
    /// directory, e.g. ~/.local/share/kith).
    #[arg(long, global = true, env = "KITH_HOME", value_name = "DIR")]
    pub home: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a new account with this as its first device; prints the recovery key once.
    Init {
        /// The relay.
        #[command(flatten)]
        relay: RelayArgs,
        /// A name for this device, shown in `kith device list` (encrypted; the relay never sees it).
        #[arg(long, value_name = "NAME")]
        device_name: Option<String>,
        /// A registration token, if the relay admits new accounts by token only.
        #[arg(long, value_name = "T")]
        registration_token: Option<String>,
    },
    /// Import contacts from an export file.
    Import {
        /// What kind of export.
        #[arg(value_enum)]
        kind: ImportKind,
        /// The export file (Connections.csv, your_friends.json, chat.db, .vcf, .ics or a
        /// Takeout zip, .mbox, a Twitter archive zip).
        path: PathBuf,
        /// For `imessage`: the macOS Contacts database (AddressBook-v22.abcddb) that names
        /// phone numbers and e-mail addresses.
        #[arg(long, value_name = "PATH")]
        address_book: Option<PathBuf>,
        /// For `mail` (required) and `calendar`: one of your own e-mail addresses, which are
        /// never contacts (repeatable). A calendar defaults to its own address.
        #[arg(long = "me", value_name = "EMAIL")]
        me: Vec<String>,
        /// Print a JSON object instead of text (keys in crates/cli/README.md).
        #[arg(long)]
        json: bool,
    },
    /// Recent meetings with their participants; marks those whose participants got no note
    /// since (time to take notes).
    Meetings {
        /// Only meetings that started on or after this day (YYYY-MM-DD, UTC).
        #[arg(long, value_name = "DATE")]
        since: Option<String>,
        /// Print a JSON array instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Manage imported sources.
    #[command(subcommand)]
    Sources(SourcesCommand),
    /// List, show, search, add, edit and delete contacts.
    #[command(subcommand)]
    Contacts(ContactsCommand),
    /// Push this device's changes and pull every other device's.
    Sync {
        /// Keep running and sync whenever another device pushes, until Ctrl-C.
        #[arg(long)]
        watch: bool,
        /// Print a JSON object instead of text (with --watch: one line per sync).
        #[arg(long)]
        json: bool,
    },
    /// Write a snapshot and drop this device's older history on the relay.
    Compact {
        /// Print a JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The account: what the relay holds of it, or delete it.
    #[command(subcommand)]
    Account(AccountCommand),
    /// Print a shell completion script (e.g. `kith completions bash > /etc/bash_completion.d/kith`).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Link, list and revoke devices.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Show, change or move the relay this account syncs with.
    #[command(subcommand)]
    Relay(RelayCommand),
    /// Restore the account on this (new) device from the recovery key.
    Recover {
        /// The relay.
        #[command(flatten)]
        relay: RelayArgs,
        /// The recovery key shown by `kith init` (XXXX-XXXX-…). `KITH_RECOVERY_KEY` keeps it
        /// out of the shell history.
        #[arg(
            long,
            value_name = "KEY",
            env = "KITH_RECOVERY_KEY",
            hide_env_values = true
        )]
        recovery_key: String,
        /// A name for this device.
        #[arg(long, value_name = "NAME")]
        device_name: Option<String>,
    },
    /// Export every contact.
    #[command(subcommand)]
    Export(ExportCommand),
    /// The recovery key: whether the relay's recovery bundle is current, or replace the key.
    #[command(subcommand)]
    Recovery(RecoveryCommand),
    /// Protect this device's key: encrypt it with a passphrase, or change the passphrase.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Run the whole story in one process: a relay on loopback, two devices, import, sync,
    /// conflict, revocation, and a scan of the relay's files for contact data.
    Demo,
}

/// Where the relay is and how to trust it.
#[derive(Debug, Clone, Args)]
pub struct RelayArgs {
    /// The relay's address.
    #[arg(long, value_name = "HOST:PORT")]
    pub relay: String,
    /// How to trust its certificate.
    #[command(flatten)]
    pub trust: TrustArgs,
}

/// How to trust the relay's certificate: a pin, or a CA (one of the two).
#[derive(Debug, Clone, Args)]
#[group(multiple = false)]
pub struct TrustArgs {
    /// The pin of the relay's key: the `key sha256` line `kith-relay` prints when it starts
    /// (64 hex characters; it survives certificate renewals with the same key). The
    /// `certificate sha256` of older releases is accepted too, and replaced by the key pin on
    /// the first sync. Several pins separated by commas: the current key and the next one.
    #[arg(long, value_name = "HEX", visible_alias = "relay-key-sha256")]
    pub relay_cert_sha256: Option<String>,
    /// Trust a relay whose certificate is signed by a CA instead of pinning it: `system` for
    /// the system's CA bundle (Let's Encrypt and the like), or a PEM file of CA certificates.
    /// The relay's address must then be a name (or IP address) its certificate is for.
    #[arg(long, value_name = "system|FILE")]
    pub relay_ca: Option<String>,
}

/// The export formats `kith import` reads: the client library's list, with its texts.
pub use kith_client::import::Export as ImportKind;

/// `kith sources …`.
#[derive(Debug, Subcommand)]
pub enum SourcesCommand {
    /// Remove everything one source contributed, on every device (after `kith sync`).
    Forget {
        /// The source.
        #[arg(value_enum)]
        source: SourceName,
    },
}

/// The sources `kith sources forget` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SourceName {
    /// LinkedIn connections.
    Linkedin,
    /// Facebook friends.
    Facebook,
    /// iMessage statistics.
    Imessage,
    /// macOS address-book names.
    AddressBook,
    /// vCard imports.
    Vcard,
    /// Calendar meetings.
    Calendar,
    /// Mail header statistics.
    Mail,
    /// Twitter follows.
    Twitter,
}

/// `kith contacts …`.
#[derive(Debug, Subcommand)]
pub enum ContactsCommand {
    /// Every contact, by name.
    List {
        /// Print a JSON array of contacts instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One contact in full.
    Show {
        /// A contact id, or a unique prefix of it (at least 4 hex digits).
        id: String,
        /// Print a JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Contacts whose name, e-mail, phone, company or note contains QUERY (ignoring case and
    /// accents).
    Search {
        /// What to look for.
        query: String,
        /// Print a JSON array of contacts instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Add a contact.
    Add {
        /// Full name.
        #[arg(long, value_name = "N")]
        name: String,
        /// Fields besides the name.
        #[command(flatten)]
        fields: FieldArgs,
    },
    /// Change fields of a contact (fields not given stay as they are).
    Edit {
        /// A contact id, or a unique prefix of it.
        id: String,
        /// New full name.
        #[arg(long, value_name = "N")]
        name: Option<String>,
        /// Fields besides the name.
        #[command(flatten)]
        fields: FieldArgs,
        /// Remove a field's value (repeatable): `emails` and `phones` remove every address or
        /// number; with --email or --phone in the same edit, they are replaced by the new one.
        #[arg(long, value_enum, value_name = "FIELD")]
        clear: Vec<ClearField>,
        /// Remove this e-mail address (repeatable).
        #[arg(long, value_name = "E")]
        remove_email: Vec<String>,
        /// Remove this phone number, in any format --phone accepts (repeatable).
        #[arg(long, value_name = "P")]
        remove_phone: Vec<String>,
    },
    /// Delete a contact on every device.
    Delete {
        /// A contact id, or a unique prefix of it.
        id: String,
    },
    /// Concurrent edits that the merge kept, with both values.
    Conflicts {
        /// Print a JSON array instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Merge contacts that are the same person into one, on every device (undo with
    /// `unmerge`).
    Merge {
        /// Two or more contact ids, or unique prefixes of them.
        #[arg(required = true, num_args = 2.., value_name = "ID")]
        ids: Vec<String>,
    },
    /// Separate a record from the contact it was merged into (the ids are listed by
    /// `contacts show`); the two are then kept apart as two people on every device.
    Unmerge {
        /// The id (or a unique prefix) of the record to separate.
        id: String,
    },
    /// Contacts that look like one person but share no e-mail, phone or LinkedIn URL (same
    /// name, or name variants such as Bob and Robert), with why.
    Duplicates {
        /// Print a JSON array instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// The optional fields of `contacts add` and `contacts edit`.
#[derive(Debug, Clone, Args)]
pub struct FieldArgs {
    /// An e-mail address (added beside any the contact has).
    #[arg(long, value_name = "E")]
    pub email: Option<String>,
    /// A phone number (added beside any the contact has): international (+44 20 7946 0958)
    /// or national for --region (020 7946 0958 with --region GB).
    #[arg(long, value_name = "P")]
    pub phone: Option<String>,
    /// The region of phone numbers written without a country code, as a two-letter code
    /// (GB, DE, FR …). Default: the territory of the locale (LC_ALL, LC_TELEPHONE or LANG,
    /// e.g. en_GB.UTF-8 → GB), else US.
    #[arg(long, env = "KITH_REGION", value_name = "CC", value_parser = parse_region)]
    pub region: Option<Region>,
    /// Company.
    #[arg(long, value_name = "C")]
    pub company: Option<String>,
    /// A private note.
    #[arg(long, value_name = "T")]
    pub note: Option<String>,
}

fn parse_region(text: &str) -> Result<Region, String> {
    text.parse().map_err(|_| {
        format!("'{text}' is not a region: give a two-letter ISO 3166 code such as GB, DE or US")
    })
}

/// `kith relay …`.
#[derive(Debug, Subcommand)]
pub enum RelayCommand {
    /// Print the relay this device syncs with and how its certificate is trusted.
    Show,
    /// Point this device at another relay (after another device moved the account there, for
    /// a device that cannot reach the old relay). Nothing is uploaded until the next sync.
    Set {
        /// The relay's new address (the address stays when only the trust changes).
        #[arg(long, value_name = "HOST:PORT")]
        relay: Option<String>,
        /// How to trust its certificate (the trust stays when only the address changes).
        #[command(flatten)]
        trust: TrustArgs,
    },
    /// Move the account to another relay: create it there, upload everything this device
    /// holds, and sync with it from now on. Other devices follow with `kith relay set`.
    Move {
        /// The new relay.
        #[command(flatten)]
        relay: RelayArgs,
        /// A registration token, if the new relay admits new accounts by token only.
        #[arg(long, value_name = "T")]
        registration_token: Option<String>,
    },
    /// Ask the relay to wake this device through its push gateway whenever another device
    /// pushes: registers the token an app got from the gateway (the relay sends the gateway
    /// that token and nothing else; see crates/ffi/README.md "Wake-up notifications").
    RegisterPushTarget {
        /// The gateway's token for this device (its UTF-8 bytes are sent, 1 to 1024).
        #[arg(
            long,
            value_name = "TOKEN",
            env = "KITH_PUSH_TOKEN",
            hide_env_values = true
        )]
        token: String,
    },
    /// Stop the relay waking this device.
    UnregisterPushTarget,
    /// Create the account again on a relay that lost it and admits new accounts by token only
    /// (on an open relay, `kith sync` does this by itself).
    Rebuild {
        /// A registration token from the relay's operator (`kith-relay token create`).
        #[arg(long, value_name = "T")]
        registration_token: Option<String>,
    },
}

/// `kith device …`.
#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// On a new device: print a link code (and a QR code on a terminal), then wait for a
    /// device of the account to approve it.
    Request {
        /// The relay.
        #[command(flatten)]
        relay: RelayArgs,
        /// A name for this device.
        #[arg(long, value_name = "NAME")]
        device_name: Option<String>,
        /// How long to wait for the approval, in seconds.
        #[arg(long, value_name = "SECS", default_value_t = 300)]
        timeout: u64,
        /// Print JSON lines instead of text: the link code first, the result once linked.
        #[arg(long)]
        json: bool,
    },
    /// On a device of the account: approve a new device by its link code.
    Approve {
        /// The link code the new device printed.
        code: String,
    },
    /// The devices of this account.
    List {
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove a device: it can no longer read or write anything new.
    Revoke {
        /// A device id, or a unique prefix of it (see `kith device list`).
        id: String,
    },
}

/// `kith recovery …`.
#[derive(Debug, Subcommand)]
pub enum RecoveryCommand {
    /// Whether the relay's recovery bundle is current for the account's key and epoch, so
    /// that the recovery key restores everything written so far.
    Status {
        /// Print a JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Replace the recovery key (lost, or seen by someone else): prints the new key once; the
    /// old one opens nothing written afterwards.
    Rotate,
}

/// `kith key …`.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Encrypt the device key file with a new passphrase (from `KITH_NEW_PASSPHRASE`, else
    /// asked twice on a terminal). An encrypted file is opened with the current passphrase
    /// (`KITH_PASSPHRASE`) first, so this also changes the passphrase.
    Encrypt,
}

/// `kith export …`.
#[derive(Debug, Subcommand)]
pub enum ExportCommand {
    /// Every contact as a vCard 4.0 file.
    Vcard {
        /// The file to write (`-` for standard output).
        path: PathBuf,
    },
    /// Everything this device holds — every contact with its notes, sources and history, and
    /// kept conflicts — as one JSON document (format in crates/cli/README.md).
    Json {
        /// The file to write (`-` for standard output).
        path: PathBuf,
    },
}

/// `kith account …`.
#[derive(Debug, Subcommand)]
pub enum AccountCommand {
    /// The account id, its devices, and what the relay stores of it against its quotas.
    Info {
        /// Print a JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Delete the account on the relay (every device loses it), then this device's store and
    /// key. Asks for confirmation on a terminal; elsewhere needs --yes.
    Delete {
        /// Do not ask (needed when not on a terminal).
        #[arg(long)]
        yes: bool,
        /// Write `kith export json` to this file first, and delete only if that worked.
        #[arg(long, value_name = "PATH")]
        export: Option<PathBuf>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
