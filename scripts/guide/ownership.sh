#!/usr/bin/env bash
# docs/guide/07-ownership.md, run for real against a Kubernetes API server: portcullis
# with docs/guide/examples/ownership.yaml, the owner cache synced (/readyz), the owner
# allowed, another user refused (not_owner), an unknown sandbox refused
# (resource_not_found), the creation route's owner header, explain and the metrics.
#
# Needs KUBECONFIG (an API server with the Sandbox CRD of deploy/crds/) and, in
# namespace agentcube, a Sandbox `s1` labelled agentcube.io/owner=dev.alice.
# test/e2e/guide-quickstart.test.ts provides both with a throw-away API server.
#
#   KUBECONFIG=... bash scripts/guide/ownership.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
[[ -n "${KUBECONFIG:-}" ]] || guide_fail "set KUBECONFIG to a cluster with the Sandbox CRD and sandbox agentcube/s1 owned by dev.alice"
guide_ports_free 19291 19292 19902

WORK=$(mktemp -d)
node bin/portcullis.js --config docs/guide/examples/ownership.yaml > "$WORK/ownership.log" 2>&1 &
OWNERSHIP_PID=$!
guide_track "$OWNERSHIP_PID"
curl -s --retry 30 --retry-connrefused --retry-delay 1 -o /dev/null 127.0.0.1:19292/healthz

curl -s --retry 30 --retry-connrefused --retry-delay 1 127.0.0.1:19902/readyz > "$WORK/readyz.txt"
guide_show "$WORK/readyz.txt"
guide_expect "$WORK/readyz.txt" '"name": "ownership:sandboxes"' '/readyz'
guide_expect "$WORK/readyz.txt" '"synced": true' '/readyz'
guide_expect "$WORK/readyz.txt" '"status": "ready"' '/readyz'

ALICE=$(curl -s -XPOST 127.0.0.1:19902/dev/token -d '{"sub":"alice","roles":["sandbox:manage"]}' | node -p 'JSON.parse(require("fs").readFileSync(0)).access_token')
BOB=$(curl -s -XPOST 127.0.0.1:19902/dev/token -d '{"sub":"bob","roles":["sandbox:manage"]}' | node -p 'JSON.parse(require("fs").readFileSync(0)).access_token')

# Creating: the identity the WorkloadManager must write into the owner label.
curl -si -XPOST -H "authorization: Bearer $ALICE" -H 'x-portcullis-owner: dev.mallory' 127.0.0.1:19292/v1/sandboxes > "$WORK/create.txt"
guide_show "$WORK/create.txt"
guide_status "$WORK/create.txt" 200
guide_expect "$WORK/create.txt" '^x-portcullis-owner: dev.alice' 'creation route'
guide_expect_not "$WORK/create.txt" 'mallory' 'creation route (spoofed owner replaced)'

curl -si -XPOST -H "authorization: Bearer $ALICE" 127.0.0.1:19292/v1/sandboxes/s1/invoke > "$WORK/owner.txt"
guide_status "$WORK/owner.txt" 200

curl -si -XPOST -H "authorization: Bearer $BOB" 127.0.0.1:19292/v1/sandboxes/s1/invoke > "$WORK/other.txt"
guide_show "$WORK/other.txt"
guide_status "$WORK/other.txt" 403
guide_expect "$WORK/other.txt" '^x-portcullis-reason: not_owner' 'another user'
guide_expect_not "$WORK/other.txt" 'dev.alice' 'the answer does not name the owner'

curl -si -XPOST -H "authorization: Bearer $ALICE" 127.0.0.1:19292/v1/sandboxes/no-such-sandbox/invoke > "$WORK/unknown.txt"
guide_show "$WORK/unknown.txt"
guide_status "$WORK/unknown.txt" 403
guide_expect "$WORK/unknown.txt" '^x-portcullis-reason: resource_not_found' 'unknown sandbox'

if node bin/portcullis.js explain --admin http://127.0.0.1:19902 -X POST -H "authorization: Bearer $BOB" http://router.example/v1/sandboxes/s1/invoke > "$WORK/explain.txt"; then
  guide_fail "explain exited 0 for bob"
fi
guide_show "$WORK/explain.txt"
guide_expect "$WORK/explain.txt" '^decision: DENY 403 not_owner' 'explain'
guide_expect "$WORK/explain.txt" '^denied by: ownership' 'explain'
guide_expect "$WORK/explain.txt" '^ownership: *\{.*"identity":"dev.bob","source":"cache","result":"not_owner","owner":"dev.alice"\}' 'explain: identity, where the owner came from, the owner'

curl -s 127.0.0.1:19902/metrics | grep -E '^portcullis_owner_' > "$WORK/metrics.txt"
guide_show "$WORK/metrics.txt"
guide_expect "$WORK/metrics.txt" '^portcullis_owner_watch_connected\{resource="sandboxes"\} 1$' 'owner metrics'
guide_expect "$WORK/metrics.txt" '^portcullis_owner_lookups_total\{resource="sandboxes",result="hit"\}' 'owner metrics'

kill "$OWNERSHIP_PID"
