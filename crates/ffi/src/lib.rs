//! `kith-ffi`: the [UniFFI](https://mozilla.github.io/uniffi-rs) bindings of `kith-client`, for
//! apps in Swift, Kotlin and Python. See `crates/ffi/README.md` for building, generating the
//! foreign sources (`crates/ffi/generate.sh`) and examples.
//!
//! # The API
//!
//! - Setting a device up: [`create_account`], [`open_device`], [`recover_account`] and
//!   [`LinkRequest`] (a new device showing its link code and waiting for approval), each taking
//!   an optional [`KeyStorage`] the app implements over the platform keychain. Without one the
//!   secrets go to a key file in the home directory, as with the CLI.
//! - [`KithDevice`]: contacts (list, search, show, add, edit, delete), conflicts and their
//!   resolution, merging by hand (duplicate suggestions, merge, unmerge), imports from a file
//!   path or bytes, sync, [`KithDevice::watch`] with a [`ChangeListener`] the app implements,
//!   wake-up notifications (push targets), compaction, devices (approve a link code, revoke),
//!   account information (local, and the relay's: [`KithDevice::relay_account_info`]) and
//!   deletion.
//! - Every failure is a [`KithError`]: one variant per category, with the message and hint
//!   the `kith` command line prints for the same error.
//!
//! Async methods are UniFFI async functions (Swift `async`, Kotlin `suspend`, Python
//! `asyncio`); they run on a tokio runtime this crate owns (two worker threads), so the app's
//! executor only awaits their completion.
//!
//! # Why `unsafe_code` is `deny` here, not `forbid`
//!
//! Every other crate of the workspace forbids unsafe code. This one cannot: UniFFI's macros
//! (`setup_scaffolding!`, `#[uniffi::export]`, the derives) expand, inside this crate, to
//! `extern "C"` functions marked `#[unsafe(no_mangle)]` and to `unsafe` blocks that move
//! values across the C ABI, and a `forbid` cannot be allowed anywhere, not even for
//! macro-generated code. So the crate denies unsafe code, and allows it only on the module
//! that holds the exported items ([`api`](crate) is private; its items are re-exported here).
//! That module is hand-written code like the rest, so the test `no_unsafe_in_our_sources`
//! checks that no source file of this crate contains the `unsafe` keyword outside the
//! attributes that allow the macros' expansion: what `forbid` would guarantee for what we
//! write, while the macros' output is UniFFI's (as in matrix-rust-sdk's bindings crate, which
//! also leaves the lint to the scaffolding).
//!
//! # Types written once, in `kith-client`
//!
//! [`ClearableField`], [`ImportKind`], [`ContactView`] (with its e-mail, phone, URL and handle
//! records) and [`RelayAccountInfo`] have twins in `kith-client` or the CLI's `--json` output.
//! The UniFFI derives cannot sit on `kith-client`'s types (they expand to unsafe code in the
//! crate that derives, and `kith-client` forbids it), so `kith-client` defines each of them once,
//! as a macro that this crate calls with the UniFFI derive (`crates/client/src/mirror.rs`; the
//! enums' `From` conversions come with them). See the README.
#![deny(unsafe_code)]
#![warn(missing_docs)]

#[allow(unsafe_code)] // UniFFI's scaffolding only: see the crate docs.
mod api;
mod keystore;
mod support;

pub use api::*;

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use kith_client::ClientError;
    use kith_client::keystore::DeviceSecrets;

    use crate::{KeyStorage, KithError};

    #[test]
    fn errors_keep_the_cli_text_and_hint_in_their_category() {
        match KithError::from(ClientError::Revoked) {
            KithError::Revoked { reason, hint } => {
                assert_eq!(
                    reason,
                    "this device was removed from the account; it can no longer read or write"
                );
                assert!(hint.is_some_and(|h| h.contains("kith device request")));
            }
            other => panic!("not Revoked: {other:?}"),
        }
        assert!(matches!(
            KithError::from(ClientError::UnknownContact("abcd".into())),
            KithError::UnknownContact { hint: Some(_), .. }
        ));
        assert!(matches!(
            KithError::from(ClientError::RecoveryNotFound),
            KithError::Recovery { hint: None, .. }
        ));
        assert!(matches!(
            KithError::from(ClientError::LinkTimeout(60)),
            KithError::Link { .. }
        ));
    }

    #[derive(Default)]
    struct Memory(Mutex<Option<Vec<u8>>>);

    impl KeyStorage for Memory {
        fn load(&self) -> Result<Option<Vec<u8>>, KithError> {
            Ok(self.0.lock().unwrap().clone())
        }
        fn save(&self, secrets: Vec<u8>) -> Result<(), KithError> {
            *self.0.lock().unwrap() = Some(secrets);
            Ok(())
        }
    }

    #[test]
    fn the_key_storage_adapter_round_trips_and_refuses_garbage() {
        let memory = Arc::new(Memory::default());
        let store = crate::keystore::adapt(Some(memory.clone())).expect("a key store");
        assert!(store.load().unwrap().is_none());
        let secrets = DeviceSecrets::generate();
        store.save(&secrets).unwrap();
        let loaded = store.load().unwrap().expect("saved secrets");
        assert_eq!(
            loaded.signing_key.device_id(),
            secrets.signing_key.device_id()
        );
        assert_eq!(loaded.store_secret, secrets.store_secret);
        *memory.0.lock().unwrap() = Some(b"not a key".to_vec());
        let error = ClientError::from(store.load().unwrap_err());
        assert!(matches!(KithError::from(error), KithError::KeyStore { .. }));
        assert!(crate::keystore::adapt(None).is_none());
    }

    /// What `#![forbid(unsafe_code)]` would guarantee for the code written here: no `unsafe`
    /// keyword in any source file, outside the lint attributes that let UniFFI's macro
    /// expansion through (see the crate docs).
    #[test]
    fn no_unsafe_in_our_sources() {
        let sources = [
            ("lib.rs", include_str!("lib.rs")),
            ("api.rs", include_str!("api.rs")),
            ("keystore.rs", include_str!("keystore.rs")),
            ("support.rs", include_str!("support.rs")),
            (
                "bin/uniffi-bindgen.rs",
                include_str!("bin/uniffi-bindgen.rs"),
            ),
        ];
        let keyword = ["un", "safe"].concat();
        for (name, text) in sources {
            for (number, line) in text.lines().enumerate() {
                // Whole identifiers only: the lint's name (`…_code`) is not the keyword.
                let code = line.split("//").next().unwrap_or("");
                assert!(
                    !code
                        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                        .any(|word| word == keyword),
                    "{name}:{}: hand-written code with the keyword: {line}",
                    number + 1
                );
            }
        }
    }
}
