#!/usr/bin/env bash
# docs/guide/01-quick-start.md, run for real: portcullis on its embedded default
# configuration on loopback ports 19191/19192/19901, a development token, decisions
# over HTTP ext_authz (allow, deny by role, deny without a token), the explain CLI
# and the recent-decisions endpoint; then it stops portcullis.
#
#   bash scripts/guide/quickstart.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
guide_ports_free 19191 19192 19901

if [[ "${GUIDE_SKIP_INSTALL:-}" != 1 ]]; then
  npm ci
  npm run build
fi

WORK=$(mktemp -d)
node bin/portcullis.js --grpc-addr 127.0.0.1:19191 --http-addr 127.0.0.1:19192 --admin-addr 127.0.0.1:19901 > "$WORK/quickstart.log" 2>&1 &
QUICKSTART_PID=$!
guide_track "$QUICKSTART_PID"

code=$(curl -s --retry 30 --retry-connrefused --retry-delay 1 -o /dev/null -w '%{http_code}\n' 127.0.0.1:19192/healthz)
[[ "$code" == 200 ]] || guide_fail "/healthz on the HTTP ext_authz port answered $code"
guide_ok "HTTP ext_authz port answers /healthz: $code"

grep 'portcullis ready' "$WORK/quickstart.log" > "$WORK/ready.txt"
guide_expect "$WORK/ready.txt" '"http":"127.0.0.1:19192"' 'ready log line'
guide_expect "$WORK/ready.txt" '"tokenEndpoint":"http://127.0.0.1:19901/dev/token"' 'ready log line'

curl -s 127.0.0.1:19901/readyz > "$WORK/readyz.txt"
guide_show "$WORK/readyz.txt"
guide_expect "$WORK/readyz.txt" '"status": "ready"' '/readyz'

TOKEN=$(curl -s -XPOST 127.0.0.1:19901/dev/token -d '{"sub":"alice","roles":["sandbox:invoke"]}' | node -p 'JSON.parse(require("fs").readFileSync(0)).access_token')
[[ "$TOKEN" == eyJ* ]] || guide_fail "no token from /dev/token: '$TOKEN'"
guide_ok "development token for alice"

# allowed: identity headers set, the spoofed x-user-sub replaced
curl -si -XPOST -H "authorization: Bearer $TOKEN" -H 'x-user-sub: mallory' 127.0.0.1:19192/v1/sandboxes/s1/invoke > "$WORK/allow.txt"
guide_show "$WORK/allow.txt"
guide_status "$WORK/allow.txt" 200
guide_expect "$WORK/allow.txt" '^x-user-sub: alice' 'allow'
guide_expect "$WORK/allow.txt" '^x-user-sandbox: s1' 'allow'
guide_expect "$WORK/allow.txt" '^x-portcullis-route: sandbox-invoke' 'allow'
guide_expect_not "$WORK/allow.txt" 'mallory' 'allow'

# denied by role
curl -si -H "authorization: Bearer $TOKEN" 127.0.0.1:19192/admin/settings > "$WORK/deny-role.txt"
guide_show "$WORK/deny-role.txt"
guide_status "$WORK/deny-role.txt" 403
guide_expect "$WORK/deny-role.txt" '^x-portcullis-reason: missing_role' 'deny by role'
guide_expect "$WORK/deny-role.txt" '"error":"missing_role"' 'deny by role'

# denied without a token: 401 with a challenge
curl -si -XPOST 127.0.0.1:19192/v1/sandboxes/s1/invoke > "$WORK/deny-none.txt"
guide_show "$WORK/deny-none.txt"
guide_status "$WORK/deny-none.txt" 401
guide_expect "$WORK/deny-none.txt" '^www-authenticate: Bearer realm="portcullis"' 'deny without token'
guide_expect "$WORK/deny-none.txt" '^x-portcullis-reason: missing_credentials' 'deny without token'

# explain: exit code 1 = deny
if node bin/portcullis.js explain --admin http://127.0.0.1:19901 -H "authorization: Bearer $TOKEN" http://router.example/admin/settings > "$WORK/explain.txt"; then
  guide_fail "explain exited 0 for a denied request"
fi
guide_show "$WORK/explain.txt"
guide_expect "$WORK/explain.txt" '^decision: DENY 403 missing_role' 'explain'
guide_expect "$WORK/explain.txt" '^denied by: roles' 'explain'
if grep -qF "$TOKEN" "$WORK/explain.txt"; then guide_fail "explain printed the token"; fi
guide_ok "explain does not print the token"

curl -s '127.0.0.1:19901/debug/decisions?decision=deny&limit=5' > "$WORK/decisions.txt"
guide_expect "$WORK/decisions.txt" '"reason": "missing_role"' '/debug/decisions'
guide_expect "$WORK/decisions.txt" '"sub": "dev/alice"' '/debug/decisions'

kill "$QUICKSTART_PID"
wait "$QUICKSTART_PID" || guide_fail "portcullis exited with status $? on SIGTERM"
guide_expect "$WORK/quickstart.log" '"msg":"stopped"' 'shutdown log'
