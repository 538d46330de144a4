#!/usr/bin/env bash
# Validates the portcullis configuration embedded in a Kubernetes ConfigMap manifest
# (e.g. deploy/portcullis/configmap.yaml) with `portcullis validate`, so CI can refuse
# a bad configuration before anything is applied to a cluster. docs/guide/09-operations.md.
#
#   bash scripts/guide/validate-configmap.sh deploy/portcullis/configmap.yaml [--key portcullis.yaml] [validate flags...]
#
# Exit status: that of `portcullis validate` (0 valid, 1 invalid), 2 for a usage error.
# Needs the repository's node_modules (the `yaml` package) and a build (dist/).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

[[ $# -ge 1 ]] || { echo "usage: $0 CONFIGMAP.yaml [--key NAME] [validate flags...]" >&2; exit 2; }
manifest="$1"
shift
key=portcullis.yaml
if [[ "${1:-}" == --key ]]; then
  key="${2:?--key needs a name}"
  shift 2
fi
[[ -f "$manifest" ]] || { echo "$manifest: no such file" >&2; exit 2; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# Every document of kind ConfigMap that has data[key]; the first one is validated.
if ! MANIFEST="$manifest" KEY="$key" OUT="$tmp/$key" node -e '
  const { readFileSync, writeFileSync } = require("node:fs");
  const { parseAllDocuments } = require(require.resolve("yaml", { paths: [process.argv[1]] }));
  const docs = parseAllDocuments(readFileSync(process.env.MANIFEST, "utf8")).map((d) => d.toJS());
  const cm = docs.find((d) => d && d.kind === "ConfigMap" && d.data && typeof d.data[process.env.KEY] === "string");
  if (!cm) { console.error(`${process.env.MANIFEST}: no ConfigMap with data["${process.env.KEY}"]`); process.exit(2); }
  writeFileSync(process.env.OUT, cm.data[process.env.KEY]);
' "$root"; then
  exit 2
fi

set +e
node "$root/bin/portcullis.js" validate "$tmp/$key" "$@" > "$tmp/out.txt" 2>&1
status=$?
set -e
sed "s#$tmp/$key#$manifest (data.$key)#g" "$tmp/out.txt"
exit "$status"
