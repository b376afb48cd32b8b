#!/usr/bin/env bash
# RSS of a `kith-relay serve` process holding N idle authenticated connections (BENCHMARKS.md,
# "Realtime and idle memory"). Extra arguments go to `serve` (a setting under test); the
# environment too (MIMALLOC_* options). KITH_RELAY: the binary (default target/release).
#   scripts/idle-rss.sh [--max-streams-per-connection 4 …]
set -euo pipefail
N="${N:-1000}"
BIN="${KITH_RELAY:-$(dirname "$0")/../target/release/kith-relay}"
D="$(mktemp -d)"
trap 'rm -rf "$D"' EXIT
nice -n 19 "$BIN" serve --listen 127.0.0.1:0 --data "$D/data" \
    --requests-per-second 1000000 --request-burst 1000000 --max-account-bytes 1099511627776 \
    --max-connections 100000 --lookups-per-minute 1000000 --max-connections-per-address 100000 \
    "$@" > "$D/out" 2> "$D/err" &
PID=$!
for _ in $(seq 1 300); do grep -q '^key sha256' "$D/out" 2>/dev/null && break; sleep 0.2; done
ADDR="$(sed -n 's/^listening on //p' "$D/out")"
PIN="$(sed -n 's/^key sha256 //p' "$D/out")"
echo "relay RSS at start: $(awk '/VmRSS/ {printf "%.1f MB", $2 / 1024}' "/proc/$PID/status")"
nice -n 19 "$BIN" bench --relay "$ADDR" --cert-sha256 "$PIN" --relay-pid "$PID" \
    --devices 10 --envelopes 100 --idle-connections "$N" 2>&1 | grep -Ei 'rss|idle:|error'
kill -TERM "$PID"
wait "$PID" 2>/dev/null || true
