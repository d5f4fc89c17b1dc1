# shellcheck shell=bash
# Shared helpers of scripts/bench-*.sh. Sourced, not run.
#
# What they guarantee, so that the two benchmarks compare like with like:
# * the servers run pinned to SERVER_CPU and every client to CLIENT_CPU (default 1 and 0), on
#   ports of our own (default 7101/7102), and are stopped by PID on exit, never by name;
# * Redis runs with persistence off (`--save '' --appendonly no`);
# * every result is stored with the load average at the moment it was taken.
#
# Environment (all optional):
#   SERVER_CPU, CLIENT_CPU   CPUs for the servers and for the clients (default 1, 0)
#   RC_PORT, REDIS_PORT      ports for ringcache and redis-server (default 7101, 7102)
#   RINGCACHE_BIN            ringcache binary (default: <target>/release/ringcache, built if missing)
#   LOADGEN_BIN              ringcache-loadgen binary (same default)
#   REDIS_SERVER             redis-server binary (default: from PATH, installed with apt if missing)
#   BENCH_MAX_LOAD           wait for the 1-minute load average to fall below this (default 1.0)
#   BENCH_WAIT_LOAD_S        ... but at most this long, then run anyway and say so (default 120)
#   BENCH_OUT                where the tables go (default docs/perf)
#   BENCH_RT_PRIO            run servers and load generators SCHED_FIFO at this priority (e.g.
#                            10; root only) so that other work on a shared machine cannot delay
#                            them; helpers (samplers, redis-cli) stay SCHED_OTHER. Off by default.

set -euo pipefail

BENCH_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SERVER_CPU=${SERVER_CPU:-1}
CLIENT_CPU=${CLIENT_CPU:-0}
RC_PORT=${RC_PORT:-7101}
REDIS_PORT=${REDIS_PORT:-7102}
BENCH_MAX_LOAD=${BENCH_MAX_LOAD:-1.0}
BENCH_WAIT_LOAD_S=${BENCH_WAIT_LOAD_S:-120}
BENCH_OUT=${BENCH_OUT:-$BENCH_ROOT/docs/perf}
_target_dir=${CARGO_TARGET_DIR:-$BENCH_ROOT/target}
RINGCACHE_BIN=${RINGCACHE_BIN:-$_target_dir/release/ringcache}
LOADGEN_BIN=${LOADGEN_BIN:-$_target_dir/release/ringcache-loadgen}
# Prefix for the measured processes: `taskset -c CPU "${RT[@]}" cmd` (chrt execs, so $! is
# still the command's PID).
RT=()
[[ -n ${BENCH_RT_PRIO:-} ]] && RT=(chrt -f "$BENCH_RT_PRIO")

# Scratch space for logs and raw outputs of this run; removed on exit.
BENCH_TMP=$(mktemp -d "${TMPDIR:-/tmp}/ringcache-bench.XXXXXX")
# PIDs of the servers we started, stopped on exit.
_BENCH_PIDS=()

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Stops one server we started: SIGTERM, up to 5 s for it to exit, then SIGKILL.
stop_pid() {
    local pid=$1
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    # Forget it, so that the exit trap never signals a PID the system has since reused.
    local kept=() p
    for p in "${_BENCH_PIDS[@]}"; do [[ $p == "$pid" ]] || kept+=("$p"); done
    _BENCH_PIDS=("${kept[@]}")
}

_bench_cleanup() {
    local pid
    for pid in "${_BENCH_PIDS[@]}"; do stop_pid "$pid"; done 2>/dev/null
    rm -rf "$BENCH_TMP"
}
trap _bench_cleanup EXIT
trap 'exit 130' INT TERM

# Installs redis-server and redis-tools with apt if a command is missing (only as root).
need_redis() {
    local missing=() c
    for c in redis-cli redis-benchmark; do
        command -v "$c" >/dev/null || missing+=("$c")
    done
    [[ -z ${REDIS_SERVER:-} ]] && ! command -v redis-server >/dev/null && missing+=(redis-server)
    if (( ${#missing[@]} > 0 )); then
        if [[ $(id -u) -ne 0 ]]; then
            die "missing: ${missing[*]}; install them with: sudo apt-get install -y redis-server redis-tools"
        fi
        log "installing redis-server redis-tools (missing: ${missing[*]})"
        # The Debian package also starts a system redis on 6379; we use our own ports and leave
        # it alone.
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y redis-server redis-tools >&2 \
            || { apt-get update >&2 && apt-get install -y redis-server redis-tools >&2; }
    fi
    REDIS_SERVER=${REDIS_SERVER:-$(command -v redis-server)}
}

# Builds ringcache and the loadgen in release mode if either binary is missing.
need_ringcache() {
    if [[ ! -x $RINGCACHE_BIN || ! -x $LOADGEN_BIN ]]; then
        command -v cargo >/dev/null || die "no $RINGCACHE_BIN and no cargo to build it (install Rust: https://rustup.rs)"
        log "building ringcache and ringcache-loadgen (release) into $_target_dir"
        (cd "$BENCH_ROOT" && CARGO_TARGET_DIR=$_target_dir cargo build --release -p ringcache -p ringcache-loadgen >&2)
    fi
}

# Pins commands to a CPU; on a one-CPU machine both sides share it (and the report says so).
check_cpus() {
    local n
    n=$(nproc)
    if (( n < 2 )); then
        log "warning: $n CPU: server and client share CPU 0; figures are not comparable to the 2-CPU method"
        SERVER_CPU=0 CLIENT_CPU=0
    fi
}

load_avg() { cut -d' ' -f1-3 /proc/loadavg; }

# cpu_busy: how busy each CPU was over the last second, e.g. "cpu0 3% cpu1 2%". The load average
# lags by minutes; this says what the benchmark is about to share the machine with.
cpu_busy() {
    local a b
    a=$(awk '/^cpu[0-9]+ / { print $1, $5 + $6, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat)
    sleep 1
    b=$(awk '/^cpu[0-9]+ / { print $1, $5 + $6, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat)
    paste -d' ' <(echo "$a") <(echo "$b") \
        | awk '{ printf "%s%s %.0f%%", (NR > 1 ? " " : ""), $1, 100 * (1 - ($5 - $2) / ($6 - $3)) } END { print "" }'
}

# Waits (bounded) for the 1-minute load average to drop below BENCH_MAX_LOAD.
wait_quiet() {
    local waited=0 l1
    while :; do
        l1=$(cut -d' ' -f1 /proc/loadavg)
        awk -v l="$l1" -v m="$BENCH_MAX_LOAD" 'BEGIN { exit !(l < m) }' && { log "load $(load_avg)"; return 0; }
        if (( waited >= BENCH_WAIT_LOAD_S )); then
            log "load still $(load_avg) after ${waited}s (want < $BENCH_MAX_LOAD); running anyway, the tables record it"
            return 0
        fi
        log "load $(load_avg) >= $BENCH_MAX_LOAD, waiting (${waited}/${BENCH_WAIT_LOAD_S}s)"
        sleep 10
        waited=$((waited + 10))
    done
}

# Fails if something already listens on the port: we never reuse or stop other people's servers.
# wait_port_free PORT: for a port our own server just released. Its listening socket can outlive
# the process for a moment (io_uring tears a ring down, and drops the files its requests hold,
# after the process is gone), so wait up to 5 s before calling the port taken.
wait_port_free() {
    local i
    for i in $(seq 50); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null || return 0
        sleep 0.1
    done
    port_free "$1"
}

port_free() {
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
        die "port $1 is in use; pick others with RC_PORT=... REDIS_PORT=..."
    fi
}

# start_ringcache PORT [ARGS...] -> sets RC_PID. One shard, pinned to SERVER_CPU, ready when it
# logs `listening on`. ARGS are extra server options (e.g. --durability sync). The data directory
# is a fresh one under BENCH_TMP (`ringcache-PORT.data`, removed on exit), never ./data of the
# caller's working directory; without --durability in ARGS the mode is RC_DURABILITY, default
# off.
start_ringcache() {
    local port=$1 logf="$BENCH_TMP/ringcache-$1.log" data="$BENCH_TMP/ringcache-$1.data"
    shift
    port_free "$port"
    # Persistence off unless ARGS or RC_DURABILITY choose a mode: the throughput and memory
    # targets compare against Redis without persistence.
    local mode=(--durability "${RC_DURABILITY:-off}") a
    for a in "$@"; do [[ $a == --durability* ]] && mode=(); done
    rm -rf "$data"
    taskset -c "$SERVER_CPU" "${RT[@]}" "$RINGCACHE_BIN" --bind "127.0.0.1:$port" --threads 1 --log-level info \
        --data-dir "$data" "${mode[@]}" "$@" 2>"$logf" >/dev/null &
    RC_PID=$!
    _BENCH_PIDS+=("$RC_PID")
    for _ in $(seq 100); do
        grep -q "listening on" "$logf" && return 0
        kill -0 "$RC_PID" 2>/dev/null || { cat "$logf" >&2; die "ringcache exited at startup"; }
        sleep 0.1
    done
    cat "$logf" >&2
    die "ringcache did not log 'listening on' within 10 s"
}

# start_redis PORT [ARGS...] -> sets REDIS_PID. Persistence off, pinned to SERVER_CPU. ARGS are
# extra `--option value` pairs, applied after the defaults (redis-server keeps the last value
# of an option, so e.g. `--appendonly yes` turns the AOF on). Its directory is BENCH_TMP/redis-PORT.
start_redis() {
    local port=$1 dir="$BENCH_TMP/redis-$1"
    shift
    port_free "$port"
    mkdir -p "$dir"
    taskset -c "$SERVER_CPU" "${RT[@]}" "$REDIS_SERVER" --port "$port" --bind 127.0.0.1 --save '' \
        --appendonly no --daemonize no --dir "$dir" --logfile "$dir/redis.log" "$@" &
    REDIS_PID=$!
    _BENCH_PIDS+=("$REDIS_PID")
    for _ in $(seq 100); do
        [[ $(redis-cli -p "$port" ping 2>/dev/null) == PONG ]] && return 0
        kill -0 "$REDIS_PID" 2>/dev/null || { cat "$dir/redis.log" >&2; die "redis-server exited at startup"; }
        sleep 0.1
    done
    die "redis-server did not answer PING within 10 s"
}

# info_field PORT FIELD: one field of INFO.
info_field() {
    # awk reads to the end (no early exit) so that, under pipefail, tr never dies of SIGPIPE.
    redis-cli -p "$1" info 2>/dev/null | tr -d '\r' | awk -F: -v f="$2" '$1 == f && !done { print $2; done = 1 }'
}

# vm_rss_kb PID: resident set size in KiB.
vm_rss_kb() { awk '$1 == "VmRSS:" { print $2 }' "/proc/$1/status"; }

# median of the arguments (numbers); the lower middle for an even count.
median() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}

# ratio A B: A/B with two decimals.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "n/a"; else printf "%.2f", a / b }'; }

# machine_info: the provenance block every table starts with.
machine_info() {
    local model
    model=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)
    echo "machine:   $(nproc) CPUs ($model), kernel $(uname -r), $(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo) RAM"
    echo "ringcache: $("$RINGCACHE_BIN" --version 2>/dev/null | paste -sd" " -) (git $(git -C "$BENCH_ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')), --threads 1 --durability ${RC_DURABILITY:-off}"
    echo "redis:     $("$REDIS_SERVER" --version | grep -o 'v=[^ ]*' | cut -c3-), --save '' --appendonly no"
    echo "pinning:   servers on CPU $SERVER_CPU (taskset), clients on CPU $CLIENT_CPU"
}
