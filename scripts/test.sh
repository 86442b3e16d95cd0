#!/usr/bin/env bash
# The project's test command: start a throwaway Kafka broker and a Confluent-compatible schema
# registry (Apicurio, in memory), prepare the Python client of the Avro interop test, run the
# whole test suite against them (TOUCHSTREAM_TEST_BROKERS, TOUCHSTREAM_TEST_REGISTRY,
# TOUCHSTREAM_TEST_PYTHON; the broker's TLS/SASL listeners, test certificates and users in
# TOUCHSTREAM_TEST_BROKERS_{SSL,SASL_SSL,MTLS}, TOUCHSTREAM_TEST_TLS_DIR and
# TOUCHSTREAM_TEST_{SCRAM,SCRAM512,PLAIN}_{USER,PASSWORD}, see scripts/kafka.sh; the registry
# over https in TOUCHSTREAM_TEST_REGISTRY_HTTPS with its CA in TOUCHSTREAM_TEST_REGISTRY_CA, see
# scripts/registry.sh), and always stop both afterwards.
# promtool (Debian's prometheus package) is installed when missing, for tests/deploy.rs.
# Before any of that, formatting and lints gate the run: `cargo fmt --check` and
# `cargo clippy -D warnings` on every target (TOUCHSTREAM_SKIP_LINT=1 skips them when debugging).
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

if [[ -z ${TOUCHSTREAM_SKIP_LINT:-} ]]; then
  section "Lint: cargo fmt --check, cargo clippy -D warnings"
  cargo fmt --all --check
  cargo clippy --workspace --all-targets --locked -- -D warnings
fi

if ! command -v promtool >/dev/null; then
  section "Installing promtool (Debian package prometheus) for the alert-rule tests"
  SUDO=$([[ $(id -u) == 0 ]] && echo "" || echo sudo)
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  promtool --version >/dev/null && echo "promtool installed"
fi

section "Starting Kafka and the schema registry"
# Stop both however we leave: success, failure, Ctrl-C or kill.
trap 'section "Stopping Kafka and the schema registry"; bash scripts/registry.sh stop || true; bash scripts/kafka.sh stop || true' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
# The registry starts in the background while Kafka starts (they do not depend on each other).
bash scripts/registry.sh start >/dev/null &
registry_pid=$!
bash scripts/kafka.sh start
wait "$registry_pid" || { echo "error: the schema registry did not start" >&2; exit 1; }
source .cache/kafka/current.env
source .cache/registry/current.env
for var in TOUCHSTREAM_TEST_BROKERS TOUCHSTREAM_TEST_BROKERS_SSL TOUCHSTREAM_TEST_BROKERS_SASL_SSL \
           TOUCHSTREAM_TEST_BROKERS_MTLS TOUCHSTREAM_TEST_TLS_DIR \
           TOUCHSTREAM_TEST_SCRAM_USER TOUCHSTREAM_TEST_SCRAM_PASSWORD \
           TOUCHSTREAM_TEST_SCRAM512_USER TOUCHSTREAM_TEST_SCRAM512_PASSWORD \
           TOUCHSTREAM_TEST_PLAIN_USER TOUCHSTREAM_TEST_PLAIN_PASSWORD \
           TOUCHSTREAM_TEST_REGISTRY TOUCHSTREAM_TEST_REGISTRY_HTTPS TOUCHSTREAM_TEST_REGISTRY_CA; do
  export "$var"
  echo "$var=${!var}"
done

section "Python client of the Avro interop test"
TOUCHSTREAM_TEST_PYTHON=$(bash scripts/interop-venv.sh)
export TOUCHSTREAM_TEST_PYTHON
echo "TOUCHSTREAM_TEST_PYTHON=$TOUCHSTREAM_TEST_PYTHON"

section "Running: $TEST_CMD"
status=0
bash -c "$TEST_CMD" || status=$?

section "Test command exited with status $status"
exit "$status"
