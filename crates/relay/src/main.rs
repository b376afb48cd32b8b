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

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use kith_relay::config::StoreLocation;
use kith_relay::store::{PostgresStore, SledStore, Store};
use kith_relay::{Relay, Settings};
use sha2::{Digest, Sha256};

/// `kith-relay --version`: the release and the protocol it speaks (docs/PROTOCOL.md §8.1).
static VERSION: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| kith_protocol::version_line(env!("CARGO_PKG_VERSION")));

/// Kith's relay: stores end-to-end-encrypted envelopes per device and cannot read them.
#[derive(Debug, Parser)]
#[command(version = VERSION.as_str(), about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve on QUIC. Flags override the TOML file given with --config (same key names, with
    /// underscores); both override the defaults shown.
    Serve {
        /// TOML configuration file
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        settings: Box<Settings>,
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

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never into a log file or journald.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let result = match cli.command {
        Command::Serve { config, settings } => serve(config, *settings).await,
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

async fn serve(config_file: Option<PathBuf>, flags: Settings) -> Result<()> {
    let file = match &config_file {
        Some(path) => Settings::from_toml_file(path)?,
        None => Settings::default(),
    };
    let config = flags.or(file).resolve()?;
    #[cfg(feature = "dhat-heap")]
    let profiler = dhat::Profiler::builder()
        .file_name(format!("dhat-heap-{}.json", std::process::id()))
        .build();
    let registration = config.registration;
    let relay = Relay::start(config).await.context("starting the relay")?;
    println!("listening on {}", relay.local_addr());
    println!("certificate sha256 {}", hex::encode(relay.cert_sha256()));
    println!("registration {registration:?}");
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
