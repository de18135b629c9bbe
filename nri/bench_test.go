package nri

import (
	"context"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/containerd/log"
	nri "github.com/containerd/nri/pkg/adaptation"
	"github.com/containerd/nri/pkg/api"
	"github.com/containerd/nri/pkg/stub"
)

// noopPlugin subscribes to CreateContainer and adjusts nothing: the
// baseline cost of one NRI plugin round trip.
type noopPlugin struct{}

func (noopPlugin) CreateContainer(context.Context, *api.PodSandbox, *api.Container) (*api.ContainerAdjustment, []*api.ContainerUpdate, error) {
	return nil, nil, nil
}

// startBareRuntime starts an NRI runtime without validators.
func startBareRuntime(b *testing.B, dir string) *runtime {
	b.Helper()
	rt := &runtime{t: b, dir: dir, sock: filepath.Join(dir, "nri.sock")}
	r, err := nri.New("raksh-bench-runtime", "v0.0.0",
		func(ctx context.Context, cb nri.SyncCB) error { _, err := cb(ctx, nil, nil); return err },
		func(context.Context, []*nri.ContainerUpdate) ([]*nri.ContainerUpdate, error) { return nil, nil },
		nri.WithPluginPath(filepath.Join(dir, "plugins")),
		nri.WithPluginConfigPath(filepath.Join(dir, "conf.d")),
		nri.WithSocketPath(rt.sock),
	)
	if err != nil {
		b.Fatal(err)
	}
	if err := r.Start(); err != nil {
		b.Fatal(err)
	}
	rt.r = r
	b.Cleanup(rt.stop)
	return rt
}

// waitPlugin waits until the runtime relays CreateContainer to a plugin
// that adjusts (or not) the probe.
func waitPlugin(b *testing.B, rt *runtime, ready func(*api.ContainerAdjustment) bool, pod *api.PodSandbox, mk func() *api.Container) {
	b.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		adj, err := rt.create(context.Background(), pod, mk())
		if err == nil && ready(adj) {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("plugin not ready: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// BenchmarkCreateContainer measures the CreateContainer round trip through
// NRI's runtime side (what containerd embeds) to an external plugin over
// its socket, interleaving in one run: a no-op plugin (baseline), our
// plugin on a runc pod (untouched), and our plugin sealing a raksh pod on
// the node (args, 4 env, a secret volume of 2 files, P-256 recipient). It
// reports p50 and p99 of each and the ratios to the baseline.
func BenchmarkCreateContainer(b *testing.B) {
	// Per-container info logs would flood the benchmark output.
	if err := log.SetLevel("warn"); err != nil {
		b.Fatal(err)
	}
	defer log.SetLevel("info")
	f := newFixture(b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	base := startBareRuntime(b, socketDir(b))
	s, err := stub.New(noopPlugin{}, stub.WithPluginName("noop"), stub.WithPluginIdx("10"), stub.WithSocketPath(base.sock))
	if err != nil {
		b.Fatal(err)
	}
	if err := s.Start(ctx); err != nil {
		b.Fatal(err)
	}
	defer s.Stop()

	ours := startBareRuntime(b, socketDir(b))
	p, err := New(WithConfig([]byte(f.config(""))))
	if err != nil {
		b.Fatal(err)
	}
	go Run(ctx, p, RunOpts{StubOptions: []stub.Option{stub.WithSocketPath(ours.sock)}})

	raksh, runc := f.pod("raksh"), f.pod("runc")
	runc.Name, runc.Id = "web-runc", "sandbox-runc"
	waitPlugin(b, base, func(*api.ContainerAdjustment) bool { return true }, raksh, f.container)
	waitPlugin(b, ours, func(a *api.ContainerAdjustment) bool { return len(a.GetAnnotations()) > 0 }, raksh, f.container)

	var tBase, tUntouched, tSealed []time.Duration
	measure := func(rt *runtime, pod *api.PodSandbox, into *[]time.Duration) {
		ctr := f.container()
		start := time.Now()
		if _, err := rt.r.CreateContainer(ctx, &api.CreateContainerRequest{Pod: pod, Container: ctr}); err != nil {
			b.Fatal(err)
		}
		*into = append(*into, time.Since(start))
	}
	for _, rt := range []*runtime{base, ours} {
		for _, pod := range []*api.PodSandbox{raksh, runc} {
			if err := rt.r.RunPodSandbox(ctx, &api.RunPodSandboxRequest{Pod: pod}); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.ResetTimer()
	for b.Loop() {
		measure(base, raksh, &tBase)
		measure(ours, runc, &tUntouched)
		measure(ours, raksh, &tSealed)
	}
	b.StopTimer()

	pct := func(d []time.Duration, q float64) float64 {
		slices.Sort(d)
		return float64(d[min(len(d)-1, int(q*float64(len(d))))].Microseconds())
	}
	bp50, bp99 := pct(tBase, 0.50), pct(tBase, 0.99)
	up50, up99 := pct(tUntouched, 0.50), pct(tUntouched, 0.99)
	sp50, sp99 := pct(tSealed, 0.50), pct(tSealed, 0.99)
	b.ReportMetric(bp50, "noop-p50-µs")
	b.ReportMetric(bp99, "noop-p99-µs")
	b.ReportMetric(up50, "untouched-p50-µs")
	b.ReportMetric(up99, "untouched-p99-µs")
	b.ReportMetric(sp50, "sealed-p50-µs")
	b.ReportMetric(sp99, "sealed-p99-µs")
	if bp50 > 0 && bp99 > 0 {
		b.ReportMetric(sp50/bp50, "sealed/noop-p50")
		b.ReportMetric(sp99/bp99, "sealed/noop-p99")
		b.ReportMetric(up50/bp50, "untouched/noop-p50")
	}
}
