#!/usr/bin/env bash
# The throughput harness in one command: builds release, starts the test broker (scripts/kafka.sh)
# unless BROKERS is given, loads a simulated backlog and measures, on that same backlog, an
# exactly-once passthrough and the processor's modes; writes load-tests/report.json and .md.
#   load-tests/throughput.sh [--customers 3000] [--partitions 4] [--replicas 1] [--modes ...]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p touchstream -p touchstream-sim
if [[ -z ${BROKERS:-} ]]; then
  trap 'bash scripts/kafka.sh stop || true' EXIT
  bash scripts/kafka.sh start
  source .cache/kafka/current.env
  BROKERS=$TOUCHSTREAM_TEST_BROKERS
fi
target/release/touchstream-load --brokers "$BROKERS" --touchstream target/release/touchstream --out load-tests/report.json "$@"
