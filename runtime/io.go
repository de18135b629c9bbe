package runtime

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2/process"
	"github.com/containerd/fifo"
	runc "github.com/containerd/go-runc"
	"github.com/containerd/log"

	"github.com/raksh-project/raksh/internal/wire"
	"github.com/raksh-project/raksh/runtime/vm"
)

// hostIO connects a process's containerd stdio (fifos, files or a logging
// binary) to its streams in the VM. Output is drained before Wait answers.
type hostIO struct {
	stdin          net.Conn
	stdinSrc       io.ReadCloser
	stdinPath      string
	outputs        sync.WaitGroup
	closers        []io.Closer
	streamNames    [3]string
	stdinCloseOnce sync.Once
	closeOnce      sync.Once
}

// newHostIO opens the process's streams to the VM and its host stdio.
// Streams must be opened before the agent is asked to create the process.
func newHostIO(ctx context.Context, v vm.Instance, id, execID, stdin, stdout, stderr string, terminal bool) (_ *hostIO, retErr error) {
	h := &hostIO{}
	defer func() {
		if retErr != nil {
			h.Close()
		}
	}()
	if terminal {
		stderr = "" // a terminal merges stderr into stdout
	}
	outW, errW, err := h.openOutputs(ctx, id, stdout, stderr)
	if err != nil {
		return nil, err
	}
	open := func(fd string) (net.Conn, error) {
		c, err := v.StartStream(ctx, wire.StdioStream(id, execID, fd))
		if err != nil {
			return nil, fmt.Errorf("open %s stream: %w", fd, err)
		}
		h.closers = append(h.closers, c)
		return c, nil
	}
	if stdin != "" {
		src, err := fifo.OpenFifo(ctx, stdin, syscall.O_RDONLY|syscall.O_NONBLOCK, 0)
		if err != nil {
			return nil, fmt.Errorf("open stdin %s: %w", stdin, err)
		}
		h.stdinSrc = src
		h.stdinPath = stdin
		h.closers = append(h.closers, src)
		c, err := open("stdin")
		if err != nil {
			return nil, err
		}
		h.stdin = c
		h.streamNames[0] = wire.StdioStream(id, execID, "stdin")
		go func() {
			io.Copy(c, src)
			h.CloseStdin()
		}()
	}
	for i, w := range []io.Writer{outW, errW} {
		if w == nil {
			continue
		}
		fd := []string{"stdout", "stderr"}[i]
		c, err := open(fd)
		if err != nil {
			return nil, err
		}
		h.streamNames[i+1] = wire.StdioStream(id, execID, fd)
		h.outputs.Add(1)
		go func() {
			defer h.outputs.Done()
			if _, err := io.Copy(w, c); err != nil {
				log.G(ctx).WithError(err).WithField("stream", fd).Debug("output copy ended")
			}
			// Like the runc shim, close the output once drained: clients
			// (ctr task exec) wait for EOF on their fifo before Delete.
			if wc, ok := w.(io.Closer); ok {
				wc.Close()
			}
		}()
	}
	return h, nil
}

// openOutputs opens the host side of stdout and stderr: a fifo path,
// file://PATH or binary[-v2]://PATH?args (containerd's logging binary protocol).
func (h *hostIO) openOutputs(ctx context.Context, id, stdout, stderr string) (io.Writer, io.Writer, error) {
	u, err := url.Parse(stdout)
	if stdout != "" && err == nil && (u.Scheme == "binary" || u.Scheme == "binary-v2") {
		return h.startLogger(ctx, id, u)
	}
	var ws [2]io.Writer
	for i, p := range []string{stdout, stderr} {
		if p == "" {
			continue
		}
		u, err := url.Parse(p)
		if err == nil && u.Scheme == "file" {
			f, err := os.OpenFile(u.Path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
			if err != nil {
				return nil, nil, fmt.Errorf("open log file: %w", err)
			}
			h.closers = append(h.closers, f)
			ws[i] = f
			continue
		}
		if err == nil && u.Scheme != "" && u.Scheme != "fifo" {
			return nil, nil, fmt.Errorf("unsupported stdio scheme %q", u.Scheme)
		}
		path := p
		if err == nil && u.Scheme == "fifo" {
			path = u.Path
		}
		octx, cancel := context.WithTimeout(ctx, 30*time.Second)
		f, err := fifo.OpenFifo(octx, path, syscall.O_WRONLY, 0)
		cancel()
		if err != nil {
			return nil, nil, fmt.Errorf("open output fifo: %w", err)
		}
		h.closers = append(h.closers, f)
		ws[i] = f
	}
	return ws[0], ws[1], nil
}

// startLogger starts a logging binary with containerd's runc-shim
// implementation (process.NewBinaryIO: stdout on fd 3, stderr on fd 4, ready
// on fd 5; SIGTERM and a bounded wait, then SIGKILL, on Close) and returns
// the write ends of its stdout and stderr pipes.
func (h *hostIO) startLogger(ctx context.Context, id string, u *url.URL) (io.Writer, io.Writer, error) {
	bio, err := process.NewBinaryIO(ctx, id, u)
	if err != nil {
		return nil, nil, fmt.Errorf("start logging binary %s: %w", u.Path, err)
	}
	h.closers = append(h.closers, bio)
	// The binary IO hands the write ends to the command a runc shim would
	// start (Set); here they are fed from the VM's streams.
	var c exec.Cmd
	bio.Set(&c)
	if sc, ok := bio.(runc.StartCloser); ok { // our copies of the read ends
		if err := sc.CloseAfterStart(); err != nil {
			return nil, nil, err
		}
	}
	return c.Stdout, c.Stderr, nil
}

// StreamNames returns the stream names to hand the agent.
func (h *hostIO) StreamNames() (stdin, stdout, stderr string) {
	return h.streamNames[0], h.streamNames[1], h.streamNames[2]
}

// EndStdin is CloseIO: the client wrote all its stdin and closed its end
// of the fifo, but what it wrote may still sit in the fifo (ctr calls
// CloseIO as soon as its own input ends). So the copy forwards it and
// half-closes the stream at the fifo's EOF, as containerd's runc shim
// drains a fifo before the process reads EOF. Opening and closing a writer
// completes the copy's open of the fifo should the client never have
// opened it; with no reader left (the copy ended) the stream is closed now.
func (h *hostIO) EndStdin() {
	if h.stdinPath != "" {
		if w, err := os.OpenFile(h.stdinPath, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
			w.Close()
			return
		}
	}
	h.CloseStdin()
}

// CloseStdin half-closes the stdin stream: the process reads EOF.
func (h *hostIO) CloseStdin() {
	h.stdinCloseOnce.Do(func() {
		if h.stdin != nil {
			h.stdin.Close()
		}
	})
}

// Drain waits until all output has reached the host side, or the timeout.
func (h *hostIO) Drain(timeout time.Duration) bool {
	done := make(chan struct{})
	go func() {
		h.outputs.Wait()
		close(done)
	}()
	select {
	case <-done:
		return true
	case <-time.After(timeout):
		return false
	}
}

// Close releases everything; output not yet drained is lost. It is safe to
// call more than once and concurrently (the VM's death and Delete both do).
func (h *hostIO) Close() {
	h.closeOnce.Do(func() {
		for _, c := range h.closers {
			c.Close()
		}
	})
}
