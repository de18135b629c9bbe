package agent

import (
	"context"
	"fmt"
	"os"
	"path"
	"slices"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/raksh-project/raksh/agent/mounts"
	"github.com/raksh-project/raksh/agent/volumes"
	agentapi "github.com/raksh-project/raksh/api/agent/v1"
	"github.com/raksh-project/raksh/envelope"
)

// CRI annotations naming a container's pod sandbox and its role.
const (
	annSandboxID     = "io.kubernetes.cri.sandbox-id"
	annContainerType = "io.kubernetes.cri.container-type"
)

// podOf returns the pod a container belongs to for its shared guest
// volumes (/dev/shm, emptyDirs): its CRI sandbox, or itself outside CRI.
func podOf(c *container) string {
	if c.spec != nil {
		if sb := c.spec.Annotations[annSandboxID]; sb != "" {
			return sb
		}
	}
	return c.id
}

// guestMounts returns the mounts container c runs with in the guest (see
// package mounts: a node path never resolves in the guest). Bind mounts
// resolve to what the shim delivered through the Volumes service; CRI's
// /dev/shm to the pod's shared guest tmpfs.
func (s *Service) guestMounts(c *container) ([]specs.Mount, error) {
	var (
		shmErr  error
		refused []string
	)
	resolve := func(m specs.Mount) (mounts.Resolved, bool) {
		if p, kind, ok := s.volumes.Lookup(c.id, m.Destination); ok {
			// Trees are copies the agent keeps updating: never writable.
			r := mounts.Resolved{Path: p, ReadOnly: kind == volumes.Tree, Shared: kind == volumes.Shared}
			if c.mountPolicy != nil {
				ro := r.ReadOnly || slices.Contains(m.Options, "ro") || slices.Contains(m.Options, "rro")
				if k := policyKind(kind); !c.mountPolicy.Allows(path.Clean(m.Destination), k, ro) {
					refused = append(refused, fmt.Sprintf("%s mount at %q (read-only %v)", k, m.Destination, ro))
				}
			}
			return r, true
		}
		if path.Clean(m.Destination) == mounts.ShmDestination {
			p, err := s.volumes.Shm(podOf(c))
			if err != nil {
				shmErr = err
				return mounts.Resolved{}, false
			}
			return mounts.Resolved{Path: p}, true
		}
		return mounts.Resolved{}, false
	}
	ms, err := mounts.Rewrite(c.spec.Mounts, resolve)
	if shmErr != nil {
		log.G(context.TODO()).WithError(shmErr).WithField("id", c.id).Warn("pod /dev/shm unavailable: the container gets its own")
	}
	if err != nil {
		return nil, err
	}
	if len(refused) > 0 {
		return nil, fmt.Errorf("the sealed mount policy of container %q does not accept: %s: %w", c.id, strings.Join(refused, "; "), errdefs.ErrPermissionDenied)
	}
	// The sealed files the agent wrote itself (seal.go), added after
	// the node's mounts were rewritten.
	return append(ms, c.sealedMounts...), nil
}

// policyKind names a delivered volume's kind as an envelope's mount
// policy does.
func policyKind(k volumes.Kind) string {
	switch k {
	case volumes.EmptyDir:
		return envelope.MountEmptyDir
	case volumes.Shared:
		return envelope.MountShared
	}
	return envelope.MountCopy
}

// removeVolumes drops a deleted container's copies, and its pod's shared
// volumes when it is the pod's sandbox (or outside CRI).
func (s *Service) removeVolumes(ctx context.Context, c *container) {
	if err := s.volumes.RemoveContainer(c.id); err != nil {
		log.G(ctx).WithError(err).WithField("id", c.id).Warn("failed to remove volume copies")
	}
	if podOf(c) == c.id || c.spec.Annotations[annContainerType] == "sandbox" {
		if err := s.volumes.RemovePod(c.id); err != nil {
			log.G(ctx).WithError(err).WithField("id", c.id).Warn("failed to remove pod volumes")
		}
	}
}

// volumesService is the agent's agentapi.VolumesService.
type volumesService struct{ s *Service }

var _ agentapi.VolumesService = (*volumesService)(nil)

// Put implements agentapi.VolumesService.
func (v *volumesService) Put(ctx context.Context, r *agentapi.PutVolumeRequest) (*agentapi.PutVolumeResponse, error) {
	vol := volumes.Volume{
		Container: r.GetContainerId(), Destination: r.GetDestination(),
		Pod: r.GetPodId(), Name: r.GetName(), SizeBytes: r.GetSizeBytes(),
	}
	switch r.GetKind() {
	case agentapi.VolumeKind_VOLUME_KIND_TREE:
		vol.Kind = volumes.Tree
	case agentapi.VolumeKind_VOLUME_KIND_FILE:
		vol.Kind = volumes.File
	case agentapi.VolumeKind_VOLUME_KIND_EMPTY_DIR:
		vol.Kind = volumes.EmptyDir
	case agentapi.VolumeKind_VOLUME_KIND_SHARED:
		vol.Kind = volumes.Shared
	default:
		return nil, errgrpc.ToGRPCf(errdefs.ErrInvalidArgument, "unknown volume kind %d", r.GetKind())
	}
	for _, e := range r.GetEntries() {
		ve := volumes.Entry{Path: e.GetPath(), Mode: e.GetMode(), UID: e.GetUid(), GID: e.GetGid(), Data: e.GetData(), Target: e.GetTarget()}
		switch e.GetType() {
		case agentapi.EntryType_ENTRY_TYPE_DIR:
			ve.Type = volumes.Dir
		case agentapi.EntryType_ENTRY_TYPE_REGULAR:
			ve.Type = volumes.Regular
		case agentapi.EntryType_ENTRY_TYPE_SYMLINK:
			ve.Type = volumes.Symlink
		default:
			return nil, errgrpc.ToGRPCf(errdefs.ErrInvalidArgument, "volume entry %q: unknown type %d", e.GetPath(), e.GetType())
		}
		vol.Entries = append(vol.Entries, ve)
	}
	if err := v.s.volumes.Put(vol); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	log.G(ctx).WithField("id", vol.Container).WithField("destination", vol.Destination).WithField("entries", len(vol.Entries)).Debug("volume delivered")
	return &agentapi.PutVolumeResponse{}, nil
}

// Get implements agentapi.VolumesService.
func (v *volumesService) Get(ctx context.Context, r *agentapi.GetVolumeRequest) (*agentapi.GetVolumeResponse, error) {
	data, truncated, err := v.s.volumes.Get(r.GetContainerId(), r.GetDestination(), r.GetMaxBytes())
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &agentapi.GetVolumeResponse{Data: data, Truncated: truncated}, nil
}

// Remove implements agentapi.VolumesService.
func (v *volumesService) Remove(ctx context.Context, r *agentapi.RemoveVolumesRequest) (*agentapi.RemoveVolumesResponse, error) {
	if err := v.s.volumes.RemoveContainer(r.GetContainerId()); err != nil {
		return nil, errgrpc.ToGRPC(fmt.Errorf("remove volumes of %q: %w", r.GetContainerId(), err))
	}
	return &agentapi.RemoveVolumesResponse{}, nil
}

// makeRootDir creates a container's bundle (0700, the agent's) and its
// empty root directory. The root directory is 0755 as a snapshot's root is
// on the node: an archive of the image carries no entry for "/", and a
// 0700 root would make every file of the image unreachable to a non-root
// user ("Permission denied").
func makeRootDir(bundle, rootfs string) error {
	if err := os.MkdirAll(bundle, 0o700); err != nil {
		return err
	}
	if err := os.Mkdir(rootfs, 0o755); err != nil && !os.IsExist(err) {
		return err
	}
	return os.Chmod(rootfs, 0o755)
}
