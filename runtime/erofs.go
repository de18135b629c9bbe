package runtime

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/pkg/sys/reaper"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	agentapi "github.com/raksh-project/raksh/api/agent/v1"
	"github.com/raksh-project/raksh/internal/wire"
	"github.com/raksh-project/raksh/runtime/launch"
	"github.com/raksh-project/raksh/runtime/vm"
)

// LayerImageName is the file, next to a committed snapshot's "fs"
// directory, holding the erofs image of that layer. It lives in the
// snapshot's own directory, so it is shared by every pod using the layer
// and removed with the snapshot when containerd garbage-collects it.
const LayerImageName = "raksh-layer.erofs"

// runCommand runs cmd to its end. The shim replaces it (useReaper): there
// containerd's reaper collects every child's exit, so exec.Cmd.Wait alone
// would fail with ECHILD.
var runCommand = (*exec.Cmd).Run

// useReaper makes runCommand wait through containerd's reaper (the shim
// runs with it).
func useReaper() {
	runCommand = func(cmd *exec.Cmd) error {
		ec, err := reaper.Default.Start(cmd)
		if err != nil {
			return err
		}
		status, err := reaper.Default.Wait(cmd, ec)
		if err != nil {
			return err
		}
		if status != 0 {
			return fmt.Errorf("%s exited with status %d", filepath.Base(cmd.Path), status)
		}
		return nil
	}
}

// layerDisks tracks the erofs layer disks attached to the pod's VM and
// which containers use each: containers sharing layers share the disks,
// and a disk is unplugged when the last container using it is deleted.
type layerDisks struct {
	mu      sync.Mutex
	vm      vm.Instance
	hp      vm.ReadOnlyDisks
	guest   agentapi.LayersService
	disks   map[string]*layerDisk   // image path -> disk
	users   map[string][]*layerDisk // container id -> the disks it holds, one per layer
	serials map[int]bool            // serial numbers in use, or retired
	// noUnplug is set once the guest failed to release a device in time:
	// this VM's disks then stay attached (each further try would wait
	// as long again).
	noUnplug bool
	// stopping is set when the shim stops the VM: no more detaches.
	stopping bool
}

// layerDisk is one layer image's disk in the VM. refs is guarded by
// layerDisks.mu; op is held while the disk is being attached or detached
// and guards attached and n, so a container that needs the layer while it
// is being detached waits and attaches it again.
type layerDisk struct {
	img      string
	refs     int
	op       sync.Mutex
	attached bool
	n        int // serial number while attached
}

// layersClient is the agent's Layers service of a VM (replaced in tests).
var layersClient = func(v vm.Instance) agentapi.LayersService {
	return agentapi.NewLayersClient(v.Client())
}

// newSerial returns the lowest serial number not in use and not retired.
// Called with mu held.
func (l *layerDisks) newSerial() int {
	n := 0
	for l.serials[n] {
		n++
	}
	l.serials[n] = true
	return n
}

// acquire counts one more user of the layer image img and attaches its
// disk if it is not attached, returning the disk and its serial.
func (l *layerDisks) acquire(ctx context.Context, img string) (*layerDisk, string, error) {
	l.mu.Lock()
	d := l.disks[img]
	if d == nil {
		d = &layerDisk{img: img}
		l.disks[img] = d
	}
	d.refs++
	hp := l.hp
	l.mu.Unlock()
	d.op.Lock()
	defer d.op.Unlock()
	if !d.attached {
		l.mu.Lock()
		n := l.newSerial()
		l.mu.Unlock()
		if err := hp.AddReadOnlyDisk(ctx, img, strconv.Itoa(n), wire.LayerSerial(n)); err != nil {
			// n is not freed: a device_add that timed out may still
			// complete in QEMU.
			l.mu.Lock()
			d.refs--
			l.forget(d)
			l.mu.Unlock()
			return nil, "", fmt.Errorf("attach layer disk: %w", err)
		}
		d.attached, d.n = true, n
	}
	return d, wire.LayerSerial(d.n), nil
}

// forget drops d from the map when nothing uses or holds it. Called with
// mu held.
func (l *layerDisks) forget(d *layerDisk) {
	if d.refs == 0 && !d.attached && l.disks[d.img] == d {
		delete(l.disks, d.img)
	}
}

// release counts one user of d less and, when it was the last, detaches
// the disk: the agent unmounts the layer (Layers.Release), then the VM
// unplugs the disk. A failure is logged and never returned: when the agent
// refuses or fails, the disk stays attached and mounted, with no user, and
// the next container needing the layer uses it again (its deletion retries
// the detach); when the unplug fails, the guest may still hold the device,
// so its serial is retired (never reused) and the layer gets a new disk
// when it is needed again; when the guest did not release the device in
// time, the VM's disks are no longer unplugged (each try would wait as
// long, delaying a container that needs the layer).
func (l *layerDisks) release(ctx context.Context, d *layerDisk) {
	l.mu.Lock()
	d.refs--
	last := d.refs == 0
	hp, guest := l.hp, l.guest
	l.mu.Unlock()
	if !last {
		return
	}
	d.op.Lock()
	defer d.op.Unlock()
	l.mu.Lock()
	busy, noUnplug := d.refs > 0, l.noUnplug
	l.mu.Unlock()
	if busy || !d.attached || noUnplug {
		return
	}
	serial := wire.LayerSerial(d.n)
	lg := log.G(ctx).WithField("serial", serial).WithField("snapshot", filepath.Base(filepath.Dir(d.img)))
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	_, err := guest.Release(rctx, &agentapi.ReleaseLayerRequest{Serial: serial})
	cancel()
	if err != nil {
		if l.vmGone() {
			return
		}
		lg.WithError(err).Warn("layer disk stays attached: the guest did not release it")
		return
	}
	err = hp.RemoveReadOnlyDisk(ctx, strconv.Itoa(d.n))
	l.mu.Lock()
	d.attached = false
	if err == nil {
		delete(l.serials, d.n)
	}
	if errors.Is(err, vm.ErrUnplugPending) {
		l.noUnplug = true
	}
	l.forget(d)
	l.mu.Unlock()
	if err != nil {
		if l.vmGone() {
			return
		}
		if errors.Is(err, vm.ErrUnplugPending) {
			lg.WithError(err).Warn("layer disk unplug failed: its serial is retired; this VM's other layer disks stay attached until it stops")
			return
		}
		lg.WithError(err).Warn("layer disk unplug failed: its serial is retired, the layer gets a new disk when needed")
		return
	}
	lg.Debug("layer disk detached")
}

// vmGone reports whether the VM has stopped (a detach failing then is no
// news: everything goes with the VM).
func (l *layerDisks) vmGone() bool {
	l.mu.Lock()
	v, stopping := l.vm, l.stopping
	l.mu.Unlock()
	if stopping {
		return true
	}
	select {
	case <-v.Done():
		return true
	default:
		return false
	}
}

// releaseLayers releases the layer disks container id holds and waits for
// their detaches. When the VM is gone there is nothing to detach.
func (s *Service) releaseLayers(ctx context.Context, id string) {
	s.releaseDisks(ctx, s.takeLayers(id))
}

// releaseLayersLater releases the layer disks container id holds (its
// deletion, or its failed creation) without waiting for the detaches: the
// container's deletion (and the pod's, which CRI does container by
// container) does not wait for the unplugs. A container created meanwhile
// that needs one of the layers waits for that layer's detach.
//
// When the shim has no container left it is about to stop the VM (ctr's
// containers, a pod's sandbox container): the disks go with the VM, and
// unplugs in flight would only hold QMP while QEMU is asked to quit.
func (s *Service) releaseLayersLater(ctx context.Context, id string) {
	ds := s.takeLayers(id)
	s.mu.Lock()
	last := len(s.containers) == 0
	s.mu.Unlock()
	switch {
	case len(ds) == 0:
	case last:
		// Counted down only: a container created after all reuses them.
		s.layers.mu.Lock()
		for _, d := range ds {
			d.refs--
		}
		s.layers.mu.Unlock()
	default:
		go s.releaseDisks(context.WithoutCancel(ctx), ds)
	}
}

// stopLayers stops the detaches: the VM is stopping.
func (s *Service) stopLayers() {
	s.layers.mu.Lock()
	s.layers.stopping = true
	s.layers.mu.Unlock()
}

// takeLayers removes and returns the disks container id holds.
func (s *Service) takeLayers(id string) []*layerDisk {
	s.layers.mu.Lock()
	defer s.layers.mu.Unlock()
	ds := s.layers.users[id]
	delete(s.layers.users, id)
	return ds
}

func (s *Service) releaseDisks(ctx context.Context, ds []*layerDisk) {
	if len(ds) == 0 || s.layers.vmGone() {
		return
	}
	for _, d := range ds {
		s.layers.mu.Lock()
		stopping := s.layers.stopping
		s.layers.mu.Unlock()
		if stopping {
			return
		}
		s.layers.release(ctx, d)
	}
}

// overlayLayers returns the lower directories (topmost first) of an
// overlay rootfs mount made by containerd's overlay snapshotter (or
// raksh-snapshotter's ordinary snapshots), and whether the rootfs has that
// shape with an empty upper directory: only then can it be handed to the
// guest as read-only layer disks plus a fresh writable layer.
func overlayLayers(ms []mount.Mount) ([]string, string) {
	if len(ms) != 1 || ms[0].Type != "overlay" {
		return nil, "not a single overlay mount"
	}
	var lowers []string
	upper := ""
	for _, o := range ms[0].Options {
		k, v, _ := strings.Cut(o, "=")
		switch k {
		case "lowerdir":
			lowers = strings.Split(v, ":")
		case "upperdir":
			upper = v
		}
	}
	if len(lowers) == 0 {
		return nil, "overlay mount without lowerdir"
	}
	for _, l := range lowers {
		if !filepath.IsAbs(l) || filepath.Base(l) != "fs" {
			return nil, "a lower directory is not a snapshot's fs directory"
		}
	}
	if upper != "" {
		f, err := os.Open(upper)
		if err != nil {
			return nil, "upper directory unreadable"
		}
		_, err = f.Readdirnames(1)
		f.Close()
		if !errors.Is(err, io.EOF) {
			return nil, "upper directory is not empty"
		}
	}
	return lowers, ""
}

// layerImage returns the erofs image of the committed snapshot directory
// lower, building it with mkfs.erofs the first time. The image is written
// to a temporary file and renamed into place, so a crash or a concurrent
// build never leaves a partial image under the final name. Overlay
// whiteouts (0/0 character devices) and opaque directories
// (trusted.overlay.opaque xattrs) are kept by mkfs.erofs as they are.
func layerImage(ctx context.Context, mkfs, lower string) (string, error) {
	img := filepath.Join(filepath.Dir(lower), LayerImageName)
	if _, err := os.Stat(img); err == nil {
		return img, nil
	}
	tmp, err := os.CreateTemp(filepath.Dir(lower), LayerImageName+".tmp-")
	if err != nil {
		return "", fmt.Errorf("layer image: %w", err)
	}
	tmp.Close()
	defer os.Remove(tmp.Name())
	start := time.Now()
	cmd := exec.CommandContext(ctx, mkfs, "--quiet", "--preserve-mtime", tmp.Name(), lower)
	var outBuf strings.Builder
	cmd.Stdout, cmd.Stderr = &outBuf, &outBuf
	if err := runCommand(cmd); err != nil {
		out := outBuf.String()
		if errors.Is(err, exec.ErrNotFound) || errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("plain_rootfs = %q needs %s (erofs-utils): %v; install erofs-utils or set plain_rootfs = %q in the runtime config: %w",
				launch.PlainRootfsErofs, mkfs, err, launch.PlainRootfsTar, errdefs.ErrFailedPrecondition)
		}
		return "", fmt.Errorf("build erofs image of layer %s: %v: %s", filepath.Base(filepath.Dir(lower)), err, strings.TrimSpace(out))
	}
	if err := os.Rename(tmp.Name(), img); err != nil {
		return "", fmt.Errorf("layer image: %w", err)
	}
	log.G(ctx).WithField("snapshot", filepath.Base(filepath.Dir(lower))).WithField("elapsed", time.Since(start)).Info("built erofs layer image")
	return img, nil
}

// sendErofsRootfs hands a plain image's layers to the VM as read-only
// erofs disks (built once per layer, hot-plugged once per VM) and returns
// the agent's rootfs mounts: one wire.RootfsErofs mount per layer, topmost
// first, naming only the disk's serial. ok is false when this rootfs or VM
// cannot take this path (the caller then streams a tar); why says why.
func (s *Service) sendErofsRootfs(ctx context.Context, v vm.Instance, cfg *Config, id string, ms []mount.Mount) (_ []*types.Mount, ok bool, why string, _ error) {
	hp, can := v.(vm.ReadOnlyDisks)
	if !can {
		return nil, false, "the VM cannot hot-plug disks", nil
	}
	lowers, why := overlayLayers(ms)
	if why != "" {
		return nil, false, why, nil
	}
	mkfs := cfg.MkfsErofs
	if mkfs == "" {
		mkfs = "mkfs.erofs"
	}
	s.layers.mu.Lock()
	if s.layers.vm != v {
		s.layers.vm, s.layers.hp, s.layers.guest = v, hp, layersClient(v)
		s.layers.disks, s.layers.users, s.layers.serials = map[string]*layerDisk{}, map[string][]*layerDisk{}, map[int]bool{}
		s.layers.noUnplug, s.layers.stopping = false, false
	}
	if _, ok := s.layers.users[id]; ok {
		s.layers.mu.Unlock()
		return nil, false, "", fmt.Errorf("container %q already holds layer disks: %w", id, errdefs.ErrAlreadyExists)
	}
	s.layers.users[id] = nil
	s.layers.mu.Unlock()
	var out []*types.Mount
	for _, l := range lowers {
		img, err := layerImage(ctx, mkfs, l)
		if err == nil {
			var d *layerDisk
			var serial string
			if d, serial, err = s.layers.acquire(ctx, img); err == nil {
				s.layers.mu.Lock()
				s.layers.users[id] = append(s.layers.users[id], d)
				s.layers.mu.Unlock()
				out = append(out, &types.Mount{Type: wire.RootfsErofs, Source: serial, Options: []string{"ro"}})
				continue
			}
		}
		s.releaseLayers(ctx, id)
		return nil, false, "", fmt.Errorf("container %q: %w", id, err)
	}
	log.G(ctx).WithField("id", id).WithField("layers", len(out)).Info("rootfs: plain image layers as erofs disks")
	return out, true, "", nil
}
