package agent

import (
	"context"
	"fmt"

	"github.com/containerd/containerd/api/types"
	"github.com/containerd/log"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentapi "github.com/raksh-project/raksh/api/agent/v1"
)

// Publish queues an asynchronous event for the shim under topic; it never
// blocks. Events queue (up to a bound) until the shim streams them.
func (s *Service) Publish(ctx context.Context, topic string, event any) {
	a, err := typeurl.MarshalAnyToProto(event)
	if err != nil {
		log.G(ctx).WithError(err).WithField("topic", topic).Error("dropping agent event: cannot marshal it")
		return
	}
	env := &types.Envelope{Timestamp: timestamppb.Now(), Topic: topic, Event: a}
	select {
	case s.events <- env:
	default:
		log.G(ctx).WithField("topic", topic).Warn("dropping agent event: queue full")
	}
}

// eventsService is the agent API's Events service.
type eventsService struct{ s *Service }

var _ agentapi.EventsService = (*eventsService)(nil)

// Stream sends the agent's events until the caller goes away.
func (e *eventsService) Stream(ctx context.Context, _ *agentapi.StreamEventsRequest, ss agentapi.Events_StreamServer) error {
	for {
		select {
		case env := <-e.s.events:
			if err := ss.Send(env); err != nil {
				// The event is lost with the stream; say so.
				log.G(ctx).WithError(err).WithField("topic", env.Topic).Warn("events stream closed; event not delivered")
				return fmt.Errorf("send event: %w", err)
			}
		case <-ctx.Done():
			return nil
		}
	}
}

func (s *Service) reap() {
	for e := range s.rt.Exits {
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
			p.proc.SetExited(e.Status)
		}
	}
}

// track registers pid for process p, delivering an exit that was reaped
// before the pid was known.
func (s *Service) track(p *process, pid int) {
	s.mu.Lock()
	status, exited := s.early[pid]
	if exited {
		delete(s.early, pid)
	} else {
		s.byPid[pid] = p
	}
	s.mu.Unlock()
	if exited {
		p.proc.SetExited(status)
	}
}
