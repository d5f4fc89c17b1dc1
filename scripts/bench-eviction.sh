#!/usr/bin/env bash
# Hit ratio per eviction policy against the real server, beside exact LRU computed offline.
# Builds the release binary, then runs scripts/bench-eviction.py (see its docstring for the
# workloads and the method) and writes the table to docs/perf/eviction.txt.
#
#   scripts/bench-eviction.sh [--requests N] [--port P]
#
# Hit ratios do not depend on CPU speed or load: the trace and the server's decisions are the
# same on a busy machine. A run of 400k requests per point takes about two minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
cargo build --release --bin ringcache
mkdir -p docs/perf
python3 scripts/bench-eviction.py "$target/release/ringcache" --out docs/perf/eviction.txt "$@"
