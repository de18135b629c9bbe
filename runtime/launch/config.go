// Package launch renders what the shim launches for a pod: the runtime
// config (runtime.toml), the guest kernel command line, the TEE launch
// arguments and the launch measurement a key broker pins. It is small on
// purpose: rakshctl imports it to compute measurements without linking the
// shim.
package launch

import (
	"fmt"
	"os"
	"time"

	"github.com/BurntSushi/toml"
)

// DefaultConfigPath is where the shim reads its configuration unless the
// runtime options or RAKSH_RUNTIME_CONFIG name another file.
const DefaultConfigPath = "/etc/raksh/runtime.toml"

// ConfigEnv overrides the configuration path.
const ConfigEnv = "RAKSH_RUNTIME_CONFIG"

// Config is the shim's configuration (/etc/raksh/runtime.toml).
type Config struct {
	// QEMUPath is the QEMU binary.
	QEMUPath string `toml:"qemu_path"`
	// Kernel and Initrd boot the guest.
	Kernel string `toml:"kernel"`
	Initrd string `toml:"initrd"`
	// KernelParams are added to the guest kernel command line.
	KernelParams []string `toml:"kernel_params"`
	// Machine is the QEMU machine type.
	Machine string `toml:"machine"`
	// Accel is "auto" (KVM if a probe boot works, else TCG), "kvm" or "tcg".
	Accel string `toml:"accel"`
	// MemoryMiB and VCPUs size each VM.
	MemoryMiB uint `toml:"memory_mib"`
	VCPUs     uint `toml:"vcpus"`
	// BootTimeout bounds a boot until the agent answers ("2m" in TOML:
	// the TOML library decodes durations natively).
	BootTimeout time.Duration `toml:"boot_timeout"`
	// KVMProbeTimeout bounds the KVM probe boot ("15s").
	KVMProbeTimeout time.Duration `toml:"kvm_probe_timeout"`
	// StateDir holds per-VM sockets and console logs; each VM's directory
	// is removed with the VM unless Debug is set. At most 73 bytes, so
	// that VM sockets fit in a unix socket address (see VMDir).
	StateDir string `toml:"state_dir"`
	// Transport is "auto" (vsock when /dev/vhost-vsock exists), "vsock" or
	// "serial" (virtio-serial multiplexed with yamux).
	Transport string `toml:"transport"`
	// RequireEnvelope refuses non-sandbox containers without a sealed
	// envelope (set it on nodes where every workload must be sealed).
	RequireEnvelope bool `toml:"require_envelope"`
	// Debug keeps each VM's state directory (its guest console log) after
	// the pod and raises the agent's log level.
	Debug bool `toml:"debug"`
	// TEE is the trusted execution environment each VM is launched in:
	// "none" (or empty, the default), "sim" (the simulated and INSECURE
	// software TEE, see docs/trust.md), or a hardware TEE: "snp", "tdx" or
	// "pef", configured by the table of the same name (see
	// runtime/launch/tee.go and docs/tee.md).
	TEE string `toml:"tee"`
	// SNP, TDX, PEF and Sim are the per-backend settings; a table given
	// for another TEE than tee is an error.
	SNP SNPConfig `toml:"snp"`
	TDX TDXConfig `toml:"tdx"`
	PEF PEFConfig `toml:"pef"`
	Sim SimConfig `toml:"sim"`
	// InitData is the path of the node's default init-data document
	// (tee/initdata), used for pods without the io.raksh.init-data
	// annotation. Its SHA-256 is bound into each VM's TEE at launch.
	InitData string `toml:"init_data"`
	// PodInitData is the init-data document of the pod whose VM is
	// launched (PodInitData), set by the shim per pod; not a TOML key.
	PodInitData []byte `toml:"-"`
	// Proxy allow-lists the host-side services the guest may reach, by name
	// ("kbs", "registry") → TCP address. The guest has no network of its
	// own; everything else is refused.
	Proxy map[string]string `toml:"proxy"`
	// ImageKeys are the key broker resources (repo/type/tag, e.g.
	// "default/image-key/demo") holding the private keys that decrypt
	// ocicrypt-encrypted images. The shim passes them on the guest kernel
	// command line (raksh.image_keys, so they are part of the measured
	// launch); the agent fetches them through [proxy] kbs after attesting,
	// and the broker's policy decides whether they are released. Empty: the
	// agent uses the key files baked into its initrd (/etc/raksh/image-keys).
	ImageKeys []string `toml:"image_keys"`
	// Volumes bounds the kubelet volumes and CRI files the shim copies
	// into the guest, and how often it polls them for updates.
	Volumes VolumesConfig `toml:"volumes"`
	// MemoryMaxMiB caps a VM's memory: memory_mib plus the pod's memory
	// limit (see PodMemoryMiB and docs/storage.md). 0: no pod-sized
	// memory, every VM gets memory_mib.
	MemoryMaxMiB uint `toml:"memory_max_mib"`
	// ScratchDiskMiB is the size of each pod's encrypted scratch disk
	// (swap in the guest, see docs/storage.md); 0 (the default) gives none.
	// The io.raksh.scratch-disk-mib pod annotation overrides it up to
	// ScratchDiskMaxMiB.
	ScratchDiskMiB uint `toml:"scratch_disk_mib"`
	// ScratchDiskMaxMiB caps the annotation.
	ScratchDiskMaxMiB uint `toml:"scratch_disk_max_mib"`
	// ScratchDir holds the scratch disks' files (never named: opened
	// O_TMPFILE, so they vanish with the last process holding them). Put
	// it on a disk, not a tmpfs.
	ScratchDir string `toml:"scratch_dir"`
	// SharedFS is "none" (or empty, the default: nothing of the node is
	// shared with the guest, hostPath and persistent volumes are refused)
	// or "virtio-fs" (they are shared through one virtiofsd per pod; the
	// content is the node's, not confidential). See docs/volumes.md.
	SharedFS string `toml:"shared_fs"`
	// VirtioFSDPath is the virtiofsd binary (shared_fs = "virtio-fs").
	VirtioFSDPath string `toml:"virtiofsd_path"`
	// PodScratchDiskMiB is the scratch disk of the pod whose VM is launched
	// (ScratchDiskMiB), set by the shim per pod; not a TOML key.
	PodScratchDiskMiB uint `toml:"-"`
	// PlainRootfs is how the rootfs of a plain (non-raksh) image reaches
	// the guest: "erofs" (each image layer as a cached read-only erofs
	// disk, stacked with overlayfs in the guest) or "tar" (the rootfs
	// streamed as a tar into guest memory). See docs/storage.md.
	PlainRootfs string `toml:"plain_rootfs"`
	// MkfsErofs is the mkfs.erofs binary (erofs-utils) used for "erofs".
	MkfsErofs string `toml:"mkfs_erofs"`
}

// Plain rootfs modes (Config.PlainRootfs).
const (
	PlainRootfsErofs = "erofs"
	PlainRootfsTar   = "tar"
)

// VolumesConfig is the [volumes] table (docs/volumes.md). Zero fields take
// the defaults: 16 MiB and 1024 entries per volume, polled every second.
type VolumesConfig struct {
	// MaxBytes bounds the content of one copied volume.
	MaxBytes int64 `toml:"max_bytes"`
	// MaxFiles bounds the entries (files, directories, symlinks) of one
	// copied volume.
	MaxFiles int `toml:"max_files"`
	// PollInterval is how often copied volumes are checked for updates.
	PollInterval time.Duration `toml:"poll_interval"`
}

// DefaultConfig returns the configuration used for unset fields.
func DefaultConfig() Config {
	cfg := Config{
		QEMUPath:        "qemu-system-x86_64",
		Kernel:          "/usr/share/raksh/vmlinuz",
		Initrd:          "/usr/share/raksh/initrd.img",
		Machine:         "pc",
		Accel:           "auto",
		MemoryMiB:       512,
		VCPUs:           1,
		BootTimeout:     2 * time.Minute,
		KVMProbeTimeout: 15 * time.Second,
		StateDir:        "/run/raksh",
		Transport:       "auto",
	}
	cfg.MemoryMaxMiB = 8192
	cfg.ScratchDiskMaxMiB = 65536
	cfg.ScratchDir = "/var/lib/raksh/scratch"
	cfg.PlainRootfs = PlainRootfsErofs
	cfg.MkfsErofs = "mkfs.erofs"
	cfg.VirtioFSDPath = DefaultVirtioFSD
	return cfg
}

// LoadConfig reads the TOML file at path over DefaultConfig. A missing file
// at the default path is not an error.
func LoadConfig(path string) (Config, error) {
	cfg := DefaultConfig()
	explicit := path != ""
	if path == "" {
		path = os.Getenv(ConfigEnv)
		explicit = path != ""
	}
	if path == "" {
		path = DefaultConfigPath
	}
	md, err := toml.DecodeFile(path, &cfg)
	if err != nil {
		if os.IsNotExist(err) && !explicit {
			return cfg, nil
		}
		return cfg, fmt.Errorf("runtime config %s: %w", path, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		return cfg, fmt.Errorf("runtime config %s: unknown keys %v", path, und)
	}
	switch cfg.Accel {
	case "auto", "kvm", "tcg":
	default:
		return cfg, fmt.Errorf("runtime config %s: accel %q is not auto, kvm or tcg", path, cfg.Accel)
	}
	switch cfg.Transport {
	case "auto", "vsock", "serial":
	default:
		return cfg, fmt.Errorf("runtime config %s: transport %q is not auto, vsock or serial", path, cfg.Transport)
	}
	if err := validStateDir(cfg.StateDir); err != nil {
		return cfg, fmt.Errorf("runtime config %s: %w", path, err)
	}
	if err := validTEE(&cfg, &md); err != nil {
		return cfg, fmt.Errorf("runtime config %s: %w", path, err)
	}
	if err := validInitData(cfg); err != nil {
		return cfg, fmt.Errorf("runtime config %s: %w", path, err)
	}
	if err := validImageKeys(cfg); err != nil {
		return cfg, fmt.Errorf("runtime config %s: %w", path, err)
	}
	switch cfg.PlainRootfs {
	case PlainRootfsErofs, PlainRootfsTar:
	default:
		return cfg, fmt.Errorf("runtime config %s: plain_rootfs %q is not erofs or tar", path, cfg.PlainRootfs)
	}
	if err := validStorage(cfg); err != nil {
		return cfg, fmt.Errorf("runtime config %s: %w", path, err)
	}
	if err := validSharedFS(cfg); err != nil {
		return cfg, fmt.Errorf("runtime config %s: %w", path, err)
	}
	return cfg, nil
}

// validInitData checks the node's default init-data document.
func validInitData(cfg Config) error {
	if cfg.InitData == "" {
		return nil
	}
	if _, err := PodInitData(cfg, nil); err != nil {
		return err
	}
	return nil
}
