package agent

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd/v2/pkg/stdio"
	"github.com/containerd/fifo"
	"github.com/containerd/log"
)

const streamTimeout = 30 * time.Second

// HandleStream passes a stream opened by the shim to the service.
func (s *Service) HandleStream(ctx context.Context, name string, c net.Conn) {
	if strings.HasPrefix(name, PortForwardPrefix) {
		go s.portForward(ctx, name, c)
		return
	}
	s.streams.add(name, c)
}

// procIO is the guest side of a process's stdio. containerd's process
// package opens stdio by path, so each process gets fifos in a directory of
// the guest's own (under the agent's state root, named by a counter: no
// host-chosen name or path is used), and the agent copies between each fifo
// and the stream the shim opened for it. The fifo is one copy more than
// handing runc a pipe (docs/benchmarks.md has its cost).
type procIO struct {
	dir   string
	paths [3]string // stdin, stdout, stderr fifos; "" if none

	cancel context.CancelFunc
	// out is done when every output fifo reached EOF and its stream was
	// closed: the process's output is drained.
	out sync.WaitGroup

	mu     sync.Mutex
	closed bool
	conns  []net.Conn
	// stdinW is the agent's writer into the stdin fifo; stdinProc the
	// process package's (it holds the fifo open until CloseIO). The
	// process reads EOF once both are closed.
	stdinW    io.Closer
	stdinProc io.Closer
	stdinEOF  bool
}

// ioDir returns a fresh directory path for a process's fifos.
func (s *Service) ioDir() string {
	return filepath.Join(s.root+"-io", fmt.Sprint(s.ioSeq.Add(1)))
}

// ioPaths returns the fifos of a process whose shim streams are names. The
// process package opens stdout and stderr whenever any stream is set, and a
// console's output always: those fifos exist even without a stream (their
// output is then discarded in the guest).
func ioPaths(dir string, names [3]string, terminal bool) [3]string {
	var p [3]string
	any := names[0] != "" || names[1] != "" || names[2] != ""
	if names[0] != "" {
		p[0] = filepath.Join(dir, "stdin")
	}
	if any || terminal {
		p[1] = filepath.Join(dir, "stdout")
	}
	if any && !terminal {
		p[2] = filepath.Join(dir, "stderr")
	}
	return p
}

// stdio is what the process package is given.
func (pio *procIO) stdio(terminal bool) stdio.Stdio {
	return stdio.Stdio{Stdin: pio.paths[0], Stdout: pio.paths[1], Stderr: pio.paths[2], Terminal: terminal}
}

// openIO claims the shim's streams called names, makes the fifos at paths
// (under dir) and starts copying between them.
func (s *Service) openIO(ctx context.Context, dir string, paths, names [3]string) (_ *procIO, retErr error) {
	pio := &procIO{dir: dir, paths: paths}
	defer func() {
		if retErr != nil {
			pio.release()
		}
	}()
	var conns [3]net.Conn
	for i, name := range names {
		if name == "" {
			continue
		}
		c, err := s.streams.claim(ctx, name, streamTimeout)
		if err != nil {
			return nil, err
		}
		conns[i] = c
		pio.conns = append(pio.conns, c)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	// With O_NONBLOCK the fifo package opens in the background (the fd
	// itself blocks), waiting for the process package's end; cancel gives
	// up on it if the process is never created.
	octx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	pio.cancel = cancel
	if paths[0] != "" {
		w, err := fifo.OpenFifo(octx, paths[0], syscall.O_WRONLY|syscall.O_CREAT|syscall.O_NONBLOCK, 0o600)
		if err != nil {
			return nil, fmt.Errorf("stdin fifo: %w", err)
		}
		pio.stdinW = w
		go func() {
			if conns[0] != nil {
				io.Copy(w, conns[0])
			}
			w.Close()
			pio.stdinDone()
		}()
	}
	for i := 1; i < 3; i++ {
		if paths[i] == "" {
			continue
		}
		r, err := fifo.OpenFifo(octx, paths[i], syscall.O_RDONLY|syscall.O_CREAT|syscall.O_NONBLOCK, 0o600)
		if err != nil {
			return nil, fmt.Errorf("output fifo: %w", err)
		}
		var dst io.Writer = io.Discard
		if conns[i] != nil {
			dst = conns[i]
		}
		pio.out.Add(1)
		go func(c net.Conn) {
			defer pio.out.Done()
			n, err := io.Copy(dst, r)
			log.G(ctx).WithFields(log.Fields{"fifo": filepath.Base(paths[i]), "bytes": n}).WithError(err).Debug("output copied")
			r.Close()
			if c != nil {
				c.Close() // a yamux stream's Close is a half-close: the shim reads EOF after the data
			}
		}(conns[i])
	}
	return pio, nil
}

// stdinDone is called when the shim's stdin stream ended: the process's
// stdin ends too, as it did when the agent handed runc a pipe.
func (pio *procIO) stdinDone() {
	pio.mu.Lock()
	defer pio.mu.Unlock()
	pio.stdinEOF = true
	if pio.stdinProc != nil {
		pio.stdinProc.Close()
	}
}

// setStdin records the process package's writer of the stdin fifo (the
// process's Stdin), closing it at once if the stream already ended.
func (pio *procIO) setStdin(c io.Closer) {
	if pio == nil || c == nil {
		return
	}
	pio.mu.Lock()
	defer pio.mu.Unlock()
	pio.stdinProc = c
	if pio.stdinEOF {
		c.Close()
	}
}

// closeStdin ends the process's stdin now (CloseIO).
func (pio *procIO) closeStdin() {
	if pio == nil {
		return
	}
	pio.mu.Lock()
	defer pio.mu.Unlock()
	for _, c := range []io.Closer{pio.stdinW, pio.stdinProc} {
		if c != nil {
			c.Close()
		}
	}
}

// wait waits until the process's output is drained.
func (pio *procIO) wait() {
	if pio != nil {
		pio.out.Wait()
	}
}

// close closes the shim's streams and gives up pending fifo opens.
func (pio *procIO) close() {
	if pio == nil {
		return
	}
	pio.mu.Lock()
	defer pio.mu.Unlock()
	if pio.closed {
		return
	}
	pio.closed = true
	if pio.cancel != nil {
		pio.cancel()
	}
	for _, c := range pio.conns {
		c.Close()
	}
	if pio.stdinW != nil {
		pio.stdinW.Close()
	}
}

// release closes everything and removes the fifos.
func (pio *procIO) release() {
	if pio == nil {
		return
	}
	pio.close()
	os.RemoveAll(pio.dir)
}
