# Shared by scripts/guide/*.sh (sourced, not run). Each of those scripts runs the
# commands of one chapter of the user guide (docs/guide/) exactly as printed there,
# checks what they answer, and stops what it started. test/unit/guide.test.ts checks
# that every command in the guide appears in one of these scripts (or in package.json,
# scripts/provision/, .ci/run or a test); test/e2e/guide-quickstart.test.ts runs them.
#
# Environment:
#   GUIDE_SKIP_INSTALL=1  skip `npm ci` / `npm run build` (the tests set it: `npm test`
#                         has built already, and parallel test files must not rewrite dist/)
#   GUIDE_KEEP=1          keep the scratch directory ($WORK) with the logs
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

GUIDE_NAME="$(basename "$0" .sh)"
GUIDE_PIDS=()
WORK=""

guide_cleanup() {
  local status=$?
  local pid
  for pid in "${GUIDE_PIDS[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
  done
  if [[ $status -ne 0 && -n "$WORK" && -d "$WORK" ]]; then
    local f
    for f in "$WORK"/*.log; do
      [[ -f "$f" ]] || continue
      echo "----- last lines of $f" >&2
      tail -n 20 "$f" >&2 || true
    done
  fi
  if [[ -n "$WORK" && -d "$WORK" && "${GUIDE_KEEP:-}" != 1 ]]; then rm -rf "$WORK"; fi
  if [[ $status -eq 0 ]]; then echo "guide: $GUIDE_NAME passed"; else echo "guide: $GUIDE_NAME FAILED (exit $status)" >&2; fi
}
trap guide_cleanup EXIT

# Remember a background process so that it is stopped when the script ends.
guide_track() { GUIDE_PIDS+=("$1"); }

guide_fail() {
  echo "guide: FAIL: $*" >&2
  exit 1
}

guide_ok() { echo "guide: ok: $*"; }

# The loopback ports the chapter uses must be free (e.g. not held by an earlier run).
guide_ports_free() {
  local port
  for port in "$@"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      guide_fail "port $port on 127.0.0.1 is in use; the guide's commands need it (stop what listens there)"
    fi
  done
}

# guide_expect FILE PATTERN [WHAT]: FILE has a line matching the extended regex PATTERN.
guide_expect() {
  grep -Eq -- "$2" "$1" || { echo "----- $1:" >&2; cat "$1" >&2; guide_fail "${3:-$1} does not match /$2/"; }
  guide_ok "${3:-$1} matches /$2/"
}

# guide_expect_not FILE PATTERN [WHAT]
guide_expect_not() {
  if grep -Eq -- "$2" "$1"; then echo "----- $1:" >&2; cat "$1" >&2; guide_fail "${3:-$1} matches /$2/"; fi
  guide_ok "${3:-$1} does not match /$2/"
}

# guide_status FILE CODE: the `curl -si` answer in FILE has status CODE.
guide_status() {
  local got
  got="$(head -n 1 "$1" | tr -d '\r')"
  [[ "$got" =~ ^HTTP/[0-9.]+\ $2 ]] || { echo "----- $1:" >&2; cat "$1" >&2; guide_fail "$1: expected status $2, got '$got'"; }
  guide_ok "$(basename "$1" .txt): $got"
}

# guide_wait_log FILE PATTERN SECONDS: wait until FILE has a line matching PATTERN.
guide_wait_log() {
  local i
  for i in $(seq $(($3 * 10))); do
    grep -Eq -- "$2" "$1" 2>/dev/null && { guide_ok "log line /$2/ seen"; return 0; }
    sleep 0.1
  done
  guide_fail "no line matching /$2/ in $1 after $3 s"
}

# guide_show FILE: print a captured answer, indented, so the test log shows what the reader sees.
guide_show() { sed 's/^/    /' "$1"; [[ -z "$(tail -c 1 "$1")" ]] || echo; }
