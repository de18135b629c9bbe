package agent

import (
	runcproc "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2/process"
	runc "github.com/containerd/go-runc"
)

// Runtime is the OCI runtime the agent drives through containerd's
// runc-shim process package (cmd/containerd-shim-runc-v2/process): the
// runc binary, its state root and the exits of the processes it starts.
// The agent uses runc in the guest (NewRunc); tests may use a fake runc
// binary (agenttest).
type Runtime struct {
	// Binary is the runc binary.
	Binary string
	// Root is runc's state directory (runc --root).
	Root string
	// Exits delivers the exit of every child process the agent reaps.
	Exits <-chan runc.Exit
}

// runc returns the runc client of the container whose bundle is bundle; runc
// writes its log (log.json, read back for errors) there.
func (r *Runtime) runc(bundle string) *runc.Runc {
	return runcproc.NewRunc(r.Root, bundle, "", r.Binary, false)
}
