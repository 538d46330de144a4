#!/usr/bin/env bash
# docs/guide/04-keycloak-and-tenants.md, run for real: the --keycloak-* flags checked
# with `portcullis validate`, then one portcullis serving two tenants
# (docs/guide/examples/tenants.yaml) whose issuers are the development issuers of two
# more portcullis instances: issuer-qualified identities and routes[].issuers.
#
#   bash scripts/guide/tenants.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
guide_ports_free 19191 19192 19901 19903 19291 19292 19902

WORK=$(mktemp -d)

# The routes name issuer tenant-b; without the flags that is an error.
if node bin/portcullis.js validate docs/guide/examples/keycloak-routes.yaml > "$WORK/validate-noflags.txt"; then
  guide_fail "validate accepted routes naming an issuer that is not configured"
fi
guide_show "$WORK/validate-noflags.txt"
guide_expect "$WORK/validate-noflags.txt" 'routes\[2\]\.issuers\[0\]: unknown issuer "tenant-b"' 'validate without flags'

node bin/portcullis.js validate docs/guide/examples/keycloak-routes.yaml --keycloak-url https://keycloak.example --keycloak-realm agentcube --keycloak-realm tenant-b --keycloak-audience agentcube-router > "$WORK/validate-flags.txt"
guide_expect "$WORK/validate-flags.txt" 'ok \(3 routes, 2 issuers\)' 'validate with --keycloak-* flags'

# The written-out realms with token exchange (secrets from the environment at start).
node bin/portcullis.js validate docs/guide/examples/keycloak.yaml > "$WORK/validate-keycloak.txt"
guide_expect "$WORK/validate-keycloak.txt" 'ok \(2 routes, 2 issuers\)' 'validate keycloak.yaml'

# Two identity providers (stand-ins for two realms) and the portcullis that trusts both.
node bin/portcullis.js --grpc-addr 127.0.0.1:19191 --http-addr 127.0.0.1:19192 --admin-addr 127.0.0.1:19901 > "$WORK/quickstart.log" 2>&1 &
QUICKSTART_PID=$!
guide_track "$QUICKSTART_PID"
node bin/portcullis.js --grpc-addr 127.0.0.1:0 --http-addr off --admin-addr 127.0.0.1:19903 > "$WORK/tenant-b-idp.log" 2>&1 &
TENANT_B_IDP_PID=$!
guide_track "$TENANT_B_IDP_PID"
curl -s --retry 30 --retry-connrefused --retry-delay 1 127.0.0.1:19901/readyz > /dev/null
curl -s --retry 30 --retry-connrefused --retry-delay 1 127.0.0.1:19903/readyz > /dev/null

node bin/portcullis.js --config docs/guide/examples/tenants.yaml > "$WORK/tenants.log" 2>&1 &
TENANTS_PID=$!
guide_track "$TENANTS_PID"
curl -s --retry 30 --retry-connrefused --retry-delay 1 -o /dev/null 127.0.0.1:19292/healthz
curl -s --retry 30 --retry-connrefused --retry-delay 1 127.0.0.1:19902/readyz > "$WORK/tenants-readyz.txt"
guide_show "$WORK/tenants-readyz.txt"
guide_expect "$WORK/tenants-readyz.txt" '"status": "ready"' 'readiness with both issuers'

ALICE_A=$(curl -s -XPOST 127.0.0.1:19901/dev/token -d '{"sub":"alice","roles":["sandbox:invoke"]}' | node -p 'JSON.parse(require("fs").readFileSync(0)).access_token')
ALICE_B=$(curl -s -XPOST 127.0.0.1:19903/dev/token -d '{"sub":"alice","roles":["sandbox:invoke"]}' | node -p 'JSON.parse(require("fs").readFileSync(0)).access_token')
CAROL_B=$(curl -s -XPOST 127.0.0.1:19903/dev/token -d '{"sub":"carol","roles":["admin"]}' | node -p 'JSON.parse(require("fs").readFileSync(0)).access_token')

curl -si -XPOST -H "authorization: Bearer $ALICE_A" 127.0.0.1:19292/v1/sandboxes/s1/invoke > "$WORK/alice-a.txt"
guide_show "$WORK/alice-a.txt"
guide_status "$WORK/alice-a.txt" 200
guide_expect "$WORK/alice-a.txt" '^x-user-id: agentcube/alice' 'alice of agentcube'
guide_expect "$WORK/alice-a.txt" '^x-portcullis-tenant: agentcube' 'alice of agentcube'

curl -si -XPOST -H "authorization: Bearer $ALICE_B" 127.0.0.1:19292/v1/sandboxes/s1/invoke > "$WORK/alice-b.txt"
guide_show "$WORK/alice-b.txt"
guide_status "$WORK/alice-b.txt" 200
guide_expect "$WORK/alice-b.txt" '^x-user-id: tenant-b/alice' 'alice of tenant-b'
guide_expect "$WORK/alice-b.txt" '^x-portcullis-tenant: tenant-b' 'alice of tenant-b'

curl -si -H "authorization: Bearer $CAROL_B" 127.0.0.1:19292/admin/users > "$WORK/carol-b.txt"
guide_show "$WORK/carol-b.txt"
guide_status "$WORK/carol-b.txt" 401
guide_expect "$WORK/carol-b.txt" '^x-portcullis-reason: issuer_not_allowed' 'tenant-b admin on an agentcube-only route'

guide_wait_log "$WORK/tenants.log" '"reason":"issuer_not_allowed"' 10
guide_expect "$WORK/tenants.log" '"kind":"decision","route":"platform-admin","decision":"deny","reason":"issuer_not_allowed"' 'decision log line'
guide_expect "$WORK/tenants.log" '"kind":"decision","route":"sandbox-invoke","decision":"allow".*"sub":"tenant-b/alice","tenant":"tenant-b"' 'decision log line'

kill "$TENANTS_PID" "$TENANT_B_IDP_PID" "$QUICKSTART_PID"
