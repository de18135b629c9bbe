package runtime

import (
	"fmt"
	"sync"
	"time"

	"github.com/containerd/errdefs"
)

// procState is the host-side state of a process in the VM. It moves only
// forward: created → starting → running → stopped → deleted, with two
// shortcuts: a failed start goes back to created, and a process that never
// ran (or whose VM died before it ran) goes from created straight to
// stopped or deleted. This is containerd's runc-shim process state machine
// (process/init_state.go), reduced to what a process in a VM needs.
type procState int

const (
	stateCreated procState = iota
	stateStarting
	stateRunning
	stateStopped
	stateDeleted
)

func (s procState) String() string {
	switch s {
	case stateCreated:
		return "created"
	case stateStarting:
		return "starting"
	case stateRunning:
		return "running"
	case stateStopped:
		return "stopped"
	case stateDeleted:
		return "deleted"
	}
	return fmt.Sprintf("state(%d)", int(s))
}

// hostProcess is the shim's record of one process in the VM (a container's
// init or an exec). Its state, pid and exit are owned by mu: every
// transition happens under it, and the exit is recorded exactly once, by
// whichever of the agent's Wait answer and the VM's death comes first.
type hostProcess struct {
	id, execID string
	io         *hostIO // set before the process is published; never changes

	mu       sync.Mutex
	state    procState
	pid      uint32
	status   uint32
	exitedAt time.Time
	exited   chan struct{} // closed on the transition to stopped (or created → deleted)
}

func newHostProcess(id, execID string) *hostProcess {
	return &hostProcess{id: id, execID: execID, exited: make(chan struct{})}
}

func (p *hostProcess) eventID() string {
	if p.execID == "" {
		return p.id
	}
	return p.execID
}

// exitInfo is a consistent copy of a process's pid and exit.
type exitInfo struct {
	state    procState
	pid      uint32
	status   uint32
	exitedAt time.Time
}

func (p *hostProcess) info() exitInfo {
	p.mu.Lock()
	defer p.mu.Unlock()
	return exitInfo{state: p.state, pid: p.pid, status: p.status, exitedAt: p.exitedAt}
}

func (p *hostProcess) setPid(pid uint32) {
	p.mu.Lock()
	p.pid = pid
	p.mu.Unlock()
}

// beginStart claims the start of a created process: of two concurrent
// Starts, one gets on, the other is refused.
func (p *hostProcess) beginStart() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state != stateCreated {
		return fmt.Errorf("process %s is %s, cannot start it: %w", p.eventID(), p.state, errdefs.ErrFailedPrecondition)
	}
	p.state = stateStarting
	return nil
}

// endStart finishes what beginStart claimed. A failed start returns the
// process to created. It reports whether the process is now running: false
// also when the VM died during the start (the exit is already recorded).
func (p *hostProcess) endStart(pid uint32, err error) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state != stateStarting {
		return false
	}
	if err != nil {
		p.state = stateCreated
		return false
	}
	if p.pid == 0 {
		p.pid = pid
	}
	p.state = stateRunning
	return true
}

// setExited records the exit of a process that was created, starting or
// running. It reports whether this call recorded it: only that caller
// publishes the exit.
func (p *hostProcess) setExited(status uint32, at time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch p.state {
	case stateCreated, stateStarting, stateRunning:
	default:
		return false
	}
	p.state, p.status, p.exitedAt = stateStopped, status, at
	close(p.exited)
	return true
}

// beginDelete moves a process that is not running to deleted, so that
// Delete runs once. A process that never ran is given the status of a
// killed one, and its Waits return.
func (p *hostProcess) beginDelete() (exitInfo, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch p.state {
	case stateStarting, stateRunning:
		return exitInfo{}, fmt.Errorf("process %s is still running: %w", p.eventID(), errdefs.ErrFailedPrecondition)
	case stateDeleted:
		return exitInfo{}, fmt.Errorf("process %s: %w", p.eventID(), errdefs.ErrNotFound)
	case stateCreated:
		p.status, p.exitedAt = 128+9, time.Now()
		close(p.exited)
	}
	p.state = stateDeleted
	return exitInfo{state: p.state, pid: p.pid, status: p.status, exitedAt: p.exitedAt}, nil
}
