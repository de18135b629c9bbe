package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/v2/pkg/protobuf"
	ptypes "github.com/containerd/containerd/v2/pkg/protobuf/types"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
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
	if err := releaseRootfs(c.bundle); err != nil {
		log.G(ctx).WithError(err).WithField("id", c.id).Warn("failed to unmount rootfs")
	}
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

// Shutdown asks the agent to stop (and power the VM off). It does so in
// Serve, once the shim has the answer and closed the session.
func (s *Service) Shutdown(ctx context.Context, r *taskAPI.ShutdownRequest) (*ptypes.Empty, error) {
	s.shutdownOnce.Do(func() { close(s.shutdownReq) })
	return &ptypes.Empty{}, nil
}
