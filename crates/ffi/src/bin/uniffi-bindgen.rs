//! `uniffi-bindgen` for kith-ffi: `uniffi-bindgen generate --library libkith_ffi.so
//! --language python --out-dir DIR` (see crates/ffi/generate.sh).
#![forbid(unsafe_code)]

fn main() {
    uniffi::uniffi_bindgen_main()
}
