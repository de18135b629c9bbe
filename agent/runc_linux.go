package agent

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/containerd/containerd/v2/pkg/sys/reaper"
	runc "github.com/containerd/go-runc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Runc is the Runtime backed by the runc binary in the guest.
type Runc struct {
	r     *runc.Runc
	exits chan Exit
}

// NewRunc returns a runc runtime keeping its state under root. The caller
// must call reaper.Reap on SIGCHLD (the agent is PID 1).
func NewRunc(binary, root string) *Runc {
	runc.Monitor = reaper.Default
	os.MkdirAll(root, 0o700)
	r := &Runc{
		r: &runc.Runc{
			Command: binary,
			Root:    root,
			// The guest's root is the initramfs, where pivot_root is not allowed.
			Log:       filepath.Join(root, "runc.log"),
			LogFormat: runc.JSON,
		},
		exits: make(chan Exit, 128),
	}
	sub := reaper.Default.Subscribe()
	go func() {
		for e := range sub {
			r.exits <- Exit{Pid: e.Pid, Status: e.Status}
		}
	}()
	return r
}

var _ Runtime = (*Runc)(nil)

type fileIO struct{ Stdio }

func (fileIO) Close() error          { return nil }
func (fileIO) Stdin() io.WriteCloser { return nil }
func (fileIO) Stdout() io.ReadCloser { return nil }
func (fileIO) Stderr() io.ReadCloser { return nil }

// Set gives runc (and so the container) the process's stdio. Missing
// streams are /dev/null: go-runc would otherwise capture runc's output with a
// pipe that the container inherits, and wait forever for it to close.
func (f fileIO) Set(cmd *exec.Cmd) {
	cmd.Stdin, cmd.Stdout, cmd.Stderr = devNull, devNull, devNull
	if f.Stdio.Stdin != nil {
		cmd.Stdin = f.Stdio.Stdin
	}
	if f.Stdio.Stdout != nil {
		cmd.Stdout = f.Stdio.Stdout
	}
	if f.Stdio.Stderr != nil {
		cmd.Stderr = f.Stdio.Stderr
	}
}

var devNull, _ = os.OpenFile(os.DevNull, os.O_RDWR, 0)

func consoleOpt(path string) (runc.ConsoleSocket, error) {
	if path == "" {
		return nil, nil
	}
	return pathSocket(path), nil
}

type pathSocket string

func (p pathSocket) Path() string { return string(p) }

// Create implements Runtime.
func (r *Runc) Create(ctx context.Context, id, bundle string, stdio Stdio, console string) (int, error) {
	pidFile := filepath.Join(bundle, "init.pid")
	cs, _ := consoleOpt(console)
	opts := &runc.CreateOpts{IO: fileIO{stdio}, PidFile: pidFile, NoPivot: true}
	if cs != nil {
		opts.ConsoleSocket = cs
	}
	if err := r.r.Create(ctx, id, bundle, opts); err != nil {
		return 0, r.withLog(err)
	}
	return readPid(pidFile)
}

// Start implements Runtime.
func (r *Runc) Start(ctx context.Context, id string) error {
	return r.withLog(r.r.Start(ctx, id))
}

// Exec implements Runtime.
func (r *Runc) Exec(ctx context.Context, id, execID string, p *specs.Process, stdio Stdio, console string) (int, error) {
	pidFile := filepath.Join(r.r.Root, fmt.Sprintf("%s-%s.pid", id, execID))
	defer os.Remove(pidFile)
	opts := &runc.ExecOpts{IO: fileIO{stdio}, PidFile: pidFile, Detach: true}
	if cs, _ := consoleOpt(console); cs != nil {
		opts.ConsoleSocket = cs
	}
	if err := r.r.Exec(ctx, id, *p, opts); err != nil {
		return 0, r.withLog(err)
	}
	return readPid(pidFile)
}

// Kill implements Runtime.
func (r *Runc) Kill(ctx context.Context, id string, sig int, all bool) error {
	return r.withLog(r.r.Kill(ctx, id, sig, &runc.KillOpts{All: all}))
}

// Delete implements Runtime.
func (r *Runc) Delete(ctx context.Context, id string, force bool) error {
	return r.withLog(r.r.Delete(ctx, id, &runc.DeleteOpts{Force: force}))
}

// Pids implements Runtime.
func (r *Runc) Pids(ctx context.Context, id string) ([]int, error) {
	return r.r.Ps(ctx, id)
}

// Update implements Runtime.
func (r *Runc) Update(ctx context.Context, id string, res *specs.LinuxResources) error {
	return r.withLog(r.r.Update(ctx, id, res))
}

// Exits implements Runtime.
func (r *Runc) Exits() <-chan Exit { return r.exits }

// withLog adds runc's last log line, which says why it failed.
func (r *Runc) withLog(err error) error {
	if err == nil {
		return nil
	}
	b, rerr := os.ReadFile(r.r.Log)
	if rerr != nil || len(b) == 0 {
		return err
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	os.Truncate(r.r.Log, 0)
	return fmt.Errorf("%w: %s", err, lines[len(lines)-1])
}

func readPid(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}
