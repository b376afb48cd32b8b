//! Replays the checked-in fuzz corpora on the stable toolchain: every file of
//! `fuzz/corpus/<target>/` goes through the same body the cargo-fuzz target runs
//! (`kith_testkit::fuzz::protocol`), so a crash the fuzzer once found cannot come back unnoticed.
//!
//! `KITH_REGENERATE_FUZZ_SEEDS=1 cargo test -p kith-testkit --test fuzz_corpus` rewrites the
//! `valid-*` seeds from the fuzzing fixture (after a change to an encoding, say).

use std::panic::{AssertUnwindSafe, catch_unwind};

use kith_testkit::fuzz::corpus::{corpus, fuzz_dir, regenerating, write_seeds};
use kith_testkit::fuzz::protocol::{TARGETS, seeds};

#[test]
fn every_corpus_file_replays_without_a_panic_and_valid_seeds_are_accepted() {
    if regenerating() {
        write_seeds(&seeds());
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
