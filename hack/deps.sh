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
#   hack/deps.sh kube         Kubernetes node + control plane and etcd into _output/kube/<version> (not in all)
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
KUBE_VERSION="${KUBE_VERSION:-v1.34.4}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
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

# kube builds a single-node Kubernetes (kube-apiserver, kube-controller-manager,
# kube-scheduler, kubelet, kube-proxy, kubectl) and etcd from the module proxy
# into _output/kube/$KUBE_VERSION, keyed on the versions. k8s.io/kubernetes
# cannot be `go install`ed (its go.mod replaces its staging modules with local
# paths), so a throwaway module generated under _output/kube/src requires it and
# replaces each staging module with the published v0.<minor>.<patch>; etcd's
# server module likewise, with its sibling modules pinned to the same tag.
# Cold: about 11 min on 2 idle cores and 3.4 GB of Go build cache.
kube() {
	local dir="$OUT/kube/$KUBE_VERSION" src="$OUT/kube/src"
	local stamp="$dir/.versions" want="kubernetes $KUBE_VERSION etcd $ETCD_VERSION"
	if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
		return
	fi
	mkdir -p "$dir"
	local t0=$SECONDS
	if ! [ -x "$dir/kubelet" ] || ! [ "$("$dir/kubelet" --version 2>/dev/null)" = "Kubernetes $KUBE_VERSION" ]; then
		log "building Kubernetes $KUBE_VERSION (about 11 min cold)"
		local gomod staging
		gomod="$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')"
		[ -f "$gomod" ] || { log "cannot download k8s.io/kubernetes@$KUBE_VERSION"; exit 1; }
		staging="$(sed -n 's|^[[:space:]]*\(k8s.io/[^ ]*\) => ./staging/src/.*|\1|p' "$gomod")"
		[ -n "$staging" ] || { log "no staging modules in $gomod"; exit 1; }
		rm -rf "$src/k8s" && mkdir -p "$src/k8s"
		{
			echo "module raksh.test/kubebuild"
			echo
			echo "require k8s.io/kubernetes $KUBE_VERSION"
			echo
			echo "replace ("
			for m in $staging; do echo "	$m => $m v0.${KUBE_VERSION#v1.}"; done
			echo ")"
		} >"$src/k8s/go.mod"
		local v="$KUBE_VERSION" minor="${KUBE_VERSION#v1.}" ld="" p
		minor="${minor%%.*}"
		for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
			ld+=" -X $p.gitVersion=$v -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
		done
		(cd "$src/k8s" && GOFLAGS=-mod=mod CGO_ENABLED=0 nice -n 10 go build -ldflags "$ld" -o "$dir/" \
			k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
			k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet \
			k8s.io/kubernetes/cmd/kube-proxy k8s.io/kubernetes/cmd/kubectl)
	fi
	if ! [ -x "$dir/etcd" ] || ! "$dir/etcd" --version 2>/dev/null | grep -q "etcd Version: ${ETCD_VERSION#v}"; then
		log "building etcd $ETCD_VERSION"
		rm -rf "$src/etcd" && mkdir -p "$src/etcd"
		{
			echo "module raksh.test/etcdbuild"
			echo
			echo "require go.etcd.io/etcd/server/v3 $ETCD_VERSION"
			echo
			echo "replace ("
			for m in api/v3 client/pkg/v3 client/v3 pkg/v3 server/v3; do
				echo "	go.etcd.io/etcd/$m => go.etcd.io/etcd/$m $ETCD_VERSION"
			done
			echo ")"
		} >"$src/etcd/go.mod"
		(cd "$src/etcd" && GOFLAGS=-mod=mod CGO_ENABLED=0 nice -n 10 go build -o "$dir/etcd" go.etcd.io/etcd/server/v3)
	fi
	"$dir/kubelet" --version | grep -qx "Kubernetes $KUBE_VERSION" || { log "kubelet reports $("$dir/kubelet" --version)"; exit 1; }
	echo "$want" >"$stamp"
	log "Kubernetes $KUBE_VERSION and etcd $ETCD_VERSION in $dir ($((SECONDS - t0)) s)"
}

case "${1:-all}" in
packages) packages ;;
containerd) containerd ;;
runc) runc ;;
kernel) kernel ;;
cni) cni ;;
critest) critest ;;
kube) kube ;;
all) packages; kernel; containerd; runc; cni; critest ;;
*) echo "usage: $0 [packages|containerd|runc|kernel|cni|critest|kube|all]" >&2; exit 2 ;;
esac
