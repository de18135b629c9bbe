package volumes

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"

	"github.com/containerd/errdefs"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// VirtioFSTag is the virtio-fs tag of the pod's share (the shim's
// launch.VirtioFSTag).
const VirtioFSTag = "raksh-shared"

// ValidShareID reports whether id may name an entry of the virtio-fs
// share: 1 to 64 lower-case letters and digits. It is a single path
// element by construction, never "." or "..", and carries no path of the
// node.
func ValidShareID(id string) error {
	if id == "" || len(id) > 64 {
		return fmt.Errorf("share id %q: not 1 to 64 characters: %w", id, errdefs.ErrInvalidArgument)
	}
	for _, c := range id {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') {
			return fmt.Errorf("share id %q: only lower-case letters and digits are allowed: %w", id, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}

// shareDir is where the pod's virtio-fs share is mounted in the guest.
func (s *Store) shareDir() string { return filepath.Join(s.root, "shared") }

// mountShare mounts the pod's virtio-fs share once. Device nodes in it
// are never usable (nodev): their numbers would name the guest's devices.
func (s *Store) mountShare() (string, error) {
	dir := s.shareDir()
	s.mu.Lock()
	defer s.mu.Unlock()
	if ok, _ := isMountPoint(dir); ok {
		return dir, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	if err := unix.Mount(VirtioFSTag, dir, "virtiofs", unix.MS_NODEV, ""); err != nil {
		return "", fmt.Errorf("mount the pod's virtio-fs share (tag %s; is shared_fs enabled in the runtime config?): %w", VirtioFSTag, err)
	}
	return dir, nil
}

// putShared binds the share's entry id at guest. The entry is opened
// without following a symlink and must be a directory or a regular file;
// the bind is a clone of exactly that inode (open_tree), so nothing the
// node renames or links afterwards changes what the container gets, and no
// path outside the share is ever resolved. Symlinks inside the entry are
// the container's to follow, in its own root, as under runc.
func (s *Store) putShared(guest, id string) error {
	if err := ValidShareID(id); err != nil {
		return err
	}
	dir, err := s.mountShare()
	if err != nil {
		return err
	}
	fd, isDir, err := openShareEntry(dir, id)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	tree, err := unix.OpenTree(fd, "", unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_EMPTY_PATH)
	if err != nil {
		return fmt.Errorf("clone share entry %s: %w", id, err)
	}
	defer unix.Close(tree)
	if err := os.MkdirAll(filepath.Dir(guest), 0o755); err != nil {
		return err
	}
	if ok, _ := isMountPoint(guest); ok {
		if err := unix.Unmount(guest, unix.MNT_DETACH); err != nil {
			return err
		}
	}
	os.Remove(guest)
	if isDir {
		err = os.Mkdir(guest, 0o755)
	} else {
		var f *os.File
		if f, err = os.OpenFile(guest, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644); err == nil {
			f.Close()
		}
	}
	if err != nil {
		return err
	}
	if err := unix.MoveMount(tree, "", unix.AT_FDCWD, guest, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("bind share entry %s: %w", id, err)
	}
	return nil
}

// openShareEntry opens (O_PATH) the entry id of the share mounted at dir
// without following a symlink, and returns it if it is a directory or a
// regular file.
func openShareEntry(dir, id string) (fd int, isDir bool, err error) {
	if err := ValidShareID(id); err != nil {
		return -1, false, err
	}
	root, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, false, err
	}
	defer unix.Close(root)
	fd, err = unix.Openat(root, id, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, false, fmt.Errorf("share entry %s: %w", id, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, false, err
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return fd, true, nil
	case unix.S_IFREG:
		return fd, false, nil
	}
	unix.Close(fd)
	return -1, false, fmt.Errorf("share entry %s is neither a directory nor a regular file (mode %o; symlinks are not followed): %w", id, st.Mode, errdefs.ErrInvalidArgument)
}

// unmountUnder detaches every mount at or below dir, deepest first, and
// fails if one is left: removing a directory through a shared mount would
// delete the node's files.
func unmountUnder(dir string) error {
	ms, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		return err
	}
	sort.Slice(ms, func(i, j int) bool { return len(ms[i].Mountpoint) > len(ms[j].Mountpoint) })
	for _, m := range ms {
		if err := unix.Unmount(m.Mountpoint, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("unmount %s: %w", m.Mountpoint, err)
		}
	}
	left, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		return err
	}
	if len(left) > 0 {
		return fmt.Errorf("%d mounts left under %s (first %s): not removed", len(left), dir, left[0].Mountpoint)
	}
	return nil
}

// MaxGetBytes bounds what Get returns, whatever the shim asks.
const MaxGetBytes = 1 << 20

// Get returns up to max bytes (at most MaxGetBytes) of the current content
// of a container's File volume at destination, and whether it held more.
func (s *Store) Get(container, destination string, max int64) ([]byte, bool, error) {
	p, kind, ok := s.Lookup(container, destination)
	if !ok || kind != File {
		return nil, false, fmt.Errorf("no file volume at %q of container %q: %w", destination, container, errdefs.ErrNotFound)
	}
	if max <= 0 || max > MaxGetBytes {
		max = MaxGetBytes
	}
	f, err := os.OpenFile(p, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, false, err
	}
	defer f.Close()
	b := make([]byte, max+1)
	n, err := io.ReadFull(f, b)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return nil, false, err
	}
	if int64(n) > max {
		return b[:max], true, nil
	}
	return b[:n], false, nil
}
