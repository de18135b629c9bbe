package agent

import (
	"context"
	"fmt"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"golang.org/x/sys/unix"

	agentapi "github.com/raksh-project/raksh/api/agent/v1"
)

// WithVersion sets the agent version Info reports.
func WithVersion(v string) Opt { return func(s *Service) { s.version = v } }

// WithTEEType sets how Info learns the TEE the guest runs in ("snp",
// "tdx", "pef", "sim" or "none").
func WithTEEType(f func(ctx context.Context) string) Opt {
	return func(s *Service) { s.teeType = f }
}

// agentService is the agent API's Agent service.
type agentService struct{ s *Service }

var _ agentapi.AgentService = (*agentService)(nil)

// Info describes the guest to a host speaking the same API version and
// refuses any other.
func (a *agentService) Info(ctx context.Context, r *agentapi.InfoRequest) (*agentapi.InfoResponse, error) {
	if err := checkVersion(r.GetApiVersion(), agentapi.Version); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	resp := &agentapi.InfoResponse{
		ApiVersion:   agentapi.Version,
		AgentVersion: a.s.version,
		TeeType:      "none",
	}
	if resp.AgentVersion == "" {
		resp.AgentVersion = "unknown"
	}
	var u unix.Utsname
	if err := unix.Uname(&u); err == nil {
		resp.KernelRelease = unix.ByteSliceToString(u.Release[:])
	}
	if a.s.teeType != nil {
		resp.TeeType = a.s.teeType(ctx)
	}
	return resp, nil
}

// checkVersion refuses a host whose agent API version is not the agent's.
func checkVersion(host, agent string) error {
	if host != agent {
		return fmt.Errorf("agent API version mismatch: the host (shim) speaks %q, the agent speaks %q: %w", host, agent, errdefs.ErrFailedPrecondition)
	}
	return nil
}
