#!/usr/bin/env bash
# The `kith` CLI as people and apps run it: one process per command, against a relay on
# loopback, peak RSS from the OS (`/usr/bin/time -v`). See BENCHMARKS.md, "Client, one
# process per command".
#
#   scripts/bench-cli.sh [ROWS]        default 100000 LinkedIn rows (98,000 contacts)
#   KITH=path/to/kith KITH_RELAY=path/to/kith-relay scripts/bench-cli.sh
#                                      measure other binaries (e.g. an older release)
#
# Steps, each a separate process: generate the export (the same rows as
# `kith_client::import::testing::generate_linkedin_csv`), `kith init`, `kith import linkedin`
# (measured), `kith sync` (pushes everything), then `kith sync` three times with nothing to do
# (measured: the cost of a sync on a store of that size), `kith contacts add` (measured:
# opening the store plus one durable write), `kith contacts show` of that contact (opening the
# store and reading one record), then an import of 100 changed rows and the sync that pushes
# those 100 changed contacts.
#
# Then the background budget (issue 16 item 5; skip with BACKGROUND=0): a second device of the
# account (restored from the recovery key) syncs everything, the first device writes 100
# envelopes (one edited contact each, one `kith contacts edit` + `kith sync` per envelope),
# and the second device runs what a phone's notification extension runs on a wake-up
# (`crates/client/examples/background_sync.rs`: open the store, sync once, exit), measured:
# store open time, sync time and peak RSS (the example's own `VmHWM` and /usr/bin/time -v).
# Budget: open < 100 ms, peak RSS < 24 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${1:-100000}
if [[ -z ${KITH:-} ]]; then
  cargo build --release -p kith-cli -p kith-relay 2>&1 | tail -1
  if [[ ${BACKGROUND:-1} != 0 ]]; then
    cargo build --release -p kith-client --example background_sync 2>&1 | tail -1
  fi
fi
kith=${KITH:-target/release/kith}
relay=${KITH_RELAY:-target/release/kith-relay}
background_sync=${KITH_BACKGROUND_SYNC:-$(dirname "$kith")/examples/background_sync}
work=$(mktemp -d)
relay_pid=
cleanup() {
  if [[ -n $relay_pid ]]; then kill "$relay_pid" 2>/dev/null || true; wait "$relay_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
load() { cut -d' ' -f1-3 /proc/loadavg; }

python3 - "$rows" > "$work/Connections.csv" <<'PY'
import sys
n = int(sys.argv[1])
FIRST = ["Ana", "Seán", "Björn", "Grace", "Olúwaseun", "Mei", "José", "Priya"]
LAST = ["Nasser", "van der Berg", "Müller", "Nguyen", "Álvarez", "Okonjo"]
COMPANY = ["Hooli", '"Acme, Inc."', '"Umbrella ""Bio"" Corp"', "Initech LLC", "Soylent"]
POSITION = ["Engineer", '"Engineering Manager, Payments"', "VP Sales", "Designer"]
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
out = sys.stdout
out.write('Notes:\r\n"When exporting your connection data, you may notice that some of the email addresses are missing. You will only see email addresses for connections who have allowed their connections to see or download their email address using this setting https://www.linkedin.com/psettings/privacy/email. You can learn more here https://www.linkedin.com/help/linkedin/answer/261"\r\n\r\n')
out.write("First Name,Last Name,URL,Email Address,Company,Position,Connected On\r\n")
for row in range(n):
    i = row - 25 if row % 50 == 49 else row
    slug = "person-%x" % i
    email = slug + "@example.com" if i % 3 == 0 else ""
    out.write("%s,%s,https://www.linkedin.com/in/%s,%s,%s,%s,%02d %s %d\r\n" % (
        FIRST[i % 8], LAST[(i // 8) % 6], slug, email, COMPANY[i % 5], POSITION[i % 4],
        1 + i % 28, MONTHS[i % 12], 2005 + i % 20))
PY

# A relay with room for the whole store, on a free loopback port.
port=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
RUST_LOG=warn "$relay" serve --listen "127.0.0.1:$port" --data "$work/relay" \
  > "$work/relay.log" 2>&1 &
relay_pid=$!
for _ in $(seq 1 100); do
  grep -q '^certificate sha256' "$work/relay.log" 2>/dev/null && break
  sleep 0.1
done
pin=$(sed -n 's/^certificate sha256 //p' "$work/relay.log")
[[ -n $pin ]] || { cat "$work/relay.log"; exit 1; }
home="$work/home"
export RUST_LOG=error

# Runs a command under /usr/bin/time -v; prints "label: wall s, peak RSS MB".
measure() {
  local label=$1; shift
  /usr/bin/time -v "$@" > "$work/out" 2> "$work/time" || { cat "$work/out" "$work/time"; exit 1; }
  local wall rss
  wall=$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$work/time" |
    awk -F: '{ if (NF == 3) print $1 * 3600 + $2 * 60 + $3; else print $1 * 60 + $2 }')
  rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$work/time")
  printf '%-44s %8.2f s %8.1f MB   (load %s)\n' "$label:" "$wall" "$(echo "$rss / 1024" | bc -l)" "$(load)"
}

echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; $(date -u '+%F %R') UTC; $kith"
"$kith" --home "$home" init --relay "127.0.0.1:$port" --relay-cert-sha256 "$pin" --device-name bench > "$work/init"
recovery_key=$(grep -oE '[0-9A-Z]{4}(-[0-9A-Z]{4}){5,}' "$work/init" | head -1)
measure "kith --version (process start)" "$kith" --version
measure "import $rows LinkedIn rows" "$kith" --home "$home" import linkedin "$work/Connections.csv"
grep -E '^Imported' "$work/out" || true
measure "first sync (pushes the import)" "$kith" --home "$home" sync
for i in 1 2 3; do
  measure "sync with nothing to do ($i)" "$kith" --home "$home" sync
done
grep -E '^Synced' "$work/out" || true
measure "contacts add (open + one durable write)" "$kith" --home "$home" contacts add --name "Ada Lovelace"
added=$(sed -n 's/^Added contact \([0-9a-f]*\)\.$/\1/p' "$work/out")
measure "sync pushing that one contact" "$kith" --home "$home" sync
for i in 1 2 3; do
  measure "open: contacts show one contact ($i)" "$kith" --home "$home" contacts show "$added"
done

# 100 contacts changed at once: the same connections, each now with an e-mail address it did
# not have (a field an import adds; names and titles are never overwritten by an import).
python3 - "$rows" > "$work/Changed.csv" <<'PY'
import sys
n = int(sys.argv[1])
out = sys.stdout
out.write("First Name,Last Name,URL,Email Address,Company,Position,Connected On\r\n")
changed = 0
i = 1
while changed < 100 and i < n:
    if i % 3 != 0 and i % 50 != 49:
        slug = "person-%x" % i
        out.write("Changed,Person,https://www.linkedin.com/in/%s,%s@changed.example,,,\r\n" % (slug, slug))
        changed += 1
    i += 1
PY
measure "import 100 changed LinkedIn rows" "$kith" --home "$home" import linkedin "$work/Changed.csv"
grep -E '^Imported' "$work/out" || true
measure "sync pushing 100 changed contacts" "$kith" --home "$home" sync
grep -E '^Synced' "$work/out" || true
du -sh "$home/store" | sed 's/^/store on disk: /'

[[ ${BACKGROUND:-1} != 0 ]] || exit 0
echo
echo "background budget: a second device, 100 new envelopes (one edited contact each)"
phone="$work/phone"
KITH_RECOVERY_KEY=$recovery_key "$kith" --home "$phone" recover --relay "127.0.0.1:$port" \
  --relay-cert-sha256 "$pin" --device-name phone > /dev/null
measure "second device: first sync (pulls everything)" "$kith" --home "$phone" sync
"$kith" --home "$home" contacts list --json |
  python3 -c 'import json, sys; [print(c["id"]) for c in json.load(sys.stdin)[:100]]' > "$work/ids"
[[ $(wc -l < "$work/ids") == 100 ]] || { echo "expected 100 contact ids"; exit 1; }
n=0
while read -r id; do
  n=$((n + 1))
  "$kith" --home "$home" contacts edit "$id" --name "Edited $n" > /dev/null
  "$kith" --home "$home" sync > /dev/null
done < "$work/ids"
if [[ -x $background_sync ]]; then
  for i in 1 2 3; do
    # The first run pulls the 100 envelopes; the next two find nothing new (open + empty sync).
    measure "background sync ($i): open, sync, exit" "$background_sync" "$phone"
    cat "$work/out"
  done
else
  # Binaries without the example (KITH=… of another build): the same work through `kith`.
  measure "background sync: kith sync pulling 100 envelopes" "$kith" --home "$phone" sync
  grep -E '^Synced' "$work/out" || true
  for i in 1 2 3; do
    measure "store open: kith contacts show ($i)" "$kith" --home "$phone" contacts show "$(head -1 "$work/ids")"
  done
fi
