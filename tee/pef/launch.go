package pef

import (
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/containerd/errdefs"

	"github.com/raksh-project/raksh/tee"
)

// InitDataParam is the kernel parameter carrying the init-data digest. PEF
// has no HOSTDATA/MRCONFIGID: the digest is bound through the command
// line, whose SHA-512 is sealed in the ESM blob.
const InitDataParam = "raksh.init_data"

// LaunchConfig is the host-side PEF launch configuration.
type LaunchConfig struct {
	// ObjectID is the QEMU object id. Default "tee0".
	ObjectID string `toml:"object_id"`
	// Simulated renders the launch for the simulated ultravisor
	// (SimUltravisor, INSECURE): a plain VM without the pef-guest object,
	// with the same kernel parameters, so the sealed command line is the
	// one a secure VM would have.
	Simulated bool `toml:"-"`
}

// Launcher renders QEMU options for a pseries secure VM (QEMU's pef-guest
// object, KVM-HV on a POWER9/10 host running the ultravisor).
type Launcher struct {
	cfg LaunchConfig
}

var _ tee.Launcher = (*Launcher)(nil)

// NewLauncher returns a Launcher for cfg.
func NewLauncher(cfg LaunchConfig) (*Launcher, error) {
	if cfg.ObjectID == "" {
		cfg.ObjectID = "tee0"
	}
	if strings.ContainsAny(cfg.ObjectID, ",= ") {
		return nil, fmt.Errorf("pef: bad QEMU id %q: %w", cfg.ObjectID, errdefs.ErrInvalidArgument)
	}
	return &Launcher{cfg: cfg}, nil
}

// Type returns tee.PEF.
func (l *Launcher) Type() tee.Type { return tee.PEF }

// LaunchArgs returns the pef-guest object, machine options and kernel
// parameters: svm=on makes the kernel's prom_init call UV_ESM, and the
// init-data digest rides on the (sealed) command line. The firmware is
// QEMU's SLOF; p.Firmware is ignored. The initrd must be the sealed one
// (SealInitrd) built for exactly this command line.
func (l *Launcher) LaunchArgs(p tee.LaunchParams) (tee.LaunchArgs, error) {
	if n := len(p.InitDataDigest); n != 32 && n != 48 {
		return tee.LaunchArgs{}, fmt.Errorf("pef: init-data digest is %d bytes, want 32 or 48: %w", n, errdefs.ErrInvalidArgument)
	}
	args := tee.LaunchArgs{
		KernelParams: []string{"svm=on", InitDataParam + "=" + hex.EncodeToString(p.InitDataDigest)},
	}
	if !l.cfg.Simulated {
		args.MachineOptions = []string{"confidential-guest-support=" + l.cfg.ObjectID}
		args.Objects = []string{"pef-guest,id=" + l.cfg.ObjectID}
	}
	return args, nil
}
