package agent_test

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/ttrpc"
	"github.com/containerd/typeurl/v2"

	"github.com/raksh-project/raksh/agent"
	"github.com/raksh-project/raksh/agent/agenttest"
	agentapi "github.com/raksh-project/raksh/api/agent/v1"
	"github.com/raksh-project/raksh/internal/transport"
)

// serve runs svc behind agent.Serve on one end of a pipe and returns a
// ttrpc client on the other, as the shim has one.
func serve(t *testing.T, svc *agent.Service) *ttrpc.Client {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	host, guest := net.Pipe()
	go func() {
		sess, err := transport.Server(ctx, guest, 10*time.Millisecond)
		if err != nil {
			return
		}
		agent.Serve(ctx, sess, svc)
	}()
	sess, err := transport.Client(ctx, host)
	if err != nil {
		t.Fatal(err)
	}
	ctrl, err := sess.Open(ctx, transport.ControlStream)
	if err != nil {
		t.Fatal(err)
	}
	c := ttrpc.NewClient(ctrl)
	t.Cleanup(func() {
		c.Close()
		sess.Close()
		cancel()
	})
	return c
}

func TestInfo(t *testing.T) {
	svc := agent.NewService(t.TempDir(), agenttest.NewRuntime(t), agent.WithVersion("v9.9.9-test"),
		agent.WithTEEType(func(context.Context) string { return "sim" }))
	client := agentapi.NewAgentClient(serve(t, svc))
	ctx := context.Background()

	info, err := client.Info(ctx, &agentapi.InfoRequest{ApiVersion: agentapi.Version})
	if err != nil {
		t.Fatal(err)
	}
	if info.ApiVersion != agentapi.Version || info.AgentVersion != "v9.9.9-test" || info.TeeType != "sim" || info.KernelRelease == "" {
		t.Errorf("info %+v", info)
	}

	// A host speaking another version is refused, naming both versions.
	for _, host := range []string{"raksh.agent.v0", ""} {
		_, err = client.Info(ctx, &agentapi.InfoRequest{ApiVersion: host})
		if !errdefs.IsFailedPrecondition(errgrpc.ToNative(err)) {
			t.Fatalf("host version %q: got %v, want a failed precondition", host, err)
		}
		for _, v := range []string{`"` + host + `"`, `"` + agentapi.Version + `"`} {
			if !strings.Contains(err.Error(), v) {
				t.Errorf("error %q does not name version %s", err, v)
			}
		}
	}
}

func TestEventsStream(t *testing.T) {
	svc := agent.NewService(t.TempDir(), agenttest.NewRuntime(t))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Published before anyone streams: queued, not lost.
	svc.Publish(ctx, agentapi.TopicTaskOOM, &eventstypes.TaskOOM{ContainerID: "c1"})
	stream, err := agentapi.NewEventsClient(serve(t, svc)).Stream(ctx, &agentapi.StreamEventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	svc.Publish(ctx, agentapi.TopicTaskOOM, &eventstypes.TaskOOM{ContainerID: "c2"})
	for _, want := range []string{"c1", "c2"} {
		env, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		ev, err := typeurl.UnmarshalAny(env.Event)
		if err != nil {
			t.Fatal(err)
		}
		oom, ok := ev.(*eventstypes.TaskOOM)
		if !ok || oom.ContainerID != want || env.Topic != agentapi.TopicTaskOOM || env.Timestamp == nil {
			t.Fatalf("event %v (%T) on %q, want TaskOOM of %s on %s", ev, ev, env.Topic, want, agentapi.TopicTaskOOM)
		}
	}
}

// TestShutdownAfterSessionClose: the agent stops only once the shim, having
// had the answer to Shutdown, closed the session (no delay guessed for the
// answer to reach the host).
func TestShutdownAfterSessionClose(t *testing.T) {
	stopped := make(chan struct{})
	svc := agent.NewService(t.TempDir(), agenttest.NewRuntime(t), agent.WithShutdown(func() { close(stopped) }))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	host, guest := net.Pipe()
	served := make(chan error, 1)
	go func() {
		sess, err := transport.Server(ctx, guest, 10*time.Millisecond)
		if err != nil {
			served <- err
			return
		}
		served <- agent.Serve(ctx, sess, svc)
	}()
	sess, err := transport.Client(ctx, host)
	if err != nil {
		t.Fatal(err)
	}
	ctrl, err := sess.Open(ctx, transport.ControlStream)
	if err != nil {
		t.Fatal(err)
	}
	c := ttrpc.NewClient(ctrl)
	defer c.Close()
	if _, err := taskAPI.NewTTRPCTaskClient(c).Shutdown(ctx, &taskAPI.ShutdownRequest{Now: true}); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	select {
	case <-stopped:
		t.Fatal("the agent stopped before the shim closed the session")
	default:
	}
	sess.Close()
	select {
	case <-stopped:
	case <-time.After(30 * time.Second):
		t.Fatal("the agent did not stop after the shim closed the session")
	}
	if err := <-served; err != nil {
		t.Errorf("Serve after Shutdown: %v", err)
	}
}
