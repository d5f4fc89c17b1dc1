#!/usr/bin/env bash
# Memory around large values, measured on the real binaries (docs/ARCHITECTURE.md, "Large
# values", explains the mechanism):
#
#   for each size and each target: a fresh server (one shard / redis-server, pinned to
#   SERVER_CPU), one SET of a value of that size streamed in 1 MiB pieces and one GET of it
#   checked byte by byte (scripts/bench-large-values.py). Reported: the peak RSS growth of the
#   server (VmHWM after the operation minus VmRSS before it, reset through
#   /proc/PID/clear_refs) and the time of each operation. Targets: ringcache --durability off
#   and sync (log on a fresh directory under TMPDIR), redis-server with persistence off and
#   with `appendonly yes, appendfsync always`.
#
# Usage: scripts/bench-large-values.sh [--sizes "64 512"] [--no-write]
#   --sizes LIST  value sizes in MiB (default "64 512"; at most 512, the protocol limit)
#   --no-write    print only; do not write docs/perf/large-values.txt
# Environment: see scripts/lib-bench.sh. Needs python3 and redis-server; root (or the servers'
# owner) to reset the peak RSS. About 3 GB of RAM and 2 GB of disk under TMPDIR.

source "$(dirname "$0")/lib-bench.sh"

SIZES="64 512"
WRITE=1
while (( $# )); do
    case $1 in
        --sizes) SIZES=$2; shift 2 ;;
        --no-write) WRITE=0; shift ;;
        -h|--help) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
command -v python3 >/dev/null || die "python3 is needed for the client"
need_redis
need_ringcache
check_cpus

measure() { # PORT PID SIZE_MIB -> the python line
    taskset -c "$CLIENT_CPU" python3 "$BENCH_ROOT/scripts/bench-large-values.py" "$1" "$2" $(( $3 * 1048576 ))
}

out="$BENCH_TMP/large-values.txt"
{
    echo "# Large values: peak server RSS growth around one SET and one GET ($(date -u +%Y-%m-%dT%H:%M:%SZ))"
    machine_info
    echo "load:      $(load_avg) (1, 5, 15 min) at the start"
    echo "method:    scripts/bench-large-values.sh; growth = VmHWM after the operation - VmRSS before it"
    echo
    printf '%-34s %8s %12s %8s %12s %8s\n' target "size MiB" "SET growth" "SET s" "GET growth" "GET s"
} >"$out"
for size in $SIZES; do
    for target in "ringcache off" "ringcache sync" "redis no-persistence" "redis aof-always"; do
        case $target in
            "ringcache off") start_ringcache "$RC_PORT" --durability off; pid=$RC_PID; port=$RC_PORT ;;
            "ringcache sync") start_ringcache "$RC_PORT" --durability sync; pid=$RC_PID; port=$RC_PORT ;;
            "redis no-persistence") start_redis "$REDIS_PORT"; pid=$REDIS_PID; port=$REDIS_PORT ;;
            "redis aof-always") start_redis "$REDIS_PORT" --appendonly yes --appendfsync always; pid=$REDIS_PID; port=$REDIS_PORT ;;
        esac
        read -r before set_g set_s get_g get_s < <(measure "$port" "$pid" "$size") || die "$target: measurement failed"
        log "$target $size MiB: SET +$set_g MiB in $set_s s, GET +$get_g MiB in $get_s s (RSS before $before MiB)"
        printf '%-34s %8s %10s MiB %8s %10s MiB %8s\n' "$target" "$size" "$set_g" "$set_s" "$get_g" "$get_s" >>"$out"
        stop_pid "$pid"
    done
done
echo "load:      $(load_avg) (1, 5, 15 min) at the end" >>"$out"
cat "$out"
if (( WRITE )); then
    cp "$out" "$BENCH_OUT/large-values.txt"
    log "wrote $BENCH_OUT/large-values.txt"
fi
