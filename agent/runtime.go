package agent

import (
	"context"
	"os"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Stdio are the child ends of a process's standard streams; nil means none.
type Stdio struct {
	Stdin, Stdout, Stderr *os.File
}

// Exit is the exit of a process, as reaped by the agent.
type Exit struct {
	Pid    int
	Status int
}

// Runtime creates and drives containers. The agent uses runc; tests may
// use a fake that runs plain processes.
type Runtime interface {
	// Create creates container id from the bundle without starting its
	// process and returns the process id. consoleSocket, if not empty, is a
	// unix socket receiving the pty master.
	Create(ctx context.Context, id, bundle string, stdio Stdio, consoleSocket string) (int, error)
	// Start starts the created container's process.
	Start(ctx context.Context, id string) error
	// Exec starts an additional process in container id and returns its pid.
	Exec(ctx context.Context, id, execID string, p *specs.Process, stdio Stdio, consoleSocket string) (int, error)
	// Kill signals the container's init (or all its processes).
	Kill(ctx context.Context, id string, sig int, all bool) error
	// Delete removes the container.
	Delete(ctx context.Context, id string, force bool) error
	// Pids lists the container's processes.
	Pids(ctx context.Context, id string) ([]int, error)
	// Update changes the container's resources.
	Update(ctx context.Context, id string, r *specs.LinuxResources) error
	// Exits delivers the exit of every child process the agent reaps.
	Exits() <-chan Exit
}
