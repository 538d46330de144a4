#!/usr/bin/env bash
# Installs what `npm run bench` needs besides Envoy (scripts/provision/envoy.sh):
#   - wrk and h2load from Debian (packages wrk, nghttp2-client) via apt-get;
#     bench/load.ts drives every set-up with wrk (its Lua hook gives each request
#     its own Authorization header, which the all-different-tokens workload needs
#     and h2load cannot do); h2load is installed for ad-hoc HTTP/2 runs.
#   - the OPA ext_authz server of set-up 5, built with `go build` from
#     bench/opa-envoy/ (OPA v1 as a library + Envoy's go-control-plane protos,
#     from the Go module proxy) into .cache/bin/opa-envoy-bench. The upstream
#     opa-envoy-plugin module itself is refused by the module proxy this project
#     can reach (HTTP 403), so bench/opa-envoy/main.go re-creates its Check path;
#     see docs/benchmarks.md.
#   (ghz, a Go gRPC load generator, is not needed: every set-up is driven through
#   Envoy, and the gRPC transport floor is measured through Envoy too.)
#
# Idempotent; a second run only checks. Prints on success:
#   WRK=/usr/bin/wrk  WRK_VERSION=...  H2LOAD=...  OPA_ENVOY=/abs/path  OPA_VERSION=v1.x.y
# Build output goes to .cache/logs/provision-bench-tools.log.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cache_dir="${PORTCULLIS_CACHE_DIR:-$repo_root/.cache}"
bin_dir="$cache_dir/bin"
log_dir="$cache_dir/logs"
log="$log_dir/provision-bench-tools.log"
mkdir -p "$bin_dir" "$log_dir"

fail() {
  echo "provision-bench-tools: $*" >&2
  [[ -s "$log" ]] && tail -n 20 "$log" >&2
  exit 1
}

exec 9>"$cache_dir/.provision-bench-tools.lock"
command -v flock >/dev/null 2>&1 && flock 9

# --- wrk, h2load (Debian) ------------------------------------------------------
if ! command -v wrk >/dev/null 2>&1 || ! command -v h2load >/dev/null 2>&1; then
  command -v apt-get >/dev/null 2>&1 || fail "wrk/h2load missing and no apt-get: install Debian packages wrk and nghttp2-client"
  sudo_cmd=()
  [[ "$(id -u)" -ne 0 ]] && sudo_cmd=(sudo)
  echo "== $(date -u +%FT%TZ) apt-get install wrk nghttp2-client" >>"$log"
  "${sudo_cmd[@]}" apt-get update >>"$log" 2>&1 || fail "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y --no-install-recommends wrk nghttp2-client >>"$log" 2>&1 \
    || fail "apt-get install wrk nghttp2-client failed"
fi
wrk_bin="$(command -v wrk)"
wrk_version="$("$wrk_bin" -v 2>&1 | head -n1 | sed -E 's/ Copyright.*//' || true)"
h2load_bin="$(command -v h2load)"

# --- OPA ext_authz server (bench/opa-envoy) --------------------------------------
src="$repo_root/bench/opa-envoy"
opa_bin="$bin_dir/opa-envoy-bench"
stamp="$bin_dir/.opa-envoy-bench.stamp"
want="$(cat "$src/go.mod" "$src/go.sum" "$src/main.go" | sha256sum | cut -c1-16)"
if [[ ! -x "$opa_bin" || ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  command -v go >/dev/null 2>&1 || fail "go is needed to build bench/opa-envoy (OPA as a library)"
  echo "provision-bench-tools: building the OPA ext_authz server (first run: several minutes on 2 cores)" >&2
  echo "== $(date -u +%FT%TZ) go build bench/opa-envoy" >>"$log"
  (cd "$src" && GOFLAGS=-mod=mod nice -n 10 go build -o "$opa_bin" .) >>"$log" 2>&1 || fail "go build of bench/opa-envoy failed"
  echo "$want" >"$stamp"
fi
opa_version="$(sed -nE 's#^[[:space:]]*github.com/open-policy-agent/opa (v[^ ]+).*#\1#p' "$src/go.mod" | head -n1)"

echo "WRK=$wrk_bin"
echo "WRK_VERSION=$wrk_version"
echo "H2LOAD=$h2load_bin"
echo "OPA_ENVOY=$opa_bin"
echo "OPA_VERSION=$opa_version"
exit 0
