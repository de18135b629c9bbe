package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	agentapi "github.com/raksh-project/raksh/api/agent/v1"
	"github.com/raksh-project/raksh/internal/wire"
)

// LayerRoot is where the agent mounts the read-only erofs layer disks of
// plain images, one directory per disk serial (fixed names: nothing the
// host chooses becomes a path).
const LayerRoot = "/run/raksh-layers"

// layerDiskTimeout bounds the wait for a hot-plugged layer disk to appear.
var layerDiskTimeout = 60 * time.Second

var (
	layerMu      sync.Mutex
	layerMounted = map[string]string{} // serial -> mount point
	// layerStacking counts, per serial, the containers between mounting
	// the layer disk and stacking their overlay: Release refuses those.
	layerStacking = map[string]int{}
)

// mountLayers builds dest from the erofs layer disks named by mounts
// (wire.RootfsErofs, topmost first): each disk is mounted read-only once
// per VM under LayerRoot and the layers are stacked with overlayfs, with a
// fresh writable upper layer in the container's bundle (guest tmpfs, which
// spills to the encrypted scratch swap when the pod has one).
func (s *Service) mountLayers(ctx context.Context, id string, mounts []*types.Mount, dest string) error {
	if len(mounts) > 500 {
		return fmt.Errorf("%d layer disks: too many: %w", len(mounts), errdefs.ErrInvalidArgument)
	}
	var lowers []string
	for _, m := range mounts {
		if m.Type != wire.RootfsErofs {
			return fmt.Errorf("rootfs mount of type %q among %s layer mounts: %w", m.Type, wire.RootfsErofs, errdefs.ErrInvalidArgument)
		}
		if _, err := wire.ParseLayerSerial(m.Source); err != nil {
			return fmt.Errorf("%w: %w", err, errdefs.ErrInvalidArgument)
		}
		for _, o := range m.Options {
			if o != "ro" {
				return fmt.Errorf("layer disk option %q: only ro is accepted: %w", o, errdefs.ErrInvalidArgument)
			}
		}
	}
	var held []string
	defer func() {
		layerMu.Lock()
		for _, serial := range held {
			if layerStacking[serial]--; layerStacking[serial] == 0 {
				delete(layerStacking, serial)
			}
		}
		layerMu.Unlock()
	}()
	for _, m := range mounts {
		mp, err := mountLayerDisk(ctx, m.Source)
		if err != nil {
			return fmt.Errorf("rootfs of %q: %w", id, err)
		}
		held = append(held, m.Source)
		lowers = append(lowers, mp)
	}
	bundle := filepath.Dir(dest)
	upper, work := filepath.Join(bundle, "upper"), filepath.Join(bundle, "work")
	for _, d := range []string{upper, work} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return err
		}
	}
	data := "lowerdir=" + strings.Join(lowers, ":") + ",upperdir=" + upper + ",workdir=" + work
	if err := unix.Mount("overlay", dest, "overlay", 0, data); err != nil {
		return fmt.Errorf("rootfs of %q: mount overlay of %d layers: %w", id, len(lowers), err)
	}
	log.G(ctx).WithField("id", id).WithField("layers", len(lowers)).Info("rootfs: erofs layers stacked")
	return nil
}

// mountLayerDisk mounts the erofs disk with serial read-only (once) and
// returns its mount point.
func mountLayerDisk(ctx context.Context, serial string) (string, error) {
	layerMu.Lock()
	defer layerMu.Unlock()
	if mp, ok := layerMounted[serial]; ok {
		layerStacking[serial]++
		return mp, nil
	}
	deadline := time.Now().Add(layerDiskTimeout)
	dev, err := waitLayerDisk(ctx, serial, deadline)
	if err != nil {
		return "", err
	}
	mp := filepath.Join(LayerRoot, serial)
	if err := os.MkdirAll(mp, 0o755); err != nil {
		return "", err
	}
	for {
		err := unix.Mount(dev, mp, "erofs", unix.MS_RDONLY, "")
		if err == nil {
			break
		}
		// A hot-plugged disk's sysfs entry and device node appear before
		// the kernel registers the block device they open: until then
		// opening it fails with ENXIO.
		if !errors.Is(err, unix.ENXIO) || time.Now().After(deadline) {
			return "", fmt.Errorf("mount layer disk %s (%s) as erofs: %w", serial, dev, err)
		}
		if err := pollPause(ctx); err != nil {
			return "", err
		}
	}
	layerMounted[serial] = mp
	layerStacking[serial]++
	return mp, nil
}

// layersService serves agentapi.LayersService.
type layersService struct{ s *Service }

// Release unmounts the guest's erofs mount of a layer disk before the host
// unplugs it: see agentapi.LayersService.
func (l *layersService) Release(ctx context.Context, r *agentapi.ReleaseLayerRequest) (*agentapi.ReleaseLayerResponse, error) {
	if _, err := wire.ParseLayerSerial(r.Serial); err != nil {
		return nil, errgrpc.ToGRPC(fmt.Errorf("release: %w: %w", err, errdefs.ErrInvalidArgument))
	}
	if err := releaseLayerDisk(ctx, r.Serial); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &agentapi.ReleaseLayerResponse{}, nil
}

// mountInfoPath is the mount table releaseLayerDisk checks, and
// unmountLayer unmounts a layer's mount point (both replaced in tests).
var (
	mountInfoPath = "/proc/self/mountinfo"
	unmountLayer  = func(mp string) error { return unix.Unmount(mp, 0) }
)

// releaseLayerDisk unmounts the erofs mount of the layer disk with serial
// (a valid serial), refusing while a container is stacking it or an
// overlay in the mount table still has it as a lower layer. A serial that
// is not mounted is already released.
func releaseLayerDisk(ctx context.Context, serial string) error {
	layerMu.Lock()
	defer layerMu.Unlock()
	mp, ok := layerMounted[serial]
	if !ok {
		return nil
	}
	if layerStacking[serial] > 0 {
		return fmt.Errorf("layer disk %s is being stacked for a container: %w", serial, errdefs.ErrFailedPrecondition)
	}
	f, err := os.Open(mountInfoPath)
	if err != nil {
		return fmt.Errorf("release layer disk %s: %w", serial, err)
	}
	ms, err := mountinfo.GetMountsFromReader(f, func(m *mountinfo.Info) (skip, stop bool) {
		return m.FSType != "overlay", false
	})
	f.Close()
	if err != nil {
		return fmt.Errorf("release layer disk %s: read mount table: %w", serial, err)
	}
	for _, m := range ms {
		if overlayStacks(m.VFSOptions, mp) {
			return fmt.Errorf("layer disk %s is still a lower layer of the overlay at %s: %w", serial, m.Mountpoint, errdefs.ErrFailedPrecondition)
		}
	}
	if err := unmountLayer(mp); err != nil {
		return fmt.Errorf("unmount layer disk %s: %w", serial, err)
	}
	delete(layerMounted, serial)
	os.Remove(mp)
	log.G(ctx).WithField("serial", serial).Debug("layer disk released")
	return nil
}

// overlayStacks reports whether overlay super options (as the mount table
// shows them) name dir as a lower layer.
func overlayStacks(opts, dir string) bool {
	for _, o := range strings.Split(opts, ",") {
		k, v, _ := strings.Cut(o, "=")
		if k != "lowerdir" && k != "lowerdir+" && k != "datadir+" {
			continue
		}
		for _, l := range strings.Split(v, ":") {
			if l == dir {
				return true
			}
		}
	}
	return false
}

// waitLayerDisk waits for the virtio-blk disk with serial and its device
// node.
func waitLayerDisk(ctx context.Context, serial string, deadline time.Time) (string, error) {
	for {
		serials, _ := filepath.Glob("/sys/block/vd*/serial")
		for _, p := range serials {
			b, err := os.ReadFile(p)
			if err != nil || strings.TrimSpace(string(b)) != serial {
				continue
			}
			dev := "/dev/" + filepath.Base(filepath.Dir(p))
			if _, err := os.Stat(dev); err == nil {
				return dev, nil
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("layer disk %s did not appear within %s: %w", serial, layerDiskTimeout, errdefs.ErrNotFound)
		}
		if err := pollPause(ctx); err != nil {
			return "", err
		}
	}
}

// pollPause waits one polling interval of the layer-disk waits.
func pollPause(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(20 * time.Millisecond):
		return nil
	}
}

// releaseRootfs unmounts a container's overlay rootfs, if it has one, so
// its bundle can be removed.
func releaseRootfs(bundle string) error {
	err := unix.Unmount(filepath.Join(bundle, "rootfs"), unix.MNT_DETACH)
	if err == nil || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
		return nil
	}
	return err
}
