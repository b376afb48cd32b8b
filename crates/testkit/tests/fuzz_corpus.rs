//! Replays the checked-in fuzz corpora on the stable toolchain: every file of
//! `fuzz/corpus/<target>/` goes through the same body the cargo-fuzz target runs
//! (`kith_testkit::fuzz::protocol`), so a crash the fuzzer once found cannot come back unnoticed.
//!
//! `KITH_REGENERATE_FUZZ_SEEDS=1 cargo test -p kith-testkit --test fuzz_corpus` rewrites the
//! `valid-*` seeds from the fuzzing fixture (after a change to an encoding, say).

use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use kith_testkit::fuzz::protocol::{TARGETS, seeds};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn regenerating() -> bool {
    std::env::var_os("KITH_REGENERATE_FUZZ_SEEDS").is_some_and(|v| v == "1")
}

/// The files of one corpus directory, sorted by name.
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = fuzz_dir().join("corpus").join(target);
    let mut files: Vec<(String, Vec<u8>)> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.is_file())
        .map(|path| {
            let name = path
                .file_name()
                .expect("file name")
                .to_string_lossy()
                .into_owned();
            (name, fs::read(&path).expect("corpus file"))
        })
        .collect();
    files.sort();
    files
}

#[test]
fn every_corpus_file_replays_without_a_panic_and_valid_seeds_are_accepted() {
    if regenerating() {
        write_seeds();
    }
    let mut failures = Vec::new();
    let mut replayed = 0;
    for &(target, body) in TARGETS {
        let files = corpus(target);
        assert!(!files.is_empty(), "fuzz/corpus/{target} is empty");
        for (name, bytes) in files {
            replayed += 1;
            match catch_unwind(AssertUnwindSafe(|| body(&bytes))) {
                Err(_) => failures.push(format!("{target}/{name}: panicked")),
                Ok(false) if name.starts_with("valid-") => failures.push(format!(
                    "{target}/{name}: no longer accepted (KITH_REGENERATE_FUZZ_SEEDS=1 rewrites seeds)"
                )),
                Ok(_) => {}
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{replayed} files replayed; failures:\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_target_has_a_fuzz_target_file_and_seeds() {
    for &(target, _) in TARGETS {
        let file = fuzz_dir().join("fuzz_targets").join(format!("{target}.rs"));
        assert!(file.is_file(), "{} is missing", file.display());
    }
    if regenerating() {
        return;
    }
    for seed in seeds() {
        let path = fuzz_dir().join("corpus").join(seed.target).join(&seed.name);
        assert!(
            path.is_file(),
            "{} is missing (KITH_REGENERATE_FUZZ_SEEDS=1 writes it)",
            path.display()
        );
    }
}

fn write_seeds() {
    for seed in seeds() {
        let dir = fuzz_dir().join("corpus").join(seed.target);
        fs::create_dir_all(&dir).expect("corpus directory");
        fs::write(dir.join(&seed.name), &seed.bytes).expect("seed file");
    }
}
