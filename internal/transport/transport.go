// Package transport is the wire between the shim (host) and the agent
// (guest): one byte stream (a virtio-serial port, an AF_VSOCK connection or,
// in tests, a unix socket) carrying a handshake and then a yamux session of
// named streams. The "ttrpc" stream carries the agent API; other streams carry
// stdio, rootfs archives and proxied connections.
//
// Both ends share this package so the framing is defined once.
package transport

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
)

// ControlStream is the name of the stream carrying the agent's ttrpc API.
const ControlStream = "ttrpc"

// maxNameLen bounds a stream name.
const maxNameLen = 255

// The handshake: the guest repeats hello until the host, which sends
// nothing before it sees one, answers ack; the guest then sends sync and both
// ends start yamux. Bytes before sync are discarded by the host, so repeated
// hellos and data written before the host connected cannot corrupt the
// session. This copes with a virtio-serial port that drops data written
// while nobody listens on the other side.
var (
	helloMagic = []byte("\x00RAKSH-HELLO-1\n")
	ackMagic   = []byte("\x00RAKSH-ACK-1\n")
	syncMagic  = []byte("\x00RAKSH-SYNC-1\n")
)

// Session is a multiplexed connection between shim and agent.
type Session interface {
	// Open opens a new stream that the peer receives from Accept under name.
	Open(ctx context.Context, name string) (net.Conn, error)
	// Accept waits for a stream opened by the peer and returns it with its name.
	Accept() (string, net.Conn, error)
	// Close tears down the session and every stream in it.
	Close() error
	// Done is closed when the session ends (peer gone, transport closed).
	Done() <-chan struct{}
}

type session struct {
	mux *yamux.Session
}

func yamuxConfig() *yamux.Config {
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = io.Discard
	cfg.EnableKeepAlive = false // a paused or slow (TCG) guest must not be declared dead
	cfg.ConnectionWriteTimeout = 60 * time.Second
	cfg.StreamOpenTimeout = 60 * time.Second
	cfg.MaxStreamWindowSize = 1 << 20
	return cfg
}

// Client runs the host side of the handshake over conn and returns the
// session. The context bounds the handshake only.
func Client(ctx context.Context, conn io.ReadWriteCloser) (Session, error) {
	stop := closeOnDone(ctx, conn)
	err := func() error {
		if err := readUntil(conn, helloMagic); err != nil {
			return fmt.Errorf("waiting for agent hello: %w", err)
		}
		if _, err := conn.Write(ackMagic); err != nil {
			return fmt.Errorf("sending ack: %w", err)
		}
		if err := readUntil(conn, syncMagic); err != nil {
			return fmt.Errorf("waiting for agent sync: %w", err)
		}
		return nil
	}()
	if !stop() {
		return nil, fmt.Errorf("transport handshake: %w", ctx.Err())
	}
	if err != nil {
		return nil, err
	}
	mux, err := yamux.Client(asConn(conn), yamuxConfig())
	if err != nil {
		return nil, err
	}
	return &session{mux: mux}, nil
}

// Server runs the guest side of the handshake over conn, repeating its hello
// every interval until the host answers.
func Server(ctx context.Context, conn io.ReadWriteCloser, interval time.Duration) (Session, error) {
	acked := make(chan error, 1)
	go func() { acked <- readUntil(conn, ackMagic) }()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if _, err := conn.Write(helloMagic); err != nil {
			return nil, fmt.Errorf("sending hello: %w", err)
		}
		select {
		case err := <-acked:
			if err != nil {
				return nil, fmt.Errorf("waiting for host ack: %w", err)
			}
			if _, err := conn.Write(syncMagic); err != nil {
				return nil, fmt.Errorf("sending sync: %w", err)
			}
			mux, err := yamux.Server(asConn(conn), yamuxConfig())
			if err != nil {
				return nil, err
			}
			return &session{mux: mux}, nil
		case <-t.C:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func (s *session) Open(ctx context.Context, name string) (net.Conn, error) {
	if name == "" || len(name) > maxNameLen {
		return nil, fmt.Errorf("invalid stream name length %d", len(name))
	}
	st, err := s.mux.OpenStream()
	if err != nil {
		return nil, fmt.Errorf("open stream %q: %w", name, err)
	}
	hdr := append([]byte{byte(len(name))}, name...)
	if _, err := st.Write(hdr); err != nil {
		st.Close()
		return nil, fmt.Errorf("open stream %q: %w", name, err)
	}
	return st, nil
}

func (s *session) Accept() (string, net.Conn, error) {
	for {
		st, err := s.mux.AcceptStream()
		if err != nil {
			return "", nil, err
		}
		var n [1]byte
		if _, err := io.ReadFull(st, n[:]); err != nil || n[0] == 0 {
			st.Close()
			continue
		}
		name := make([]byte, n[0])
		if _, err := io.ReadFull(st, name); err != nil {
			st.Close()
			continue
		}
		return string(name), st, nil
	}
}

func (s *session) Close() error { return s.mux.Close() }

func (s *session) Done() <-chan struct{} { return s.mux.CloseChan() }

// readUntil reads r until it has seen magic, discarding everything before.
func readUntil(r io.Reader, magic []byte) error {
	var window []byte
	buf := make([]byte, 1)
	for {
		if _, err := io.ReadFull(r, buf); err != nil {
			return err
		}
		window = append(window, buf[0])
		if len(window) > len(magic) {
			window = window[1:]
		}
		if bytes.Equal(window, magic) {
			return nil
		}
	}
}

// closeOnDone closes c if ctx ends before the returned stop is called;
// stop reports whether c is still usable.
func closeOnDone(ctx context.Context, c io.Closer) (stop func() bool) {
	done := make(chan struct{})
	var once sync.Once
	closed := false
	var mu sync.Mutex
	go func() {
		select {
		case <-ctx.Done():
			mu.Lock()
			closed = true
			mu.Unlock()
			c.Close()
		case <-done:
		}
	}()
	return func() bool {
		once.Do(func() { close(done) })
		mu.Lock()
		defer mu.Unlock()
		return !closed
	}
}

// asConn adapts a byte stream to the net.Conn yamux wants; deadlines are not
// supported by a character device and are never asked for by yamux.
func asConn(rwc io.ReadWriteCloser) net.Conn {
	if c, ok := rwc.(net.Conn); ok {
		return c
	}
	return &rwcConn{rwc}
}

type rwcConn struct{ io.ReadWriteCloser }

func (rwcConn) LocalAddr() net.Addr              { return addr{} }
func (rwcConn) RemoteAddr() net.Addr             { return addr{} }
func (rwcConn) SetDeadline(time.Time) error      { return errors.ErrUnsupported }
func (rwcConn) SetReadDeadline(time.Time) error  { return errors.ErrUnsupported }
func (rwcConn) SetWriteDeadline(time.Time) error { return errors.ErrUnsupported }

type addr struct{}

func (addr) Network() string { return "raksh" }
func (addr) String() string  { return "raksh-transport" }
