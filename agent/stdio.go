package agent

import (
	"context"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"github.com/containerd/log"
)

const streamTimeout = 30 * time.Second

type consoleResizer interface {
	Resize(w, h uint16) error
	io.ReadWriteCloser
}

// HandleStream passes a stream opened by the shim to the service.
func (s *Service) HandleStream(ctx context.Context, name string, c net.Conn) {
	if strings.HasPrefix(name, PortForwardPrefix) {
		go s.portForward(ctx, name, c)
		return
	}
	s.streams.add(name, c)
}

// startProcess wires a process's stdio to the shim's streams and runs fn.
func (s *Service) startProcess(ctx context.Context, p *process, stdin, stdout, stderr string,
	fn func(Stdio, string) (int, error)) (int, error) {
	var (
		stdio   Stdio
		child   []*os.File
		cleanup []io.Closer
		ok      bool
	)
	defer func() {
		for _, f := range child {
			f.Close()
		}
		if !ok {
			for _, c := range cleanup {
				c.Close()
			}
		}
	}()
	claim := func(name string) (net.Conn, error) {
		if name == "" {
			return nil, nil
		}
		c, err := s.streams.claim(ctx, name, streamTimeout)
		if err != nil {
			return nil, err
		}
		cleanup = append(cleanup, c)
		return c, nil
	}
	in, err := claim(stdin)
	if err != nil {
		return 0, err
	}
	out, err := claim(stdout)
	if err != nil {
		return 0, err
	}
	errS, err := claim(stderr)
	if err != nil {
		return 0, err
	}

	if p.terminal {
		sock, err := newConsoleSocket(s.consoleSocketPath())
		if err != nil {
			return 0, err
		}
		defer sock.Close()
		pidc := make(chan struct {
			pid int
			err error
		}, 1)
		go func() {
			pid, err := fn(stdio, sock.Path())
			pidc <- struct {
				pid int
				err error
			}{pid, err}
		}()
		con, err := sock.receive(ctx, pidc)
		if err != nil {
			return 0, err
		}
		r := <-pidc
		if r.err != nil {
			con.Close()
			return 0, r.err
		}
		cleanup = append(cleanup, con)
		p.mu.Lock()
		p.console = con
		if in != nil {
			p.stdin = nopCloseWriter{con}
		}
		p.mu.Unlock()
		if in != nil {
			go func() { io.Copy(con, in) }()
		}
		if out != nil {
			p.ioDone.Add(1)
			go func() {
				defer p.ioDone.Done()
				io.Copy(out, con) // ends with EIO when the last holder of the pty exits
				closeWrite(out)
			}()
		}
		p.mu.Lock()
		p.closers = cleanup
		p.mu.Unlock()
		ok = true
		return r.pid, nil
	}

	pipe := func(c net.Conn, toChild bool) (*os.File, error) {
		if c == nil {
			return nil, nil
		}
		r, w, err := os.Pipe()
		if err != nil {
			return nil, err
		}
		if toChild {
			child = append(child, r)
			p.mu.Lock()
			p.stdin = w
			p.mu.Unlock()
			go func() {
				io.Copy(w, c)
				p.mu.Lock()
				if p.stdin == w {
					p.stdin = nil
				}
				p.mu.Unlock()
				w.Close()
			}()
			return r, nil
		}
		child = append(child, w)
		p.ioDone.Add(1)
		go func() {
			defer p.ioDone.Done()
			n, err := io.Copy(c, r)
			log.G(ctx).WithFields(log.Fields{"id": p.id, "exec": p.execID, "bytes": n}).WithError(err).Debug("output copied")
			r.Close()
			closeWrite(c)
		}()
		return w, nil
	}
	if stdio.Stdin, err = pipe(in, true); err != nil {
		return 0, err
	}
	if stdio.Stdout, err = pipe(out, false); err != nil {
		return 0, err
	}
	if stdio.Stderr, err = pipe(errS, false); err != nil {
		return 0, err
	}
	pid, err := fn(stdio, "")
	if err != nil {
		return 0, err
	}
	p.mu.Lock()
	p.closers = cleanup
	p.mu.Unlock()
	ok = true
	return pid, nil
}

type nopCloseWriter struct{ io.Writer }

func (nopCloseWriter) Close() error { return nil }

// closeWrite half-closes a stream so the shim reads EOF after the data.
func closeWrite(c net.Conn) {
	c.Close() // a yamux stream's Close is a half-close: reads stay possible
}
