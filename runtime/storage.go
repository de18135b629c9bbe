package runtime

import (
	"fmt"
	"os"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/raksh-project/raksh/runtime/launch"
)

// podStorage sizes the VM of the pod whose first container has spec: its
// memory (launch.PodMemoryMiB) and scratch disk (launch.ScratchDiskMiB).
// It only matters when the VM is booted with this cfg.
func podStorage(cfg *Config, spec *specs.Spec) error {
	mem, err := launch.PodMemoryMiB(*cfg, spec)
	if err != nil {
		return fmt.Errorf("pod memory: %w", err)
	}
	disk, err := launch.ScratchDiskMiB(*cfg, spec.Annotations)
	if err != nil {
		return fmt.Errorf("pod scratch disk: %w", err)
	}
	cfg.MemoryMiB, cfg.PodScratchDiskMiB = mem, disk
	return nil
}

// openScratch creates a sparse scratch disk file of sizeMiB in dir with no
// name (O_TMPFILE): nothing is left on the node once the shim and QEMU, the
// only holders of its descriptor, have exited, however they exit. The
// guest encrypts and authenticates everything on it (agent/scratch).
func openScratch(dir string, sizeMiB uint) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("scratch dir: %w", err)
	}
	fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("scratch disk in %s (the filesystem must support O_TMPFILE): %v: %w", dir, err, errdefs.ErrFailedPrecondition)
	}
	f := os.NewFile(uintptr(fd), dir+"/scratch")
	if err := f.Truncate(int64(sizeMiB) << 20); err != nil {
		f.Close()
		return nil, fmt.Errorf("size scratch disk: %w", err)
	}
	return f, nil
}
