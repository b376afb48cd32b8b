//! What the fuzz targets and their corpus-replay tests share: a target's body, a seed, and the
//! checked-in corpora under `fuzz/corpus/<target>/`.

use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A target's body: runs one input, returns whether the decoder or importer accepted it.
pub type Body = fn(&[u8]) -> bool;

/// One seed input: the target it is for, a file name, and the bytes.
#[derive(Debug, Clone)]
pub struct Seed {
    /// The target (corpus directory).
    pub target: &'static str,
    /// The file name; `valid-*` seeds must be accepted by their target.
    pub name: String,
    /// The input.
    pub bytes: Vec<u8>,
}

/// The repository's `fuzz/` directory.
pub fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// Whether the replay tests should rewrite the `valid-*` seeds (`KITH_REGENERATE_FUZZ_SEEDS=1`).
pub fn regenerating() -> bool {
    std::env::var_os("KITH_REGENERATE_FUZZ_SEEDS").is_some_and(|v| v == "1")
}

/// The files of one corpus directory (name and bytes), sorted by name. Panics if the directory
/// cannot be read: a target without a corpus is a test failure.
pub fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
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

/// Writes each seed to `fuzz/corpus/<target>/<name>`.
pub fn write_seeds(seeds: &[Seed]) {
    for seed in seeds {
        let dir = fuzz_dir().join("corpus").join(seed.target);
        fs::create_dir_all(&dir).expect("corpus directory");
        fs::write(dir.join(&seed.name), &seed.bytes).expect("seed file");
    }
}

/// Panics seen by the panic hook, including those a dependency catches itself (rusqlite turns
/// a panic in its SQLite callbacks into an error, but libFuzzer, and any `panic = "abort"`
/// build, dies on it).
static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            default(info);
        }));
    });
}

/// Runs every file of every target's corpus through its body. Returns how many files ran and
/// one line per failure: a panic (caught by the body's caller or inside a dependency), or a
/// `valid-*` seed no longer accepted. Panics if a target has no corpus.
pub fn replay(targets: &[(&str, Body)]) -> (usize, Vec<String>) {
    count_panics();
    let mut failures = Vec::new();
    let mut replayed = 0;
    for &(target, body) in targets {
        let files = corpus(target);
        assert!(!files.is_empty(), "fuzz/corpus/{target} is empty");
        for (name, bytes) in files {
            replayed += 1;
            let before = PANICS.load(Ordering::SeqCst);
            let result = catch_unwind(AssertUnwindSafe(|| body(&bytes)));
            if result.is_ok() && PANICS.load(Ordering::SeqCst) != before {
                failures.push(format!("{target}/{name}: panicked inside a dependency"));
            }
            match result {
                Err(_) => failures.push(format!("{target}/{name}: panicked")),
                Ok(false) if name.starts_with("valid-") => failures.push(format!(
                    "{target}/{name}: no longer accepted (KITH_REGENERATE_FUZZ_SEEDS=1 rewrites seeds)"
                )),
                Ok(_) => {}
            }
        }
    }
    (replayed, failures)
}

/// [`replay`]s every target's corpus and panics, listing the failures, if any file failed.
pub fn assert_replays(targets: &[(&str, Body)]) {
    let (replayed, failures) = replay(targets);
    assert!(
        failures.is_empty(),
        "{replayed} files replayed; failures:\n{}",
        failures.join("\n")
    );
}

/// The targets without a `fuzz/fuzz_targets/<target>.rs`.
pub fn missing_target_files(targets: &[(&str, Body)]) -> Vec<PathBuf> {
    targets
        .iter()
        .map(|(target, _)| fuzz_dir().join("fuzz_targets").join(format!("{target}.rs")))
        .filter(|file| !file.is_file())
        .collect()
}
