package runtime

import (
	"context"
	"errors"
	"fmt"
	"io"

	eventstypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	"github.com/containerd/typeurl/v2"

	agentapi "github.com/raksh-project/raksh/api/agent/v1"
	"github.com/raksh-project/raksh/runtime/vm"
)

// checkAgent asks the agent who it is and refuses one that does not speak
// the shim's agent API version.
func checkAgent(ctx context.Context, agent agentapi.AgentService) (*agentapi.InfoResponse, error) {
	info, err := agent.Info(ctx, &agentapi.InfoRequest{ApiVersion: agentapi.Version})
	if err != nil {
		err = errgrpc.ToNative(err)
		if errdefs.IsNotImplemented(err) {
			return nil, fmt.Errorf("the agent in the VM predates agent API %q (it has no Info call); rebuild the initrd: %w", agentapi.Version, errdefs.ErrFailedPrecondition)
		}
		return nil, fmt.Errorf("agent info: %w", err)
	}
	if info.GetApiVersion() != agentapi.Version {
		return nil, fmt.Errorf("agent API version mismatch: the shim speaks %q, the agent in the VM speaks %q (agent %s); install a matching initrd: %w",
			agentapi.Version, info.GetApiVersion(), info.GetAgentVersion(), errdefs.ErrFailedPrecondition)
	}
	return info, nil
}

// agentEvents streams the agent's events and forwards those the shim knows
// to containerd, until the VM stops.
func (s *Service) agentEvents(ctx context.Context, v vm.Instance) {
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	go func() {
		select {
		case <-v.Done():
			cancel()
		case <-ctx.Done():
		}
	}()
	stream, err := agentapi.NewEventsClient(v.Client()).Stream(ctx, &agentapi.StreamEventsRequest{})
	if err != nil {
		log.G(ctx).WithError(err).Error("cannot stream the agent's events; OOM events will not be reported")
		return
	}
	for {
		env, err := stream.Recv()
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, io.EOF) {
				log.G(ctx).WithError(err).Warn("agent events stream ended")
			}
			return
		}
		if err := s.forwardAgentEvent(env); err != nil {
			log.G(ctx).WithError(err).WithField("topic", env.GetTopic()).Warn("dropping agent event")
		}
	}
}

// forwardAgentEvent forwards one event of the agent: only the events the
// agent API defines, about containers of this shim.
func (s *Service) forwardAgentEvent(env *types.Envelope) error {
	ev, err := typeurl.UnmarshalAny(env.GetEvent())
	if err != nil {
		return fmt.Errorf("decode event: %w", err)
	}
	switch e := ev.(type) {
	case *eventstypes.TaskOOM:
		if env.GetTopic() != agentapi.TopicTaskOOM {
			return fmt.Errorf("TaskOOM under topic %q, want %q: %w", env.GetTopic(), agentapi.TopicTaskOOM, errdefs.ErrInvalidArgument)
		}
		if _, err := s.container(e.ContainerID); err != nil {
			return fmt.Errorf("OOM event: %w", err)
		}
		s.send(&eventstypes.TaskOOM{ContainerID: e.ContainerID})
		return nil
	}
	return fmt.Errorf("unexpected event %T: %w", ev, errdefs.ErrNotImplemented)
}
