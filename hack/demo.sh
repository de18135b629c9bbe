#!/usr/bin/env bash
# demo.sh (make demo): Raksh end to end on this machine, as root, after
# `make deps build`.
#
#   1. a private containerd (root, state and socket under _output/demo) with
#      the Raksh runtime from contrib/, on the simulated TEE (tee = "sim");
#   2. raksh-kbs, the key broker, on 127.0.0.1, trusting the sim platform key
#      baked into the initrd and admitting only this guest's measurement;
#   3. (a) a plain container in a VM: the guest's kernel, not the host's;
#      (b) a sealed container: its command, an env value and a file exist
#      only in an envelope; the guest attests, gets the key and unseals;
#      (c) the host saw no secret: containerd's dirs, the bundle's
#      config.json, the logs hold only the placeholder and the envelope;
#      (d) the same envelope in another container is refused;
#      (e) an image the owner encrypted with `rakshctl image encrypt`, pulled
#      through raksh-snapshotter: the node caches only ciphertext, the guest
#      gets the layer key from the broker after attestation;
#      (f) a guest-pulled image: no layer byte on the node;
#      (g) an unmodified pod through the CRI, sealed on the node by raksh-nri;
#   4. rakshctl audit on the node: no owner secret anywhere it looks, and
#      where the node-sealed one still is (containerd's CRI metadata).
# Everything it started is stopped and removed on exit.
#
# The simulated TEE is INSECURE (its key is in the initrd): it shows the
# protocol and the plumbing, not protection. See docs/trust.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUTPUT_DIR:-$ROOT/_output}"
BIN="$OUT/bin"
DEPS="$OUT/deps/bin"
DEMO="$OUT/demo"
# The shim's state_dir: short, because VM sockets live under
# <state_dir>/<namespace>/<64-character id>/ and unix socket paths end at 108 bytes.
RUNDIR="/run/rkd-$$"
IMAGE="docker.io/raksh/busybox:demo"
KID="kbs:///default/workload/demo"
IMAGE_KEY="default/image-key/demo"
RUNTIME="io.containerd.raksh.v2"

if [ -t 1 ]; then B=$'\033[1m' G=$'\033[32m' R=$'\033[31m' N=$'\033[0m'; else B="" G="" R="" N=""; fi
section() { printf '\n%s== %s ==%s\n' "$B" "$*" "$N"; }
info() { printf '   %s\n' "$*"; }
ok() { printf '   %sOK%s %s\n' "$G" "$N" "$*"; }
fail() { printf '   %sFAIL%s %s\n' "$R" "$N" "$*" >&2; exit 1; }
indent() { sed 's/^/   | /'; }

[ "$(id -u)" = 0 ] || { echo "demo.sh: run as root (it starts containerd and QEMU)" >&2; exit 1; }
for f in "$DEPS/containerd" "$DEPS/ctr" "$OUT/deps/kernel/vmlinuz"; do
	[ -e "$f" ] || { echo "demo.sh: $f missing: run make deps" >&2; exit 1; }
done

CONTAINERD_PID="" KBS_PID="" SEALED_PID="" REGISTRY_PID="" SNAPSHOTTER_PID=""
# ctr against the demo's containerd, without its cgroup v1 deprecation notes.
ctr() {
	{ "$DEPS/ctr" --address "$DEMO/containerd.sock" --namespace default "$@" 2>&1 1>&3 3>&- |
		{ grep -v DEPRECATION || true; } >&2; } 3>&1
}

# ctr in the CRI plugin's namespace.
ctrk8s() {
	{ "$DEPS/ctr" --address "$DEMO/containerd.sock" --namespace k8s.io "$@" 2>&1 1>&3 3>&- |
		{ grep -v DEPRECATION || true; } >&2; } 3>&1
}
rnd() { head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n'; }

cleanup() {
	set +e
	[ -n "$SEALED_PID" ] && kill "$SEALED_PID" 2>/dev/null
	if [ -n "$CONTAINERD_PID" ]; then
		"$BIN/raksh-cri" -address "$DEMO/containerd.sock" -timeout 2m rm-all >/dev/null 2>&1
		for t in $(ctr task ls -q 2>/dev/null); do
			ctr task kill -s SIGKILL "$t" >/dev/null 2>&1
			ctr task delete --force "$t" >/dev/null 2>&1
		done
		for c in $(ctr container ls -q 2>/dev/null); do ctr container rm "$c" >/dev/null 2>&1; done
		kill "$CONTAINERD_PID" 2>/dev/null
		for _ in $(seq 150); do kill -0 "$CONTAINERD_PID" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$CONTAINERD_PID" 2>/dev/null
	fi
	[ -n "$SNAPSHOTTER_PID" ] && kill "$SNAPSHOTTER_PID" 2>/dev/null && wait "$SNAPSHOTTER_PID" 2>/dev/null
	[ -n "$REGISTRY_PID" ] && kill "$REGISTRY_PID" 2>/dev/null && wait "$REGISTRY_PID" 2>/dev/null
	[ -n "$KBS_PID" ] && kill "$KBS_PID" 2>/dev/null && wait "$KBS_PID" 2>/dev/null
	# QEMU processes of this demo's VMs, should a shim have left one.
	for p in /proc/[0-9]*; do
		if tr '\0' ' ' 2>/dev/null <"$p/cmdline" | grep -qE "^qemu.*($DEMO|$RUNDIR)/"; then kill -9 "${p#/proc/}" 2>/dev/null; fi
	done
	# Mounts under the demo directory, deepest first.
	awk -v d="$DEMO/" -v r="$RUNDIR/" 'index($2, d) == 1 || index($2, r) == 1 { print $2 }' /proc/self/mounts | sort -r | while read -r m; do umount -l "$m"; done
	rm -rf "$DEMO" "$RUNDIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

section "0. Build"
if [ -z "${MAKELEVEL:-}" ]; then make -C "$ROOT" --no-print-directory build >/dev/null; fi
(cd "$ROOT" && go build -o "$BIN/" ./internal/cmd/raksh-testimage ./internal/cmd/raksh-registry ./internal/cmd/raksh-cri)
for b in containerd-shim-raksh-v2 raksh-kbs rakshctl raksh-snapshotter raksh-nri raksh-testimage raksh-registry raksh-cri; do [ -x "$BIN/$b" ] || fail "$BIN/$b not built"; done
[ -s "$OUT/initrd.img" ] && [ -s "$OUT/keys/sim-platform.pub" ] || fail "initrd or sim platform key missing: run make build"
info "binaries in $BIN, guest kernel $(cat "$OUT/deps/kernel/package" 2>/dev/null || echo "$OUT/deps/kernel/vmlinuz")"
info "initrd $OUT/initrd.img (agent, runc, sim platform key)"

rm -rf "$DEMO" "$RUNDIR"
mkdir -p "$DEMO/kbs" "$DEMO/keys" "$DEMO/client"
# $DEMO/client is the workload owner's and the user's side (keys, secrets,
# what ctr prints); everything else under $DEMO is the host's.

section "1. Key broker (raksh-kbs)"
"$BIN/rakshctl" keys generate --alg ed25519 --private "$DEMO/client/admin.key" --public "$DEMO/kbs/admin.pub" >/dev/null
"$BIN/raksh-kbs" --address 127.0.0.1:0 --resource-dir "$DEMO/kbs/resources" --policy "$DEMO/kbs/policy.json" \
	--admin-public-key "$DEMO/kbs/admin.pub" --sim-platform-keys "$OUT/keys/sim-platform.pub" >"$DEMO/kbs/kbs.log" 2>&1 &
KBS_PID=$!
KBS_ADDR=""
for _ in $(seq 100); do
	KBS_ADDR="$(sed -n 's/.*raksh-kbs listening.*address="\{0,1\}\(127\.0\.0\.1:[0-9]*\).*/\1/p' "$DEMO/kbs/kbs.log" | head -1)"
	[ -n "$KBS_ADDR" ] && break
	kill -0 "$KBS_PID" 2>/dev/null || { cat "$DEMO/kbs/kbs.log" >&2; fail "raksh-kbs exited"; }
	sleep 0.1
done
[ -n "$KBS_ADDR" ] || fail "raksh-kbs did not come up"
export RAKSH_KBS_URL="http://$KBS_ADDR" RAKSH_KBS_ADMIN_KEY="$DEMO/client/admin.key"
info "listening on $RAKSH_KBS_URL (loopback); trusts the sim platform key $OUT/keys/sim-platform.pub"

# The workload key: the owner seals to its public part (3b), raksh-nri seals
# to it on the node (3g); only an attested guest gets the private part.
"$BIN/rakshctl" keys generate --alg ec-p256 --private "$DEMO/client/workload.key" --public "$DEMO/keys/workload.pub" --kid "$KID" >/dev/null
"$BIN/rakshctl" kbs resource set --file "$DEMO/client/workload.key" "${KID#kbs:///}" | indent

# The owner's registry (loopback): where encrypted and guest-pulled images live.
"$BIN/raksh-registry" -addr 127.0.0.1:0 -quiet 2>"$DEMO/registry.log" &
REGISTRY_PID=$!
REG=""
for _ in $(seq 100); do
	REG="$(sed -n 's/^raksh-registry listening on \(127\.0\.0\.1:[0-9]*\)$/\1/p' "$DEMO/registry.log")"
	[ -n "$REG" ] && break
	sleep 0.1
done
[ -n "$REG" ] || fail "raksh-registry did not come up"
info "image registry on $REG (loopback, in memory)"

section "2. Private containerd with the Raksh runtime on the simulated TEE"
cat >"$DEMO/runtime.toml" <<EOF
qemu_path = "qemu-system-x86_64"
kernel = "$OUT/deps/kernel/vmlinuz"
initrd = "$OUT/initrd.img"
accel = "auto"
memory_mib = 512
vcpus = 1
boot_timeout = "3m"
state_dir = "$RUNDIR"
debug = true
tee = "sim"

image_keys = ["$IMAGE_KEY"]

[proxy]
kbs = "$KBS_ADDR"
registry = "$REG"
EOF
# raksh-snapshotter: encrypted layers stay ciphertext on the node; images
# under $REG/raksh/guest/ are pulled by the guest itself.
mkdir -p "$DEMO/nri/plugins" "$DEMO/nri/conf.d" "$DEMO/pods"
cat >"$DEMO/snapshotter.toml" <<EOF
root = "$DEMO/snap"
address = "$DEMO/snap.sock"
containerd_address = "$DEMO/containerd.sock"
[guest_pull]
enable = true
image_patterns = ['$(printf '%s' "$REG" | sed 's/\./\\./g')/raksh/guest/.*']
EOF
"$BIN/raksh-snapshotter" -config "$DEMO/snapshotter.toml" >"$DEMO/snapshotter.log" 2>&1 &
SNAPSHOTTER_PID=$!
for _ in $(seq 100); do [ -S "$DEMO/snap.sock" ] && break; sleep 0.1; done
[ -S "$DEMO/snap.sock" ] || { cat "$DEMO/snapshotter.log" >&2; fail "raksh-snapshotter did not come up"; }
sed "s#/run/raksh-snapshotter/snapshotter.sock#$DEMO/snap.sock#" "$ROOT/contrib/containerd/snapshotter.toml" >"$DEMO/20-raksh-snapshotter.toml"
# raksh-nri, pre-registered: seals containers of pods on the raksh handler.
install -m 0755 "$BIN/raksh-nri" "$DEMO/nri/plugins/10-raksh"
cat >"$DEMO/nri/conf.d/10-raksh.conf" <<EOF
mode: seal
runtimeHandlers: [raksh]
recipients:
- keyID: $KID
  keyFile: $DEMO/keys/workload.pub
kubeletPodsDir: $DEMO/pods
EOF
sed "s#/etc/raksh/runtime.toml#$DEMO/runtime.toml#" "$ROOT/contrib/containerd/conf.d/10-raksh-runtime.toml" >"$DEMO/10-raksh-runtime.toml"
cat >"$DEMO/config.toml" <<EOF
version = 3
root = "$DEMO/root"
state = "$DEMO/state"
imports = ["$DEMO/10-raksh-runtime.toml", "$DEMO/20-raksh-snapshotter.toml"]
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.blockfile", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "$DEMO/containerd.sock"
[ttrpc]
  address = "$DEMO/containerd.sock.ttrpc"
[debug]
  level = "info"

[plugins.'io.containerd.nri.v1.nri']
  disable = false
  socket_path = "$DEMO/nri/nri.sock"
  plugin_path = "$DEMO/nri/plugins"
  plugin_config_path = "$DEMO/nri/conf.d"
  [plugins.'io.containerd.nri.v1.nri'.default_validator]
    enable = true
    required_plugins = ['raksh']
[plugins.'io.containerd.cri.v1.runtime']
  enable_selinux = false
[plugins.'io.containerd.cri.v1.images']
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "registry.k8s.io/pause:3.10.2"
EOF
PATH="$BIN:$DEPS:$PATH" RAKSH_RUNTIME_CONFIG="$DEMO/runtime.toml" \
	setsid "$DEPS/containerd" --config "$DEMO/config.toml" >"$DEMO/containerd.log" 2>&1 &
CONTAINERD_PID=$!
for _ in $(seq 300); do ctr version >/dev/null 2>&1 && break; sleep 0.1; done
ctr version >/dev/null 2>&1 || { tail -20 "$DEMO/containerd.log" >&2; fail "containerd did not come up"; }
info "containerd $("$DEPS/containerd" --version | awk '{print $3}'), socket $DEMO/containerd.sock"
info "runtime config $DEMO/runtime.toml: tee = \"sim\", image_keys = [\"$IMAGE_KEY\"], [proxy] kbs and registry"
info "raksh-snapshotter (root $DEMO/snap) and raksh-nri (seal mode, handler raksh) plugged in"
"$BIN/raksh-testimage" -ref "$IMAGE" -marker "from-the-image" -o "$DEMO/client/busybox.tar"
ctr image import --local "$DEMO/client/busybox.tar" >/dev/null
info "imported $IMAGE (Debian's static busybox)"

section "3a. A plain container runs in a VM"
out="$(ctr run --rm --runtime "$RUNTIME" "$IMAGE" raksh-plain sh -c \
	'echo "kernel: $(uname -r)"; echo "PID 1:  $(cat /proc/1/comm)"; grep -m1 "model name" /proc/cpuinfo; cat /etc/raksh-marker')"
echo "$out" | indent
info "host kernel: $(uname -r)"
guest="$(echo "$out" | sed -n 's/^kernel: //p')"
[ -n "$guest" ] && [ "$guest" != "$(uname -r)" ] || fail "the container saw the host kernel"
ok "the container ran on the guest kernel, in its own VM"

section "3b. A sealed container on the simulated TEE"
API_TOKEN="tok-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
DB_PASSWORD="pw-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
printf '%s' "$DB_PASSWORD" >"$DEMO/client/db-password"
MEASUREMENT="$("$BIN/rakshctl" tee measure --runtime-config "$DEMO/runtime.toml")"
cat >"$DEMO/client/policy.json" <<EOF
{"rules": [{"resources": ["default/workload/*"], "tee": ["sim"], "measurements": ["$MEASUREMENT"]}]}
EOF
"$BIN/rakshctl" kbs policy set --file "$DEMO/client/policy.json"
info "policy: default/workload/* only to the sim TEE with launch measurement ${MEASUREMENT:0:16}..."
# ctr containers have no pod: the envelope is bound to namespace "default",
# pod and container both named like the container.
cat >"$DEMO/client/pod.yaml" <<'EOF'
apiVersion: v1
kind: Pod
metadata:
  name: raksh-sealed
spec:
  containers:
  - name: raksh-sealed
    image: docker.io/raksh/busybox:demo
    command: ["sh", "-c", "echo \"API_TOKEN=$API_TOKEN\"; echo \"db-password: $(cat /run/secrets/db-password)\"; sleep 8"]
    env:
    - name: API_TOKEN
      value: API_TOKEN_VALUE
EOF
sed -i "s/API_TOKEN_VALUE/$API_TOKEN/" "$DEMO/client/pod.yaml"
"$BIN/rakshctl" seal -f "$DEMO/client/pod.yaml" --recipient "$DEMO/keys/workload.pub" --kid "$KID" \
	--secret-file "raksh-sealed:/run/secrets/db-password=$DEMO/client/db-password" --out "$DEMO/client/sealed.yaml"
"$BIN/rakshctl" inspect -f "$DEMO/client/sealed.yaml" | indent
ENVELOPE="$(sed -n "s/^ *io\.raksh\.envelope\/raksh-sealed: '\(.*\)'\$/\1/p" "$DEMO/client/sealed.yaml")"
[ -n "$ENVELOPE" ] || fail "no envelope in the sealed manifest"
info "envelope: ${#ENVELOPE} bytes of JWE, passed as the annotation io.raksh.envelope"
info "\$ ctr run --runtime $RUNTIME --annotation io.raksh.envelope=<envelope> --env API_TOKEN=raksh-sealed $IMAGE raksh-sealed raksh-sealed"
ctr run --runtime "$RUNTIME" --annotation "io.raksh.envelope=$ENVELOPE" --env API_TOKEN=raksh-sealed \
	"$IMAGE" raksh-sealed raksh-sealed >"$DEMO/client/sealed.out" 2>&1 &
SEALED_PID=$!
# While it runs, its bundle and VM state exist on the host: look at them.
BUNDLE="$DEMO/state/io.containerd.runtime.v2.task/default/raksh-sealed/config.json"
running=""
for _ in $(seq 1800); do
	if ctr task ls 2>/dev/null | awk '$1 == "raksh-sealed" && $3 == "RUNNING" { found = 1 } END { exit !found }'; then running=1; break; fi
	kill -0 "$SEALED_PID" 2>/dev/null || break
	sleep 0.1
done
[ -n "$running" ] && [ -f "$BUNDLE" ] || { cat "$DEMO/client/sealed.out" >&2; fail "the sealed container did not start"; }
HOST_DIRS=("$DEMO/root" "$DEMO/state" "$RUNDIR" "$DEMO/containerd.log" "$DEMO/kbs")
hits_running="$(grep -rlF -D skip -e "$API_TOKEN" -e "$DB_PASSWORD" "${HOST_DIRS[@]}" 2>/dev/null || true)"
cp "$BUNDLE" "$DEMO/client/bundle-config.json"
exec_out="$(ctr task exec --exec-id peek raksh-sealed cat /proc/1/environ 2>&1)" && exec_status=0 || exec_status=$?
consoles="$(find "$RUNDIR" -name console.log | wc -l)"
status=0
wait "$SEALED_PID" || status=$?
SEALED_PID=""
ctr container rm raksh-sealed >/dev/null 2>&1 || true
indent <"$DEMO/client/sealed.out"
[ "$status" = 0 ] || fail "ctr run exited with $status"
grep -qxF "API_TOKEN=$API_TOKEN" "$DEMO/client/sealed.out" && grep -qxF "db-password: $DB_PASSWORD" "$DEMO/client/sealed.out" ||
	fail "the container did not get its sealed env and file"
ok "the guest attested to the broker, fetched $KID and unsealed: the container printed the sealed values"

section "3c. What the host saw"
info "the bundle's config.json (written by containerd, read by the shim):"
grep -o '"args":\[[^]]*\]' "$DEMO/client/bundle-config.json" | head -1 | indent
grep -o '"API_TOKEN=[^"]*"' "$DEMO/client/bundle-config.json" | indent
grep -o '"io.raksh.envelope":"{\\"protected\\":\\"[A-Za-z0-9_-]\{24\}' "$DEMO/client/bundle-config.json" | sed 's/$/.../' | indent
hits_after="$(grep -rlF -D skip -e "$API_TOKEN" -e "$DB_PASSWORD" "${HOST_DIRS[@]}" 2>/dev/null || true)"
info "searched for both secret values while it ran and after: containerd root and state (snapshots,"
info "bundle), the VM state ($consoles guest console log), containerd's log (with the shim's), the broker's files and log"
[ -z "$hits_running$hits_after" ] || { echo "$hits_running $hits_after" >&2; fail "a secret reached the host"; }
ok "no secret on the host: it saw the placeholder raksh-sealed and the envelope"
info "\$ ctr task exec --exec-id peek raksh-sealed cat /proc/1/environ   (while it ran)"
echo "$exec_out" | sed 's/.*exec into sealed container/exec into sealed container/' | indent
[ "$exec_status" != 0 ] && echo "$exec_out" | grep -q "does not allow exec" || fail "the host could exec into the sealed container"
ok "the node cannot exec into a sealed container whose envelope does not allow it"

section "3d. The envelope in another container is refused"
if out="$(ctr run --rm --runtime "$RUNTIME" --annotation "io.raksh.envelope=$ENVELOPE" "$IMAGE" raksh-moved raksh-sealed 2>&1)"; then
	fail "the moved envelope opened"
fi
echo "$out" | grep -v DEPRECATION | sed 's/.*create "raksh-moved" in VM: //' | indent
echo "$out" | grep -q "envelope bound to another container" || fail "refused for another reason"
ok "refused in the guest before any key was fetched"

section "3e. An image encrypted by its owner, pulled through raksh-snapshotter"
IMAGE_SECRET="img-$(rnd)"
printf '%s' "$IMAGE_SECRET" >"$DEMO/client/image-secret"
"$BIN/raksh-testimage" -ref docker.io/raksh/app:plain -marker-file "$DEMO/client/image-secret" -o "$DEMO/client/app.tar"
ENC_REF="$REG/enc/app:1"
info "owner: a busybox image whose /etc/raksh-marker holds a secret, encrypted and pushed in one step:"
info "\$ rakshctl image encrypt --resource $IMAGE_KEY --tee sim --measurement ${MEASUREMENT:0:16}... --plain-http docker-archive:app.tar $ENC_REF"
"$BIN/rakshctl" image encrypt --resource "$IMAGE_KEY" --tee sim --measurement "$MEASUREMENT" \
	--key-out "$DEMO/client/layer.key" --plain-http "docker-archive:$DEMO/client/app.tar" "$ENC_REF" 2>&1 | indent
ctr image pull --plain-http --snapshotter raksh "$ENC_REF" >/dev/null
out="$(ctr run --rm --snapshotter raksh --runtime "$RUNTIME" "$ENC_REF" raksh-enc sh -c 'echo "/etc/raksh-marker: $(cat /etc/raksh-marker)"')"
info "node saw: the manifest's layers and its snapshotter cache"
mdig="$(ctr image ls | awk -v r="$ENC_REF" '$1 == r { print $3 }')"
ctr content get "$mdig" | sed 's/.*"layers"//' | grep -o '"mediaType":"[^"]*"' | sort | uniq -c | sed 's/^ */layers: /' | indent
blobs="$(find "$DEMO/snap/cache" -type f 2>/dev/null | wc -l)"
info "   snapshotter cache: $blobs blob(s), $(du -sb "$DEMO/snap/cache" 2>/dev/null | cut -f1) bytes (no plaintext of the image: checked below)"
info "guest ran:"
echo "$out" | indent
[ "$out" = "/etc/raksh-marker: $IMAGE_SECRET" ] || fail "the container did not print the image's secret"
hits="$(grep -rlF -D skip -e "$IMAGE_SECRET" "$DEMO/root" "$DEMO/state" "$RUNDIR" "$DEMO/snap" "$DEMO/containerd.log" 2>/dev/null || true)"
[ -z "$hits" ] || { echo "$hits" >&2; fail "the image's plaintext reached the node"; }
ok "the guest attested, fetched $IMAGE_KEY from the broker and decrypted in its memory; the node holds only ciphertext"

section "3f. A guest-pulled image: the node never holds a layer"
GUEST_SECRET="gp-$(rnd)"
printf '%s' "$GUEST_SECRET" >"$DEMO/client/guest-secret"
GP_REF="$REG/raksh/guest/app:1"
"$BIN/raksh-testimage" -ref "$GP_REF" -push -marker-file "$DEMO/client/guest-secret"
info "owner pushed $GP_REF (plain layers; raksh-snapshotter's guest_pull covers $REG/raksh/guest/)"
cache_before="$(du -sb "$DEMO/snap/cache" 2>/dev/null | cut -f1)"
ctr image pull --plain-http --snapshotter raksh "$GP_REF" >/dev/null
out="$(ctr run --rm --snapshotter raksh --runtime "$RUNTIME" "$GP_REF" raksh-gp sh -c 'echo "/etc/raksh-marker: $(cat /etc/raksh-marker)"')"
mdig="$(ctr image ls | awk -v r="$GP_REF" '$1 == r { print $3 }')"
layers="$(ctr content get "$mdig" | sed 's/.*"layers"//' | grep -o 'sha256:[0-9a-f]\{64\}')"
content="$(ctr content ls -q)"
on_node=0 n=0
for d in $layers; do
	n=$((n + 1))
	if grep -qx "$d" <<<"$content" || [ -e "$DEMO/snap/cache/blobs/sha256/${d#sha256:}" ]; then on_node=$((on_node + 1)); fi
done
cache_after="$(du -sb "$DEMO/snap/cache" 2>/dev/null | cut -f1)"
info "node saw: the manifest ($n layer(s)); layers in containerd's content store or the snapshotter cache: $on_node;"
info "   snapshotter cache grew by $(( ${cache_after:-0} - ${cache_before:-0} )) bytes"
info "guest ran (it pulled the layers itself through the shim's allow-listed registry proxy):"
echo "$out" | indent
[ "$out" = "/etc/raksh-marker: $GUEST_SECRET" ] || fail "the container did not print the image's secret"
[ "$on_node" = 0 ] || fail "a layer of the guest-pulled image is on the node"
ok "0 layer bytes on the node"

section "3g. An unmodified pod through the CRI, sealed on the node by raksh-nri"
"$BIN/raksh-testimage" -pause -o "$DEMO/client/pause.tar"
ctrk8s image import --local "$DEMO/client/pause.tar" >/dev/null
ctrk8s image import --local "$DEMO/client/busybox.tar" >/dev/null
NODE_SECRET="nri-$(rnd)"
# The Pod spec as the kubelet would send it: env in clear (from the API server).
printf 'DB_PASSWORD=%s\n' "$NODE_SECRET" >"$DEMO/client/pod.env"
want="$(printf '%s' "$NODE_SECRET" | sha256sum | cut -c1-16)"
info "pod default/web, runtimeClassName raksh, env DB_PASSWORD=<secret>; no rakshctl, no annotation"
info "\$ raksh-cri run -pod web -container app -image $IMAGE -env-file pod.env -- sh -c '... sha256 of \$DB_PASSWORD ...'"
out="$("$BIN/raksh-cri" -address "$DEMO/containerd.sock" run -pod web -container app -image "$IMAGE" \
	-env-file "$DEMO/client/pod.env" -log-dir "$DEMO/pods/logs/web" -- \
	sh -c 'echo "sha256(DB_PASSWORD) in the guest: $(printf %s "$DB_PASSWORD" | sha256sum | cut -c1-16)"' 2>&1)" ||
	{ echo "$out" | indent; fail "the CRI pod did not run"; }
cid="$(echo "$out" | sed -n 's/.* container \([0-9a-f]*\)$/\1/p')"
info "node saw (ctr -n k8s.io containers info: the OCI spec containerd hands the shim):"
ctrk8s containers info "$cid" | grep -o '"DB_PASSWORD=[^"]*"' | sed 's/^/env /' | indent
ctrk8s containers info "$cid" | grep -o '"io.raksh.envelope": "{\\"protected\\":\\"[A-Za-z0-9_-]\{24\}' | sed 's/$/.../' | indent
info "guest ran:"
echo "$out" | sed -n 's/^log: //p' | indent
echo "$out" | grep -qx "log: sha256(DB_PASSWORD) in the guest: $want" || fail "the guest did not get DB_PASSWORD from the envelope"
ctrk8s containers info "$cid" | grep -q '"DB_PASSWORD=raksh-sealed"' || fail "the OCI spec still carries DB_PASSWORD in clear"
ok "raksh-nri sealed DB_PASSWORD on the node; the guest unsealed it after attestation (sha256 prefix $want matches)"

section "4. rakshctl audit on the node"
# The owner's secrets: the sealed env value and file, both images'
# contents, and a piece of the image's layer key.
layer_key_piece="$(grep -v -- ----- "$DEMO/client/layer.key" | tr -d '\n' | cut -c200-263)"
printf '%s\n' "$API_TOKEN" "$DB_PASSWORD" "$IMAGE_SECRET" "$GUEST_SECRET" "$layer_key_piece" >"$DEMO/client/owner-markers"
printf '%s\n' "$NODE_SECRET" >"$DEMO/client/node-markers"
audit() {
	"$BIN/rakshctl" audit --address "$DEMO/containerd.sock" --containerd-root "$DEMO/root" --containerd-state "$DEMO/state" \
		--snapshotter-root "$DEMO/snap" --runtime-state "$RUNDIR" --log "$DEMO/containerd.log" --log "$DEMO/pods" \
		--log "$DEMO/snapshotter.log" "$@"
}
info "\$ rakshctl audit --marker-file owner-markers (5 owner secrets) --containerd-root ... --runtime-state ..."
status=0
audit --marker-file "$DEMO/client/owner-markers" >"$DEMO/client/audit.txt" 2>&1 || status=$?
info "per raksh container (here the node-sealed CRI container; the pod's sandbox is listed too):"
awk -v RS= -v ORS='\n\n' '/^== container/ && /bound to/' "$DEMO/client/audit.txt" | grep -v '^annotation *io.kubernetes\|^mount  *\/\(proc\|dev\|sys\)' | indent
sed -n '/^searched for/,$p' "$DEMO/client/audit.txt" | indent
[ "$status" = 0 ] || fail "rakshctl audit exited $status: an owner secret is on the node, or a place could not be read"
ok "none of the owner's secrets on the node (exit 0)"
info "\$ rakshctl audit --marker-file node-markers   (the value raksh-nri sealed on the node)"
status=0
audit --marker-file "$DEMO/client/node-markers" >"$DEMO/client/audit-node.txt" 2>&1 || status=$?
grep '^FOUND' "$DEMO/client/audit-node.txt" | indent
[ "$status" = 1 ] || fail "expected the node-sealed value in containerd's CRI metadata (exit 1), got $status"
if grep '^FOUND' "$DEMO/client/audit-node.txt" | grep -vq ' in containerd-root '; then
	fail "the node-sealed value is somewhere other than containerd's root"
fi
ok "node sealing protects the spec, bundle, shim, VM and logs; containerd itself keeps the kubelet's config"
info "   (its metadata, see docs/nri.md): for secrets the node must never hold, seal on the owner's side"

section "Done"
info "stopping containerd, the broker and the VMs, removing $DEMO"
