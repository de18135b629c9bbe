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
#      (d) the same envelope in another container is refused.
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
IMAGE="docker.io/raksh/busybox:demo"
KID="kbs:///default/workload/demo"
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

CONTAINERD_PID="" KBS_PID="" SEALED_PID=""
# ctr against the demo's containerd, without its cgroup v1 deprecation notes.
ctr() {
	{ "$DEPS/ctr" --address "$DEMO/containerd.sock" --namespace default "$@" 2>&1 1>&3 3>&- |
		{ grep -v DEPRECATION || true; } >&2; } 3>&1
}

cleanup() {
	set +e
	[ -n "$SEALED_PID" ] && kill "$SEALED_PID" 2>/dev/null
	if [ -n "$CONTAINERD_PID" ]; then
		for t in $(ctr task ls -q 2>/dev/null); do
			ctr task kill -s SIGKILL "$t" >/dev/null 2>&1
			ctr task delete --force "$t" >/dev/null 2>&1
		done
		for c in $(ctr container ls -q 2>/dev/null); do ctr container rm "$c" >/dev/null 2>&1; done
		kill "$CONTAINERD_PID" 2>/dev/null
		for _ in $(seq 150); do kill -0 "$CONTAINERD_PID" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$CONTAINERD_PID" 2>/dev/null
	fi
	[ -n "$KBS_PID" ] && kill "$KBS_PID" 2>/dev/null && wait "$KBS_PID" 2>/dev/null
	# QEMU processes of this demo's VMs, should a shim have left one.
	for p in /proc/[0-9]*; do
		if tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -q "^qemu.*$DEMO/"; then kill -9 "${p#/proc/}" 2>/dev/null; fi
	done
	# Mounts under the demo directory, deepest first.
	awk -v d="$DEMO/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r | while read -r m; do umount -l "$m"; done
	rm -rf "$DEMO"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

section "0. Build"
if [ -z "${MAKELEVEL:-}" ]; then make -C "$ROOT" --no-print-directory build >/dev/null; fi
(cd "$ROOT" && go build -o "$BIN/raksh-testimage" ./internal/cmd/raksh-testimage)
for b in containerd-shim-raksh-v2 raksh-kbs rakshctl raksh-testimage; do [ -x "$BIN/$b" ] || fail "$BIN/$b not built"; done
[ -s "$OUT/initrd.img" ] && [ -s "$OUT/keys/sim-platform.pub" ] || fail "initrd or sim platform key missing: run make build"
info "binaries in $BIN, guest kernel $(cat "$OUT/deps/kernel/package" 2>/dev/null || echo "$OUT/deps/kernel/vmlinuz")"
info "initrd $OUT/initrd.img (agent, runc, sim platform key)"

rm -rf "$DEMO"
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

section "2. Private containerd with the Raksh runtime on the simulated TEE"
cat >"$DEMO/runtime.toml" <<EOF
qemu_path = "qemu-system-x86_64"
kernel = "$OUT/deps/kernel/vmlinuz"
initrd = "$OUT/initrd.img"
accel = "auto"
memory_mib = 512
vcpus = 1
boot_timeout = "3m"
state_dir = "$DEMO/run"
debug = true
tee = "sim"

[proxy]
kbs = "$KBS_ADDR"
EOF
sed "s#/etc/raksh/runtime.toml#$DEMO/runtime.toml#" "$ROOT/contrib/containerd/conf.d/10-raksh-runtime.toml" >"$DEMO/10-raksh-runtime.toml"
cat >"$DEMO/config.toml" <<EOF
version = 3
root = "$DEMO/root"
state = "$DEMO/state"
imports = ["$DEMO/10-raksh-runtime.toml"]
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.blockfile", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "$DEMO/containerd.sock"
[ttrpc]
  address = "$DEMO/containerd.sock.ttrpc"
[debug]
  level = "info"
EOF
PATH="$BIN:$DEPS:$PATH" RAKSH_RUNTIME_CONFIG="$DEMO/runtime.toml" \
	setsid "$DEPS/containerd" --config "$DEMO/config.toml" >"$DEMO/containerd.log" 2>&1 &
CONTAINERD_PID=$!
for _ in $(seq 300); do ctr version >/dev/null 2>&1 && break; sleep 0.1; done
ctr version >/dev/null 2>&1 || { tail -20 "$DEMO/containerd.log" >&2; fail "containerd did not come up"; }
info "containerd $("$DEPS/containerd" --version | awk '{print $3}'), socket $DEMO/containerd.sock"
info "runtime config $DEMO/runtime.toml: tee = \"sim\", [proxy] kbs = \"$KBS_ADDR\""
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
"$BIN/rakshctl" keys generate --alg ec-p256 --private "$DEMO/client/workload.key" --public "$DEMO/client/workload.pub" --kid "$KID" >/dev/null
"$BIN/rakshctl" kbs resource set --file "$DEMO/client/workload.key" "${KID#kbs:///}" | indent
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
"$BIN/rakshctl" seal -f "$DEMO/client/pod.yaml" --recipient "$DEMO/client/workload.pub" --kid "$KID" \
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
HOST_DIRS=("$DEMO/root" "$DEMO/state" "$DEMO/run" "$DEMO/containerd.log" "$DEMO/kbs")
hits_running="$(grep -rlF -D skip -e "$API_TOKEN" -e "$DB_PASSWORD" "${HOST_DIRS[@]}" 2>/dev/null || true)"
cp "$BUNDLE" "$DEMO/client/bundle-config.json"
exec_out="$(ctr task exec --exec-id peek raksh-sealed cat /proc/1/environ 2>&1)" && exec_status=0 || exec_status=$?
consoles="$(find "$DEMO/run" -name console.log | wc -l)"
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

section "Done"
info "stopping containerd, the broker and the VMs, removing $DEMO"
