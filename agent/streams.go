package agent

import (
	"context"
	"fmt"
	"net"
	"sync"
	"time"
)

// streams holds the streams the shim opened, until a task claims them by
// name. The shim opens a process's streams before it asks to create it.
type streams struct {
	mu      sync.Mutex
	ready   map[string]net.Conn
	waiters map[string]chan net.Conn
}

func newStreams() *streams {
	return &streams{ready: map[string]net.Conn{}, waiters: map[string]chan net.Conn{}}
}

// add hands a newly accepted stream to its waiter, or keeps it.
func (s *streams) add(name string, c net.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if w, ok := s.waiters[name]; ok {
		delete(s.waiters, name)
		w <- c
		return
	}
	if old, ok := s.ready[name]; ok {
		old.Close()
	}
	s.ready[name] = c
}

// claim returns the stream called name, waiting up to timeout for it.
func (s *streams) claim(ctx context.Context, name string, timeout time.Duration) (net.Conn, error) {
	s.mu.Lock()
	if c, ok := s.ready[name]; ok {
		delete(s.ready, name)
		s.mu.Unlock()
		return c, nil
	}
	w := make(chan net.Conn, 1)
	s.waiters[name] = w
	s.mu.Unlock()

	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case c := <-w:
		return c, nil
	case <-t.C:
	case <-ctx.Done():
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.waiters[name] == w {
		delete(s.waiters, name)
	}
	select {
	case c := <-w:
		return c, nil
	default:
	}
	return nil, fmt.Errorf("stream %q was not opened by the shim", name)
}
