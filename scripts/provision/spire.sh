#!/usr/bin/env bash
# Installs SPIRE (spire-server, spire-agent) and spiffe-helper with `go install`
# from the Go module proxy (through small wrapper modules, see "building from the
# module proxy" below) into the git-ignored <repo>/.cache/bin, and creates the
# system users the end-to-end tests run their Envoys as (one uid per workload, so
# the SPIRE agent's unix workload attestor can tell them apart with `unix:uid:N`).
#
# Idempotent: version stamps next to the binaries make a second run a no-op that
# only checks and prints. Build output goes to <cache>/logs/provision-spire.log.
# On success stdout ends with:
#   SPIRE_SERVER_BIN=/abs/path    SPIRE_AGENT_BIN=/abs/path    SPIFFE_HELPER_BIN=/abs/path
#   SPIRE_VERSION=1.15.3          SPIFFE_HELPER_VERSION=0.11.0   (what the binaries print)
#   SPIRE_USERS=portcullis-router:UID:GID,...   (empty when not run as root)
#
# Environment:
#   PORTCULLIS_CACHE_DIR   cache folder (default: <repo>/.cache)
#   SPIRE_VERSION          module version of github.com/spiffe/spire (default: v1.15.3)
#   SPIFFE_HELPER_VERSION  module version of github.com/spiffe/spiffe-helper (default: v0.11.0)
#   SPIRE_SKIP_USERS=1     do not create the workload users
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cache_dir="${PORTCULLIS_CACHE_DIR:-$repo_root/.cache}"
bin_dir="$cache_dir/bin"
log_dir="$cache_dir/logs"
log="$log_dir/provision-spire.log"
spire_version="${SPIRE_VERSION:-v1.15.3}"
helper_version="${SPIFFE_HELPER_VERSION:-v0.11.0}"

# One user per workload the tests run; the names are what docs/spire.md refers to.
workload_users=(portcullis-router portcullis-workloadmanager portcullis-picod portcullis-intruder portcullis-authz)

mkdir -p "$bin_dir" "$log_dir"

fail() {
  echo "provision-spire: $*" >&2
  if [[ -s "$log" ]]; then
    echo "provision-spire: last lines of $log:" >&2
    tail -n 20 "$log" >&2 || true
  fi
  exit 1
}
say() { echo "provision-spire: $*" >&2; }
logline() { echo "== $(date -u +%FT%TZ) $*" >>"$log"; }

# Serialise concurrent runs (parallel test workers) on one lock file.
exec 9>"$cache_dir/.provision-spire.lock"
if command -v flock >/dev/null 2>&1; then
  flock 9
fi

stamp_ok() { # stamp_file wanted binaries...
  local stamp="$1" wanted="$2"
  shift 2
  [[ -f "$stamp" && "$(cat "$stamp")" == "$wanted" ]] || return 1
  local b
  for b in "$@"; do [[ -x "$bin_dir/$b" ]] || return 1; done
}

# --- building from the module proxy ------------------------------------------------
# A plain `go install github.com/spiffe/spire/cmd/spire-server@VERSION` does not work
# against the module proxy reachable here:
#   1. `go install pkg@version` looks up the module's deprecation notice through its
#      version list (/@v/list), which the proxy refuses for github.com/spiffe/spire
#      and github.com/spiffe/spiffe-helper;
#   2. the proxy refuses the source zip of github.com/Keyfactor/ejbca-go-client-sdk
#      (needed only by SPIRE's EJBCA UpstreamAuthority plugin).
# So each tool is built from a small wrapper module that requires only the tool's
# module at the pinned version (so the dependency versions are the tool's own) and
# `go install`s its commands from there. For SPIRE the wrapper also replaces that one
# SDK with a stub of the same API whose calls fail ("not available in this build").
# Nothing else changes; the binaries report the upstream version.
spire_build_dir="$cache_dir/spire-build"

write_ejbca_stub() {
  local dir="$spire_build_dir/stubs/ejbca-go-client-sdk"
  mkdir -p "$dir/api/ejbca"
  cat >"$dir/go.mod" <<'GOMOD'
module github.com/Keyfactor/ejbca-go-client-sdk

go 1.23.0
GOMOD
  cat >"$dir/api/ejbca/stub.go" <<'GO'
// Package ejbca is a stand-in for github.com/Keyfactor/ejbca-go-client-sdk/api/ejbca,
// whose source the module proxy available to portcullis's build does not serve.
// It has the API surface SPIRE's EJBCA UpstreamAuthority plugin compiles against;
// every call that would reach EJBCA fails, so configuring that plugin fails clearly.
package ejbca

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/http"
)

var errUnavailable = errors.New("the EJBCA client is not available in this SPIRE build (portcullis provisioning stub)")

type Authenticator interface {
	GetHTTPClient() (*http.Client, error)
}

type MTLSAuthenticatorBuilder struct{}

func NewMTLSAuthenticatorBuilder() *MTLSAuthenticatorBuilder { return &MTLSAuthenticatorBuilder{} }

func (b *MTLSAuthenticatorBuilder) WithClientCertificate(*tls.Certificate) *MTLSAuthenticatorBuilder {
	return b
}

func (b *MTLSAuthenticatorBuilder) WithCaCertificates([]*x509.Certificate) *MTLSAuthenticatorBuilder {
	return b
}

func (b *MTLSAuthenticatorBuilder) Build() (Authenticator, error) { return nil, errUnavailable }

type Configuration struct {
	Host string
}

func NewConfiguration() *Configuration { return &Configuration{} }

func (c *Configuration) SetAuthenticator(Authenticator) {}

type APIClient struct {
	V1CertificateApi *V1CertificateApiService
}

func NewAPIClient(*Configuration) (*APIClient, error) { return nil, errUnavailable }

type V1CertificateApiService struct{}

func (s *V1CertificateApiService) EnrollPkcs10Certificate(ctx context.Context) ApiEnrollPkcs10CertificateRequest {
	return ApiEnrollPkcs10CertificateRequest{}
}

type ApiEnrollPkcs10CertificateRequest struct{}

func (r ApiEnrollPkcs10CertificateRequest) EnrollCertificateRestRequest(EnrollCertificateRestRequest) ApiEnrollPkcs10CertificateRequest {
	return r
}

func (r ApiEnrollPkcs10CertificateRequest) Execute() (*CertificateRestResponse, *http.Response, error) {
	return nil, nil, errUnavailable
}

type EnrollCertificateRestRequest struct{}

func NewEnrollCertificateRestRequest() *EnrollCertificateRestRequest { return &EnrollCertificateRestRequest{} }

func (r *EnrollCertificateRestRequest) SetUsername(string)               {}
func (r *EnrollCertificateRestRequest) SetPassword(string)               {}
func (r *EnrollCertificateRestRequest) SetCertificateRequest(string)     {}
func (r *EnrollCertificateRestRequest) SetCertificateAuthorityName(string) {}
func (r *EnrollCertificateRestRequest) SetCertificateProfileName(string) {}
func (r *EnrollCertificateRestRequest) SetEndEntityProfileName(string)   {}
func (r *EnrollCertificateRestRequest) SetIncludeChain(bool)             {}
func (r *EnrollCertificateRestRequest) SetAccountBindingId(string)       {}

type CertificateRestResponse struct {
	CertificateChain []string
}

func (r *CertificateRestResponse) GetResponseFormat() string { return "" }
func (r *CertificateRestResponse) GetCertificate() string    { return "" }

type GenericOpenAPIError struct{}

func (e *GenericOpenAPIError) Error() string { return errUnavailable.Error() }
func (e *GenericOpenAPIError) Body() []byte  { return nil }
GO
}

wrapper_build() { # what, build dir, module@version, packages... (replace edits via $wrapper_replaces)
  local what="$1" dir="$2" modver="$3"
  shift 3
  command -v go >/dev/null 2>&1 || fail "go is not installed (needed to build $what)"
  local start end pkgs=() p r
  for p in "$@"; do pkgs+=("$p@${modver#*@}"); done
  start=$(date +%s)
  logline "building $what in $dir"
  (
    cd "$dir"
    # GOTOOLCHAIN=auto fetches the toolchain named by the module's go line from the
    # proxy when the local Go is older. CGO: spire-server's sqlite datastore (gcc).
    export CGO_ENABLED=1 GOBIN="$bin_dir" GOTOOLCHAIN="${GOTOOLCHAIN:-auto}" GOFLAGS="${GOFLAGS:-} -trimpath"
    # (set -e does not apply inside a subshell tested with ||: chain explicitly.)
    rm -f go.mod go.sum &&
      go mod init "portcullis.local/$(basename "$dir")" &&
      for r in ${wrapper_replaces:-}; do go mod edit "-replace=$r" || exit 1; done &&
      go get "${pkgs[@]}" &&
      nice -n 10 go install ${wrapper_ldflags:+"-ldflags=$wrapper_ldflags"} "$@"
  ) >>"$log" 2>&1 || fail "building $what failed (does $modver exist on the Go module proxy? is gcc installed?)"
  end=$(date +%s)
  logline "$what built in $((end - start))s"
  say "$what built in $((end - start))s"
}

build_spire() {
  command -v gcc >/dev/null 2>&1 || fail "gcc is not installed (spire-server's sqlite datastore needs cgo)"
  rm -rf "$spire_build_dir"
  mkdir -p "$spire_build_dir"
  write_ejbca_stub
  # The version string SPIRE's own release build stamps in (its Makefile: tag without "v").
  wrapper_ldflags="-s -w -X github.com/spiffe/spire/pkg/common/version.gittag=${spire_version#v}" \
  wrapper_replaces="github.com/Keyfactor/ejbca-go-client-sdk=./stubs/ejbca-go-client-sdk" \
    wrapper_build "SPIRE $spire_version" "$spire_build_dir" "github.com/spiffe/spire@$spire_version" \
    github.com/spiffe/spire/cmd/spire-server github.com/spiffe/spire/cmd/spire-agent
}

build_spiffe_helper() {
  local dir="$cache_dir/spiffe-helper-build"
  rm -rf "$dir"
  mkdir -p "$dir"
  wrapper_ldflags="-s -w -X github.com/spiffe/spiffe-helper/pkg/version.gittag=${helper_version#v}" \
    wrapper_build "spiffe-helper $helper_version" "$dir" "github.com/spiffe/spiffe-helper@$helper_version" \
    github.com/spiffe/spiffe-helper/cmd/spiffe-helper
}

spire_stamp="$bin_dir/.spire.version"
if ! stamp_ok "$spire_stamp" "$spire_version" spire-server spire-agent; then
  say "building SPIRE $spire_version (first run only; 10-35 minutes on 2 cores)"
  build_spire
  echo "$spire_version" >"$spire_stamp"
fi

# --- spiffe-helper -----------------------------------------------------------------
helper_stamp="$bin_dir/.spiffe-helper.version"
if ! stamp_ok "$helper_stamp" "$helper_version" spiffe-helper; then
  say "building spiffe-helper $helper_version"
  build_spiffe_helper
  echo "$helper_version" >"$helper_stamp"
fi

# `spire-server --version` prints e.g. "1.15.3" (on stderr).
server_version="$("$bin_dir/spire-server" --version 2>&1 | head -n1 || true)"
agent_version="$("$bin_dir/spire-agent" --version 2>&1 | head -n1 || true)"
[[ -n "$server_version" ]] || fail "'$bin_dir/spire-server --version' printed nothing"
[[ "$server_version" == "$agent_version" ]] \
  || fail "spire-server ($server_version) and spire-agent ($agent_version) differ"

users_out=""
if [[ "${SPIRE_SKIP_USERS:-0}" != "1" ]]; then
  if [[ "$(id -u)" == "0" ]]; then
    for u in "${workload_users[@]}"; do
      if ! id -u "$u" >/dev/null 2>&1; then
        logline "useradd $u"
        useradd --system --no-create-home --shell /usr/sbin/nologin "$u" >>"$log" 2>&1 \
          || fail "useradd $u failed"
      fi
      users_out+="${users_out:+,}$u:$(id -u "$u"):$(id -g "$u")"
    done
  else
    say "not root: workload users not created (end-to-end SPIRE tests will be skipped)"
  fi
fi

echo "SPIRE_SERVER_BIN=$bin_dir/spire-server"
echo "SPIRE_AGENT_BIN=$bin_dir/spire-agent"
echo "SPIFFE_HELPER_BIN=$bin_dir/spiffe-helper"
echo "SPIRE_VERSION=$server_version"
echo "SPIFFE_HELPER_VERSION=$("$bin_dir/spiffe-helper" -version 2>&1 | head -n1)"
echo "SPIRE_USERS=$users_out"
