#!/usr/bin/env bash
# docs/guide/05-sdks.md, run for real: the TokenAuth examples of the TypeScript client
# (portcullis/client) and of the Python SDK (sdk/python, standard library only) call
# the quick-start instance with a development token; a wrong token is refused.
# ServiceAccountAuth needs a real token endpoint: test/e2e/sdk-keycloak.test.ts runs
# it against Keycloak.
#
#   bash scripts/guide/sdk.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
guide_ports_free 19191 19192 19901

WORK=$(mktemp -d)
node bin/portcullis.js --grpc-addr 127.0.0.1:19191 --http-addr 127.0.0.1:19192 --admin-addr 127.0.0.1:19901 > "$WORK/quickstart.log" 2>&1 &
QUICKSTART_PID=$!
guide_track "$QUICKSTART_PID"
curl -s --retry 30 --retry-connrefused --retry-delay 1 -o /dev/null 127.0.0.1:19192/healthz

export PORTCULLIS_TOKEN=$(curl -s -XPOST 127.0.0.1:19901/dev/token -d '{"sub":"alice","roles":["sandbox:invoke"]}' | node -p 'JSON.parse(require("fs").readFileSync(0)).access_token')
node docs/guide/examples/token-auth.mjs > "$WORK/ts.txt"
guide_show "$WORK/ts.txt"
guide_expect "$WORK/ts.txt" '^typescript: 200 sub=alice reason=null$' 'TypeScript TokenAuth'
PYTHONPATH=sdk/python/src python3 docs/guide/examples/token_auth.py > "$WORK/py.txt"
guide_show "$WORK/py.txt"
guide_expect "$WORK/py.txt" '^python: 200 sub=alice reason=None$' 'Python TokenAuth'

# A token the issuer did not sign (the first one with its signature cut off and
# replaced) is refused: 401 signature_invalid.
export PORTCULLIS_TOKEN="${PORTCULLIS_TOKEN%.*}.AAAA"
node docs/guide/examples/token-auth.mjs > "$WORK/ts-bad.txt"
guide_show "$WORK/ts-bad.txt"
guide_expect "$WORK/ts-bad.txt" '^typescript: 401 sub=null reason=signature_invalid$' 'TypeScript TokenAuth, bad token'

kill "$QUICKSTART_PID"
