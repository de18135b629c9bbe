package agent_test

import (
	"context"
	"encoding/json"
	"testing"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types"
	ptypes "github.com/containerd/containerd/v2/pkg/protobuf/types"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/raksh-project/raksh/agent"
	"github.com/raksh-project/raksh/agent/agenttest"
	agentapi "github.com/raksh-project/raksh/api/agent/v1"
	"github.com/raksh-project/raksh/internal/wire"
)

func specAny(t testing.TB, s *specs.Spec) *ptypes.Any {
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	a, err := typeurl.MarshalAnyToProto(&agentapi.CreateContainerOptions{Spec: b})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestCreateRejects checks the agent refuses malformed requests with the
// right class of error before touching the runtime.
func TestCreateRejects(t *testing.T) {
	svc := agent.NewService(t.TempDir(), agenttest.NewRuntime(t))
	ctx := context.Background()
	good := &specs.Spec{Process: &specs.Process{Args: []string{"true"}}}
	rootfs := []*types.Mount{{Type: wire.RootfsTar, Source: wire.RootfsStream("c1")}}
	for _, tc := range []struct {
		name string
		req  *taskAPI.CreateTaskRequest
		want error
	}{
		{"no spec", &taskAPI.CreateTaskRequest{ID: "c1", Rootfs: rootfs}, errdefs.ErrInvalidArgument},
		{"foreign spec type", &taskAPI.CreateTaskRequest{ID: "c1", Rootfs: rootfs, Options: &ptypes.Any{TypeUrl: "x", Value: []byte("{}")}}, errdefs.ErrInvalidArgument},
		{"untyped JSON spec", &taskAPI.CreateTaskRequest{ID: "c1", Rootfs: rootfs, Options: &ptypes.Any{TypeUrl: "raksh.io/oci+json", Value: []byte(`{"process":{"args":["true"]}}`)}}, errdefs.ErrInvalidArgument},
		{"spec without process", &taskAPI.CreateTaskRequest{ID: "c1", Rootfs: rootfs, Options: specAny(t, &specs.Spec{})}, errdefs.ErrInvalidArgument},
		{"path in id", &taskAPI.CreateTaskRequest{ID: "../c1", Rootfs: rootfs, Options: specAny(t, good)}, errdefs.ErrInvalidArgument},
		{"no rootfs", &taskAPI.CreateTaskRequest{ID: "c1", Options: specAny(t, good)}, errdefs.ErrInvalidArgument},
		{"rootfs of another container", &taskAPI.CreateTaskRequest{ID: "c1", Options: specAny(t, good),
			Rootfs: []*types.Mount{{Type: wire.RootfsTar, Source: wire.RootfsStream("c2")}}}, errdefs.ErrInvalidArgument},
		{"host mount type", &taskAPI.CreateTaskRequest{ID: "c1", Options: specAny(t, good),
			Rootfs: []*types.Mount{{Type: "overlay", Source: "overlay"}}}, errdefs.ErrInvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := svc.Create(ctx, tc.req)
			if err == nil {
				t.Fatal("accepted")
			}
			if got := errgrpc.ToNative(err); !errdefs.IsInvalidArgument(got) {
				t.Fatalf("error %v, want %v", got, tc.want)
			}
		})
	}
}

func TestUnknownTask(t *testing.T) {
	svc := agent.NewService(t.TempDir(), agenttest.NewRuntime(t))
	ctx := context.Background()
	if _, err := svc.Start(ctx, &taskAPI.StartRequest{ID: "ghost"}); !errdefs.IsNotFound(errgrpc.ToNative(err)) {
		t.Errorf("start: %v", err)
	}
	if _, err := svc.Exec(ctx, &taskAPI.ExecProcessRequest{ID: "ghost", ExecID: "e"}); !errdefs.IsNotFound(errgrpc.ToNative(err)) {
		t.Errorf("exec: %v", err)
	}
	if _, err := svc.Pause(ctx, &taskAPI.PauseRequest{ID: "ghost"}); !errdefs.IsNotImplemented(errgrpc.ToNative(err)) {
		t.Errorf("pause: %v", err)
	}
}
