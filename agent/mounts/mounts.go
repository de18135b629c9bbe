// Package mounts decides how the mounts of a container spec written on the
// node reach the guest.
//
// The node is untrusted and writes every bind mount's source as a path on
// the node. The guest's own filesystem at that path (the agent's state and
// bundles under /run, the initrd's keys under /etc/raksh) is never what the
// container gets: a bind mount is either delivered (its content was copied
// into the guest by the shim, or it is a guest-side replacement such as the
// pod's shared /dev/shm) or refused with an error naming it. Filesystems the
// guest kernel creates for the container (proc, sysfs, tmpfs, ...) are kept;
// any other mount kind is refused.
package mounts

import (
	"fmt"
	"path"
	"slices"
	"strings"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// guestFS are the filesystem types the guest kernel creates afresh for a
// container: their source is only a label, nothing of the node or of the
// guest's own files is reached through them.
var guestFS = map[string]bool{
	"proc": true, "sysfs": true, "devpts": true, "mqueue": true, "tmpfs": true,
	"cgroup": true, "cgroup2": true,
}

// ShmDestination is where CRI binds the pod's shared memory directory.
const ShmDestination = "/dev/shm"

// DefaultShmSize is the size of a container's own /dev/shm when the pod
// provides none (runc's and containerd's default).
const DefaultShmSize = "65536k"

// Resolved is the guest side of a delivered bind mount.
type Resolved struct {
	// Path is the guest directory or file bound at the destination.
	Path string
	// ReadOnly forces a read-only bind whatever the spec says (copies the
	// agent updates are never writable by the container).
	ReadOnly bool
	// Shared marks an entry of the pod's virtio-fs share. The node's bind
	// of it is already read-only as the spec asks (ro: its top mount only,
	// as runc; rro: recursively), so a plain "ro" is not repeated in the
	// guest, where the whole share is one mount and "ro" would also cover
	// the node's submounts; "rro" is kept.
	Shared bool
}

// Resolver returns what was delivered in the guest for the bind mount m
// (copied kubelet volumes, the pod's emptyDirs and /dev/shm), and whether
// there is something.
type Resolver func(m specs.Mount) (Resolved, bool)

// IsBind reports whether m is a bind mount, whose source is a path.
func IsBind(m specs.Mount) bool {
	return m.Type == "bind" || slices.Contains(m.Options, "bind") || slices.Contains(m.Options, "rbind")
}

// Describe names a mount in errors and logs: "bind mount of /etc/raksh at /x".
func Describe(m specs.Mount) string {
	kind := m.Type
	if IsBind(m) {
		kind = "bind"
	}
	if kind == "" {
		kind = "untyped"
	}
	return fmt.Sprintf("%s mount of %q at %q", kind, m.Source, m.Destination)
}

// Rewrite returns the mounts of a node-written spec as the guest runs them.
// Guest-created filesystems are kept (their source set to their type);
// every bind mount is replaced by a bind of the guest path resolve returns
// for it, or, for /dev/shm with nothing resolved, by a private tmpfs; any
// other bind mount and any other mount kind is refused with an
// errdefs.ErrInvalidArgument error naming each refused mount. The source
// of a bind mount is never looked up in the guest's filesystem.
func Rewrite(ms []specs.Mount, resolve Resolver) ([]specs.Mount, error) {
	var (
		out     []specs.Mount
		refused []string
	)
	for _, m := range ms {
		if !path.IsAbs(m.Destination) {
			refused = append(refused, fmt.Sprintf("%s: destination is not an absolute path", Describe(m)))
			continue
		}
		switch {
		case IsBind(m):
			if r, ok := resolveMount(resolve, m); ok {
				opts := bindOptions(m.Options)
				if r.Shared {
					opts = slices.DeleteFunc(opts, func(o string) bool { return o == "ro" })
				}
				if r.ReadOnly && !slices.Contains(opts, "ro") {
					opts = append(opts, "ro")
				}
				out = append(out, specs.Mount{Destination: m.Destination, Type: "bind", Source: r.Path, Options: opts})
				continue
			}
			if path.Clean(m.Destination) == ShmDestination {
				out = append(out, specs.Mount{Destination: m.Destination, Type: "tmpfs", Source: "shm",
					Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=" + DefaultShmSize}})
				continue
			}
			refused = append(refused, fmt.Sprintf("%s: a node path cannot reach the guest (only kubelet volumes, CRI's files and emptyDir are delivered; node paths are shared only with shared_fs = \"virtio-fs\" in the runtime config; see docs/volumes.md)", Describe(m)))
		case guestFS[m.Type]:
			m.Source = m.Type
			out = append(out, m)
		default:
			refused = append(refused, fmt.Sprintf("%s: mount type %q is not supported in the guest", Describe(m), m.Type))
		}
	}
	if len(refused) > 0 {
		return nil, fmt.Errorf("refusing %s: %w", strings.Join(refused, "; "), errdefs.ErrInvalidArgument)
	}
	return out, nil
}

func resolveMount(resolve Resolver, m specs.Mount) (Resolved, bool) {
	if resolve == nil {
		return Resolved{}, false
	}
	return resolve(m)
}

// bindOptions keeps the options of a bind mount that make sense for a
// guest copy: read-only, bind/rbind, propagation and nosuid/nodev/noexec.
func bindOptions(opts []string) []string {
	out := []string{"rbind"}
	for _, o := range opts {
		switch o {
		case "ro", "rro", "nosuid", "nodev", "noexec", "rprivate", "private", "rslave", "slave":
			out = append(out, o)
		}
	}
	return out
}

// CheckDevices refuses the device nodes a spec asks for (linux.devices):
// they name the node's devices by path and number, and the same numbers in
// the guest are the guest's own devices (its virtio ports and disks). The
// error names each device.
func CheckDevices(l *specs.Linux) error {
	if l == nil || len(l.Devices) == 0 {
		return nil
	}
	var names []string
	for _, d := range l.Devices {
		names = append(names, fmt.Sprintf("%s (%s %d:%d)", d.Path, d.Type, d.Major, d.Minor))
	}
	return fmt.Errorf("refusing node devices %s: a node device cannot reach the guest, and its numbers there name the guest's own devices: %w",
		strings.Join(names, ", "), errdefs.ErrInvalidArgument)
}

// HookCount returns how many OCI hooks a spec carries.
func HookCount(h *specs.Hooks) int {
	if h == nil {
		return 0
	}
	return len(h.Prestart) + len(h.CreateRuntime) + len(h.CreateContainer) + len(h.StartContainer) + len(h.Poststart) + len(h.Poststop)
}
