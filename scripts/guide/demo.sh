#!/usr/bin/env bash
# docs/guide/01-quick-start.md, second half, run for real: `npm run demo` with --once
# (portcullis on its embedded default configuration, Envoy with
# envoy/local/envoy-grpc.yaml, an echo upstream; one allowed and one denied request
# through Envoy, then everything stops). The demo uses fixed ports; when one of them
# is taken this script exits 75 without running it.
#
#   bash scripts/guide/demo.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

for port in 9191 9192 9901 10000 15000 8080; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "guide: demo skipped: port $port is in use (the demo needs 9191 9192 9901 10000 15000 8080)"
    trap - EXIT
    exit 75
  fi
done

WORK=$(mktemp -d)
if [[ "${GUIDE_SKIP_INSTALL:-}" != 1 ]]; then
  npm run demo -- --once
else
  node scripts/demo.mjs --once > "$WORK/demo.txt" 2>&1 || { cat "$WORK/demo.txt"; guide_fail "the demo failed"; }
  cat "$WORK/demo.txt"
  guide_expect "$WORK/demo.txt" 'self-check allowed: 200 \(upstream saw x-user-sub=alice\)' 'demo, allowed'
  guide_expect "$WORK/demo.txt" 'self-check denied: 403 \(reason=missing_role\)' 'demo, denied'
fi
