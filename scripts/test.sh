#!/usr/bin/env bash
# The project's test command: start a throwaway Kafka broker, run the whole test suite
# against it (TOUCHSTREAM_TEST_BROKERS), and always stop the broker afterwards.
# TOUCHSTREAM_TEST_CMD overrides the test command (for debugging), e.g.
#   TOUCHSTREAM_TEST_CMD='cargo test -p processor some_test' scripts/test.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

section() { printf '\n===== %s =====\n' "$*"; }

TEST_CMD=${TOUCHSTREAM_TEST_CMD:-cargo test --workspace --locked --no-fail-fast -- --test-threads=2}
if [[ -z ${TOUCHSTREAM_TEST_CMD:-} ]] && ! command -v cargo >/dev/null; then
  echo "error: cargo not found on PATH; install Rust (rustup) to run the tests" >&2
  exit 1
fi

section "Starting Kafka"
# Stop the broker however we leave: success, failure, Ctrl-C or kill.
trap 'section "Stopping Kafka"; bash scripts/kafka.sh stop || true' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
bash scripts/kafka.sh start
source .cache/kafka/current.env
export TOUCHSTREAM_TEST_BROKERS
echo "TOUCHSTREAM_TEST_BROKERS=$TOUCHSTREAM_TEST_BROKERS"

section "Running: $TEST_CMD"
status=0
bash -c "$TEST_CMD" || status=$?

section "Test command exited with status $status"
exit "$status"
