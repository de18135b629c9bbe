#!/usr/bin/env bash
# fuzz.sh runs every Go fuzz target in the tree for a short time each.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
t="${1:-5s}"
n=0
while IFS=: read -r file name; do
	pkg="./$(dirname "$file")"
	echo "fuzz: $pkg $name ($t)"
	go test -run '^$' -fuzz "^${name}\$" -fuzztime "$t" "$pkg"
	n=$((n + 1))
done < <(grep -rHo --include='*_test.go' '^func Fuzz[A-Za-z0-9_]*' . | sed 's#^\./##; s#:func #:#')
echo "fuzz: $n targets passed"
