#!/bin/sh
# install.sh installs Raksh onto a node running containerd v2 (the role of
# kata-deploy) and removes it again. The raksh-deploy DaemonSet runs it from
# its image with the node's root mounted at $HOST_ROOT:
#
#   install.sh install     copy binaries, kernel and initrd; write the shim's
#                          runtime.toml and containerd drop-ins for the
#                          runtime handler, raksh-snapshotter (proxy_plugins)
#                          and NRI; install and start the node services;
#                          restart containerd
#   install.sh uninstall   undo all of it and restart containerd
#
# Every path is configurable (the integration test points them at a private
# containerd). Files it writes carry the marker below; uninstall removes only
# those, so an administrator's own files survive.
set -eu

MARKER="# Installed by the Raksh node installer (contrib/kubernetes/installer/install.sh)."

HOST_ROOT="${HOST_ROOT-/host}"
PAYLOAD="${PAYLOAD:-/opt/raksh-payload}"
INSTALL_DIR="${INSTALL_DIR:-/opt/raksh}"
RAKSH_ETC="${RAKSH_ETC:-/etc/raksh}"
RAKSH_STATE_DIR="${RAKSH_STATE_DIR:-/run/raksh}"
CONTAINERD_CONFIG="${CONTAINERD_CONFIG:-/etc/containerd/config.toml}"
CONTAINERD_CONF_DIR="${CONTAINERD_CONF_DIR:-/etc/containerd/conf.d}"
CONTAINERD_ADDRESS="${CONTAINERD_ADDRESS:-/run/containerd/containerd.sock}"
SNAPSHOTTER_SOCKET="${SNAPSHOTTER_SOCKET:-/run/raksh-snapshotter/snapshotter.sock}"
SYSTEMD_DIR="${SYSTEMD_DIR:-/etc/systemd/system}"
# NRI_REQUIRED=true makes containerd refuse every container raksh-nri did
# not process (fail closed for the whole node; see docs/nri.md).
NRI_REQUIRED="${NRI_REQUIRED:-false}"
# Commands run on the host (the DaemonSet shares the host's PID namespace).
HOST_EXEC="${HOST_EXEC:-nsenter --target 1 --mount --uts --ipc --net --pid --}"
# SYSTEMCTL="" skips the node services (no systemd on the node).
SYSTEMCTL="${SYSTEMCTL-$HOST_EXEC systemctl}"
RESTART_CONTAINERD="${RESTART_CONTAINERD:-$HOST_EXEC systemctl restart containerd}"

log() { echo "raksh-installer: $*" >&2; }
die() { log "error: $*"; exit 1; }
# h maps a node path to where the node's root is mounted here.
h() { printf '%s%s' "$HOST_ROOT" "$1"; }
SERVICES="raksh-snapshotter raksh-nri"

marked() { [ -f "$1" ] && head -n 1 "$1" | grep -qxF "$MARKER"; }

# write_file DEST MODE: stdin to DEST (a node path) with the marker on top.
# A file the installer did not write is never overwritten.
write_file() {
	dest="$(h "$1")"
	if [ -e "$dest" ] && ! marked "$dest"; then
		die "$1 exists and was not written by the installer; move it away first"
	fi
	mkdir -p "$(dirname "$dest")"
	{ echo "$MARKER"; cat; } >"$dest.tmp"
	chmod "$2" "$dest.tmp"
	mv "$dest.tmp" "$dest"
}

# imports_glob is the containerd imports entry for the drop-in directory.
imports_glob() { printf '%s/*.toml' "$CONTAINERD_CONF_DIR"; }

# add_import makes containerd's config import the drop-in directory: a
# missing imports line is added after "version", a one-line imports array
# gets the glob appended. The original line is kept in a comment so that
# uninstall restores it exactly.
add_import() {
	cfg="$(h "$CONTAINERD_CONFIG")"
	[ -f "$cfg" ] || die "$CONTAINERD_CONFIG not found (set CONTAINERD_CONFIG)"
	glob="$(imports_glob)"
	if grep -qF "\"$glob\"" "$cfg"; then
		return
	fi
	n="$(grep -c '^imports *=' "$cfg" || true)"
	if [ "$n" = 0 ]; then
		grep -q '^version *= *[23]' "$cfg" || die "$CONTAINERD_CONFIG: no 'version = 2|3' line; only containerd config versions 2 and 3 are supported"
		sed -i "/^version *=/a imports = [\"$glob\"] # raksh-installer: added" "$cfg"
	elif grep -q '^imports *= *\[.*\] *$' "$cfg"; then
		orig="$(grep '^imports *=' "$cfg")"
		sed -i "s|^imports *= *\[\(.*\)\] *$|# raksh-installer: original: &\nimports = [\1, \"$glob\"]|" "$cfg"
		sed -i "s|^imports = \[ *, |imports = [|" "$cfg"
		[ -n "$orig" ] || die "cannot read the imports line of $CONTAINERD_CONFIG"
	else
		die "$CONTAINERD_CONFIG: imports spans several lines; add \"$glob\" to it by hand"
	fi
}

remove_import() {
	cfg="$(h "$CONTAINERD_CONFIG")"
	[ -f "$cfg" ] || return 0
	sed -i '/ # raksh-installer: added$/d' "$cfg"
	if grep -q '^# raksh-installer: original: ' "$cfg"; then
		sed -i "/^imports *= *\[.*\"$(imports_glob | sed 's|[/*.]|\\&|g')\"\] *$/d; s|^# raksh-installer: original: ||" "$cfg"
	fi
}

install() {
	[ -d "$PAYLOAD/bin" ] || die "payload $PAYLOAD/bin missing"
	for b in containerd-shim-raksh-v2 raksh-snapshotter raksh-nri; do
		[ -x "$PAYLOAD/bin/$b" ] || die "payload lacks bin/$b"
	done
	for f in vmlinuz initrd.img; do
		[ -f "$PAYLOAD/share/$f" ] || die "payload lacks share/$f"
	done
	log "installing into $(h "$INSTALL_DIR")"
	mkdir -p "$(h "$INSTALL_DIR")/bin" "$(h "$INSTALL_DIR")/share"
	for b in containerd-shim-raksh-v2 raksh-snapshotter raksh-nri; do
		cp "$PAYLOAD/bin/$b" "$(h "$INSTALL_DIR")/bin/$b.tmp" && mv "$(h "$INSTALL_DIR")/bin/$b.tmp" "$(h "$INSTALL_DIR")/bin/$b"
	done
	for f in vmlinuz initrd.img; do
		cp "$PAYLOAD/share/$f" "$(h "$INSTALL_DIR")/share/$f.tmp" && mv "$(h "$INSTALL_DIR")/share/$f.tmp" "$(h "$INSTALL_DIR")/share/$f"
	done
	echo "$MARKER" >"$(h "$INSTALL_DIR")/.installed"

	# The shim's configuration: contrib/raksh/runtime.toml with the
	# installed paths.
	sed -e "s|^kernel = .*|kernel = \"$INSTALL_DIR/share/vmlinuz\"|" \
		-e "s|^initrd = .*|initrd = \"$INSTALL_DIR/share/initrd.img\"|" \
		-e "s|^state_dir = .*|state_dir = \"$RAKSH_STATE_DIR\"|" \
		"$PAYLOAD/contrib/raksh/runtime.toml" | write_file "$RAKSH_ETC/runtime.toml" 0644
	if [ ! -e "$(h "$RAKSH_ETC/snapshotter.toml")" ] || marked "$(h "$RAKSH_ETC/snapshotter.toml")"; then
		sed -e "s|^address = .*|address = \"$SNAPSHOTTER_SOCKET\"|" \
			-e "s|^containerd_address = .*|containerd_address = \"$CONTAINERD_ADDRESS\"|" \
			"$PAYLOAD/contrib/raksh/snapshotter.toml" | write_file "$RAKSH_ETC/snapshotter.toml" 0644
	fi

	# containerd drop-ins: the runtime handler "raksh" (shim by absolute
	# path, so containerd's PATH needs no change), the snapshotter and NRI.
	sed -e "s|/etc/raksh/runtime.toml|$RAKSH_ETC/runtime.toml|" \
		-e "s|^\(  runtime_type = .*\)$|\1\n  runtime_path = '$INSTALL_DIR/bin/containerd-shim-raksh-v2'|" \
		"$PAYLOAD/contrib/containerd/conf.d/10-raksh-runtime.toml" | write_file "$CONTAINERD_CONF_DIR/50-raksh-runtime.toml" 0644
	sed -e "s|/run/raksh-snapshotter/snapshotter.sock|$SNAPSHOTTER_SOCKET|" \
		"$PAYLOAD/contrib/containerd/snapshotter.toml" | write_file "$CONTAINERD_CONF_DIR/50-raksh-snapshotter.toml" 0644
	if [ "$NRI_REQUIRED" = true ]; then
		cat "$PAYLOAD/contrib/nri/containerd-nri.toml"
	else
		sed '/default_validator/,$d' "$PAYLOAD/contrib/nri/containerd-nri.toml"
	fi | write_file "$CONTAINERD_CONF_DIR/50-raksh-nri.toml" 0644
	add_import

	if [ -n "$SYSTEMCTL" ]; then
		write_file "$SYSTEMD_DIR/raksh-snapshotter.service" 0644 <<UNIT
[Unit]
Description=Raksh snapshotter (containerd proxy snapshotter and differ)
Documentation=https://github.com/raksh-project/raksh/blob/main/docs/snapshotter.md
Before=containerd.service

[Service]
ExecStart=$INSTALL_DIR/bin/raksh-snapshotter -config $RAKSH_ETC/snapshotter.toml
Restart=always
RestartSec=2

[Install]
WantedBy=multi-user.target
UNIT
		sed -e "s|/usr/local/bin/raksh-nri|$INSTALL_DIR/bin/raksh-nri|" \
			-e "s|^\[Service\]|[Service]\n# Starts once the administrator provides $RAKSH_ETC/nri.yaml (contrib/nri/10-raksh.conf).|" \
			-e "s|^After=containerd.service|&\nConditionPathExists=$RAKSH_ETC/nri.yaml|" \
			"$PAYLOAD/contrib/nri/raksh-nri.service" | write_file "$SYSTEMD_DIR/raksh-nri.service" 0644
		$SYSTEMCTL daemon-reload
		$SYSTEMCTL enable --now $SERVICES
	else
		log "SYSTEMCTL empty: node services not installed"
	fi
	log "restarting containerd"
	$RESTART_CONTAINERD
	log "installed"
}

uninstall() {
	log "uninstalling from $(h "$INSTALL_DIR")"
	if [ -n "$SYSTEMCTL" ]; then
		for s in $SERVICES; do
			if marked "$(h "$SYSTEMD_DIR/$s.service")"; then
				$SYSTEMCTL disable --now "$s" || true
				rm -f "$(h "$SYSTEMD_DIR/$s.service")"
			fi
		done
		$SYSTEMCTL daemon-reload || true
	fi
	for f in "$CONTAINERD_CONF_DIR/50-raksh-runtime.toml" "$CONTAINERD_CONF_DIR/50-raksh-snapshotter.toml" \
		"$CONTAINERD_CONF_DIR/50-raksh-nri.toml" "$RAKSH_ETC/runtime.toml" "$RAKSH_ETC/snapshotter.toml"; do
		if marked "$(h "$f")"; then rm -f "$(h "$f")"; fi
	done
	rmdir "$(h "$RAKSH_ETC")" "$(h "$CONTAINERD_CONF_DIR")" 2>/dev/null || true
	remove_import
	if marked "$(h "$INSTALL_DIR")/.installed"; then
		rm -rf "$(h "$INSTALL_DIR")"
	fi
	log "restarting containerd"
	$RESTART_CONTAINERD
	log "uninstalled"
}

case "${1:-}" in
install) install ;;
uninstall) uninstall ;;
*) echo "usage: $0 install|uninstall" >&2; exit 2 ;;
esac
