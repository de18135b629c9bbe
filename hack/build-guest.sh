#!/usr/bin/env bash
# build-guest.sh builds the static agent and the initrd under _output.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUTPUT_DIR:-$ROOT/_output}"
mkdir -p "$OUT/bin"
cd "$ROOT"
# The version every binary reports (internal/version); the Makefile passes GO_LDFLAGS.
if [ -z "${GO_LDFLAGS:-}" ]; then
	V="$(git describe --tags --always --dirty 2>/dev/null || echo dev)"
	GO_LDFLAGS="-X github.com/raksh-project/raksh/internal/version.Version=$V -X github.com/raksh-project/raksh/internal/version.Revision=$(git rev-parse HEAD 2>/dev/null)"
fi
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w $GO_LDFLAGS" -o "$OUT/bin/raksh-agent" ./cmd/raksh-agent
go build -ldflags "$GO_LDFLAGS" -o "$OUT/bin/rakshctl" ./cmd/rakshctl
# The simulated TEE's platform key pair, generated once: the private half is
# baked into the initrd (where the guest attester signs evidence with it, so
# anyone who reads the initrd can forge evidence: the sim TEE is INSECURE),
# the public half is what a key broker trusts (raksh-kbs --sim-platform-keys).
SIMKEY="$OUT/keys/sim-platform.key"
SIMPUB="$OUT/keys/sim-platform.pub"
if [ ! -s "$SIMKEY" ] || [ ! -s "$SIMPUB" ]; then
	mkdir -p "$OUT/keys"
	"$OUT/bin/rakshctl" keys generate --alg ec-p384 --force --private "$SIMKEY" --public "$SIMPUB" >/dev/null
fi
"$OUT/bin/rakshctl" initrd build --agent "$OUT/bin/raksh-agent" --runc "$OUT/deps/bin/runc" \
	--modules-dir "$OUT/deps/kernel/modules" --file "/etc/raksh/sim-platform-key.pem=$SIMKEY" --out "$OUT/initrd.img"
