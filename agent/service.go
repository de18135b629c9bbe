// Package agent is the in-guest half of Raksh: the task service the shim
// drives over ttrpc, backed by runc inside the VM.
package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/v2/pkg/protobuf"
	ptypes "github.com/containerd/containerd/v2/pkg/protobuf/types"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/raksh-project/raksh/agent/image"
	"github.com/raksh-project/raksh/agent/mounts"
	"github.com/raksh-project/raksh/agent/volumes"
	agentapi "github.com/raksh-project/raksh/api/agent/v1"
	"github.com/raksh-project/raksh/internal/wire"
	"github.com/raksh-project/raksh/tee/initdata"
)

const streamTimeout = 30 * time.Second

// Service is the agent's task service.
type Service struct {
	root    string
	rt      Runtime
	streams *streams
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
	// shutdown is called after Shutdown has answered.
	shutdown func()
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
func NewService(root string, rt Runtime, opts ...Opt) *Service {
	s := &Service{
		root:       root,
		rt:         rt,
		streams:    newStreams(),
		containers: map[string]*container{},
		byPid:      map[int]*process{},
		early:      map[int]int{},
		events:     make(chan *types.Envelope, 64),
		volumes:    volumes.NewStore(root+"-volumes", volumes.DefaultLimits),
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

func (s *Service) reap() {
	for e := range s.rt.Exits() {
		s.mu.Lock()
		p, ok := s.byPid[e.Pid]
		if ok {
			delete(s.byPid, e.Pid)
		} else {
			if len(s.early) > 1024 {
				clear(s.early)
			}
			s.early[e.Pid] = e.Status
		}
		s.mu.Unlock()
		if ok {
			log.G(context.Background()).WithFields(log.Fields{"id": p.id, "exec": p.execID, "pid": e.Pid, "status": e.Status}).Debug("process exited")
			p.setExited(e.Status)
		}
	}
}

// track registers pid for process p, delivering an exit that was reaped
// before the pid was known.
func (s *Service) track(p *process, pid int) {
	s.mu.Lock()
	p.setPid(pid)
	status, exited := s.early[pid]
	if exited {
		delete(s.early, pid)
	} else {
		s.byPid[pid] = p
	}
	s.mu.Unlock()
	if exited {
		p.setExited(status)
	}
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

// Create creates a container from the spec carried in the request's
// options (agentapi.CreateContainerOptions) and the rootfs archive streamed
// by the shim, or the image the options' rootfs descriptor names.
func (s *Service) Create(ctx context.Context, r *taskAPI.CreateTaskRequest) (_ *taskAPI.CreateTaskResponse, retErr error) {
	if err := wire.ValidID(r.ID); err != nil {
		return nil, errgrpc.ToGRPC(fmt.Errorf("%w: %w", err, errdefs.ErrInvalidArgument))
	}
	spec, desc, err := decodeCreateOptions(r.Options)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	s.mu.Lock()
	if _, ok := s.containers[r.ID]; ok {
		s.mu.Unlock()
		return nil, errgrpc.ToGRPCf(errdefs.ErrAlreadyExists, "container %q", r.ID)
	}
	c := &container{id: r.ID, bundle: filepath.Join(s.root, r.ID), spec: spec, execs: map[string]*process{}}
	s.containers[r.ID] = c
	s.mu.Unlock()
	defer func() {
		if retErr != nil {
			s.mu.Lock()
			delete(s.containers, r.ID)
			s.mu.Unlock()
			os.RemoveAll(c.bundle)
		}
	}()

	pod, err := s.podPolicy(ctx, c)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	rootfs := filepath.Join(c.bundle, "rootfs")
	if err := makeRootDir(c.bundle, rootfs); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	if err := s.prepareRootfs(ctx, r.ID, r.Rootfs, desc, rootfs); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	if err := s.unseal(ctx, c, rootfs); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	applyPodPolicy(c, pod)
	logHostHooks(ctx, r.ID, c.spec)
	if err := s.adaptSpec(c, rootfs); err != nil {
		return nil, errgrpc.ToGRPC(fmt.Errorf("container %q: %w", r.ID, err))
	}
	if err := s.shareVMNetwork(ctx, c.spec); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	b, err := json.Marshal(c.spec)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	if err := os.WriteFile(filepath.Join(c.bundle, "config.json"), b, 0o600); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}

	p := newProcess(r.ID, "", r.Terminal)
	stdout, stderr, err := s.outputStreams(ctx, c, r.Terminal, r.Stdout, r.Stderr)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	pid, err := s.startProcess(ctx, p, r.Stdin, stdout, stderr, func(stdio Stdio, console string) (int, error) {
		return s.rt.Create(ctx, r.ID, c.bundle, stdio, console)
	})
	if err != nil {
		return nil, errgrpc.ToGRPC(runtimeErr(c, "create", err))
	}
	s.mu.Lock()
	c.init = p
	s.mu.Unlock()
	s.track(p, pid)
	log.G(ctx).WithFields(log.Fields{"id": r.ID, "pid": pid}).Info("container created")
	if s.created != nil {
		s.created(context.WithoutCancel(ctx), r.ID)
	}
	return &taskAPI.CreateTaskResponse{Pid: uint32(pid)}, nil
}

// adaptSpec turns the host's spec into one that runs in the guest: the
// rootfs is the unpacked copy, mounts are what guestMounts makes of them
// (node paths never resolve in the guest), namespaces of a pod's
// containers point at its sandbox's in the guest.
func (s *Service) adaptSpec(c *container, rootfs string) error {
	spec := c.spec
	spec.Root = &specs.Root{Path: rootfs, Readonly: spec.Root != nil && spec.Root.Readonly}
	if n := mounts.HookCount(spec.Hooks); n > 0 {
		// Hooks are node programs (nerdctl's network hook, ...): they do
		// not exist in the guest. Documented in docs/volumes.md.
		log.G(context.TODO()).WithField("id", c.id).WithField("hooks", n).Warn("OCI hooks are not run in the guest: dropped")
	}
	spec.Hooks = nil
	if err := mounts.CheckDevices(spec.Linux); err != nil {
		return err
	}
	if spec.Process != nil {
		spec.Process.ApparmorProfile = ""
		spec.Process.SelinuxLabel = ""
	}
	mounts, err := s.guestMounts(c)
	if err != nil {
		return err
	}
	spec.Mounts = mounts
	if spec.Linux == nil {
		return nil
	}
	spec.Linux.CgroupsPath = "/raksh/" + c.id
	spec.Linux.MountLabel = ""
	sandboxPid := s.sandboxPid(spec)
	// Host namespaces of a pod are the VM's; a hostname needs a UTS
	// namespace of its own (or the pod sandbox's).
	if spec.Hostname != "" && !hasNamespace(spec, specs.UTSNamespace) {
		ns := specs.LinuxNamespace{Type: specs.UTSNamespace}
		if sandboxPid > 0 {
			ns.Path = "/proc/placeholder" // rewritten below
		}
		spec.Linux.Namespaces = append(spec.Linux.Namespaces, ns)
	}
	for i, ns := range spec.Linux.Namespaces {
		if ns.Path == "" {
			continue
		}
		spec.Linux.Namespaces[i].Path = ""
		if sandboxPid > 0 {
			if name, ok := nsFile[ns.Type]; ok {
				spec.Linux.Namespaces[i].Path = fmt.Sprintf("/proc/%d/ns/%s", sandboxPid, name)
			}
		}
	}
	return nil
}

func hasNamespace(spec *specs.Spec, t specs.LinuxNamespaceType) bool {
	for _, ns := range spec.Linux.Namespaces {
		if ns.Type == t {
			return true
		}
	}
	return false
}

var nsFile = map[specs.LinuxNamespaceType]string{
	specs.NetworkNamespace: "net",
	specs.IPCNamespace:     "ipc",
	specs.UTSNamespace:     "uts",
	specs.PIDNamespace:     "pid",
}

// sandboxPid returns the guest pid of the CRI sandbox container of spec.
func (s *Service) sandboxPid(spec *specs.Spec) int {
	sb := spec.Annotations["io.kubernetes.cri.sandbox-id"]
	if sb == "" || spec.Annotations["io.kubernetes.cri.container-type"] == "sandbox" {
		return 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, ok := s.containers[sb]; ok && c.init != nil && !c.init.hasExited() {
		return c.init.getPid()
	}
	return 0
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

// Start starts a created container or exec.
func (s *Service) Start(ctx context.Context, r *taskAPI.StartRequest) (*taskAPI.StartResponse, error) {
	c, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	// beginStart lets one Start through; a second one is refused.
	if err := p.beginStart(); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	if r.ExecID != "" {
		var proc specs.Process
		if err := json.Unmarshal(p.pendingSpec(), &proc); err != nil {
			p.endStart(false)
			return nil, errgrpc.ToGRPC(fmt.Errorf("decode the process of exec %q: %w: %w", r.ExecID, err, errdefs.ErrInvalidArgument))
		}
		pid, err := s.startProcess(ctx, p, p.stdio[0], p.stdio[1], p.stdio[2], func(stdio Stdio, console string) (int, error) {
			return s.rt.Exec(ctx, c.id, r.ExecID, &proc, stdio, console)
		})
		if err != nil {
			p.endStart(false)
			return nil, errgrpc.ToGRPC(fmt.Errorf("exec %q in %q: %w", r.ExecID, c.id, err))
		}
		s.track(p, pid)
		p.endStart(true)
		log.G(ctx).WithFields(log.Fields{"id": c.id, "exec": r.ExecID, "pid": pid}).Debug("exec started")
		return &taskAPI.StartResponse{Pid: uint32(pid)}, nil
	}
	if err := s.rt.Start(ctx, r.ID); err != nil {
		p.endStart(false)
		return nil, errgrpc.ToGRPC(runtimeErr(c, "start", err))
	}
	p.endStart(true)
	return &taskAPI.StartResponse{Pid: uint32(p.getPid())}, nil
}

// Exec registers an additional process; Start runs it.
func (s *Service) Exec(ctx context.Context, r *taskAPI.ExecProcessRequest) (*ptypes.Empty, error) {
	if err := wire.ValidID(r.ExecID); err != nil {
		return nil, errgrpc.ToGRPC(fmt.Errorf("%w: %w", err, errdefs.ErrInvalidArgument))
	}
	c, err := s.get(r.ID)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	proc, err := decodeExecOptions(r.Spec)
	if err != nil {
		return nil, errgrpc.ToGRPC(fmt.Errorf("exec %q: %w", r.ExecID, err))
	}
	if err := checkExec(c); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := c.execs[r.ExecID]; ok {
		return nil, errgrpc.ToGRPCf(errdefs.ErrAlreadyExists, "exec %q", r.ExecID)
	}
	p := newProcess(r.ID, r.ExecID, r.Terminal)
	p.spec = proc
	p.stdio = [3]string{r.Stdin, r.Stdout, r.Stderr}
	c.execs[r.ExecID] = p
	return &ptypes.Empty{}, nil
}

// Wait waits for a process to exit and its output to be drained.
func (s *Service) Wait(ctx context.Context, r *taskAPI.WaitRequest) (*taskAPI.WaitResponse, error) {
	_, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	select {
	case <-p.exited:
	case <-ctx.Done():
		return nil, errgrpc.ToGRPC(ctx.Err())
	}
	log.G(ctx).WithFields(log.Fields{"id": r.ID, "exec": r.ExecID}).Debug("wait: exited, draining output")
	p.ioDone.Wait()
	p.closeIO()
	st := p.snapshot()
	return &taskAPI.WaitResponse{ExitStatus: uint32(st.status), ExitedAt: protobuf.ToTimestamp(st.exitedAt)}, nil
}

// Kill signals a process.
func (s *Service) Kill(ctx context.Context, r *taskAPI.KillRequest) (*ptypes.Empty, error) {
	c, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	if r.ExecID != "" {
		pid := p.getPid()
		if pid == 0 || p.hasExited() {
			return nil, errgrpc.ToGRPCf(errdefs.ErrNotFound, "exec %q is not running", r.ExecID)
		}
		if err := syscall.Kill(pid, syscall.Signal(r.Signal)); err != nil {
			return nil, errgrpc.ToGRPC(fmt.Errorf("signal exec %q: %w", r.ExecID, err))
		}
		return &ptypes.Empty{}, nil
	}
	if p.hasExited() && !r.All {
		return nil, errgrpc.ToGRPCf(errdefs.ErrNotFound, "container %q: process already finished", c.id)
	}
	if err := s.rt.Kill(ctx, c.id, int(r.Signal), r.All); err != nil {
		return nil, errgrpc.ToGRPC(fmt.Errorf("kill %q: %w", c.id, err))
	}
	return &ptypes.Empty{}, nil
}

// Delete removes an exited exec, or a container and its bundle.
func (s *Service) Delete(ctx context.Context, r *taskAPI.DeleteRequest) (*taskAPI.DeleteResponse, error) {
	c, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	if r.ExecID != "" {
		if st := p.snapshot(); st.state != procCreated && st.state != procStopped {
			return nil, errgrpc.ToGRPCf(errdefs.ErrFailedPrecondition, "exec %q is still running", r.ExecID)
		}
		s.mu.Lock()
		delete(c.execs, r.ExecID)
		s.mu.Unlock()
		p.closeIO()
		st := p.snapshot()
		return &taskAPI.DeleteResponse{Pid: uint32(st.pid), ExitStatus: uint32(st.status), ExitedAt: protobuf.ToTimestamp(st.exitedAt)}, nil
	}
	if err := s.rt.Delete(ctx, c.id, true); err != nil {
		log.G(ctx).WithError(err).WithField("id", c.id).Warn("runc delete failed")
	}
	if !p.hasExited() {
		// A created but never started container: its process is gone now.
		select {
		case <-p.exited:
		case <-time.After(2 * time.Second):
			p.setExited(128 + int(syscall.SIGKILL))
		}
	}
	p.closeIO()
	s.mu.Lock()
	delete(s.containers, c.id)
	for _, e := range c.execs {
		e.closeIO()
	}
	s.mu.Unlock()
	if err := os.RemoveAll(c.bundle); err != nil {
		log.G(ctx).WithError(err).WithField("id", c.id).Warn("failed to remove bundle")
	}
	s.removeVolumes(ctx, c)
	st := p.snapshot()
	return &taskAPI.DeleteResponse{Pid: uint32(st.pid), ExitStatus: uint32(st.status), ExitedAt: protobuf.ToTimestamp(st.exitedAt)}, nil
}

// State reports a process's state.
func (s *Service) State(ctx context.Context, r *taskAPI.StateRequest) (*taskAPI.StateResponse, error) {
	c, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	ps := p.snapshot()
	st := task.Status_CREATED
	switch ps.state {
	case procStopped:
		st = task.Status_STOPPED
	case procRunning:
		st = task.Status_RUNNING
	}
	resp := &taskAPI.StateResponse{
		ID: r.ID, ExecID: r.ExecID, Bundle: c.bundle, Pid: uint32(ps.pid), Status: st,
		Terminal: p.terminal, ExitStatus: uint32(ps.status), ExitedAt: protobuf.ToTimestamp(ps.exitedAt),
	}
	return resp, nil
}

// Pids lists a container's processes.
func (s *Service) Pids(ctx context.Context, r *taskAPI.PidsRequest) (*taskAPI.PidsResponse, error) {
	c, err := s.get(r.ID)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	pids, err := s.rt.Pids(ctx, c.id)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	resp := &taskAPI.PidsResponse{}
	for _, pid := range pids {
		resp.Processes = append(resp.Processes, &task.ProcessInfo{Pid: uint32(pid)})
	}
	return resp, nil
}

// Pause is not supported.
func (s *Service) Pause(context.Context, *taskAPI.PauseRequest) (*ptypes.Empty, error) {
	return nil, errgrpc.ToGRPCf(errdefs.ErrNotImplemented, "pause is not supported by the raksh agent")
}

// Resume is not supported.
func (s *Service) Resume(context.Context, *taskAPI.ResumeRequest) (*ptypes.Empty, error) {
	return nil, errgrpc.ToGRPCf(errdefs.ErrNotImplemented, "resume is not supported by the raksh agent")
}

// Checkpoint is not supported: a confidential VM's memory must not leave it.
func (s *Service) Checkpoint(context.Context, *taskAPI.CheckpointTaskRequest) (*ptypes.Empty, error) {
	return nil, errgrpc.ToGRPCf(errdefs.ErrNotImplemented, "checkpoint is not supported by the raksh agent")
}

// ResizePty resizes a process's terminal.
func (s *Service) ResizePty(ctx context.Context, r *taskAPI.ResizePtyRequest) (*ptypes.Empty, error) {
	_, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	p.mu.Lock()
	con := p.console
	p.mu.Unlock()
	if con == nil {
		return nil, errgrpc.ToGRPCf(errdefs.ErrFailedPrecondition, "process has no terminal")
	}
	if err := con.Resize(uint16(r.Width), uint16(r.Height)); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &ptypes.Empty{}, nil
}

// CloseIO closes a process's stdin.
func (s *Service) CloseIO(ctx context.Context, r *taskAPI.CloseIORequest) (*ptypes.Empty, error) {
	_, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	if r.Stdin {
		p.mu.Lock()
		if p.stdin != nil {
			p.stdin.Close()
			p.stdin = nil
		}
		p.mu.Unlock()
	}
	return &ptypes.Empty{}, nil
}

// Update changes a container's resources.
func (s *Service) Update(ctx context.Context, r *taskAPI.UpdateTaskRequest) (*ptypes.Empty, error) {
	c, err := s.get(r.ID)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	var res specs.LinuxResources
	if r.Resources == nil {
		return nil, errgrpc.ToGRPCf(errdefs.ErrInvalidArgument, "update without resources")
	}
	if err := json.Unmarshal(r.Resources.GetValue(), &res); err != nil {
		return nil, errgrpc.ToGRPC(fmt.Errorf("decode resources: %w: %w", err, errdefs.ErrInvalidArgument))
	}
	if err := s.rt.Update(ctx, c.id, &res); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &ptypes.Empty{}, nil
}

// Stats returns a container's cgroup metrics.
func (s *Service) Stats(ctx context.Context, r *taskAPI.StatsRequest) (*taskAPI.StatsResponse, error) {
	c, err := s.get(r.ID)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	if s.stats == nil {
		return nil, errgrpc.ToGRPCf(errdefs.ErrNotImplemented, "stats are not available")
	}
	m, err := s.stats(c.id)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	a, err := typeurl.MarshalAnyToProto(m)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &taskAPI.StatsResponse{Stats: a}, nil
}

// Connect returns the agent's and the container's pids.
func (s *Service) Connect(ctx context.Context, r *taskAPI.ConnectRequest) (*taskAPI.ConnectResponse, error) {
	resp := &taskAPI.ConnectResponse{ShimPid: uint32(os.Getpid()), Version: agentapi.Version}
	if _, p, err := s.getProcess(r.ID, ""); err == nil {
		resp.TaskPid = uint32(p.getPid())
	}
	return resp, nil
}

// Shutdown stops the agent (and powers the VM off) once it has answered.
func (s *Service) Shutdown(ctx context.Context, r *taskAPI.ShutdownRequest) (*ptypes.Empty, error) {
	if s.shutdown != nil {
		go func() {
			time.Sleep(50 * time.Millisecond) // let the reply reach the shim
			s.shutdown()
		}()
	}
	return &ptypes.Empty{}, nil
}
