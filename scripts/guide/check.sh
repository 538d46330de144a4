#!/usr/bin/env bash
# After editing the user guide (docs/guide/) or scripts/guide/: the command check
# (every command in the guide is one a script or test runs) and the scripts themselves.
#
#   bash scripts/guide/check.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
npx vitest run test/unit/guide.test.ts test/e2e/guide-quickstart.test.ts
