package runtime

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"

	"github.com/raksh-project/raksh/internal/wire"
	"github.com/raksh-project/raksh/runtime/vm"
)

func TestOverlayLayers(t *testing.T) {
	root := t.TempDir()
	dir := func(p string) string {
		p = filepath.Join(root, p)
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	l1, l2, upper, full := dir("snapshots/1/fs"), dir("snapshots/2/fs"), dir("snapshots/3/fs"), dir("snapshots/4/fs")
	os.WriteFile(filepath.Join(full, "f"), nil, 0o644)
	ov := func(opts ...string) []mount.Mount {
		return []mount.Mount{{Type: "overlay", Source: "overlay", Options: opts}}
	}
	lowers, why := overlayLayers(ov("index=off", "workdir=/w", "upperdir="+upper, "lowerdir="+l2+":"+l1))
	if why != "" || len(lowers) != 2 || lowers[0] != l2 || lowers[1] != l1 {
		t.Fatalf("overlay of two layers: %v %q", lowers, why)
	}
	for name, ms := range map[string][]mount.Mount{
		"bind":             {{Type: "bind", Source: l1, Options: []string{"ro", "rbind"}}},
		"two mounts":       append(ov("lowerdir="+l1), ov("lowerdir="+l2)...),
		"no lowerdir":      ov("upperdir=" + upper),
		"not a snapshot":   ov("lowerdir=" + root),
		"relative":         ov("lowerdir=snapshots/1/fs"),
		"non-empty upper":  ov("upperdir="+full, "lowerdir="+l1),
		"unreadable upper": ov("upperdir="+filepath.Join(root, "missing"), "lowerdir="+l1),
	} {
		if lowers, why := overlayLayers(ms); why == "" {
			t.Errorf("%s: taken as layers %v", name, lowers)
		}
	}
}

func TestLayerImageNoMkfs(t *testing.T) {
	lower := filepath.Join(t.TempDir(), "fs")
	os.Mkdir(lower, 0o755)
	_, err := layerImage(context.Background(), "/nonexistent/mkfs.erofs", lower)
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "plain_rootfs") {
		t.Fatalf("missing mkfs.erofs: %v", err)
	}
	if ents, _ := os.ReadDir(filepath.Dir(lower)); len(ents) != 1 {
		t.Errorf("left behind: %v", ents)
	}
}

// TestLayerImage builds a real erofs image (needs erofs-utils, which
// hack/deps.sh installs) and checks it is cached and built atomically.
func TestLayerImage(t *testing.T) {
	mkfs, err := exec.LookPath("mkfs.erofs")
	if err != nil {
		t.Skip("mkfs.erofs not installed (apt-get install erofs-utils)")
	}
	lower := filepath.Join(t.TempDir(), "fs")
	os.Mkdir(lower, 0o755)
	os.WriteFile(filepath.Join(lower, "f"), []byte("data"), 0o644)
	img, err := layerImage(context.Background(), mkfs, lower)
	if err != nil {
		t.Fatal(err)
	}
	if img != filepath.Join(filepath.Dir(lower), LayerImageName) {
		t.Fatalf("image at %s", img)
	}
	b, err := os.ReadFile(img)
	if err != nil || len(b) < 2048 || b[1024] != 0xe2 || b[1025] != 0xe1 || b[1026] != 0xf5 || b[1027] != 0xe0 {
		t.Fatalf("not an erofs image (superblock magic at 1024): %v", err)
	}
	st1, _ := os.Stat(img)
	// A second call uses the cache.
	if img2, err := layerImage(context.Background(), "/nonexistent/mkfs.erofs", lower); err != nil || img2 != img {
		t.Fatalf("cached image: %v %s", err, img2)
	}
	st2, _ := os.Stat(img)
	if !os.SameFile(st1, st2) {
		t.Error("the cached image was rebuilt")
	}
	ents, _ := os.ReadDir(filepath.Dir(lower))
	if len(ents) != 2 {
		t.Errorf("snapshot directory holds %v, want fs and the image", ents)
	}
}

// hotplugVM records the disks hot-plugged into it.
type hotplugVM struct {
	vm.Instance
	mu     sync.Mutex
	serial map[string]string // image path -> serial
}

func (h *hotplugVM) AddReadOnlyDisk(ctx context.Context, path, id, serial string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.serial[path]; ok {
		return fmt.Errorf("%s attached twice", path)
	}
	h.serial[path] = serial
	return nil
}

// TestSendErofsRootfs: layers become wire.RootfsErofs mounts, topmost
// first, naming only serials; a layer shared by two containers of a pod is
// built and attached once; a new VM starts its own numbering.
func TestSendErofsRootfs(t *testing.T) {
	root := t.TempDir()
	mkfs := filepath.Join(root, "mkfs")
	builds := filepath.Join(root, "builds")
	// A stand-in for mkfs.erofs: args are --quiet --preserve-mtime OUT DIR.
	os.WriteFile(mkfs, []byte("#!/bin/sh\necho \"$4\" >> "+builds+"\necho image > \"$3\"\n"), 0o755)
	snap := func(n string) string {
		p := filepath.Join(root, "snapshots", n, "fs")
		os.MkdirAll(p, 0o755)
		return p
	}
	base, mid, topA, topB, up := snap("1"), snap("2"), snap("3"), snap("4"), snap("5")
	ov := func(lowers ...string) []mount.Mount {
		return []mount.Mount{{Type: "overlay", Source: "overlay", Options: []string{"upperdir=" + up, "lowerdir=" + strings.Join(lowers, ":")}}}
	}
	s := &Service{}
	cfg := &Config{MkfsErofs: mkfs}
	v := &hotplugVM{serial: map[string]string{}}
	ctx := context.Background()
	got := func(ms []mount.Mount) []string {
		t.Helper()
		out, ok, why, err := s.sendErofsRootfs(ctx, v, cfg, "c", ms)
		if err != nil || !ok {
			t.Fatalf("sendErofsRootfs: ok %v %q %v", ok, why, err)
		}
		var serials []string
		for _, m := range out {
			if m.Type != wire.RootfsErofs || strings.Contains(m.Source, "/") {
				t.Fatalf("mount %+v", m)
			}
			serials = append(serials, m.Source)
		}
		return serials
	}
	if s1 := got(ov(topA, mid, base)); !slices.Equal(s1, []string{"raksh-ro-0", "raksh-ro-1", "raksh-ro-2"}) {
		t.Fatalf("first container: %v", s1)
	}
	if s2 := got(ov(topB, mid, base)); !slices.Equal(s2, []string{"raksh-ro-3", "raksh-ro-1", "raksh-ro-2"}) {
		t.Fatalf("second container sharing two layers: %v", s2)
	}
	b, _ := os.ReadFile(builds)
	if n := strings.Count(string(b), "\n"); n != 4 {
		t.Errorf("%d image builds, want 4 (one per layer): %s", n, b)
	}
	if v.serial[filepath.Join(filepath.Dir(mid), LayerImageName)] != "raksh-ro-1" {
		t.Errorf("attached: %v", v.serial)
	}
	// Another VM (a new pod): its own disks, numbered from 0, no rebuild.
	v = &hotplugVM{serial: map[string]string{}}
	if s3 := got(ov(mid, base)); !slices.Equal(s3, []string{"raksh-ro-0", "raksh-ro-1"}) {
		t.Fatalf("new VM: %v", s3)
	}
	if b2, _ := os.ReadFile(builds); len(b2) != len(b) {
		t.Errorf("cached layers rebuilt: %s", b2)
	}
	// A VM that cannot hot-plug takes the tar path.
	if _, ok, why, err := s.sendErofsRootfs(ctx, struct{ vm.Instance }{}, cfg, "c", ov(base)); ok || err != nil || why == "" {
		t.Errorf("VM without hotplug: ok %v %q %v", ok, why, err)
	}
}
