//! The load tool (filled in below).

use anyhow::Result;

/// Load-test parameters.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {}

pub async fn run(_args: BenchArgs) -> Result<()> {
    Ok(())
}
