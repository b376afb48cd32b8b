//! `kith-relay`: serve, create registration tokens, print stats, measure load.
#![forbid(unsafe_code)]

mod bench;

/// mimalloc instead of glibc's allocator: pull pages and push frames are 0.1–2 MiB buffers
/// that glibc returns to the kernel and faults back in on every request (page faults were a
/// fifth of the relay's pull CPU and of the load tool's); mimalloc reuses them.
#[cfg(not(feature = "dhat-heap"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::IsTerminal;

/// With `--features dhat-heap`: every allocation recorded with its call stack (slow; for
/// finding what the relay keeps, not for measuring speed).
#[cfg(feature = "dhat-heap")]
#[global_allocator]
static ALLOCATOR: dhat::Alloc = dhat::Alloc;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use kith_relay::config::StoreLocation;
use kith_relay::store::{PostgresStore, SledStore, Store};
use kith_relay::{Relay, RelayConfig, Settings};
use sha2::{Digest, Sha256};

/// `kith-relay --version`: the release and the protocol it speaks (docs/PROTOCOL.md §8.1).
static VERSION: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| kith_protocol::version_line(env!("CARGO_PKG_VERSION")));

/// Kith's relay: stores end-to-end-encrypted envelopes per device and cannot read them.
#[derive(Debug, Parser)]
#[command(version = VERSION.as_str(), about)]
struct Cli {
    /// Log lines as text for people, or as one JSON object per line for log collectors
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "KITH_RELAY_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// How log lines are written (to standard error; the level comes from `RUST_LOG`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// `2026-12-06T17:00:00Z  INFO kith_relay::server: relay started local_addr=…`
    Text,
    /// `{"timestamp":"…","level":"INFO","fields":{"message":"relay started",…},"target":…}`
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve on QUIC. Flags override the environment (KITH_RELAY_<KEY>), which overrides the
    /// TOML file given with --config (same key names, with underscores); all override the
    /// defaults shown.
    Serve {
        /// TOML configuration file
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        settings: Box<Settings>,
    },
    /// Check that a relay answers a real request over QUIC (a challenge); exit 0 if it does,
    /// 1 if not. For container and service-manager health checks.
    Health {
        /// The relay's address
        #[arg(long, value_name = "HOST:PORT")]
        relay: String,
        /// SHA-256 of the relay's certificate, as `serve` prints it
        #[arg(long, value_name = "HEX")]
        cert_sha256: String,
        /// Give up after this many seconds
        #[arg(long, default_value_t = 10)]
        timeout_secs: u64,
    },
    /// Configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Registration tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Print accounts, device streams, envelopes and bytes stored (with sled, the relay must
    /// be stopped; PostgreSQL may be read while relays run).
    Stats {
        /// Data directory
        #[arg(long, default_value = kith_relay::config::DEFAULT_DATA_DIR)]
        data: PathBuf,
        /// `sled` (in --data) or a PostgreSQL connection string [default: sled]
        #[arg(long, env = "KITH_RELAY_STORE", hide_env_values = true)]
        store: Option<StoreLocation>,
    },
    /// Apply the PostgreSQL schema migrations this release needs (`serve` also applies them at
    /// start-up); prints the schema version.
    Migrate {
        /// PostgreSQL connection string
        #[arg(long, env = "KITH_RELAY_STORE", hide_env_values = true)]
        store: StoreLocation,
    },
    /// Copy a relay's whole store into another, empty one (sled to PostgreSQL or back), then
    /// verify every roster, stream head and stream. Stop the relays first.
    MigrateStore {
        /// Source: a sled data directory or a PostgreSQL connection string
        #[arg(long)]
        from: String,
        /// Destination: a sled data directory or a PostgreSQL connection string
        #[arg(long)]
        to: String,
    },
    /// Print the pins of a certificate, as `serve` prints them: `certificate sha256` (the whole
    /// certificate) and `key sha256` (its public key: what devices pin). For the pin of a next
    /// key before rotating to it, or for a container's health check.
    Pin {
        /// PEM certificate file (the first certificate of a chain) [default: the self-signed
        /// cert.pem in --data]
        #[arg(long)]
        cert: Option<PathBuf>,
        /// Data directory
        #[arg(long, default_value = kith_relay::config::DEFAULT_DATA_DIR)]
        data: PathBuf,
    },
    /// Load test: start a relay (or use --relay), push and pull through real QUIC connections.
    Bench(Box<bench::BenchArgs>),
    /// Online backup of a running relay into DIR (a new directory): writes wait while the
    /// store is flushed and copied; DIR can then be served as a data directory.
    Backup {
        /// Where to write the backup (must not exist yet)
        dir: PathBuf,
        /// Data directory of the running relay
        #[arg(long, default_value = kith_relay::config::DEFAULT_DATA_DIR)]
        data: PathBuf,
    },
    /// Administer the running relay through its control socket (DATA/control.sock, open to
    /// the relay's user only): accounts, quotas, tokens, live statistics.
    Admin {
        /// Data directory of the running relay
        #[arg(long, global = true, default_value = kith_relay::config::DEFAULT_DATA_DIR)]
        data: PathBuf,
        /// Print the relay's answer as JSON
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Accounts: list, show, suspend, unsuspend, set quotas, delete.
    #[command(subcommand)]
    Accounts(AccountsCommand),
    /// Registration tokens: create, list, revoke.
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Live totals of the running relay (the store, connections, subscriptions).
    Stats,
}

#[derive(Debug, Subcommand)]
enum AccountsCommand {
    /// Every account: id, devices, bytes stored, last day a device was active.
    List,
    /// One account: usage, quotas, roster version, suspension.
    Show {
        /// Account id (hex) or a unique prefix of at least 8 characters
        id: String,
    },
    /// Refuse every request of the account's devices (ACCOUNT_SUSPENDED) until unsuspended.
    Suspend {
        /// Account id (hex) or a unique prefix of at least 8 characters
        id: String,
    },
    /// Serve a suspended account again.
    Unsuspend {
        /// Account id (hex) or a unique prefix of at least 8 characters
        id: String,
    },
    /// Set the account's own quotas (`default`: the relay's limit again).
    Quota {
        /// Account id (hex) or a unique prefix of at least 8 characters
        id: String,
        /// Bytes the account may store (envelopes and sealed keys), or `default`
        #[arg(long, value_name = "N|default")]
        bytes: Option<String>,
        /// Devices the account may have, or `default`
        #[arg(long, value_name = "N|default")]
        devices: Option<String>,
    },
    /// Delete the account and everything it stored; its devices cannot create it again.
    Delete {
        /// Account id (hex) or a unique prefix of at least 8 characters
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum TokensCommand {
    /// Create a single-use registration token and print it.
    Create,
    /// The unused tokens, by id (the start of the token's SHA-256; the relay keeps no token).
    List,
    /// Revoke an unused token, by id (from `tokens list`) or the token itself.
    Revoke {
        /// Token id or token
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Read FILE as `serve --config FILE` would (with the KITH_RELAY_* environment and any
    /// flags given here applied), check every setting, print the result; exit 1 if invalid.
    Check {
        /// TOML configuration file
        file: PathBuf,
        #[command(flatten)]
        settings: Box<Settings>,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a single-use registration token and print it (works while the relay runs).
    Create {
        /// Data directory of the relay
        #[arg(long, default_value = kith_relay::config::DEFAULT_DATA_DIR)]
        data: PathBuf,
        /// With PostgreSQL, the token goes into the database, for every relay on it
        #[arg(long, env = "KITH_RELAY_STORE", hide_env_values = true)]
        store: Option<StoreLocation>,
    },
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        // Colour codes only for a person at a terminal, never into a log file or journald.
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        // One object per line; the relay's spans carry nothing worth repeating on each line.
        LogFormat::Json => builder
            .json()
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}

/// mimalloc's option that commits a whole 1 GiB arena up front on Linux: measured, it more
/// than doubled the relay's resident memory (1,000 idle authenticated connections: 129 MB
/// with it, 63 MB without, debug build; after a push and pull of 20,000 envelopes 87 → 37 MB)
/// and bought no speed (relay CPU per pushed and pulled envelope equal or lower without it:
/// BENCHMARKS.md, "Realtime and idle memory"). mimalloc reads it from the environment when the
/// process starts, and `unsafe` (`mi_option_set`, `std::env::set_var`) is forbidden here, so
/// `serve` starts itself again with it set (same process id: `exec`), unless the operator set it.
const MIMALLOC_ARENA_EAGER_COMMIT: &str = "MIMALLOC_ARENA_EAGER_COMMIT";

fn reexec_with_lazy_arenas() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os(MIMALLOC_ARENA_EAGER_COMMIT).is_some()
        || std::env::args_os().nth(1).as_deref() != Some(std::ffi::OsStr::new("serve"))
    {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let error = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(MIMALLOC_ARENA_EAGER_COMMIT, "0")
        .exec();
    // Only reached when exec failed: serve as is, with eager arenas.
    eprintln!(
        "note: could not restart with {MIMALLOC_ARENA_EAGER_COMMIT}=0 ({error}); serving anyway"
    );
}

fn main() -> ExitCode {
    #[cfg(not(feature = "dhat-heap"))]
    reexec_with_lazy_arenas();
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(run()),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let result = match cli.command {
        Command::Serve { config, settings } => serve(config, *settings).await,
        Command::Health {
            relay,
            cert_sha256,
            timeout_secs,
        } => health(&relay, &cert_sha256, Duration::from_secs(timeout_secs)).await,
        Command::Config {
            command: ConfigCommand::Check { file, settings },
        } => config_check(&file, *settings),
        Command::Token {
            command: TokenCommand::Create { data, store },
        } => create_token(&data, store.as_ref()),
        Command::Stats { data, store } => stats(&data, store.as_ref()),
        Command::Migrate { store } => migrate(&store),
        Command::MigrateStore { from, to } => migrate_store(&from, &to),
        Command::Backup { dir, data } => kith_relay::control::request_backup(&data, &dir)
            .await
            .map(|()| println!("Backup written to {}", dir.display()))
            .map_err(|e| anyhow::anyhow!("backup failed: {e}")),
        Command::Bench(args) => bench::run(*args).await,
        Command::Pin { cert, data } => {
            print_pins(&cert.unwrap_or_else(|| data.join(kith_relay::tls::SELF_SIGNED_CERT)))
        }
        Command::Admin {
            data,
            json,
            command,
        } => admin(&data, json, command).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The error and its causes on one line; never a backtrace, whatever RUST_BACKTRACE
        // says: these are routine errors (a bad flag value, a port in use), not bugs.
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Refuses a directory that is not a relay's data directory (one `kith-relay serve` has run
/// on), instead of creating an empty one: a mistyped --data would otherwise print a token the
/// relay never sees, or statistics of nothing.
fn require_data_dir(data: &Path) -> Result<()> {
    if !kith_relay::db_dir(data).is_dir() {
        anyhow::bail!(
            "{} is not a kith-relay data directory (it has no db/): give the --data of \
             `kith-relay serve` (default {}), and start the relay on it once first",
            data.display(),
            kith_relay::config::DEFAULT_DATA_DIR
        );
    }
    Ok(())
}

/// The configuration `serve` runs with: flags and environment (parsed by clap) over the file,
/// over the defaults.
fn load_config(config_file: Option<&Path>, flags: Settings) -> Result<RelayConfig> {
    let file = match config_file {
        Some(path) => Settings::from_toml_file(path)?,
        None => Settings::default(),
    };
    Ok(flags.or(file).resolve()?)
}

/// `config check FILE`: the resolved configuration, or why it is not one.
fn config_check(file: &Path, flags: Settings) -> Result<()> {
    let config = load_config(Some(file), flags)?;
    println!("{}: valid", file.display());
    println!("listen {}", config.listen);
    println!("data {}", config.data_dir.display());
    println!("store {:?}", config.store);
    println!("registration {:?}", config.registration);
    match config.metrics_listen {
        Some(addr) => println!("metrics_listen {addr}"),
        None => println!("metrics_listen off"),
    }
    if let (Some(cert), Some(key)) = (&config.cert, &config.key) {
        for path in [cert, key] {
            std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
        }
        println!("cert {}", cert.display());
    }
    println!("limits {:?}", config.bounds);
    Ok(())
}

/// `health`: one challenge answered over QUIC, within `timeout`.
async fn health(relay: &str, cert_sha256: &str, timeout: Duration) -> Result<()> {
    let pin: [u8; 32] = hex::decode(cert_sha256.trim())
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .context("--cert-sha256 must be 64 hex digits")?;
    let check = async {
        let addr = tokio::net::lookup_host(relay)
            .await
            .with_context(|| format!("resolving {relay}"))?
            .next()
            .with_context(|| format!("{relay} resolves to no address"))?;
        let client = kith_relay::client::RelayClient::connect(addr, pin)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        client
            .challenge()
            .await
            .with_context(|| format!("asking {addr} for a challenge"))?;
        client.close().await;
        anyhow::Ok(addr)
    };
    let addr = tokio::time::timeout(timeout, check)
        .await
        .map_err(|_| anyhow::anyhow!("{relay} did not answer within {timeout:?}"))??;
    println!("ok: the relay at {addr} answered");
    Ok(())
}

async fn serve(config_file: Option<PathBuf>, flags: Settings) -> Result<()> {
    let config = load_config(config_file.as_deref(), flags)?;
    #[cfg(feature = "dhat-heap")]
    let profiler = dhat::Profiler::builder()
        .file_name(format!("dhat-heap-{}.json", std::process::id()))
        .build();
    let registration = config.registration;
    let relay = Relay::start(config).await.context("starting the relay")?;
    // Listening for SIGHUP from before the start-up lines: a reload asked as soon as they are
    // printed must not meet SIGHUP's default action (terminate).
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    println!("listening on {}", relay.local_addr());
    // Scripts read this line: it stays. Devices pin the next one, which a renewal keeps.
    println!("certificate sha256 {}", hex::encode(relay.cert_sha256()));
    println!("key sha256 {}", hex::encode(relay.key_sha256()));
    println!("registration {registration:?}");
    if let Some(addr) = relay.metrics_addr() {
        println!("metrics on http://{addr}/metrics");
    }
    tokio::spawn(reload_on_hangup(hangup, relay.certificate()));
    let trigger = relay.shutdown_trigger();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received");
        // The profile ends here, while the relay still holds everything it held.
        #[cfg(feature = "dhat-heap")]
        drop(profiler);
        let _ = trigger.send(true);
    });
    relay.wait().await?;
    Ok(())
}

fn print_pins(cert: &Path) -> Result<()> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let first = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .next()
        .with_context(|| format!("no certificate in {}", cert.display()))?
        .with_context(|| format!("reading {}", cert.display()))?;
    let key = kith_relay::tls::key_sha256(&first)
        .with_context(|| format!("the certificate in {} cannot be parsed", cert.display()))?;
    println!(
        "certificate sha256 {}",
        hex::encode(kith_relay::tls::fingerprint(&first))
    );
    println!("key sha256 {}", hex::encode(key));
    Ok(())
}

/// `SIGHUP` reads the certificate and key files again (after a renewal); the relay goes on
/// serving, and established connections are untouched.
async fn reload_on_hangup(
    hangup: std::io::Result<tokio::signal::unix::Signal>,
    certificate: kith_relay::CertificateReloader,
) {
    let mut hangup = match hangup {
        Ok(hangup) => hangup,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP: certificates reload only when their files change");
            return;
        }
    };
    while hangup.recv().await.is_some() {
        match certificate.reload("SIGHUP") {
            Ok(pins) => {
                println!("certificate sha256 {}", hex::encode(pins.cert_sha256));
                println!("key sha256 {}", hex::encode(pins.key_sha256));
            }
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: the certificate cannot be reloaded; keeping the current one")
            }
        }
    }
}

/// `kith-relay admin …`: one request to the running relay, its answer printed.
async fn admin(data: &Path, json: bool, command: AdminCommand) -> Result<()> {
    let (line, shape) = match &command {
        AdminCommand::Accounts(AccountsCommand::List) => (
            "accounts list".to_string(),
            Shape::Table(&["id", "devices", "bytes", "last_active_day"]),
        ),
        AdminCommand::Accounts(AccountsCommand::Show { id }) => {
            (format!("accounts show {id}"), Shape::Fields)
        }
        AdminCommand::Accounts(AccountsCommand::Suspend { id }) => {
            (format!("accounts suspend {id}"), Shape::Fields)
        }
        AdminCommand::Accounts(AccountsCommand::Unsuspend { id }) => {
            (format!("accounts unsuspend {id}"), Shape::Fields)
        }
        AdminCommand::Accounts(AccountsCommand::Quota { id, bytes, devices }) => {
            if bytes.is_none() && devices.is_none() {
                anyhow::bail!(
                    "give --bytes N, --devices N or both (`default` for the relay's limit)"
                );
            }
            let word = |v: &Option<String>| v.as_deref().unwrap_or("keep").to_string();
            (
                format!("accounts quota {id} {} {}", word(bytes), word(devices)),
                Shape::Fields,
            )
        }
        AdminCommand::Accounts(AccountsCommand::Delete { id }) => {
            (format!("accounts delete {id}"), Shape::Fields)
        }
        AdminCommand::Tokens(TokensCommand::Create) => ("tokens create".to_string(), Shape::Token),
        AdminCommand::Tokens(TokensCommand::List) => {
            ("tokens list".to_string(), Shape::Table(&["id"]))
        }
        AdminCommand::Tokens(TokensCommand::Revoke { id }) => {
            (format!("tokens revoke {id}"), Shape::Fields)
        }
        AdminCommand::Stats => ("stats".to_string(), Shape::Fields),
    };
    if line.contains('\n') {
        anyhow::bail!("an argument holds a line break");
    }
    let answer = kith_relay::control::admin(data, &line)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if json {
        println!("{answer}");
        return Ok(());
    }
    print_answer(&answer, shape);
    Ok(())
}

/// How an admin answer reads as text.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// An array of objects: a header of these keys, then one line of their values each.
    Table(&'static [&'static str]),
    /// An object: `key value` lines (as `kith-relay stats` prints).
    Fields,
    /// `tokens create`: the token alone, for scripts.
    Token,
}

fn print_answer(answer: &serde_json::Value, shape: Shape) {
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".to_string(),
        other => other.to_string(),
    };
    match (shape, answer) {
        (Shape::Token, serde_json::Value::Object(map)) => {
            println!("{}", map.get("token").map(text).unwrap_or_default());
        }
        (Shape::Table(columns), serde_json::Value::Array(rows)) => {
            println!("{}", columns.join("\t"));
            for row in rows {
                let cells: Vec<String> = columns
                    .iter()
                    .map(|c| row.get(c).map(text).unwrap_or_default())
                    .collect();
                println!("{}", cells.join("\t"));
            }
        }
        (_, serde_json::Value::Object(map)) => {
            for (key, value) in map {
                println!("{key} {}", text(value));
            }
        }
        (_, other) => println!("{other}"),
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// 128 random bits as hex. The relay keeps only the SHA-256: in the store when it is stopped,
/// else as a file in the token inbox, which a running relay consults.
fn create_token(data: &Path, store: Option<&StoreLocation>) -> Result<()> {
    let mut raw = [0u8; 16];
    getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let token = hex::encode(raw);
    let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    if let Some(url) = store.and_then(StoreLocation::postgres_url) {
        // Shared by every relay on the database, running or not.
        PostgresStore::open_without_migrating(url, 1, 0)
            .context("opening the PostgreSQL store (run `kith-relay migrate` first?)")?
            .add_registration_token(&hash)?;
        println!("{token}");
        return Ok(());
    }
    require_data_dir(data)?;
    let inbox = kith_relay::token_inbox(data);
    std::fs::create_dir_all(&inbox).context("creating the token inbox")?;
    let tmp = inbox.join(format!(".{}.tmp", hex::encode(hash)));
    std::fs::write(&tmp, b"").context("writing the token")?;
    std::fs::rename(&tmp, inbox.join(hex::encode(hash))).context("writing the token")?;
    println!("{token}");
    Ok(())
}

fn stats(data: &Path, store: Option<&StoreLocation>) -> Result<()> {
    let store: Box<dyn Store> = match store.and_then(StoreLocation::postgres_url) {
        Some(url) => Box::new(
            PostgresStore::open_without_migrating(url, 1, 0)
                .context("opening the PostgreSQL store")?,
        ),
        None => {
            require_data_dir(data)?;
            Box::new(
                SledStore::open(&kith_relay::db_dir(data), 16 * 1024 * 1024, 0).with_context(
                    || format!("opening {} (is the relay running?)", data.display()),
                )?,
            )
        }
    };
    let stats = store.stats()?;
    println!("accounts {}", stats.accounts);
    println!("streams {}", stats.streams);
    println!("envelopes {}", stats.envelopes);
    println!("bytes {}", stats.envelope_bytes);
    println!("pairing_slots {}", stats.pairing_slots);
    println!("recovery_bundles {}", stats.recovery_bundles);
    println!("registration_tokens {}", stats.registration_tokens);
    Ok(())
}

fn migrate(store: &StoreLocation) -> Result<()> {
    let url = store
        .postgres_url()
        .context("migrate applies to PostgreSQL; give --store postgres://…")?;
    let applied = kith_relay::store::postgres::run_migrations(url)?;
    if applied.is_empty() {
        println!("up to date");
    } else {
        for version in &applied {
            println!("applied migration {version}");
        }
    }
    println!(
        "schema version {}",
        kith_relay::store::postgres::schema_version()
    );
    Ok(())
}

/// Opens one side of `migrate-store`: a PostgreSQL database (migrated) or a sled data
/// directory (the source must be one already; the destination is created).
fn open_side(location: &str, source: bool) -> Result<Box<dyn Store>> {
    if kith_relay::store::postgres::is_postgres_url(location) {
        return Ok(Box::new(
            PostgresStore::open(location, 2, 256 * 1024).context("opening PostgreSQL")?,
        ));
    }
    let data = Path::new(location);
    if source {
        require_data_dir(data)?;
    }
    Ok(Box::new(
        SledStore::open(&kith_relay::db_dir(data), 64 * 1024 * 1024, 256 * 1024)
            .with_context(|| format!("opening {} (is a relay running on it?)", data.display()))?,
    ))
}

fn migrate_store(from: &str, to: &str) -> Result<()> {
    let source = open_side(from, true)?;
    let destination = open_side(to, false)?;
    let report = kith_relay::store::copy::copy_store(source.as_ref(), destination.as_ref())?;
    let flushed = tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(destination.flush())
    });
    flushed.context("making the copy durable")?;
    println!(
        "copied {} accounts, {} streams, {} envelopes ({} bytes), {} keys, slots, bundles and tokens",
        report.accounts, report.streams, report.envelopes, report.envelope_bytes, report.other
    );
    // Tokens `kith-relay token create` left in a sled relay's inbox are not in its store yet.
    if !kith_relay::store::postgres::is_postgres_url(from) {
        let mut inbox_tokens = 0;
        if let Ok(entries) = std::fs::read_dir(kith_relay::token_inbox(Path::new(from))) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let hash = name
                    .to_str()
                    .and_then(|name| hex::decode(name).ok())
                    .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok());
                if let Some(hash) = hash {
                    destination.add_registration_token(&hash)?;
                    inbox_tokens += 1;
                }
            }
        }
        if inbox_tokens > 0 {
            let flushed = tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(destination.flush())
            });
            flushed.context("making the copy durable")?;
            println!("copied {inbox_tokens} unused tokens from the token inbox");
        }
    }
    println!("verified: every roster, stream head and stream matches the source");
    Ok(())
}
