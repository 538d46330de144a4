#!/usr/bin/env bash
# docs/guide/03-workload-identity.md, run for real: portcullis's own mTLS listener in
# file mode. A throw-away CA issues portcullis's serving certificate and two client
# certificates with SPIFFE IDs as URI SANs; portcullis starts with the --mtls-* flags;
# an allowed client gets decisions, another client of the same CA gets 403
# peer_not_allowed, a client without a certificate fails the handshake; the serving
# certificate is renewed on disk and picked up without a restart.
#
#   bash scripts/guide/mtls.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
guide_ports_free 19191 19192 19901
command -v openssl > /dev/null || guide_fail "openssl is needed"

WORK=$(mktemp -d)

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=guide-ca \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
  -keyout "$WORK/ca.key" -out "$WORK/ca.crt" 2> "$WORK/openssl.log"
openssl req -x509 -CA "$WORK/ca.crt" -CAkey "$WORK/ca.key" -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=portcullis \
  -addext basicConstraints=critical,CA:FALSE -addext extendedKeyUsage=serverAuth,clientAuth \
  -addext subjectAltName=URI:spiffe://cluster.local/ns/agentcube-system/sa/portcullis,IP:127.0.0.1 \
  -keyout "$WORK/tls.key" -out "$WORK/tls.crt" 2>> "$WORK/openssl.log"
openssl req -x509 -CA "$WORK/ca.crt" -CAkey "$WORK/ca.key" -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=workloadmanager \
  -addext basicConstraints=critical,CA:FALSE -addext extendedKeyUsage=clientAuth \
  -addext subjectAltName=URI:spiffe://cluster.local/ns/agentcube-system/sa/workloadmanager \
  -keyout "$WORK/wlm.key" -out "$WORK/wlm.crt" 2>> "$WORK/openssl.log"
openssl req -x509 -CA "$WORK/ca.crt" -CAkey "$WORK/ca.key" -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=intruder \
  -addext basicConstraints=critical,CA:FALSE -addext extendedKeyUsage=clientAuth \
  -addext subjectAltName=URI:spiffe://cluster.local/ns/agentcube-system/sa/intruder \
  -keyout "$WORK/intruder.key" -out "$WORK/intruder.crt" 2>> "$WORK/openssl.log"
openssl x509 -in "$WORK/tls.crt" -noout -ext subjectAltName > "$WORK/san.txt"
guide_show "$WORK/san.txt"
guide_expect "$WORK/san.txt" 'URI:spiffe://cluster.local/ns/agentcube-system/sa/portcullis' 'serving certificate SAN'

node bin/portcullis.js --grpc-addr 127.0.0.1:19191 --http-addr 127.0.0.1:19192 --admin-addr 127.0.0.1:19901 \
  --mtls-cert-file "$WORK/tls.crt" --mtls-key-file "$WORK/tls.key" --mtls-ca-file "$WORK/ca.crt" \
  --mtls-allowed-client spiffe://cluster.local/ns/agentcube-system/sa/workloadmanager > "$WORK/mtls.log" 2>&1 &
MTLS_PID=$!
guide_track "$MTLS_PID"

code=$(curl -s --retry 30 --retry-connrefused --retry-delay 1 --cacert "$WORK/ca.crt" --cert "$WORK/wlm.crt" --key "$WORK/wlm.key" -o /dev/null -w '%{http_code}\n' https://127.0.0.1:19192/healthz)
[[ "$code" == 200 ]] || guide_fail "/healthz over mTLS answered $code"
guide_ok "mTLS HTTP ext_authz port answers /healthz: $code"

TOKEN=$(curl -s -XPOST 127.0.0.1:19901/dev/token -d '{"sub":"alice","roles":["sandbox:invoke"]}' | node -p 'JSON.parse(require("fs").readFileSync(0)).access_token')

# An allowed client (the WorkloadManager's sidecar) gets normal decisions.
curl -si --cacert "$WORK/ca.crt" --cert "$WORK/wlm.crt" --key "$WORK/wlm.key" -XPOST -H "authorization: Bearer $TOKEN" https://127.0.0.1:19192/v1/sandboxes/s1/invoke > "$WORK/allowed-client.txt"
guide_show "$WORK/allowed-client.txt"
guide_status "$WORK/allowed-client.txt" 200
guide_expect "$WORK/allowed-client.txt" '^x-user-sub: alice' 'allowed client'

# Same CA, not on the allowlist: a deny, whatever the token.
curl -si --cacert "$WORK/ca.crt" --cert "$WORK/intruder.crt" --key "$WORK/intruder.key" -XPOST -H "authorization: Bearer $TOKEN" https://127.0.0.1:19192/v1/sandboxes/s1/invoke > "$WORK/other-client.txt"
guide_show "$WORK/other-client.txt"
guide_status "$WORK/other-client.txt" 403
guide_expect "$WORK/other-client.txt" '^x-portcullis-reason: peer_not_allowed' 'client not on the allowlist'

# No client certificate: the TLS handshake fails, no decision at all.
if curl -s --cacert "$WORK/ca.crt" https://127.0.0.1:19192/healthz > "$WORK/no-cert.txt"; then
  guide_fail "a client without a certificate got an answer"
fi
guide_ok "a client without a certificate fails the handshake"

# Rotation: renew the serving certificate (same key, new serial) and replace the file atomically.
openssl s_client -connect 127.0.0.1:19192 -CAfile "$WORK/ca.crt" -cert "$WORK/wlm.crt" -key "$WORK/wlm.key" < /dev/null 2> /dev/null | openssl x509 -noout -serial > "$WORK/serial-before.txt"
guide_show "$WORK/serial-before.txt"
openssl req -x509 -CA "$WORK/ca.crt" -CAkey "$WORK/ca.key" -key "$WORK/tls.key" -days 2 -subj /CN=portcullis \
  -addext basicConstraints=critical,CA:FALSE -addext extendedKeyUsage=serverAuth,clientAuth \
  -addext subjectAltName=URI:spiffe://cluster.local/ns/agentcube-system/sa/portcullis,IP:127.0.0.1 \
  -out "$WORK/tls.crt.new" 2>> "$WORK/openssl.log"
mv "$WORK/tls.crt.new" "$WORK/tls.crt"
guide_wait_log "$WORK/mtls.log" 'TLS certificate reloaded' 15
grep 'TLS certificate reloaded' "$WORK/mtls.log" > "$WORK/reloaded.txt"
guide_show "$WORK/reloaded.txt"
openssl s_client -connect 127.0.0.1:19192 -CAfile "$WORK/ca.crt" -cert "$WORK/wlm.crt" -key "$WORK/wlm.key" < /dev/null 2> /dev/null | openssl x509 -noout -serial > "$WORK/serial-after.txt"
guide_show "$WORK/serial-after.txt"
grep -q serial= "$WORK/serial-after.txt" || guide_fail "no serial after the rotation"
if cmp -s "$WORK/serial-before.txt" "$WORK/serial-after.txt"; then guide_fail "new handshakes still get the old certificate"; fi
guide_ok "new handshakes get the renewed certificate"

curl -si --cacert "$WORK/ca.crt" --cert "$WORK/wlm.crt" --key "$WORK/wlm.key" -XPOST -H "authorization: Bearer $TOKEN" https://127.0.0.1:19192/v1/sandboxes/s1/invoke > "$WORK/after-rotation.txt"
guide_status "$WORK/after-rotation.txt" 200

kill "$MTLS_PID"
