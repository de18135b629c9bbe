package agent_test

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/raksh-project/raksh/agent"
	"github.com/raksh-project/raksh/agent/agenttest"
	agentapi "github.com/raksh-project/raksh/api/agent/v1"
	"github.com/raksh-project/raksh/internal/wire"
)

// sendRootfs streams an empty rootfs archive for container id.
func sendRootfs(ctx context.Context, svc *agent.Service, id string) {
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	tw.WriteHeader(&tar.Header{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755})
	tw.Close()
	g, h := net.Pipe()
	svc.HandleStream(ctx, wire.RootfsStream(id), g)
	go func() { h.Write(tb.Bytes()); h.Close() }()
}

// stream hands the agent a stream called name and returns the shim's end.
func stream(ctx context.Context, svc *agent.Service, name string) net.Conn {
	g, h := net.Pipe()
	svc.HandleStream(ctx, name, g)
	return h
}

// TestProcessLifecycle drives a container and an exec through containerd's
// process package (with the fake runc): stdin from the shim's stream reaches
// the process and its end is the process's EOF, output is drained before
// Wait answers, a second Start and a signal after the exit are refused, and
// Delete removes the guest's fifos.
func TestProcessLifecycle(t *testing.T) {
	root := t.TempDir()
	svc := agent.NewService(root, agenttest.NewRuntime(t))
	ctx := context.Background()
	sendRootfs(ctx, svc, "c1")
	in, out := stream(ctx, svc, "in"), stream(ctx, svc, "out")
	got := make(chan []byte, 1)
	go func() { b, _ := io.ReadAll(out); got <- b }()
	spec := &specs.Spec{Process: &specs.Process{Args: []string{"sh", "-c", "cat; echo done"}, Env: []string{"PATH=/usr/bin:/bin"}}}
	if _, err := svc.Create(ctx, &taskAPI.CreateTaskRequest{ID: "c1", Stdin: "in", Stdout: "out", Options: specAny(t, spec),
		Rootfs: []*types.Mount{{Type: wire.RootfsTar, Source: wire.RootfsStream("c1")}}}); err != nil {
		t.Fatal(err)
	}
	if fifos, _ := filepath.Glob(root + "-io/*/std*"); len(fifos) != 3 {
		t.Fatalf("fifos %v, want stdin, stdout and stderr", fifos)
	}
	if _, err := svc.Start(ctx, &taskAPI.StartRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Start(ctx, &taskAPI.StartRequest{ID: "c1"}); !errdefs.IsFailedPrecondition(errgrpc.ToNative(err)) {
		t.Fatalf("second start: %v", err)
	}
	st, err := svc.State(ctx, &taskAPI.StateRequest{ID: "c1"})
	if err != nil || st.Status.String() != "RUNNING" {
		t.Fatalf("state %v, %v", st.GetStatus(), err)
	}
	in.Write([]byte("hello\n"))
	in.Close()
	w, err := svc.Wait(ctx, &taskAPI.WaitRequest{ID: "c1"})
	if err != nil || w.ExitStatus != 0 {
		t.Fatalf("wait: %v, status %d", err, w.GetExitStatus())
	}
	if b := <-got; string(b) != "hello\ndone\n" {
		t.Fatalf("stdout %q", b)
	}
	if _, err := svc.Kill(ctx, &taskAPI.KillRequest{ID: "c1", Signal: uint32(syscall.SIGTERM)}); !errdefs.IsNotFound(errgrpc.ToNative(err)) {
		t.Fatalf("kill after the exit: %v", err)
	}
	proc, _ := json.Marshal(specs.Process{Args: []string{"true"}})
	a, _ := typeurl.MarshalAnyToProto(&agentapi.ExecProcessOptions{Process: proc})
	if _, err := svc.Exec(ctx, &taskAPI.ExecProcessRequest{ID: "c1", ExecID: "e1", Spec: a}); err == nil {
		t.Fatal("exec into a stopped container accepted")
	}
	if _, err := svc.Delete(ctx, &taskAPI.DeleteRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	if left, _ := os.ReadDir(root + "-io"); len(left) != 0 {
		t.Fatalf("fifo directories left: %v", left)
	}
}

// TestExecLifecycle: an exec runs beside the init, its output is drained at
// Wait, Delete of a running exec is refused and Delete of the container kills
// what still runs.
func TestExecLifecycle(t *testing.T) {
	svc := agent.NewService(t.TempDir(), agenttest.NewRuntime(t))
	ctx := context.Background()
	sendRootfs(ctx, svc, "c2")
	spec := &specs.Spec{Process: &specs.Process{Args: []string{"sleep", "30"}, Env: []string{"PATH=/usr/bin:/bin"}}}
	if _, err := svc.Create(ctx, &taskAPI.CreateTaskRequest{ID: "c2", Options: specAny(t, spec),
		Rootfs: []*types.Mount{{Type: wire.RootfsTar, Source: wire.RootfsStream("c2")}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Start(ctx, &taskAPI.StartRequest{ID: "c2"}); err != nil {
		t.Fatal(err)
	}
	exec := func(id string, args ...string) {
		t.Helper()
		proc, _ := json.Marshal(specs.Process{Args: args, Env: []string{"PATH=/usr/bin:/bin"}})
		a, _ := typeurl.MarshalAnyToProto(&agentapi.ExecProcessOptions{Process: proc})
		if _, err := svc.Exec(ctx, &taskAPI.ExecProcessRequest{ID: "c2", ExecID: id, Stdout: "out-" + id, Spec: a}); err != nil {
			t.Fatal(err)
		}
	}
	exec("e1", "sh", "-c", "echo exec-out; exit 4")
	out := stream(ctx, svc, "out-e1")
	got := make(chan []byte, 1)
	go func() { b, _ := io.ReadAll(out); got <- b }()
	if _, err := svc.Start(ctx, &taskAPI.StartRequest{ID: "c2", ExecID: "e1"}); err != nil {
		t.Fatal(err)
	}
	w, err := svc.Wait(ctx, &taskAPI.WaitRequest{ID: "c2", ExecID: "e1"})
	if err != nil || w.ExitStatus != 4 {
		t.Fatalf("exec wait: %v, status %d", err, w.GetExitStatus())
	}
	if b := <-got; string(b) != "exec-out\n" {
		t.Fatalf("exec stdout %q", b)
	}
	if _, err := svc.Delete(ctx, &taskAPI.DeleteRequest{ID: "c2", ExecID: "e1"}); err != nil {
		t.Fatal(err)
	}
	exec("e2", "sleep", "30")
	stream(ctx, svc, "out-e2")
	if _, err := svc.Start(ctx, &taskAPI.StartRequest{ID: "c2", ExecID: "e2"}); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Delete(ctx, &taskAPI.DeleteRequest{ID: "c2", ExecID: "e2"}); !errdefs.IsFailedPrecondition(errgrpc.ToNative(err)) {
		t.Fatalf("delete of a running exec: %v", err)
	}
	d, err := svc.Delete(ctx, &taskAPI.DeleteRequest{ID: "c2"})
	if err != nil || d.ExitStatus != 128+uint32(syscall.SIGKILL) {
		t.Fatalf("delete of a running container: %v, status %d", err, d.GetExitStatus())
	}
}
