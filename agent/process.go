package agent

import (
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/containerd/errdefs"
)

// procState is the state of a process in the guest: created → starting →
// running → stopped. A failed start returns to created; an exit (reaped by
// the runtime) moves any state to stopped.
type procState int

const (
	procCreated procState = iota
	procStarting
	procRunning
	procStopped
)

// process is one container init or exec in the guest. mu owns its state,
// pid, exit and stdio; the exit is recorded once and then announced by
// closing exited.
type process struct {
	id, execID string
	terminal   bool

	mu       sync.Mutex
	state    procState
	pid      int
	stdin    io.WriteCloser
	console  consoleResizer
	exited   chan struct{}
	status   int
	exitedAt time.Time
	ioDone   sync.WaitGroup
	closers  []io.Closer

	// spec and stdio of an exec between Exec and Start; never change.
	spec  []byte
	stdio [3]string
}

func newProcess(id, execID string, terminal bool) *process {
	return &process{id: id, execID: execID, terminal: terminal, exited: make(chan struct{})}
}

func (p *process) pendingSpec() []byte { return p.spec }

func (p *process) name() string {
	if p.execID == "" {
		return fmt.Sprintf("container %q", p.id)
	}
	return fmt.Sprintf("exec %q", p.execID)
}

// beginStart claims the start of a created process; a second Start, or a
// Start after the exit, is refused.
func (p *process) beginStart() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch p.state {
	case procCreated:
		p.state = procStarting
		return nil
	case procStopped:
		return fmt.Errorf("%s has exited: %w", p.name(), errdefs.ErrFailedPrecondition)
	default:
		return fmt.Errorf("%s already started: %w", p.name(), errdefs.ErrFailedPrecondition)
	}
}

// endStart ends what beginStart claimed: running if ok, created again if
// not. An exit recorded meanwhile stays.
func (p *process) endStart(ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state != procStarting {
		return
	}
	if ok {
		p.state = procRunning
	} else {
		p.state = procCreated
	}
}

func (p *process) setPid(pid int) {
	p.mu.Lock()
	p.pid = pid
	p.mu.Unlock()
}

func (p *process) getPid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pid
}

// setExited records the exit once; later calls are ignored.
func (p *process) setExited(status int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state == procStopped {
		return
	}
	p.state, p.status, p.exitedAt = procStopped, status, time.Now()
	close(p.exited)
}

func (p *process) hasExited() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

// procSnapshot is a consistent copy of a process's state.
type procSnapshot struct {
	state    procState
	pid      int
	status   int
	exitedAt time.Time
}

func (p *process) snapshot() procSnapshot {
	p.mu.Lock()
	defer p.mu.Unlock()
	return procSnapshot{state: p.state, pid: p.pid, status: p.status, exitedAt: p.exitedAt}
}

// closeIO releases the process's stdio once its output is drained.
func (p *process) closeIO() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.closers {
		c.Close()
	}
	p.closers = nil
	if p.stdin != nil {
		p.stdin.Close()
		p.stdin = nil
	}
}
