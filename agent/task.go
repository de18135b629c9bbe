package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/containerd/console"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types/task"
	runcproc "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2/process"
	"github.com/containerd/containerd/v2/pkg/protobuf"
	ptypes "github.com/containerd/containerd/v2/pkg/protobuf/types"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	runc "github.com/containerd/go-runc"
	"github.com/containerd/log"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	agentapi "github.com/raksh-project/raksh/api/agent/v1"
	"github.com/raksh-project/raksh/internal/wire"
)

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
			releaseRootfs(c.bundle)
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

	stdout, stderr, err := s.outputStreams(ctx, c, r.Terminal, r.Stdout, r.Stderr)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	names := [3]string{r.Stdin, stdout, stderr}
	dir := s.ioDir()
	pio, err := s.openIO(ctx, dir, ioPaths(dir, names, r.Terminal), names)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	platform, err := s.consolePlatform()
	if err != nil {
		pio.release()
		return nil, errgrpc.ToGRPC(err)
	}
	init := runcproc.New(r.ID, s.rt.runc(c.bundle), pio.stdio(r.Terminal))
	init.Bundle = c.bundle
	init.WorkDir = c.bundle
	init.Platform = platform
	// The guest's root is the initramfs, where pivot_root is not allowed.
	init.NoPivotRoot = true
	if err := init.Create(ctx, &runcproc.CreateConfig{ID: r.ID, Bundle: c.bundle, Terminal: r.Terminal,
		Stdin: pio.paths[0], Stdout: pio.paths[1], Stderr: pio.paths[2]}); err != nil {
		pio.release()
		// Create fails before or after runc created the container.
		init.Runtime().Delete(context.WithoutCancel(ctx), r.ID, &runc.DeleteOpts{Force: true})
		return nil, errgrpc.ToGRPC(runtimeErr(c, "create", err))
	}
	pio.setStdin(init.Stdin())
	p := &process{id: r.ID, terminal: r.Terminal, proc: init, init: init, io: pio}
	s.mu.Lock()
	c.init = p
	s.mu.Unlock()
	pid := init.Pid()
	s.track(p, pid)
	log.G(ctx).WithFields(log.Fields{"id": r.ID, "pid": pid}).Info("container created")
	if s.created != nil {
		s.created(context.WithoutCancel(ctx), r.ID)
	}
	return &taskAPI.CreateTaskResponse{Pid: uint32(pid)}, nil
}

// Start starts a created container or exec.
func (s *Service) Start(ctx context.Context, r *taskAPI.StartRequest) (*taskAPI.StartResponse, error) {
	c, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	if err := notStarted(ctx, p); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	if r.ExecID == "" {
		if err := p.proc.Start(ctx); err != nil {
			return nil, errgrpc.ToGRPC(runtimeErr(c, "start", err))
		}
		return &taskAPI.StartResponse{Pid: uint32(p.proc.Pid())}, nil
	}
	// One Start claims the exec's streams and runs it; another one is
	// refused.
	s.mu.Lock()
	if p.starting {
		s.mu.Unlock()
		return nil, errgrpc.ToGRPCf(errdefs.ErrFailedPrecondition, "exec %q already started", r.ExecID)
	}
	p.starting = true
	s.mu.Unlock()
	pio, err := s.openIO(ctx, p.ioDir, ioPaths(p.ioDir, p.streams, p.terminal), p.streams)
	if err != nil {
		return nil, errgrpc.ToGRPC(fmt.Errorf("exec %q in %q: %w", r.ExecID, c.id, err))
	}
	s.mu.Lock()
	p.io = pio
	s.mu.Unlock()
	if err := p.proc.Start(ctx); err != nil {
		pio.release()
		return nil, errgrpc.ToGRPC(fmt.Errorf("exec %q in %q: %w", r.ExecID, c.id, runtimeErr(c, "exec in", err)))
	}
	pio.setStdin(p.proc.Stdin())
	pid := p.proc.Pid()
	s.track(p, pid)
	log.G(ctx).WithFields(log.Fields{"id": c.id, "exec": r.ExecID, "pid": pid}).Debug("exec started")
	return &taskAPI.StartResponse{Pid: uint32(pid)}, nil
}

// notStarted refuses to start a process that was started or has exited
// (the process package's own refusals carry no error class).
func notStarted(ctx context.Context, p *process) error {
	switch st, _ := p.proc.Status(ctx); st {
	case "created":
		return nil
	case "stopped", "deleted":
		return fmt.Errorf("%s has exited: %w", p.name(), errdefs.ErrFailedPrecondition)
	default:
		return fmt.Errorf("%s already started: %w", p.name(), errdefs.ErrFailedPrecondition)
	}
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
	init := c.init
	_, dup := c.execs[r.ExecID]
	s.mu.Unlock()
	if init == nil {
		return nil, errgrpc.ToGRPCf(errdefs.ErrNotFound, "container %q is being created", r.ID)
	}
	if dup {
		return nil, errgrpc.ToGRPCf(errdefs.ErrAlreadyExists, "exec %q", r.ExecID)
	}
	names := [3]string{r.Stdin, r.Stdout, r.Stderr}
	dir := s.ioDir()
	paths := ioPaths(dir, names, r.Terminal)
	// Not under s.mu: the init's own lock may be held by a runc call.
	e, err := init.init.Exec(ctx, c.bundle, &runcproc.ExecConfig{ID: r.ExecID, Terminal: r.Terminal,
		Stdin: paths[0], Stdout: paths[1], Stderr: paths[2], Spec: &ptypes.Any{Value: proc}})
	if err != nil {
		return nil, errgrpc.ToGRPC(fmt.Errorf("exec %q in %q: %w: %w", r.ExecID, r.ID, err, errdefs.ErrFailedPrecondition))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := c.execs[r.ExecID]; ok {
		return nil, errgrpc.ToGRPCf(errdefs.ErrAlreadyExists, "exec %q", r.ExecID)
	}
	c.execs[r.ExecID] = &process{id: r.ID, execID: r.ExecID, terminal: r.Terminal, proc: e, ioDir: dir, streams: names}
	return &ptypes.Empty{}, nil
}

// Wait waits for a process to exit and its output to be drained.
func (s *Service) Wait(ctx context.Context, r *taskAPI.WaitRequest) (*taskAPI.WaitResponse, error) {
	_, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	if err := p.proc.Wait(ctx); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	log.G(ctx).WithFields(log.Fields{"id": r.ID, "exec": r.ExecID}).Debug("wait: exited, draining output")
	pio := s.procIO(p)
	pio.wait()
	pio.close()
	return &taskAPI.WaitResponse{ExitStatus: uint32(p.proc.ExitStatus()), ExitedAt: protobuf.ToTimestamp(p.proc.ExitedAt())}, nil
}

// procIO returns p's stdio, nil before an exec started.
func (s *Service) procIO(p *process) *procIO {
	s.mu.Lock()
	defer s.mu.Unlock()
	return p.io
}

// Kill signals a process.
func (s *Service) Kill(ctx context.Context, r *taskAPI.KillRequest) (*ptypes.Empty, error) {
	_, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	if err := p.proc.Kill(ctx, r.Signal, r.All); err != nil {
		return nil, errgrpc.ToGRPC(fmt.Errorf("signal %s: %w", p.name(), err))
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
		if st, _ := p.proc.Status(ctx); st == "running" {
			return nil, errgrpc.ToGRPCf(errdefs.ErrFailedPrecondition, "exec %q is still running", r.ExecID)
		}
		if err := p.proc.Delete(ctx); err != nil {
			return nil, errgrpc.ToGRPC(fmt.Errorf("delete exec %q: %w", r.ExecID, err))
		}
		s.mu.Lock()
		delete(c.execs, r.ExecID)
		pio := p.io
		s.mu.Unlock()
		pio.release()
		return &taskAPI.DeleteResponse{Pid: uint32(p.proc.Pid()), ExitStatus: uint32(p.proc.ExitStatus()), ExitedAt: protobuf.ToTimestamp(p.proc.ExitedAt())}, nil
	}
	// The task API deletes a container whatever its state: a created or
	// running one is killed first (the process package refuses to delete
	// a running process).
	if st, _ := p.proc.Status(ctx); st == "created" || st == "running" {
		if err := p.proc.Kill(ctx, uint32(syscall.SIGKILL), true); err != nil {
			log.G(ctx).WithError(err).WithField("id", c.id).Warn("kill before delete failed")
		}
		wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		if p.proc.Wait(wctx) != nil {
			// Its exit was not reaped (runc never started it); record one.
			p.proc.SetExited(128 + int(syscall.SIGKILL))
		}
		cancel()
	}
	s.mu.Lock()
	delete(s.containers, c.id)
	execs := c.execs
	s.mu.Unlock()
	for _, e := range execs {
		e.proc.Delete(ctx)
		s.procIO(e).release()
	}
	if err := p.proc.Delete(ctx); err != nil {
		log.G(ctx).WithError(err).WithField("id", c.id).Warn("runc delete failed")
	}
	p.io.release()
	if err := releaseRootfs(c.bundle); err != nil {
		log.G(ctx).WithError(err).WithField("id", c.id).Warn("failed to unmount rootfs")
	}
	if err := os.RemoveAll(c.bundle); err != nil {
		log.G(ctx).WithError(err).WithField("id", c.id).Warn("failed to remove bundle")
	}
	s.removeVolumes(ctx, c)
	return &taskAPI.DeleteResponse{Pid: uint32(p.proc.Pid()), ExitStatus: uint32(p.proc.ExitStatus()), ExitedAt: protobuf.ToTimestamp(p.proc.ExitedAt())}, nil
}

// State reports a process's state.
func (s *Service) State(ctx context.Context, r *taskAPI.StateRequest) (*taskAPI.StateResponse, error) {
	c, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	ps, err := p.proc.Status(ctx)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	st := task.Status_UNKNOWN
	switch ps {
	case "created":
		st = task.Status_CREATED
	case "running":
		st = task.Status_RUNNING
	case "stopped", "deleted":
		st = task.Status_STOPPED
	case "paused":
		st = task.Status_PAUSED
	case "pausing":
		st = task.Status_PAUSING
	}
	resp := &taskAPI.StateResponse{
		ID: r.ID, ExecID: r.ExecID, Bundle: c.bundle, Pid: uint32(p.proc.Pid()), Status: st,
		Terminal: p.terminal, ExitStatus: uint32(p.proc.ExitStatus()), ExitedAt: protobuf.ToTimestamp(p.proc.ExitedAt()),
	}
	return resp, nil
}

// Pids lists a container's processes.
func (s *Service) Pids(ctx context.Context, r *taskAPI.PidsRequest) (*taskAPI.PidsResponse, error) {
	_, p, err := s.getProcess(r.ID, "")
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	pids, err := p.init.Runtime().Ps(ctx, r.ID)
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
	if !p.terminal {
		return nil, errgrpc.ToGRPCf(errdefs.ErrFailedPrecondition, "process has no terminal")
	}
	if err := p.proc.Resize(console.WinSize{Width: uint16(r.Width), Height: uint16(r.Height)}); err != nil {
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
		s.procIO(p).closeStdin()
	}
	return &ptypes.Empty{}, nil
}

// Update changes a container's resources.
func (s *Service) Update(ctx context.Context, r *taskAPI.UpdateTaskRequest) (*ptypes.Empty, error) {
	_, p, err := s.getProcess(r.ID, "")
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
	if err := p.init.Update(ctx, r.Resources); err != nil {
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
		resp.TaskPid = uint32(p.proc.Pid())
	}
	return resp, nil
}

// Shutdown asks the agent to stop (and power the VM off). It does so in
// Serve, once the shim has the answer and closed the session.
func (s *Service) Shutdown(ctx context.Context, r *taskAPI.ShutdownRequest) (*ptypes.Empty, error) {
	s.shutdownOnce.Do(func() { close(s.shutdownReq) })
	return &ptypes.Empty{}, nil
}
