// Command raksh-agent is PID 1 of the Raksh guest: it sets the VM up,
// connects to the shim over virtio-serial (or vsock) and serves the task API.
package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/v2/pkg/sys/reaper"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	"github.com/mdlayher/vsock"
	"golang.org/x/sys/unix"

	"github.com/raksh-project/raksh/agent"
	"github.com/raksh-project/raksh/internal/transport"
)

const (
	defaultPort  = "raksh.agent"
	vsockPort    = 1024
	runcBinary   = "/bin/runc"
	stateRoot    = "/run/raksh"
	runcStateDir = "/run/runc"
)

func main() {
	ctx := context.Background()
	log.L.Logger.SetOutput(os.Stderr)
	if err := run(ctx); err != nil {
		log.G(ctx).WithError(err).Error("raksh-agent failed")
		if os.Getpid() == 1 {
			agent.PowerOff()
		}
		os.Exit(1)
	}
}

func cmdline() map[string]string {
	b, _ := os.ReadFile("/proc/cmdline")
	out := map[string]string{}
	for _, f := range strings.Fields(string(b)) {
		k, v, _ := strings.Cut(f, "=")
		if strings.HasPrefix(k, "raksh.") {
			out[strings.TrimPrefix(k, "raksh.")] = v
		}
	}
	return out
}

func run(ctx context.Context) error {
	start := time.Now()
	if os.Getpid() == 1 {
		if err := agent.SetupSystem(ctx); err != nil {
			return err
		}
	}
	args := cmdline()
	if _, ok := args["debug"]; ok {
		log.L.Logger.SetLevel(log.DebugLevel)
	}
	sigc := make(chan os.Signal, 32)
	signal.Notify(sigc, unix.SIGCHLD)
	go func() {
		for range sigc {
			reaper.Reap()
		}
	}()

	var conn interface {
		Read([]byte) (int, error)
		Write([]byte) (int, error)
		Close() error
	}
	if args["transport"] == "vsock" {
		l, err := vsock.Listen(vsockPort, nil)
		if err != nil {
			return fmt.Errorf("listen on vsock: %w", err)
		}
		c, err := l.Accept()
		l.Close()
		if err != nil {
			return err
		}
		conn = c
	} else {
		name := args["port"]
		if name == "" {
			name = defaultPort
		}
		dev, err := agent.FindPort(ctx, name, 30*time.Second)
		if err != nil {
			return err
		}
		p, err := agent.OpenSerialPort(dev)
		if err != nil {
			return err
		}
		conn = p
	}
	sess, err := transport.Server(ctx, conn, 100*time.Millisecond)
	if err != nil {
		return fmt.Errorf("transport: %w", err)
	}
	log.G(ctx).WithField("since_init", time.Since(start)).Info("raksh-agent connected to the shim")

	if err := os.MkdirAll(stateRoot, 0o700); err != nil {
		return err
	}
	rt := agent.NewRunc(runcBinary, runcStateDir)
	var svc *agent.Service
	svc = agent.NewService(stateRoot, rt,
		agent.WithStats(agent.CgroupStats),
		agent.WithCreated(func(ctx context.Context, id string) { svc.WatchOOM(ctx, id) }),
		agent.WithShutdown(func() {
			log.G(ctx).Info("shutdown requested")
			sess.Close()
			if os.Getpid() == 1 {
				agent.PowerOff()
			}
			os.Exit(0)
		}))

	server, err := ttrpc.NewServer()
	if err != nil {
		return err
	}
	taskAPI.RegisterTTRPCTaskService(server, svc)
	l := newChanListener()
	go func() {
		for {
			name, c, err := sess.Accept()
			if err != nil {
				l.Close()
				return
			}
			if name == transport.ControlStream {
				l.conns <- c
				continue
			}
			svc.HandleStream(ctx, name, c)
		}
	}()
	err = server.Serve(ctx, l)
	<-sess.Done()
	return fmt.Errorf("shim connection ended: %v", err)
}

// chanListener is a net.Listener fed with control streams.
type chanListener struct {
	conns  chan net.Conn
	closed chan struct{}
}

func newChanListener() *chanListener {
	return &chanListener{conns: make(chan net.Conn), closed: make(chan struct{})}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	select {
	case <-l.closed:
	default:
		close(l.closed)
	}
	return nil
}

func (l *chanListener) Addr() net.Addr { return &net.UnixAddr{Name: "raksh", Net: "raksh"} }
