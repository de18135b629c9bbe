package runtime

import (
	"context"
	"fmt"
	"os"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/raksh-project/raksh/runtime/launch"
	"github.com/raksh-project/raksh/runtime/vm"
	"github.com/raksh-project/raksh/runtime/vm/qemu"
)

// simulatedUltravisorInitrd runs PEF's simulated ultravisor over the sealed
// initrd of qc (launch.SimulatedUltravisorBoot: what the ultravisor checks
// at UV_ESM) and points qc at the initrd to boot, which carries the
// released files. That initrd lives in a sealed memfd of the shim, which
// QEMU reads through /proc/<shim>/fd/<n> when it starts: the released
// secrets are never written to the node's disks. The memfd is closed once
// the VM started (QEMU has loaded the initrd by then).
func simulatedUltravisorInitrd(ctx context.Context, cfg Config, qc *qemu.Config) (*os.File, error) {
	log.G(ctx).Warn("tee \"pef\" on the simulated ultravisor: INSECURE, the host unwraps the sealed files (for testing the PEF path on hosts without PEF)")
	rd, err := launch.SimulatedUltravisorBoot(cfg, *qc)
	if err != nil {
		return nil, err
	}
	fd, err := unix.MemfdCreate("raksh-pef-initrd", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("memfd for the simulated ultravisor's initrd: %w", err)
	}
	f := os.NewFile(uintptr(fd), "raksh-pef-initrd")
	if _, err := f.Write(rd); err != nil {
		f.Close()
		return nil, fmt.Errorf("memfd for the simulated ultravisor's initrd: %w", err)
	}
	clear(rd)
	if _, err := unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS, unix.F_SEAL_WRITE|unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL); err != nil {
		f.Close()
		return nil, fmt.Errorf("seal the simulated ultravisor's initrd: %w", err)
	}
	qc.Initrd = fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), f.Fd())
	return f, nil
}

// closeAfterStart closes a file once the VM's Start returned.
type closeAfterStart struct {
	vm.Instance
	f *os.File
}

func (c closeAfterStart) Start(ctx context.Context) error {
	defer c.f.Close()
	return c.Instance.Start(ctx)
}
