#!/usr/bin/env bash
# bench.sh runs Raksh's benchmarks in one go and writes the results to
# _output/bench.txt (figures are kept in docs/benchmarks.md).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUTPUT_DIR:-$ROOT/_output}"
cd "$ROOT"
export RAKSH_KERNEL="$OUT/deps/kernel/vmlinuz" RAKSH_INITRD="$OUT/initrd.img"
res="$OUT/bench.txt"
: >"$res"
run() { echo "== $*" | tee -a "$res"; "$@" 2>&1 | grep -E '^(Benchmark|ok|FAIL|---|\s+\S+_test.go)' | tee -a "$res"; }
# VM runtime (root): ctr run vs runc, boot to agent (TCG, KVM if it works), host RSS.
run go test -tags integration -run '^$' -bench 'RunVsRunc|HostRSS' -benchtime 5x -timeout 30m ./integration/
# Pod network (root): raksh vs runc pod on one CNI bridge, one run; pod start with and without a NIC.
run go test -tags integration -run '^$' -bench 'PodNetwork' -benchtime 1x -timeout 20m ./integration/
# Volumes (root): pod start with a 10-file ConfigMap vs none, update propagation; one run.
run go test -tags integration -run '^$' -bench 'ConfigMapVolume' -benchtime 1x -timeout 20m ./integration/
# Shared volumes (root): dd write/read of one node directory, virtio-fs into a raksh guest vs a runc bind mount; one run.
run go test -tags integration -run '^$' -bench 'VirtioFSThroughput' -benchtime 1x -timeout 20m ./integration/
# Storage (root): dd write/read, guest tmpfs on the encrypted scratch disk vs in RAM vs runc overlay; one run.
run go test -tags integration -run '^$' -bench 'ScratchThroughput' -benchtime 1x -timeout 30m ./integration/
# Storage (root): first output and QEMU RSS vs image size (0-600 MiB unread layer), tar vs erofs plain rootfs; one run.
run go test -tags integration -run '^$' -bench 'FirstOutputVsImageSize' -benchtime 1x -timeout 60m ./integration/
# Storage (root): reading image files (128 MiB file, 5000 small files) on the tar and erofs paths vs a virtio-fs share vs runc; one run.
run go test -tags integration -run '^$' -bench 'PlainRootfsRead' -benchtime 1x -timeout 30m ./integration/
# Process stdio (root): an exec's stdout out of the VM.
run go test -tags integration -run '^$' -bench 'ExecStdoutThroughput' -benchtime 3x -timeout 20m ./integration/
run go test -tags integration -run '^$' -bench 'BootToAgent' -benchtime 5x -timeout 30m ./runtime/vm/
# Components.
run go test -run '^$' -bench . -benchtime 200x ./envelope/ ./tee/sim/ ./kbs/...
run go test -run '^$' -bench . -benchtime 1x ./nri/
run go test -run '^$' -bench . -benchtime 3x ./snapshotter/ ./agent/image/ ./agent/
echo "results in $res"
