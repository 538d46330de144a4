#!/usr/bin/env bash
# docs/guide/09-operations.md, run for real: validating the deployed configuration
# before a rollout, health and readiness, metrics, decision logs, reload by SIGHUP
# and by file change, a refused reload (the old configuration keeps serving), and a
# graceful stop.
#
#   bash scripts/guide/operations.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
guide_ports_free 19191 19192 19901

WORK=$(mktemp -d)

# Before a rollout (CI): the configuration in the ConfigMap must validate.
bash scripts/guide/validate-configmap.sh deploy/portcullis/configmap.yaml > "$WORK/validate-cm.txt"
guide_show "$WORK/validate-cm.txt"
guide_expect "$WORK/validate-cm.txt" 'configmap.yaml \(data.portcullis.yaml\): ok' 'ConfigMap validation'

cp config/default.yaml "$WORK/portcullis.yaml"
node bin/portcullis.js validate "$WORK/portcullis.yaml" > "$WORK/validate-ok.txt"
guide_expect "$WORK/validate-ok.txt" 'ok \(6 routes, 1 issuers\)' 'validate'

node bin/portcullis.js --config "$WORK/portcullis.yaml" --grpc-addr 127.0.0.1:19191 --http-addr 127.0.0.1:19192 --admin-addr 127.0.0.1:19901 > "$WORK/portcullis.log" 2>&1 &
PORTCULLIS_PID=$!
guide_track "$PORTCULLIS_PID"
curl -s --retry 30 --retry-connrefused --retry-delay 1 -o /dev/null 127.0.0.1:19192/healthz

curl -s 127.0.0.1:19901/healthz > "$WORK/healthz.txt"
guide_show "$WORK/healthz.txt"
curl -s -o /dev/null -w '%{http_code}\n' 127.0.0.1:19901/readyz > "$WORK/readyz-code.txt"
guide_expect "$WORK/readyz-code.txt" '^200$' '/readyz status'

TOKEN=$(curl -s -XPOST 127.0.0.1:19901/dev/token -d '{"sub":"alice","roles":["sandbox:invoke"]}' | node -p 'JSON.parse(require("fs").readFileSync(0)).access_token')
curl -si -XPOST -H "authorization: Bearer $TOKEN" 127.0.0.1:19192/v1/sandboxes/s1/invoke > "$WORK/allow-1.txt"
guide_status "$WORK/allow-1.txt" 200
curl -si -H "authorization: Bearer $TOKEN" 127.0.0.1:19192/admin/settings > "$WORK/deny-1.txt"
guide_status "$WORK/deny-1.txt" 403

curl -s 127.0.0.1:19901/metrics | grep -E '^portcullis_(decisions_total|token_cache_total|jwks_ready|config_)' > "$WORK/metrics-1.txt"
guide_show "$WORK/metrics-1.txt"
guide_expect "$WORK/metrics-1.txt" '^portcullis_decisions_total\{route="sandbox-invoke",decision="allow",reason=""\} 1$' 'metrics'
guide_expect "$WORK/metrics-1.txt" '^portcullis_decisions_total\{route="admin",decision="deny",reason="missing_role"\} 1$' 'metrics'
guide_expect "$WORK/metrics-1.txt" '^portcullis_jwks_ready\{issuer="dev"\} 1$' 'metrics'

guide_wait_log "$WORK/portcullis.log" '"route":"admin","decision":"deny"' 10
grep '"kind":"decision"' "$WORK/portcullis.log" > "$WORK/decision-lines.txt"
guide_show "$WORK/decision-lines.txt"
guide_expect "$WORK/decision-lines.txt" '"route":"admin","decision":"deny","reason":"missing_role","status":403,"sub":"dev/alice"' 'decision log'
if grep -qF "$TOKEN" "$WORK/portcullis.log"; then guide_fail "the log contains the token"; fi
guide_ok "the log never contains the token"

# Reload on demand.
kill -HUP "$PORTCULLIS_PID"
guide_wait_log "$WORK/portcullis.log" '"msg":"configuration reloaded"' 10

# A broken edit is refused; the running configuration keeps serving.
sed -i 's/anyOf: \[sandbox:invoke\]/anyOf: []/' "$WORK/portcullis.yaml"
guide_wait_log "$WORK/portcullis.log" 'configuration refused' 10
grep 'configuration refused' "$WORK/portcullis.log" > "$WORK/refused.txt"
guide_show "$WORK/refused.txt"
guide_expect "$WORK/refused.txt" 'routes\[1\]\.require\.roles\.anyOf' 'refused reload names the path'
curl -s 127.0.0.1:19901/metrics | grep -E '^portcullis_config_' > "$WORK/metrics-2.txt"
guide_show "$WORK/metrics-2.txt"
guide_expect "$WORK/metrics-2.txt" '^portcullis_config_reloads_total\{result="invalid"\} 1$' 'reload metrics'
guide_expect "$WORK/metrics-2.txt" '^portcullis_config_last_reload_successful 0$' 'reload metrics'
curl -si -XPOST -H "authorization: Bearer $TOKEN" 127.0.0.1:19192/v1/sandboxes/s1/invoke > "$WORK/allow-2.txt"
guide_status "$WORK/allow-2.txt" 200

if node bin/portcullis.js validate "$WORK/portcullis.yaml" > "$WORK/validate-bad.txt"; then
  guide_fail "validate accepted the broken file"
fi
guide_show "$WORK/validate-bad.txt"
guide_expect "$WORK/validate-bad.txt" '^  - routes\[1\]\.require\.roles\.anyOf: ' 'validate names the path'

# Fixed. The file is now identical to the configuration that is running: nothing
# is reloaded, and the gauge goes back to 1 (the running config is the file's).
cp config/default.yaml "$WORK/portcullis.yaml"
for _ in $(seq 100); do
  curl -s 127.0.0.1:19901/metrics | grep -q '^portcullis_config_last_reload_successful 1$' && break
  sleep 0.1
done
curl -s 127.0.0.1:19901/metrics | grep -E '^portcullis_config_last' > "$WORK/metrics-3.txt"
guide_expect "$WORK/metrics-3.txt" '^portcullis_config_last_reload_successful 1$' 'gauge after restoring the running file'
# SIGHUP always reloads, whatever the file watch thinks.
kill -HUP "$PORTCULLIS_PID"
for _ in $(seq 100); do
  curl -s 127.0.0.1:19901/metrics | grep -q '^portcullis_config_last_reload_successful 1$' && break
  sleep 0.1
done
curl -s 127.0.0.1:19901/metrics | grep -E '^portcullis_config_' > "$WORK/metrics-4.txt"
guide_show "$WORK/metrics-4.txt"
guide_expect "$WORK/metrics-4.txt" '^portcullis_config_last_reload_successful 1$' 'gauge after SIGHUP'
guide_expect "$WORK/metrics-4.txt" '^portcullis_config_reloads_total\{result="ok"\} 2$' 'reload metrics after SIGHUP'

# Graceful stop: SIGTERM drains and exits 0.
kill "$PORTCULLIS_PID"
wait "$PORTCULLIS_PID" || guide_fail "portcullis exited with status $? on SIGTERM"
guide_expect "$WORK/portcullis.log" '"msg":"shutting down: finishing in-flight checks"' 'shutdown'
