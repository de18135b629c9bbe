package transport

import (
	"context"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"
)

// pair returns a connected host and guest session over a real unix socket.
func pair(t *testing.T, noise []byte) (Session, Session) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "t.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	guestc := make(chan Session, 1)
	errc := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			errc <- err
			return
		}
		c.Write(noise) // garbage before the handshake must be ignored
		s, err := Server(ctx, c, 5*time.Millisecond)
		if err != nil {
			errc <- err
			return
		}
		guestc <- s
	}()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond) // let several hellos pile up
	host, err := Client(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case g := <-guestc:
		t.Cleanup(func() { host.Close(); g.Close() })
		return host, g
	case err := <-errc:
		t.Fatal(err)
	}
	return nil, nil
}

func TestNamedStreams(t *testing.T) {
	host, guest := pair(t, []byte("boot noise\x00RAKSH-"))
	names := []string{ControlStream, "io/c1/e1/stdout", "rootfs/c1"}
	for _, name := range names {
		hc, err := host.Open(context.Background(), name)
		if err != nil {
			t.Fatal(err)
		}
		got, gc, err := guest.Accept()
		if err != nil {
			t.Fatal(err)
		}
		if got != name {
			t.Fatalf("accepted %q, want %q", got, name)
		}
		if _, err := hc.Write([]byte("payload " + name)); err != nil {
			t.Fatal(err)
		}
		hc.Close() // half-close: the guest reads EOF after the data
		b, err := io.ReadAll(gc)
		if err != nil {
			t.Fatal(err)
		}
		if string(b) != "payload "+name {
			t.Fatalf("read %q", b)
		}
		// The guest can still answer on its half.
		if _, err := gc.Write([]byte("ok")); err != nil {
			t.Fatal(err)
		}
		gc.Close()
		b, err = io.ReadAll(hc)
		if err != nil || string(b) != "ok" {
			t.Fatalf("host read %q, %v", b, err)
		}
	}
}

func TestOpenRejectsBadName(t *testing.T) {
	host, _ := pair(t, nil)
	if _, err := host.Open(context.Background(), ""); err == nil {
		t.Fatal("empty name accepted")
	}
	long := make([]byte, 300)
	if _, err := host.Open(context.Background(), string(long)); err == nil {
		t.Fatal("300-byte name accepted")
	}
}

func TestClientHandshakeTimeout(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	// The peer never says hello: the client must give up when ctx ends.
	if _, err := Client(ctx, a); err == nil {
		t.Fatal("handshake with a silent peer succeeded")
	}
}

func TestSessionDoneWhenPeerCloses(t *testing.T) {
	host, guest := pair(t, nil)
	guest.Close()
	select {
	case <-host.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("host session did not notice the guest went away")
	}
}
