package initrd

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"io"
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

// writeELF writes a minimal x86-64 ELF executable, dynamically linked
// (with a PT_INTERP program header) or not.
func writeELF(t *testing.T, dynamic bool) string {
	t.Helper()
	var b bytes.Buffer
	h := elf.Header64{
		Type: uint16(elf.ET_EXEC), Machine: uint16(elf.EM_X86_64), Version: uint32(elf.EV_CURRENT),
		Ehsize: 64, Phentsize: 56,
	}
	copy(h.Ident[:], elf.ELFMAG)
	h.Ident[elf.EI_CLASS], h.Ident[elf.EI_DATA], h.Ident[elf.EI_VERSION] = byte(elf.ELFCLASS64), byte(elf.ELFDATA2LSB), byte(elf.EV_CURRENT)
	if dynamic {
		h.Phoff, h.Phnum = 64, 1
	}
	binary.Write(&b, binary.LittleEndian, h)
	if dynamic {
		interp := "/lib64/ld-linux-x86-64.so.2\x00"
		binary.Write(&b, binary.LittleEndian, elf.Prog64{Type: uint32(elf.PT_INTERP), Off: 64 + 56, Filesz: uint64(len(interp)), Memsz: uint64(len(interp))})
		b.WriteString(interp)
	}
	p := filepath.Join(t.TempDir(), "bin")
	if err := os.WriteFile(p, b.Bytes(), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestBuildMke2fs: a static mke2fs becomes /bin/mke2fs (mode 0755, same
// bytes); a dynamically linked one, a file that is not ELF or a missing
// one fail naming the problem; without one there is no /bin/mke2fs.
func TestBuildMke2fs(t *testing.T) {
	dir := t.TempDir()
	agent, runc := filepath.Join(dir, "agent"), filepath.Join(dir, "runc")
	os.WriteFile(agent, []byte("agent"), 0o755)
	os.WriteFile(runc, []byte("runc"), 0o755)
	static := writeELF(t, false)
	want, _ := os.ReadFile(static)
	type file struct {
		mode uint64
		data []byte
	}
	read := func(out string) map[string]file {
		f, err := os.Open(out)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(f))
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]file{}
		for _, r := range recs {
			data, _ := io.ReadAll(io.NewSectionReader(r.ReaderAt, 0, int64(r.FileSize)))
			got[r.Name] = file{r.Mode, data}
		}
		return got
	}
	out := filepath.Join(dir, "with.img")
	if err := Build(Options{Agent: agent, Runc: runc, Mke2fs: static, Output: out}); err != nil {
		t.Fatal(err)
	}
	r, ok := read(out)[Mke2fsPath]
	if !ok {
		t.Fatalf("%s not in the initrd", Mke2fsPath)
	}
	if r.mode&0o777 != 0o755 || !bytes.Equal(r.data, want) {
		t.Fatalf("%s: mode %o, %d bytes (want 0755, %d bytes)", Mke2fsPath, r.mode&0o777, len(r.data), len(want))
	}
	out = filepath.Join(dir, "without.img")
	if err := Build(Options{Agent: agent, Runc: runc, Output: out}); err != nil {
		t.Fatal(err)
	}
	if _, ok := read(out)[Mke2fsPath]; ok {
		t.Fatalf("%s in an initrd built without one", Mke2fsPath)
	}
	for name, tc := range map[string]struct{ path, want string }{
		"dynamic": {writeELF(t, true), "dynamically linked"},
		"not ELF": {agent, "mke2fs"},
		"missing": {filepath.Join(dir, "nope"), "nope"},
	} {
		err := Build(Options{Agent: agent, Runc: runc, Mke2fs: tc.path, Output: filepath.Join(dir, "bad.img")})
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "mke2fs") {
			t.Errorf("%s mke2fs: %v", name, err)
		}
	}
}
