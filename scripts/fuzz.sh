#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS each (default 15, what the test command
# uses; pass a larger number for a real campaign, e.g. `scripts/fuzz.sh 3600`).
#
# The machine has one (stable) toolchain; libFuzzer's sanitizer flags are nightly-only, and
# RUSTC_BOOTSTRAP=1 lets stable accept them. Seeds live in fuzz/corpus/<target>/seed-*; what
# a run discovers is kept beside them (git-ignored), and a crash lands in fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-15}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked --version 0.13.2
fi
export RUSTC_BOOTSTRAP=1
cargo fuzz build
for target in $(cargo fuzz list); do
  echo "fuzz: $target for ${seconds}s"
  cargo fuzz run "$target" -- -max_total_time="$seconds" -print_final_stats=1 2>&1 \
    | grep -a -E "^(Done|stat::number_of_executed_units)|ERROR|panicked|SUMMARY" || true
  # `cargo fuzz run` exits non-zero on a crash; pipefail carries it out through grep.
done
