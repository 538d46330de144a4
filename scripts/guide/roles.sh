#!/usr/bin/env bash
# docs/guide/06-roles.md, run for real: realm roles and client roles (roleClaims),
# inheritance, anyOf / allOf, and a new role requirement rolled out in shadow mode
# and then enforced by editing the file (portcullis reloads it). Configuration:
# docs/guide/examples/roles.yaml; tokens from the quick-start instance's
# development issuer.
#
#   bash scripts/guide/roles.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
guide_ports_free 19191 19192 19901 19291 19292 19902

WORK=$(mktemp -d)
node bin/portcullis.js --grpc-addr 127.0.0.1:19191 --http-addr 127.0.0.1:19192 --admin-addr 127.0.0.1:19901 > "$WORK/quickstart.log" 2>&1 &
QUICKSTART_PID=$!
guide_track "$QUICKSTART_PID"
curl -s --retry 30 --retry-connrefused --retry-delay 1 127.0.0.1:19901/readyz > /dev/null

cp docs/guide/examples/roles.yaml "$WORK/roles.yaml"
node bin/portcullis.js --config "$WORK/roles.yaml" > "$WORK/roles.log" 2>&1 &
ROLES_PID=$!
guide_track "$ROLES_PID"
curl -s --retry 30 --retry-connrefused --retry-delay 1 -o /dev/null 127.0.0.1:19292/healthz
curl -s --retry 30 --retry-connrefused --retry-delay 1 127.0.0.1:19902/readyz > "$WORK/readyz.txt"
guide_expect "$WORK/readyz.txt" '"status": "ready"' '/readyz'

# Tokens shaped like Keycloak's: realm roles, client roles of agentcube-router, and
# client roles of another client (which portcullis does not read).
CAROL=$(curl -s -XPOST 127.0.0.1:19901/dev/token -d '{"sub":"carol","aud":"agentcube-router","roles":["admin"]}' | node -p 'JSON.parse(require("fs").readFileSync(0)).access_token')
BOB=$(curl -s -XPOST 127.0.0.1:19901/dev/token -d '{"sub":"bob","aud":"agentcube-router","claims":{"resource_access":{"agentcube-router":{"roles":["sandbox:manage"]}}}}' | node -p 'JSON.parse(require("fs").readFileSync(0)).access_token')
DAVE=$(curl -s -XPOST 127.0.0.1:19901/dev/token -d '{"sub":"dave","aud":"agentcube-router","claims":{"resource_access":{"billing":{"roles":["sandbox:invoke"]}}}}' | node -p 'JSON.parse(require("fs").readFileSync(0)).access_token')
ERIN=$(curl -s -XPOST 127.0.0.1:19901/dev/token -d '{"sub":"erin","aud":"agentcube-router","roles":["admin","auditor"]}' | node -p 'JSON.parse(require("fs").readFileSync(0)).access_token')
ALICE=$(curl -s -XPOST 127.0.0.1:19901/dev/token -d '{"sub":"alice","aud":"agentcube-router","roles":["sandbox:invoke"]}' | node -p 'JSON.parse(require("fs").readFileSync(0)).access_token')

# Inheritance: carol holds admin, which includes sandbox:manage, which includes sandbox:invoke.
curl -si -XPOST -H "authorization: Bearer $CAROL" 127.0.0.1:19292/v1/sandboxes/s1/invoke > "$WORK/carol-invoke.txt"
guide_show "$WORK/carol-invoke.txt"
guide_status "$WORK/carol-invoke.txt" 200
guide_expect "$WORK/carol-invoke.txt" '^x-portcullis-roles: admin' 'roles as the token has them'
guide_expect "$WORK/carol-invoke.txt" '^x-user-effective-roles: admin,sandbox:invoke,sandbox:manage' 'roles after inheritance'

# A client role of the audience counts like a realm role.
curl -si -XPOST -H "authorization: Bearer $BOB" 127.0.0.1:19292/v1/sandboxes/s1/invoke > "$WORK/bob-invoke.txt"
guide_status "$WORK/bob-invoke.txt" 200
guide_expect "$WORK/bob-invoke.txt" '^x-user-effective-roles: sandbox:invoke,sandbox:manage' 'client role of agentcube-router'

# A client role of another client does not.
curl -si -XPOST -H "authorization: Bearer $DAVE" 127.0.0.1:19292/v1/sandboxes/s1/invoke > "$WORK/dave-invoke.txt"
guide_show "$WORK/dave-invoke.txt"
guide_status "$WORK/dave-invoke.txt" 403
guide_expect "$WORK/dave-invoke.txt" '^x-portcullis-reason: missing_role' 'client role of another client'

# allOf: admin alone is not enough.
curl -si -H "authorization: Bearer $CAROL" 127.0.0.1:19292/v1/audit/export > "$WORK/carol-audit.txt"
guide_show "$WORK/carol-audit.txt"
guide_status "$WORK/carol-audit.txt" 403
guide_expect "$WORK/carol-audit.txt" 'requires all of the roles: admin, auditor' 'allOf'
curl -si -H "authorization: Bearer $ERIN" 127.0.0.1:19292/v1/audit/export > "$WORK/erin-audit.txt"
guide_status "$WORK/erin-audit.txt" 200

# Shadow mode: alice lacks sandbox:manage, is allowed, and is counted.
curl -si -H "authorization: Bearer $ALICE" 127.0.0.1:19292/v1/sandboxes > "$WORK/alice-list-shadow.txt"
guide_status "$WORK/alice-list-shadow.txt" 200
curl -si -H "authorization: Bearer $BOB" 127.0.0.1:19292/v1/sandboxes > "$WORK/bob-list-shadow.txt"
guide_status "$WORK/bob-list-shadow.txt" 200

curl -s 127.0.0.1:19902/metrics | grep portcullis_shadow_would_deny_total > "$WORK/shadow-metric.txt"
guide_show "$WORK/shadow-metric.txt"
guide_expect "$WORK/shadow-metric.txt" '^portcullis_shadow_would_deny_total\{route="sandbox-list",requirement="roles",reason="missing_role"\} 1$' 'shadow metric'

guide_wait_log "$WORK/roles.log" '"would_deny"' 10
grep '"would_deny"' "$WORK/roles.log" > "$WORK/shadow-log.txt"
guide_show "$WORK/shadow-log.txt"
guide_expect "$WORK/shadow-log.txt" '"route":"sandbox-list","decision":"allow".*"sub":"agentcube/alice".*"would_deny":\["roles:missing_role"\]' 'shadow log line'

curl -s '127.0.0.1:19902/debug/decisions?route=sandbox-list' > "$WORK/shadow-decisions.txt"
guide_expect "$WORK/shadow-decisions.txt" '"roles:missing_role"' '/debug/decisions'

if node bin/portcullis.js explain --admin http://127.0.0.1:19902 -H "authorization: Bearer $ALICE" http://router.example/v1/sandboxes > "$WORK/explain-shadow.txt"; then
  guide_ok "explain: allowed (exit 0)"
else
  guide_fail "explain of a shadow-mode allow exited non-zero"
fi
guide_show "$WORK/explain-shadow.txt"
guide_expect "$WORK/explain-shadow.txt" '^decision: ALLOW' 'explain in shadow mode'
guide_expect "$WORK/explain-shadow.txt" '^shadow: +would deny: roles → 403 missing_role' 'explain in shadow mode'

# Enforce: remove the shadow marking; portcullis sees the file change and reloads.
sed -i '/shadow: \[roles\]/d' "$WORK/roles.yaml"
guide_wait_log "$WORK/roles.log" '"msg":"configuration reloaded"' 10
curl -si -H "authorization: Bearer $ALICE" 127.0.0.1:19292/v1/sandboxes > "$WORK/alice-list-enforced.txt"
guide_show "$WORK/alice-list-enforced.txt"
guide_status "$WORK/alice-list-enforced.txt" 403
guide_expect "$WORK/alice-list-enforced.txt" '^x-portcullis-reason: missing_role' 'enforced'
curl -si -H "authorization: Bearer $BOB" 127.0.0.1:19292/v1/sandboxes > "$WORK/bob-list-enforced.txt"
guide_status "$WORK/bob-list-enforced.txt" 200

kill "$ROLES_PID" "$QUICKSTART_PID"
