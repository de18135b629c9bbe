package launch

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/BurntSushi/toml"
	"github.com/containerd/errdefs"

	"github.com/raksh-project/raksh/runtime/vm/qemu"
	"github.com/raksh-project/raksh/tee"
	"github.com/raksh-project/raksh/tee/initdata"
	"github.com/raksh-project/raksh/tee/pef"
	"github.com/raksh-project/raksh/tee/sim"
	"github.com/raksh-project/raksh/tee/snp"
	"github.com/raksh-project/raksh/tee/tdx"
)

// TEE types of the runtime config's tee key.
const (
	// TEENone launches plain VMs (the default; "" means the same).
	TEENone = "none"
	// TEESim launches VMs on the simulated, INSECURE software TEE: the shim
	// measures kernel, initrd and command line (sim.MeasureFiles) and passes
	// the measurement to the guest attester on the kernel command line.
	TEESim = "sim"
	// TEESNP launches AMD SEV-SNP guests (tee/snp), [snp] settings.
	TEESNP = "snp"
	// TEETDX launches Intel TDX guests (tee/tdx), [tdx] settings.
	TEETDX = "tdx"
	// TEEPEF launches IBM Power PEF secure VMs (tee/pef), [pef] settings.
	TEEPEF = "pef"
)

// HardwareTEE reports whether t is a hardware TEE (snp, tdx, pef).
func HardwareTEE(t string) bool { return t == TEESNP || t == TEETDX || t == TEEPEF }

// SNPConfig is the [snp] table of the runtime config.
type SNPConfig struct {
	// Firmware is an OVMF built for SEV (OvmfPkg/AmdSev: it carries the
	// kernel hashes table kernel-hashes=on fills). Required.
	Firmware string `toml:"firmware"`
	// CPUModel is the QEMU vCPU model (a key of snp.VCPUSignatures; it is
	// part of the launch measurement). Default "EPYC-v4".
	CPUModel string `toml:"cpu_model"`
	// CBitPos and ReducedPhysBits are the host's C-bit position and
	// physical address reduction (CPUID 0x8000001f). Defaults 51 and 1.
	CBitPos         uint `toml:"cbitpos"`
	ReducedPhysBits uint `toml:"reduced_phys_bits"`
	// Policy is the SNP guest policy (default snp.DefaultPolicy; debug is
	// refused).
	Policy uint64 `toml:"policy"`
	// DisableKernelHashes launches without kernel-hashes=on: the launch
	// measurement then covers the firmware only, not kernel, initrd and
	// command line. Only for firmware that measures the kernel itself.
	DisableKernelHashes bool `toml:"disable_kernel_hashes"`
	// MemoryBackend is "" (QEMU's default RAM) or "memfd" (a
	// memory-backend-memfd object sized memory_mib).
	MemoryBackend string `toml:"memory_backend"`
}

// TDXConfig is the [tdx] table of the runtime config.
type TDXConfig struct {
	// Firmware is a TDVF (OVMF built with TDX support). Required.
	Firmware string `toml:"firmware"`
	// QuoteGenerationVsockPort is the vsock port of the host's Quote
	// Generation Service (QGS; 4050 by default there). Without it the
	// guest cannot turn TD reports into quotes, so it cannot attest.
	QuoteGenerationVsockPort uint32 `toml:"quote_generation_vsock_port"`
	// MemoryBackend is "" or "memfd", as for SNP.
	MemoryBackend string `toml:"memory_backend"`
}

// PEFConfig is the [pef] table of the runtime config.
type PEFConfig struct {
	// SealedInitrd is the initrd with the ESM blob (`rakshctl initrd
	// build --seal-for pef`), sealed for the kernel, this initrd and the
	// exact command line the shim renders, init-data parameter included.
	// VMs boot it instead of initrd. Required.
	SealedInitrd string `toml:"sealed_initrd"`
	// SimulatedUltravisorKey, when set, is the private wrapping key (RSA,
	// PEM) of a simulated ultravisor (pef.SimUltravisor), and PEF runs
	// simulated, INSECURELY: on a host without PEF the shim does what the
	// ultravisor does at UV_ESM (unwrap the ESM blob, check kernel,
	// initrd and command line, release the sealed files) and boots a
	// plain VM (qemu_path, machine and accel as without a TEE) with the
	// released files added to its initrd. The host sees them: it is a
	// stand-in for testing the PEF path, not a protection.
	SimulatedUltravisorKey string `toml:"simulated_ultravisor_key"`
}

// PEFSimulated reports whether cfg runs PEF on the simulated ultravisor.
func PEFSimulated(cfg Config) bool {
	return cfg.TEE == TEEPEF && cfg.PEF.SimulatedUltravisorKey != ""
}

// SimConfig is the [sim] table of the runtime config.
type SimConfig struct {
	// InitDataDigest, when set (hex SHA-256), is the init-data digest the
	// simulated TEE reports instead of the pod's. The sim trusts the host,
	// so this only makes visible what a lying node could do anyway: the
	// agent refuses an init-data document whose digest differs from its
	// report. For tests and demonstrations.
	InitDataDigest string `toml:"init_data_digest"`
}

// Minimum QEMU versions of the hardware TEE options the shim renders.
var minQEMU = map[string][2]int{
	TEESNP: {9, 1},  // sev-snp-guest (host-data, kernel-hashes)
	TEETDX: {10, 1}, // tdx-guest (mrconfigid, quote-generation-socket)
	TEEPEF: {6, 0},  // pef-guest
}

const (
	defaultQEMUX86  = "qemu-system-x86_64"
	defaultQEMUPPC  = "qemu-system-ppc64"
	defaultSNPCPU   = "EPYC-v4"
	memoryBackendID = "ram0"
)

// validTEE checks the tee key and the per-backend tables, and resolves the
// defaults that depend on the TEE (machine, QEMU binary). md tells which
// keys the file set; nil means none.
func validTEE(cfg *Config, md *toml.MetaData) error {
	defined := func(k ...string) bool { return md != nil && md.IsDefined(k...) }
	switch cfg.TEE {
	case "", TEENone, TEESim, TEESNP, TEETDX, TEEPEF:
	default:
		return fmt.Errorf("tee %q is not one of none, sim, snp, tdx, pef: %w", cfg.TEE, errdefs.ErrInvalidArgument)
	}
	for _, t := range []string{TEESNP, TEETDX, TEEPEF, TEESim} {
		if defined(t) && cfg.TEE != t {
			return fmt.Errorf("[%s] settings given, but tee = %q: %w", t, cfg.TEE, errdefs.ErrInvalidArgument)
		}
	}
	if !HardwareTEE(cfg.TEE) || PEFSimulated(*cfg) {
		if cfg.Machine == "" {
			cfg.Machine = "pc"
		}
		if cfg.TEE == TEEPEF && cfg.PEF.SealedInitrd == "" {
			return fmt.Errorf("tee \"pef\" needs [pef] sealed_initrd, the initrd rakshctl initrd build --seal-for pef wrote: %w", errdefs.ErrInvalidArgument)
		}
		return validSim(cfg)
	}
	wantMachine, wantQEMU := "q35", defaultQEMUX86
	if cfg.TEE == TEEPEF {
		wantMachine, wantQEMU = "pseries", defaultQEMUPPC
	}
	if cfg.Machine == "" || !defined("machine") && cfg.Machine == DefaultConfig().Machine {
		cfg.Machine = wantMachine
	}
	if cfg.Machine != wantMachine {
		return fmt.Errorf("tee %q needs machine = %q, not %q: %w", cfg.TEE, wantMachine, cfg.Machine, errdefs.ErrInvalidArgument)
	}
	if !defined("qemu_path") {
		cfg.QEMUPath = wantQEMU
	} else if base := filepath.Base(cfg.QEMUPath); strings.HasPrefix(base, "qemu-system-") && !strings.HasPrefix(base, wantQEMU) {
		return fmt.Errorf("tee %q needs %s, but qemu_path is %q: %w", cfg.TEE, wantQEMU, cfg.QEMUPath, errdefs.ErrInvalidArgument)
	}
	if cfg.Accel == "tcg" {
		return fmt.Errorf("tee %q needs KVM; accel = \"tcg\" cannot launch it: %w", cfg.TEE, errdefs.ErrInvalidArgument)
	}
	switch cfg.TEE {
	case TEESNP:
		if cfg.SNP.Firmware == "" {
			return fmt.Errorf("tee \"snp\" needs [snp] firmware, an OVMF built for SEV (OvmfPkg/AmdSev): %w", errdefs.ErrInvalidArgument)
		}
		if _, ok := snp.VCPUSignatures[snpCPU(cfg)]; !ok {
			return fmt.Errorf("[snp] cpu_model %q is not an EPYC model the measurement knows: %w", cfg.SNP.CPUModel, errdefs.ErrInvalidArgument)
		}
		if err := validMemoryBackend("snp", cfg.SNP.MemoryBackend); err != nil {
			return err
		}
		if _, err := snpLauncher(*cfg); err != nil {
			return err
		}
	case TEETDX:
		if cfg.TDX.Firmware == "" {
			return fmt.Errorf("tee \"tdx\" needs [tdx] firmware, a TDVF (OVMF built with TDX support): %w", errdefs.ErrInvalidArgument)
		}
		if err := validMemoryBackend("tdx", cfg.TDX.MemoryBackend); err != nil {
			return err
		}
	case TEEPEF:
		if cfg.PEF.SealedInitrd == "" {
			return fmt.Errorf("tee \"pef\" needs [pef] sealed_initrd, the initrd rakshctl initrd build --seal-for pef wrote: %w", errdefs.ErrInvalidArgument)
		}
	}
	return nil
}

func validSim(cfg *Config) error {
	if cfg.Sim.InitDataDigest == "" {
		return nil
	}
	if b, err := hex.DecodeString(cfg.Sim.InitDataDigest); err != nil || len(b) != 32 {
		return fmt.Errorf("[sim] init_data_digest %q is not a hex SHA-256: %w", cfg.Sim.InitDataDigest, errdefs.ErrInvalidArgument)
	}
	return nil
}

func validMemoryBackend(t, b string) error {
	if b != "" && b != "memfd" {
		return fmt.Errorf("[%s] memory_backend %q is not \"\" or \"memfd\": %w", t, b, errdefs.ErrInvalidArgument)
	}
	return nil
}

func snpCPU(cfg *Config) string {
	if cfg.SNP.CPUModel == "" {
		return defaultSNPCPU
	}
	return cfg.SNP.CPUModel
}

func snpLauncher(cfg Config) (*snp.Launcher, error) {
	lc := snp.LaunchConfig{
		CBitPos: cfg.SNP.CBitPos, ReducedPhysBits: cfg.SNP.ReducedPhysBits,
		Policy: cfg.SNP.Policy, DisableKernelHashes: cfg.SNP.DisableKernelHashes,
	}
	if cfg.SNP.MemoryBackend != "" {
		lc.MemoryBackend = memoryBackendID
	}
	return snp.NewLauncher(lc)
}

// KernelParams returns the guest kernel command line cfg renders on this
// host, before the parameters a TEE launcher adds (those are not measured).
// It is the command line LaunchMeasurement measures, so every parameter the
// shim passes must come from here.
func KernelParams(cfg Config) []string {
	console := "console=ttyS0"
	if cfg.TEE == TEEPEF && !PEFSimulated(cfg) {
		console = "console=hvc0"
	}
	params := append([]string{console, "quiet", "panic=-1"}, cfg.KernelParams...)
	if cfg.Debug {
		params = append(params, "raksh.debug")
	}
	if vsockTransport(cfg) {
		params = append(params, "raksh.transport=vsock")
	}
	if len(cfg.ImageKeys) > 0 {
		params = append(params, KernelParamImageKeys+"="+strings.Join(cfg.ImageKeys, ","))
	}
	return params
}

// vsockTransport reports whether VMs of cfg talk to the agent over vsock.
func vsockTransport(cfg Config) bool {
	return cfg.Transport == "vsock" || cfg.Transport == "auto" && HasVhostVsock()
}

// HasVhostVsock reports whether this host can give VMs a vsock device.
func HasVhostVsock() bool {
	_, err := os.Stat("/dev/vhost-vsock")
	return err == nil
}

// initrd returns the initrd VMs of cfg boot.
func initrd(cfg Config) string {
	if cfg.TEE == TEEPEF {
		return cfg.PEF.SealedInitrd
	}
	return cfg.Initrd
}

// LaunchMeasurement returns the launch measurement of the guest cfg boots
// under its TEE: for "sim", sim.MeasureFiles over the kernel, the initrd and
// the command line of KernelParams; for "snp", snp.ExpectedMeasurement over
// the firmware, kernel, initrd and command line (kernel-hashes=on) with
// memory_mib-independent VMSAs of vcpus [snp] cpu_model vCPUs. It is the
// value a key broker's policy pins (measurements = [hex]). TDX (MRTD and
// RTMRs) and PEF (sealed in the ESM blob instead) are not computed here.
func LaunchMeasurement(cfg Config) ([]byte, error) {
	switch cfg.TEE {
	case TEESim:
		m, err := sim.MeasureFiles(cfg.Kernel, cfg.Initrd, strings.Join(KernelParams(cfg), " "))
		if err != nil {
			return nil, fmt.Errorf("measure the sim TEE guest: %w", err)
		}
		return m, nil
	case TEESNP:
		fw, err := os.ReadFile(cfg.SNP.Firmware)
		if err != nil {
			return nil, fmt.Errorf("snp firmware: %w", err)
		}
		var kernel, rd []byte
		if !cfg.SNP.DisableKernelHashes {
			if kernel, err = os.ReadFile(cfg.Kernel); err != nil {
				return nil, err
			}
			if rd, err = os.ReadFile(cfg.Initrd); err != nil {
				return nil, err
			}
		}
		return snp.ExpectedMeasurement(fw, kernel, rd, strings.Join(KernelParams(cfg), " "), int(cfg.VCPUs), snpCPU(&cfg))
	case TEETDX, TEEPEF:
		return nil, fmt.Errorf("the launch measurement of tee %q is not computed by raksh (TDX: MRTD/RTMRs from the TDVF and the kernel; PEF: sealed in the ESM blob): %w", cfg.TEE, errdefs.ErrNotImplemented)
	case "", TEENone:
		return nil, fmt.Errorf("runtime config has no TEE (tee = %q): %w", cfg.TEE, errdefs.ErrFailedPrecondition)
	}
	return nil, validTEE(&cfg, nil)
}

// InitDataDigest returns the digest bound at launch for a pod with init
// data doc (nil: none). Hardware TEEs bind 32 zero bytes for none.
func InitDataDigest(cfg Config, doc []byte) []byte {
	if cfg.TEE == TEESim && cfg.Sim.InitDataDigest != "" {
		b, _ := hex.DecodeString(cfg.Sim.InitDataDigest)
		return b
	}
	if doc != nil {
		return initdata.Digest(doc)
	}
	if HardwareTEE(cfg.TEE) {
		return make([]byte, 32)
	}
	return nil
}

// TEEArgs returns what cfg's TEE adds to a VM of a pod whose init-data
// document is doc (nil: none): nothing without a TEE; for "sim", the
// measurement and the init-data digest as kernel parameters; for the
// hardware TEEs, their launcher's QEMU options with the digest bound.
func TEEArgs(cfg Config, doc []byte) (tee.LaunchArgs, error) {
	digest := InitDataDigest(cfg, doc)
	var (
		l        tee.Launcher
		firmware string
		err      error
	)
	switch cfg.TEE {
	case "", TEENone:
		return tee.LaunchArgs{}, nil
	case TEESim:
		m, err := LaunchMeasurement(cfg)
		if err != nil {
			return tee.LaunchArgs{}, err
		}
		l = sim.NewLauncher(m)
	case TEESNP:
		l, err = snpLauncher(cfg)
		firmware = cfg.SNP.Firmware
	case TEETDX:
		l, err = tdx.NewLauncher(tdx.LaunchConfig{QuoteGenerationVsockPort: cfg.TDX.QuoteGenerationVsockPort})
		firmware = cfg.TDX.Firmware
	case TEEPEF:
		l, err = pef.NewLauncher(pef.LaunchConfig{Simulated: PEFSimulated(cfg)})
	default:
		return tee.LaunchArgs{}, validTEE(&cfg, nil)
	}
	if err != nil {
		return tee.LaunchArgs{}, err
	}
	return l.LaunchArgs(tee.LaunchParams{InitDataDigest: digest, Firmware: firmware})
}

// QEMUConfig renders the VM of a pod whose init-data document is doc (nil:
// none): everything but the VM's name, vsock CID and host sockets, which the
// shim adds. It is the shim's only path from the runtime config to QEMU.
func QEMUConfig(cfg Config, doc []byte) (qemu.Config, error) {
	args, err := TEEArgs(cfg, doc)
	if err != nil {
		return qemu.Config{}, err
	}
	qc := qemu.Config{
		Path: cfg.QEMUPath, Machine: cfg.Machine, Accel: cfg.Accel,
		MemoryMiB: cfg.MemoryMiB, VCPUs: cfg.VCPUs,
		Kernel: cfg.Kernel, Initrd: initrd(cfg), KernelParams: KernelParams(cfg), TEE: args,
	}
	if HardwareTEE(cfg.TEE) && !PEFSimulated(cfg) {
		// A hardware TEE needs KVM: no TCG fallback.
		qc.Accel = qemu.AccelKVM
	}
	backend := ""
	switch cfg.TEE {
	case TEESNP:
		qc.CPUModel = snpCPU(&cfg)
		backend = cfg.SNP.MemoryBackend
	case TEETDX:
		backend = cfg.TDX.MemoryBackend
	}
	if backend == "memfd" {
		qc.Extra = append(qc.Extra, "-object", fmt.Sprintf("memory-backend-memfd,id=%s,size=%dM,share=on,prealloc=off", memoryBackendID, cfg.MemoryMiB))
		if cfg.TEE == TEETDX {
			qc.MachineOptions = append(qc.MachineOptions, "memory-backend="+memoryBackendID)
		}
	}
	return qc, nil
}

// PodInitData returns the init-data document of a pod with annotations:
// the io.raksh.init-data annotation, else the runtime config's init_data
// file, else nil. The document is parsed (so a bad one fails the pod
// here, not in the guest) and returned byte for byte: its digest is over
// these bytes. On PEF, the digest is sealed into the initrd with the command
// line, so only the node's document can be used.
func PodInitData(cfg Config, annotations map[string]string) ([]byte, error) {
	var doc []byte
	v, annotated := annotations[initdata.Annotation]
	if annotated {
		doc = []byte(v)
	} else if cfg.InitData != "" {
		b, err := os.ReadFile(cfg.InitData)
		if err != nil {
			return nil, fmt.Errorf("init_data: %w", err)
		}
		doc = b
	} else {
		return nil, nil
	}
	if _, err := initdata.Parse(doc); err != nil {
		return nil, err
	}
	if cfg.TEE == TEEPEF && annotated {
		var node []byte
		if cfg.InitData != "" {
			b, err := os.ReadFile(cfg.InitData)
			if err != nil {
				return nil, fmt.Errorf("init_data: %w", err)
			}
			node = b
		}
		if !bytes.Equal(node, doc) {
			return nil, fmt.Errorf("tee \"pef\" seals the node's init data (init_data) into the initrd; a pod cannot bring its own (%s): %w", initdata.Annotation, errdefs.ErrInvalidArgument)
		}
	}
	if cfg.TEE == "" || cfg.TEE == TEENone {
		return nil, fmt.Errorf("init data given (%s or init_data), but tee = %q binds none: %w", initdata.Annotation, cfg.TEE, errdefs.ErrFailedPrecondition)
	}
	return doc, nil
}
