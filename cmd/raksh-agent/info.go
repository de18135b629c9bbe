package main

import (
	"context"
	"os"
	"strings"
	"sync"

	"github.com/containerd/log"

	"github.com/raksh-project/raksh/internal/version"
	"github.com/raksh-project/raksh/tee"
	"github.com/raksh-project/raksh/tee/detect"
	"github.com/raksh-project/raksh/tee/sim"
)

// agentVersion is the version of this binary as the build stamped it
// (internal/version), with its revision when known.
func agentVersion() string {
	if version.Revision != "" {
		return version.Version + " (" + version.Revision + ")"
	}
	return version.Version
}

var teeTypeOnce struct {
	sync.Once
	t string
}

// teeType names the TEE the guest runs in, as the agent's Info reports it:
// a detected hardware TEE, "sim" when the VM was launched with the
// simulated TEE's measurement on the command line, else "none".
func teeType(ctx context.Context) string {
	teeTypeOnce.Do(func() {
		res, err := detect.Detect(ctx)
		switch {
		case err == nil:
			teeTypeOnce.t = string(res.Type)
		case simLaunched():
			teeTypeOnce.t = string(tee.Sim)
		default:
			log.G(ctx).WithError(err).Debug("no TEE detected")
			teeTypeOnce.t = "none"
		}
	})
	return teeTypeOnce.t
}

func simLaunched() bool {
	b, err := os.ReadFile("/proc/cmdline")
	return err == nil && strings.Contains(string(b), sim.KernelParamMeasurement+"=")
}
