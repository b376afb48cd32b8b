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
//!   resolution, imports from a file path or bytes, sync, [`KithDevice::watch`] with a
//!   [`ChangeListener`] the app implements, compaction, devices (approve a link code, revoke),
//!   account information and deletion.
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
#![deny(unsafe_code)]
#![warn(missing_docs)]

#[allow(unsafe_code)] // UniFFI's scaffolding only: see the crate docs.
mod api;
mod keystore;
mod support;

pub use api::*;

#[cfg(test)]
mod tests {
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
                let code = line.split("//").next().unwrap_or("");
                let code = code
                    .replace(&format!("allow({keyword}_code)"), "")
                    .replace(&format!("deny({keyword}_code)"), "")
                    .replace(&format!("forbid({keyword}_code)"), "");
                assert!(
                    !code.contains(&keyword),
                    "{name}:{}: hand-written code with the keyword: {line}",
                    number + 1
                );
            }
        }
    }
}
