#!/usr/bin/env bash
# Generates the agent API's Go code (api/agent/v1/*.pb.go) from every .proto
# file in api/agent/v1, with tools pinned here and installed from the Go
# module proxy into $OUTPUT_DIR/tools. containerd's protos that ours import
# (types/event.proto for containerd.types.Envelope) come from the Go module
# cache at the version go.mod requires; their Go types are imported, never
# generated again.
#
#   hack/protos.sh          regenerate in place
#   hack/protos.sh check    regenerate into a temporary directory and fail,
#                           naming them, if committed files are stale
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUTPUT_DIR=${OUTPUT_DIR:-$ROOT/_output}
TOOLS=$OUTPUT_DIR/tools
# buf.yaml names this include directory; buf wants it inside the workspace.
INCLUDE=$ROOT/_output/protos/containerd-api
API_DIR=api/agent/v1

BUF_VERSION=v1.75.0
PROTOC_GEN_GO_VERSION=v1.36.12
PROTOC_GEN_GO_TTRPC_VERSION=v1.2.10

# tool BINARY PACKAGE VERSION installs PACKAGE@VERSION as TOOLS/BINARY
# unless that version is already there.
tool() {
	local bin=$1 pkg=$2 version=$3 stamp=$TOOLS/.$1.version
	if [[ -x $TOOLS/$bin && "$(cat "$stamp" 2>/dev/null)" == "$version" ]]; then
		return
	fi
	echo "installing $pkg@$version into $TOOLS" >&2
	GOBIN=$TOOLS go install "$pkg@$version"
	echo "$version" >"$stamp"
}

mkdir -p "$TOOLS"
tool buf github.com/bufbuild/buf/cmd/buf "$BUF_VERSION"
tool protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go "$PROTOC_GEN_GO_VERSION"
tool protoc-gen-go-ttrpc github.com/containerd/ttrpc/cmd/protoc-gen-go-ttrpc "$PROTOC_GEN_GO_TTRPC_VERSION"
export PATH=$TOOLS:$PATH

# containerd's API protos, as its Go package registers them ("types/...").
ctrd=$(go mod download -json github.com/containerd/containerd/api | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
if [[ ! -f $ctrd/types/event.proto ]]; then
	echo "containerd API protos not found in the module cache (${ctrd:-no Dir})" >&2
	exit 1
fi
rm -rf "$INCLUDE"
mkdir -p "$INCLUDE/types"
cp "$ctrd"/types/*.proto "$INCLUDE/types/"
chmod -R u+w "$INCLUDE"

case ${1:-generate} in
generate)
	rm -f "$API_DIR"/*.pb.go
	buf generate
	;;
check)
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	buf generate -o "$tmp"
	stale=()
	for f in "$tmp/$API_DIR"/*.pb.go; do
		committed=$API_DIR/${f##*/}
		cmp -s "$f" "$committed" || stale+=("$committed")
	done
	for f in "$API_DIR"/*.pb.go; do
		[[ -e $f ]] || continue
		[[ -e $tmp/$API_DIR/${f##*/} ]] || stale+=("$f (no .proto generates it)")
	done
	if ((${#stale[@]})); then
		echo "generated code is stale; run 'make protos' and commit:" >&2
		printf '  %s\n' "${stale[@]}" >&2
		exit 1
	fi
	echo "generated code is up to date"
	;;
*)
	echo "usage: $0 [generate|check]" >&2
	exit 2
	;;
esac
