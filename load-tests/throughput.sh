#!/usr/bin/env bash
# The throughput harness (load-tests/harness, issue 13) in one command: builds release, starts a
# broker of its own (scripts/kafka.sh, KRaft, in a private folder so it never meets the test
# broker) unless BROKERS=host:port is given, loads a simulated backlog and measures on that same
# backlog an exactly-once passthrough and the processor's modes (events/s, ratio, bytes per input
# event by topic, memory per customer, latency at half the rate); writes load-tests/report.json
# and load-tests/report.md. Any harness flag overrides the defaults below, e.g.
#   load-tests/throughput.sh --events 100000 --replicas 2 --modes passthrough,defaults
# The defaults fit a 2-core machine: about 10 minutes with a warm build.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
nice -n 10 cargo build --release --locked -p touchstream -p touchstream-load
if [[ -z ${BROKERS:-} ]]; then
  bash scripts/kafka.sh fetch   # the jars, once, into .cache/kafka/libs
  # scripts/kafka.sh keeps one broker per checkout (.cache/kafka/current.env): run a copy of it
  # in a private root, sharing only the jars, so a running test broker is neither refused nor
  # stopped by us.
  PRIV=$(mktemp -d "${TMPDIR:-/tmp}/touchstream-load.XXXXXX")
  mkdir -p "$PRIV/scripts" "$PRIV/.cache/kafka" "$PRIV/tests"
  cp scripts/kafka.sh scripts/test-certs.sh "$PRIV/scripts/"
  ln -s "$ROOT/tests/kafka" "$PRIV/tests/kafka"
  ln -s "$ROOT/.cache/kafka/libs" "$PRIV/.cache/kafka/libs"
  trap 'bash "$PRIV/scripts/kafka.sh" stop || true; rm -rf "$PRIV"' EXIT
  BROKERS=$(bash "$PRIV/scripts/kafka.sh" start)
fi
mkdir -p target/load-logs
target/release/touchstream-load --brokers "$BROKERS" --touchstream target/release/touchstream \
  --partitions 4 --customers 10000 --events 300000 --latency-seconds 30 \
  --log-dir target/load-logs --out load-tests/report.json "$@"
