package agent

import (
	"fmt"

	runcproc "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2/process"
)

// process is one container init or exec in the guest: containerd's runc-shim
// process (its state machine: created → running → stopped → deleted, with
// runc and the console/pipe copying behind it) and the guest ends of its
// stdio (stdio.go).
type process struct {
	id, execID string
	terminal   bool
	proc       runcproc.Process
	// init is proc for a container's init, nil for an exec.
	init *runcproc.Init

	// io is set at Create (init) or Start (exec); guarded by Service.mu.
	io *procIO
	// ioDir and streams, for an exec, are fixed at Exec and used at Start.
	ioDir   string
	streams [3]string
	// starting is set by the Start that runs an exec; guarded by Service.mu.
	starting bool
}

func (p *process) name() string {
	if p.execID == "" {
		return fmt.Sprintf("container %q", p.id)
	}
	return fmt.Sprintf("exec %q", p.execID)
}
