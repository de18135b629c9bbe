#!/usr/bin/env bash
# fuzz.sh runs every Go fuzz target in the tree for a short time each.
#
# A real finding makes go test write the failing input under testdata/fuzz
# and fails the run. Go's fuzzer also fails, now and then, with a bare
# "context deadline exceeded" when -fuzztime ends while a worker is busy;
# such a run found nothing, so it is retried (twice at most).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
t="${1:-5s}"
n=0
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
while IFS=: read -r file name; do
	pkg="./$(dirname "$file")"
	for try in 1 2 3; do
		echo "fuzz: $pkg $name ($t)"
		if go test -run '^$' -fuzz "^${name}\$" -fuzztime "$t" "$pkg" >"$log" 2>&1; then
			tail -n 2 "$log"
			break
		fi
		cat "$log"
		if grep -q "Failing input written" "$log" || ! grep -q "context deadline exceeded" "$log" || [ "$try" = 3 ]; then
			echo "fuzz: $pkg $name failed" >&2
			exit 1
		fi
		echo "fuzz: $pkg $name: fuzzer timed out without a finding; retrying"
	done
	n=$((n + 1))
done < <(grep -rHo --include='*_test.go' '^func Fuzz[A-Za-z0-9_]*' . | sed 's#^\./##; s#:func #:#')
echo "fuzz: $n targets passed"
