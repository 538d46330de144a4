#!/usr/bin/env bash
# Provision a real (standalone) Kubernetes API server for end-to-end tests:
#   - apiextensions-apiserver (k8s.io/apiextensions-apiserver, the CRD server),
#     built with `go install` into <repo>/.cache/bin
#   - etcd: Debian's etcd-server via apt when available, otherwise etcd 3.6 built
#     through a tiny wrapper module under <repo>/.cache/etcd-build
#
# Idempotent: a second run checks version stamps and exits in well under a second.
# Output is quiet; build output goes to <repo>/.cache/logs/kube-apiserver-provision.log.
# On success the last two lines on stdout are:
#   APIEXTENSIONS_APISERVER=<absolute path>
#   ETCD=<absolute path>
#
# Environment overrides:
#   APIEXTENSIONS_APISERVER_VERSION  default v0.36.6 (newest v0.36 patch on the Go proxy)
#   ETCD_SOURCE                      auto (default) | apt | build
#   ETCD_VERSION                     version built when ETCD_SOURCE resolves to build (default v3.6.8)
#   PORTCULLIS_CACHE_DIR             default <repo>/.cache
set -euo pipefail

APIEXT_VERSION="${APIEXTENSIONS_APISERVER_VERSION:-v0.36.6}"
ETCD_SOURCE="${ETCD_SOURCE:-auto}"
ETCD_BUILD_VERSION="${ETCD_VERSION:-v3.6.8}"

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/../.." && pwd)"
CACHE_DIR="${PORTCULLIS_CACHE_DIR:-$REPO_ROOT/.cache}"
BIN_DIR="$CACHE_DIR/bin"
LOG_DIR="$CACHE_DIR/logs"
LOG_FILE="$LOG_DIR/kube-apiserver-provision.log"

APIEXT_BIN="$BIN_DIR/apiextensions-apiserver"
APIEXT_STAMP="$BIN_DIR/.apiextensions-apiserver.version"
ETCD_LINK="$BIN_DIR/etcd"
ETCD_STAMP="$BIN_DIR/.etcd.source"

mkdir -p "$BIN_DIR" "$LOG_DIR"

die() {
  echo "kube-apiserver provisioning: ERROR: $*" >&2
  echo "kube-apiserver provisioning: see $LOG_FILE" >&2
  exit 1
}
info() { echo "kube-apiserver provisioning: $*" >&2; }
log() { echo "[$(date -u +%Y-%m-%dT%H:%M:%SZ)] $*" >>"$LOG_FILE"; }

# Serialise concurrent runs (several test files may provision at once).
exec 9>"$CACHE_DIR/.kube-apiserver-provision.lock"
if command -v flock >/dev/null 2>&1; then
  flock 9
fi

# ---------------------------------------------------------------- apiextensions-apiserver
ensure_apiextensions() {
  if [[ -x "$APIEXT_BIN" && -f "$APIEXT_STAMP" && "$(cat "$APIEXT_STAMP")" == "$APIEXT_VERSION" ]]; then
    return 0
  fi
  command -v go >/dev/null 2>&1 || die "go is not installed (needed to build apiextensions-apiserver)"
  info "building k8s.io/apiextensions-apiserver@$APIEXT_VERSION (first run only; several minutes on 2 cores)"
  log "go install k8s.io/apiextensions-apiserver@$APIEXT_VERSION"
  local start end
  start=$(date +%s)
  # GOTOOLCHAIN=auto lets the go command fetch a newer toolchain if the module needs one.
  if ! GOBIN="$BIN_DIR" GOTOOLCHAIN="${GOTOOLCHAIN:-auto}" GOFLAGS="${GOFLAGS:-} -trimpath" \
      go install "k8s.io/apiextensions-apiserver@$APIEXT_VERSION" >>"$LOG_FILE" 2>&1; then
    die "go install k8s.io/apiextensions-apiserver@$APIEXT_VERSION failed"
  fi
  end=$(date +%s)
  [[ -x "$APIEXT_BIN" ]] || die "go install succeeded but $APIEXT_BIN is missing"
  echo "$APIEXT_VERSION" >"$APIEXT_STAMP"
  log "apiextensions-apiserver $APIEXT_VERSION built in $((end - start))s"
  info "apiextensions-apiserver built in $((end - start))s"
}

# ---------------------------------------------------------------- etcd
etcd_from_apt() {
  # Already installed system-wide?
  if [[ -x /usr/bin/etcd ]]; then
    ln -sfn /usr/bin/etcd "$ETCD_LINK"
    echo "apt" >"$ETCD_STAMP"
    return 0
  fi
  command -v apt-get >/dev/null 2>&1 || return 1
  local candidate
  candidate="$(apt-cache policy etcd-server 2>/dev/null | awk '/Candidate:/ {print $2}')"
  if [[ -z "$candidate" || "$candidate" == "(none)" ]]; then
    log "apt: etcd-server has no candidate (apt-get update may be needed)"
    if [[ "$(id -u)" == "0" ]]; then
      apt-get update >>"$LOG_FILE" 2>&1 || true
      candidate="$(apt-cache policy etcd-server 2>/dev/null | awk '/Candidate:/ {print $2}')"
    fi
  fi
  [[ -n "$candidate" && "$candidate" != "(none)" ]] || return 1
  local sudo=""
  if [[ "$(id -u)" != "0" ]]; then
    command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null || return 1
    sudo="sudo -n"
  fi
  info "installing Debian etcd-server $candidate via apt"
  log "apt-get install etcd-server ($candidate)"
  # policy-rc.d-free containers: the package's service may fail to start; that is fine,
  # the tests start their own etcd. RUNLEVEL=1 keeps invoke-rc.d from starting it.
  if ! DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 $sudo apt-get install -y --no-install-recommends etcd-server >>"$LOG_FILE" 2>&1; then
    log "apt-get install etcd-server failed"
    return 1
  fi
  [[ -x /usr/bin/etcd ]] || return 1
  ln -sfn /usr/bin/etcd "$ETCD_LINK"
  echo "apt" >"$ETCD_STAMP"
}

etcd_build() {
  command -v go >/dev/null 2>&1 || die "go is not installed (needed to build etcd)"
  local dir="$CACHE_DIR/etcd-build"
  mkdir -p "$dir"
  info "building etcd $ETCD_BUILD_VERSION from source (first run only)"
  log "building etcd $ETCD_BUILD_VERSION in $dir"
  cat >"$dir/main.go" <<'GO'
// Wrapper so that the etcd server can be built with `go build` from the module proxy:
// the root module go.etcd.io/etcd/v3 uses replace directives and cannot be `go install`ed.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  rm -f "$dir/go.mod" "$dir/go.sum"
  local start end
  start=$(date +%s)
  (
    cd "$dir"
    export GOTOOLCHAIN="${GOTOOLCHAIN:-auto}" GOFLAGS="${GOFLAGS:-} -trimpath"
    go mod init portcullis.local/etcd-wrapper
    go get "go.etcd.io/etcd/server/v3@$ETCD_BUILD_VERSION"
    go mod tidy
    go build -o "$BIN_DIR/etcd-$ETCD_BUILD_VERSION" .
  ) >>"$LOG_FILE" 2>&1 || die "building etcd $ETCD_BUILD_VERSION failed"
  end=$(date +%s)
  ln -sfn "$BIN_DIR/etcd-$ETCD_BUILD_VERSION" "$ETCD_LINK"
  echo "build:$ETCD_BUILD_VERSION" >"$ETCD_STAMP"
  log "etcd $ETCD_BUILD_VERSION built in $((end - start))s"
  info "etcd built in $((end - start))s"
}

ensure_etcd() {
  local want
  case "$ETCD_SOURCE" in
    auto | apt) want="apt" ;;
    build) want="build:$ETCD_BUILD_VERSION" ;;
    *) die "ETCD_SOURCE must be auto, apt or build (got '$ETCD_SOURCE')" ;;
  esac
  if [[ -x "$ETCD_LINK" && -f "$ETCD_STAMP" ]]; then
    local have
    have="$(cat "$ETCD_STAMP")"
    if [[ "$have" == "$want" || ( "$ETCD_SOURCE" == "auto" && "$have" == build:* ) ]]; then
      return 0
    fi
  fi
  if [[ "$want" == "apt" ]]; then
    if etcd_from_apt; then
      return 0
    fi
    [[ "$ETCD_SOURCE" == "apt" ]] && die "could not install Debian etcd-server via apt"
    info "Debian etcd-server not available; falling back to building etcd"
  fi
  etcd_build
}

ensure_apiextensions
ensure_etcd

"$ETCD_LINK" --version >/dev/null 2>&1 || die "$ETCD_LINK does not run"

echo "APIEXTENSIONS_APISERVER=$APIEXT_BIN"
echo "ETCD=$(readlink -f "$ETCD_LINK")"
