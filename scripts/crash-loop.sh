#!/usr/bin/env bash
# The long tier of the crash loop (issue 8, docs/DURABILITY.md "Reliability suite"): mixed load
# from several writers, kill -9 at random moments, `ringcache check`, restart on the same data
# directory, every key verified by the oracle (tests/reliability_common/oracle.rs).
#
#   scripts/crash-loop.sh [--cycles N] [--durability sync|async] [--snapshots] [--seed S]
#
# Prints one FIGURES line: cycles, acknowledged writes, lost, phantom, the longest async loss
# window, torn tails, snapshots loaded, kills that landed during a snapshot. Exits non-zero on
# the first cycle the oracle rejects (with the seed to replay it).
set -euo pipefail
cd "$(dirname "$0")/.."

cycles=1000
durability=sync
snapshots=0
seed=""
while [ $# -gt 0 ]; do
    case "$1" in
        --cycles) cycles="$2"; shift 2 ;;
        --durability) durability="$2"; shift 2 ;;
        --snapshots) snapshots=1; shift ;;
        --seed) seed="$2"; shift 2 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$durability" in sync|async) ;; *) echo "--durability must be sync or async" >&2; exit 2 ;; esac

export RELIAB_CYCLES="$cycles" RELIAB_DURABILITY="$durability" RELIAB_SNAPSHOTS="$snapshots" RELIAB_PROGRESS=1
if [ -n "$seed" ]; then export RELIAB_SEED="$seed"; fi
exec nice -n "${NICE:-0}" cargo test --release --test reliability crash_loop_long -- --ignored --exact --nocapture
