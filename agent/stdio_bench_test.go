package agent_test

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"testing"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/raksh-project/raksh/agent"
	"github.com/raksh-project/raksh/agent/agenttest"
	"github.com/raksh-project/raksh/internal/wire"
)

// BenchmarkStdoutThroughput measures a process's stdout through the agent
// to the shim's stream: here runc's pipe, the process package's copy into
// the guest fifo and the agent's copy from the fifo to the stream (a
// net.Pipe standing for the yamux stream). The process is a host process
// (the fake runc), so the figure is the agent's copying, without a VM.
func BenchmarkStdoutThroughput(b *testing.B) {
	const size = 256 << 20
	svc := agent.NewService(b.TempDir(), benchRuntime(b))
	ctx := context.Background()
	b.SetBytes(size)
	for i := range b.N {
		id := fmt.Sprintf("b%d", i)
		// An empty rootfs archive.
		var tb bytes.Buffer
		tw := tar.NewWriter(&tb)
		tw.WriteHeader(&tar.Header{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755})
		tw.Close()
		g, h := net.Pipe()
		svc.HandleStream(ctx, wire.RootfsStream(id), g)
		go func() { h.Write(tb.Bytes()); h.Close() }()
		og, oh := net.Pipe()
		svc.HandleStream(ctx, "out-"+id, og)
		got := make(chan int64, 1)
		go func() { n, _ := io.Copy(io.Discard, oh); got <- n }()

		spec := &specs.Spec{Process: &specs.Process{Args: []string{"head", "-c", fmt.Sprint(size), "/dev/zero"}, Env: []string{"PATH=/usr/bin:/bin"}}}
		if _, err := svc.Create(ctx, &taskAPI.CreateTaskRequest{ID: id, Stdout: "out-" + id, Options: specAny(b, spec),
			Rootfs: []*types.Mount{{Type: wire.RootfsTar, Source: wire.RootfsStream(id)}}}); err != nil {
			b.Fatal(err)
		}
		if _, err := svc.Start(ctx, &taskAPI.StartRequest{ID: id}); err != nil {
			b.Fatal(err)
		}
		w, err := svc.Wait(ctx, &taskAPI.WaitRequest{ID: id})
		if err != nil || w.ExitStatus != 0 {
			b.Fatalf("wait: %v, status %d", err, w.GetExitStatus())
		}
		if n := <-got; n != size {
			b.Fatalf("stdout: %d bytes, want %d", n, size)
		}
		if _, err := svc.Delete(ctx, &taskAPI.DeleteRequest{ID: id}); err != nil {
			b.Fatal(err)
		}
	}
}

func benchRuntime(b *testing.B) *agent.Runtime { return agenttest.NewRuntime(b) }
