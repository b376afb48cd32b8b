#!/bin/sh
# Generates the Swift, Kotlin and Python sources of the kith-ffi bindings with uniffi-bindgen
# in library mode (from the built library's metadata; no UDL file).
#
#   crates/ffi/generate.sh                 # refresh the checked-in bindings/{swift,kotlin} (at the repository root)
#   crates/ffi/generate.sh OUT_DIR         # write OUT_DIR/{python,swift,kotlin} instead
#
# The checked-in Swift and Kotlin sources are compared with fresh ones by
# `cargo test -p kith-ffi --test bindings`: run this after changing the exported API.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
cargo build -p kith-ffi --lib --bin uniffi-bindgen
target_dir=${CARGO_TARGET_DIR:-$root/target}
case "$(uname -s)" in
    Darwin) lib="$target_dir/debug/libkith_ffi.dylib" ;;
    *) lib="$target_dir/debug/libkith_ffi.so" ;;
esac
bindgen="$target_dir/debug/uniffi-bindgen"
if [ $# -ge 1 ]; then
    out=$1
    langs="python swift kotlin"
else
    out="$root/bindings"
    langs="swift kotlin"
fi
for lang in $langs; do
    rm -rf "${out:?}/$lang"
    mkdir -p "$out/$lang"
    # --no-format: the same output whether or not swiftformat / ktlint are installed.
    "$bindgen" generate --library "$lib" --language "$lang" --no-format --out-dir "$out/$lang"
done
echo "generated $langs sources in $out"
