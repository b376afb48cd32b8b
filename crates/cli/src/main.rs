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

mod account;
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
use kith_client::net::NetError;

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

/// What to do about the errors whose message cannot know the situation.
fn hint(err: &anyhow::Error) -> Option<&'static str> {
    let net = err
        .chain()
        .find_map(|cause| match cause.downcast_ref::<ClientError>() {
            Some(ClientError::Net(net)) => Some(net),
            _ => cause.downcast_ref::<NetError>(),
        });
    if let Some(net) = net {
        return net.hint();
    }
    err.chain()
        .find_map(|cause| cause.downcast_ref::<ClientError>())
        .and_then(ClientError::hint)
}
