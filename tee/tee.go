// Package tee defines the three faces of a Trusted Execution Environment
// backend: the guest's Attester, the key broker's Verifier and the host's
// Launcher. Backends (sim, snp, tdx, pef) live in sub-packages and register
// themselves by Type.
package tee

import "context"

// Type names a TEE backend.
type Type string

// Known TEE types.
const (
	// Sim is the simulated, INSECURE software TEE used on machines without
	// TEE hardware. Brokers refuse it unless explicitly allowed.
	Sim Type = "sim"
	// SNP is AMD SEV-SNP.
	SNP Type = "snp"
	// TDX is Intel TDX.
	TDX Type = "tdx"
	// PEF is IBM Power Protected Execution Facility.
	PEF Type = "pef"
)

// ReportDataSize is the number of bytes of caller data bound into evidence.
const ReportDataSize = 64

// Attester produces evidence inside the guest.
type Attester interface {
	// Type returns the TEE type of the evidence.
	Type() Type
	// Evidence returns evidence binding reportData, serialized in the
	// backend's wire format.
	Evidence(ctx context.Context, reportData [ReportDataSize]byte) ([]byte, error)
}

// Claims is what a Verifier establishes from evidence.
type Claims struct {
	// TEE is the type of TEE that produced the evidence.
	TEE Type `json:"tee"`
	// Measurement is the launch measurement (kernel, initrd, command line and
	// firmware, as the backend defines it).
	Measurement []byte `json:"measurement"`
	// InitDataDigest is the digest of the init data bound at launch
	// (HOSTDATA on SNP, MRCONFIGID on TDX).
	InitDataDigest []byte `json:"init_data_digest"`
	// ReportData is the report data the evidence binds.
	ReportData [ReportDataSize]byte `json:"report_data"`
	// Debug is true when the TEE allows a debugger to read its memory.
	Debug bool `json:"debug"`
	// Insecure is true for backends that give no hardware protection (sim).
	Insecure bool `json:"insecure"`
	// Extra carries backend-specific claims (TCB versions, RTMRs, ...).
	Extra map[string]any `json:"extra,omitempty"`
}

// InitDataReporter is implemented by Attesters that can read, from their
// own report, the init-data digest bound at launch (SNP HOST_DATA, TDX
// MRCONFIGID, the PEF sealed command line, the sim evidence). An all-zero
// or empty digest means none was bound. The guest checks the init data it
// is handed against it before using any of it.
type InitDataReporter interface {
	InitDataDigest(ctx context.Context) ([]byte, error)
}

// Verifier checks evidence on the key broker's side.
type Verifier interface {
	// Type returns the TEE type this verifier accepts.
	Type() Type
	// Verify checks evidence, its signature chain and that it binds
	// reportData, and returns the claims it carries.
	Verify(ctx context.Context, evidence []byte, reportData [ReportDataSize]byte) (*Claims, error)
}

// LaunchParams are the inputs of a backend's VM launch options.
type LaunchParams struct {
	// InitDataDigest is bound into the TEE at launch (SHA-256 or SHA-384).
	InitDataDigest []byte
	// Firmware is the path of the firmware image, where the backend needs one.
	Firmware string
}

// LaunchArgs are the QEMU options a backend adds to a VM.
type LaunchArgs struct {
	// MachineOptions are appended to -machine (e.g. "confidential-guest-support=tee0").
	MachineOptions []string
	// Objects are -object values (e.g. "sev-snp-guest,id=tee0,...").
	Objects []string
	// Extra are further raw QEMU arguments (e.g. "-bios", path).
	Extra []string
	// KernelParams are appended to the guest kernel command line.
	KernelParams []string
}

// Launcher renders the host-side QEMU options of a TEE backend.
type Launcher interface {
	// Type returns the TEE type launched.
	Type() Type
	// LaunchArgs returns the QEMU options for one VM.
	LaunchArgs(p LaunchParams) (LaunchArgs, error)
}
