// Package wire holds the stream conventions shared by the shim and the agent
// beside the agent API (api/agent/v1): stream names, the tar rootfs mount
// type and id checks. Both ends import it so the protocol is defined in one
// place.
package wire

import (
	"fmt"
	"strings"
)

// RootfsTar is the rootfs mount type whose Source names a stream carrying a
// tar archive of the container's root filesystem.
const RootfsTar = "raksh.tar"

// BlobStream returns the name of the stream carrying the n-th (from 0)
// occurrence, bottom to top, of the cached layer blob digest among the BLOB
// layers of a container's rootfs descriptor (agentapi.RootfsDescriptor, in
// the CreateContainerOptions of its create request; the host never unpacks
// such a rootfs). The shim opens them in
// layer order, one after the other; the guest checks every blob's digest.
func BlobStream(containerID, digest string, n int) string {
	return fmt.Sprintf("blob/%s/%s/%d", containerID, digest, n)
}

// StdioStream returns the name of a stdio stream of a process. fd is
// "stdin", "stdout" or "stderr"; execID is empty for a container's init,
// which is named "." (an exec id can never be ".", see ValidID).
func StdioStream(containerID, execID, fd string) string {
	if execID == "" {
		execID = "."
	}
	return fmt.Sprintf("io/%s/%s/%s", containerID, execID, fd)
}

// RootfsStream returns the name of the stream carrying a container's rootfs.
func RootfsStream(containerID string) string { return "rootfs/" + containerID }

// ProxyPrefix starts the name of a stream the agent opens to reach a
// host-side service (key broker, registry) through the shim. The rest of
// the name is a target the runtime config allow-lists.
const ProxyPrefix = "proxy/"

// ValidID reports whether id is safe as a path element and stream name part.
func ValidID(id string) error {
	if id == "" || len(id) > 128 || id == "." || id == ".." || strings.ContainsAny(id, "/\x00") {
		return fmt.Errorf("invalid id %q", id)
	}
	return nil
}

// RootfsErofs is the rootfs mount type of one read-only layer of a plain
// image that the shim hot-plugged as an erofs virtio-blk disk. The agent
// gets one such mount per layer, topmost first (overlayfs lowerdir order),
// each with Source = the disk's serial (LayerSerial); it stacks them with
// overlayfs under a writable upper directory in the guest. No host path is
// passed.
const RootfsErofs = "raksh.erofs"

// layerSerialPrefix starts the virtio-blk serial of a layer disk.
const layerSerialPrefix = "raksh-ro-"

// LayerSerial is the virtio-blk serial of the n-th layer disk hot-plugged
// into a VM (at most 20 bytes, virtio-blk's limit).
func LayerSerial(n int) string { return fmt.Sprintf("%s%d", layerSerialPrefix, n) }

// ParseLayerSerial returns n of a serial made by LayerSerial, or an error
// for anything else.
func ParseLayerSerial(s string) (int, error) {
	num, ok := strings.CutPrefix(s, layerSerialPrefix)
	if !ok || num == "" || len(num) > 9 || (len(num) > 1 && num[0] == '0') {
		return 0, fmt.Errorf("invalid layer disk serial %q", s)
	}
	n := 0
	for _, c := range num {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("invalid layer disk serial %q", s)
		}
		n = n*10 + int(c-'0')
	}
	return n, nil
}
