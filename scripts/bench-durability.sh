#!/usr/bin/env bash
# What durability costs: ringcache `--durability off|async|sync` against redis-server 7 with
# `appendonly yes` and `appendfsync no|everysec|always`, all six side by side on one disk, with
# the disk's own durable-write latency beside them (issues 3 and 5).
#
#   servers:  ringcache --threads 1 in each mode (fresh data dir each) and redis-server with the
#             AOF in each fsync policy (auto-rewrite off: ringcache never compacts either; RDB
#             off), all six running at once, pinned to CPU 1, their files under one temp dir on
#             the disk (TMPDIR, default /var/tmp; refused if tmpfs); clients pinned to CPU 0.
#   disk:     4 KiB O_DIRECT writes, one at a time: fio (when installed) with --fdatasync=1, and
#             the built-in probe `examples/disk_probe.rs` (write+fdatasync, O_DSYNC overwrite,
#             O_DSYNC into fallocated space as the WAL writes).
#   loopback: redis-benchmark PING_MBULK p50 at 1 connection against the `off` server.
#   issue 3:  redis-benchmark -t set -d 256 -r 100000 at -c 50 and -c 1, rounds alternating the
#             order of the servers; medians of the rounds.
#   issue 5:  ringcache-loadgen compare, one seeded SET-only workload (256 B values, 100k keys,
#             uniform), rounds alternating: 1 connection, 50 connections, 50 connections x
#             pipeline 16 (closed loop), and 50 connections open loop at --rate ops/s.
# It prints one table with every figure and each target met/missed, and writes
# docs/perf/durability.txt (the table), durability-rb-rounds.csv, durability-disk.txt (+ fio's
# JSON), durability-loadgen-<regime>.txt|json and durability-<regime>.svg.
#
# Usage: scripts/bench-durability.sh [--quick] [--rounds N] [--rb-rounds N] [--duration-s S]
#                                    [--rate R] [--no-redis] [--no-write]
#   --rounds N       loadgen compare rounds per regime (default 2; order reverses every round)
#   --rb-rounds N    redis-benchmark rounds (default 3; medians)
#   --duration-s S   loadgen measured window per target and round (default 5; warm-up 1 s)
#   --rate R         open-loop rate, ops/s in total (default 20000)
#   --quick          1 round each, 2 s windows, fewer redis-benchmark requests (about 3 min)
#   --no-redis       ringcache only (the Redis targets are then n/a)
#   --no-write       print only; do not write docs/perf/
# Environment: see scripts/lib-bench.sh, and
#   DUR_PORT         first of six consecutive ports (default 7111: off, async, sync, redis-no,
#                    redis-everysec, redis-always)
#   RB_REQUESTS_C50, RB_REQUESTS_C1   redis-benchmark -n (default 100000, 10000)
#   PROBE_COUNT      writes per disk-probe way (default 2000; fio writes 16 MiB = 4096)
#   RUN_TIMEOUT_S    bound on each client run (default 180)
# The default run takes about 10 minutes on 2 quiet CPUs and a disk with ~0.1 ms syncs (more on a
# slow disk: redis-benchmark runs a fixed request count), plus up to BENCH_WAIT_LOAD_S (120 s)
# waiting for the machine to be quiet. Needs root (or the tools installed) for apt: redis-server,
# redis-tools, jq; fio is used when present.

# The logs must be on the disk being measured: the lib's temp dir goes under TMPDIR.
export TMPDIR=${TMPDIR:-/var/tmp}
source "$(dirname "$0")/lib-bench.sh"

ROUNDS=2
RB_ROUNDS=3
DURATION_S=5
WARMUP_S=1
RATE=20000
REDIS=1
WRITE=1
RB_REQUESTS_C50=${RB_REQUESTS_C50:-100000}
RB_REQUESTS_C1=${RB_REQUESTS_C1:-10000}
PROBE_COUNT=${PROBE_COUNT:-2000}
RUN_TIMEOUT_S=${RUN_TIMEOUT_S:-180}
DUR_PORT=${DUR_PORT:-7111}
while (( $# )); do
    case $1 in
        --rounds) ROUNDS=$2; shift 2 ;;
        --rb-rounds) RB_ROUNDS=$2; shift 2 ;;
        --duration-s) DURATION_S=$2; shift 2 ;;
        --rate) RATE=$2; shift 2 ;;
        --quick) ROUNDS=1; RB_ROUNDS=1; DURATION_S=2; RB_REQUESTS_C50=50000; RB_REQUESTS_C1=3000
                 PROBE_COUNT=500; shift ;;
        --no-redis) REDIS=0; shift ;;
        --no-write) WRITE=0; shift ;;
        -h|--help) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
T_START=$(date +%s)

# --- Tools ------------------------------------------------------------------------------------

# apt_need PACKAGE COMMAND: installs PACKAGE when COMMAND is missing (as root), else dies with
# the one line that says what to do.
apt_need() {
    command -v "$2" >/dev/null && return 0
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
        die "missing: $2; install it with: sudo apt-get install -y $1"
    fi
    log "installing $1 (for $2)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y "$1" >&2 \
        || { apt-get update >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y "$1" >&2; } \
        || die "apt-get install $1 failed"
}
apt_need jq jq
apt_need util-linux taskset
if (( REDIS )); then
    need_redis
else
    apt_need redis-tools redis-benchmark
fi
command -v cargo >/dev/null || die "cargo is needed to build ringcache (install Rust: https://rustup.rs)"
log "building ringcache, ringcache-loadgen and the disk probe (release) into $_target_dir"
(cd "$BENCH_ROOT" && CARGO_TARGET_DIR=$_target_dir cargo build --release -p ringcache -p ringcache-loadgen >&2 \
    && CARGO_TARGET_DIR=$_target_dir cargo build --release -p ringcache --example disk_probe >&2) \
    || die "cargo build failed"
PROBE_BIN=$_target_dir/release/examples/disk_probe
check_cpus

case $(stat -f -c %T "$BENCH_TMP") in
    tmpfs|ramfs) die "$BENCH_TMP is on tmpfs; set TMPDIR to a directory on the disk to measure" ;;
esac
FS_TYPE=$(findmnt -no FSTYPE -T "$BENCH_TMP" 2>/dev/null || stat -f -c %T "$BENCH_TMP")
FS_DEV=$(df -P "$BENCH_TMP" | awk 'NR == 2 { print $1 }')
FS_MOUNT=$(df -P "$BENCH_TMP" | awk 'NR == 2 { print $6 }')

# --- Servers ----------------------------------------------------------------------------------

RC_MODES="off async sync"
RD_MODES="no everysec always"
ALL_TARGETS="off async sync"
(( REDIS )) && ALL_TARGETS+=" redis-no redis-everysec redis-always"
declare -A PORT PID
i=0
for t in off async sync redis-no redis-everysec redis-always; do
    PORT[$t]=$((DUR_PORT + i))
    i=$((i + 1))
done

# ticks PID: utime + stime of the process (all threads), in clock ticks.
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
# rustc_count: compilers running on the machine (someone else's build competes with us).
rustc_count() { pgrep -c -x rustc || true; }

start_all() {
    local m
    for m in $RC_MODES; do
        start_ringcache "${PORT[$m]}" --durability "$m"
        PID[$m]=$RC_PID
        [[ $(info_field "${PORT[$m]}" durability) == "$m" ]] || die "ringcache on ${PORT[$m]} is not in $m mode"
        if [[ $m != off && $(info_field "${PORT[$m]}" wal_io) != direct ]]; then
            log "warning: the $m server's log is not on direct I/O (wal_io=$(info_field "${PORT[$m]}" wal_io))"
        fi
    done
    (( REDIS )) || return 0
    for m in $RD_MODES; do
        start_redis "${PORT[redis-$m]}" --appendonly yes --appendfsync "$m" --auto-aof-rewrite-percentage 0
        PID[redis-$m]=$REDIS_PID
        [[ $(redis-cli -p "${PORT[redis-$m]}" config get appendfsync | tail -1) == "$m" ]] \
            || die "redis-server on ${PORT[redis-$m]} is not appendfsync $m"
    done
}

# wal_counters TARGET -> "fsyncs records" from ringcache's INFO persistence ("0 0" for Redis).
wal_counters() {
    if [[ $1 == redis-* ]]; then echo "0 0"; return; fi
    redis-cli -p "${PORT[$1]}" info persistence | tr -d '\r' \
        | awk -F: '$1 == "wal_fsyncs" { f = $2 } $1 == "wal_records" { r = $2 } END { print f + 0, r + 0 }'
}

# --- Disk and loopback ------------------------------------------------------------------------

DISK_TXT="$BENCH_TMP/durability-disk.txt"
FIO_JSON="$BENCH_TMP/durability-fio.json"
# The p50 (µs) that the 1-connection target adds the round trip to, and how it was measured.
DISK_P50_US=
DISK_HOW=

# Load when the disk was measured (start of probe_disk, end of it).
DISK_LOAD=

probe_disk() {
    local l0 r0
    l0=$(load_avg); r0=$(rustc_count)
    log "disk: built-in probe, $PROBE_COUNT writes per way, in $BENCH_TMP"
    "$PROBE_BIN" "$BENCH_TMP" "$PROBE_COUNT" >"$BENCH_TMP/probe.out" || die "disk probe failed"
    sed -i 's/$/ start/' "$BENCH_TMP/probe.out"
    if command -v fio >/dev/null; then
        log "disk: fio, 4 KiB O_DIRECT write + fdatasync, 16 MiB"
        mkdir -p "$BENCH_TMP/fio"
        fio --name=wal-like --directory="$BENCH_TMP/fio" --rw=write --bs=4k --size=16m --direct=1 \
            --fdatasync=1 --ioengine=sync --output-format=json >"$FIO_JSON" 2>"$BENCH_TMP/fio.err" \
            || { cat "$BENCH_TMP/fio.err" >&2; die "fio failed"; }
        rm -rf "$BENCH_TMP/fio"
    fi
    DISK_LOAD="load avg $l0 before, $(load_avg) after; rustc processes: $r0 before, $(rustc_count) after"
    if [[ -s $FIO_JSON ]]; then
        DISK_P50_US=$(jq -r '.jobs[0] | (.write.clat_ns.percentile."50.000000" + .sync.lat_ns.percentile."50.000000") / 1000' "$FIO_JSON")
        DISK_HOW="fio write p50 + fdatasync p50"
    else
        DISK_P50_US=$(awk '$1 == "write+fdatasync" && $8 == "start" { print $3 }' "$BENCH_TMP/probe.out")
        DISK_HOW="built-in probe write+fdatasync p50"
    fi
}

# disk_report: the disk figures (both probes and fio) as text, into DISK_TXT.
disk_report() {
    {
        echo "filesystem: $FS_TYPE on $FS_DEV (mounted at $FS_MOUNT), dir $BENCH_TMP"
        echo "start probe and fio: $DISK_LOAD"
        echo
        echo "built-in probe (examples/disk_probe.rs): $PROBE_COUNT sequential 4 KiB O_DIRECT writes per way,"
        echo "one at a time, wall time per operation (µs):"
        printf '  %-18s %-6s %6s %9s %9s %9s %9s %9s\n' way when n p50 p90 p99 max mean
        awk '{ printf "  %-18s %-6s %6s %9s %9s %9s %9s %9s\n", $1, $8, $2, $3, $4, $5, $6, $7 }' "$BENCH_TMP/probe.out"
        echo "  (start: before the servers started; end: after the last client run, servers idle)"
        echo "  write+fdatasync  = pwrite over written blocks, then fdatasync"
        echo "  dsync-overwrite  = pwrite with O_DSYNC over written blocks"
        echo "  dsync-fallocated = pwrite with O_DSYNC into fallocated, unwritten space (what the WAL does)"
        if [[ -s $FIO_JSON ]]; then
            echo
            echo "fio $(fio --version): --rw=write --bs=4k --size=16m --direct=1 --fdatasync=1 --ioengine=sync"
            echo "(a fresh fallocated file; each write is followed by fdatasync), µs:"
            jq -r '.jobs[0] | "  write (clat)  n \(.write.total_ios)  p50 \(.write.clat_ns.percentile."50.000000" / 1000)  p90 \(.write.clat_ns.percentile."90.000000" / 1000)  p99 \(.write.clat_ns.percentile."99.000000" / 1000)  mean \(.write.clat_ns.mean / 1000 | floor)",
                "  fdatasync     n \(.sync.lat_ns.N)  p50 \(.sync.lat_ns.percentile."50.000000" / 1000)  p90 \(.sync.lat_ns.percentile."90.000000" / 1000)  p99 \(.sync.lat_ns.percentile."99.000000" / 1000)  mean \(.sync.lat_ns.mean / 1000 | floor)"' \
                "$FIO_JSON"
        fi
    } >"$DISK_TXT"
}

# --- redis-benchmark --------------------------------------------------------------------------

RB_CSV="$BENCH_TMP/durability-rb-rounds.csv"
echo "round,test,clients,target,rps,avg_ms,p50_ms,p95_ms,p99_ms,max_ms,server_cpu_pct,wal_fsyncs,wal_records,load1" >"$RB_CSV"

# run_rb ROUND TEST CLIENTS TARGET N: one redis-benchmark run; appends a line to RB_CSV.
run_rb() {
    local round=$1 test=$2 c=$3 t=$4 n=$5 out="$BENCH_TMP/rb.csv" s0 s1 w0 w1 t0 t1 l1 row
    l1=$(cut -d' ' -f1 /proc/loadavg)
    w0=$(wal_counters "$t"); s0=$(ticks "${PID[$t]}"); t0=$(date +%s.%N)
    timeout "$RUN_TIMEOUT_S" taskset -c "$CLIENT_CPU" redis-benchmark -h 127.0.0.1 -p "${PORT[$t]}" \
        -t "$test" -c "$c" -d 256 -r 100000 -n "$n" --csv >"$out" 2>"$out.err" \
        || { cat "$out.err" >&2; die "redis-benchmark -t $test -c $c against $t failed or timed out"; }
    t1=$(date +%s.%N); s1=$(ticks "${PID[$t]}"); w1=$(wal_counters "$t")
    row=$(awk -F'"' 'NR == 2 { print $4 "," $6 "," $10 "," $12 "," $14 "," $16 }' "$out")
    [[ -n $row ]] || { cat "$out" >&2; die "no result from redis-benchmark against $t"; }
    awk -v r="$round" -v te="$test" -v c="$c" -v t="$t" -v row="$row" -v s="$((s1 - s0))" \
        -v hz="$(getconf CLK_TCK)" -v a="$t0" -v b="$t1" -v w0="$w0" -v w1="$w1" -v l="$l1" 'BEGIN {
        split(w0, x, " "); split(w1, y, " ")
        printf "%s,%s,%s,%s,%s,%.0f,%d,%d,%s\n", r, te, c, t, row, 100 * s / hz / (b - a), y[1] - x[1], y[2] - x[2], l }' \
        >>"$RB_CSV"
    log "rb round $round $test -c $c $t: $(tail -1 "$RB_CSV" | cut -d, -f5-)"
}

# rb_col TEST CLIENTS TARGET FIELD -> that field of every round
rb_col() {
    awk -F, -v te="$1" -v c="$2" -v t="$3" -v f="$4" \
        'NR == 1 { for (i = 1; i <= NF; i++) idx[$i] = i; next }
         $2 == te && $3 == c && $4 == t { print $idx[f] }' "$RB_CSV"
}
rb_med() {
    local v
    v=$(rb_col "$@")
    [[ -n $v ]] || { echo n/a; return; }
    # shellcheck disable=SC2086
    median $v
}

# --- loadgen ----------------------------------------------------------------------------------

REGIMES="c1 c50 c50p16 open"
regime_args() {
    case $1 in
        c1) echo "--connections 1" ;;
        c50) echo "--connections 50" ;;
        c50p16) echo "--connections 50 --pipeline 16" ;;
        open) echo "--connections 50 --rate $RATE" ;;
    esac
}
regime_text() {
    case $1 in
        c1) echo "1 connection, closed loop" ;;
        c50) echo "50 connections, closed loop" ;;
        c50p16) echo "50 connections x pipeline 16, closed loop" ;;
        open) echo "50 connections, open loop at $RATE ops/s (Poisson)" ;;
    esac
}

run_loadgen() {
    local r=$1 t targets=() l0 r0
    # sync first: loadgen's ratios are against the first target.
    for t in sync $ALL_TARGETS; do
        [[ $t == sync && ${#targets[@]} -gt 0 ]] && continue
        targets+=(--target "$t=127.0.0.1:${PORT[$t]}")
    done
    l0=$(load_avg); r0=$(rustc_count)
    log "loadgen $r: $(regime_text "$r"), $((${#targets[@]} / 2)) targets, $ROUNDS rounds of ${DURATION_S} s"
    # shellcheck disable=SC2046
    timeout $((RUN_TIMEOUT_S * ROUNDS * 6)) taskset -c "$CLIENT_CPU" "$LOADGEN_BIN" compare "${targets[@]}" \
        $(regime_args "$r") --rounds "$ROUNDS" --ratio 1:0 --value-bytes 256 --keys 100000 \
        --key-dist uniform --duration-s "$DURATION_S" --warmup-s "$WARMUP_S" --seed 42 \
        --client-threads 1 --cpus "$CLIENT_CPU" --quiet \
        --json "$BENCH_TMP/durability-loadgen-$r.json" --plot "$BENCH_TMP/durability-$r.svg" \
        >"$BENCH_TMP/durability-loadgen-$r.txt" 2>"$BENCH_TMP/lg.err" \
        || { cat "$BENCH_TMP/lg.err" >&2; die "loadgen $r failed or timed out"; }
    printf '\nload avg: %s at start, %s at end; rustc processes: %s at start, %s at end\n' \
        "$l0" "$(load_avg)" "$r0" "$(rustc_count)" >>"$BENCH_TMP/durability-loadgen-$r.txt"
}

# lg REGIME TARGET JQ-EXPR-ON-THE-SET-OP -> a figure from the loadgen JSON
lg() {
    # A target with no successful SET in the window has no latencies: "-", not 0.
    jq -r --arg t "$2" ".targets[] | select(.name == \$t) | if (.ops[] | select(.op == \"SET\") | .ok) == 0
        then \"-\" else ($3) end" "$BENCH_TMP/durability-loadgen-$1.json" 2>/dev/null
}

# --- The run ----------------------------------------------------------------------------------

wait_quiet
LOAD_START=$(load_avg)
RUSTC_START=$(rustc_count)
BUSY_START=$(cpu_busy)
DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
probe_disk
start_all

log "loopback round trip: PING_MBULK at 1 connection against the off server"
for round in $(seq "$RB_ROUNDS"); do
    run_rb "$round" ping_mbulk 1 off "$RB_REQUESTS_C1"
done
for c in 50 1; do
    n=$RB_REQUESTS_C50
    (( c == 1 )) && n=$RB_REQUESTS_C1
    for round in $(seq "$RB_ROUNDS"); do
        order=$ALL_TARGETS
        (( round % 2 )) || order=$(tr ' ' '\n' <<<"$ALL_TARGETS" | tac | tr '\n' ' ')
        for t in $order; do run_rb "$round" set "$c" "$t" "$n"; done
    done
done
for r in $REGIMES; do run_loadgen "$r"; done
log "disk: built-in probe again (servers idle)"
"$PROBE_BIN" "$BENCH_TMP" "$PROBE_COUNT" | sed 's/$/ end/' >>"$BENCH_TMP/probe.out" || die "disk probe failed"
disk_report
LOAD_END=$(load_avg)
RUSTC_END=$(rustc_count)
# Errors and warnings the servers logged during the run (kept: the temp dir goes at exit).
SERVER_LOG="$BENCH_TMP/durability-server-log.txt"
for f in "$BENCH_TMP"/ringcache-*.log "$BENCH_TMP"/redis-*/redis.log; do
    [[ -f $f ]] || continue
    grep -iE 'error|warn|fail|panic|MISCONF|IOERR' "$f" | sed "s|^|${f#"$BENCH_TMP"/}: |" || true
done >"$SERVER_LOG"
SERVER_ERRORS=$(wc -l <"$SERVER_LOG")
T_END=$(date +%s)

# --- The table --------------------------------------------------------------------------------

# check VALUE OP LIMIT -> "met"/"missed"/"n/a"
check() {
    awk -v v="$1" -v op="$2" -v l="$3" 'BEGIN {
        if (v == "n/a" || l == "n/a" || v == "" || l == "") { print "n/a"; exit }
        if (op == ">=") print (v + 0 >= l + 0) ? "met" : "missed"; else print (v + 0 <= l + 0) ? "met" : "missed" }'
}
mul() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "n/a" || b == "n/a") print "n/a"; else printf "%.3f", a * b }'; }

PING_P50_MS=$(rb_med ping_mbulk 1 off p50_ms)
DISK_P50_MS=$(awk -v d="$DISK_P50_US" 'BEGIN { printf "%.3f", d / 1000 }')
FLOOR_MS=$(awk -v a="$DISK_P50_MS" -v b="$PING_P50_MS" 'BEGIN { printf "%.3f", a + b }')
SYNC50=$(rb_med set 50 sync rps)
ASYNC50=$(rb_med set 50 async rps)
ALW50=$(rb_med set 50 redis-always rps)
SYNC1=$(rb_med set 1 sync p50_ms)
ALW1=$(rb_med set 1 redis-always p50_ms)

TABLE="$BENCH_TMP/durability.txt"
{
    echo "# Durability: ringcache off/async/sync vs redis-server AOF no/everysec/always ($DATE)"
    echo
    echo "machine:   $(nproc) CPUs ($(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)), kernel $(uname -r), $(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo) RAM"
    echo "ringcache: $("$RINGCACHE_BIN" --version 2>/dev/null) (git $(git -C "$BENCH_ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'))"
    echo "pinning:   servers on CPU $SERVER_CPU (taskset), clients on CPU $CLIENT_CPU"
    (( REDIS )) && echo "redis:     $("$REDIS_SERVER" --version | grep -o 'v=[^ ]*' | cut -c3-), --appendonly yes --appendfsync no|everysec|always --auto-aof-rewrite-percentage 0 --save ''"
    echo "ringcache: --threads 1 --durability off|async|sync, defaults otherwise (--wal-flush-interval-ms 100, 64 MiB segments)"
    echo "disk:      $FS_TYPE on $FS_DEV ($FS_MOUNT), every server's files under $BENCH_TMP (fresh per server)"
    echo "load avg:  $LOAD_START at start, $LOAD_END at end (1/5/15 min); rustc processes: $RUSTC_START at start, $RUSTC_END at end"
    echo "CPUs busy just before: $BUSY_START; wall time of the run: $((T_END - T_START)) s"
    echo "servers:   all six running at once; $SERVER_ERRORS error/warning lines in their logs$( ((SERVER_ERRORS)) && echo ':')"
    head -10 "$SERVER_LOG" | sed 's/^/  /'
    echo
    echo "## Disk and loopback (the floor of a sync reply)"
    echo
    sed 's/^/  /' "$DISK_TXT"
    echo
    echo "  loopback round trip: redis-benchmark -t ping_mbulk -c 1 -n $RB_REQUESTS_C1 against the off server,"
    echo "  p50 $PING_P50_MS ms (median of $RB_ROUNDS rounds: $(rb_col ping_mbulk 1 off p50_ms | tr '\n' ' '))"
    echo "  disk p50 used below: $DISK_P50_MS ms ($DISK_HOW)"
    echo
    echo "## redis-benchmark -t set -d 256 -r 100000 (issue 3's client); medians of $RB_ROUNDS rounds, order alternating"
    echo
    printf '%-15s %9s %8s %8s %6s %8s %7s  %9s %8s %8s %6s %8s\n' "" "c50 ops/s" p50_ms p99_ms cpu% rec/fsync "" \
        "c1 ops/s" p50_ms p99_ms cpu% rec/fsync
    for t in $ALL_TARGETS; do
        rpf=()
        for c in 50 1; do
            rpf+=("$(paste -d' ' <(rb_col set "$c" "$t" wal_records) <(rb_col set "$c" "$t" wal_fsyncs) \
                | awk '{ r += $1; f += $2 } END { if (f > 0) printf "%.1f", r / f; else print "-" }')")
        done
        printf '%-15s %9s %8s %8s %6s %8s %7s  %9s %8s %8s %6s %8s\n' "$t" \
            "$(rb_med set 50 "$t" rps | cut -d. -f1)" "$(rb_med set 50 "$t" p50_ms)" "$(rb_med set 50 "$t" p99_ms)" \
            "$(rb_med set 50 "$t" server_cpu_pct)" "${rpf[0]}" "" \
            "$(rb_med set 1 "$t" rps | cut -d. -f1)" "$(rb_med set 1 "$t" p50_ms)" "$(rb_med set 1 "$t" p99_ms)" \
            "$(rb_med set 1 "$t" server_cpu_pct)" "${rpf[1]}"
    done
    echo "  (-n $RB_REQUESTS_C50 at -c 50, -n $RB_REQUESTS_C1 at -c 1; ops/s and latency as redis-benchmark --csv prints them;"
    echo "  cpu% = server utime+stime over the run (/proc/PID/stat); rec/fsync = ringcache INFO wal_records / wal_fsyncs"
    echo "  over all rounds; per-round figures in durability-rb-rounds.csv)"
    echo
    echo "## ringcache-loadgen compare, SET only, 256 B values, 100k keys uniform, seed 42; $ROUNDS rounds x ${DURATION_S} s per target, order alternating"
    for r in $REGIMES; do
        echo
        echo "$(regime_text "$r"):"
        printf '  %-15s %9s %9s %9s %9s %9s %9s %9s %9s\n' "" ops/s p50_us p90_us p99_us p99.9_us max_us fsyncs/s rec/fsync
        for t in $ALL_TARGETS; do
            # shellcheck disable=SC2016
            printf '  %-15s %9s %9s %9s %9s %9s %9s %9s %9s\n' "$t" \
                "$(lg "$r" "$t" '.ops[] | select(.op == "SET") | .ops_per_s | floor')" \
                "$(lg "$r" "$t" '.ops[] | select(.op == "SET") | .latency.percentiles_us.p50 | floor')" \
                "$(lg "$r" "$t" '.ops[] | select(.op == "SET") | .latency.percentiles_us.p90 | floor')" \
                "$(lg "$r" "$t" '.ops[] | select(.op == "SET") | .latency.percentiles_us.p99 | floor')" \
                "$(lg "$r" "$t" '.ops[] | select(.op == "SET") | .latency.percentiles_us."p99.9" | floor')" \
                "$(lg "$r" "$t" '.ops[] | select(.op == "SET") | .latency.max_us | floor')" \
                "$(lg "$r" "$t" '.fsyncs_per_s // "-" | if type == "number" then floor else . end')" \
                "$(lg "$r" "$t" '.records_per_fsync // "-" | if type == "number" then (. * 10 | floor) / 10 else . end')"
        done
        if [[ $r == open ]]; then
            # shellcheck disable=SC2016
            echo "  achieved rate: $(for t in $ALL_TARGETS; do printf '%s %s  ' "$t" "$(lg open "$t" '.achieved_rate | floor')"; done)"
        fi
    done
    echo "  (loadgen's merged histograms over all rounds; closed loop: from actual send, open loop: from the"
    echo "  intended send time; fsyncs/s and rec/fsync from INFO persistence at each window's start and end;"
    echo "  full tables in durability-loadgen-<regime>.txt, plots durability-<regime>.svg)"
    echo
    echo "## Targets (issue 3), from the redis-benchmark medians above"
    echo
    printf '%-58s %12s %12s  %s\n' target measured limit result
    lim=$(mul "$ALW50" 1.5)
    printf '%-58s %12s %12s  %s\n' "c50: sync ops/s >= 1.5 x redis-always ops/s" "$SYNC50" "$lim" "$(check "$SYNC50" '>=' "$lim")"
    lim=$(mul "$ASYNC50" 0.8)
    printf '%-58s %12s %12s  %s\n' "c50: sync ops/s >= 0.8 x async ops/s" "$SYNC50" "$lim" "$(check "$SYNC50" '>=' "$lim")"
    printf '%-58s %12s %12s  %s\n' "c1: sync p50 ms <= redis-always p50 ms" "$SYNC1" "$ALW1" "$(check "$SYNC1" '<=' "$ALW1")"
    lim=$(mul "$FLOOR_MS" 1.3)
    printf '%-58s %12s %12s  %s\n' "c1: sync p50 ms <= 1.3 x (disk p50 + loopback p50 = $FLOOR_MS)" "$SYNC1" "$lim" \
        "$(check "$SYNC1" '<=' "$lim")"
    echo
    echo "Ratios: c50 sync/redis-always $(ratio "$SYNC50" "$ALW50"), sync/async $(ratio "$SYNC50" "$ASYNC50");" \
        "c1 p50 sync/redis-always $(ratio "$SYNC1" "$ALW1"), sync/(disk+loopback) $(ratio "$SYNC1" "$FLOOR_MS")."
} | tee "$TABLE"

if (( WRITE )); then
    mkdir -p "$BENCH_OUT"
    cp "$TABLE" "$RB_CSV" "$DISK_TXT" "$BENCH_OUT/"
    [[ -s $FIO_JSON ]] && cp "$FIO_JSON" "$BENCH_OUT/"
    for r in $REGIMES; do
        cp "$BENCH_TMP/durability-loadgen-$r.txt" "$BENCH_TMP/durability-loadgen-$r.json" \
            "$BENCH_TMP/durability-$r.svg" "$BENCH_OUT/"
    done
    log "wrote $BENCH_OUT/durability*.{txt,csv,json} and durability-*.svg"
fi
