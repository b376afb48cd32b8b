//! The bindings as foreign code sees them: generates the Python module from the built
//! `libkith_ffi` with `uniffi-bindgen` (library mode) and runs the Python suite
//! (`tests/python`, unittest, no pip packages) against a real `kith-relay` process; and checks
//! that the checked-in Swift and Kotlin sources (`bindings/` at the repository root) are what the API generates now.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Where cargo put this test's binaries: `uniffi-bindgen`, the cdylib and (in a workspace
/// build) `kith-relay`.
fn target_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_uniffi-bindgen"))
        .parent()
        .expect("the bindgen binary is in a directory")
        .to_path_buf()
}

fn cdylib() -> PathBuf {
    let name = if cfg!(target_os = "macos") {
        "libkith_ffi.dylib"
    } else if cfg!(windows) {
        "kith_ffi.dll"
    } else {
        "libkith_ffi.so"
    };
    // `cargo build` puts it beside the binaries; `cargo test` leaves it in `deps/` and does
    // not refresh the one beside them. The newer of the two is the current API (an older
    // `cargo build` left beside the binaries made this suite test a stale library).
    let beside = target_dir().join(name);
    let in_deps = target_dir().join("deps").join(name);
    let modified = |path: &PathBuf| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    [&beside, &in_deps]
        .into_iter()
        .filter(|path| path.exists())
        .max_by_key(|path| modified(path))
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "neither {} nor {} exists: cargo builds it with the crate's library",
                beside.display(),
                in_deps.display()
            )
        })
}

/// The `kith-relay` binary beside this test's: built by `cargo test --workspace`; built here
/// (into the same target directory) when only this crate's tests run.
fn relay_binary() -> PathBuf {
    let path = target_dir().join(format!("kith-relay{}", std::env::consts::EXE_SUFFIX));
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "kith-relay", "--bin", "kith-relay"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build -p kith-relay");
        assert!(status.success(), "cargo build -p kith-relay failed");
    }
    assert!(path.exists(), "{} is missing", path.display());
    path
}

fn generate(language: &str, out: &Path) {
    let output = Command::new(env!("CARGO_BIN_EXE_uniffi-bindgen"))
        .args(["generate", "--library"])
        .arg(cdylib())
        .args(["--language", language, "--no-format", "--out-dir"])
        .arg(out)
        .output()
        .expect("run uniffi-bindgen");
    assert!(
        output.status.success(),
        "uniffi-bindgen generate --language {language} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_python_suite_passes_through_the_generated_module() {
    let work = tempfile::tempdir().expect("temp dir");
    let module_dir = work.path().join("python");
    generate("python", &module_dir);
    // The generated module loads the library from its own directory.
    let library = cdylib();
    std::fs::copy(
        &library,
        module_dir.join(library.file_name().expect("library file name")),
    )
    .expect("copy the library beside the module");
    let tests = manifest_dir().join("tests/python");
    let python_path =
        std::env::join_paths([module_dir.as_path(), tests.as_path()]).expect("PYTHONPATH");
    let output = Command::new("python3")
        // Every `test_*.py` module: the story, merging, the relay's account view, wake-ups.
        .args(["-B", "-m", "unittest", "discover", "-v", "-p", "test_*.py"])
        .current_dir(&tests)
        .env("PYTHONPATH", python_path)
        .env("KITH_RELAY_BIN", relay_binary())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run python3 (Python 3 is needed to test the bindings)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{}{stderr}", String::from_utf8_lossy(&output.stdout));
    assert!(output.status.success(), "the Python suite failed");
    assert!(
        !stderr.contains("Ran 0 tests"),
        "the Python suite ran no test"
    );
    // Discovery found every module (one that fails to import is an error, but one whose name
    // does not match would be skipped silently).
    for entry in std::fs::read_dir(&tests).expect("read tests/python") {
        let name = entry.expect("dir entry").file_name();
        let name = name.to_string_lossy();
        if let Some(module) = name.strip_suffix(".py").filter(|m| m.starts_with("test_")) {
            assert!(
                stderr.contains(&format!("({module}.")),
                "the Python suite ran no test of {name}"
            );
        }
    }
}

/// Every file under `dir`, relative to it, sorted.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).expect("read dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                pending.push(path);
            } else {
                out.push(path.strip_prefix(dir).expect("under dir").to_path_buf());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn the_checked_in_swift_and_kotlin_sources_are_current() {
    let work = tempfile::tempdir().expect("temp dir");
    for language in ["swift", "kotlin"] {
        let fresh = work.path().join(language);
        generate(language, &fresh);
        // Generated code lives at the repository root, outside `crates/` (which holds the code we
        // write), so that app developers find it at `bindings/`.
        let checked_in = manifest_dir().join("../../bindings").join(language);
        let names = files(&fresh);
        assert!(
            !names.is_empty(),
            "uniffi-bindgen wrote no {language} source"
        );
        assert_eq!(
            names,
            files(&checked_in),
            "the {language} files differ from bindings/{language}: run crates/ffi/generate.sh"
        );
        for name in names {
            let now = std::fs::read_to_string(fresh.join(&name)).expect("read generated");
            let before = std::fs::read_to_string(checked_in.join(&name)).expect("read checked in");
            assert!(
                now == before,
                "bindings/{language}/{} is not what the API generates now: run \
                 crates/ffi/generate.sh and commit the result (and fix the Swift/Kotlin \
                 callers it breaks)",
                name.display()
            );
        }
    }
}

#[test]
fn the_readme_quotes_the_python_example_the_suite_runs() {
    let readme = std::fs::read_to_string(manifest_dir().join("README.md")).expect("README");
    let example =
        std::fs::read_to_string(manifest_dir().join("tests/python/example.py")).expect("example");
    assert!(
        readme.contains(&format!("```python\n{example}```")),
        "crates/ffi/README.md must quote tests/python/example.py unchanged"
    );
}
