package runtime

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/pkg/archive"
	"github.com/containerd/log"

	"github.com/raksh-project/raksh/internal/wire"
	"github.com/raksh-project/raksh/runtime/vm"
)

// sendRootfs mounts the container's rootfs on the host and streams it into
// the VM as a tar archive.
func (s *Service) sendRootfs(ctx context.Context, v vm.Instance, c *hostContainer, mounts []*types.Mount) (<-chan error, error) {
	root := filepath.Join(c.bundle, "rootfs")
	if err := os.MkdirAll(root, 0o711); err != nil {
		return nil, err
	}
	if len(mounts) > 0 {
		var ms []mount.Mount
		for _, m := range mounts {
			ms = append(ms, mount.Mount{Type: m.Type, Source: m.Source, Target: m.Target, Options: m.Options})
		}
		if err := mount.All(ms, root); err != nil {
			return nil, fmt.Errorf("mount rootfs: %w", err)
		}
		c.rootfs = root
	}
	st, err := v.StartStream(ctx, wire.RootfsStream(c.id))
	if err != nil {
		return nil, err
	}
	empty, err := os.MkdirTemp("", "raksh-empty-")
	if err != nil {
		st.Close()
		return nil, err
	}
	done := make(chan error, 1)
	go func() {
		defer os.RemoveAll(empty)
		err := archive.WriteDiff(ctx, st, empty, root)
		st.Close()
		if err != nil {
			err = fmt.Errorf("send rootfs: %w", err)
		}
		done <- err
	}()
	return done, nil
}

func (s *Service) unmountRootfs(ctx context.Context, c *hostContainer) {
	if c.rootfs == "" {
		return
	}
	if err := mount.UnmountAll(c.rootfs, 0); err != nil {
		log.G(ctx).WithError(err).WithField("id", c.id).Warn("failed to unmount rootfs")
		return
	}
	c.rootfs = ""
}
