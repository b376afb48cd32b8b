#!/usr/bin/env bash
# Runs every benchmark of the project and prints a summary; see BENCHMARKS.md for what each
# figure means and the recorded results. It took 5 min 53 s on the 2-core development machine
# on 2026-12-05, building the release profile included (BENCHMARKS.md, "The whole suite"); the
# figures are only worth recording when `uptime` shows a quiet machine, and the load average is
# printed next to each.
#
#   scripts/bench.sh            everything
#   scripts/bench.sh relay      only the relay's load tool (about 2 minutes once built)
#   RUNS=5 scripts/bench.sh     5 runs of each load-tool measurement instead of 3 (median shown)
#   scripts/bench.sh cli        only the CLI, one process per command (scripts/bench-cli.sh) on
#                               stores of 10,000, 100,000 and 1,000,000 LinkedIn rows
#   CLI_SIZES="10000" scripts/bench.sh cli   other store sizes
#   scripts/bench.sh pg         the relay on sled and on PostgreSQL in the same run (issue 14):
#                               starts a throwaway cluster (initdb into a temporary directory,
#                               postgres on a free loopback port, removed at the end), then
#                               push/pull with one relay on each store, two relays on one
#                               database, ack latency paced at 50,000 envelopes/s, and how much
#                               each store grows per 100,000 envelopes. PostgreSQL's binaries
#                               come from KITH_PG_BIN, /usr/lib/postgresql/<newest>/bin or PATH;
#                               as root the server runs as KITH_PG_USER (default postgres);
#                               KITH_RELAY=PATH measures that kith-relay instead of building one.
#
# 1. kith-protocol: the envelope criterion bench (short warm-up and measurement).
# 2. kith-relay: `kith-relay bench` (a relay process plus the load tool in another process):
#    push and pull of 100 devices x 2000 x 1 KiB in batches of 100; ack latency paced at
#    50,000 envelopes/s (half the push target); RSS with 1,000 idle authenticated connections.
# 3. kith-e2e: the client scale bench (import, sync, compact), if that bench target exists.
# 4. the `kith` CLI as separate processes (scripts/bench-cli.sh), per store size: import time
#    and peak RSS, no-op sync, sync of 100 changed contacts, store open (issue 20).
set -euo pipefail
cd "$(dirname "$0")/.."
only=${1:-all}
runs=${RUNS:-3}
log=$(mktemp -d)
trap 'rm -rf "$log"' EXIT
summary=()
load() { cut -d' ' -f1-3 /proc/loadavg; }
note() { summary+=("$(printf '%-58s %s' "$1" "$2")"); }
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)]; else print "?" }'; }
field() { # file-glob, line prefix, sed expression extracting the number: its median
  for f in $1; do grep -E -m1 "^$2" "$f" | sed -E "$3" || true; done | median
}
started=$(date +%s)
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; load $(load); $(date -u '+%F %R') UTC"

if [[ $only == all || $only == protocol ]]; then
  echo "== kith-protocol envelope bench"
  cargo bench -p kith-protocol --bench envelope -- --warm-up-time 1 --measurement-time 3 \
    > "$log/protocol" 2>&1 || echo "(the protocol bench failed; see above)"
  grep -E 'time:|^[A-Za-z0-9_]+/[^ ]*$' "$log/protocol" | grep -v 'change:' || true
  # "name\n   time: [low est high]", or "name   time: [...]" on one line for short names.
  # Only the first time: line after a name counts: with an earlier run's baseline, criterion
  # adds a "change:" block whose own time: line holds percentages.
  awk '/^[A-Za-z0-9_]+\/[^ ]*$/ { name = $1; next }
       /time:/ && !/change:/ { if ($1 != "time:") name = $1; if (name == "") next
                 match($0, /\[[^]]*\]/)
                 split(substr($0, RSTART + 1, RLENGTH - 2), v, " "); print name, v[3], v[4]
                 name = "" }' \
    "$log/protocol" > "$log/protocol.sum" || true
  while read -r name est unit; do note "protocol $name" "$est $unit"; done < "$log/protocol.sum"
fi

if [[ $only == all || $only == relay ]]; then
  echo "== kith-relay load tool ($runs runs each)"
  cargo build --release -p kith-relay 2>&1 | tail -1
  relay=target/release/kith-relay
  for i in $(seq 1 "$runs"); do
    echo "-- push/pull run $i, load $(load)"
    RUST_LOG=warn "$relay" bench --devices 100 --envelopes 2000 --batch 100 --size 1024 \
      2>&1 | grep -v ' INFO ' | tee "$log/pushpull.$i"
  done
  for i in $(seq 1 "$runs"); do
    echo "-- paced run $i, load $(load)"
    RUST_LOG=warn "$relay" bench --devices 100 --envelopes 1000 --batch 100 --size 1024 \
      --rate 50000 2>&1 | grep -v ' INFO ' | grep -E '^push' | tee "$log/paced.$i"
  done
  for i in $(seq 1 "$runs"); do
    echo "-- idle connections run $i, load $(load)"
    RUST_LOG=warn "$relay" bench --devices 10 --envelopes 100 --idle-connections 1000 \
      2>&1 | grep -E '^(idle|relay RSS with)' | tee "$log/idle.$i"
  done
  push=$(field "$log/pushpull.*" 'push: [0-9]+ envelopes' 's/.*= ([0-9]+) envelopes\/s.*/\1/')
  pull=$(field "$log/pushpull.*" 'pull: [0-9]+ envelopes' 's/.*= ([0-9]+) envelopes\/s.*/\1/')
  push_cpu=$(field "$log/pushpull.*" 'push: relay CPU' 's/^push: relay CPU [0-9.]+ s = ([0-9.]+) us.*/\1/')
  pull_cpu=$(field "$log/pushpull.*" 'pull: relay CPU' 's/^pull: relay CPU [0-9.]+ s = ([0-9.]+) us.*/\1/')
  tool_push=$(field "$log/pushpull.*" 'push: relay CPU' 's/.*load tool CPU [0-9.]+ s = ([0-9.]+) us.*/\1/')
  tool_pull=$(field "$log/pushpull.*" 'pull: relay CPU' 's/.*load tool CPU [0-9.]+ s = ([0-9.]+) us.*/\1/')
  rss_load=$(field "$log/pushpull.*" 'relay RSS after push/pull' 's/.*peak ([0-9]+) MB.*/\1/')
  p99=$(field "$log/paced.*" 'push: [0-9]+ envelopes' 's/.*p99 ([0-9.]+) ms.*/\1/')
  rate=$(field "$log/paced.*" 'push: [0-9]+ envelopes' 's/.*= ([0-9]+) envelopes\/s.*/\1/')
  idle=$(field "$log/idle.*" 'relay RSS with' 's/.*: ([0-9]+) MB.*/\1/')
  note "relay push, 100 devices, batches of 100 (median)" "$push envelopes/s (target >= 100000)"
  note "relay pull (median)" "$pull envelopes/s (target >= 200000)"
  note "relay CPU per envelope, push / pull" "$push_cpu / $pull_cpu us (load tool: $tool_push / $tool_pull us)"
  note "relay peak RSS during push and pull" "$rss_load MB"
  note "ack latency p99 paced at 50,000/s (achieved $rate/s)" "$p99 ms (target < 20)"
  note "relay RSS, 1,000 idle authenticated connections" "$idle MB (target < 250)"
fi

if [[ $only == pg ]]; then
  has_pg() { [[ -x $1/initdb && -x $1/postgres ]]; }
  pg_bin=${KITH_PG_BIN:-}
  if ! { [[ -n $pg_bin ]] && has_pg "$pg_bin"; }; then
    pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
    if ! { [[ -n $pg_bin ]] && has_pg "$pg_bin"; }; then
      pg_bin=$(dirname "$(command -v initdb 2>/dev/null || echo /nonexistent/initdb)")
    fi
  fi
  has_pg "$pg_bin" || { echo "PostgreSQL's initdb and postgres not found: install Debian's postgresql or set KITH_PG_BIN" >&2; exit 1; }
  as_pg=()
  if [[ $(id -u) == 0 ]]; then
    pg_user=${KITH_PG_USER:-postgres}
    as_pg=(setpriv "--reuid=$pg_user" "--regid=$pg_user" --init-groups --)
  fi
  echo "== kith-relay on sled and PostgreSQL ($runs runs each; $("$pg_bin/postgres" --version))"
  # KITH_RELAY=path measures a binary built before (the release build is otherwise made here).
  relay=${KITH_RELAY:-target/release/kith-relay}
  [[ -n ${KITH_RELAY:-} ]] || cargo build --release -p kith-relay 2>&1 | tail -1
  pg_dir=$(mktemp -d /tmp/kith-bench-pg.XXXXXX)
  [[ ${#as_pg[@]} -gt 0 ]] && chown "$pg_user" "$pg_dir"
  pg_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "${as_pg[@]}" "$pg_bin/initdb" -A trust -U kith -E UTF8 -D "$pg_dir/data" > "$log/initdb" 2>&1
  # Defaults of a fresh cluster, durability on: every acknowledged push is fsynced.
  "${as_pg[@]}" "$pg_bin/postgres" -D "$pg_dir/data" -p "$pg_port" -c listen_addresses=127.0.0.1 \
    -c "unix_socket_directories=$pg_dir" -c max_connections=200 -c fsync=on \
    -c synchronous_commit=on > "$pg_dir/server.log" 2>&1 &
  pg_pid=$!
  trap 'kill -INT $pg_pid 2>/dev/null; wait $pg_pid 2>/dev/null; rm -rf "$pg_dir" "$log"' EXIT
  for _ in $(seq 1 300); do
    "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$pg_port" && break
    sleep 0.1
  done
  "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$pg_port" || { cat "$pg_dir/server.log"; exit 1; }
  new_db() { # a fresh database named $1; prints its connection string
    "$pg_bin/psql" -q -h 127.0.0.1 -p "$pg_port" -U kith -d postgres -c "CREATE DATABASE $1" >&2
    echo "postgres://kith@127.0.0.1:$pg_port/$1"
  }
  pg_cpu() { # CPU seconds the cluster used so far: the postmaster, its live children (background
    # workers, backends) and the children it reaped (backends of relays that exited)
    local pid
    for pid in "$pg_pid" $(pgrep -P "$pg_pid"); do
      sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null || true
    done | awk -v hz="$(getconf CLK_TCK)" '{ s += $12 + $13 + $14 + $15 } END { print s / hz }'
  }
  workload=(--devices 100 --envelopes 2000 --batch 100 --size 1024)
  paced=(--devices 100 --envelopes 1000 --batch 100 --size 1024 --rate 50000)
  for i in $(seq 1 "$runs"); do
    for setup in sled pg1 pg2; do
      case $setup in
        sled) store=(--store sled) ;;
        pg1) store=(--store "$(new_db "one_$i")") ;;
        pg2) store=(--store "$(new_db "two_$i")" --relays 2) ;;
      esac
      echo "-- $setup push/pull run $i, load $(load)"
      cpu0=$(pg_cpu)
      # (The environment lifts the pull wait and request timeout for tools that did not yet.)
      KITH_RELAY_PULL_WAIT_SECS=600 KITH_RELAY_REQUEST_TIMEOUT_SECS=600 RUST_LOG=warn "$relay" bench "${workload[@]}" "${store[@]}" 2>&1 \
        | grep -v ' INFO ' | tee "$log/$setup.$i" || echo "(this run failed)"
      [[ $setup != sled ]] && echo "postgres CPU over the run: $(awk -v a="$cpu0" -v b="$(pg_cpu)" 'BEGIN { print b - a }') s" \
        | tee -a "$log/$setup.$i"
    done
    for setup in sled pg1; do
      case $setup in
        sled) store=(--store sled) ;;
        pg1) store=(--store "$(new_db "paced_$i")") ;;
      esac
      echo "-- $setup paced run $i, load $(load)"
      KITH_RELAY_PULL_WAIT_SECS=600 KITH_RELAY_REQUEST_TIMEOUT_SECS=600 RUST_LOG=warn "$relay" bench "${paced[@]}" "${store[@]}" 2>&1 \
        | grep -v ' INFO ' | grep -E '^push: [0-9]' | tee "$log/paced-$setup.$i" || echo "(this run failed)"
    done
  done
  for setup in sled pg1 pg2; do
    push=$(field "$log/$setup.*" 'push: [0-9]+ envelopes' 's/.*= ([0-9]+) envelopes\/s.*/\1/')
    pull=$(field "$log/$setup.*" 'pull: [0-9]+ envelopes' 's/.*= ([0-9]+) envelopes\/s.*/\1/')
    p99=$(field "$log/$setup.*" 'push: [0-9]+ envelopes' 's/.*p99 ([0-9.]+) ms.*/\1/')
    size=$(field "$log/$setup.*" 'store: ' 's/.*= ([0-9]+) bytes per 100,000.*/\1/')
    cpu=$(field "$log/$setup.*" 'push: relay' 's/^push: relays? CPU [0-9.]+ s = ([0-9.]+) us.*/\1/')
    note "$setup: push, 100 devices, batches of 100 (median)" "$push envelopes/s, ack p99 $p99 ms (target >= 50000 on PostgreSQL)"
    note "$setup: pull (median)" "$pull envelopes/s (target >= 200000)"
    note "$setup: relay CPU per pushed envelope" "$cpu us"
    note "$setup: store growth per 100,000 envelopes" "$size bytes"
  done
  for setup in sled pg1; do
    p99=$(field "$log/paced-$setup.*" 'push: [0-9]+ envelopes' 's/.*p99 ([0-9.]+) ms.*/\1/')
    rate=$(field "$log/paced-$setup.*" 'push: [0-9]+ envelopes' 's/.*= ([0-9]+) envelopes\/s.*/\1/')
    note "$setup: ack p99 paced at 50,000/s (achieved $rate/s)" "$p99 ms"
  done
fi

if [[ $only == all || $only == e2e ]]; then
  if [[ -f tests/benches/scale.rs ]] && grep -q 'name = "scale"' tests/Cargo.toml; then
    echo "== kith-e2e scale bench"
    cargo bench -p kith-e2e --bench scale 2>&1 | tee "$log/e2e" | grep -vE '^\s*(Compiling|Finished|Running)' || true
    while IFS= read -r line; do note "e2e" "$line"; done < <(grep -E '^(import|sync|compact)' "$log/e2e" || true)
  else
    echo "== kith-e2e scale bench: no such bench target, skipped"
  fi
fi

if [[ $only == all || $only == cli ]]; then
  cargo build --release -p kith-cli -p kith-relay 2>&1 | tail -1
  for rows in ${CLI_SIZES:-10000 100000 1000000}; do
    echo "== kith CLI, one process per command, $rows LinkedIn rows"
    KITH=target/release/kith KITH_RELAY=target/release/kith-relay scripts/bench-cli.sh "$rows" \
      | tee "$log/cli.$rows"
    while IFS= read -r line; do note "cli $rows" "$line"; done < <(grep -E '^(import|sync|open|kith --version)' "$log/cli.$rows" || true)
  done
fi

echo
echo "== summary ($(($(date +%s) - started)) s; load now $(load))"
printf '%s\n' "${summary[@]}"
