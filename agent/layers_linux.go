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
	"github.com/containerd/log"
	"golang.org/x/sys/unix"

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
	for _, m := range mounts {
		mp, err := mountLayerDisk(ctx, m.Source)
		if err != nil {
			return fmt.Errorf("rootfs of %q: %w", id, err)
		}
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
		return mp, nil
	}
	dev, err := waitLayerDisk(ctx, serial)
	if err != nil {
		return "", err
	}
	mp := filepath.Join(LayerRoot, serial)
	if err := os.MkdirAll(mp, 0o755); err != nil {
		return "", err
	}
	if err := unix.Mount(dev, mp, "erofs", unix.MS_RDONLY, ""); err != nil {
		return "", fmt.Errorf("mount layer disk %s (%s) as erofs: %w", serial, dev, err)
	}
	layerMounted[serial] = mp
	return mp, nil
}

// waitLayerDisk waits for the virtio-blk disk with serial and its device
// node.
func waitLayerDisk(ctx context.Context, serial string) (string, error) {
	deadline := time.Now().Add(layerDiskTimeout)
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
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
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
