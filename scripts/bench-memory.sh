#!/usr/bin/env bash
# Memory per key of ringcache against redis-server, the method of docs/PERFORMANCE.md:
#
#   fresh servers each round (one ringcache shard; Redis persistence off), pinned to CPU 1;
#   write N distinct keys `key:%011d` (15 bytes) with 32-byte values, pipelined through
#   `redis-cli --pipe` on CPU 0; RSS growth = VmRSS after - VmRSS before (/proc/PID/status);
#   rounds alternate which server is filled first; the table gives medians of the rounds.
#
# Usage: scripts/bench-memory.sh [--rounds N] [--keys N] [--no-write]
#   --rounds N   rounds (default 3)
#   --keys N     keys to write (default 1000000)
#   --no-write   print only; do not write docs/perf/
# Environment: see scripts/lib-bench.sh. A full run takes about a minute.

source "$(dirname "$0")/lib-bench.sh"

ROUNDS=3
KEYS=1000000
WRITE=1
while (( $# )); do
    case $1 in
        --rounds) ROUNDS=$2; shift 2 ;;
        --keys) KEYS=$2; shift 2 ;;
        --no-write) WRITE=0; shift ;;
        -h|--help) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
(( KEYS >= 1 && KEYS <= 99999999999 )) || die "--keys must be 1 to 99999999999 (11 digits)"

need_redis
need_ringcache
check_cpus

# The RESP command stream: SET key:<11 digits> val:<28 digits>, so every key is 15 bytes and
# every value 32 bytes, all distinct.
gen_sets() {
    awk -v n="$KEYS" 'BEGIN {
        for (i = 0; i < n; i++)
            printf "*3\r\n$3\r\nSET\r\n$15\r\nkey:%011d\r\n$32\r\nval:%028d\r\n", i, i
    }'
}

# fill NAME PID PORT -> one CSV line: rss_before_kb,rss_after_kb,used_memory_before,used_memory,bytes_per_key,dbsize
fill() {
    local name=$1 pid=$2 port=$3 before after used0 used bpk dbsize out
    sleep 0.5
    before=$(vm_rss_kb "$pid")
    used0=$(info_field "$port" used_memory)
    out=$(gen_sets | taskset -c "$CLIENT_CPU" redis-cli -p "$port" --pipe 2>&1) \
        || { echo "$out" >&2; die "redis-cli --pipe into $name failed"; }
    grep -q "errors: 0, replies: $KEYS" <<<"$out" || { echo "$out" >&2; die "$name: not $KEYS clean replies"; }
    dbsize=$(redis-cli -p "$port" dbsize)
    [[ $dbsize == "$KEYS" ]] || die "$name holds $dbsize keys, expected $KEYS"
    sleep 1
    after=$(vm_rss_kb "$pid")
    used=$(info_field "$port" used_memory)
    bpk=$(info_field "$port" bytes_per_key)
    echo "$before,$after,$used0,$used,${bpk:-},$dbsize"
}

wait_quiet
LOAD_START=$(load_avg)
BUSY_START=$(cpu_busy)
DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
ROUNDS_CSV="$BENCH_TMP/memory-rounds.csv"
echo "round,server,rss_before_kb,rss_after_kb,used_memory_before,used_memory,bytes_per_key,keys,load1" >"$ROUNDS_CSV"
for round in $(seq "$ROUNDS"); do
    if (( round % 2 )); then order="ringcache redis"; else order="redis ringcache"; fi
    start_ringcache "$RC_PORT"
    start_redis "$REDIS_PORT"
    for server in $order; do
        l1=$(cut -d' ' -f1 /proc/loadavg)
        if [[ $server == ringcache ]]; then
            line=$(fill ringcache "$RC_PID" "$RC_PORT")
        else
            line=$(fill redis "$REDIS_PID" "$REDIS_PORT")
        fi
        log "round $round $server: $line (load $l1)"
        echo "$round,$server,$line,$l1" >>"$ROUNDS_CSV"
    done
    stop_pid "$RC_PID"
    stop_pid "$REDIS_PID"
done
LOAD_END=$(load_avg)

# col SERVER EXPR -> one value per round; EXPR is awk over the CSV's named fields in f[].
col() {
    awk -F, -v s="$1" -v k="$KEYS" \
        'NR == 1 { for (i = 1; i <= NF; i++) name[i] = $i; next }
         $2 == s { for (i = 1; i <= NF; i++) f[name[i]] = $i; '"$2"' }' "$ROUNDS_CSV"
}
RSS_PER_KEY='printf "%.1f\n", (f["rss_after_kb"] - f["rss_before_kb"]) * 1024 / k'
USED_PER_KEY='printf "%.1f\n", (f["used_memory"] - f["used_memory_before"]) / k'

# shellcheck disable=SC2207
rc_rss=($(col ringcache "$RSS_PER_KEY")); rd_rss=($(col redis "$RSS_PER_KEY"))
# shellcheck disable=SC2207
rc_used=($(col ringcache "$USED_PER_KEY")); rd_used=($(col redis "$USED_PER_KEY"))
# shellcheck disable=SC2207
rc_bpk=($(col ringcache 'print f["bytes_per_key"]'))
# shellcheck disable=SC2207
rc_after=($(col ringcache 'printf "%.1f\n", f["rss_after_kb"] / 1024'))
# shellcheck disable=SC2207
rd_after=($(col redis 'printf "%.1f\n", f["rss_after_kb"] / 1024'))

m_rc_rss=$(median "${rc_rss[@]}"); m_rd_rss=$(median "${rd_rss[@]}")
r=$(ratio "$m_rc_rss" "$m_rd_rss")
met=$(awk -v r="$r" 'BEGIN { print (r <= 0.6) ? "met" : "missed" }')

TABLE="$BENCH_TMP/memory.txt"
{
    echo "# Memory per key: ringcache vs redis-server ($DATE)"
    echo
    machine_info
    echo "workload:  $KEYS distinct keys 'key:%011d' (15 B) with 32 B values, SET through redis-cli --pipe"
    echo "rounds:    $ROUNDS, fresh servers each round, alternating which is filled first; medians of the rounds"
    echo "load avg:  $LOAD_START at start, $LOAD_END at end (1/5/15 min); CPUs busy just before: $BUSY_START"
    echo
    printf '%-32s %12s %12s %7s  %s\n' "figure (median)" ringcache redis ratio "per-round ringcache / redis"
    printf '%-32s %12s %12s %7s  %s / %s\n' "RSS growth per key (B)" "$m_rc_rss" "$m_rd_rss" "$r" \
        "${rc_rss[*]}" "${rd_rss[*]}"
    printf '%-32s %12s %12s %7s  %s / %s\n' "used_memory growth per key (B)" "$(median "${rc_used[@]}")" \
        "$(median "${rd_used[@]}")" "$(ratio "$(median "${rc_used[@]}")" "$(median "${rd_used[@]}")")" \
        "${rc_used[*]}" "${rd_used[*]}"
    printf '%-32s %12s %12s %7s  %s\n' "INFO bytes_per_key (B)" "$(median "${rc_bpk[@]}")" "-" "" "${rc_bpk[*]}"
    printf '%-32s %12s %12s %7s  %s / %s\n' "VmRSS after fill (MiB)" "$(median "${rc_after[@]}")" \
        "$(median "${rd_after[@]}")" "" "${rc_after[*]}" "${rd_after[*]}"
    echo
    echo "target: RSS growth per key ≤ 0.6x Redis's: $r, $met."
    echo "RSS growth per key = (VmRSS after - VmRSS before) / keys, VmRSS from /proc/PID/status, read"
    echo "0.5 s before and 1 s after the fill. used_memory is each server's own INFO memory figure"
    echo "(ringcache: entry allocations + bucket arrays before allocator rounding; Redis: bytes"
    echo "allocated through jemalloc). bytes_per_key is ringcache's INFO memory field (used_memory / keys)."
} | tee "$TABLE"

if (( WRITE )); then
    mkdir -p "$BENCH_OUT"
    cp "$TABLE" "$BENCH_OUT/memory.txt"
    cp "$ROUNDS_CSV" "$BENCH_OUT/memory-rounds.csv"
    log "wrote $BENCH_OUT/memory.txt and memory-rounds.csv"
fi
