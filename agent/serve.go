package agent

import (
	"context"
	"net"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
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
	err = server.Serve(ctx, l)
	<-sess.Done()
	return err
}

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
