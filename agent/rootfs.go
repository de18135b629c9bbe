package agent

import (
	"context"
	"fmt"
	"time"

	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/v2/pkg/archive"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/raksh-project/raksh/internal/wire"
)

// prepareRootfs builds a container's root filesystem in dest from what the
// shim passed as its rootfs mounts.
func (s *Service) prepareRootfs(ctx context.Context, id string, mounts []*types.Mount, dest string) error {
	return s.receiveRootfs(ctx, id, mounts, dest)
}

// receiveRootfs unpacks the tar archive the shim streams (the host's
// ordinary snapshot of a non-confidential image).
func (s *Service) receiveRootfs(ctx context.Context, id string, mounts []*types.Mount, dest string) error {
	if len(mounts) != 1 || mounts[0].Type != wire.RootfsTar {
		return fmt.Errorf("rootfs must be one %s mount, got %d mounts: %w", wire.RootfsTar, len(mounts), errdefs.ErrInvalidArgument)
	}
	if mounts[0].Source != wire.RootfsStream(id) {
		return fmt.Errorf("rootfs stream %q does not belong to container %q: %w", mounts[0].Source, id, errdefs.ErrInvalidArgument)
	}
	st, err := s.streams.claim(ctx, mounts[0].Source, streamTimeout)
	if err != nil {
		return err
	}
	defer st.Close()
	start := time.Now()
	n, err := archive.Apply(ctx, dest, st)
	if err != nil {
		return fmt.Errorf("unpack rootfs of %q: %w", id, err)
	}
	log.G(ctx).WithField("id", id).WithField("bytes", n).WithField("elapsed", time.Since(start)).Debug("rootfs received")
	return nil
}
