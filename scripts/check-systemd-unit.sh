#!/usr/bin/env bash
# Checks dist/systemd/ringcache.service beyond `systemd-analyze verify` (which the test suite
# runs): runs the release binary under strace through a short workload (startup with recovery,
# writes, BGSAVE, INFO, a metrics scrape, SHUTDOWN) and checks that every system call it made
# is allowed by the unit's SystemCallFilter=. Needs strace, systemd-analyze, redis-cli, curl,
# python3. Usage: scripts/check-systemd-unit.sh [port]   (default port 7190; metrics on +1)
set -euo pipefail
cd "$(dirname "$0")/.."
port=${1:-7190}
mport=$((port + 1))
bin=${CARGO_TARGET_DIR:-target}/release/ringcache
[ -x "$bin" ] || cargo build --release --bin ringcache
unit=dist/systemd/ringcache.service
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "== systemd-analyze verify (ExecStart pointed at $bin)"
sed "s#/usr/local/bin/ringcache#$(realpath "$bin")#" "$unit" > "$tmp/ringcache.service"
systemd-analyze verify "$tmp/ringcache.service"
echo "ok"
echo "== systemd-analyze security"
systemd-analyze security --offline=yes "$tmp/ringcache.service" | tail -1

echo "== system calls made by a short run under strace"
strace -f -qq -c -o "$tmp/strace.txt" "$bin" --bind 127.0.0.1:$port --metrics-bind 127.0.0.1:$mport \
    --threads 2 --data-dir "$tmp/data" --snapshot-interval-s 1 > "$tmp/server.log" 2>&1 &
pid=$!
for _ in $(seq 100); do redis-cli -p $port ping >/dev/null 2>&1 && break; sleep 0.1; done
redis-cli -p $port set a b >/dev/null
redis-cli -p $port bgsave >/dev/null
redis-cli -p $port info >/dev/null
curl -sf http://127.0.0.1:$mport/metrics >/dev/null
curl -sf http://127.0.0.1:$mport/health >/dev/null
sleep 1.5
redis-cli -p $port shutdown >/dev/null 2>&1 || true
wait $pid || true

python3 - "$unit" "$tmp/strace.txt" <<'PY'
import functools, subprocess, sys
unit, trace = sys.argv[1], sys.argv[2]

@functools.lru_cache(None)
def expand(group):
    out = subprocess.run(["systemd-analyze", "syscall-filter", group], capture_output=True, text=True, check=True).stdout
    calls = set()
    for line in out.splitlines()[1:]:
        t = line.strip()
        if not t or t.startswith("#"):
            continue
        calls |= expand(t) if t.startswith("@") else {t}
    return frozenset(calls)

def names(words):
    s = set()
    for w in words:
        s |= expand(w) if w.startswith("@") else {w}
    return s

allowed, denied = set(), set()
for line in open(unit):
    line = line.strip()
    if line.startswith("SystemCallFilter="):
        v = line.split("=", 1)[1]
        if v.startswith("~"):
            denied |= names(v[1:].split())
        else:
            allowed |= names(v.split())
used = set()
for line in open(trace):
    parts = line.split()
    if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
        used.add(parts[-1])
bad = sorted(c for c in used if c not in allowed or c in denied)
print(f"{len(used)} distinct system calls used; {len(bad)} not allowed by the unit: {bad}")
sys.exit(1 if bad else 0)
PY
echo "ok"
