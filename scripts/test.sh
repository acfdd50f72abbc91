#!/usr/bin/env bash
# The one test command (README, .ci/run): sets up what the suite needs on a fresh machine, then
# runs formatting and lint checks and every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

# The end-to-end SDK test drives Tally with the real openai and anthropic Python packages, the
# ClickHouse tests run against a ClickHouse-HTTP server over the chdb-core engine, and the
# browser test uses Playwright.
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
export TALLY_TEST_PYTHON="$PWD/.venv/bin/python"

# The dashboard's browser test drives Debian's Chromium through Playwright (tests/browser/);
# the cache and rate-limit tests share state through a real redis-server (tests/stages.rs).
missing=""
[ -x /usr/bin/chromium ] || missing="$missing chromium"
[ -x /usr/bin/redis-server ] || missing="$missing redis-server"
if [ -n "$missing" ]; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing >/dev/null
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked

# A short run of every fuzz target (SSE parser, usage extractors, headers, pricing, budget
# config) from the seed corpora; `scripts/fuzz.sh 3600` is the long campaign.
scripts/fuzz.sh 15
