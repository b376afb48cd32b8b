//! `kith`: the command-line client of Kith, end-to-end-encrypted contact sync.
//!
//! Every command is documented in `crates/cli/README.md`. Errors go to standard error as
//! `error: …` (what went wrong) and, where the next step is not obvious, `hint: …` (what to
//! do), and the exit code is non-zero.
#![forbid(unsafe_code)]

/// mimalloc instead of the system allocator: importing and merging allocate and free many
/// small strings per contact, which glibc's allocator takes about 1.4× as long over
/// (BENCHMARKS.md, client section).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `print!` that fails with an error instead of panicking when standard output is closed
/// (as in `kith contacts list | head`).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout(), $($arg)*)?
    }};
}

/// `println!` that fails with an error instead of panicking when standard output is closed.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*)?
    }};
}

mod cli;
mod commands;
#[cfg(feature = "demo")]
mod demo;
mod output;
mod progress;
mod qr;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use kith_client::ClientError;
use kith_client::keystore::KeyStoreError;
use kith_client::net::NetError;
use kith_protocol::proto::ErrorCode;

/// Exit code of every failure after the command line was parsed.
const EXIT_FAILURE: u8 = 1;
/// Exit code of a command line that cannot mean anything (clap's own usage errors exit 2 too).
const EXIT_USAGE: u8 = 2;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    init_logging();
    match commands::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`kith contacts list | head`): nothing left to tell anyone.
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            // Display only, never `{:?}`: a routine error prints no backtrace, whatever
            // RUST_BACKTRACE says.
            eprintln!("error: {}", error_text(&err));
            if let Some(hint) = hint(&err) {
                eprintln!("hint: {hint}");
            }
            if err.downcast_ref::<commands::UsageError>().is_some() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::from(EXIT_FAILURE)
            }
        }
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Logs (library warnings such as sync retries) to standard error; `RUST_LOG` overrides the
/// default. The library and the relay never log contact data or key material.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,kith_relay=error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

/// The error and its causes on one line, without repeating a cause that an outer message
/// already quotes.
fn error_text(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let part = cause.to_string();
        if part.is_empty() || text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

const REVOKED_HINT: &str = "set this device up again in a new --home, with `kith device request` \
     (approved from a device of the account) or `kith recover`";

/// What to do about the errors whose message cannot know the situation.
fn hint(err: &anyhow::Error) -> Option<&'static str> {
    let net = err
        .chain()
        .find_map(|cause| match cause.downcast_ref::<ClientError>() {
            Some(ClientError::Net(net)) => Some(net),
            _ => cause.downcast_ref::<NetError>(),
        });
    if let Some(net) = net {
        return match net {
            NetError::Resolve(_) => Some(
                "check the relay's host name and port (--relay HOST:PORT) and this machine's DNS",
            ),
            NetError::Unreachable { .. } => Some(
                "check that kith-relay is running at that address and reachable over UDP, and that the \
                 certificate fingerprint is the one it printed at start-up",
            ),
            NetError::Connection(_) | NetError::Timeout => Some(
                "check that kith-relay is running at that address and reachable over UDP, and that the \
                 certificate fingerprint is the one it printed at start-up; then run the command again",
            ),
            NetError::Relay { code, .. } => match code {
                ErrorCode::RegistrationClosed => Some(
                    "this relay admits new accounts by token only: ask its operator for one \
                     (`kith-relay token create`) and pass --registration-token",
                ),
                ErrorCode::QuotaExceeded => Some(
                    "the account is over its storage quota: run `kith compact`, or ask the relay operator for more",
                ),
                ErrorCode::TooManyDevices => Some(
                    "the account has as many devices as the relay allows: revoke one with `kith device revoke ID`",
                ),
                ErrorCode::DeviceRemoved | ErrorCode::UnknownDevice => Some(REVOKED_HINT),
                ErrorCode::RateLimited => Some(
                    "the relay limits how often one address may make this request (its log says \
                     \"request refused\" with code RateLimited); wait a minute and run the command again",
                ),
                ErrorCode::ShuttingDown => {
                    Some("the relay is restarting; run the command again when it is back")
                }
                ErrorCode::Storage => Some(
                    "the relay could not store the request durably (see its log); try again in a minute",
                ),
                _ => None,
            },
            _ => None,
        };
    }
    match err
        .chain()
        .find_map(|cause| cause.downcast_ref::<ClientError>())
    {
        Some(ClientError::UnknownContact(_)) => Some(
            "list the ids with `kith contacts list` or find one with `kith contacts search QUERY`",
        ),
        Some(ClientError::Revoked) => Some(REVOKED_HINT),
        Some(ClientError::KeyStore(KeyStoreError::PassphraseRequired(_))) => Some(
            "set KITH_PASSPHRASE to this device's passphrase, or run the command on a terminal to be asked for it",
        ),
        Some(ClientError::KeyStore(KeyStoreError::WrongPassphrase(_))) => Some(
            "give the passphrase this device's key was encrypted with (`kith key encrypt` set it); \
             without it, set the device up again with `kith device request` or `kith recover`",
        ),
        _ => None,
    }
}
