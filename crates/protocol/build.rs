//! Compiles `proto/kith/v1/*.proto` with `protox` (pure Rust), so a fresh machine needs no `protoc`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time, not with `env!`: a build script binary is cached in `target/` and may
    // be reused for another checkout of the same crate (a worktree sharing the target dir).
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = ["envelope", "roster", "keys", "records", "relay"]
        .map(|name| root.join(format!("kith/v1/{name}.proto")));
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let descriptors = protox::compile(&files, [&root])?;
    let mut config = prost_build::Config::new();
    // prost derives `Eq` only for messages without repeated message fields; these hold no
    // floats either, and records compare with `Eq` (merge, record views).
    for name in [
        ".kith.v1.Meeting",
        ".kith.v1.CalendarSource",
        ".kith.v1.MailSource",
        ".kith.v1.FieldValue",
    ] {
        config.type_attribute(name, "#[derive(Eq)]");
    }
    config.compile_fds(descriptors)?;
    Ok(())
}
