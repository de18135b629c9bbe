package runtime

import (
	"context"
	"errors"
	"strings"
	"testing"

	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/typeurl/v2"

	agentapi "github.com/raksh-project/raksh/api/agent/v1"
)

// fakeAgent answers Info as an agent speaking version would.
type fakeAgent struct {
	version string
	err     error
}

func (f *fakeAgent) Info(ctx context.Context, r *agentapi.InfoRequest) (*agentapi.InfoResponse, error) {
	if f.err != nil {
		return nil, f.err
	}
	return &agentapi.InfoResponse{ApiVersion: f.version, AgentVersion: "test"}, nil
}

func TestCheckAgentVersion(t *testing.T) {
	ctx := context.Background()
	if _, err := checkAgent(ctx, &fakeAgent{version: agentapi.Version}); err != nil {
		t.Fatalf("same version refused: %v", err)
	}
	for _, tc := range []struct {
		name  string
		agent *fakeAgent
		want  []string
	}{
		{"older agent", &fakeAgent{version: "raksh.agent.v0"}, []string{`"raksh.agent.v0"`, `"` + agentapi.Version + `"`}},
		{"agent without Info", &fakeAgent{err: errgrpc.ToGRPC(errdefs.ErrNotImplemented)}, []string{"predates", agentapi.Version}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := checkAgent(ctx, tc.agent)
			if !errdefs.IsFailedPrecondition(err) {
				t.Fatalf("got %v, want a failed precondition", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %s", err, w)
				}
			}
		})
	}
}

// TestAgentInfoOverVM checks the shim accepts an agent of its own version
// and the real agent refuses a host of another.
func TestAgentInfoOverVM(t *testing.T) {
	e := newEnv(t)
	cfg, err := e.svc.config(nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := e.svc.ensureVM(e.ctx, cfg, nil); err != nil {
		t.Fatalf("shim and agent of the same version: %v", err)
	}
	_, err = agentapi.NewAgentClient(e.vm.Client()).Info(e.ctx, &agentapi.InfoRequest{ApiVersion: "raksh.agent.v2"})
	if err := errgrpc.ToNative(err); !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), `"raksh.agent.v2"`) {
		t.Fatalf("agent answered a host of another version: %v", err)
	}
}

func TestForwardAgentEvent(t *testing.T) {
	e := newEnv(t)
	b := e.bundle(t, "c1", nil, "/bin/sleep", "30")
	if _, err := e.svc.Create(e.ctx, &taskAPI.CreateTaskRequest{ID: "c1", Bundle: b}); err != nil {
		t.Fatal(err)
	}
	oom := func(id string) *types.Envelope {
		a, err := typeurl.MarshalAnyToProto(&eventstypes.TaskOOM{ContainerID: id})
		if err != nil {
			t.Fatal(err)
		}
		return &types.Envelope{Topic: agentapi.TopicTaskOOM, Event: a}
	}
	exit, _ := typeurl.MarshalAnyToProto(&eventstypes.TaskExit{ContainerID: "c1"})
	for _, tc := range []struct {
		name string
		env  *types.Envelope
		want error
	}{
		{"oom", oom("c1"), nil},
		{"oom of another pod's container", oom("other"), errdefs.ErrNotFound},
		{"wrong topic", &types.Envelope{Topic: "/tasks/exit", Event: oom("c1").Event}, errdefs.ErrInvalidArgument},
		{"event the agent may not send", &types.Envelope{Topic: "/tasks/exit", Event: exit}, errdefs.ErrNotImplemented},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := e.svc.forwardAgentEvent(tc.env)
			if (tc.want == nil) != (err == nil) || (tc.want != nil && !errors.Is(err, tc.want)) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
	e.rec.waitTopics(t, "/tasks/create", "/tasks/oom")

	// From the agent, through the Events stream.
	e.vm.agent.Load().Publish(e.ctx, agentapi.TopicTaskOOM, &eventstypes.TaskOOM{ContainerID: "c1"})
	e.rec.waitTopics(t, "/tasks/create", "/tasks/oom", "/tasks/oom")
}
