#!/usr/bin/env bash
# Lists the packages that hold tests behind the "integration" build tag,
# except ./integration/critest (make test-critest runs it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
grep -rl --include='*_test.go' '^//go:build.*integration' . | xargs -n1 dirname | sort -u | sed 's#^\./#./#' | grep -vx './integration/critest'
