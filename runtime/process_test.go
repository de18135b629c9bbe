package runtime

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"syscall"
	"testing"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	ptypes "github.com/containerd/containerd/v2/pkg/protobuf/types"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// TestVMDeathWithWaitsInFlight kills the fake VM while Wait, State, Kill,
// Start and Delete calls are in flight, many times. The exit of each
// process must be recorded and published exactly once (the agent's Wait
// answer and the VM's death both try), every Wait must return, and the
// container must be deletable afterwards. Run it under -race.
func TestVMDeathWithWaitsInFlight(t *testing.T) {
	iterations := 40
	if testing.Short() {
		iterations = 10
	}
	for i := range iterations {
		t.Run(fmt.Sprint(i), func(t *testing.T) { vmDeathRound(t, i) })
	}
}

func vmDeathRound(t *testing.T, round int) {
	e := newEnv(t)
	b := e.bundle(t, "c", nil, "/bin/sleep", "5")
	if _, err := e.svc.Create(e.ctx, &taskAPI.CreateTaskRequest{ID: "c", Bundle: b}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.Start(e.ctx, &taskAPI.StartRequest{ID: "c"}); err != nil {
		t.Fatal(err)
	}
	proc, _ := json.Marshal(specs.Process{Args: []string{"/bin/sleep", "5"}, Cwd: "/"})
	if _, err := e.svc.Exec(e.ctx, &taskAPI.ExecProcessRequest{ID: "c", ExecID: "e",
		Spec: &ptypes.Any{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Process", Value: proc}}); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(e.ctx, 20*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	start := make(chan struct{})
	run := func(f func()) {
		wg.Add(1)
		go func() { defer wg.Done(); <-start; f() }()
	}
	for _, exec := range []string{"", "e", "", "e"} {
		run(func() {
			_, err := e.svc.Wait(ctx, &taskAPI.WaitRequest{ID: "c", ExecID: exec})
			// The exec may be deleted (a concurrent Delete) before this
			// Wait looks it up.
			if err != nil && !(exec != "" && errdefs.IsNotFound(errgrpc.ToNative(err))) {
				errs <- fmt.Errorf("wait %q: %w", exec, err)
			}
		})
	}
	for range 2 {
		run(func() { e.svc.Start(ctx, &taskAPI.StartRequest{ID: "c", ExecID: "e"}) })
	}
	run(func() {
		for range 20 {
			e.svc.State(ctx, &taskAPI.StateRequest{ID: "c"})
			e.svc.State(ctx, &taskAPI.StateRequest{ID: "c", ExecID: "e"})
		}
	})
	run(func() {
		for range 5 {
			e.svc.Delete(ctx, &taskAPI.DeleteRequest{ID: "c", ExecID: "e"})
		}
	})
	if round%2 == 0 {
		// Half the rounds, the process also exits on its own while the VM dies.
		run(func() { e.svc.Kill(ctx, &taskAPI.KillRequest{ID: "c", Signal: uint32(syscall.SIGKILL)}) })
	}
	run(e.vm.kill)
	close(start)

	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatal("calls still in flight 20s after the VM died")
	}
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	// Both processes are stopped; the container deletes cleanly.
	for _, exec := range []string{"", "e"} {
		st, err := e.svc.State(ctx, &taskAPI.StateRequest{ID: "c", ExecID: exec})
		if err != nil {
			continue // the exec may have been deleted
		}
		if st.Status.String() != "STOPPED" {
			t.Errorf("process %q after VM death: %s", exec, st.Status)
		}
	}
	if _, err := e.svc.Delete(ctx, &taskAPI.DeleteRequest{ID: "c"}); err != nil {
		t.Fatalf("delete after VM death: %v", err)
	}

	// Each process's exit is published at most once, the init's exactly once.
	deadline := time.Now().Add(5 * time.Second)
	for {
		e.rec.mu.Lock()
		exits := map[string]int{}
		deleted := false
		for _, ev := range e.rec.events {
			switch ev := ev.(type) {
			case *eventstypes.TaskExit:
				exits[ev.ID]++
			case *eventstypes.TaskDelete:
				deleted = true
			}
		}
		e.rec.mu.Unlock()
		if deleted || time.Now().After(deadline) {
			if exits["c"] != 1 || exits["e"] > 1 {
				t.Fatalf("exit events per process %v, want c once and e at most once", exits)
			}
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}
