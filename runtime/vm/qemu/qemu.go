package qemu

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
	"github.com/digitalocean/go-qemu/qmp/raw"
)

// Process is a running QEMU.
type Process struct {
	cfg  Config
	cmd  *exec.Cmd
	done chan struct{}
	err  error
	out  bytes.Buffer
	// dial, if set, replaces the QMP socket connection (tests).
	dial func() qmp.Monitor
}

// Start launches QEMU with cfg. QEMU is killed if the calling process dies.
func Start(cfg Config) (*Process, error) {
	args, err := cfg.Args()
	if err != nil {
		return nil, err
	}
	p := &Process{cfg: cfg, done: make(chan struct{})}
	p.cmd = exec.Command(cfg.Path, args...)
	p.cmd.Stdout = &p.out
	p.cmd.Stderr = &p.out
	p.cmd.ExtraFiles = cfg.ExtraFiles()
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start qemu %s: %w", cfg.Path, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Pid returns QEMU's process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Done is closed when QEMU has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// ExitError describes how QEMU ended, with what it printed (which never
// includes guest data: the console goes to its own log).
func (p *Process) ExitError() error {
	select {
	case <-p.done:
	default:
		return nil
	}
	msg := bytes.TrimSpace(p.out.Bytes())
	if len(msg) > 2048 {
		msg = msg[len(msg)-2048:]
	}
	if p.err != nil {
		return fmt.Errorf("qemu exited: %v: %s", p.err, msg)
	}
	return fmt.Errorf("qemu exited: %s", msg)
}

// Status asks QEMU over QMP for the VM's run state ("running", ...).
func (p *Process) Status(timeout time.Duration) (string, error) {
	var st raw.StatusInfo
	err := p.monitor(timeout, func(m *raw.Monitor) (err error) {
		st, err = m.QueryStatus()
		return err
	})
	if err != nil {
		return "", err
	}
	return st.Status.String(), nil
}

// monitor runs fn on go-qemu's typed QMP API over a new QMP connection.
func (p *Process) monitor(timeout time.Duration, fn func(*raw.Monitor) error) error {
	if p.cfg.QMPSocket == "" {
		return fmt.Errorf("vm %s has no QMP socket", p.cfg.Name)
	}
	mon := NewQMPConn(p.cfg.QMPSocket, timeout)
	if err := mon.Connect(); err != nil {
		return fmt.Errorf("qmp connect: %w", err)
	}
	defer mon.Disconnect()
	if err := fn(raw.NewMonitor(mon)); err != nil {
		return fmt.Errorf("qmp: %w", err)
	}
	return nil
}

// Stop ends the VM: a QMP quit, then SIGKILL if QEMU is still there when
// ctx ends.
func (p *Process) Stop(ctx context.Context) error {
	select {
	case <-p.done:
		return nil
	default:
	}
	if err := p.monitor(2*time.Second, (*raw.Monitor).Quit); err != nil {
		p.cmd.Process.Kill()
	}
	select {
	case <-p.done:
	case <-ctx.Done():
		p.cmd.Process.Kill()
		<-p.done
	}
	if p.cfg.PidFile != "" {
		os.Remove(p.cfg.PidFile)
	}
	return nil
}
