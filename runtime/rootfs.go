package runtime

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/pkg/archive"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"google.golang.org/protobuf/proto"

	agentapi "github.com/raksh-project/raksh/api/agent/v1"
	"github.com/raksh-project/raksh/internal/wire"
	"github.com/raksh-project/raksh/runtime/launch"
	"github.com/raksh-project/raksh/runtime/vm"
	"github.com/raksh-project/raksh/snapshotter/rootfs"
)

// sendRootfs hands the container's rootfs to the VM and returns the rootfs
// mounts or the rootfs descriptor to pass to the agent, and a channel
// reporting the end of the transfer.
//
// A raksh rootfs (raksh-snapshotter's descriptor of a guest-pulled or
// encrypted image) is never mounted or read on the host: the descriptor
// goes to the agent as an agentapi.RootfsDescriptor (without host paths)
// and the cached ciphertext of its "blob" layers is streamed read-only, one
// wire.BlobStream per layer;
// the guest pulls, verifies, decrypts and unpacks. A raksh rootfs whose
// descriptor is unreadable or unsupported is refused, never run on the
// host-side stub. A plain image's layers go to the VM as read-only erofs
// disks when cfg.PlainRootfs is "erofs" (erofs.go) and the rootfs has that
// shape; any other rootfs is mounted on the host and streamed as a tar
// archive.
func (s *Service) sendRootfs(ctx context.Context, v vm.Instance, cfg *Config, c *hostContainer, mounts []*types.Mount) ([]*types.Mount, *agentapi.RootfsDescriptor, <-chan error, error) {
	var ms []mount.Mount
	for _, m := range mounts {
		ms = append(ms, mount.Mount{Type: m.Type, Source: m.Source, Target: m.Target, Options: m.Options})
	}
	d, ok, err := rootfs.ParseMounts(ms)
	switch {
	case err != nil:
		return nil, nil, nil, fmt.Errorf("refusing container %q: its raksh rootfs descriptor is unusable: %w: %w", c.id, err, errdefs.ErrInvalidArgument)
	case ok:
		return s.sendImageRootfs(ctx, v, c, d)
	}
	if cfg.PlainRootfs == launch.PlainRootfsErofs && len(ms) > 0 {
		out, ok, why, err := s.sendErofsRootfs(ctx, v, cfg, c.id, ms)
		if err != nil {
			return nil, nil, nil, err
		}
		if ok {
			done := make(chan error, 1)
			done <- nil
			return out, nil, done, nil
		}
		log.G(ctx).WithField("id", c.id).WithField("reason", why).Info("rootfs: streaming a tar instead of erofs layer disks")
	}

	root := filepath.Join(c.bundle, "rootfs")
	if err := os.MkdirAll(root, 0o711); err != nil {
		return nil, nil, nil, err
	}
	if len(ms) > 0 {
		if err := mount.All(ms, root); err != nil {
			return nil, nil, nil, fmt.Errorf("mount rootfs: %w", err)
		}
		c.rootfs = root
	}
	st, err := v.StartStream(ctx, wire.RootfsStream(c.id))
	if err != nil {
		return nil, nil, nil, err
	}
	empty, err := os.MkdirTemp("", "raksh-empty-")
	if err != nil {
		st.Close()
		return nil, nil, nil, err
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
	return []*types.Mount{{Type: wire.RootfsTar, Source: wire.RootfsStream(c.id)}}, nil, done, nil
}

// blobStreams lists, in layer order, the blob streams of d's "blob" layers
// with the host path each carries.
func blobStreams(containerID string, d *rootfs.Descriptor) (names, paths []string) {
	seen := map[string]int{}
	for _, l := range d.Layers {
		if l.Source != rootfs.SourceBlob {
			continue
		}
		names = append(names, wire.BlobStream(containerID, l.Digest, seen[l.Digest]))
		paths = append(paths, l.Path)
		seen[l.Digest]++
	}
	return names, paths
}

// sendImageRootfs passes descriptor d to the agent and streams the cached
// ciphertext blobs of its "blob" layers, in layer order, each on its own
// stream. The blobs are opened read-only up front, so a missing cache file
// fails the container before anything reaches the VM.
func (s *Service) sendImageRootfs(ctx context.Context, v vm.Instance, c *hostContainer, d *rootfs.Descriptor) ([]*types.Mount, *agentapi.RootfsDescriptor, <-chan error, error) {
	g := d.AgentDescriptor()
	if _, err := proto.Marshal(g); err != nil {
		return nil, nil, nil, fmt.Errorf("refusing container %q: its raksh rootfs descriptor cannot be encoded: %w: %w", c.id, err, errdefs.ErrInvalidArgument)
	}
	names, paths := blobStreams(c.id, d)
	files := make([]*os.File, 0, len(paths))
	closeAll := func() {
		for _, f := range files {
			f.Close()
		}
	}
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			closeAll()
			return nil, nil, nil, fmt.Errorf("refusing container %q: cached layer blob: %w: %w", c.id, err, errdefs.ErrFailedPrecondition)
		}
		files = append(files, f)
	}
	log.G(ctx).WithField("id", c.id).WithField("mode", d.Mode).WithField("image", d.ImageRef).WithField("blobs", len(files)).
		Info("rootfs is built in the guest")
	done := make(chan error, 1)
	go func() {
		defer closeAll()
		var errs []error
		for i, f := range files {
			if err := sendBlob(ctx, v, names[i], f); err != nil {
				errs = append(errs, err)
				// The agent drains every stream it expects, so later
				// streams cannot block; still try them.
			}
		}
		done <- errors.Join(errs...)
	}()
	return nil, g, done, nil
}

// blobSendIdle bounds how long a blob send may make no progress. The agent
// reads every blob stream it expects, or drains it after a failed build, so
// this only ends sends to an agent that failed before reading the rootfs
// (it must exceed the time the agent takes to build one layer).
var blobSendIdle = 5 * time.Minute

// sendBlob copies f to a new stream called name and closes it.
func sendBlob(ctx context.Context, v vm.Instance, name string, f *os.File) error {
	st, err := v.StartStream(ctx, name)
	if err != nil {
		return fmt.Errorf("send layer blob: %w", err)
	}
	defer st.Close()
	if _, err := io.Copy(idleWriter{st}, f); err != nil {
		return fmt.Errorf("send layer blob %s: %w", filepath.Base(f.Name()), err)
	}
	return nil
}

// idleWriter fails a write that makes no progress for blobSendIdle.
type idleWriter struct{ c net.Conn }

func (w idleWriter) Write(p []byte) (int, error) {
	w.c.SetWriteDeadline(time.Now().Add(blobSendIdle))
	return w.c.Write(p)
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
