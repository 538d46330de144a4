#!/usr/bin/env bash
# Installs h2spec (https://github.com/summerwind/h2spec), the HTTP/2 conformance
# tool that test/e2e/h2spec.test.ts runs against portcullis's own HTTP/2 layer
# (src/adapters/envoy/h2/connection.ts), with `go install` from the Go module
# proxy into .cache/bin/h2spec.
#
# Pinned to v2.2.1+incompatible: the newest version the module proxy this
# project reaches serves (later tags and branch queries answer 403). h2spec has
# no go.mod at that version, so its imports (golang.org/x/net/http2,
# spf13/cobra, fatih/color) resolve to their current versions at install time.
# `h2spec --version` of this build prints "2.0.0 ((Unknown))" (the version
# string is only set by h2spec's release builds).
#
# Idempotent; a second run only checks. Prints on success:
#   H2SPEC=/abs/path  H2SPEC_VERSION=v2.2.1+incompatible
# Build output goes to .cache/logs/provision-h2spec.log.
set -euo pipefail

H2SPEC_MODULE="github.com/summerwind/h2spec"
H2SPEC_VERSION="v2.2.1+incompatible"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cache_dir="${PORTCULLIS_CACHE_DIR:-$repo_root/.cache}"
bin_dir="$cache_dir/bin"
log_dir="$cache_dir/logs"
log="$log_dir/provision-h2spec.log"
mkdir -p "$bin_dir" "$log_dir"

fail() {
  echo "provision-h2spec: $*" >&2
  [[ -s "$log" ]] && tail -n 20 "$log" >&2
  exit 1
}

exec 9>"$cache_dir/.provision-h2spec.lock"
command -v flock >/dev/null 2>&1 && flock 9

h2spec_bin="$bin_dir/h2spec"
stamp="$bin_dir/.h2spec.stamp"
want="$H2SPEC_MODULE@$H2SPEC_VERSION"
if [[ ! -x "$h2spec_bin" || ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  go_bin="$(command -v go || true)"
  [[ -z "$go_bin" && -x /usr/local/go/bin/go ]] && go_bin=/usr/local/go/bin/go
  [[ -n "$go_bin" ]] || fail "go is needed to install h2spec (go install $want)"
  echo "== $(date -u +%FT%TZ) go install $want/cmd/h2spec" >>"$log"
  rm -f "$stamp"
  # Go needs a module and build cache; without HOME (some CI shells) they go under .cache/.
  if [[ -z "${HOME:-}" ]]; then
    export GOPATH="${GOPATH:-$cache_dir/go}" GOCACHE="${GOCACHE:-$cache_dir/go-build}"
  fi
  # GO111MODULE=on, GOFLAGS=-modcacherw: no go.mod or flags from the caller; a module cache that rm -rf can remove.
  GOBIN="$bin_dir" GO111MODULE=on GOFLAGS=-modcacherw nice -n 10 "$go_bin" install "$H2SPEC_MODULE/cmd/h2spec@$H2SPEC_VERSION" >>"$log" 2>&1 \
    || fail "go install $want/cmd/h2spec failed"
  [[ -x "$h2spec_bin" ]] || fail "go install succeeded but $h2spec_bin is missing"
  # The dependency versions that resolved (h2spec pins none at this version), for the record.
  "$go_bin" version -m "$h2spec_bin" >>"$log" 2>&1 || true
  echo "$want" >"$stamp"
fi
"$h2spec_bin" --dryrun generic >/dev/null 2>&1 || fail "$h2spec_bin does not run"

echo "H2SPEC=$h2spec_bin"
echo "H2SPEC_VERSION=$H2SPEC_VERSION"
exit 0
