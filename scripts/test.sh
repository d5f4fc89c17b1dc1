#!/usr/bin/env bash
# The README's test command: build everything and run every test (unit, integration, benches
# compiled as tests). Installs nothing: the tests need only cargo.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --all-targets --release
