#!/usr/bin/env bash
# Installs Debian's Chromium for the debug-page browser test (driven by
# playwright-core, which brings no browser of its own). Idempotent: a machine
# that has it already does nothing. Prints CHROMIUM_BIN=<path>.
set -euo pipefail
bin="$(command -v chromium || true)"
if [ -z "$bin" ]; then
  root="$(cd "$(dirname "$0")/../.." && pwd)"
  mkdir -p "$root/.cache/logs"
  log="$root/.cache/logs/chromium-provision.log"
  if [ "$(id -u)" != 0 ]; then
    echo "chromium is not installed and this user cannot apt-get install it (needs root)" >&2
    exit 1
  fi
  { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; } >"$log" 2>&1 || {
    echo "apt-get install chromium failed; see $log" >&2
    tail -20 "$log" >&2
    exit 1
  }
  bin="$(command -v chromium)"
fi
echo "CHROMIUM_BIN=$bin"
"$bin" --version 2>/dev/null || true
