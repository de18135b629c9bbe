package launch

import (
	"fmt"
	"os"
	"strings"

	"github.com/containerd/errdefs"

	"github.com/raksh-project/raksh/tee"
	"github.com/raksh-project/raksh/tee/sim"
)

// TEE types of the runtime config's tee key.
const (
	// TEENone launches plain VMs (the default; "" means the same).
	TEENone = "none"
	// TEESim launches VMs on the simulated, INSECURE software TEE: the shim
	// measures kernel, initrd and command line (sim.MeasureFiles) and passes
	// the measurement to the guest attester on the kernel command line.
	TEESim = "sim"
)

func validTEE(t string) error {
	switch t {
	case "", TEENone, TEESim:
		return nil
	}
	return fmt.Errorf("tee %q is not %q or %q: %w", t, TEENone, TEESim, errdefs.ErrInvalidArgument)
}

// KernelParams returns the guest kernel command line cfg renders on this
// host, before the parameters a TEE launcher adds (those are not measured).
// It is the command line LaunchMeasurement measures, so every parameter the
// shim passes must come from here.
func KernelParams(cfg Config) []string {
	params := append([]string{"console=ttyS0", "quiet", "panic=-1"}, cfg.KernelParams...)
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

// LaunchMeasurement returns the launch measurement of the guest cfg boots
// under its TEE: for "sim", sim.MeasureFiles over the kernel, the initrd and
// the command line of KernelParams. It is the value a key broker's policy
// pins (measurements = [hex]). It fails for configs without a TEE.
func LaunchMeasurement(cfg Config) ([]byte, error) {
	switch cfg.TEE {
	case TEESim:
		m, err := sim.MeasureFiles(cfg.Kernel, cfg.Initrd, strings.Join(KernelParams(cfg), " "))
		if err != nil {
			return nil, fmt.Errorf("measure the sim TEE guest: %w", err)
		}
		return m, nil
	case "", TEENone:
		return nil, fmt.Errorf("runtime config has no TEE (tee = %q): %w", cfg.TEE, errdefs.ErrFailedPrecondition)
	}
	return nil, validTEE(cfg.TEE)
}

// TEEArgs returns what cfg's TEE adds to a VM launched with the
// kernel command line params: nothing without a TEE; for "sim", the
// measurement as a kernel parameter (no init data is bound yet).
func TEEArgs(cfg Config) (tee.LaunchArgs, error) {
	switch cfg.TEE {
	case "", TEENone:
		return tee.LaunchArgs{}, nil
	case TEESim:
		m, err := LaunchMeasurement(cfg)
		if err != nil {
			return tee.LaunchArgs{}, err
		}
		return sim.NewLauncher(m).LaunchArgs(tee.LaunchParams{})
	}
	return tee.LaunchArgs{}, validTEE(cfg.TEE)
}
