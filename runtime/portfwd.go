package runtime

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/containerd/log"

	agentapi "github.com/raksh-project/raksh/api/agent/v1"
	"github.com/raksh-project/raksh/internal/transport"
	"github.com/raksh-project/raksh/runtime/network"
	"github.com/raksh-project/raksh/runtime/vm"
)

// portForwardPoll is how often the shim asks the agent for its listeners.
const portForwardPoll = time.Second

// portForwardPrefix names the stream of one forwarded connection
// ("portfwd/8080"); the agent connects it to that port on its loopback.
const portForwardPrefix = "portfwd/"

// portForwarder makes CRI port-forward reach the guest. containerd's
// PortForward dials localhost:<port> inside the pod's netns, whose
// loopback the tc redirect does not carry to the VM; so the shim mirrors
// every TCP port the guest listens on (Network.ListListeners, polled) with a
// listener on 127.0.0.1:<port> in the pod netns, and carries each accepted
// connection to the guest on its own transport stream.
type portForwarder struct {
	nsPath string
	v      vm.Instance
	list   func(ctx context.Context) ([]uint32, error)

	mu sync.Mutex
	ls map[uint32]net.Listener
	// failed remembers ports that could not be mirrored (in use in the
	// pod netns), so the failure is logged once.
	failed map[uint32]bool
}

func newPortForwarder(nsPath string, v vm.Instance) *portForwarder {
	c := agentapi.NewNetworkClient(v.Client())
	return &portForwarder{
		nsPath: nsPath, v: v,
		list: func(ctx context.Context) ([]uint32, error) {
			r, err := c.ListListeners(ctx, &agentapi.ListListenersRequest{})
			return r.GetPorts(), err
		},
		ls: map[uint32]net.Listener{}, failed: map[uint32]bool{},
	}
}

// run mirrors the guest's listeners until the VM stops.
func (f *portForwarder) run(ctx context.Context) {
	t := time.NewTicker(portForwardPoll)
	defer t.Stop()
	defer f.closeAll()
	for {
		f.sync(ctx)
		select {
		case <-f.v.Done():
			return
		case <-t.C:
		}
	}
}

func (f *portForwarder) sync(ctx context.Context) {
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	ports, err := f.list(lctx)
	cancel()
	if err != nil {
		log.G(ctx).WithError(err).Debug("port-forward: list guest listeners")
		return
	}
	want := map[uint32]bool{}
	for _, p := range ports {
		if p == 0 || p > 65535 {
			continue
		}
		want[p] = true
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for p, l := range f.ls {
		if !want[p] {
			l.Close()
			delete(f.ls, p)
		}
	}
	for p := range f.failed {
		if !want[p] {
			delete(f.failed, p)
		}
	}
	for p := range want {
		if _, ok := f.ls[p]; ok || f.failed[p] {
			continue
		}
		l, err := network.Listen(f.nsPath, "tcp4", net.JoinHostPort("127.0.0.1", strconv.Itoa(int(p))))
		if err != nil {
			f.failed[p] = true
			log.G(ctx).WithError(err).WithField("port", p).Warn("port-forward: cannot mirror the guest's port in the pod netns")
			continue
		}
		f.ls[p] = l
		go f.accept(ctx, l, p)
	}
}

func (f *portForwarder) accept(ctx context.Context, l net.Listener, port uint32) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			s, err := f.v.StartStream(ctx, fmt.Sprintf("%s%d", portForwardPrefix, port))
			if err != nil {
				log.G(ctx).WithError(err).WithField("port", port).Warn("port-forward: open stream to the guest")
				return
			}
			defer s.Close()
			transport.Splice(c, s)
		}()
	}
}

func (f *portForwarder) closeAll() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for p, l := range f.ls {
		l.Close()
		delete(f.ls, p)
	}
}
