#!/usr/bin/env bash
# Provision a Keycloak server distribution for tests and local runs.
#
#   scripts/provision/keycloak.sh            # install if needed, then print the lines below
#
# stdout (and only stdout) carries machine-readable KEY=VALUE lines for callers:
#   KEYCLOAK_VERSION=26.7.3
#   KEYCLOAK_HOME=/…/.cache/keycloak/26.7.3
#   JAVA_HOME=/usr/lib/jvm/…          (a JDK whose major version is >= 21)
#   KEYCLOAK_PROVISION_LOG=/…/.cache/keycloak/provision.log
#
# What it does (idempotent; a second run only prints):
#   1. finds a JDK >= 21 (JAVA_HOME first if it qualifies, then /usr/lib/jvm/*, then
#      `update-alternatives --list java`); the machine default `java` may be 17.
#   2. if .cache/keycloak/<version>/.provisioned is missing: fetches
#      org.keycloak:keycloak-quarkus-dist:<version>:zip from Maven Central with
#      maven-dependency-plugin:copy, unzips it beside, and moves it into place atomically.
#
# Environment:
#   KEYCLOAK_VERSION   distribution version (default below; must be >= 26.2)
#   PORTCULLIS_CACHE   cache root (default: <repo>/.cache, git-ignored)
#   KEYCLOAK_JAVA_HOME force a JDK (must still be >= 21)
#
# Noise goes to .cache/keycloak/provision.log; on failure the log tail is shown on stderr.
set -euo pipefail

DEFAULT_KEYCLOAK_VERSION="26.7.3" # newest 26.x served by Maven Central when this was written
MIN_JAVA_MAJOR=21
MVN_DEP_PLUGIN="org.apache.maven.plugins:maven-dependency-plugin:3.8.1"

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/../.." && pwd)"
VERSION="${KEYCLOAK_VERSION:-$DEFAULT_KEYCLOAK_VERSION}"
CACHE_ROOT="${PORTCULLIS_CACHE:-$REPO_ROOT/.cache}"
KC_CACHE="$CACHE_ROOT/keycloak"
KC_HOME="$KC_CACHE/$VERSION"
LOG="$KC_CACHE/provision.log"

mkdir -p "$KC_CACHE"

INSTALLING=0
die() {
  echo "keycloak provisioning FAILED: $*" >&2
  if [[ "$INSTALLING" == 1 && -s "$LOG" ]]; then
    echo "---- last 40 lines of $LOG ----" >&2
    tail -n 40 "$LOG" >&2 || true
  fi
  exit 1
}

log() { printf '%s %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >>"$LOG"; }

# --- version sanity -----------------------------------------------------------------
if ! [[ "$VERSION" =~ ^26\.([0-9]+)\.[0-9]+$ ]] || (( BASH_REMATCH[1] < 2 )); then
  die "KEYCLOAK_VERSION=$VERSION: need a 26.x release at or above 26.2 (standard token exchange)"
fi

# --- JDK discovery ------------------------------------------------------------------
# Prints the major version of the given java binary, or nothing.
java_major() {
  local bin="$1" line ver
  [[ -x "$bin" ]] || return 0
  line="$("$bin" -version 2>&1 | grep -m1 -E 'version "' || true)"
  ver="${line#*version \"}"
  ver="${ver%%\"*}"
  [[ -n "$ver" ]] || return 0
  if [[ "$ver" == 1.* ]]; then ver="${ver#1.}"; fi # 1.8.0_x -> 8
  ver="${ver%%[.+-]*}"
  [[ "$ver" =~ ^[0-9]+$ ]] && echo "$ver"
  return 0
}

find_jdk() {
  local candidates=() c home major
  [[ -n "${KEYCLOAK_JAVA_HOME:-}" ]] && candidates+=("$KEYCLOAK_JAVA_HOME")
  [[ -n "${JAVA_HOME:-}" ]] && candidates+=("$JAVA_HOME")
  for c in /usr/lib/jvm/*; do [[ -d "$c" && ! -L "$c" ]] && candidates+=("$c"); done
  if command -v update-alternatives >/dev/null 2>&1; then
    while IFS= read -r c; do
      [[ -n "$c" ]] && candidates+=("$(dirname "$(dirname "$(readlink -f "$c")")")")
    done < <(update-alternatives --list java 2>/dev/null || true)
  fi
  if command -v java >/dev/null 2>&1; then
    candidates+=("$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")")
  fi
  for home in "${candidates[@]}"; do
    major="$(java_major "$home/bin/java")"
    if [[ -n "$major" ]] && (( major >= MIN_JAVA_MAJOR )); then
      echo "$home"
      return 0
    fi
  done
  return 1
}

JDK="$(find_jdk)" || die "no JDK >= $MIN_JAVA_MAJOR found (looked at \$KEYCLOAK_JAVA_HOME, \$JAVA_HOME, /usr/lib/jvm/*, update-alternatives, PATH). Install one, e.g. a Temurin 21+ JDK, or set KEYCLOAK_JAVA_HOME."
if [[ -n "${KEYCLOAK_JAVA_HOME:-}" && "$JDK" != "$KEYCLOAK_JAVA_HOME" ]]; then
  die "KEYCLOAK_JAVA_HOME=$KEYCLOAK_JAVA_HOME is not a JDK >= $MIN_JAVA_MAJOR"
fi

print_result() {
  echo "KEYCLOAK_VERSION=$VERSION"
  echo "KEYCLOAK_HOME=$KC_HOME"
  echo "JAVA_HOME=$JDK"
  echo "KEYCLOAK_PROVISION_LOG=$LOG"
}

if [[ -f "$KC_HOME/.provisioned" && -x "$KC_HOME/bin/kc.sh" ]]; then
  print_result
  exit 0
fi

# --- install (serialised: parallel test workers may all call this) -------------------
exec 9>"$KC_CACHE/.lock"
if command -v flock >/dev/null 2>&1; then
  flock -w 1800 9 || die "timed out waiting for the provisioning lock $KC_CACHE/.lock"
fi
if [[ -f "$KC_HOME/.provisioned" && -x "$KC_HOME/bin/kc.sh" ]]; then # installed while we waited
  print_result
  exit 0
fi

command -v mvn >/dev/null 2>&1 || die "mvn (Apache Maven) not found on PATH; install it (Debian: apt-get install maven)"

start_s=$(date +%s)
INSTALLING=1
[[ -f "$LOG" ]] && mv -f "$LOG" "$LOG.prev" # the log holds this install only
log "provisioning keycloak $VERSION into $KC_HOME (JDK $JDK)"
WORK="$(mktemp -d "$KC_CACHE/.work-$VERSION.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

ARTIFACT="org.keycloak:keycloak-quarkus-dist:$VERSION:zip"
log "mvn copy $ARTIFACT"
if ! mvn -B -q -Dstyle.color=never "$MVN_DEP_PLUGIN:copy" -Dartifact="$ARTIFACT" -DoutputDirectory="$WORK" \
  -Dmdep.overWriteReleases=true >>"$LOG" 2>&1; then
  die "could not fetch $ARTIFACT from Maven Central with mvn (network? version not published?)"
fi
ZIP="$WORK/keycloak-quarkus-dist-$VERSION.zip"
[[ -s "$ZIP" ]] || die "mvn finished but $ZIP is missing"

log "unzip $ZIP"
if command -v unzip >/dev/null 2>&1; then
  unzip -q "$ZIP" -d "$WORK/x" >>"$LOG" 2>&1 || die "unzip of $ZIP failed"
else
  python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$ZIP" "$WORK/x" \
    >>"$LOG" 2>&1 || die "no unzip and python3 extraction of $ZIP failed"
fi
SRC="$WORK/x/keycloak-$VERSION"
[[ -f "$SRC/bin/kc.sh" ]] || die "unexpected archive layout: $SRC/bin/kc.sh missing"
chmod +x "$SRC"/bin/*.sh
rm -f "$ZIP"

rm -rf "$KC_HOME"
mv "$SRC" "$KC_HOME"
echo "$VERSION $(date -u +%Y-%m-%dT%H:%M:%SZ) jdk=$JDK" >"$KC_HOME/.provisioned"
log "done in $(( $(date +%s) - start_s ))s"

print_result
