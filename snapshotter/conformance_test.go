//go:build linux

package snapshotter

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/proxy"
	"github.com/containerd/containerd/v2/core/snapshots/testsuite"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

func requiresRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("requires root (overlay and bind mounts)")
	}
}

// TestConformance runs containerd's snapshotter conformance suite against
// the snapshotter in-process.
func TestConformance(t *testing.T) {
	requiresRoot(t)
	testsuite.SnapshotterSuite(t, "overlayfs", func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		sn, err := New(root, WithGuestPull())
		if err != nil {
			return nil, nil, err
		}
		return sn, sn.Close, nil
	})
}

// startServer serves a snapshotter rooted at root on a unix socket and
// returns containerd's proxy client for it.
func startServer(tb testing.TB, root string, opts ...Opt) (snapshots.Snapshotter, *Snapshotter, func() error) {
	tb.Helper()
	sn, err := New(root, opts...)
	if err != nil {
		tb.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "raksh-sn-sock-")
	if err != nil {
		tb.Fatal(err)
	}
	sock := filepath.Join(dir, "s.sock")
	l, err := Listen(sock)
	if err != nil {
		tb.Fatal(err)
	}
	srv := NewGRPCServer(sn)
	go srv.Serve(l)
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		tb.Fatal(err)
	}
	client := proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "raksh")
	return client, sn, func() error {
		conn.Close()
		srv.GracefulStop()
		os.RemoveAll(dir)
		return sn.Close()
	}
}

// TestConformanceGRPC runs containerd's snapshotter conformance suite
// through the gRPC socket with containerd's proxy snapshotter client, the
// way containerd's proxy_plugins use it.
func TestConformanceGRPC(t *testing.T) {
	requiresRoot(t)
	testsuite.SnapshotterSuite(t, "overlayfs", func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		client, _, closeFn := startServer(t, root, WithGuestPull())
		return client, closeFn, nil
	})
}
