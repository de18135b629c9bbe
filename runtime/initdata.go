package runtime

import (
	"bytes"
	"context"
	"fmt"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	agentapi "github.com/raksh-project/raksh/api/agent/v1"
	"github.com/raksh-project/raksh/runtime/vm"
	"github.com/raksh-project/raksh/tee/initdata"
)

// initDataTimeout bounds the agent's check of the init data (it reads its
// own TEE report).
const initDataTimeout = 30 * time.Second

// deliverInitData hands the pod's init-data document to the agent
// (agentapi.InitData.Deliver), which checks it against the digest its TEE
// report binds, and returns the agent's refusal if it refuses.
func deliverInitData(ctx context.Context, v vm.Instance, doc []byte) error {
	ctx, cancel := context.WithTimeout(ctx, initDataTimeout)
	defer cancel()
	resp, err := agentapi.NewInitDataClient(v.Client()).Deliver(ctx, &agentapi.DeliverInitDataRequest{Document: doc})
	if err != nil {
		return fmt.Errorf("the agent refused the init data: %w", errgrpc.ToNative(err))
	}
	if !bytes.Equal(resp.GetDigest(), initdata.Digest(doc)) {
		return fmt.Errorf("the agent checked init data with digest %x, not the pod's: %w", resp.GetDigest(), errdefs.ErrUnknown)
	}
	return nil
}

// checkInitData refuses a container that brings init data (the
// io.raksh.init-data annotation) other than what the pod's VM was launched
// with: it cannot be bound any more, and must not be silently ignored.
func (s *Service) checkInitData(id string, spec *specs.Spec, doc []byte) error {
	if _, ok := spec.Annotations[initdata.Annotation]; !ok {
		return nil
	}
	s.mu.Lock()
	bound := s.initData
	s.mu.Unlock()
	if !bytes.Equal(bound, doc) {
		return fmt.Errorf("container %q brings init data other than its pod's, which was bound when the pod's VM booted: %w", id, errdefs.ErrInvalidArgument)
	}
	return nil
}
