package runtime

import (
	"context"
	"testing"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
)

// TestStateDuringCreate: containerd asks for State (ctr task ls) while a
// Create is still booting the VM or unsealing in the guest; the container
// is registered but has no init process yet. That answers NotFound instead
// of crashing the shim.
func TestStateDuringCreate(t *testing.T) {
	s := &Service{containers: map[string]*hostContainer{"booting": {id: "booting", execs: map[string]*hostProcess{}}}}
	for name, call := range map[string]func() error{
		"state": func() error {
			_, err := s.State(context.Background(), &taskAPI.StateRequest{ID: "booting"})
			return err
		},
		"wait": func() error {
			_, err := s.Wait(context.Background(), &taskAPI.WaitRequest{ID: "booting"})
			return err
		},
	} {
		if err := call(); !errdefs.IsNotFound(errgrpc.ToNative(err)) {
			t.Errorf("%s during create: %v, want not found", name, err)
		}
	}
}
