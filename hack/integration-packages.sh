#!/usr/bin/env bash
# Lists the packages that hold tests behind the "integration" build tag,
# except ./integration/critest and ./integration/kube (make test-critest and make test-kube run them).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
grep -rl --include='*_test.go' '^//go:build.*integration' . | xargs -n1 dirname | sort -u | sed 's#^\./#./#' | grep -vx -e ./integration/critest -e ./integration/kube
