#!/usr/bin/env bash
# Snapshot costs, measured on the real binary (docs/SNAPSHOT.md explains the mechanism):
#
#   for each key count N: one ringcache shard (--durability async, pinned to SERVER_CPU) is
#   filled with N keys of 32-byte values by the loadgen's prefill; then two open-loop runs of
#   the same load (10% SET, 90% GET, uniform keys, RATE ops/s, LG_DURATION_S s, client on
#   CLIENT_CPU): A without snapshots, B with BGSAVE issued back to back for the whole run. Each
#   reports GET p50/p99/p99.9 and the peak RSS sampled every 50 ms. Then SIGTERM (which writes
#   the shutdown snapshot) and a restart on the same directory: the time from exec to
#   `listening on`, and what INFO persistence says about loading.
#
# Usage: scripts/bench-snapshot.sh [--keys "1000000 10000000"] [--rate N] [--no-write]
#   --keys LIST  key counts (default "1000000 10000000")
#   --rate N     open-loop rate of the measured runs (default 20000 ops/s)
#   --no-write   print only; do not write docs/perf/snapshot.txt
# Environment: see scripts/lib-bench.sh; LG_DURATION_S (default 10). Needs redis-cli (INFO,
# BGSAVE) and python3 (reads the loadgen's JSON). 10M keys take about 1.5 GB of RAM.

source "$(dirname "$0")/lib-bench.sh"

KEYS_LIST="1000000 10000000"
RATE=20000
WRITE=1
LG_DURATION_S=${LG_DURATION_S:-10}
while (( $# )); do
    case $1 in
        --keys) KEYS_LIST=$2; shift 2 ;;
        --rate) RATE=$2; shift 2 ;;
        --no-write) WRITE=0; shift ;;
        -h|--help) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
command -v redis-cli >/dev/null || need_redis
command -v python3 >/dev/null || die "python3 is needed to read the loadgen's JSON"
need_ringcache
check_cpus

# start_rc DIR -> sets RC_PID and START_MS (the ms from exec to `listening on`). Not to be run
# in a subshell (the PID must reach the exit trap).
start_rc() {
    local dir=$1 logf="$BENCH_TMP/rc-$RANDOM.log" t0 i
    wait_port_free "$RC_PORT"
    t0=$(date +%s%N)
    taskset -c "$SERVER_CPU" "${RT[@]}" "$RINGCACHE_BIN" --bind "127.0.0.1:$RC_PORT" --threads 1 --durability async \
        --data-dir "$dir" --snapshot-wal-bytes 0 --snapshot-on-shutdown yes --log-level info 2>"$logf" >/dev/null &
    RC_PID=$!
    _BENCH_PIDS+=("$RC_PID")
    for i in $(seq 6000); do
        if grep -q "listening on" "$logf"; then
            START_MS=$(( ($(date +%s%N) - t0) / 1000000 ))
            return 0
        fi
        kill -0 "$RC_PID" 2>/dev/null || { cat "$logf" >&2; die "ringcache exited at startup"; }
        sleep 0.01
    done
    die "ringcache did not start within 60 s"
}

# sample_rss PID OUTFILE: writes the peak VmRSS (KiB) seen every 50 ms until PID's loadgen ends
# (the caller kills the sampler).
sample_rss() {
    local pid=$1 out=$2 peak=0 r
    while :; do
        r=$(vm_rss_kb "$pid" 2>/dev/null || echo 0)
        (( r > peak )) && peak=$r && echo "$peak" >"$out"
        sleep 0.05
    done
}

# gets JSON -> "p50 p99 p99.9" of GET, in µs.
gets() {
    python3 -c 'import json,sys
d = json.load(open(sys.argv[1]))
op = [o for o in d["targets"][0]["ops"] if o["op"] == "GET"][0]["latency"]["percentiles_us"]
print("%.0f %.0f %.0f" % (op["p50"], op["p99"], op["p99.9"]))' "$1"
}

# measured N JSON [prefill]: one open-loop run.
measured() {
    local n=$1 json=$2 extra=()
    [[ ${3:-} == prefill ]] && extra=(--prefill)
    taskset -c "$CLIENT_CPU" "${RT[@]}" "$LOADGEN_BIN" run --target "127.0.0.1:$RC_PORT" --rate "$RATE" --ratio 1:9 \
        --keys "$n" --value-bytes 32 --key-dist uniform --connections 8 --client-threads 1 --cpus "$CLIENT_CPU" \
        --duration-s "$LG_DURATION_S" --warmup-s 1 --seed 7 --quiet --json "$json" "${extra[@]}" >/dev/null
}

rows=()
wait_quiet
for n in $KEYS_LIST; do
    dir="$BENCH_TMP/data-$n"
    start_rc "$dir"
    log "N=$n: prefill and run A (no snapshot)"
    rss_file="$BENCH_TMP/rss-a"; echo 0 >"$rss_file"
    measured "$n" "$BENCH_TMP/a-$n.json" prefill &
    lg=$!
    sample_rss "$RC_PID" "$rss_file" & sampler=$!
    wait "$lg" || die "loadgen run A failed"
    kill "$sampler"; wait "$sampler" 2>/dev/null || true
    rss_a=$(cat "$rss_file")
    read -r a50 a99 a999 < <(gets "$BENCH_TMP/a-$n.json")
    log "N=$n: run B (BGSAVE back to back)"
    rss_file="$BENCH_TMP/rss-b"; echo 0 >"$rss_file"
    measured "$n" "$BENCH_TMP/b-$n.json" &
    lg=$!
    sample_rss "$RC_PID" "$rss_file" & sampler=$!
    saves=0
    while kill -0 "$lg" 2>/dev/null; do
        if [[ $(info_field "$RC_PORT" rdb_bgsave_in_progress) == 0 ]]; then
            redis-cli -p "$RC_PORT" bgsave >/dev/null && saves=$((saves + 1))
        fi
        sleep 0.05
    done
    wait "$lg" || die "loadgen run B failed"
    kill "$sampler"; wait "$sampler" 2>/dev/null || true
    rss_b=$(cat "$rss_file")
    read -r b50 b99 b999 < <(gets "$BENCH_TMP/b-$n.json")
    snap_ms=$(info_field "$RC_PORT" snapshot_last_ms_max)
    step_us=$(info_field "$RC_PORT" snapshot_step_max_us)
    # A snapshot of many keys on a busy shard can outlast the run (it paces itself to a quarter
    # of the shard): then none finished and there is no duration to show.
    [[ $(info_field "$RC_PORT" snapshots_taken) == 0 ]] && snap_ms="running"
    snap_bytes=$(info_field "$RC_PORT" snapshot_last_bytes)
    preserved=$(info_field "$RC_PORT" snapshot_preserved_peak_bytes_max)
    stop_pid "$RC_PID"
    log "N=$n: restart (recovery)"
    start_rc "$dir"
    start_ms=$START_MS
    rec_ms=$(info_field "$RC_PORT" recovery_total_ms_max)
    rec_keys=$(info_field "$RC_PORT" recovery_snapshot_keys)
    rec_mbs=$(info_field "$RC_PORT" recovery_snapshot_mb_per_s)
    stop_pid "$RC_PID"
    rows+=("$(printf '%-9s | %6s %6s %7s %7s | %6s %6s %7s %7s %5s | %7s %7s %9s %9s | %6s %7s %8s %7s' \
        "$n" "$a50" "$a99" "$a999" "$((rss_a / 1024))" "$b50" "$b99" "$b999" "$((rss_b / 1024))" "$saves" \
        "$snap_ms" "$step_us" "$((snap_bytes / 1048576))" "$((preserved / 1024))" "$start_ms" "$rec_ms" "$rec_keys" "$rec_mbs")")
done

report() {
    echo "# scripts/bench-snapshot.sh — $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "machine:   $(nproc) CPUs ($(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)), kernel $(uname -r)"
    echo "ringcache: $("$RINGCACHE_BIN" --version 2>/dev/null) (git $(git -C "$BENCH_ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')), --threads 1, server on CPU $SERVER_CPU, client on CPU $CLIENT_CPU"
    if [[ -n ${BENCH_RT_PRIO:-} ]]; then
        echo "scheduling: server and loadgen SCHED_FIFO $BENCH_RT_PRIO (BENCH_RT_PRIO), so other work on the machine cannot delay them; samplers SCHED_OTHER"
    else
        echo "scheduling: $(chrt -p $$ 2>/dev/null | head -1 | sed 's/.*: //') (the run's own policy; SCHED_IDLE figures are only comparable within one run)"
    fi
    echo "load:      $(load_avg) (1/5/15 min) at the end; rate $RATE ops/s, 10% SET, ${LG_DURATION_S}s per run"
    echo
    echo "N keys    | A: no snapshot: GET p50 p99 p99.9 (us), peak RSS MiB | B: BGSAVE back to back: GET p50 p99 p99.9 (us), peak RSS MiB, saves | snapshot ms, longest step us, file MiB, preserved peak KiB | restart: ms to listening, recovery ms, keys loaded, MB/s"
    printf '%s\n' "${rows[@]}"
}
report
if (( WRITE )); then
    mkdir -p "$BENCH_OUT"
    report >"$BENCH_OUT/snapshot.txt"
    log "wrote $BENCH_OUT/snapshot.txt"
fi
