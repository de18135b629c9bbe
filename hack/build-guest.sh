#!/usr/bin/env bash
# build-guest.sh builds the static agent and the initrd under _output.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUTPUT_DIR:-$ROOT/_output}"
mkdir -p "$OUT/bin"
cd "$ROOT"
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$OUT/bin/raksh-agent" ./cmd/raksh-agent
go build -o "$OUT/bin/rakshctl" ./cmd/rakshctl
"$OUT/bin/rakshctl" initrd build --agent "$OUT/bin/raksh-agent" --runc "$OUT/deps/bin/runc" \
	--modules-dir "$OUT/deps/kernel/modules" -o "$OUT/initrd.img"
