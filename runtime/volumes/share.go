package volumes

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
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
// mount, named by ShareID. The binds are attached in virtiofsd's mount
// namespace only (whose root is the share): on the node an entry is an
// empty directory or file, so a node path bound into the share is never a
// mount point in the node's namespace (the node can still unmount and
// remove what is under it, as with runc's containers), and every bind ends
// with virtiofsd's namespace, however the pod ends.
type Share struct {
	dir     string
	pidFile string

	mu    sync.Mutex
	binds map[string][]string // container -> share ids
}

// NewShare returns a Share binding into dir (which must exist), in the
// mount namespace of the virtiofsd whose pid pidFile holds.
func NewShare(dir, pidFile string) *Share {
	return &Share{dir: dir, pidFile: pidFile, binds: map[string][]string{}}
}

// inNamespace runs fn on a thread of its own in the mount namespace of
// s's virtiofsd, where "/" is the share. The thread is discarded after.
func (s *Share) inNamespace(fn func() error) error {
	b, err := os.ReadFile(s.pidFile)
	if err != nil {
		return fmt.Errorf("virtiofsd of the pod: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return fmt.Errorf("virtiofsd pid file %s: %q", s.pidFile, b)
	}
	ns, err := os.Open(fmt.Sprintf("/proc/%d/ns/mnt", pid))
	if err != nil {
		return fmt.Errorf("virtiofsd of the pod: %w", err)
	}
	defer ns.Close()
	if cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); !strings.Contains(string(cmd), "virtiofsd") || !strings.Contains(string(cmd), s.dir) {
		return fmt.Errorf("process %d is not the pod's virtiofsd", pid)
	}
	own, err := os.Readlink("/proc/thread-self/ns/mnt")
	if err != nil {
		return err
	}
	if theirs, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid)); err != nil || theirs == own {
		return fmt.Errorf("virtiofsd %d has no mount namespace of its own (%v)", pid, err)
	}
	return runInMountNS(ns, fn)
}

// nsWorker is one goroutine locked for good to an OS thread of its own
// (with its own filesystem attributes, CLONE_FS unshared), which enters a
// mount namespace for each request and returns to the shim's after. The
// thread never exits: a thread's exit sends the parent-death signal to
// the processes it forked (QEMU and virtiofsd are started with
// Pdeathsig), and a thread Go hands to LockOSThread may have forked them.
var nsWorker struct {
	once sync.Once
	reqs chan nsReq
}

type nsReq struct {
	ns   *os.File
	fn   func() error
	done chan error
}

// runInMountNS runs fn on the worker thread inside the mount namespace ns.
func runInMountNS(ns *os.File, fn func() error) error {
	nsWorker.once.Do(func() {
		nsWorker.reqs = make(chan nsReq)
		go nsLoop(nsWorker.reqs)
	})
	r := nsReq{ns: ns, fn: fn, done: make(chan error, 1)}
	nsWorker.reqs <- r
	return <-r.done
}

func nsLoop(reqs chan nsReq) {
	runtime.LockOSThread() // never unlocked (see nsWorker)
	own, err := os.Open("/proc/thread-self/ns/mnt")
	if err == nil {
		if uerr := unix.Unshare(unix.CLONE_FS); uerr != nil {
			err = fmt.Errorf("unshare: %w", uerr)
		}
	}
	for r := range reqs {
		if err != nil {
			r.done <- fmt.Errorf("mount namespace worker: %w", err)
			continue
		}
		if serr := unix.Setns(int(r.ns.Fd()), unix.CLONE_NEWNS); serr != nil {
			r.done <- fmt.Errorf("enter virtiofsd's mount namespace: %w", serr)
			continue
		}
		ferr := r.fn()
		if serr := unix.Setns(int(own.Fd()), unix.CLONE_NEWNS); serr != nil {
			// Stuck in another namespace: refuse everything from now on.
			err = fmt.Errorf("return to the shim's mount namespace: %w", serr)
		}
		r.done <- ferr
	}
}

// bindFlags is how a spec's bind options map onto the node's bind of the
// source into the share.
type bindFlags struct {
	recursive bool   // rbind
	readOnly  bool   // ro: the top mount only, as runc does
	rro       bool   // rro: every mount under it (mount_setattr AT_RECURSIVE)
	prop      uint64 // MS_PRIVATE, or MS_SLAVE for rslave/rshared: what the
	// node mounts under the source later reaches virtiofsd's namespace
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
			f.prop = unix.MS_SLAVE
		case "rprivate", "private":
			f.prop = unix.MS_PRIVATE
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
	err = s.inNamespace(func() error {
		return unix.MoveMount(fd, "", unix.AT_FDCWD, "/"+id, unix.MOVE_MOUNT_F_EMPTY_PATH)
	})
	if err != nil {
		os.Remove(target)
		return fmt.Errorf("attach the share of %q: %w", v.Source, err)
	}
	s.mu.Lock()
	s.binds[container] = append(s.binds[container], id)
	s.mu.Unlock()
	return nil
}

// Unbind detaches container's binds from the share (in virtiofsd's
// namespace; if virtiofsd is gone, so are they) and removes their empty
// entries on the node.
func (s *Share) Unbind(container string) error {
	s.mu.Lock()
	ids := slices.Compact(slices.Sorted(slices.Values(s.binds[container])))
	delete(s.binds, container)
	s.mu.Unlock()
	if len(ids) == 0 {
		return nil
	}
	var errs []error
	err := s.inNamespace(func() error {
		for _, id := range ids {
			if err := unix.Unmount("/"+id, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, fmt.Errorf("unmount share entry %s: %w", id, err))
			}
		}
		return nil
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, err)
	}
	for _, id := range ids {
		// An empty directory or file on the node (a mount of it in
		// another namespace would be detached by the removal).
		if err := os.Remove(filepath.Join(s.dir, id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
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
