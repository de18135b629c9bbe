// Package agent is the in-guest half of Raksh: the task service the shim
// drives over ttrpc, backed by runc inside the VM.
package agent

import (
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types"
	shimrunc "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2/runc"
	"github.com/containerd/containerd/v2/pkg/oom"
	"github.com/containerd/containerd/v2/pkg/stdio"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/raksh-project/raksh/agent/image"
	"github.com/raksh-project/raksh/agent/volumes"
	"github.com/raksh-project/raksh/envelope"
	"github.com/raksh-project/raksh/tee/initdata"
)

// Service is the agent's task service.
type Service struct {
	root    string
	rt      *Runtime
	streams *streams
	// ioSeq numbers the processes' fifo directories (stdio.go).
	ioSeq atomic.Uint64
	// platform copies consoles (containerd's runc-shim platform);
	// made at the first Create.
	platformMu sync.Mutex
	platform   stdio.Platform
	// volumes holds the volumes the shim delivered (guestmounts.go).
	volumes *volumes.Store

	mu         sync.Mutex
	containers map[string]*container
	byPid      map[int]*process
	early      map[int]int // exits reaped before their pid was known

	events chan *types.Envelope
	// version is the agent version Info reports.
	version string
	// teeType returns the TEE type Info reports; nil reports "none".
	teeType func(ctx context.Context) string
	// Stats returns cgroup metrics of a container; nil disables Stats.
	stats func(id string) (any, error)
	// shutdown is called once the shim, having had the answer to Shutdown,
	// closed the session (see Serve).
	shutdown func()
	// shutdownReq is closed by Shutdown.
	shutdownReq  chan struct{}
	shutdownOnce sync.Once
	// dialProxy reaches an allow-listed host-side service; nil if none.
	dialProxy func(ctx context.Context, target string) (net.Conn, error)
	// created is called after a container was created.
	created func(ctx context.Context, id string)
	// keys returns the key source of sealed containers (seal.go).
	keys KeySourceFunc
	// imageKeys decrypts encrypted image layers (rootfs.go).
	imageKeys image.KeyProvider
	// pullOpts are extra options of guest pulls (rootfs.go).
	pullOpts []image.PullOpt
	// initData is the pod's init data (initdata.go); nil if none.
	initData InitData
	// net is the pod network of the guest (podnet.go).
	net podNet
	// oom watches containers' cgroups for OOM kills (init_linux.go).
	oom     oom.Watcher
	oomOnce sync.Once
}

// WithProxyDialer sets how the agent reaches host-side services (key broker,
// registry) through the shim: dial opens a stream to the named target.
func WithProxyDialer(dial func(ctx context.Context, target string) (net.Conn, error)) Opt {
	return func(s *Service) { s.dialProxy = dial }
}

// WithCreated sets a function called after each container is created (the
// agent watches its cgroup for OOM kills).
func WithCreated(f func(ctx context.Context, id string)) Opt {
	return func(s *Service) { s.created = f }
}

// Opt configures a Service.
type Opt func(*Service)

// WithStats sets the function returning a container's metrics.
func WithStats(f func(id string) (any, error)) Opt { return func(s *Service) { s.stats = f } }

// WithShutdown sets what runs once the shim asked the agent to shut down.
func WithShutdown(f func()) Opt { return func(s *Service) { s.shutdown = f } }

// NewService returns a task service keeping bundles under root.
func NewService(root string, rt *Runtime, opts ...Opt) *Service {
	s := &Service{
		root:        root,
		rt:          rt,
		streams:     newStreams(),
		containers:  map[string]*container{},
		byPid:       map[int]*process{},
		early:       map[int]int{},
		events:      make(chan *types.Envelope, 64),
		shutdownReq: make(chan struct{}),
		volumes:     volumes.NewStore(root+"-volumes", volumes.DefaultLimits),
	}
	for _, o := range opts {
		o(s)
	}
	go s.reap()
	return s
}

var _ taskAPI.TTRPCTaskService = (*Service)(nil)

type container struct {
	id     string
	bundle string
	spec   *specs.Spec
	init   *process
	execs  map[string]*process
	// noExec refuses exec: the container is sealed and its envelope does
	// not allow exec (seal.go).
	noExec bool
	// noLogs discards the container's output: its envelope's policy does
	// not allow logs (seal.go).
	noLogs bool
	// sealedMounts bind the sealed files the agent wrote in the guest
	// (seal.go). They are added after the node's mounts are rewritten:
	// their sources are guest paths, never node ones.
	sealedMounts []specs.Mount
	// mountPolicy, from the envelope, restricts the node's volume mounts.
	mountPolicy *envelope.MountPolicy
	// pod is the policy of the pod's init data (initdata.go).
	pod initdata.Policy
	// sealed is set once the container's envelope was opened: runtime
	// errors about it are withheld (runtimeErr).
	sealed bool
}

// runtimeErr reports a runtime (runc) failure for container c. For a sealed
// container runc's own words are withheld: they quote the process (its
// args, cwd, paths) and the error travels to the node.
func runtimeErr(c *container, op string, err error) error {
	if c.sealed {
		return fmt.Errorf("%s sealed container %q failed; runtime details are withheld as they may quote sealed values: %w", op, c.id, errdefs.ErrUnknown)
	}
	return fmt.Errorf("%s container %q: %w", op, c.id, err)
}

// consolePlatform returns the platform copying processes' consoles.
func (s *Service) consolePlatform() (stdio.Platform, error) {
	s.platformMu.Lock()
	defer s.platformMu.Unlock()
	if s.platform == nil {
		p, err := shimrunc.NewPlatform()
		if err != nil {
			return nil, err
		}
		s.platform = p
	}
	return s.platform, nil
}

func (s *Service) get(id string) (*container, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.containers[id]
	if !ok {
		return nil, fmt.Errorf("container %q: %w", id, errdefs.ErrNotFound)
	}
	return c, nil
}

func (s *Service) getProcess(id, execID string) (*container, *process, error) {
	c, err := s.get(id)
	if err != nil {
		return nil, nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if execID == "" {
		if c.init == nil {
			return nil, nil, fmt.Errorf("container %q is being created: %w", id, errdefs.ErrNotFound)
		}
		return c, c.init, nil
	}
	p, ok := c.execs[execID]
	if !ok {
		return nil, nil, fmt.Errorf("exec %q in container %q: %w", execID, id, errdefs.ErrNotFound)
	}
	return c, p, nil
}
