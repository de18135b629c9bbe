package initrd

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/u-root/u-root/pkg/cpio"
)

func modulesDir(t *testing.T) string {
	dir, _ := filepath.Abs(filepath.Join("..", "..", "_output", "deps", "kernel", "modules"))
	if _, err := os.Stat(dir); err != nil {
		t.Skip("guest kernel not fetched (make deps)")
	}
	return dir
}

// TestModuleOrder resolves the real Debian cloud kernel's virtio modules:
// dependencies come before the modules that need them.
func TestModuleOrder(t *testing.T) {
	order, err := ModuleOrder(modulesDir(t), DefaultModules)
	if err != nil {
		t.Fatal(err)
	}
	pos := map[string]int{}
	for i, p := range order {
		pos[normalize(strings.TrimSuffix(filepath.Base(p), ".ko"))] = i
	}
	for _, pair := range [][2]string{{"virtio", "virtio_pci"}, {"virtio_ring", "virtio_console"}, {"vsock", "vmw_vsock_virtio_transport"}} {
		a, okA := pos[pair[0]]
		b, okB := pos[pair[1]]
		if !okA || !okB || a > b {
			t.Errorf("%s (%d, %v) must load before %s (%d, %v): %v", pair[0], a, okA, pair[1], b, okB, order)
		}
	}
}

func TestModuleOrderUnknown(t *testing.T) {
	if _, err := ModuleOrder(modulesDir(t), []string{"no_such_module"}); err == nil || !strings.Contains(err.Error(), "no_such_module") {
		t.Fatalf("unknown module: %v", err)
	}
}

func TestBuildRequiresInputs(t *testing.T) {
	if err := Build(Options{Output: filepath.Join(t.TempDir(), "i.img")}); err == nil {
		t.Fatal("built an initrd without an agent")
	}
}

// TestWriteCpio: the archive reads back with every file, owned by root,
// and the same tree gives the same bytes.
func TestWriteCpio(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "bin"), 0o755)
	os.WriteFile(filepath.Join(dir, "init"), []byte("#!/bin/sh\n"), 0o755)
	os.WriteFile(filepath.Join(dir, "bin", "runc"), bytes.Repeat([]byte("x"), 5000), 0o755)
	os.Symlink("/init", filepath.Join(dir, "bin", "init"))
	out := filepath.Join(t.TempDir(), "a.cpio")
	if err := writeCpio(dir, out, false); err != nil {
		t.Fatal(err)
	}
	first, _ := os.ReadFile(out)
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(f))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]cpio.Record{}
	for _, r := range recs {
		got[r.Name] = r
	}
	for name, size := range map[string]uint64{"init": 10, "bin/runc": 5000, "bin": 0, "bin/init": 5} {
		r, ok := got[name]
		if !ok {
			t.Fatalf("%s missing from %v", name, recs)
		}
		if r.UID != 0 || r.GID != 0 || r.FileSize != size {
			t.Errorf("%s: uid %d gid %d size %d", name, r.UID, r.GID, r.FileSize)
		}
	}
	if err := writeCpio(dir, out, true); err != nil {
		t.Fatal(err)
	}
	if err := writeCpio(dir, out, false); err != nil {
		t.Fatal(err)
	}
	if again, _ := os.ReadFile(out); !bytes.Equal(first, again) {
		t.Error("same tree, different archive")
	}
}

// TestOptionalModules: a name ending in "?" is included with its
// dependencies when the kernel has it, and left out otherwise.
func TestOptionalModules(t *testing.T) {
	order, err := ModuleOrder(modulesDir(t), []string{"aesni_intel?", "no_such_module?", "erofs"})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range order {
		names = append(names, normalize(strings.TrimSuffix(filepath.Base(p), ".ko")))
	}
	if !slices.Contains(names, "aesni_intel") || !slices.Contains(names, "cryptd") || !slices.Contains(names, "erofs") {
		t.Errorf("modules %v: want aesni_intel with its dependency cryptd, and erofs", names)
	}
	if _, err := ModuleOrder(modulesDir(t), []string{"no_such_module"}); err == nil {
		t.Error("a missing required module was accepted")
	}
}
