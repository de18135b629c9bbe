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

	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/fifo"
	"github.com/containerd/log"

	"github.com/raksh-project/raksh/internal/wire"
	"github.com/raksh-project/raksh/runtime/vm"
)

// hostIO connects a process's containerd stdio (fifos, files or a logging
// binary) to its streams in the VM. Output is drained before Wait answers.
type hostIO struct {
	stdin          net.Conn
	stdinSrc       io.ReadCloser
	outputs        sync.WaitGroup
	closers        []io.Closer
	cmd            *exec.Cmd
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
// file://PATH or binary://PATH?args (containerd's logging binary protocol).
func (h *hostIO) openOutputs(ctx context.Context, id, stdout, stderr string) (io.Writer, io.Writer, error) {
	u, err := url.Parse(stdout)
	if stdout != "" && err == nil && u.Scheme == "binary" {
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

func (h *hostIO) startLogger(ctx context.Context, id string, u *url.URL) (io.Writer, io.Writer, error) {
	ns, _ := namespaces.Namespace(ctx)
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, nil, err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		return nil, nil, err
	}
	readyR, readyW, err := os.Pipe()
	if err != nil {
		return nil, nil, err
	}
	var args []string
	for k, vs := range u.Query() {
		args = append(args, k)
		if len(vs) > 0 && vs[0] != "" {
			args = append(args, vs[0])
		}
	}
	cmd := exec.Command(u.Path, args...)
	cmd.Env = append(os.Environ(), "CONTAINER_ID="+id, "CONTAINER_NAMESPACE="+ns)
	cmd.ExtraFiles = []*os.File{outR, errR, readyW}
	if err := cmd.Start(); err != nil {
		return nil, nil, fmt.Errorf("start logging binary %s: %w", u.Path, err)
	}
	outR.Close()
	errR.Close()
	readyW.Close()
	h.cmd = cmd
	h.closers = append(h.closers, outW, errW)
	// The logger closes fd 5 when it is ready.
	done := make(chan struct{})
	go func() {
		io.Copy(io.Discard, readyR)
		readyR.Close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		return nil, nil, fmt.Errorf("logging binary %s did not become ready", u.Path)
	}
	return outW, errW, nil
}

// StreamNames returns the stream names to hand the agent.
func (h *hostIO) StreamNames() (stdin, stdout, stderr string) {
	return h.streamNames[0], h.streamNames[1], h.streamNames[2]
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
		if h.cmd != nil {
			go h.cmd.Wait()
		}
	})
}
