package volumes

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// ShareID is the opaque id of a container's shared mount in the pod's
// virtio-fs share: "v" and 32 hex digits of a digest of the container id
// and the destination. It names a single entry of the share and is all the
// guest learns of the mount's node path.
func ShareID(container, destination string) string {
	sum := sha256.Sum256([]byte(container + "\x00" + destination))
	return "v" + hex.EncodeToString(sum[:16])
}

// Share binds node paths into a pod's virtio-fs share directory (the
// directory virtiofsd exports, see runtime/vm), one entry per shared
// mount, named by ShareID.
type Share struct {
	dir string

	mu    sync.Mutex
	binds map[string][]string // container -> share ids
}

// NewShare returns a Share binding into dir (which must exist).
func NewShare(dir string) *Share {
	return &Share{dir: dir, binds: map[string][]string{}}
}

// bindFlags is how a spec's bind options map onto the node's bind of the
// source into the share.
type bindFlags struct {
	recursive bool   // rbind
	readOnly  bool   // ro: the top mount only, as runc does
	rro       bool   // rro: every mount under it (mount_setattr AT_RECURSIVE)
	prop      uint64 // MS_PRIVATE or MS_SLAVE
	shared    bool   // rslave/rshared: the bind is also shared, so that what
	// the node mounts under the source reaches virtiofsd's namespace
}

func parseBind(opts []string) bindFlags {
	f := bindFlags{prop: unix.MS_PRIVATE}
	for _, o := range opts {
		switch o {
		case "rbind":
			f.recursive = true
		case "ro":
			f.readOnly = true
		case "rro":
			f.readOnly, f.rro = true, true
		case "rslave", "slave", "rshared", "shared":
			f.prop, f.shared = unix.MS_SLAVE, true
		case "rprivate", "private":
			f.prop, f.shared = unix.MS_PRIVATE, false
		}
	}
	return f
}

// Bind binds v's node path into the share under id. The bind is a
// detached clone of the source (open_tree), made read-only (recursively
// for rro) and given its propagation before it is attached: the guest never
// sees it writable, and mounts the node makes under the source later reach
// the guest only for rslave/rshared. Only directories and regular files
// are shared.
func (s *Share) Bind(container, id string, v Volume) (retErr error) {
	st, err := os.Stat(v.Source)
	if err != nil {
		return fmt.Errorf("bind mount of %q at %q: %w", v.Source, v.Destination, err)
	}
	if !st.IsDir() && !st.Mode().IsRegular() {
		return fmt.Errorf("bind mount of %q at %q: a %s cannot be shared with the guest (only directories and regular files): %w",
			v.Source, v.Destination, describeMode(st.Mode()), errdefs.ErrInvalidArgument)
	}
	f := parseBind(v.Options)
	flags := uint(unix.OPEN_TREE_CLONE | unix.OPEN_TREE_CLOEXEC)
	if f.recursive {
		flags |= unix.AT_RECURSIVE
	}
	fd, err := unix.OpenTree(unix.AT_FDCWD, v.Source, flags)
	if err != nil {
		return fmt.Errorf("clone the mount of %q for the virtio-fs share: %w", v.Source, err)
	}
	defer unix.Close(fd)
	rec := uint(0)
	if f.recursive {
		rec = unix.AT_RECURSIVE
	}
	if err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH|rec, &unix.MountAttr{Propagation: f.prop}); err != nil {
		return fmt.Errorf("set the propagation of %q in the virtio-fs share: %w", v.Source, err)
	}
	if f.shared {
		if err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH|rec, &unix.MountAttr{Propagation: unix.MS_SHARED}); err != nil {
			return fmt.Errorf("set the propagation of %q in the virtio-fs share: %w", v.Source, err)
		}
	}
	if f.readOnly {
		ro := uint(0)
		if f.rro {
			ro = unix.AT_RECURSIVE
		}
		if err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH|ro, &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY}); err != nil {
			return fmt.Errorf("make the share of %q read-only: %w", v.Source, err)
		}
	}
	target := filepath.Join(s.dir, id)
	if st.IsDir() {
		err = os.Mkdir(target, 0o700)
	} else {
		var tf *os.File
		if tf, err = os.OpenFile(target, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600); err == nil {
			tf.Close()
		}
	}
	if err != nil {
		return fmt.Errorf("virtio-fs share entry for %q: %w", v.Source, err)
	}
	if err := unix.MoveMount(fd, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		os.Remove(target)
		return fmt.Errorf("attach the share of %q: %w", v.Source, err)
	}
	s.mu.Lock()
	s.binds[container] = append(s.binds[container], id)
	s.mu.Unlock()
	return nil
}

// Unbind detaches container's binds from the share and removes their
// entries. An entry still mounted is left in place (removing through it
// would reach the node's files).
func (s *Share) Unbind(container string) error {
	s.mu.Lock()
	ids := s.binds[container]
	delete(s.binds, container)
	s.mu.Unlock()
	var errs []error
	for _, id := range slices.Compact(slices.Sorted(slices.Values(ids))) {
		target := filepath.Join(s.dir, id)
		if err := unix.Unmount(target, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", target, err))
			continue
		}
		if err := os.Remove(target); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func describeMode(m fs.FileMode) string {
	switch {
	case m&fs.ModeSocket != 0:
		return "socket"
	case m&fs.ModeNamedPipe != 0:
		return "named pipe"
	case m&fs.ModeDevice != 0:
		return "device"
	}
	return "special file"
}

// sharedCandidate reports whether a bind mount the shim does not copy may
// be shared: any but CRI's /dev/shm (the pod's guest tmpfs).
func sharedCandidate(m specs.Mount) bool {
	return filepath.Clean(m.Destination) != "/dev/shm"
}
