package volumes

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// kubeletLayout returns a ConfigMap volume as kubelet writes it: a
// timestamped directory, ..data pointing at it, and a user-visible
// symlink per key.
func kubeletLayout(ts string, files map[string]string) []Entry {
	es := []Entry{{Path: ts, Type: Dir, Mode: 0o755}}
	for k, v := range files {
		es = append(es, Entry{Path: ts + "/" + k, Type: Regular, Mode: 0o644, Data: []byte(v)},
			Entry{Path: k, Type: Symlink, Target: "..data/" + k})
	}
	return append(es, Entry{Path: "..data", Type: Symlink, Target: ts})
}

func TestValidate(t *testing.T) {
	l := Limits{MaxBytes: 100, MaxFiles: 10}
	ok := kubeletLayout("..2026_12_04_23_00_00.1", map[string]string{"a": "1"})
	if err := Validate(ok, l); err != nil {
		t.Fatalf("kubelet layout refused: %v", err)
	}
	for _, tc := range []struct {
		name    string
		entries []Entry
	}{
		{"dotdot", []Entry{{Path: "..", Type: Dir}}},
		{"dotdot inside", []Entry{{Path: "a", Type: Dir}, {Path: "a/../../x", Type: Regular}}},
		{"absolute", []Entry{{Path: "/etc/raksh/x", Type: Regular}}},
		{"unclean", []Entry{{Path: "a//b", Type: Regular}}},
		{"empty", []Entry{{Path: "", Type: Regular}}},
		{"no parent", []Entry{{Path: "a/b", Type: Regular}}},
		{"parent is a file", []Entry{{Path: "a", Type: Regular}, {Path: "a/b", Type: Regular}}},
		{"parent is a symlink", []Entry{{Path: "a", Type: Symlink, Target: "b"}, {Path: "b", Type: Dir}, {Path: "a/x", Type: Regular}}},
		{"duplicate", []Entry{{Path: "a", Type: Regular}, {Path: "a", Type: Regular}}},
		{"absolute link", []Entry{{Path: "a", Type: Symlink, Target: "/etc/raksh"}}},
		{"escaping link", []Entry{{Path: "a", Type: Symlink, Target: "../../run/raksh"}}},
		{"link up then down", []Entry{{Path: "d", Type: Dir}, {Path: "d/a", Type: Symlink, Target: "../d"}}},
		{"dot link", []Entry{{Path: "a", Type: Symlink, Target: "."}}},
		{"unknown type", []Entry{{Path: "a", Type: 7}}},
		{"too big", []Entry{{Path: "a", Type: Regular, Data: make([]byte, 101)}}},
		{"too many", make([]Entry, 11)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := Validate(tc.entries, l); !errdefs.IsInvalidArgument(err) {
				t.Fatalf("got %v, want invalid argument", err)
			}
		})
	}
}

func read(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestPutTreeUpdate applies kubelet's atomic update: the new content
// appears through the user-visible names, the old timestamped directory
// and removed keys are gone.
func TestPutTreeUpdate(t *testing.T) {
	s := NewStore(t.TempDir(), DefaultLimits)
	v := Volume{Container: "c1", Destination: "/etc/config", Kind: Tree,
		Entries: kubeletLayout("..2026_01", map[string]string{"a": "one", "b": "bee"})}
	if err := s.Put(v); err != nil {
		t.Fatal(err)
	}
	dir, _, ok := s.Lookup("c1", "/etc/config")
	if !ok || !strings.HasPrefix(dir, s.root) {
		t.Fatalf("lookup: %q %v", dir, ok)
	}
	if read(t, filepath.Join(dir, "a")) != "one" || read(t, filepath.Join(dir, "b")) != "bee" {
		t.Fatal("first content not readable through the user-visible names")
	}
	v.Entries = kubeletLayout("..2026_02", map[string]string{"a": "two", "c": "sea"})
	if err := s.Put(v); err != nil {
		t.Fatal(err)
	}
	if read(t, filepath.Join(dir, "a")) != "two" || read(t, filepath.Join(dir, "c")) != "sea" {
		t.Fatal("update not visible")
	}
	for _, gone := range []string{"b", "..2026_01"} {
		if _, err := os.Lstat(filepath.Join(dir, gone)); !os.IsNotExist(err) {
			t.Errorf("%s still there after the update: %v", gone, err)
		}
	}
	if target, _ := os.Readlink(filepath.Join(dir, "..data")); target != "..2026_02" {
		t.Errorf("..data -> %q", target)
	}
	if err := s.RemoveContainer("c1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatal("copy left after RemoveContainer")
	}
	if _, _, ok := s.Lookup("c1", "/etc/config"); ok {
		t.Fatal("lookup after RemoveContainer")
	}
}

// TestPutFileKeepsInode: a file volume is bind mounted; updates must
// reach the same inode.
func TestPutFileKeepsInode(t *testing.T) {
	s := NewStore(t.TempDir(), DefaultLimits)
	v := Volume{Container: "c1", Destination: "/etc/hosts", Kind: File, Entries: []Entry{{Type: Regular, Mode: 0o644, Data: []byte("127.0.0.1 localhost\n10.0.0.1 long-name\n")}}}
	if err := s.Put(v); err != nil {
		t.Fatal(err)
	}
	p, _, _ := s.Lookup("c1", "/etc/hosts")
	before, _ := os.Stat(p)
	v.Entries[0].Data = []byte("127.0.0.1 localhost\n")
	if err := s.Put(v); err != nil {
		t.Fatal(err)
	}
	after, _ := os.Stat(p)
	if !os.SameFile(before, after) || read(t, p) != "127.0.0.1 localhost\n" {
		t.Fatalf("file replaced or content %q", read(t, p))
	}
}

func TestPutRejects(t *testing.T) {
	s := NewStore(t.TempDir(), DefaultLimits)
	for _, v := range []Volume{
		{Container: "../x", Destination: "/a", Kind: Tree},
		{Container: "c", Destination: "a", Kind: Tree},
		{Container: "c", Destination: "/a/../b", Kind: Tree},
		{Container: "c", Destination: "/a", Kind: File},
		{Container: "c", Destination: "/a", Kind: EmptyDir, Pod: "p", Name: "../x"},
		{Container: "c", Destination: "/a", Kind: EmptyDir, Pod: "../p", Name: "x"},
		{Container: "c", Destination: "/a", Kind: 9},
	} {
		if err := s.Put(v); !errdefs.IsInvalidArgument(err) {
			t.Errorf("%+v: got %v, want invalid argument", v, err)
		}
	}
}

// TestValidShareID: the node names a share entry only by an opaque id;
// anything that could be a path, or leave the share, is refused.
func TestValidShareID(t *testing.T) {
	for _, id := range []string{"v0123456789abcdef0123456789abcdef", "a", strings.Repeat("z", 64)} {
		if err := ValidShareID(id); err != nil {
			t.Errorf("%q refused: %v", id, err)
		}
	}
	for _, id := range []string{"", ".", "..", "../etc", "a/b", "/etc", "V1", "a-b", "a.b", "a\x00", strings.Repeat("z", 65), "ä"} {
		if err := ValidShareID(id); err == nil {
			t.Errorf("%q accepted", id)
		}
	}
	s := NewStore(t.TempDir(), DefaultLimits)
	err := s.Put(Volume{Container: "c1", Destination: "/data", Kind: Shared, Name: "../../etc"})
	if err == nil || !strings.Contains(err.Error(), "share id") {
		t.Fatalf("Put with a path as share id: %v", err)
	}
}

// TestOpenShareEntry: a share entry is opened without following a symlink
// (a node-made link to the guest's / is refused, not resolved) and must be
// a directory or a regular file.
func TestOpenShareEntry(t *testing.T) {
	dir := t.TempDir()
	os.Mkdir(filepath.Join(dir, "vdir"), 0o755)
	os.WriteFile(filepath.Join(dir, "vfile"), []byte("x"), 0o644)
	os.Symlink("/", filepath.Join(dir, "vlink"))
	os.Symlink("vdir", filepath.Join(dir, "vrel"))
	if err := unix.Mkfifo(filepath.Join(dir, "vfifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	for id, wantDir := range map[string]bool{"vdir": true, "vfile": false} {
		fd, isDir, err := openShareEntry(dir, id)
		if err != nil || isDir != wantDir {
			t.Errorf("%s: dir %v, %v", id, isDir, err)
		}
		unix.Close(fd)
	}
	for _, id := range []string{"vlink", "vrel", "vfifo", "vmissing", "..", "v/../vdir"} {
		if fd, _, err := openShareEntry(dir, id); err == nil {
			unix.Close(fd)
			t.Errorf("%s opened", id)
		}
	}
}

// TestEmptyDirSource: a disk-backed emptyDir goes to the scratch
// filesystem when the guest has one; medium Memory (a size) and a guest
// without scratch keep a tmpfs.
func TestEmptyDirSource(t *testing.T) {
	if got := emptyDirSource("/run/raksh-scratch/volumes", "pod1", "cache", 0); got != "/run/raksh-scratch/volumes/pod1/e-cache" {
		t.Errorf("disk-backed with scratch: %q", got)
	}
	if got := emptyDirSource("/run/raksh-scratch/volumes", "pod1", "cache", 64<<20); got != "" {
		t.Errorf("medium Memory with scratch: %q, want tmpfs", got)
	}
	if got := emptyDirSource("", "pod1", "cache", 0); got != "" {
		t.Errorf("disk-backed without scratch: %q, want tmpfs", got)
	}
}
