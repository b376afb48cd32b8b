//! The cost of opening a device key file sealed by the operating system's keychain (issue 10
//! finding 8, against issue 20's per-process budget; figures in `BENCHMARKS.md`): seals a new
//! key file with `Keychain::os()` (on Linux, the Secret Service where one answers), then opens
//! it `RUNS` times with a store told nothing, as each `kith` process does, and prints the
//! fastest, median and slowest open beside those of the plain file.
//!
//! ```text
//! dbus-run-session -- sh -c 'printf pw | gnome-keyring-daemon --unlock --components=secrets >/dev/null;
//!     cargo run -p kith-client --example unlock_cost'
//! ```
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use kith_client::keystore::{DeviceSecrets, FileKeyStore, KeyStore, Keychain};

const RUNS: usize = 30;

/// Fastest, median and slowest of `RUNS` loads of `path`.
fn opens(path: &std::path::Path) -> [Duration; 3] {
    let mut times: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            let loaded = FileKeyStore::new(path)
                .load()
                .expect("open")
                .expect("a key");
            let spent = start.elapsed();
            drop(loaded);
            spent
        })
        .collect();
    times.sort();
    [times[0], times[RUNS / 2], times[RUNS - 1]]
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keychain = Keychain::os();
    println!("keychain: {keychain:?}");
    keychain.probe().expect("the keychain works here");
    let secrets = DeviceSecrets::generate();
    let sealed = FileKeyStore::with_keychain(dir.path().join("sealed.key"), keychain);
    sealed.save(&secrets).expect("seal");
    let plain = FileKeyStore::new(dir.path().join("plain.key"));
    plain.save(&secrets).expect("plain");
    for (what, path) in [("plain", plain.path()), ("sealed", sealed.path())] {
        let [min, median, max] = opens(path);
        println!("{what}: fastest {min:?}, median {median:?}, slowest {max:?} over {RUNS} opens");
    }
    // Leaves no entry behind: a plain file saved over the sealed one deletes it.
    FileKeyStore::new(sealed.path())
        .save(&secrets)
        .expect("unseal");
}
