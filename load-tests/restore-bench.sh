#!/usr/bin/env bash
# Restore time of one partition's state from the changelog, for N customers (default 1 000 000):
# builds realistic customer states with the real engine, writes them to a changelog topic of a
# real Kafka broker (started here), and times a real `touchstream run` restoring them.
#   load-tests/restore-bench.sh [CUSTOMERS]
# RESTORE_MODELS=1 builds the states through the shipped models (they then hold model state).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export RESTORE_CUSTOMERS=${1:-1000000}
export TOUCHSTREAM_TEST_CMD="cargo test --release --test restore_scale -- --ignored --nocapture"
bash scripts/test.sh 2>&1 | grep -E "built|produced|RESTORE|RSS|panicked|test result"
