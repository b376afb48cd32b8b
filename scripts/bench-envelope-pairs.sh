#!/usr/bin/env bash
# Runs the envelope benchmark pairs (Kith vs bare primitives, batch vs one-by-one verification)
# back to back for N rounds and prints one line per figure: round, name, estimate, load average.
# On a shared machine, ratios taken within a round are steadier than separate runs; see
# BENCHMARKS.md. Usage: scripts/bench-envelope-pairs.sh [rounds]   (default 5)
set -eu
cd "$(dirname "$0")/.."
rounds=${1:-5}
bin=$(cargo bench -p kith-protocol --bench envelope --no-run --message-format=json 2>/dev/null |
  grep -o '"executable":"[^"]*envelope-[^"]*"' | tail -1 | cut -d'"' -f4)
for round in $(seq 1 "$rounds"); do
  for name in one_contact/seal/kith one_contact/seal/bare one_contact/open/kith \
    one_contact/open/bare batch_100/seal/kith batch_100/seal/bare batch_100/open/kith \
    batch_100/open/bare verify_64/batch verify_64/one_by_one; do
    estimate=$("$bin" --bench --warm-up-time 1 --measurement-time 3 "envelope/$name\$" 2>&1 |
      grep -m1 'time:' | sed -E 's/.*\[[^ ]+ [^ ]+ ([^ ]+ [^ ]+).*/\1/')
    echo "$round $name $estimate $(cut -d' ' -f1 /proc/loadavg)"
  done
done
