package agent

import (
	"context"
	"net"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"

	agentapi "github.com/raksh-project/raksh/api/agent/v1"
	"github.com/raksh-project/raksh/internal/transport"
)

// Serve serves the task API on the session's control streams and hands
// every other stream to the service, until the session ends.
func Serve(ctx context.Context, sess transport.Session, svc *Service) error {
	server, err := ttrpc.NewServer()
	if err != nil {
		return err
	}
	defer server.Close()
	taskAPI.RegisterTTRPCTaskService(server, svc)
	agentapi.RegisterAgentService(server, &agentService{svc})
	agentapi.RegisterEventsService(server, &eventsService{svc})
	agentapi.RegisterVolumesService(server, &volumesService{svc})
	agentapi.RegisterInitDataService(server, &initDataService{svc})
	agentapi.RegisterNetworkService(server, &networkService{svc})
	agentapi.RegisterLayersService(server, &layersService{svc})
	l := newChanListener()
	go func() {
		defer l.Close()
		for {
			name, c, err := sess.Accept()
			if err != nil {
				return
			}
			if name == transport.ControlStream {
				select {
				case l.conns <- c:
				case <-l.closed:
					c.Close()
					return
				}
				continue
			}
			svc.HandleStream(ctx, name, c)
		}
	}()
	go func() {
		select {
		case <-svc.shutdownReq:
		case <-sess.Done():
			return
		}
		// The shim closes the session once it has the answer to Shutdown;
		// if it never does, stop anyway.
		select {
		case <-sess.Done():
		case <-time.After(shutdownGrace):
			log.G(ctx).WithField("grace", shutdownGrace).Warn("the shim did not close the session after Shutdown: closing it")
			sess.Close()
		}
	}()
	err = server.Serve(ctx, l)
	<-sess.Done()
	select {
	case <-svc.shutdownReq:
		if svc.shutdown != nil {
			svc.shutdown()
		}
		return nil
	default:
	}
	return err
}

// shutdownGrace bounds how long the agent waits, after answering Shutdown,
// for the shim to close the session.
const shutdownGrace = 5 * time.Second

// chanListener is a net.Listener fed with control streams.
type chanListener struct {
	conns  chan net.Conn
	closed chan struct{}
}

func newChanListener() *chanListener {
	return &chanListener{conns: make(chan net.Conn), closed: make(chan struct{})}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	select {
	case <-l.closed:
	default:
		close(l.closed)
	}
	return nil
}

func (l *chanListener) Addr() net.Addr { return &net.UnixAddr{Name: "raksh", Net: "raksh"} }
