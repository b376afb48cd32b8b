#!/bin/sh
# Runs one fuzz target on the stable toolchain without a sanitizer (see README.md).
#
#   fuzz/run.sh <target> <seconds> [libFuzzer flags…]
#
# New inputs go to a working corpus, fuzz/target/corpus/<target> (not checked in), seeded from
# the checked-in fuzz/corpus/<target>; crashes go to fuzz/artifacts/<target>/. For
# AddressSanitizer, set SANITIZER=address (needs RUSTC_BOOTSTRAP=1 on stable, set here).
set -eu
if [ $# -lt 2 ]; then
    echo "usage: $0 <target> <seconds> [libFuzzer flags…]" >&2
    exit 2
fi
target=$1
seconds=$2
shift 2
cd "$(dirname "$0")/.."
features=""
case $target in
    linkedin | facebook | vcard | imessage | imessage_rows) features="--features importers" ;;
esac
sanitizer=${SANITIZER:-none}
if [ "$sanitizer" != none ]; then
    export RUSTC_BOOTSTRAP=1
fi
mkdir -p "fuzz/target/corpus/$target"
# shellcheck disable=SC2086 # $features is empty or one flag and its value.
exec cargo fuzz run -s "$sanitizer" $features "$target" \
    "fuzz/target/corpus/$target" "fuzz/corpus/$target" \
    -- -max_total_time="$seconds" -print_final_stats=1 "$@"
