#!/usr/bin/env bash
# Builds the `kith` and `kith-relay` binaries of an earlier release, as people have them, into
# target/releases/<version>/bin, for the compatibility tests (crates/cli/tests/compat.rs).
#
#   scripts/build-release.sh 0.1.0
#
# The release's commit comes from scripts/releases.txt, its source from this clone's history
# (`git archive`), its dependencies from its own Cargo.lock. Does nothing if the binaries are
# already there; the build directory is removed afterwards, only the two binaries are kept.
set -euo pipefail
version=${1:?usage: scripts/build-release.sh VERSION}
root=$(cd "$(dirname "$0")/.." && pwd)
commit=$(awk -v v="$version" '$1 == v { print $2 }' "$root/scripts/releases.txt")
if [ -z "$commit" ]; then
    echo "build-release: $version is not in scripts/releases.txt" >&2
    exit 2
fi
out="$root/target/releases/$version"
if [ -x "$out/bin/kith" ] && [ -x "$out/bin/kith-relay" ]; then
    exit 0
fi
if ! git -C "$root" cat-file -e "$commit^{commit}" 2>/dev/null; then
    echo "build-release: commit $commit of $version is not in this clone (a shallow clone?)" >&2
    exit 3
fi
rm -rf "$out/src" "$out/bin"
mkdir -p "$out/src" "$out/bin"
git -C "$root" archive "$commit" | tar -x -C "$out/src"
echo "build-release: building kith $version ($commit) ..." >&2
# No debug info and no incremental state: a smaller, faster build of binaries only run.
(cd "$out/src" && CARGO_TARGET_DIR="$out/build" CARGO_PROFILE_DEV_DEBUG=0 CARGO_INCREMENTAL=0 \
    cargo build --locked --quiet -p kith-cli -p kith-relay)
cp "$out/build/debug/kith" "$out/build/debug/kith-relay" "$out/bin/"
rm -rf "$out/build" "$out/src"
echo "build-release: $out/bin holds kith and kith-relay $version" >&2
