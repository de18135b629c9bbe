package launch

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/errdefs"
)

// Probe checks that this host can launch cfg's hardware TEE, so a node
// configured for one fails its first pod instead of running a
// "confidential" pod unprotected. root is where the host's /dev, /sys and
// /proc are ("/" on a node; tests pass a directory). It names everything
// missing at once. It does nothing for none and sim.
func Probe(ctx context.Context, cfg Config, root string) error {
	if PEFSimulated(cfg) {
		return probeSimulatedUltravisor(cfg)
	}
	if !HardwareTEE(cfg.TEE) {
		return nil
	}
	var missing []string
	exists := func(p, why string) {
		if _, err := os.Stat(filepath.Join(root, p)); err != nil {
			missing = append(missing, "/"+p+" is missing ("+why+")")
		}
	}
	param := func(p, why string) {
		b, err := os.ReadFile(filepath.Join(root, p))
		if v := strings.TrimSpace(string(b)); err != nil || v != "Y" && v != "1" {
			missing = append(missing, why)
		}
	}
	file := func(p, what string) {
		if p == "" {
			return
		}
		if _, err := os.Stat(p); err != nil {
			missing = append(missing, what+" "+p+" is not readable")
		}
	}
	exists("dev/kvm", "no KVM: load kvm and the vendor module")
	switch cfg.TEE {
	case TEESNP:
		exists("dev/sev", "the SEV firmware is not initialised: SEV-SNP enabled in BIOS, ccp and kvm_amd loaded")
		param("sys/module/kvm_amd/parameters/sev_snp", "kvm_amd does not have sev_snp=1 (load kvm_amd with sev_snp=1 on a host kernel with SNP host support, 6.11+)")
		file(cfg.SNP.Firmware, "[snp] firmware")
	case TEETDX:
		param("sys/module/kvm_intel/parameters/tdx", "kvm_intel does not have tdx=1 (load kvm_intel with tdx=1 on a host kernel with TDX host support, 6.16+, TDX enabled in BIOS)")
		file(cfg.TDX.Firmware, "[tdx] firmware")
	case TEEPEF:
		exists("sys/module/kvm_hv", "kvm_hv is not loaded: PEF needs KVM-HV on POWER9/10")
		exists("proc/device-tree/ibm,ultravisor", "the host does not run the ultravisor (firmware with PEF enabled)")
		file(cfg.PEF.SealedInitrd, "[pef] sealed_initrd")
	}
	if err := qemuVersionAtLeast(ctx, cfg.QEMUPath, minQEMU[cfg.TEE]); err != nil {
		missing = append(missing, err.Error())
	}
	if len(missing) > 0 {
		return fmt.Errorf("tee %q cannot be launched on this host: %s: %w", cfg.TEE, strings.Join(missing, "; "), errdefs.ErrFailedPrecondition)
	}
	return nil
}

var qemuVersionRe = regexp.MustCompile(`QEMU emulator version ([0-9]+)\.([0-9]+)`)

// qemuVersionAtLeast runs qemu --version and compares it to min.
func qemuVersionAtLeast(ctx context.Context, qemuPath string, min [2]int) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, qemuPath, "--version").Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) || errors.Is(err, exec.ErrNotFound) || os.IsNotExist(err) {
			return fmt.Errorf("%s does not run (%v): QEMU %d.%d or later is needed", qemuPath, err, min[0], min[1])
		}
		return fmt.Errorf("%s --version: %v", qemuPath, err)
	}
	m := qemuVersionRe.FindSubmatch(out)
	if m == nil {
		return fmt.Errorf("%s --version does not name a QEMU version", qemuPath)
	}
	major, _ := strconv.Atoi(string(m[1]))
	minor, _ := strconv.Atoi(string(m[2]))
	if major < min[0] || major == min[0] && minor < min[1] {
		return fmt.Errorf("%s is QEMU %d.%d, older than %d.%d", qemuPath, major, minor, min[0], min[1])
	}
	return nil
}
