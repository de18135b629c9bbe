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

// layerDisks remembers which layer images are already attached to the
// pod's VM, so containers sharing layers share the disks.
type layerDisks struct {
	mu     sync.Mutex
	vm     vm.Instance
	serial map[string]string // image path -> disk serial
	next   int
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
	defer s.layers.mu.Unlock()
	if s.layers.vm != v {
		s.layers.vm, s.layers.serial, s.layers.next = v, map[string]string{}, 0
	}
	var out []*types.Mount
	for _, l := range lowers {
		img, err := layerImage(ctx, mkfs, l)
		if err != nil {
			return nil, false, "", fmt.Errorf("container %q: %w", id, err)
		}
		serial, ok := s.layers.serial[img]
		if !ok {
			n := s.layers.next
			serial = wire.LayerSerial(n)
			if err := hp.AddReadOnlyDisk(ctx, img, strconv.Itoa(n), serial); err != nil {
				return nil, false, "", fmt.Errorf("container %q: attach layer disk: %w", id, err)
			}
			s.layers.next++
			s.layers.serial[img] = serial
		}
		out = append(out, &types.Mount{Type: wire.RootfsErofs, Source: serial, Options: []string{"ro"}})
	}
	log.G(ctx).WithField("id", id).WithField("layers", len(out)).Info("rootfs: plain image layers as erofs disks")
	return out, true, "", nil
}
