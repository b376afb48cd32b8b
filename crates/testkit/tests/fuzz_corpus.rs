//! Replays the checked-in fuzz corpora on the stable toolchain: every file of
//! `fuzz/corpus/<target>/` goes through the same body the cargo-fuzz target runs
//! (`kith_testkit::fuzz::protocol`), so a crash the fuzzer once found cannot come back unnoticed.
//!
//! `KITH_REGENERATE_FUZZ_SEEDS=1 cargo test -p kith-testkit --test fuzz_corpus` rewrites the
//! `valid-*` seeds from the fuzzing fixture (after a change to an encoding, say).

use kith_testkit::fuzz::corpus::{
    assert_replays, fuzz_dir, missing_target_files, regenerating, write_seeds,
};
use kith_testkit::fuzz::protocol::{TARGETS, seeds};

#[test]
fn every_corpus_file_replays_without_a_panic_and_valid_seeds_are_accepted() {
    if regenerating() {
        write_seeds(&seeds());
    }
    assert_replays(TARGETS);
}

#[test]
fn every_target_has_a_fuzz_target_file_and_seeds() {
    let missing = missing_target_files(TARGETS);
    assert!(missing.is_empty(), "missing: {missing:?}");
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
