package launch

import (
	"errors"
	"fmt"
	"path/filepath"
	"strconv"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Pod annotations read when a pod's VM is launched.
const (
	// AnnotationScratchDisk asks for a scratch disk of that many MiB (0:
	// none), up to scratch_disk_max_mib.
	AnnotationScratchDisk = "io.raksh.scratch-disk-mib"
	// AnnotationSandboxMemory is the pod's memory limit in bytes, set by
	// containerd's CRI plugin on the sandbox spec from the pod's resources
	// (the sum of its containers' limits).
	AnnotationSandboxMemory = "io.kubernetes.cri.sandbox-memory"
)

const mib = 1 << 20

// validStorage checks the memory and scratch settings.
func validStorage(cfg Config) error {
	var errs []error
	if cfg.MemoryMaxMiB != 0 && cfg.MemoryMaxMiB < cfg.MemoryMiB {
		errs = append(errs, fmt.Errorf("memory_max_mib %d is below memory_mib %d", cfg.MemoryMaxMiB, cfg.MemoryMiB))
	}
	if cfg.ScratchDiskMiB > cfg.ScratchDiskMaxMiB {
		errs = append(errs, fmt.Errorf("scratch_disk_mib %d is above scratch_disk_max_mib %d", cfg.ScratchDiskMiB, cfg.ScratchDiskMaxMiB))
	}
	if cfg.ScratchDiskMiB != 0 && cfg.ScratchDiskMiB < MinScratchDiskMiB {
		errs = append(errs, fmt.Errorf("scratch_disk_mib %d is below the minimum %d", cfg.ScratchDiskMiB, MinScratchDiskMiB))
	}
	if (cfg.ScratchDiskMiB != 0 || cfg.ScratchDiskMaxMiB != 0) && !filepath.IsAbs(cfg.ScratchDir) {
		errs = append(errs, fmt.Errorf("scratch_dir %q is not an absolute path", cfg.ScratchDir))
	}
	return errors.Join(errs...)
}

// MinScratchDiskMiB is the smallest scratch disk: dm-integrity's metadata
// and a useful swap area need some room.
const MinScratchDiskMiB = 64

// ScratchDiskMiB is the size of the scratch disk of a pod with
// annotations: the annotation when set (0 turns it off), else
// scratch_disk_mib. A malformed value, one below MinScratchDiskMiB or one
// above scratch_disk_max_mib is an error naming it.
func ScratchDiskMiB(cfg Config, annotations map[string]string) (uint, error) {
	v, ok := annotations[AnnotationScratchDisk]
	if !ok {
		return cfg.ScratchDiskMiB, nil
	}
	n, err := strconv.ParseUint(v, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("annotation %s=%q is not a size in MiB: %w", AnnotationScratchDisk, v, errdefs.ErrInvalidArgument)
	}
	switch {
	case n == 0:
		return 0, nil
	case n < MinScratchDiskMiB:
		return 0, fmt.Errorf("annotation %s=%d is below the minimum %d MiB: %w", AnnotationScratchDisk, n, MinScratchDiskMiB, errdefs.ErrInvalidArgument)
	case n > uint64(cfg.ScratchDiskMaxMiB):
		return 0, fmt.Errorf("annotation %s=%d is above the node's scratch_disk_max_mib %d: %w", AnnotationScratchDisk, n, cfg.ScratchDiskMaxMiB, errdefs.ErrInvalidArgument)
	}
	return uint(n), nil
}

// PodMemoryMiB is the memory of the VM of a pod whose first container
// (the sandbox) has spec: memory_mib (the guest kernel, agent, page cache
// and tmpfs metadata: Kata's default_memory) plus the pod's memory limit,
// rounded up to a MiB and capped at memory_max_mib. The pod's limit is the
// CRI sandbox annotation io.kubernetes.cri.sandbox-memory, else the
// spec's linux.resources.memory.limit (ctr run --memory-limit); without
// either, or with memory_max_mib 0, it is memory_mib.
func PodMemoryMiB(cfg Config, spec *specs.Spec) (uint, error) {
	if cfg.MemoryMaxMiB == 0 {
		return cfg.MemoryMiB, nil
	}
	var limit int64
	if v, ok := spec.Annotations[AnnotationSandboxMemory]; ok {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("annotation %s=%q is not a size in bytes: %w", AnnotationSandboxMemory, v, errdefs.ErrInvalidArgument)
		}
		limit = n
	} else if spec.Linux != nil && spec.Linux.Resources != nil && spec.Linux.Resources.Memory != nil && spec.Linux.Resources.Memory.Limit != nil {
		limit = *spec.Linux.Resources.Memory.Limit // -1 or 0: unlimited
	}
	if limit <= 0 {
		return cfg.MemoryMiB, nil
	}
	total := uint64(cfg.MemoryMiB) + (uint64(limit)+mib-1)/mib
	if total > uint64(cfg.MemoryMaxMiB) {
		total = uint64(cfg.MemoryMaxMiB)
	}
	return uint(total), nil
}
