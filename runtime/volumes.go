package runtime

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	agentapi "github.com/raksh-project/raksh/api/agent/v1"
	"github.com/raksh-project/raksh/runtime/launch"
	"github.com/raksh-project/raksh/runtime/vm"
	"github.com/raksh-project/raksh/runtime/volumes"
)

// deliverVolumes copies the kubelet volumes and CRI files of container
// id's spec into the VM and asks for its emptyDirs there, then keeps the
// copies updated until stopVolumes. Bind mounts it does not deliver are
// refused by the agent, naming them.
func (s *Service) deliverVolumes(ctx context.Context, v vm.Instance, cfg Config, id string, spec *specs.Spec) error {
	share := launch.SharesFS(cfg)
	vols := volumes.Classify(spec, share)
	if len(vols) == 0 {
		return nil
	}
	s.mu.Lock()
	if s.volumes == nil {
		s.volumes = volumes.NewSyncer(agentapi.NewVolumesClient(v.Client()), volumes.Config{
			MaxBytes: cfg.Volumes.MaxBytes, MaxFiles: cfg.Volumes.MaxFiles, PollInterval: cfg.Volumes.PollInterval,
		})
		if share {
			dir := vmDir(cfg, namespaceOf(ctx), s.id)
			s.volumes.WithShare(volumes.NewShare(vm.SharedDir(dir), filepath.Join(dir, vm.VirtioFSDPidFile)))
		}
	}
	syncer := s.volumes
	s.mu.Unlock()
	pod := spec.Annotations["io.kubernetes.cri.sandbox-id"]
	if pod == "" {
		pod = id
	}
	if err := syncer.Deliver(ctx, id, pod, vols); err != nil {
		return fmt.Errorf("volumes: %w", err)
	}
	log.G(ctx).WithField("id", id).WithField("volumes", len(vols)).Debug("volumes delivered to the guest")
	return nil
}

// stopVolumes ends the updates of container id's copies.
func (s *Service) stopVolumes(ctx context.Context, id string) {
	s.mu.Lock()
	syncer := s.volumes
	s.mu.Unlock()
	if syncer != nil {
		if err := syncer.Stop(id); err != nil {
			log.G(ctx).WithError(err).WithField("id", id).Warn("failed to remove shared mounts from the virtio-fs share")
		}
	}
}

// virtioFSD is the VM's virtiofsd when the runtime config shares node
// paths (shared_fs = "virtio-fs"), else nil.
func virtioFSD(cfg Config) *vm.VirtioFSD {
	if !launch.SharesFS(cfg) {
		return nil
	}
	return &vm.VirtioFSD{Path: cfg.VirtioFSDPath, Tag: launch.VirtioFSTag}
}

func namespaceOf(ctx context.Context) string {
	ns, _ := namespaces.Namespace(ctx)
	return ns
}

// copyBackVolumes copies container id's termination message back to the
// node after its init process exited (before the exit is published, so
// kubelet finds it).
func (s *Service) copyBackVolumes(ctx context.Context, id string) {
	s.mu.Lock()
	syncer := s.volumes
	s.mu.Unlock()
	if syncer == nil {
		return
	}
	if err := syncer.CopyBack(ctx, id); err != nil {
		log.G(ctx).WithError(err).WithField("id", id).Warn("termination message not copied back to the node")
	}
}
