// Package runtime is the Raksh containerd shim (io.containerd.raksh.v2):
// one shim and one VM per pod, forwarding the task API to the agent in the
// VM and connecting containerd's stdio to streams into it.
package runtime

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/v2/core/runtime"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/protobuf"
	ptypes "github.com/containerd/containerd/v2/pkg/protobuf/types"
	"github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/containerd/v2/pkg/shutdown"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	agentapi "github.com/raksh-project/raksh/api/agent/v1"
	"github.com/raksh-project/raksh/internal/wire"
	"github.com/raksh-project/raksh/policy/guard"
	"github.com/raksh-project/raksh/runtime/launch"
	"github.com/raksh-project/raksh/runtime/network"
	"github.com/raksh-project/raksh/runtime/vm"
	"github.com/raksh-project/raksh/runtime/vm/qemu"
	"github.com/raksh-project/raksh/runtime/volumes"
)

// exitVMGone is the exit status reported for processes whose VM died.
const exitVMGone = 255

// drainTimeout bounds how long Wait waits for output after an exit.
const drainTimeout = 30 * time.Second

// VMFactory creates the VM of a shim, with a virtio-net device on each of
// nics; tests substitute a fake.
type VMFactory func(ctx context.Context, cfg Config, id string, nics []qemu.NIC) (vm.Instance, error)

// Service is the shim's task service.
type Service struct {
	publisher shim.Publisher
	sd        shutdown.Service
	newVM     VMFactory
	id        string

	events chan any

	vmMu       sync.Mutex // serializes VM boots
	mu         sync.Mutex
	cfg        *Config
	vm         vm.Instance
	agent      taskAPI.TTRPCTaskService
	containers map[string]*hostContainer
	// initData is the init data bound into the VM when it booted.
	initData []byte
	// volumes delivers containers' volumes into the VM (volumes.go).
	volumes *volumes.Syncer
	// net is the pod netns attached to the VM (nil: no pod network).
	net *network.Network
	// layers are the erofs layer disks attached to the VM (erofs.go).
	layers layerDisks
}

type hostContainer struct {
	id, bundle string
	rootfs     string // host mount point, while mounted
	init       *hostProcess
	execs      map[string]*hostProcess
	hooks      *hostHooks // host-side OCI hooks (hooks.go), or nil
}

// NewService returns the task service of a shim.
func NewService(ctx context.Context, id string, publisher shim.Publisher, sd shutdown.Service, newVM VMFactory) *Service {
	s := &Service{
		publisher:  publisher,
		sd:         sd,
		newVM:      newVM,
		id:         id,
		events:     make(chan any, 128),
		containers: map[string]*hostContainer{},
	}
	go s.forward(ctx)
	sd.RegisterCallback(func(ctx context.Context) error {
		s.stopVM(ctx)
		return nil
	})
	return s
}

var _ taskAPI.TTRPCTaskService = (*Service)(nil)

// RegisterTTRPC registers the service with the shim's ttrpc server.
func (s *Service) RegisterTTRPC(server *ttrpc.Server) error {
	taskAPI.RegisterTTRPCTaskService(server, s)
	return nil
}

func (s *Service) send(evt any) { s.events <- evt }

// forward publishes events in the order they were sent.
func (s *Service) forward(ctx context.Context) {
	ns, _ := namespaces.Namespace(ctx)
	ctx = namespaces.WithNamespace(context.WithoutCancel(ctx), ns)
	for e := range s.events {
		if err := s.publisher.Publish(ctx, runtime.GetTopic(e), e); err != nil {
			log.G(ctx).WithError(err).Error("post event")
		}
	}
	s.publisher.Close()
}

// config loads the runtime configuration once per shim.
func (s *Service) config(opts *ptypes.Any) (Config, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cfg != nil {
		return *s.cfg, nil
	}
	cfg, err := LoadConfig(configPath(opts))
	if err != nil {
		return cfg, fmt.Errorf("%w: %w", err, errdefs.ErrInvalidArgument)
	}
	s.cfg = &cfg
	return cfg, nil
}

// ensureVM boots the pod's VM on first use. Boots are serialized by vmMu;
// s.mu is not held while the VM boots, so other calls are not blocked.
func (s *Service) ensureVM(ctx context.Context, cfg Config, spec *specs.Spec) (_ vm.Instance, _ taskAPI.TTRPCTaskService, retErr error) {
	s.vmMu.Lock()
	defer s.vmMu.Unlock()
	s.mu.Lock()
	v, agent := s.vm, s.agent
	s.mu.Unlock()
	if v != nil {
		select {
		case <-v.Done():
			return nil, nil, fmt.Errorf("the pod's VM has stopped: %w", errdefs.ErrFailedPrecondition)
		default:
		}
		return v, agent, nil
	}
	// The pod's NICs must exist when the VM boots: attach its netns first.
	podNet, nics, err := attachNetwork(ctx, spec)
	if err != nil {
		return nil, nil, err
	}
	defer func() {
		if retErr != nil {
			podNet.Detach(context.WithoutCancel(ctx))
		}
	}()
	v, err = s.newVM(ctx, cfg, s.id, nics)
	if err != nil {
		return nil, nil, err
	}
	if err := v.Start(ctx); err != nil {
		v.Shutdown(ctx)
		return nil, nil, fmt.Errorf("start VM: %w", err)
	}
	info, err := checkAgent(ctx, agentapi.NewAgentClient(v.Client()))
	if err != nil {
		v.Shutdown(ctx)
		return nil, nil, err
	}
	log.G(ctx).WithField("agent", info.GetAgentVersion()).WithField("kernel", info.GetKernelRelease()).WithField("tee", info.GetTeeType()).Info("agent connected")
	if cfg.PodInitData != nil {
		if err := deliverInitData(ctx, v, cfg.PodInitData); err != nil {
			v.Shutdown(ctx)
			return nil, nil, err
		}
	}
	s.mu.Lock()
	s.initData = cfg.PodInitData
	s.mu.Unlock()
	if err := setupGuestNetwork(ctx, v, podNet); err != nil {
		v.Shutdown(ctx)
		return nil, nil, err
	}
	s.mu.Lock()
	s.net = podNet
	s.mu.Unlock()
	if podNet != nil && len(podNet.Endpoints) > 0 {
		go newPortForwarder(podNet.NetnsPath, v).run(context.WithoutCancel(ctx))
	}
	agent = taskAPI.NewTTRPCTaskClient(v.Client())
	s.mu.Lock()
	s.vm, s.agent = v, agent
	s.mu.Unlock()
	go s.agentEvents(ctx, v)
	go s.watchVM(ctx, v)
	go serveProxy(context.WithoutCancel(ctx), v, cfg.Proxy)
	return v, agent, nil
}

// configPath reads the runtime options' config path, if any.
func configPath(opts *ptypes.Any) string {
	if opts == nil {
		return ""
	}
	var ro runtimeoptions.Options
	if opts.GetTypeUrl() != "" && typeurl.Is(opts, &ro) {
		if err := typeurl.UnmarshalTo(opts, &ro); err == nil {
			return ro.ConfigPath
		}
	}
	return ""
}

// watchVM ends every process when the VM dies under them.
func (s *Service) watchVM(ctx context.Context, v vm.Instance) {
	<-v.Done()
	s.mu.Lock()
	var procs []*hostProcess
	for _, c := range s.containers {
		if c.init != nil {
			procs = append(procs, c.init)
		}
		for _, e := range c.execs {
			procs = append(procs, e)
		}
	}
	s.mu.Unlock()
	for _, p := range procs {
		// Processes that were only created end too: their VM is gone.
		if p.setExited(exitVMGone, time.Now()) {
			log.G(ctx).WithFields(log.Fields{"id": p.id, "exec": p.execID}).Error("VM stopped; process reported as exited")
			if p.io != nil {
				p.io.Close()
			}
			pi := p.info()
			s.send(&eventstypes.TaskExit{ContainerID: p.id, ID: p.eventID(), Pid: pi.pid, ExitStatus: exitVMGone, ExitedAt: protobuf.ToTimestamp(pi.exitedAt)})
		}
	}
}

func (s *Service) container(id string) (*hostContainer, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.containers[id]
	if !ok {
		return nil, fmt.Errorf("container %q: %w", id, errdefs.ErrNotFound)
	}
	return c, nil
}

func (s *Service) process(id, execID string) (*hostContainer, *hostProcess, error) {
	c, err := s.container(id)
	if err != nil {
		return nil, nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if execID == "" {
		if c.init == nil {
			// Create has not returned yet (State from ctr task ls).
			return nil, nil, fmt.Errorf("container %q is being created: %w", id, errdefs.ErrNotFound)
		}
		return c, c.init, nil
	}
	p, ok := c.execs[execID]
	if !ok {
		return nil, nil, fmt.Errorf("exec %q of %q: %w", execID, id, errdefs.ErrNotFound)
	}
	return c, p, nil
}

func (s *Service) agentClient() (taskAPI.TTRPCTaskService, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.agent == nil {
		return nil, fmt.Errorf("no VM: %w", errdefs.ErrFailedPrecondition)
	}
	return s.agent, nil
}

func (s *Service) vmPid() uint32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.vm == nil {
		return 0
	}
	return uint32(s.vm.Pid())
}

// Create boots the pod's VM if needed, checks the spec, ships the rootfs
// and stdio into the VM and creates the container there.
func (s *Service) Create(ctx context.Context, r *taskAPI.CreateTaskRequest) (_ *taskAPI.CreateTaskResponse, retErr error) {
	if err := wire.ValidID(r.ID); err != nil {
		return nil, errgrpc.ToGRPC(fmt.Errorf("%w: %w", err, errdefs.ErrInvalidArgument))
	}
	specBytes, err := os.ReadFile(filepath.Join(r.Bundle, "config.json"))
	if err != nil {
		return nil, errgrpc.ToGRPC(fmt.Errorf("read OCI spec: %w", err))
	}
	var spec specs.Spec
	if err := json.Unmarshal(specBytes, &spec); err != nil {
		return nil, errgrpc.ToGRPC(fmt.Errorf("decode OCI spec: %w: %w", err, errdefs.ErrInvalidArgument))
	}
	cfg, err := s.config(r.Options)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	// Check before booting anything: a refused container costs no VM.
	if err := guard.Check(&spec, guard.Options{RequireEnvelope: cfg.RequireEnvelope}); err != nil {
		return nil, errgrpc.ToGRPC(fmt.Errorf("refusing container %q: %w", r.ID, err))
	}
	// The pod's init data is bound into the TEE when its VM boots.
	if cfg.PodInitData, err = launch.PodInitData(cfg, spec.Annotations); err != nil {
		return nil, errgrpc.ToGRPC(fmt.Errorf("pod init data: %w", err))
	}
	if err := podStorage(&cfg, &spec); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	// Host-side OCI hooks (hooks.go) run in the shim: those that set up a new
	// network namespace's network before the VM boots, so it is attached.
	hooks, err := newHostHooks(r.ID, r.Bundle, &spec)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	defer func() {
		if retErr != nil {
			hooks.stop()
		}
	}()
	if hooks != nil && hooks.holder != nil {
		if err := hooks.create(ctx, 0); err != nil {
			return nil, errgrpc.ToGRPC(err)
		}
	}
	v, agent, err := s.ensureVM(ctx, cfg, &spec)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	if err := s.checkInitData(r.ID, &spec, cfg.PodInitData); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	if hooks != nil && hooks.holder == nil {
		if err := hooks.create(ctx, int(s.vmPid())); err != nil {
			return nil, errgrpc.ToGRPC(err)
		}
	}

	s.mu.Lock()
	if _, ok := s.containers[r.ID]; ok {
		s.mu.Unlock()
		return nil, errgrpc.ToGRPCf(errdefs.ErrAlreadyExists, "container %q", r.ID)
	}
	c := &hostContainer{id: r.ID, bundle: r.Bundle, execs: map[string]*hostProcess{}, hooks: hooks}
	s.containers[r.ID] = c
	s.mu.Unlock()
	defer func() {
		if retErr != nil {
			s.mu.Lock()
			delete(s.containers, r.ID)
			s.mu.Unlock()
			s.unmountRootfs(ctx, c)
			s.releaseLayersLater(ctx, r.ID)
		}
	}()

	if err := s.deliverVolumes(ctx, v, cfg, r.ID, &spec); err != nil {
		return nil, errgrpc.ToGRPC(fmt.Errorf("container %q: %w", r.ID, err))
	}
	defer func() {
		if retErr != nil {
			s.stopVolumes(ctx, r.ID)
		}
	}()

	agentRootfs, rootfsDesc, rootfsDone, err := s.sendRootfs(ctx, v, &cfg, c, r.Rootfs)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	opts, err := typeurl.MarshalAnyToProto(&agentapi.CreateContainerOptions{Spec: specBytes, Rootfs: rootfsDesc})
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	p := newHostProcess(r.ID, "")
	hio, err := newHostIO(ctx, v, r.ID, "", r.Stdin, r.Stdout, r.Stderr, r.Terminal)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	p.io = hio
	in, out, errS := hio.StreamNames()
	resp, err := agent.Create(ctx, &taskAPI.CreateTaskRequest{
		ID:       r.ID,
		Bundle:   r.Bundle,
		Rootfs:   agentRootfs,
		Terminal: r.Terminal,
		Stdin:    in, Stdout: out, Stderr: errS,
		Options: opts,
	})
	if rerr := <-rootfsDone; rerr != nil && err == nil {
		err = rerr
	}
	s.unmountRootfs(ctx, c)
	if err != nil {
		hio.Close()
		return nil, errgrpc.ToGRPC(fmt.Errorf("create %q in VM: %w", r.ID, errgrpc.ToNative(err)))
	}
	_ = resp
	pid := s.vmPid()
	p.setPid(pid)
	s.mu.Lock()
	c.init = p
	s.mu.Unlock()
	s.send(&eventstypes.TaskCreate{
		ContainerID: r.ID, Bundle: r.Bundle, Rootfs: r.Rootfs,
		IO:  &eventstypes.TaskIO{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal},
		Pid: pid,
	})
	return &taskAPI.CreateTaskResponse{Pid: pid}, nil
}

// Start starts a container or exec and watches for its exit.
func (s *Service) Start(ctx context.Context, r *taskAPI.StartRequest) (*taskAPI.StartResponse, error) {
	_, p, err := s.process(r.ID, r.ExecID)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	agent, err := s.agentClient()
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	if err := p.beginStart(); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	_, err = agent.Start(ctx, r)
	if !p.endStart(s.vmPid(), err) {
		if err != nil {
			return nil, err
		}
		return nil, errgrpc.ToGRPCf(errdefs.ErrFailedPrecondition, "process %s: the pod's VM stopped while it started", p.eventID())
	}
	pid := p.info().pid
	if r.ExecID == "" {
		s.send(&eventstypes.TaskStart{ContainerID: r.ID, Pid: pid})
	} else {
		s.send(&eventstypes.TaskExecStarted{ContainerID: r.ID, ExecID: r.ExecID, Pid: pid})
	}
	go s.waitExit(ctx, agent, p)
	return &taskAPI.StartResponse{Pid: pid}, nil
}

// waitExit waits for a process in the VM to exit and its output to be
// drained, then publishes its exit.
func (s *Service) waitExit(ctx context.Context, agent taskAPI.TTRPCTaskService, p *hostProcess) {
	ctx = context.WithoutCancel(ctx)
	resp, err := agent.Wait(ctx, &taskAPI.WaitRequest{ID: p.id, ExecID: p.execID})
	status, at := uint32(exitVMGone), time.Now()
	if err == nil {
		status, at = resp.ExitStatus, protobuf.FromTimestamp(resp.ExitedAt)
	} else {
		log.G(ctx).WithError(err).WithFields(log.Fields{"id": p.id, "exec": p.execID}).Warn("lost the process in the VM")
	}
	if p.io != nil && !p.io.Drain(drainTimeout) {
		log.G(ctx).WithFields(log.Fields{"id": p.id, "exec": p.execID}).Warn("output not drained in time")
	}
	if err == nil && p.execID == "" {
		s.copyBackVolumes(ctx, p.id)
	}
	if p.setExited(status, at) {
		s.send(&eventstypes.TaskExit{ContainerID: p.id, ID: p.eventID(), Pid: p.info().pid, ExitStatus: status, ExitedAt: protobuf.ToTimestamp(at)})
	}
}

// Wait returns once the process has exited and its output is drained.
func (s *Service) Wait(ctx context.Context, r *taskAPI.WaitRequest) (*taskAPI.WaitResponse, error) {
	_, p, err := s.process(r.ID, r.ExecID)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	select {
	case <-p.exited:
	case <-ctx.Done():
		return nil, errgrpc.ToGRPC(ctx.Err())
	}
	pi := p.info()
	return &taskAPI.WaitResponse{ExitStatus: pi.status, ExitedAt: protobuf.ToTimestamp(pi.exitedAt)}, nil
}

// Exec registers an additional process in a container.
func (s *Service) Exec(ctx context.Context, r *taskAPI.ExecProcessRequest) (*ptypes.Empty, error) {
	c, err := s.container(r.ID)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	if err := wire.ValidID(r.ExecID); err != nil {
		return nil, errgrpc.ToGRPC(fmt.Errorf("%w: %w", err, errdefs.ErrInvalidArgument))
	}
	s.mu.Lock()
	if _, ok := c.execs[r.ExecID]; ok {
		s.mu.Unlock()
		return nil, errgrpc.ToGRPCf(errdefs.ErrAlreadyExists, "exec %q", r.ExecID)
	}
	v := s.vm
	s.mu.Unlock()
	agent, err := s.agentClient()
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	hio, err := newHostIO(ctx, v, r.ID, r.ExecID, r.Stdin, r.Stdout, r.Stderr, r.Terminal)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	in, out, errS := hio.StreamNames()
	if r.Spec == nil {
		hio.Close()
		return nil, errgrpc.ToGRPCf(errdefs.ErrInvalidArgument, "exec %q has no process spec", r.ExecID)
	}
	spec, err := typeurl.MarshalAnyToProto(&agentapi.ExecProcessOptions{Process: r.Spec.GetValue()})
	if err != nil {
		hio.Close()
		return nil, errgrpc.ToGRPC(err)
	}
	if _, err := agent.Exec(ctx, &taskAPI.ExecProcessRequest{
		ID: r.ID, ExecID: r.ExecID, Terminal: r.Terminal, Stdin: in, Stdout: out, Stderr: errS, Spec: spec,
	}); err != nil {
		hio.Close()
		return nil, err
	}
	p := newHostProcess(r.ID, r.ExecID)
	p.io = hio
	s.mu.Lock()
	c.execs[r.ExecID] = p
	s.mu.Unlock()
	s.send(&eventstypes.TaskExecAdded{ContainerID: r.ID, ExecID: r.ExecID})
	return &ptypes.Empty{}, nil
}

// Kill signals a process in the VM.
func (s *Service) Kill(ctx context.Context, r *taskAPI.KillRequest) (*ptypes.Empty, error) {
	_, p, err := s.process(r.ID, r.ExecID)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	select {
	case <-p.exited:
		if !r.All {
			return nil, errgrpc.ToGRPCf(errdefs.ErrNotFound, "process %s already finished", p.eventID())
		}
		return &ptypes.Empty{}, nil
	default:
	}
	agent, err := s.agentClient()
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return agent.Kill(ctx, r)
}

// Delete removes an exec or a container, in the VM and on the host.
func (s *Service) Delete(ctx context.Context, r *taskAPI.DeleteRequest) (*taskAPI.DeleteResponse, error) {
	c, p, err := s.process(r.ID, r.ExecID)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	pi, err := p.beginDelete()
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	if agent, err := s.agentClient(); err == nil && s.vmAlive() {
		if _, err := agent.Delete(ctx, r); err != nil && !errdefs.IsNotFound(errgrpc.ToNative(err)) {
			log.G(ctx).WithError(err).WithField("id", r.ID).Warn("delete in VM failed")
		}
	}
	if p.io != nil {
		p.io.Close()
	}
	s.mu.Lock()
	if r.ExecID != "" {
		delete(c.execs, r.ExecID)
	} else {
		delete(s.containers, r.ID)
	}
	s.mu.Unlock()
	if r.ExecID == "" {
		s.unmountRootfs(ctx, c)
		s.releaseLayersLater(ctx, r.ID)
		s.stopVolumes(ctx, r.ID)
		c.hooks.deleted(ctx, int(s.vmPid()))
		s.send(&eventstypes.TaskDelete{ContainerID: r.ID, Pid: pi.pid, ExitStatus: pi.status, ExitedAt: protobuf.ToTimestamp(pi.exitedAt)})
	}
	return &taskAPI.DeleteResponse{Pid: pi.pid, ExitStatus: pi.status, ExitedAt: protobuf.ToTimestamp(pi.exitedAt)}, nil
}

func (s *Service) vmAlive() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.vm == nil {
		return false
	}
	select {
	case <-s.vm.Done():
		return false
	default:
		return true
	}
}

// State reports a process's state, with the host's bundle and stdio paths.
func (s *Service) State(ctx context.Context, r *taskAPI.StateRequest) (*taskAPI.StateResponse, error) {
	c, p, err := s.process(r.ID, r.ExecID)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	pi := p.info()
	resp := &taskAPI.StateResponse{ID: r.ID, ExecID: r.ExecID, Bundle: c.bundle, Pid: pi.pid, Status: task.Status_CREATED}
	if pi.state == stateStopped || pi.state == stateDeleted {
		resp.Status = task.Status_STOPPED
		resp.ExitStatus = pi.status
		resp.ExitedAt = protobuf.ToTimestamp(pi.exitedAt)
		return resp, nil
	}
	agent, err := s.agentClient()
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	ar, err := agent.State(ctx, r)
	if err != nil {
		return nil, err
	}
	resp.Status, resp.Terminal = ar.Status, ar.Terminal
	return resp, nil
}

// Pids lists the container's processes (guest pids).
func (s *Service) Pids(ctx context.Context, r *taskAPI.PidsRequest) (*taskAPI.PidsResponse, error) {
	agent, err := s.agentClient()
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return agent.Pids(ctx, r)
}

// Pause is not supported.
func (s *Service) Pause(context.Context, *taskAPI.PauseRequest) (*ptypes.Empty, error) {
	return nil, errgrpc.ToGRPCf(errdefs.ErrNotImplemented, "pause is not supported by the raksh runtime")
}

// Resume is not supported.
func (s *Service) Resume(context.Context, *taskAPI.ResumeRequest) (*ptypes.Empty, error) {
	return nil, errgrpc.ToGRPCf(errdefs.ErrNotImplemented, "resume is not supported by the raksh runtime")
}

// Checkpoint is not supported: a confidential VM's memory must not leave it.
func (s *Service) Checkpoint(context.Context, *taskAPI.CheckpointTaskRequest) (*ptypes.Empty, error) {
	return nil, errgrpc.ToGRPCf(errdefs.ErrNotImplemented, "checkpoint is not supported by the raksh runtime: a confidential VM's memory never leaves it")
}

// ResizePty resizes a terminal in the VM.
func (s *Service) ResizePty(ctx context.Context, r *taskAPI.ResizePtyRequest) (*ptypes.Empty, error) {
	agent, err := s.agentClient()
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return agent.ResizePty(ctx, r)
}

// CloseIO closes a process's stdin.
func (s *Service) CloseIO(ctx context.Context, r *taskAPI.CloseIORequest) (*ptypes.Empty, error) {
	_, p, err := s.process(r.ID, r.ExecID)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	if r.Stdin && p.io != nil {
		p.io.EndStdin()
	}
	return &ptypes.Empty{}, nil
}

// Update changes a container's resources in the VM.
func (s *Service) Update(ctx context.Context, r *taskAPI.UpdateTaskRequest) (*ptypes.Empty, error) {
	agent, err := s.agentClient()
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return agent.Update(ctx, r)
}

// Stats returns a container's cgroup metrics from the VM.
func (s *Service) Stats(ctx context.Context, r *taskAPI.StatsRequest) (*taskAPI.StatsResponse, error) {
	agent, err := s.agentClient()
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return agent.Stats(ctx, r)
}

// Connect returns the shim's pid and the VM's pid as the task's.
func (s *Service) Connect(ctx context.Context, r *taskAPI.ConnectRequest) (*taskAPI.ConnectResponse, error) {
	return &taskAPI.ConnectResponse{ShimPid: uint32(os.Getpid()), TaskPid: s.vmPid(), Version: agentapi.Version}, nil
}

// Shutdown stops the VM and the shim once no container is left.
func (s *Service) Shutdown(ctx context.Context, r *taskAPI.ShutdownRequest) (*ptypes.Empty, error) {
	s.mu.Lock()
	n := len(s.containers)
	s.mu.Unlock()
	if n > 0 && !r.Now {
		return &ptypes.Empty{}, nil
	}
	s.sd.Shutdown()
	return &ptypes.Empty{}, nil
}

func (s *Service) stopVM(ctx context.Context) {
	s.mu.Lock()
	v, agent := s.vm, s.agent
	s.mu.Unlock()
	if v == nil {
		return
	}
	s.stopLayers()
	if agent != nil {
		actx, cancel := context.WithTimeout(ctx, time.Second)
		agent.Shutdown(actx, &taskAPI.ShutdownRequest{Now: true})
		cancel()
	}
	if err := v.Shutdown(ctx); err != nil && !errors.Is(err, context.Canceled) {
		log.G(ctx).WithError(err).Warn("VM shutdown")
	}
	s.detachNetwork(ctx)
}
