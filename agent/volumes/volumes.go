// Package volumes keeps, in the guest, the copies of the volumes the shim
// delivers: kubelet's ConfigMap, Secret, projected and downward-API
// volumes and CRI's per-pod files (copied from the node and kept updated),
// and the pod's emptyDirs and /dev/shm (guest tmpfs, or for disk-backed
// emptyDirs the guest's encrypted scratch filesystem; never on the node).
//
// The node is untrusted: every name and link target it sends is checked
// (relative, no ".." element, no link leaving its volume) before anything
// is written, and guest paths are chosen here, never by the node.
package volumes

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/raksh-project/raksh/agent/scratch"
	"github.com/raksh-project/raksh/internal/wire"
)

// Kind is how a volume reaches the guest.
type Kind int

const (
	// Tree is a directory copied from the node (kubelet volumes, with
	// their ..data symlink layout) and kept updated.
	Tree Kind = iota
	// File is a single file copied from the node (/etc/hosts,
	// /etc/resolv.conf, /etc/hostname, /dev/termination-log).
	File
	// EmptyDir is a guest directory shared by the pod's containers: a
	// tmpfs, or on the scratch filesystem (Volume.SizeBytes).
	EmptyDir
	// Shared is an entry of the pod's virtio-fs share (the node's
	// content, live; only with shared_fs in the runtime config), named by
	// an opaque id (ValidShareID) in Name.
	Shared
)

// EntryType is the type of an entry of a Tree volume.
type EntryType int

// Entry types.
const (
	Dir EntryType = iota
	Regular
	Symlink
)

// Entry is one file, directory or symlink of a Tree volume (or the one
// file of a File volume, whose Path is empty).
type Entry struct {
	// Path is relative to the volume's root, slash separated.
	Path string
	Type EntryType
	// Mode holds the permission bits (setuid/setgid are dropped).
	Mode     uint32
	UID, GID uint32
	Data     []byte
	// Target is a symlink's target, relative and inside the volume.
	Target string
}

// Volume is what the shim delivers for one mount of a container.
type Volume struct {
	Container   string
	Destination string
	Kind        Kind
	Entries     []Entry
	// Pod and Name identify an EmptyDir, shared by the pod's containers;
	// SizeBytes is the size of a medium Memory emptyDir's tmpfs; 0 for a
	// disk-backed one, which lives on the scratch filesystem when the
	// guest has one (bounded by its free space) and else on a tmpfs of
	// tmpfs's default size (half the guest's memory).
	Pod, Name string
	SizeBytes int64
}

// ShmSize is the size of a pod's /dev/shm (containerd's default).
const ShmSize = 64 << 20

// Limits bound what one Put may write.
type Limits struct {
	MaxBytes int64
	MaxFiles int
}

// DefaultLimits are the agent's own bounds, above any the shim enforces.
var DefaultLimits = Limits{MaxBytes: 64 << 20, MaxFiles: 4096}

// Store keeps the delivered volumes under its root directory.
type Store struct {
	root   string
	limits Limits

	mu   sync.Mutex
	vols map[string]map[string]delivered // container -> destination
	pods map[string]bool                 // pods with guest directories
}

type delivered struct {
	path string
	kind Kind
}

// NewStore returns a store keeping volumes under root.
func NewStore(root string, limits Limits) *Store {
	return &Store{root: root, limits: limits, vols: map[string]map[string]delivered{}, pods: map[string]bool{}}
}

func digest(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:12])
}

// Put creates or updates the guest copy of v. A Tree volume is updated as
// kubelet updates its own: new files first, then symlinks are swapped
// atomically (..data first), then what is gone is removed; a reader
// following ..data sees the old or the new content, never a mix.
func (s *Store) Put(v Volume) error {
	if err := wire.ValidID(v.Container); err != nil {
		return fmt.Errorf("volume for container %q: %w: %w", v.Container, err, errdefs.ErrInvalidArgument)
	}
	if !path.IsAbs(v.Destination) || path.Clean(v.Destination) != v.Destination {
		return fmt.Errorf("volume destination %q is not a clean absolute path: %w", v.Destination, errdefs.ErrInvalidArgument)
	}
	var (
		guest string
		err   error
	)
	switch v.Kind {
	case Tree:
		guest = filepath.Join(s.root, "c", v.Container, digest(v.Destination))
		err = s.putTree(guest, v.Entries)
	case File:
		guest = filepath.Join(s.root, "c", v.Container, digest(v.Destination), "file")
		err = s.putFile(guest, v.Entries)
	case EmptyDir:
		guest, err = s.emptyDir(v.Pod, v.Name, v.SizeBytes)
	case Shared:
		if len(v.Entries) > 0 {
			err = fmt.Errorf("a shared volume carries no entries: %w", errdefs.ErrInvalidArgument)
			break
		}
		guest = filepath.Join(s.root, "c", v.Container, digest(v.Destination))
		err = s.putShared(guest, v.Name)
	default:
		err = fmt.Errorf("unknown volume kind %d: %w", v.Kind, errdefs.ErrInvalidArgument)
	}
	if err != nil {
		return fmt.Errorf("volume at %q of container %q: %w", v.Destination, v.Container, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.vols[v.Container] == nil {
		s.vols[v.Container] = map[string]delivered{}
	}
	s.vols[v.Container][v.Destination] = delivered{guest, v.Kind}
	return nil
}

// Lookup returns the guest path delivered for a container's mount and
// its kind.
func (s *Store) Lookup(container, destination string) (string, Kind, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.vols[container][path.Clean(destination)]
	return d.path, d.kind, ok
}

// RemoveContainer removes a container's copies (not its pod's emptyDirs).
func (s *Store) RemoveContainer(container string) error {
	s.mu.Lock()
	delete(s.vols, container)
	s.mu.Unlock()
	if wire.ValidID(container) != nil {
		return nil
	}
	dir := filepath.Join(s.root, "c", container)
	// Shared volumes are mounts of the node's files: detached before
	// anything is removed, and nothing removed if one is left.
	if err := unmountUnder(dir); err != nil {
		return err
	}
	return os.RemoveAll(dir)
}

// RemovePod unmounts and removes a pod's emptyDirs and /dev/shm.
func (s *Store) RemovePod(pod string) error {
	if wire.ValidID(pod) != nil {
		return nil
	}
	s.mu.Lock()
	delete(s.pods, pod)
	s.mu.Unlock()
	dir := filepath.Join(s.root, "p", pod)
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		unix.Unmount(filepath.Join(dir, e.Name()), unix.MNT_DETACH)
	}
	if disk := scratch.Dir(scratch.VolumesDir); disk != "" {
		if err := os.RemoveAll(filepath.Join(disk, pod)); err != nil {
			return err
		}
	}
	return os.RemoveAll(dir)
}

// Shm returns the pod's shared /dev/shm: a tmpfs of ShmSize.
func (s *Store) Shm(pod string) (string, error) {
	return s.podTmpfs(pod, "shm", ShmSize, unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC)
}

func (s *Store) emptyDir(pod, name string, size int64) (string, error) {
	if !validName(name) {
		return "", fmt.Errorf("emptyDir name %q is not a single path element: %w", name, errdefs.ErrInvalidArgument)
	}
	if size < 0 {
		return "", fmt.Errorf("emptyDir %q: negative size: %w", name, errdefs.ErrInvalidArgument)
	}
	// As on runc: CRI binds emptyDirs without nosuid or noexec.
	if src := emptyDirSource(scratch.Dir(scratch.VolumesDir), pod, name, size); src != "" {
		return s.podDisk(pod, "e-"+name, src)
	}
	return s.podTmpfs(pod, "e-"+name, size, unix.MS_NODEV)
}

// emptyDirSource is the directory on the scratch filesystem (mounted with
// its volumes directory at disk) holding the pod's disk-backed emptyDir
// name, or "" when it is a tmpfs: medium Memory (size > 0, kubelet's tmpfs
// size) or a guest without a scratch filesystem (disk "").
func emptyDirSource(disk, pod, name string, size int64) string {
	if disk == "" || size > 0 {
		return ""
	}
	return filepath.Join(disk, pod, "e-"+name)
}

// podDisk binds (once) the scratch directory src to the pod's directory
// called name and returns it. src is made mode 0777 as the emptyDir tmpfs
// is, and goes with the pod (RemovePod).
func (s *Store) podDisk(pod, name, src string) (string, error) {
	if err := wire.ValidID(pod); err != nil {
		return "", fmt.Errorf("pod %q: %w: %w", pod, err, errdefs.ErrInvalidArgument)
	}
	dir := filepath.Join(s.root, "p", pod, name)
	s.mu.Lock()
	defer s.mu.Unlock()
	if ok, _ := isMountPoint(dir); ok {
		return dir, nil
	}
	for _, d := range []string{dir, src} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return "", err
		}
	}
	if err := os.Chmod(src, 0o777); err != nil {
		return "", err
	}
	if err := scratch.Bind(src, dir); err != nil {
		return "", fmt.Errorf("emptyDir of pod %s on the scratch disk: %w", pod, err)
	}
	s.pods[pod] = true
	return dir, nil
}

// podTmpfs mounts (once) and returns the pod's tmpfs called name.
func (s *Store) podTmpfs(pod, name string, size int64, flags uintptr) (string, error) {
	if err := wire.ValidID(pod); err != nil {
		return "", fmt.Errorf("pod %q: %w: %w", pod, err, errdefs.ErrInvalidArgument)
	}
	dir := filepath.Join(s.root, "p", pod, name)
	s.mu.Lock()
	defer s.mu.Unlock()
	if ok, _ := isMountPoint(dir); ok {
		return dir, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	data := "mode=1777"
	if name != "shm" {
		data = "mode=0777"
	}
	if size > 0 {
		data += fmt.Sprintf(",size=%d", size)
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", flags, data); err != nil {
		return "", fmt.Errorf("mount tmpfs for pod %s: %w", pod, err)
	}
	s.pods[pod] = true
	return dir, nil
}

func isMountPoint(dir string) (bool, error) {
	var st, parent unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil {
		return false, err
	}
	if err := unix.Lstat(filepath.Dir(dir), &parent); err != nil {
		return false, err
	}
	return st.Dev != parent.Dev, nil
}

// validName reports whether n is one path element a volume may use.
func validName(n string) bool {
	return n != "" && n != "." && n != ".." && !strings.ContainsAny(n, "/\x00")
}

// Validate checks the entries of a Tree volume against the node being
// hostile: paths relative and clean, no ".." element, every parent a
// directory of the volume, no duplicates, symlink targets relative without
// ".." elements (so a link, and a chain of links, only ever descends from
// where it is), within the limits.
func Validate(entries []Entry, l Limits) error {
	seen := map[string]EntryType{"": Dir}
	var total int64
	if len(entries) > l.MaxFiles {
		return fmt.Errorf("%d entries, more than the %d allowed: %w", len(entries), l.MaxFiles, errdefs.ErrInvalidArgument)
	}
	sorted := slices.Clone(entries)
	sort.SliceStable(sorted, func(i, j int) bool { return strings.Count(sorted[i].Path, "/") < strings.Count(sorted[j].Path, "/") })
	for _, e := range sorted {
		if !validPath(e.Path) {
			return fmt.Errorf("entry %q: not a clean relative path without '..': %w", e.Path, errdefs.ErrInvalidArgument)
		}
		if _, dup := seen[e.Path]; dup {
			return fmt.Errorf("entry %q appears twice: %w", e.Path, errdefs.ErrInvalidArgument)
		}
		parent := path.Dir(e.Path)
		if parent == "." {
			parent = ""
		}
		if t, ok := seen[parent]; !ok || t != Dir {
			return fmt.Errorf("entry %q: its parent is not a directory of the volume: %w", e.Path, errdefs.ErrInvalidArgument)
		}
		switch e.Type {
		case Dir, Regular:
		case Symlink:
			if !validPath(e.Target) {
				return fmt.Errorf("symlink %q -> %q leaves the volume (targets are relative, without '..'): %w", e.Path, e.Target, errdefs.ErrInvalidArgument)
			}
		default:
			return fmt.Errorf("entry %q: unknown type %d: %w", e.Path, e.Type, errdefs.ErrInvalidArgument)
		}
		total += int64(len(e.Data))
		if total > l.MaxBytes {
			return fmt.Errorf("more than %d bytes: %w", l.MaxBytes, errdefs.ErrInvalidArgument)
		}
		seen[e.Path] = e.Type
	}
	return nil
}

func validPath(p string) bool {
	if p == "" || path.IsAbs(p) || path.Clean(p) != p || strings.ContainsRune(p, 0) {
		return false
	}
	for _, el := range strings.Split(p, "/") {
		if el == ".." || el == "." {
			return false
		}
	}
	return true
}

func (s *Store) putTree(dir string, entries []Entry) error {
	if err := Validate(entries, s.limits); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	want := map[string]bool{}
	byType := map[EntryType][]Entry{}
	for _, e := range entries {
		want[e.Path] = true
		byType[e.Type] = append(byType[e.Type], e)
	}
	for _, t := range []EntryType{Dir, Regular, Symlink} {
		sort.Slice(byType[t], func(i, j int) bool { return byType[t][i].Path < byType[t][j].Path })
	}
	// 1. directories, 2. files, 3. symlinks (atomic swaps, ..data first).
	for _, e := range byType[Dir] {
		p := filepath.Join(dir, filepath.FromSlash(e.Path))
		if st, err := os.Lstat(p); err == nil && !st.IsDir() {
			if err := os.RemoveAll(p); err != nil {
				return err
			}
		}
		if err := os.Mkdir(p, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
		if err := setAttrs(p, e); err != nil {
			return err
		}
	}
	for _, e := range byType[Regular] {
		if err := writeFileAtomic(filepath.Join(dir, filepath.FromSlash(e.Path)), e); err != nil {
			return err
		}
	}
	for _, e := range byType[Symlink] {
		p := filepath.Join(dir, filepath.FromSlash(e.Path))
		if cur, err := os.Readlink(p); err == nil && cur == e.Target {
			continue
		}
		// A symlink is replaced by rename too; continuity.AtomicWriteFile
		// writes regular files only.
		tmp := filepath.Join(filepath.Dir(p), ".raksh-tmp-link")
		os.Remove(tmp)
		if err := os.Symlink(e.Target, tmp); err != nil {
			return err
		}
		if st, err := os.Lstat(p); err == nil && st.IsDir() {
			if err := os.RemoveAll(p); err != nil {
				return err
			}
		}
		if err := os.Rename(tmp, p); err != nil {
			return err
		}
		unix.Lchown(p, int(e.UID), int(e.GID))
	}
	// 4. what the node no longer has, deepest first.
	var gone []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		if !want[filepath.ToSlash(rel)] {
			gone = append(gone, p)
			if d.IsDir() {
				return filepath.SkipDir
			}
		}
		return nil
	})
	for i := len(gone) - 1; i >= 0; i-- {
		if err := os.RemoveAll(gone[i]); err != nil {
			return err
		}
	}
	return nil
}

// putFile writes a File volume's content in place: the file is bind
// mounted into the container, so it keeps its inode.
func (s *Store) putFile(p string, entries []Entry) error {
	if len(entries) != 1 || entries[0].Type != Regular || entries[0].Path != "" {
		return fmt.Errorf("a file volume carries exactly one regular file with an empty path: %w", errdefs.ErrInvalidArgument)
	}
	e := entries[0]
	if int64(len(e.Data)) > s.limits.MaxBytes {
		return fmt.Errorf("more than %d bytes: %w", s.limits.MaxBytes, errdefs.ErrInvalidArgument)
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|unix.O_NOFOLLOW, os.FileMode(e.Mode&0o1777))
	if err != nil {
		return err
	}
	if _, err := f.Write(e.Data); err != nil {
		f.Close()
		return err
	}
	if err := f.Truncate(int64(len(e.Data))); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return setAttrs(p, e)
}

// writeFileAtomic replaces p by a file with e's content and attributes. Not
// continuity.AtomicWriteFile: that can only chmod its temporary file, so the
// file would appear owned by root and be chowned after the rename, unreadable
// meanwhile by a container user that owns a 0600 file. Here the owner is set
// before the rename.
func writeFileAtomic(p string, e Entry) error {
	if st, err := os.Lstat(p); err == nil && st.IsDir() {
		if err := os.RemoveAll(p); err != nil {
			return err
		}
	}
	if cur, err := os.ReadFile(p); err == nil && string(cur) == string(e.Data) {
		return setAttrs(p, e)
	}
	tmp := p + ".raksh-tmp"
	os.Remove(tmp)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(e.Data); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := setAttrs(tmp, e); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}

// setAttrs sets owner and permission bits (setuid and setgid dropped).
func setAttrs(p string, e Entry) error {
	if err := os.Lchown(p, int(e.UID), int(e.GID)); err != nil && !errors.Is(err, fs.ErrPermission) {
		return err
	}
	mode := os.FileMode(e.Mode & 0o777)
	if e.Mode&0o1000 != 0 {
		mode |= os.ModeSticky
	}
	return os.Chmod(p, mode)
}
