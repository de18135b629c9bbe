package runtime

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"

	agentapi "github.com/raksh-project/raksh/api/agent/v1"
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

// hotplugVM records the disks hot-plugged into it, and the plug and
// unplug calls (with its guest's releases) in order.
type hotplugVM struct {
	vm.Instance
	mu      sync.Mutex
	serial  map[string]string // image path -> serial, while attached
	byID    map[string]string // disk id -> image path
	log     []string          // "add raksh-ro-N", "release raksh-ro-N", "remove N"
	failAdd string            // an image path whose attach fails
	rmErr   error             // if set, unplugs fail with it
	rmGate  chan struct{}     // if set, an unplug waits for it
	done    chan struct{}
}

func newHotplugVM() *hotplugVM {
	return &hotplugVM{serial: map[string]string{}, byID: map[string]string{}, done: make(chan struct{})}
}

func (h *hotplugVM) Done() <-chan struct{} { return h.done }

func (h *hotplugVM) record(e string) {
	h.mu.Lock()
	h.log = append(h.log, e)
	h.mu.Unlock()
}

func (h *hotplugVM) events() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.log)
}

func (h *hotplugVM) AddReadOnlyDisk(ctx context.Context, path, id, serial string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if path == h.failAdd {
		return errors.New("device_add failed")
	}
	if _, ok := h.serial[path]; ok {
		return fmt.Errorf("%s attached twice", path)
	}
	if _, ok := h.byID[id]; ok {
		return fmt.Errorf("disk id %s reused while attached", id)
	}
	h.serial[path], h.byID[id] = serial, path
	h.log = append(h.log, "add "+serial)
	return nil
}

func (h *hotplugVM) RemoveReadOnlyDisk(ctx context.Context, id string) error {
	if h.rmGate != nil {
		<-h.rmGate
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.log = append(h.log, "remove "+id)
	path, ok := h.byID[id]
	if !ok {
		return fmt.Errorf("disk %s is not attached", id)
	}
	delete(h.serial, path)
	if h.rmErr != nil {
		// The device is stuck: its id stays taken.
		return h.rmErr
	}
	delete(h.byID, id)
	return nil
}

// fakeGuest is the agent's Layers service of a hotplugVM.
type fakeGuest struct {
	v    *hotplugVM
	fail bool
}

func (g *fakeGuest) Release(ctx context.Context, r *agentapi.ReleaseLayerRequest) (*agentapi.ReleaseLayerResponse, error) {
	g.v.record("release " + r.Serial)
	if g.fail {
		return nil, errdefs.ErrFailedPrecondition
	}
	return &agentapi.ReleaseLayerResponse{}, nil
}

// fakeGuests makes layersClient return a fakeGuest for hotplugVMs.
func fakeGuests(t *testing.T) map[*hotplugVM]*fakeGuest {
	guests := map[*hotplugVM]*fakeGuest{}
	old := layersClient
	layersClient = func(v vm.Instance) agentapi.LayersService {
		h := v.(*hotplugVM)
		if guests[h] == nil {
			guests[h] = &fakeGuest{v: h}
		}
		return guests[h]
	}
	t.Cleanup(func() { layersClient = old })
	return guests
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
	fakeGuests(t)
	s := &Service{}
	cfg := &Config{MkfsErofs: mkfs}
	v := newHotplugVM()
	ctx := context.Background()
	ids := 0
	got := func(ms []mount.Mount) []string {
		t.Helper()
		ids++
		out, ok, why, err := s.sendErofsRootfs(ctx, v, cfg, fmt.Sprintf("c%d", ids), ms)
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
	v = newHotplugVM()
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

// TestLayerDiskLifecycle checks the per-VM refcount of layer disks: a disk
// is released in the guest and unplugged when the last container using it
// goes, its serial is reused afterwards (lowest first); a guest refusal
// keeps the disk attached and reusable; a failed unplug retires the serial;
// a failed create releases what it took; a container needing a layer
// while it is being detached waits and attaches it again; after a guest
// did not release a device in time, the VM's disks stay.
func TestLayerDiskLifecycle(t *testing.T) {
	root := t.TempDir()
	mkfs := filepath.Join(root, "mkfs")
	os.WriteFile(mkfs, []byte("#!/bin/sh\necho image > \"$3\"\n"), 0o755)
	snap := func(n string) string {
		p := filepath.Join(root, "snapshots", n, "fs")
		os.MkdirAll(p, 0o755)
		return p
	}
	img := func(lower string) string { return filepath.Join(filepath.Dir(lower), LayerImageName) }
	base, mid, topA, topB, topC := snap("1"), snap("2"), snap("3"), snap("4"), snap("5")
	guests := fakeGuests(t)
	s := &Service{}
	cfg := &Config{MkfsErofs: mkfs}
	v := newHotplugVM()
	ctx := context.Background()
	create := func(id string, lowers ...string) ([]string, error) {
		ms := []mount.Mount{{Type: "overlay", Source: "overlay", Options: []string{"lowerdir=" + strings.Join(lowers, ":")}}}
		out, ok, why, err := s.sendErofsRootfs(ctx, v, cfg, id, ms)
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, errors.New(why)
		}
		var serials []string
		for _, m := range out {
			serials = append(serials, m.Source)
		}
		return serials, nil
	}
	mustCreate := func(id string, want []string, lowers ...string) {
		t.Helper()
		got, err := create(id, lowers...)
		if err != nil || !slices.Equal(got, want) {
			t.Fatalf("container %s: %v %v, want %v", id, got, err, want)
		}
	}
	seen := 0
	step := func(what string, want ...string) {
		t.Helper()
		ev := v.events()
		if got := ev[seen:]; !slices.Equal(got, want) {
			t.Fatalf("%s: %q, want %q", what, got, want)
		}
		seen = len(ev)
	}
	attached := func() int {
		v.mu.Lock()
		defer v.mu.Unlock()
		return len(v.serial)
	}

	mustCreate("a", []string{"raksh-ro-0", "raksh-ro-1", "raksh-ro-2"}, topA, mid, base)
	mustCreate("b", []string{"raksh-ro-3", "raksh-ro-1", "raksh-ro-2"}, topB, mid, base)
	step("two containers sharing two layers", "add raksh-ro-0", "add raksh-ro-1", "add raksh-ro-2", "add raksh-ro-3")
	s.releaseLayers(ctx, "a")
	step("delete a", "release raksh-ro-0", "remove 0")
	if n := attached(); n != 3 {
		t.Fatalf("%d disks attached after a's deletion, want 3", n)
	}
	mustCreate("c", []string{"raksh-ro-0", "raksh-ro-2"}, topC, base)
	step("c reuses serial 0", "add raksh-ro-0")
	s.releaseLayers(ctx, "b")
	step("delete b", "release raksh-ro-3", "remove 3", "release raksh-ro-1", "remove 1")
	s.releaseLayers(ctx, "c")
	step("delete c", "release raksh-ro-0", "remove 0", "release raksh-ro-2", "remove 2")
	s.releaseLayers(ctx, "c")
	step("second delete of c")
	if n := attached(); n != 0 || len(s.layers.disks) != 0 || len(s.layers.serials) != 0 || len(s.layers.users) != 0 {
		t.Fatalf("after every container: %d attached, state %v %v %v", n, s.layers.disks, s.layers.serials, s.layers.users)
	}

	// The guest refuses: the disk stays, and serves the next container.
	guests[v].fail = true
	mustCreate("d", []string{"raksh-ro-0"}, base)
	s.releaseLayers(ctx, "d")
	step("guest refuses", "add raksh-ro-0", "release raksh-ro-0")
	if v.serial[img(base)] != "raksh-ro-0" {
		t.Fatalf("refused disk not attached: %v", v.serial)
	}
	guests[v].fail = false
	mustCreate("e", []string{"raksh-ro-0"}, base)
	s.releaseLayers(ctx, "e")
	step("kept disk reused, then detached", "release raksh-ro-0", "remove 0")

	// The unplug fails: serial 0 is retired, the layer gets a new disk.
	v.rmErr = errors.New("device_del: DeviceNotFound")
	mustCreate("f", []string{"raksh-ro-0"}, base)
	s.releaseLayers(ctx, "f")
	v.rmErr = nil
	mustCreate("g", []string{"raksh-ro-1"}, base)
	step("unplug failure retires the serial", "add raksh-ro-0", "release raksh-ro-0", "remove 0", "add raksh-ro-1")
	s.releaseLayers(ctx, "g")
	step("delete g", "release raksh-ro-1", "remove 1")

	// A failed create releases the layers it had attached.
	v.failAdd = img(topA)
	if _, err := create("h", topB, topA); err == nil {
		t.Fatal("create with a failing attach succeeded")
	}
	v.failAdd = ""
	step("failed create", "add raksh-ro-1", "release raksh-ro-1", "remove 1")
	if _, ok := s.layers.users["h"]; ok {
		t.Error("a failed container still holds layers")
	}

	// A container needing a layer while it is being detached waits and
	// attaches it again once the unplug is done.
	mustCreate("i", []string{"raksh-ro-1"}, base)
	step("i", "add raksh-ro-1")
	v.rmGate = make(chan struct{})
	deleted := make(chan struct{})
	go func() {
		s.releaseLayers(ctx, "i")
		close(deleted)
	}()
	for !slices.Contains(v.events()[seen:], "release raksh-ro-1") {
		runtime.Gosched()
	}
	type result struct {
		serials []string
		err     error
	}
	created := make(chan result, 1)
	go func() {
		serials, err := create("j", base)
		created <- result{serials, err}
	}()
	for {
		s.layers.mu.Lock()
		refs := s.layers.disks[img(base)].refs
		s.layers.mu.Unlock()
		if refs == 1 {
			break
		}
		runtime.Gosched()
	}
	close(v.rmGate)
	<-deleted
	r := <-created
	if r.err != nil || !slices.Equal(r.serials, []string{"raksh-ro-1"}) {
		t.Fatalf("container j: %v %v", r.serials, r.err)
	}
	step("create during detach", "release raksh-ro-1", "remove 1", "add raksh-ro-1")
	if v.serial[img(base)] != "raksh-ro-1" {
		t.Fatalf("j's layer is not attached: %v", v.serial)
	}

	// A guest that does not release a device in time: that serial is
	// retired and the VM's disks are no longer unplugged.
	v.rmErr = fmt.Errorf("device_del of ro-dev-1: %w", vm.ErrUnplugPending)
	s.releaseLayers(ctx, "j")
	step("unplug timeout", "release raksh-ro-1", "remove 1")
	v.rmErr = nil
	// Serials 0 and 1 are retired, and so is 2 (h's failed attach).
	mustCreate("k", []string{"raksh-ro-3", "raksh-ro-4"}, topA, base)
	s.releaseLayers(ctx, "k")
	step("no unplug after a timeout", "add raksh-ro-3", "add raksh-ro-4")
	if n := attached(); n != 2 {
		t.Errorf("%d disks attached, want k's 2 (kept)", n)
	}
}

// TestReleaseLayersLater: a container's deletion hands its disks back at
// once (the id is free again) and does not wait for the unplugs, which
// follow in the background; the last container's deletion (the VM is
// about to stop) and a stopping VM unplug nothing.
func TestReleaseLayersLater(t *testing.T) {
	root := t.TempDir()
	mkfs := filepath.Join(root, "mkfs")
	os.WriteFile(mkfs, []byte("#!/bin/sh\necho image > \"$3\"\n"), 0o755)
	lower := filepath.Join(root, "snapshots", "1", "fs")
	os.MkdirAll(lower, 0o755)
	fakeGuests(t)
	// Another container (a pod's sandbox) stays.
	s := &Service{containers: map[string]*hostContainer{"sandbox": {}}}
	v := newHotplugVM()
	ctx := context.Background()
	ms := []mount.Mount{{Type: "overlay", Source: "overlay", Options: []string{"lowerdir=" + lower}}}
	create := func(id string) {
		t.Helper()
		if _, ok, why, err := s.sendErofsRootfs(ctx, v, &Config{MkfsErofs: mkfs}, id, ms); err != nil || !ok {
			t.Fatalf("create %s: %v %q %v", id, ok, why, err)
		}
	}
	create("c")
	v.rmGate = make(chan struct{})
	returned := make(chan struct{})
	go func() {
		s.releaseLayersLater(ctx, "c")
		close(returned)
	}()
	select {
	case <-returned:
	case <-time.After(time.Minute):
		t.Fatal("releaseLayersLater waited for the unplug")
	}
	s.layers.mu.Lock()
	_, held := s.layers.users["c"]
	s.layers.mu.Unlock()
	if held {
		t.Error("the deleted container still holds disks")
	}
	close(v.rmGate)
	for !slices.Contains(v.events(), "remove 0") {
		runtime.Gosched()
	}
	if got := v.events(); !slices.Equal(got, []string{"add raksh-ro-0", "release raksh-ro-0", "remove 0"}) {
		t.Fatalf("events %q", got)
	}

	// The last container: nothing is unplugged (nor waited for).
	v.rmGate = nil
	create("d")
	s.mu.Lock()
	delete(s.containers, "sandbox")
	s.mu.Unlock()
	s.releaseLayersLater(ctx, "d")
	// A stopping VM: a detach is not even started.
	create("e")
	s.stopLayers()
	s.releaseLayers(ctx, "e")
	if got := v.events(); !slices.Equal(got[3:], []string{"add raksh-ro-0"}) {
		t.Errorf("events after the last container's and a stopping VM's deletions: %q", got[3:])
	}
	s.layers.mu.Lock()
	refs := s.layers.disks[filepath.Join(filepath.Dir(lower), LayerImageName)].refs
	s.layers.mu.Unlock()
	if refs != 1 {
		t.Errorf("the disk has %d users, want 1 (e's, not yet released when the VM stopped)", refs)
	}
}
