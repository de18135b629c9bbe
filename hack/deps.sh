#!/usr/bin/env bash
# deps.sh installs and builds the real parts Raksh is tested against, caching
# everything under _output/ so that a second run is fast.
#
#   hack/deps.sh packages     Debian packages (qemu, cpio, libseccomp-dev, ...)
#   hack/deps.sh containerd   containerd, ctr, containerd-shim-runc-v2 (v2.4.2)
#   hack/deps.sh runc         static runc for the guest (and the host)
#   hack/deps.sh kernel       Debian cloud kernel + virtio modules (extracted)
#   hack/deps.sh cni          CNI plugins (bridge, host-local, loopback, portmap) into _output/deps/cni
#   hack/deps.sh critest      cri-tools' critest (CRI validation suite) into _output/deps/bin
#   hack/deps.sh all
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUTPUT_DIR:-$ROOT/_output}"
DEPS="$OUT/deps"
BIN="$DEPS/bin"
CONTAINERD_VERSION="${CONTAINERD_VERSION:-v2.4.2}"
RUNC_VERSION="${RUNC_VERSION:-v1.5.2}"
CNI_PLUGINS_VERSION="${CNI_PLUGINS_VERSION:-v1.10.0}"
CRITOOLS_VERSION="${CRITOOLS_VERSION:-v1.37.0}"
KERNEL_PKG="${KERNEL_PKG:-linux-image-cloud-amd64}"
mkdir -p "$BIN"

log() { echo "deps: $*" >&2; }

packages() {
	local need=()
	for p in qemu-system-x86 qemu-system-ppc qemu-system-common cpio libseccomp-dev pkg-config gcc make busybox-static iptables iproute2 erofs-utils; do
		dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
	done
	if [ "${#need[@]}" -gt 0 ]; then
		log "installing ${need[*]}"
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
	fi
}

containerd() {
	if [ -x "$BIN/containerd" ] && "$BIN/containerd" --version | grep -q "$CONTAINERD_VERSION"; then
		return
	fi
	log "building containerd $CONTAINERD_VERSION"
	GOBIN="$BIN" CGO_ENABLED=1 go install \
		-ldflags "-X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION" \
		"github.com/containerd/containerd/v2/cmd/containerd@$CONTAINERD_VERSION" \
		"github.com/containerd/containerd/v2/cmd/ctr@$CONTAINERD_VERSION" \
		"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION"
}

runc() {
	if [ -x "$BIN/runc" ] && "$BIN/runc" --version | grep -q "${RUNC_VERSION#v}"; then
		return
	fi
	log "building static runc $RUNC_VERSION"
	# go install keeps the module's own go.mod; the proxy's zip has no vendor/.
	local tmp
	tmp="$(mktemp -d)"
	GOBIN="$tmp" CGO_ENABLED=1 go install -trimpath -tags "seccomp urfave_cli_no_docs" \
		-ldflags "-X main.version=${RUNC_VERSION#v} -extldflags -static" \
		"github.com/opencontainers/runc@$RUNC_VERSION"
	mv "$tmp/runc" "$BIN/runc" && rmdir "$tmp"
	file "$BIN/runc" 2>/dev/null | grep -q "statically linked" || ldd "$BIN/runc" 2>&1 | grep -q "not a dynamic" || { log "runc is not static"; exit 1; }
}

kernel() {
	local kdir="$DEPS/kernel"
	if [ -f "$kdir/vmlinuz" ] && [ -d "$kdir/modules" ]; then
		return
	fi
	log "fetching $KERNEL_PKG"
	rm -rf "$kdir" && mkdir -p "$kdir/deb"
	apt-get update -qq >/dev/null 2>&1 || true
	# The meta package names the versioned image package.
	local real
	real="$(apt-cache depends "$KERNEL_PKG" | sed -n 's/.*Depends: \(linux-image-[0-9].*\)/\1/p' | head -1)"
	[ -n "$real" ] || { log "cannot resolve $KERNEL_PKG"; exit 1; }
	(cd "$kdir/deb" && apt-get download "$real" >/dev/null)
	dpkg-deb -x "$kdir"/deb/*.deb "$kdir/root"
	cp "$kdir"/root/boot/vmlinuz-* "$kdir/vmlinuz"
	mv "$kdir"/root/lib/modules/* "$kdir/modules"
	rm -rf "$kdir/root" "$kdir/deb"
	echo "$real" >"$kdir/package"
}

# cni builds the CNI plugins the network and CRI tests use. Tests configure
# them on private subnets only (no masquerade, no route out of the machine).
cni() {
	local dir="$DEPS/cni" stamp="$DEPS/cni/.version"
	if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$CNI_PLUGINS_VERSION" ]; then
		return
	fi
	log "building CNI plugins $CNI_PLUGINS_VERSION"
	mkdir -p "$dir"
	local m=github.com/containernetworking/plugins/plugins
	GOBIN="$dir" CGO_ENABLED=0 go install \
		"$m/main/bridge@$CNI_PLUGINS_VERSION" "$m/main/loopback@$CNI_PLUGINS_VERSION" \
		"$m/ipam/host-local@$CNI_PLUGINS_VERSION" "$m/meta/portmap@$CNI_PLUGINS_VERSION"
	echo "$CNI_PLUGINS_VERSION" >"$stamp"
}

# critest builds cri-tools' CRI validation suite as its Makefile does
# (go test -c ./cmd/critest with the version ldflag). The proxy's zip has no
# vendor/, so it builds in a copy with -mod=mod.
critest() {
	local stamp="$DEPS/bin/.critest-version"
	if [ -x "$BIN/critest" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$CRITOOLS_VERSION" ]; then
		return
	fi
	log "building critest $CRITOOLS_VERSION"
	local src tmp
	src="$(go mod download -json "sigs.k8s.io/cri-tools@$CRITOOLS_VERSION" | sed -n 's/.*"Dir": "\(.*\)",*/\1/p')"
	[ -d "$src" ] || { log "cannot download sigs.k8s.io/cri-tools@$CRITOOLS_VERSION"; exit 1; }
	tmp="$(mktemp -d)"
	cp -r "$src/." "$tmp/" && chmod -R u+w "$tmp"
	(cd "$tmp" && CGO_ENABLED=0 GOFLAGS=-trimpath go test -mod=mod -c -o "$BIN/critest" \
		-ldflags "-X sigs.k8s.io/cri-tools/pkg/version.Version=${CRITOOLS_VERSION#v}" ./cmd/critest)
	rm -rf "$tmp"
	echo "$CRITOOLS_VERSION" >"$stamp"
}

case "${1:-all}" in
packages) packages ;;
containerd) containerd ;;
runc) runc ;;
kernel) kernel ;;
cni) cni ;;
critest) critest ;;
all) packages; kernel; containerd; runc; cni; critest ;;
*) echo "usage: $0 [packages|containerd|runc|kernel|cni|critest|all]" >&2; exit 2 ;;
esac
