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
use kith_relay::store::{SledStore, Store};
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
    /// Print accounts, device streams, envelopes and bytes stored (the relay must be stopped).
    Stats {
        /// Data directory
        #[arg(long, default_value = kith_relay::config::DEFAULT_DATA_DIR)]
        data: PathBuf,
    },
    /// Load test: start a relay (or use --relay), push and pull through real QUIC connections.
    Bench(bench::BenchArgs),
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
            command: TokenCommand::Create { data },
        } => create_token(&data),
        Command::Stats { data } => stats(&data),
        Command::Backup { dir, data } => kith_relay::control::request_backup(&data, &dir)
            .await
            .map(|()| println!("Backup written to {}", dir.display()))
            .map_err(|e| anyhow::anyhow!("backup failed: {e}")),
        Command::Bench(args) => bench::run(args).await,
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
fn create_token(data: &Path) -> Result<()> {
    let mut raw = [0u8; 16];
    getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    require_data_dir(data)?;
    let token = hex::encode(raw);
    let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    let inbox = kith_relay::token_inbox(data);
    std::fs::create_dir_all(&inbox).context("creating the token inbox")?;
    let tmp = inbox.join(format!(".{}.tmp", hex::encode(hash)));
    std::fs::write(&tmp, b"").context("writing the token")?;
    std::fs::rename(&tmp, inbox.join(hex::encode(hash))).context("writing the token")?;
    println!("{token}");
    Ok(())
}

fn stats(data: &Path) -> Result<()> {
    require_data_dir(data)?;
    let store = SledStore::open(&kith_relay::db_dir(data), 16 * 1024 * 1024, 0)
        .with_context(|| format!("opening {} (is the relay running?)", data.display()))?;
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
