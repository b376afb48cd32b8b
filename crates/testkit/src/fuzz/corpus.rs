//! What the fuzz targets and their corpus-replay tests share: a target's body, a seed, and the
//! checked-in corpora under `fuzz/corpus/<target>/`.

use std::fs;
use std::path::{Path, PathBuf};

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
