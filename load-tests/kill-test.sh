#!/usr/bin/env bash
# The exactly-once kill test at scale: two replicas, a random one SIGKILLed and restarted at random
# moments while the input arrives, then every output topic compared (read_committed) with a
# failure-free run. Starts its own Kafka broker (like scripts/test.sh) and prints PASS or FAIL.
#
#   load-tests/kill-test.sh [EVENTS] [KILLS] [SECONDS]     (defaults: 1000000 50 600)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
EVENTS=${1:-1000000}
KILLS=${2:-50}
SECONDS_OF_INPUT=${3:-600}
export TOUCHSTREAM_KILL_EVENTS=$EVENTS TOUCHSTREAM_KILLS=$KILLS TOUCHSTREAM_KILL_SECONDS=$SECONDS_OF_INPUT
export TOUCHSTREAM_TEST_CMD="cargo test --release --test exactly_once kill9 -- --nocapture"
mkdir -p .cache
start=$(date +%s)
if bash scripts/test.sh 2>&1 | tee .cache/kill-test.log | grep -E "KILL TEST PASS|panicked|test result"; then :; fi
if grep -q "KILL TEST PASS" .cache/kill-test.log; then
  echo "PASS in $(( $(date +%s) - start )) s: $(grep -o 'KILL TEST PASS.*' .cache/kill-test.log)"
else
  echo "FAIL after $(( $(date +%s) - start )) s (events=$EVENTS kills=$KILLS); full log: .cache/kill-test.log"
  exit 1
fi
