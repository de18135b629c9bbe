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

	"github.com/containerd/containerd/v2/pkg/sys/reaper"
	"github.com/containerd/log"
	"github.com/mdlayher/vsock"
	"golang.org/x/sys/unix"

	"github.com/raksh-project/raksh/agent"
	"github.com/raksh-project/raksh/agent/kbssession"
	"github.com/raksh-project/raksh/agent/scratch"
	"github.com/raksh-project/raksh/internal/transport"
	"github.com/raksh-project/raksh/internal/version"
	"github.com/raksh-project/raksh/internal/wire"
)

const (
	defaultPort  = "raksh.agent"
	vsockPort    = 1024
	runcBinary   = "/bin/runc"
	stateRoot    = "/run/raksh"
	runcStateDir = "/run/runc"
)

func main() {
	if version.Requested(os.Args[1:]) {
		fmt.Println(version.String("raksh-agent"))
		return
	}
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
		// The encrypted scratch filesystem and swap, before the bundle
		// store that lives on it (a failure shows on the console).
		if err := scratch.Setup(ctx); err != nil {
			return fmt.Errorf("scratch disk: %w", err)
		}
	}
	args := cmdline()
	if _, ok := args["debug"]; ok {
		log.L.Logger.SetLevel(log.DebugLevel)
	}
	// Exec'd processes start in a container's pid namespace; without this
	// flag their exits would go to the container's init instead of us.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("set child subreaper: %w", err)
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
	if os.Getpid() == 1 {
		if err := agent.MountStateRoot(stateRoot); err != nil {
			return err
		}
	}
	rt := agent.NewRunc(runcBinary, runcStateDir)
	kbs := kbssession.New(func(ctx context.Context, target string) (net.Conn, error) {
		return sess.Open(ctx, wire.ProxyPrefix+target)
	})
	var paths []string
	if v, ok := args[kbssession.ImageKeysArg]; ok {
		// Image keys from the key broker (so do the pod's init data's);
		// with neither the agent keeps using the key files baked into the
		// initrd.
		if paths, err = kbssession.ParseImageKeys(v); err != nil {
			return err
		}
		log.G(ctx).WithField("resources", paths).Info("image decryption keys come from the key broker")
	}
	imageKeys := []agent.Opt{agent.WithImageKeys(kbssession.NewPodImageKeys(kbs, paths, agent.KeyDir(agent.DefaultImageKeyDir)))}
	var svc *agent.Service
	svc = agent.NewService(stateRoot, rt, append(imageKeys,
		agent.WithStats(agent.CgroupStats),
		agent.WithVersion(agentVersion()),
		agent.WithTEEType(teeType),
		agent.WithProxyDialer(func(ctx context.Context, target string) (net.Conn, error) {
			return sess.Open(ctx, wire.ProxyPrefix+target)
		}),
		agent.WithKeySource(keySource(kbs)),
		agent.WithInitData(kbs),
		agent.WithCreated(func(ctx context.Context, id string) { svc.WatchOOM(ctx, id) }),
		agent.WithShutdown(func() {
			log.G(ctx).Info("shutdown requested")
			sess.Close()
			if os.Getpid() == 1 {
				agent.PowerOff()
			}
			os.Exit(0)
		}))...)

	err = agent.Serve(ctx, sess, svc)
	return fmt.Errorf("shim connection ended: %v", err)
}
