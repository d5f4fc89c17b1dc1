#!/usr/bin/env bash
# Throughput of ringcache against redis-server, the method of docs/PERFORMANCE.md:
#
#   both servers started side by side, pinned to CPU 1, one ringcache shard, Redis persistence off;
#   the client pinned to CPU 0; workload `-c 50 -d 256 -r 100000 -t set,get`, unpipelined and
#   `-P 16`; rounds alternate which server goes first; the table gives medians of the rounds.
#
# Two clients run the same workload, so that the client's own limits show:
#   redis-benchmark  `redis-benchmark -c 50 -d 256 -r 100000 -t set,get [-P 16] -n N --csv`
#   loadgen          `ringcache-loadgen run --connections 50 --value-bytes 256 --keys 100000
#                     --ratio 1:0 (then 0:1) [--pipeline 16] --duration-s 3 --warmup-s 1`
#
# Usage: scripts/bench-throughput.sh [--rounds N] [--client redis-benchmark|loadgen|both]
#                                    [--analyze] [--no-write]
#   --rounds N   rounds (default 3)
#   --client     which client(s) to run (default both)
#   --analyze    instead of the table: an unpipelined GET load against each server in turn,
#                measured with perf (IPIs, context switches, syscalls and io_uring events per
#                request, CPU%) and profiled (perf record -g); writes
#                docs/perf/unpipelined-analysis.txt. Needs perf. About 1 minute.
#   --no-write   print only; do not write docs/perf/
# Environment: see scripts/lib-bench.sh, and
#   RB_REQUESTS, RB_REQUESTS_PIPELINED   redis-benchmark -n (default 200000, 2000000)
#   LG_DURATION_S                        loadgen's measured window per run (default 3)
#   ANALYZE_WINDOW_S                     --analyze's counting window per server (default 5)
#   ANALYZE_ALT_BIN, ALT_PORT            --analyze also measures this ringcache binary (e.g. one
#                                        built against a patched glommio) on ALT_PORT (7103)
# A full table run takes about 3-4 minutes on 2 quiet CPUs (longer on a loaded machine, each
# client run is capped at RUN_TIMEOUT_S=90), plus up to BENCH_WAIT_LOAD_S waiting for quiet.

source "$(dirname "$0")/lib-bench.sh"

ROUNDS=3
CLIENTS=both
ANALYZE=0
WRITE=1
while (( $# )); do
    case $1 in
        --rounds) ROUNDS=$2; shift 2 ;;
        --client) CLIENTS=$2; shift 2 ;;
        --analyze) ANALYZE=1; shift ;;
        --no-write) WRITE=0; shift ;;
        -h|--help) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
case $CLIENTS in
    both) CLIENT_LIST="redis-benchmark loadgen" ;;
    redis-benchmark|loadgen) CLIENT_LIST=$CLIENTS ;;
    *) die "--client must be redis-benchmark, loadgen or both" ;;
esac

RB_REQUESTS=${RB_REQUESTS:-200000}
RB_REQUESTS_PIPELINED=${RB_REQUESTS_PIPELINED:-2000000}
LG_DURATION_S=${LG_DURATION_S:-3}
# A hard bound on each client run, so a wedged server cannot hang the script.
RUN_TIMEOUT_S=${RUN_TIMEOUT_S:-90}

need_redis
need_ringcache
check_cpus

# port_of NAME / pid_of NAME
port_of() { if [[ $1 == ringcache ]]; then echo "$RC_PORT"; else echo "$REDIS_PORT"; fi; }
pid_of() { if [[ $1 == ringcache ]]; then echo "$RC_PID"; else echo "$REDIS_PID"; fi; }

# ticks PID: utime + stime of the process (all threads), in clock ticks.
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# timed SERVER_PID OUT -- CMD...: runs CMD with stdout to OUT; prints "server_cpu_s client_cpu_s
# wall_s": the server's CPU time over the run (from /proc/PID/stat) and the client's (bash's
# `time`, which counts the command and its children). Fails if CMD fails.
timed() {
    local pid=$1 out=$2 s0 s1 rc=0 TIMEFORMAT='%U %S %R'
    shift 3
    s0=$(ticks "$pid")
    { time "$@" >"$out" 2>"$out.err" || rc=$?; } 2>"$out.time"
    s1=$(ticks "$pid")
    (( rc == 0 )) || { cat "$out.err" >&2; return "$rc"; }
    awk -v s="$((s1 - s0))" -v hz="$(getconf CLK_TCK)" '{ print s / hz, $1 + $2, $3 }' "$out.time"
}

# run_rb SERVER PIPELINE -> "set_ops get_ops server_cpu% client_cpu%" from redis-benchmark's CSV
# (CPU% over the whole run, SET and GET).
run_rb() {
    local port pid p=$2 n=$RB_REQUESTS t out="$BENCH_TMP/rb.csv"
    port=$(port_of "$1"); pid=$(pid_of "$1")
    (( p > 1 )) && n=$RB_REQUESTS_PIPELINED
    t=$(timed "$pid" "$out" -- timeout "$RUN_TIMEOUT_S" taskset -c "$CLIENT_CPU" redis-benchmark \
        -h 127.0.0.1 -p "$port" -c 50 -d 256 -r 100000 -t set,get -P "$p" -n "$n" --csv) \
        || die "redis-benchmark against $1 failed or timed out"
    awk -F'"' -v t="$t" '$2 == "SET" { s = $4 } $2 == "GET" { g = $4 }
        END { split(t, c, " "); printf "%.0f %.0f %.0f %.0f\n", s, g, 100 * c[1] / c[3], 100 * c[2] / c[3] }' "$out"
}

# run_lg SERVER PIPELINE -> "set_ops get_ops server_cpu% client_cpu%": a SET-only run, then a
# GET-only run over the same keys (so GETs hit, like redis-benchmark's GET after its SET).
run_lg() {
    local port pid p=$2 op ratio json ops=() t cpu="0 0 0"
    port=$(port_of "$1"); pid=$(pid_of "$1")
    for op in SET GET; do
        if [[ $op == SET ]]; then ratio=1:0; else ratio=0:1; fi
        json="$BENCH_TMP/lg-$port-$p-$op.json"
        t=$(timed "$pid" "$BENCH_TMP/lg.out" -- timeout "$RUN_TIMEOUT_S" taskset -c "$CLIENT_CPU" \
            "$LOADGEN_BIN" run --target "127.0.0.1:$port" --connections 50 --client-threads 1 \
            --cpus "$CLIENT_CPU" --pipeline "$p" --ratio "$ratio" --value-bytes 256 --keys 100000 \
            --key-dist uniform --duration-s "$LG_DURATION_S" --warmup-s 1 --seed 42 --quiet \
            --json "$json") \
            || die "loadgen against $1 failed or timed out"
        cpu=$(awk -v a="$cpu" -v b="$t" 'BEGIN { split(a, x, " "); split(b, y, " ");
            print x[1] + y[1], x[2] + y[2], x[3] + y[3] }')
        # The first `"op": "<OP>"` of the JSON is the target's total for that op; its next line
        # is `"ops_per_s": <n>`. (jq would be neater; this keeps the script dependency-free.)
        ops+=("$(awk -v op="\"$op\"," '$1 == "\"op\":" && $2 == op && !done { getline; gsub(",", "", $2);
            printf "%.0f", $2; done = 1 }' "$json")")
        [[ -n ${ops[-1]} ]] || die "no $op ops/s in $json"
    done
    awk -v o="${ops[*]}" -v c="$cpu" 'BEGIN { split(c, x, " ");
        printf "%s %.0f %.0f\n", o, 100 * x[1] / x[3], 100 * x[2] / x[3] }'
}

# ---------------------------------------------------------------------------------------------
# --analyze: why is unpipelined ringcache slower? The same unpipelined GET load against each
# server, one after the other, measured system-wide (IPIs, context switches, io_uring events)
# and per server process (syscalls by kind, CPU%), then a profile of ringcache's shard.
# ANALYZE_ALT_BIN=/path/to/ringcache adds a third server (e.g. a build with a patched glommio),
# on ALT_PORT (default 7103).
# ---------------------------------------------------------------------------------------------

ANALYZE_WINDOW_S=${ANALYZE_WINDOW_S:-5}
SYS_EVENTS=irq_vectors:reschedule_entry,irq_vectors:call_function_single_entry,context-switches
# Counted on one process (perf stat -p): events in its own context, including interrupts taken
# while it runs. io_uring_task_add fires where the socket is woken, i.e. in the *client's*
# context on loopback (its send runs the receive path), so it is read from the client's counts.
PID_EVENTS=irq_vectors:reschedule_entry,irq_vectors:call_function_single_entry,context-switches
PID_EVENTS+=,raw_syscalls:sys_enter,syscalls:sys_enter_io_uring_enter,syscalls:sys_enter_recvfrom
PID_EVENTS+=,syscalls:sys_enter_sendto,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_read
PID_EVENTS+=,syscalls:sys_enter_write,io_uring:io_uring_task_add,io_uring:io_uring_task_work_run
PID_EVENTS+=,io_uring:io_uring_poll_arm,io_uring:io_uring_submit_req,io_uring:io_uring_cqring_wait

# The workload of each perf stat: prints "time requests server_ticks client_ticks" at its start
# and after the window, so that every count is divided by the requests of its own window
# (perf's start-up, slow on a loaded machine, then shifts nothing). Ticks are utime + stime of
# all the process's threads, from /proc/PID/stat.
write_window_script() {
    cat >"$BENCH_TMP/window.sh" <<'WINDOW'
port=$1 srv=$2 cli=$3 w=$4
sample() {
    echo "$(date +%s.%N)" \
        "$(redis-cli -p "$port" info stats | tr -d '\r' | awk -F: '$1 == "total_commands_processed" { print $2 }')" \
        "$(awk '{ print $14 + $15 }' "/proc/$srv/stat")" "$(awk '{ print $14 + $15 }' "/proc/$cli/stat")"
}
sample
sleep "$w"
sample
WINDOW
}

# perf_kv PREFIX FILE: "PREFIXevent=count" pairs from a perf stat -x, file.
perf_kv() { awk -F, -v p="$1" 'NF >= 3 && $1 ~ /^[0-9]+$/ { printf " %s%s=%s", p, $3, $1 }' "$2"; }

# analyze_one NAME PID PORT: appends "NAME key=value ..." to $BENCH_TMP/analysis.kv.
analyze_one() {
    local name=$1 pid=$2 port=$3 w=$ANALYZE_WINDOW_S rb l1 p1 p2 p3 g
    log "analyze: $name"
    # Keys for the GETs to hit.
    taskset -c "$CLIENT_CPU" redis-benchmark -p "$port" -c 50 -d 256 -r 100000 -t set -P 16 \
        -n 300000 -q >/dev/null 2>&1
    # A GET load longer than the window, stopped by its PID afterwards.
    taskset -c "$CLIENT_CPU" redis-benchmark -p "$port" -c 50 -d 256 -r 100000 -t get \
        -n 100000000 -q >/dev/null 2>&1 &
    rb=$!
    sleep 2
    l1=$(cut -d' ' -f1 /proc/loadavg)
    perf stat -a -x, -o "$BENCH_TMP/sys-$name.csv" -e "$SYS_EVENTS" -- bash "$BENCH_TMP/window.sh" "$port" "$pid" "$rb" "$w" \
        >"$BENCH_TMP/win-sys-$name" 2>/dev/null & p1=$!
    perf stat -x, -o "$BENCH_TMP/srv-$name.csv" -e "$PID_EVENTS" -p "$pid" -- bash "$BENCH_TMP/window.sh" "$port" "$pid" "$rb" "$w" \
        >"$BENCH_TMP/win-srv-$name" 2>/dev/null & p2=$!
    perf stat -x, -o "$BENCH_TMP/cli-$name.csv" -e "$PID_EVENTS" -p "$rb" -- bash "$BENCH_TMP/window.sh" "$port" "$pid" "$rb" "$w" \
        >"$BENCH_TMP/win-cli-$name" 2>/dev/null & p3=$!
    wait "$p1" "$p2" "$p3"
    # Where the server's time goes: a profile over the same load, after the counted window so
    # that perf record's own cost does not bend the counts.
    # The client is profiled at the same time: it pays for waking the server (the IPI is sent
    # from its loopback send).
    perf record -g -o "$BENCH_TMP/perf-client-$name.data" -p "$rb" -- sleep 4 >/dev/null 2>&1 &
    p1=$!
    perf record -g -o "$BENCH_TMP/perf-$name.data" -p "$pid" -- sleep 4 >/dev/null 2>&1
    wait "$p1" || true
    kill "$rb" 2>/dev/null || true
    wait "$rb" 2>/dev/null || true
    {
        printf '%s load1=%s' "$name" "$l1"
        # Per window: seconds, requests, server and client CPU ticks.
        for g in sys srv cli; do
            awk -v g="$g" 'NR == 1 { t = $1; r = $2; s = $3; c = $4 }
                NR == 2 { printf " %s_secs=%s %s_reqs=%s %s_srv_ticks=%s %s_cli_ticks=%s",
                    g, $1 - t, g, $2 - r, g, $3 - s, g, $4 - c }' "$BENCH_TMP/win-$g-$name"
        done
        perf_kv sys: "$BENCH_TMP/sys-$name.csv"
        perf_kv srv: "$BENCH_TMP/srv-$name.csv"
        perf_kv cli: "$BENCH_TMP/cli-$name.csv"
        echo
    } >>"$BENCH_TMP/analysis.kv"
}

# profile_pipelined NAME PID PORT: a profile of the server under the pipelined GET load
# (-P 16), where both servers are CPU-bound, with ops/s and server CPU% over the same 4 s.
profile_pipelined() {
    local name=$1 pid=$2 port=$3 rb c0 c1 s0 s1 t0 t1
    log "analyze: $name pipelined"
    taskset -c "$CLIENT_CPU" redis-benchmark -p "$port" -c 50 -d 256 -r 100000 -t get -P 16 \
        -n 1000000000 -q >/dev/null 2>&1 &
    rb=$!
    sleep 2
    c0=$(info_field "$port" total_commands_processed); s0=$(ticks "$pid"); t0=$(date +%s.%N)
    perf stat -x, -o "$BENCH_TMP/p16-res-$name.csv" -e irq_vectors:reschedule_entry -p "$pid" \
        -- sleep 4 2>/dev/null &
    local ps=$!
    perf record -g -o "$BENCH_TMP/perf-p16-$name.data" -p "$pid" -- sleep 4 >/dev/null 2>&1
    wait "$ps" || true
    c1=$(info_field "$port" total_commands_processed); s1=$(ticks "$pid"); t1=$(date +%s.%N)
    kill "$rb" 2>/dev/null || true
    wait "$rb" 2>/dev/null || true
    local res
    res=$(awk -F, '$3 == "irq_vectors:reschedule_entry" { print $1 }' "$BENCH_TMP/p16-res-$name.csv")
    awk -v n="$name" -v r="$((c1 - c0))" -v s="$((s1 - s0))" -v a="$t0" -v b="$t1" -v hz="$(getconf CLK_TCK)" \
        -v res="${res:-0}" 'BEGIN { printf "%s %.0f %.0f %.0f\n", n, r / (b - a), 100 * s / hz / (b - a), res / 4 }' \
        >>"$BENCH_TMP/p16.txt"
}

# Top entries of a profile: percentage and symbol only.
profile_top() {
    perf report -i "$1" --stdio $2 -g none --percent-limit "$3" 2>/dev/null \
        | awk -v n="$4" '/^ +[0-9]/ && shown < n { sub(/ +- +- *$/, ""); sub(/ +$/, ""); print; shown++ }'
}

analyze() {
    command -v perf >/dev/null || die "perf is needed for --analyze (apt-get install linux-perf)"
    local servers="ringcache redis"
    write_window_script
    wait_quiet
    local load0 busy0
    load0=$(load_avg)
    busy0=$(cpu_busy)
    start_ringcache "$RC_PORT"; local rc_pid=$RC_PID
    start_redis "$REDIS_PORT"
    if [[ -n ${ANALYZE_ALT_BIN:-} ]]; then
        local saved=$RINGCACHE_BIN
        RINGCACHE_BIN=$ANALYZE_ALT_BIN
        start_ringcache "${ALT_PORT:-7103}"
        RINGCACHE_BIN=$saved
        servers+=" ringcache-alt"
    fi
    local alt_pid=${RC_PID}
    # Background: the same system-wide counts with both servers idle, so that other people's
    # activity on the machine can be told apart from ours.
    log "analyze: background (servers idle)"
    perf stat -a -x, -o "$BENCH_TMP/sys-idle.csv" -e "$SYS_EVENTS" -- sleep "$ANALYZE_WINDOW_S" 2>/dev/null
    : >"$BENCH_TMP/analysis.kv"
    : >"$BENCH_TMP/p16.txt"
    local s
    for s in $servers; do
        case $s in
            ringcache) analyze_one "$s" "$rc_pid" "$RC_PORT" ;;
            redis) analyze_one "$s" "$REDIS_PID" "$REDIS_PORT" ;;
            ringcache-alt) analyze_one "$s" "$alt_pid" "${ALT_PORT:-7103}" ;;
        esac
    done
    profile_pipelined ringcache "$rc_pid" "$RC_PORT"
    profile_pipelined redis "$REDIS_PID" "$REDIS_PORT"
    [[ -n ${ANALYZE_ALT_BIN:-} ]] && profile_pipelined ringcache-alt "$alt_pid" "${ALT_PORT:-7103}"
    local out="$BENCH_TMP/analysis.txt" hz
    hz=$(getconf CLK_TCK)
    {
        echo "# Unpipelined GET load: ringcache vs redis-server ($(date -u '+%Y-%m-%d %H:%M UTC'))"
        echo
        machine_info
        [[ -n ${ANALYZE_ALT_BIN:-} ]] && echo "alt:       ringcache-alt = $ANALYZE_ALT_BIN"
        echo "client:    redis-benchmark -c 50 -d 256 -r 100000 -t get (unpipelined), CPU $CLIENT_CPU"
        echo "window:    ${ANALYZE_WINDOW_S} s per server after 2 s of warm-up, one server after the other: $servers"
        echo "load avg:  $load0 at start, $(load_avg) at end (1/5/15 min); CPUs busy just before: $busy0"
        echo
        echo "Every figure is per request (requests = INFO total_commands_processed delta over the"
        echo "window) except ops/s and CPU% (utime+stime delta of the process, /proc/PID/stat)."
        echo "system-wide: perf stat -a -e $SYS_EVENTS"
        echo "server / client: perf stat -p PID on the server / on redis-benchmark, events in that"
        echo "  process's context (interrupts taken while it runs included): RES = reschedule IPIs"
        echo "  (irq_vectors:reschedule_entry), CFS = call_function_single IPIs, cs = context switches,"
        echo "  sc = syscalls (raw_syscalls:sys_enter), then syscalls:sys_enter_<name> and io_uring:*."
        echo "  io_uring_task_add = task_work queued for the ring owner (fires in the waker's context,"
        echo "  here the client's loopback send); task_work_run = the owner running it; poll_arm = a"
        echo "  POLL_ADD that found the socket not ready and waits; submit_req = SQEs submitted."
        echo
        awk -v hz="$hz" -v w="$ANALYZE_WINDOW_S" -v idle="$(perf_kv sys: "$BENCH_TMP/sys-idle.csv")" '
        function g(k) { return (k in v) ? v[k] : 0 }
        BEGIN {
            nl = split("ops/s|server CPU%|client CPU%" \
                "|system: RES IPIs|system: CFS IPIs|system: context switches" \
                "|server: RES IPIs|server: CFS IPIs|server: context switches|server: syscalls" \
                "|  io_uring_enter|  recvfrom|  sendto|  epoll_wait|  read|  write" \
                "|server: io_uring submit_req|server: io_uring poll_arm|server: io_uring cqring_wait" \
                "|server: io_uring task_work_run|client: io_uring task_add|client: RES IPIs" \
                "|client: context switches|client: syscalls|load avg (1 min) at start", label, "|")
            key[4] = "sys:irq_vectors:reschedule_entry"; key[5] = "sys:irq_vectors:call_function_single_entry"
            key[6] = "sys:context-switches"; key[7] = "srv:irq_vectors:reschedule_entry"
            key[8] = "srv:irq_vectors:call_function_single_entry"; key[9] = "srv:context-switches"
            key[10] = "srv:raw_syscalls:sys_enter"; key[11] = "srv:syscalls:sys_enter_io_uring_enter"
            key[12] = "srv:syscalls:sys_enter_recvfrom"; key[13] = "srv:syscalls:sys_enter_sendto"
            key[14] = "srv:syscalls:sys_enter_epoll_wait"; key[15] = "srv:syscalls:sys_enter_read"
            key[16] = "srv:syscalls:sys_enter_write"; key[17] = "srv:io_uring:io_uring_submit_req"
            key[18] = "srv:io_uring:io_uring_poll_arm"; key[19] = "srv:io_uring:io_uring_cqring_wait"
            key[20] = "srv:io_uring:io_uring_task_work_run"; key[21] = "cli:io_uring:io_uring_task_add"
            key[22] = "cli:irq_vectors:reschedule_entry"; key[23] = "cli:context-switches"
            key[24] = "cli:raw_syscalls:sys_enter"
        }
        {
            delete v; for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
            # ops/s and CPU% over the server-process window; each count over its own window.
            secs = g("srv_secs"); name[NR] = $1
            row[NR, 1] = sprintf("%.0f", g("srv_reqs") / secs)
            row[NR, 2] = sprintf("%.0f%%", 100 * g("srv_srv_ticks") / hz / secs)
            row[NR, 3] = sprintf("%.0f%%", 100 * g("srv_cli_ticks") / hz / secs)
            for (c = 4; c <= 24; c++) {
                split(key[c], kk, ":"); n = g(kk[1] "_reqs")
                row[NR, c] = n > 0 ? sprintf("%.3f", g(key[c]) / n) : "n/a"
            }
            row[NR, 25] = g("load1")
        }
        END {
            printf "%-34s", "figure (per request)"; for (r = 1; r <= NR; r++) printf " %14s", name[r]; print ""
            for (c = 1; c <= nl; c++) {
                printf "%-34s", label[c]; for (r = 1; r <= NR; r++) printf " %14s", row[r, c]; print ""
            }
            delete v; m = split(idle, parts, " ")
            for (i = 1; i <= m; i++) { split(parts[i], kv, "="); v[kv[1]] = kv[2] }
            printf "\nsystem-wide background, both servers idle, per second: RES %.0f, CFS %.0f, cs %.0f\n",
                g(key[4]) / w, g(key[5]) / w, g(key[6]) / w
        }' "$BENCH_TMP/analysis.kv"
        for s in $servers; do
            [[ $s == redis ]] && continue
            echo
            echo "$s server profile: perf record -g -p PID, 4 s of the same load; top by self time"
            echo "(perf report --no-children --sort dso,symbol):"
            echo
            profile_top "$BENCH_TMP/perf-$s.data" "--no-children --sort dso,symbol" 1 25
            echo
            echo "$s server profile, inclusive time (perf report --children --sort symbol):"
            echo
            profile_top "$BENCH_TMP/perf-$s.data" "--children --sort symbol" 5 30
        done
        echo
        echo "Waking the server: inclusive share of samples under each symbol, in the server's and in"
        echo "the client's profile (perf report --children --sort symbol). sock_def_readable = a"
        echo "loopback send waking the receiving socket's waiters (for ringcache: the io_uring poll, which"
        echo "queues task_work and kicks the shard; for Redis: the epoll callback); x2apic_send_IPI ="
        echo "sending an IPI; asm_sysvec_reschedule_ipi = taking one; tctx_task_work = running io_uring"
        echo "task_work; __do_sys_io_uring_enter / do_epoll_wait = the event-loop syscalls. On this VM"
        echo "perf samples with cpu-clock (no PMU), so time with interrupts off lands on the next"
        echo "_raw_spin_unlock_irqrestore: wake-up costs show up inclusively, not as self time."
        echo
        local syms='sock_def_readable x2apic_send_IPI asm_sysvec_reschedule_ipi tctx_task_work'
        syms+=' __do_sys_io_uring_enter do_epoll_wait'
        printf '%-30s' "symbol"
        for s in $servers; do printf ' %15s %15s' "$s srv" "$s cli"; done
        echo
        for sym in $syms; do
            printf '%-30s' "$sym"
            for s in $servers; do
                for f in "perf-$s" "perf-client-$s"; do
                    printf ' %15s' "$(perf report -i "$BENCH_TMP/$f.data" --children --sort symbol --stdio \
                        -g none 2>/dev/null | awk -v sym="$sym" '$4 == sym && !done { print $1; done = 1 }
                        END { if (!done) print "-" }')"
                done
            done
            echo
        done
        echo
        echo "redis server profile: top by self time (perf report --no-children --sort dso,symbol;"
        echo "Debian's redis-server is a link to redis-check-rdb, hence the name):"
        echo
        profile_top "$BENCH_TMP/perf-redis.data" "--no-children --sort dso,symbol" 1.5 20
        echo
        echo "## Pipelined: redis-benchmark -c 50 -d 256 -r 100000 -t get -P 16, 4 s per server"
        echo
        echo "ops/s from INFO total_commands_processed, server CPU% from /proc/PID/stat, RES IPIs/s taken"
        echo "by the server process (perf stat -e irq_vectors:reschedule_entry -p PID), all over the same 4 s."
        echo
        printf '%-14s %12s %12s %12s\n' server ops/s "server CPU%" "RES IPIs/s"
        awk '{ printf "%-14s %12s %11s%% %12s\n", $1, $2, $3, $4 }' "$BENCH_TMP/p16.txt"
        for s in $servers; do
            echo
            echo "$s server profile under -P 16, top by self time (perf report --no-children --sort dso,symbol):"
            echo
            profile_top "$BENCH_TMP/perf-p16-$s.data" "--no-children --sort dso,symbol" 1.5 25
        done
        echo
        echo "ringcache server profile under -P 16, inclusive (perf report --children --sort symbol):"
        echo
        profile_top "$BENCH_TMP/perf-p16-ringcache.data" "--children --sort symbol" 5 40
    } | tee "$out"
    if (( WRITE )); then
        mkdir -p "$BENCH_OUT"
        cp "$out" "$BENCH_OUT/unpipelined-analysis.txt"
        log "wrote $BENCH_OUT/unpipelined-analysis.txt"
    fi
}

if (( ANALYZE )); then
    analyze
    exit 0
fi

# ---------------------------------------------------------------------------------------------
# The throughput table.
# ---------------------------------------------------------------------------------------------

wait_quiet
LOAD_START=$(load_avg)
BUSY_START=$(cpu_busy)
DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
start_ringcache "$RC_PORT"
start_redis "$REDIS_PORT"

ROUNDS_CSV="$BENCH_TMP/throughput-rounds.csv"
echo "round,client,pipeline,server,set_ops,get_ops,server_cpu_pct,client_cpu_pct,load1" >"$ROUNDS_CSV"
for round in $(seq "$ROUNDS"); do
    if (( round % 2 )); then order="ringcache redis"; else order="redis ringcache"; fi
    for client in $CLIENT_LIST; do
        for p in 1 16; do
            for server in $order; do
                l1=$(cut -d' ' -f1 /proc/loadavg)
                if [[ $client == redis-benchmark ]]; then
                    res=$(run_rb "$server" "$p")
                else
                    res=$(run_lg "$server" "$p")
                fi
                read -r set get srv cli <<<"$res"
                log "round $round $client P$p $server: SET $set GET $get ops/s, CPU server $srv% client $cli% (load $l1)"
                echo "$round,$client,$p,$server,$set,$get,$srv,$cli,$l1" >>"$ROUNDS_CSV"
            done
        done
    done
done
LOAD_END=$(load_avg)

# col CLIENT P SERVER FIELD -> the values of all rounds
col() {
    awk -F, -v c="$1" -v p="$2" -v s="$3" -v f="$4" \
        'NR == 1 { for (i = 1; i <= NF; i++) idx[$i] = i; next }
         $2 == c && $3 == p && $4 == s { print $idx[f] }' "$ROUNDS_CSV"
}

TABLE="$BENCH_TMP/throughput.txt"
{
    echo "# Throughput: ringcache vs redis-server ($DATE)"
    echo
    machine_info
    echo "workload:  -c 50 -d 256 -r 100000, SET then GET; unpipelined (P1) and -P 16 (P16)"
    echo "rounds:    $ROUNDS, alternating which server goes first; figures are medians of the rounds"
    echo "load avg:  $LOAD_START at start, $LOAD_END at end (1/5/15 min); CPUs busy just before: $BUSY_START"
    echo
    printf '%-16s %-4s %-4s %10s %10s %6s  %-12s %s\n' client mode op ringcache redis ratio target \
        "per round: ringcache / redis"
    for client in $CLIENT_LIST; do
        for p in 1 16; do
            target=1.0
            (( p > 1 )) && target=1.3
            for op in set get; do
                # shellcheck disable=SC2207
                rc=($(col "$client" "$p" ringcache "${op}_ops"))
                # shellcheck disable=SC2207
                rd=($(col "$client" "$p" redis "${op}_ops"))
                mrc=$(median "${rc[@]}")
                mrd=$(median "${rd[@]}")
                r=$(ratio "$mrc" "$mrd")
                met=$(awk -v r="$r" -v t="$target" 'BEGIN { print (r >= t) ? "met" : "missed" }')
                printf '%-16s %-4s %-4s %10s %10s %6s  %-12s %s / %s\n' "$client" "P$p" "${op^^}" "$mrc" \
                    "$mrd" "$r" "≥$target $met" "${rc[*]}" "${rd[*]}"
            done
        done
    done
    echo
    echo "CPU use during the runs (medians; % of one CPU over each client run, SET and GET together):"
    printf '%-16s %-4s %16s %16s %16s %16s\n' client mode "ringcache srv" "its client" "redis srv" "its client"
    for client in $CLIENT_LIST; do
        for p in 1 16; do
            printf '%-16s %-4s' "$client" "P$p"
            for server in ringcache redis; do
                for f in server_cpu_pct client_cpu_pct; do
                    # shellcheck disable=SC2046
                    printf ' %15s%%' "$(median $(col "$client" "$p" "$server" "$f"))"
                done
            done
            echo
        done
    done
    echo
    echo "ops/s: redis-benchmark's requests per second (-n $RB_REQUESTS unpipelined, $RB_REQUESTS_PIPELINED pipelined);"
    echo "loadgen's measured ok replies per second over a ${LG_DURATION_S} s window after 1 s warm-up (closed loop,"
    echo "--pipeline 16 keeps 16 requests in flight per connection, where redis-benchmark -P 16 sends 16 and"
    echo "waits for all 16 replies). Targets: P16 ≥ 1.3x Redis, P1 ≥ 1.0x (docs/PERFORMANCE.md)."
    echo "CPU%: server utime+stime from /proc/PID/stat, client user+sys from bash's time, over the"
    echo "client's wall time (connection setup and loadgen's 1 s warm-up included)."
} | tee "$TABLE"

if (( WRITE )); then
    mkdir -p "$BENCH_OUT"
    cp "$TABLE" "$BENCH_OUT/throughput.txt"
    cp "$ROUNDS_CSV" "$BENCH_OUT/throughput-rounds.csv"
    log "wrote $BENCH_OUT/throughput.txt and throughput-rounds.csv"
fi
