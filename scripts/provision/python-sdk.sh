#!/usr/bin/env bash
# Creates (once) the virtualenv the Python SDK tests run in and installs the SDK into it
# in editable mode with its requests and httpx extras, plus pytest. Idempotent: a second
# run only checks that the install still matches sdk/python/pyproject.toml.
#
#   bash scripts/provision/python-sdk.sh      # prints SDK_PYTHON=<venv>/bin/python
#
# Environment: PYTHON (default python3, >= 3.9), SDK_VENV (default .cache/sdk-venv).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PYTHON="${PYTHON:-python3}"
VENV="${SDK_VENV:-$ROOT/.cache/sdk-venv}"
LOG_DIR="$ROOT/.cache/logs"
LOG="$LOG_DIR/python-sdk-provision.log"
SDK="$ROOT/sdk/python"
mkdir -p "$LOG_DIR"

fail() {
  echo "python-sdk provisioning failed: $*" >&2
  echo "log: $LOG" >&2
  tail -n 30 "$LOG" >&2 2>/dev/null || true
  exit 1
}

command -v "$PYTHON" >/dev/null 2>&1 || fail "$PYTHON not found"
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 9) else 1)' \
  || fail "$PYTHON is $("$PYTHON" --version 2>&1), need >= 3.9"

# The stamp records what was installed; reinstall when pyproject.toml or the python changes.
STAMP="$VENV/.portcullis-sdk-stamp"
WANT="$(cat "$SDK/pyproject.toml" <("$PYTHON" --version 2>&1) | sha256sum | cut -d' ' -f1)"

if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]] \
  && "$VENV/bin/python" -c 'import portcullis_client, requests, httpx, pytest' >/dev/null 2>&1; then
  echo "SDK_PYTHON=$VENV/bin/python"
  exit 0
fi

{
  echo "=== $(date -u +%FT%TZ) provisioning $VENV"
  if [[ ! -x "$VENV/bin/python" ]]; then
    "$PYTHON" -m venv "$VENV"
  fi
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$SDK[requests,httpx,test]"
} >>"$LOG" 2>&1 || fail "venv or pip install failed"

"$VENV/bin/python" -c 'import portcullis_client, requests, httpx, pytest' >>"$LOG" 2>&1 \
  || fail "installed, but the packages do not import"
echo "$WANT" >"$STAMP"
echo "SDK_PYTHON=$VENV/bin/python"
