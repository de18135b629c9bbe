package snp

import (
	"encoding/base64"
	"fmt"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/google/go-sev-guest/abi"

	"github.com/raksh-project/raksh/tee"
)

// DefaultPolicy is the SNP guest policy the launcher asks for (QEMU's
// default too): bit 16 (SMT allowed) and bit 17 (reserved, must be one);
// migration agent (bit 18), debug (bit 19) and single-socket (bit 20) off.
const DefaultPolicy = 0x30000

// policyDebugBit is SNP guest policy bit 19 (DEBUG).
const policyDebugBit = 1 << 19

// LaunchConfig is the host-side SNP launch configuration.
type LaunchConfig struct {
	// ObjectID is the QEMU object id of the confidential guest support
	// object. Default "tee0".
	ObjectID string `toml:"object_id"`
	// CBitPos is the C-bit position in guest page table entries (51 on
	// EPYC Milan/Genoa/Turin; read it from CPUID 0x8000001f EBX[5:0]).
	CBitPos uint `toml:"cbitpos"`
	// ReducedPhysBits is the reduction of the guest physical address space
	// (1 on current EPYC).
	ReducedPhysBits uint `toml:"reduced_phys_bits"`
	// Policy is the SNP guest policy. Default DefaultPolicy. A policy with
	// the debug bit is refused.
	Policy uint64 `toml:"policy"`
	// DisableKernelHashes turns off kernel-hashes=on, with which QEMU puts
	// the SHA-256 of kernel, initrd and command line into the measured
	// firmware image, so the launch measurement covers them. Only for
	// firmware that measures the kernel itself.
	DisableKernelHashes bool `toml:"disable_kernel_hashes"`
	// MemoryBackend is the id of a memory backend object the VMM creates
	// (e.g. memory-backend-memfd); empty uses QEMU's default RAM.
	MemoryBackend string `toml:"memory_backend"`
}

// Launcher renders QEMU options for an SEV-SNP guest.
type Launcher struct {
	cfg LaunchConfig
}

var _ tee.Launcher = (*Launcher)(nil)

// NewLauncher returns a Launcher for cfg, filling in defaults.
func NewLauncher(cfg LaunchConfig) (*Launcher, error) {
	if cfg.ObjectID == "" {
		cfg.ObjectID = "tee0"
	}
	if cfg.CBitPos == 0 {
		cfg.CBitPos = 51
	}
	if cfg.ReducedPhysBits == 0 {
		cfg.ReducedPhysBits = 1
	}
	if cfg.Policy == 0 {
		cfg.Policy = DefaultPolicy
	}
	if _, err := abi.ParseSnpPolicy(cfg.Policy); err != nil {
		return nil, fmt.Errorf("snp: bad guest policy %#x: %v: %w", cfg.Policy, err, errdefs.ErrInvalidArgument)
	}
	if cfg.Policy&policyDebugBit != 0 {
		return nil, fmt.Errorf("snp: guest policy %#x allows debug: %w", cfg.Policy, errdefs.ErrInvalidArgument)
	}
	for _, s := range []string{cfg.ObjectID, cfg.MemoryBackend} {
		if strings.ContainsAny(s, ",= ") {
			return nil, fmt.Errorf("snp: bad QEMU id %q: %w", s, errdefs.ErrInvalidArgument)
		}
	}
	return &Launcher{cfg: cfg}, nil
}

// Type returns tee.SNP.
func (l *Launcher) Type() tee.Type { return tee.SNP }

// LaunchArgs returns the sev-snp-guest object, the machine options and the
// firmware for one VM. p.InitDataDigest must be a 32-byte digest (SHA-256):
// it becomes HOST_DATA, which the firmware copies into every report.
// p.Firmware must be an OVMF built for SEV (OvmfPkg/AmdSev, which has the
// kernel hashes table kernel-hashes=on fills).
func (l *Launcher) LaunchArgs(p tee.LaunchParams) (tee.LaunchArgs, error) {
	if len(p.InitDataDigest) != abi.HostDataSize {
		return tee.LaunchArgs{}, fmt.Errorf("snp: init-data digest is %d bytes, HOST_DATA holds %d (use SHA-256): %w",
			len(p.InitDataDigest), abi.HostDataSize, errdefs.ErrInvalidArgument)
	}
	if p.Firmware == "" {
		return tee.LaunchArgs{}, fmt.Errorf("snp: an OVMF firmware path is required: %w", errdefs.ErrInvalidArgument)
	}
	obj := []string{
		"sev-snp-guest",
		"id=" + l.cfg.ObjectID,
		fmt.Sprintf("cbitpos=%d", l.cfg.CBitPos),
		fmt.Sprintf("reduced-phys-bits=%d", l.cfg.ReducedPhysBits),
		fmt.Sprintf("policy=%#x", l.cfg.Policy),
		"host-data=" + base64.StdEncoding.EncodeToString(p.InitDataDigest),
	}
	if !l.cfg.DisableKernelHashes {
		obj = append(obj, "kernel-hashes=on")
	}
	machine := []string{"confidential-guest-support=" + l.cfg.ObjectID}
	if l.cfg.MemoryBackend != "" {
		machine = append(machine, "memory-backend="+l.cfg.MemoryBackend)
	}
	return tee.LaunchArgs{
		MachineOptions: machine,
		Objects:        []string{strings.Join(obj, ",")},
		Extra:          []string{"-bios", p.Firmware},
	}, nil
}
