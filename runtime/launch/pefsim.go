package launch

import (
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"strings"

	"github.com/containerd/errdefs"

	"github.com/raksh-project/raksh/runtime/vm/qemu"
	"github.com/raksh-project/raksh/tee/pef"
)

// GuestCmdline is the kernel command line a VM rendered as qc boots with
// (QEMU's -append): the runtime's parameters, then the TEE launcher's.
// On PEF it is what the ESM blob seals.
func GuestCmdline(qc qemu.Config) string {
	return strings.Join(append(append([]string{}, qc.KernelParams...), qc.TEE.KernelParams...), " ")
}

// PEFSealTarget is what `rakshctl initrd build --seal-for pef` seals an
// initrd for on a node with runtime config cfg: the kernel file and the
// exact command line the shim renders for its VMs (the node's init data
// bound, since PEF pods cannot bring their own).
func PEFSealTarget(cfg Config) (kernel, cmdline string, err error) {
	if cfg.TEE != TEEPEF {
		return "", "", fmt.Errorf("the runtime config has tee = %q; sealing for pef needs tee = \"pef\": %w", cfg.TEE, errdefs.ErrInvalidArgument)
	}
	doc, err := PodInitData(cfg, nil)
	if err != nil {
		return "", "", err
	}
	qc, err := QEMUConfig(cfg, doc)
	if err != nil {
		return "", "", err
	}
	return qc.Kernel, GuestCmdline(qc), nil
}

// SimulatedUltravisorBoot does, for a VM rendered as qc on a node running
// PEF on the simulated ultravisor (PEFSimulated), what the ultravisor does
// when the VM asks to enter secure mode: it unwraps the ESM blob of the
// sealed initrd with [pef] simulated_ultravisor_key, checks the sealed
// digests of kernel, initramfs and command line and, only if they all
// match, returns the initrd to boot: the sealed one followed by an archive
// placing the released files in /raksh/pef (pef.SimUltravisor.BootInitrd).
// The result holds the released secrets in clear: keep it off disk.
func SimulatedUltravisorBoot(cfg Config, qc qemu.Config) ([]byte, error) {
	if !PEFSimulated(cfg) {
		return nil, fmt.Errorf("the runtime config does not run the simulated ultravisor: %w", errdefs.ErrFailedPrecondition)
	}
	key, err := readWrappingKey(cfg.PEF.SimulatedUltravisorKey)
	if err != nil {
		return nil, err
	}
	kernel, err := os.ReadFile(qc.Kernel)
	if err != nil {
		return nil, fmt.Errorf("guest kernel: %w", err)
	}
	sealed, err := os.ReadFile(qc.Initrd)
	if err != nil {
		return nil, fmt.Errorf("[pef] sealed_initrd: %w", err)
	}
	rd, err := pef.NewSimUltravisor(key).BootInitrd(pef.BootParams{Kernel: kernel, Initrd: sealed, Cmdline: GuestCmdline(qc)})
	if err != nil {
		return nil, fmt.Errorf("the simulated ultravisor refused to boot [pef] sealed_initrd %s (sealed for another platform key, kernel, initrd or command line, or tampered with): %w", qc.Initrd, err)
	}
	return rd, nil
}

// probeSimulatedUltravisor checks what the simulated ultravisor needs.
func probeSimulatedUltravisor(cfg Config) error {
	var missing []string
	if _, err := readWrappingKey(cfg.PEF.SimulatedUltravisorKey); err != nil {
		missing = append(missing, err.Error())
	}
	if _, err := os.Stat(cfg.PEF.SealedInitrd); err != nil {
		missing = append(missing, "[pef] sealed_initrd "+cfg.PEF.SealedInitrd+" is not readable")
	}
	if len(missing) > 0 {
		return fmt.Errorf("tee \"pef\" on the simulated ultravisor cannot be launched: %s: %w", strings.Join(missing, "; "), errdefs.ErrFailedPrecondition)
	}
	return nil
}

// readWrappingKey reads an RSA private key (PKCS#8 or PKCS#1 PEM).
func readWrappingKey(path string) (*rsa.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("[pef] simulated_ultravisor_key %s is not readable", path)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("[pef] simulated_ultravisor_key %s is not PEM", path)
	}
	var k any
	switch blk.Type {
	case "RSA PRIVATE KEY":
		k, err = x509.ParsePKCS1PrivateKey(blk.Bytes)
	default:
		k, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
	}
	rk, ok := k.(*rsa.PrivateKey)
	if err != nil || !ok {
		return nil, fmt.Errorf("[pef] simulated_ultravisor_key %s is not an RSA private key", path)
	}
	return rk, nil
}
