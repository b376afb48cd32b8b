#!/usr/bin/env bash
# Checks the packaging as far as this machine allows (run by .ci/run):
#   - the systemd unit: `systemd-analyze verify` and, offline, `systemd-analyze security` (an
#     exposure score of at most 2.0) when systemd-analyze is here; always, the directives the
#     hardening relies on;
#   - the Dockerfile: hadolint when installed; always, the rules the image relies on
#     (multi-stage, non-root, data volume, health check, pinned base images, --locked build);
#   - compose.yaml: parses (python3 + PyYAML) and wires the relay to PostgreSQL;
#   - the sysctl file names kernel settings that exist;
#   - with a built kith-relay (KITH_RELAY_BIN, else target/debug or target/release), the flags
#     the unit, the image and compose pass are ones it accepts.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
failures=0
fail() { echo "packaging/check.sh: $*" >&2; failures=$((failures + 1)); }
ok() { echo "  ok: $*"; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

unit="$here/kith-relay.service"
echo "== systemd unit"
for directive in 'DynamicUser=yes' 'StateDirectory=kith-relay' 'ProtectSystem=strict' \
    'NoNewPrivileges=yes' 'ProtectHome=yes' 'PrivateTmp=yes' 'CapabilityBoundingSet=' \
    'RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX' 'SystemCallFilter=@system-service' \
    'ExecReload=/bin/kill -HUP $MAINPID' 'KillSignal=SIGTERM' 'UMask=0077'; do
    if grep -qxF "$directive" "$unit"; then ok "$directive"; else fail "the unit lacks '$directive'"; fi
done
grep -q '^ExecStart=.* serve .*--data \${STATE_DIRECTORY}' "$unit" \
    || fail "ExecStart must serve from \${STATE_DIRECTORY}"
if command -v systemd-analyze >/dev/null 2>&1; then
    # verify checks that ExecStart's program exists: stand in /bin/true for the binary.
    sed 's#/usr/local/bin/kith-relay#/bin/true#' "$unit" > "$tmp/kith-relay.service"
    if out="$(systemd-analyze verify "$tmp/kith-relay.service" 2>&1)" && [ -z "$out" ]; then
        ok "systemd-analyze verify"
    else
        fail "systemd-analyze verify: ${out:-failed}"
    fi
    if security="$(systemd-analyze security --offline=yes "$tmp/kith-relay.service" 2>/dev/null)"; then
        score="$(printf '%s\n' "$security" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')"
        if [ -n "$score" ] && awk -v s="$score" 'BEGIN { exit !(s <= 2.0) }'; then
            ok "systemd-analyze security: exposure $score"
        else
            fail "systemd-analyze security: exposure ${score:-unknown}, above 2.0"
        fi
    else
        echo "  skipped: systemd-analyze security --offline (needs systemd 252 or later)"
    fi
else
    echo "  skipped: systemd-analyze verify (no systemd-analyze on this machine)"
fi

dockerfile="$here/Dockerfile"
echo "== Dockerfile"
stages="$(grep -c '^FROM ' "$dockerfile")"
[ "$stages" -ge 2 ] && ok "multi-stage ($stages stages)" || fail "the Dockerfile must build in a stage of its own"
if grep '^FROM ' "$dockerfile" | grep -Eq ':latest( |$)|^FROM [^: ]+( AS|$)'; then
    fail "every base image needs a pinned tag (not latest, not untagged)"
else
    ok "base images tagged"
fi
# The last stage: everything after the last FROM, continuation lines joined.
last="$(sed -e ':a' -e '/\\$/N; s/\\\n//; ta' "$dockerfile" \
    | awk '/^FROM /{buf=""} {buf = buf $0 "\n"} END {printf "%s", buf}')"
user="$(printf '%s' "$last" | sed -n 's/^USER \([^: ]*\).*/\1/p' | tail -1)"
case "$user" in
    '' | root | 0) fail "the final stage must run as a non-root USER (got '${user:-none}')" ;;
    *) ok "runs as $user" ;;
esac
printf '%s' "$last" | grep -q '^VOLUME \["/data"\]' && ok "data volume" || fail "no VOLUME [\"/data\"]"
printf '%s' "$last" | grep -q '^HEALTHCHECK .*kith-relay health' && ok "health check" || fail "no HEALTHCHECK with kith-relay health"
printf '%s' "$last" | grep -q '^EXPOSE 4433/udp' && ok "EXPOSE 4433/udp" || fail "no EXPOSE 4433/udp (QUIC is UDP)"
grep -q 'cargo build --release --locked' "$dockerfile" && ok "--locked build" || fail "cargo build must be --locked"
grep -Eq '^ADD +https?://' "$dockerfile" && fail "no ADD of URLs (unverified downloads)" || ok "no ADD of URLs"
printf '%s' "$last" | grep -q 'CMD \[.*"--data", "/data"' && ok "serves from /data" || fail "CMD must serve --data /data"
if command -v hadolint >/dev/null 2>&1; then
    hadolint "$dockerfile" && ok "hadolint" || fail "hadolint"
else
    echo "  skipped: hadolint (not installed)"
fi

echo "== compose.yaml"
if ! python3 -c 'import yaml' 2>/dev/null; then
    python3 -m pip install --quiet pyyaml >/dev/null 2>&1 || true
fi
if python3 -c 'import yaml' 2>/dev/null; then
    if python3 - "$here/compose.yaml" <<'PY'
import sys, yaml
with open(sys.argv[1]) as f:
    doc = yaml.safe_load(f)
errors = []
services = doc.get("services", {})
relay, pg = services.get("relay"), services.get("postgres")
if not relay or not pg:
    errors.append("services relay and postgres are both needed")
else:
    if relay.get("build", {}).get("dockerfile") != "packaging/Dockerfile":
        errors.append("relay builds from packaging/Dockerfile")
    if pg.get("healthcheck") is None:
        errors.append("postgres needs a health check")
    if relay.get("depends_on", {}).get("postgres", {}).get("condition") != "service_healthy":
        errors.append("relay waits for a healthy postgres")
    store = relay.get("environment", {}).get("KITH_RELAY_STORE", "")
    if not store.startswith("postgres://") or "@postgres:" not in store:
        errors.append("relay's KITH_RELAY_STORE points at the postgres service")
    if "4433:4433/udp" not in relay.get("ports", []):
        errors.append("relay publishes 4433/udp")
    volumes = doc.get("volumes", {})
    for name in ("relay-data", "postgres-data"):
        if name not in volumes:
            errors.append(f"volume {name} is declared")
    if "ports" in pg:
        errors.append("postgres publishes no port")
for e in errors:
    print("  compose.yaml:", e, file=sys.stderr)
sys.exit(1 if errors else 0)
PY
    then ok "parses; relay on PostgreSQL"; else fail "compose.yaml"; fi
else
    fail "python3 with PyYAML is needed to check compose.yaml (pip install pyyaml)"
fi

echo "== sysctl"
while read -r key _ value; do
    case "$key" in '' | '#'*) continue ;; esac
    if [ -e "/proc/sys/${key//.//}" ]; then ok "$key = $value"; else fail "no kernel setting $key"; fi
done < "$here/60-kith-relay.conf"

echo "== the flags packaging passes, against the binary"
bin="${KITH_RELAY_BIN:-}"
for candidate in "$root/target/debug/kith-relay" "$root/target/release/kith-relay"; do
    [ -z "$bin" ] && [ -x "$candidate" ] && bin="$candidate"
done
if [ -n "$bin" ]; then
    "$bin" serve --help > "$tmp/serve-help"
    for flag in --listen --data --registration --config --cert --key; do
        grep -q -- "$flag" "$tmp/serve-help" && ok "serve $flag" || fail "kith-relay serve has no $flag"
    done
    # `pin` on a self-signed certificate made by a real start: what the health check reads.
    data="$tmp/data"
    "$bin" serve --listen 127.0.0.1:0 --data "$data" > "$tmp/serve-out" 2>/dev/null &
    pid=$!
    for _ in $(seq 1 100); do grep -q '^key sha256' "$tmp/serve-out" && break; sleep 0.1; done
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    served="$(sed -n 's/^key sha256 //p' "$tmp/serve-out")"
    pinned="$("$bin" pin --data "$data" 2>/dev/null | sed -n 's/^key sha256 //p' || true)"
    if [ -n "$served" ] && [ "$served" = "$pinned" ]; then
        ok "kith-relay pin prints the key pin serve printed"
    else
        fail "kith-relay pin printed '$pinned', serve printed '$served'"
    fi
    if "$bin" --help | grep -q '^  health'; then
        ok "kith-relay health exists (the image's health check)"
    else
        echo "  note: this kith-relay has no health subcommand yet (issue 15 item 2)"
    fi
else
    echo "  skipped: no built kith-relay (cargo build -p kith-relay)"
fi

if [ "$failures" -gt 0 ]; then
    echo "packaging/check.sh: $failures check(s) failed" >&2
    exit 1
fi
echo "packaging: all checks passed"
