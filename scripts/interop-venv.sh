#!/usr/bin/env bash
# Python environment of the Avro interop test: a venv in .cache/interop-venv with the pinned
# packages of tests/interop/requirements.txt from PyPI (rebuilt when that file changes).
# Prints the venv's python. Called by scripts/test.sh, and by tests/avro.rs when run alone.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=$ROOT/.cache/interop-venv
REQ=$ROOT/tests/interop/requirements.txt
stamp=$(sha256sum "$REQ" | cut -d' ' -f1)
if [[ $(cat "$VENV/.stamp" 2>/dev/null) != "$stamp" ]]; then
  echo "interop-venv.sh: installing $(grep -v '^#' "$REQ" | xargs) into .cache/interop-venv" >&2
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQ" >&2
  echo "$stamp" >"$VENV/.stamp"   # written last: marks a complete install
fi
echo "$VENV/bin/python"
