package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"

	"github.com/containerd/console"
	runc "github.com/containerd/go-runc"
)

type consoleSocket struct{ *runc.Socket }

func newConsoleSocket(path string) (*consoleSocket, error) {
	os.Remove(path)
	s, err := runc.NewConsoleSocket(path)
	if err != nil {
		return nil, fmt.Errorf("console socket: %w", err)
	}
	return &consoleSocket{s}, nil
}

// receive waits for the pty master, giving up if the runtime call behind
// pidc fails first (it then never sends one).
func (s *consoleSocket) receive(ctx context.Context, pidc chan struct {
	pid int
	err error
}) (consoleResizer, error) {
	type res struct {
		c   console.Console
		err error
	}
	rc := make(chan res, 1)
	go func() {
		c, err := s.ReceiveMaster()
		rc <- res{c, err}
	}()
	select {
	case r := <-rc:
		if r.err != nil {
			return nil, fmt.Errorf("receive pty master: %w", r.err)
		}
		return ptyConsole{r.c}, nil
	case r := <-pidc:
		s.Close() // unblocks ReceiveMaster
		if r.err == nil {
			r.err = fmt.Errorf("runtime sent no pty master")
		}
		return nil, r.err
	case <-ctx.Done():
		s.Close()
		return nil, ctx.Err()
	}
}

type ptyConsole struct{ console.Console }

func (c ptyConsole) Resize(w, h uint16) error {
	return c.Console.Resize(console.WinSize{Width: w, Height: h})
}

// consoleSeq numbers console sockets: their path must be unique and short.
var consoleSeq atomic.Uint64

// maxSocketPath is the longest path a unix socket address holds (sun_path
// is 108 bytes with its terminating NUL).
const maxSocketPath = 107

// consoleSocketPath returns a fresh path for a console socket. It is not
// built from container or exec ids: with CRI's 64-character ids that would
// exceed what a unix socket address holds ("bind: invalid argument").
func (s *Service) consoleSocketPath() string {
	name := fmt.Sprintf(".con%d", consoleSeq.Add(1))
	if p := filepath.Join(s.root, name); len(p) <= maxSocketPath {
		return p
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("raksh-%d%s", os.Getpid(), name))
}
