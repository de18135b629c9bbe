//go:build linux

package snapshotter

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/plugins/snapshots/overlay"
	"golang.org/x/sys/unix"
)

// benchTmpfs mounts a tmpfs for the benchmark (root only) so disk speed does
// not drown the snapshotter's own cost.
func benchTmpfs(b *testing.B) string {
	b.Helper()
	requiresRoot(b)
	dir, err := os.MkdirTemp("", "raksh-sn-bench-")
	if err != nil {
		b.Fatal(err)
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=2g"); err != nil {
		b.Skipf("cannot mount tmpfs: %v", err)
	}
	b.Cleanup(func() {
		unix.Unmount(dir, unix.MNT_DETACH)
		os.RemoveAll(dir)
	})
	return dir
}

type chainTimes struct{ prepareCommit, mounts, remove time.Duration }

// chainWorkload prepares and commits a 128-layer chain (one small file
// written straight into each layer's upper directory), prepares a container
// snapshot on top, gets and actually mounts its 128-lowerdir overlay, then
// removes everything top down.
func chainWorkload(ctx context.Context, sn snapshots.Snapshotter, work, prefix string) (chainTimes, error) {
	const layers = 128
	var t chainTimes
	start := time.Now()
	parent := ""
	for i := 0; i < layers; i++ {
		key := fmt.Sprintf("%s-active-%d", prefix, i)
		m, err := sn.Prepare(ctx, key, parent)
		if err != nil {
			return t, err
		}
		upper := m[0].Source
		for _, o := range m[0].Options {
			if len(o) > 9 && o[:9] == "upperdir=" {
				upper = o[9:]
			}
		}
		if err := os.WriteFile(filepath.Join(upper, fmt.Sprintf("f%d", i)), []byte("layer"), 0o644); err != nil {
			return t, err
		}
		name := fmt.Sprintf("%s-layer-%d", prefix, i)
		if err := sn.Commit(ctx, name, key); err != nil {
			return t, err
		}
		parent = name
	}
	t.prepareCommit = time.Since(start)

	start = time.Now()
	top := prefix + "-container"
	if _, err := sn.Prepare(ctx, top, parent); err != nil {
		return t, err
	}
	m, err := sn.Mounts(ctx, top)
	if err != nil {
		return t, err
	}
	target := filepath.Join(work, prefix)
	os.MkdirAll(target, 0o755)
	if err := mount.All(m, target); err != nil {
		return t, err
	}
	if _, err := os.Stat(filepath.Join(target, "f0")); err != nil {
		return t, fmt.Errorf("bottom layer not visible: %w", err)
	}
	if err := mount.UnmountAll(target, 0); err != nil {
		return t, err
	}
	t.mounts = time.Since(start)

	start = time.Now()
	if err := sn.Remove(ctx, top); err != nil {
		return t, err
	}
	for i := layers - 1; i >= 0; i-- {
		if err := sn.Remove(ctx, fmt.Sprintf("%s-layer-%d", prefix, i)); err != nil {
			return t, err
		}
	}
	t.remove = time.Since(start)
	return t, nil
}

// BenchmarkChain128 runs the same 128-layer workload, in one run, on
// containerd's in-process overlayfs snapshotter, on raksh-snapshotter
// in-process, and on raksh-snapshotter through its gRPC socket with
// containerd's proxy client (what containerd uses), and reports each and the
// ratios to overlayfs.
func BenchmarkChain128(b *testing.B) {
	dir := benchTmpfs(b)
	ctx := namespaces.WithNamespace(context.Background(), "bench")
	ov, err := overlay.NewSnapshotter(filepath.Join(dir, "overlay"))
	if err != nil {
		b.Fatal(err)
	}
	defer ov.Close()
	rk, err := New(filepath.Join(dir, "raksh"))
	if err != nil {
		b.Fatal(err)
	}
	defer rk.Close()
	grpcSn, _, closeFn := startServer(b, filepath.Join(dir, "raksh-grpc"))
	defer closeFn()
	work := filepath.Join(dir, "mnt")

	backends := []struct {
		name string
		sn   snapshots.Snapshotter
	}{{"overlayfs", ov}, {"raksh", rk}, {"raksh-grpc", grpcSn}}
	totals := make([]chainTimes, len(backends))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for j, be := range backends {
			t, err := chainWorkload(ctx, be.sn, work, fmt.Sprintf("%s-%d", be.name, i))
			if err != nil {
				b.Fatalf("%s: %v", be.name, err)
			}
			totals[j].prepareCommit += t.prepareCommit
			totals[j].mounts += t.mounts
			totals[j].remove += t.remove
		}
	}
	b.StopTimer()
	n := float64(b.N)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / n }
	for j, be := range backends {
		b.ReportMetric(ms(totals[j].prepareCommit), be.name+"-prep+commit-ms")
		b.ReportMetric(ms(totals[j].mounts), be.name+"-mount-ms")
		b.ReportMetric(ms(totals[j].remove), be.name+"-remove-ms")
	}
	tot := func(t chainTimes) float64 { return float64(t.prepareCommit + t.mounts + t.remove) }
	b.ReportMetric(tot(totals[1])/tot(totals[0]), "raksh/overlayfs")
	b.ReportMetric(tot(totals[2])/tot(totals[0]), "raksh-grpc/overlayfs")
}
