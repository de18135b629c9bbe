// Package initrd assembles the Raksh guest initrd: the agent as /init, a
// static runc, and the kernel modules the agent loads in dependency order.
package initrd

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/u-root/u-root/pkg/cpio"
)

// DefaultModules are the modules a Raksh guest needs from a Debian cloud
// kernel, where virtio drivers are modules. Dependencies are added.
var DefaultModules = []string{
	"virtio_pci", "virtio_console", "virtio-rng",
	"vmw_vsock_virtio_transport", "overlay", "virtio_net",
	// The encrypted scratch disk (agent/scratch).
	"virtio_blk", "dm_mod", "dm_crypt", "dm_integrity", "authenc", "xts", "ecb",
	// Plain images' layers as read-only erofs disks (docs/storage.md).
	"erofs",
	// AES-NI for dm-crypt when the kernel has it as a module (optional: a
	// kernel without it, or another architecture, builds without). The
	// agent skips it on a CPU without AES-NI (ENODEV). sha256_ssse3 is
	// left out: under TCG it measured slower than the generic SHA-256.
	"aesni_intel?",
	// Host volumes shared with virtio-fs when the runtime config allows it.
	"virtiofs",
	// Linux bridges inside a pod (a privileged or CAP_NET_ADMIN container
	// creating one, as on a runc node); the guest has no module loader.
	"bridge",
}

// Options describe an initrd.
type Options struct {
	// Agent is the static raksh-agent binary; it becomes /init.
	Agent string
	// Runc is the static runc binary; it becomes /bin/runc.
	Runc string
	// Mke2fs is a static binary that formats ext2 when run as mke2fs
	// (Debian busybox-static's /usr/bin/busybox, which dispatches on
	// argv[0]); it becomes /bin/mke2fs, with which the agent formats the
	// encrypted scratch disk (agent/scratch). Empty: none, and a guest
	// given a scratch disk fails to boot with an error saying so.
	Mke2fs string
	// ModulesDir is the kernel's lib/modules/<version> directory.
	ModulesDir string
	// Modules are module names to include (with their dependencies).
	Modules []string
	// Files are extra files: destination path in the initrd → host path.
	Files map[string]string
	// Output is the path of the newc cpio archive.
	Output string
	// Gzip compresses the archive. Under TCG the kernel's gunzip costs
	// more boot time (~0.6 s for 13 MB) than copying the larger plain
	// archive, so the default is uncompressed.
	Gzip bool
}

// Mke2fsPath is where Options.Mke2fs goes in the initrd.
const Mke2fsPath = "bin/mke2fs"

// DefaultMke2fs is Debian busybox-static's binary, whose mke2fs applet
// formats ext2 (hack/deps.sh installs it).
const DefaultMke2fs = "/usr/bin/busybox"

// checkStatic fails unless path is an ELF executable without an
// interpreter: the initrd has no C library.
func checkStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return fmt.Errorf("%s is not an executable", path)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked; the initrd needs a static binary (Debian busybox-static)", path)
		}
	}
	return nil
}

// Build writes the initrd described by o.
func Build(o Options) error {
	if o.Agent == "" || o.Runc == "" || o.Output == "" {
		return errors.New("initrd: agent, runc and output are required")
	}
	stage, err := os.MkdirTemp("", "raksh-initrd-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(stage)
	for _, d := range []string{"bin", "dev", "proc", "sys", "run", "tmp", "etc", "lib/modules", "var/lib"} {
		if err := os.MkdirAll(filepath.Join(stage, d), 0o755); err != nil {
			return err
		}
	}
	if err := copyFile(o.Agent, filepath.Join(stage, "init"), 0o755); err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	if err := copyFile(o.Runc, filepath.Join(stage, "bin/runc"), 0o755); err != nil {
		return fmt.Errorf("runc: %w", err)
	}
	if o.Mke2fs != "" {
		if err := checkStatic(o.Mke2fs); err != nil {
			return fmt.Errorf("mke2fs (Debian busybox-static, or rakshctl initrd build --mke2fs): %w", err)
		}
		if err := copyFile(o.Mke2fs, filepath.Join(stage, Mke2fsPath), 0o755); err != nil {
			return fmt.Errorf("mke2fs: %w", err)
		}
	}
	for dst, src := range o.Files {
		if err := os.MkdirAll(filepath.Join(stage, filepath.Dir(dst)), 0o755); err != nil {
			return err
		}
		if err := copyFile(src, filepath.Join(stage, dst), 0o644); err != nil {
			return err
		}
	}
	if o.ModulesDir != "" {
		order, err := ModuleOrder(o.ModulesDir, o.Modules)
		if err != nil {
			return err
		}
		var list bytes.Buffer
		for _, m := range order {
			rel, _ := filepath.Rel(o.ModulesDir, m)
			dst := filepath.Join("lib/modules", rel)
			if err := os.MkdirAll(filepath.Join(stage, filepath.Dir(dst)), 0o755); err != nil {
				return err
			}
			if err := copyFile(m, filepath.Join(stage, dst), 0o644); err != nil {
				return err
			}
			fmt.Fprintf(&list, "/%s\n", dst)
		}
		if err := os.WriteFile(filepath.Join(stage, "lib/modules/load.order"), list.Bytes(), 0o644); err != nil {
			return err
		}
	}
	return writeCpio(stage, o.Output, o.Gzip)
}

// writeCpio archives dir as a newc cpio (u-root's pkg/cpio), gzipped if
// asked: files in sorted order, owned by root, mtimes zeroed, so the same
// inputs give the same archive (the launch measurement covers it).
func writeCpio(dir, output string, compress bool) error {
	var files []string
	err := filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if rel, _ := filepath.Rel(dir, p); rel != "." {
			files = append(files, rel)
		}
		return nil
	})
	if err != nil {
		return err
	}
	sort.Strings(files)
	tmp := output + ".tmp"
	out, err := os.Create(tmp)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	defer out.Close()
	var w io.WriteCloser = nopWriteCloser{out}
	if compress {
		w, _ = gzip.NewWriterLevel(out, gzip.BestSpeed)
	}
	cw := cpio.Newc.Writer(w)
	rec := cpio.NewRecorder()
	for _, rel := range files {
		r, err := rec.GetRecord(filepath.Join(dir, rel))
		if err != nil {
			return fmt.Errorf("cpio: %s: %w", rel, err)
		}
		r.Name = rel
		err = cw.WriteRecord(cpio.MakeReproducible(r))
		if c, ok := r.ReaderAt.(io.Closer); ok {
			c.Close()
		}
		if err != nil {
			return fmt.Errorf("cpio: write %s: %w", rel, err)
		}
	}
	if err := cpio.WriteTrailer(cw); err != nil {
		return fmt.Errorf("cpio: %w", err)
	}
	if err := w.Close(); err != nil {
		return err
	}
	// Not continuity.AtomicWriteFile: that takes the whole content as one
	// []byte, and the archive is streamed (tens of MB of modules and
	// binaries). Same steps by hand: sync, close, rename.
	if err := out.Sync(); err != nil {
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, output)
}

// ModuleOrder resolves names to module files under modulesDir, adds their
// dependencies (read from each module's .modinfo section) and returns the
// files in load order. A name ending in "?" is optional: left out when
// modulesDir has no such module.
func ModuleOrder(modulesDir string, names []string) ([]string, error) {
	index := map[string]string{}
	err := filepath.Walk(modulesDir, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if strings.HasSuffix(p, ".ko") {
			index[normalize(strings.TrimSuffix(filepath.Base(p), ".ko"))] = p
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	var (
		order    []string
		visiting = map[string]bool{}
		done     = map[string]bool{}
	)
	var visit func(string) error
	visit = func(name string) error {
		name = normalize(name)
		if done[name] {
			return nil
		}
		if visiting[name] {
			return fmt.Errorf("module dependency cycle at %s", name)
		}
		path, ok := index[name]
		if !ok {
			return fmt.Errorf("kernel module %s not found under %s", name, modulesDir)
		}
		visiting[name] = true
		deps, err := moduleDeps(path)
		if err != nil {
			return err
		}
		for _, d := range deps {
			if err := visit(d); err != nil {
				return err
			}
		}
		visiting[name] = false
		done[name] = true
		order = append(order, path)
		return nil
	}
	for _, n := range names {
		if opt, ok := strings.CutSuffix(n, "?"); ok {
			if _, found := index[normalize(opt)]; !found {
				continue
			}
			n = opt
		}
		if err := visit(n); err != nil {
			return nil, err
		}
	}
	return order, nil
}

type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Close() error { return nil }

func normalize(n string) string { return strings.ReplaceAll(n, "-", "_") }

// moduleDeps reads "depends=" from a module's .modinfo section.
func moduleDeps(path string) ([]string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("module %s: %w", path, err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("module %s has no .modinfo", path)
	}
	b, err := sec.Data()
	if err != nil {
		return nil, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Split(splitNUL)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "depends="); ok {
			if v == "" {
				return nil, nil
			}
			return strings.Split(v, ","), nil
		}
	}
	return nil, nil
}

func splitNUL(data []byte, atEOF bool) (int, []byte, error) {
	if i := bytes.IndexByte(data, 0); i >= 0 {
		return i + 1, data[:i], nil
	}
	if atEOF && len(data) > 0 {
		return len(data), data, nil
	}
	return 0, nil, nil
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
