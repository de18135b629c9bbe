// Package agenttest has fakes for testing the agent and the shim without
// root, runc or a VM.
package agenttest

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/raksh-project/raksh/agent"
)

// HostRuntime is an agent.Runtime for tests: it runs a container's process as a
// plain host process (no isolation) in the rootfs directory. It lets the
// agent and the shim be tested without root, runc or a VM.
type HostRuntime struct {
	mu    sync.Mutex
	cmds  map[string]*exec.Cmd
	gates map[string]*gate
	exits chan agent.Exit
}

// gate holds back the exit of a container's process until Start (or Kill,
// or Delete), as runc's created state would: a created container's process
// cannot exit on its own.
type gate struct {
	once sync.Once
	ch   chan struct{}
}

func (g *gate) open() { g.once.Do(func() { close(g.ch) }) }

func (h *HostRuntime) openGate(id string) {
	h.mu.Lock()
	g := h.gates[id]
	h.mu.Unlock()
	if g != nil {
		g.open()
	}
}

// NewHostRuntime returns a HostRuntime.
func NewHostRuntime() *HostRuntime {
	return &HostRuntime{cmds: map[string]*exec.Cmd{}, gates: map[string]*gate{}, exits: make(chan agent.Exit, 64)}
}

var _ agent.Runtime = (*HostRuntime)(nil)

func (h *HostRuntime) run(key string, p *specs.Process, dir string, stdio agent.Stdio, g *gate) (int, error) {
	if p == nil || len(p.Args) == 0 {
		return 0, fmt.Errorf("process has no args: %w", errdefs.ErrInvalidArgument)
	}
	cmd := exec.Command(p.Args[0], p.Args[1:]...)
	cmd.Env = p.Env
	cmd.Dir = dir
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdio.Stdin, stdio.Stdout, stdio.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	h.mu.Lock()
	h.cmds[key] = cmd
	if g != nil {
		h.gates[key] = g
	}
	h.mu.Unlock()
	go func() {
		cmd.Wait()
		if g != nil {
			<-g.ch
		}
		status := cmd.ProcessState.ExitCode()
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			status = 128 + int(ws.Signal())
		}
		h.exits <- agent.Exit{Pid: cmd.Process.Pid, Status: status}
	}()
	return cmd.Process.Pid, nil
}

// Create starts the process right away; its exit is reported only after
// Start, Kill or Delete, as a created runc container cannot exit on its own.
func (h *HostRuntime) Create(ctx context.Context, id, bundle string, stdio agent.Stdio, console string) (int, error) {
	if console != "" {
		return 0, fmt.Errorf("host runtime has no terminals: %w", errdefs.ErrNotImplemented)
	}
	b, err := os.ReadFile(filepath.Join(bundle, "config.json"))
	if err != nil {
		return 0, err
	}
	var spec specs.Spec
	if err := json.Unmarshal(b, &spec); err != nil {
		return 0, err
	}
	return h.run(id, spec.Process, filepath.Join(bundle, "rootfs"), stdio, &gate{ch: make(chan struct{})})
}

// Start lets the process's exit be reported: Create started the process.
func (h *HostRuntime) Start(ctx context.Context, id string) error {
	h.openGate(id)
	return nil
}

// Exec runs an additional host process.
func (h *HostRuntime) Exec(ctx context.Context, id, execID string, p *specs.Process, stdio agent.Stdio, console string) (int, error) {
	return h.run(id+"/"+execID, p, "", stdio, nil)
}

// Kill signals the container's process.
func (h *HostRuntime) Kill(ctx context.Context, id string, sig int, all bool) error {
	h.mu.Lock()
	cmd, ok := h.cmds[id]
	h.mu.Unlock()
	if !ok {
		return errdefs.ErrNotFound
	}
	h.openGate(id)
	return cmd.Process.Signal(syscall.Signal(sig))
}

// Delete forgets the container, killing it if needed.
func (h *HostRuntime) Delete(ctx context.Context, id string, force bool) error {
	h.openGate(id)
	h.mu.Lock()
	cmd, ok := h.cmds[id]
	delete(h.cmds, id)
	delete(h.gates, id)
	h.mu.Unlock()
	if ok && force {
		cmd.Process.Kill() // fails harmlessly if it has exited
	}
	return nil
}

// Pids returns the container's process id.
func (h *HostRuntime) Pids(ctx context.Context, id string) ([]int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	cmd, ok := h.cmds[id]
	if !ok {
		return nil, errdefs.ErrNotFound
	}
	return []int{cmd.Process.Pid}, nil
}

// Update is not supported.
func (h *HostRuntime) Update(ctx context.Context, id string, r *specs.LinuxResources) error {
	return errdefs.ErrNotImplemented
}

// Exits implements Runtime.
func (h *HostRuntime) Exits() <-chan agent.Exit { return h.exits }
