package agent

import (
	"context"
	"fmt"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"

	agentapi "github.com/raksh-project/raksh/api/agent/v1"

	"github.com/raksh-project/raksh/policy/guard"
	"github.com/raksh-project/raksh/tee/initdata"
)

// InitData is the pod's init data as the agent holds it (agent/kbssession
// implements it): Deliver checks a document from the shim against the
// guest's TEE report; Document returns the verified document, nil when
// none was bound at launch, or an error when one was bound but not
// delivered.
type InitData interface {
	Deliver(ctx context.Context, doc []byte) error
	InitData(ctx context.Context) (*initdata.Document, error)
}

// WithInitData makes the agent enforce the policy of the pod's init data
// and accept its delivery (agentapi.InitDataService).
func WithInitData(d InitData) Opt { return func(s *Service) { s.initData = d } }

// podPolicy returns the pod's init-data policy, refusing the container
// when init data was bound at launch but not delivered, and a container
// without an envelope when the policy requires sealing.
func (s *Service) podPolicy(ctx context.Context, c *container) (initdata.Policy, error) {
	if s.initData == nil {
		return initdata.Policy{}, nil
	}
	d, err := s.initData.InitData(ctx)
	if err != nil {
		return initdata.Policy{}, fmt.Errorf("container %q: %w", c.id, err)
	}
	if d == nil {
		return initdata.Policy{}, nil
	}
	if d.Policy.RequireSealed {
		if err := guard.Check(c.spec, guard.Options{RequireEnvelope: true}); err != nil {
			return initdata.Policy{}, fmt.Errorf("the pod's init data requires sealed containers: %w", err)
		}
	}
	return d.Policy, nil
}

// ErrPodExecDenied is returned for an exec into a container of a pod
// whose init data denies exec.
var ErrPodExecDenied = fmt.Errorf("the pod's init data denies exec: %w", errdefs.ErrPermissionDenied)

// applyPodPolicy tightens c by the pod's policy after its envelope (if
// any) was opened: exec and logs denied pod-wide stay denied whatever the
// envelope allows.
func applyPodPolicy(c *container, p initdata.Policy) {
	c.pod = p
	c.noLogs = c.noLogs || p.DenyLogs
}

// initDataService serves agentapi.InitDataService.
type initDataService struct{ s *Service }

var _ agentapi.InitDataService = (*initDataService)(nil)

// Deliver implements agentapi.InitDataService.
func (d *initDataService) Deliver(ctx context.Context, r *agentapi.DeliverInitDataRequest) (*agentapi.DeliverInitDataResponse, error) {
	if d.s.initData == nil {
		return nil, errgrpc.ToGRPC(fmt.Errorf("this agent does not take init data: %w", errdefs.ErrNotImplemented))
	}
	doc := r.GetDocument()
	if len(doc) > initdata.MaxSize {
		return nil, errgrpc.ToGRPC(fmt.Errorf("init data is %d bytes, more than %d: %w", len(doc), initdata.MaxSize, errdefs.ErrInvalidArgument))
	}
	if err := d.s.initData.Deliver(ctx, doc); err != nil {
		log.G(ctx).WithError(err).Error("init data refused")
		return nil, errgrpc.ToGRPC(err)
	}
	return &agentapi.DeliverInitDataResponse{Digest: initdata.Digest(doc)}, nil
}
