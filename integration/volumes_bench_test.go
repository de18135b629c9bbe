//go:build integration

package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/raksh-project/raksh/integration/harness"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// benchConfigMap lays out a ConfigMap volume in dir as kubelet's atomic
// writer does (timestamped directory, ..data symlink, one symlink per key)
// and returns a function that swaps in new content the same way: the new
// directory is written, ..data is replaced by a rename, the old one removed.
func benchConfigMap(tb testing.TB, dir string, files map[string]string) func(map[string]string) {
	tb.Helper()
	gen := 0
	check := func(err error) {
		if err != nil {
			tb.Fatal(err)
		}
	}
	write := func(files map[string]string) {
		gen++
		ts := fmt.Sprintf("..2026_12_05_00_00_%02d.%d", gen%60, gen)
		check(os.MkdirAll(filepath.Join(dir, ts), 0o755))
		for k, v := range files {
			check(os.WriteFile(filepath.Join(dir, ts, k), []byte(v), 0o644))
		}
		old, _ := os.Readlink(filepath.Join(dir, "..data"))
		check(os.Symlink(ts, filepath.Join(dir, "..data_tmp")))
		check(os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")))
		for k := range files {
			os.Symlink("..data/"+k, filepath.Join(dir, k))
		}
		if old != "" {
			check(os.RemoveAll(filepath.Join(dir, old)))
		}
	}
	write(files)
	return write
}

// BenchmarkConfigMapVolume runs, in one run through containerd's CRI, a
// raksh pod (one container) without volumes and one with a ConfigMap-shaped
// volume of 10 files, and reports both start times (RunPodSandbox to
// StartContainer returned) and their ratio; then it swaps the ConfigMap's
// content as kubelet does, 5 times, and reports how long each update takes
// to be visible in the guest (polled with ExecSync every 100 ms), beside the
// mean ExecSync round trip that bounds the measurement's resolution.
func BenchmarkConfigMapVolume(b *testing.B) {
	h, rs := startCRI(b, harness.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()

	content := func(gen int) map[string]string {
		m := map[string]string{}
		for i := 0; i < 10; i++ {
			m[fmt.Sprintf("key%d", i)] = fmt.Sprintf("value-%d-gen-%d\n%s\n", i, gen, strings.Repeat("x", 1000))
		}
		return m
	}
	type pod struct{ sb, ctr string }
	start := func(name string, withCM bool) (pod, time.Duration, func(map[string]string)) {
		uid := "uid-" + name
		var mounts []*cri.Mount
		var swap func(map[string]string)
		if withCM {
			dir := filepath.Join(h.Dir, "pods", uid, "volumes", "kubernetes.io~configmap", "cfg")
			if err := os.MkdirAll(dir, 0o755); err != nil {
				b.Fatal(err)
			}
			swap = benchConfigMap(b, dir, content(1))
			mounts = []*cri.Mount{{ContainerPath: "/etc/config", HostPath: dir, Readonly: true}}
		}
		cfg := &cri.PodSandboxConfig{
			Metadata: &cri.PodSandboxMetadata{Name: name, Uid: uid, Namespace: "raksh-bench"},
			Linux: &cri.LinuxPodSandboxConfig{SecurityContext: &cri.LinuxSandboxSecurityContext{
				NamespaceOptions: &cri.NamespaceOption{Network: cri.NamespaceMode_NODE},
			}},
		}
		t0 := time.Now()
		sb, err := rs.RunPodSandbox(ctx, &cri.RunPodSandboxRequest{Config: cfg, RuntimeHandler: "raksh"})
		if err != nil {
			b.Fatalf("RunPodSandbox %s: %v", name, err)
		}
		c, err := rs.CreateContainer(ctx, &cri.CreateContainerRequest{PodSandboxId: sb.PodSandboxId, SandboxConfig: cfg,
			Config: &cri.ContainerConfig{Metadata: &cri.ContainerMetadata{Name: "c"}, Image: &cri.ImageSpec{Image: criBusybox},
				Command: []string{"/bin/sleep", "900"}, Mounts: mounts, Linux: &cri.LinuxContainerConfig{}}})
		if err != nil {
			b.Fatalf("CreateContainer %s: %v", name, err)
		}
		if _, err := rs.StartContainer(ctx, &cri.StartContainerRequest{ContainerId: c.ContainerId}); err != nil {
			b.Fatalf("StartContainer %s: %v", name, err)
		}
		return pod{sb.PodSandboxId, c.ContainerId}, time.Since(t0), swap
	}
	stop := func(p pod) {
		rs.StopPodSandbox(ctx, &cri.StopPodSandboxRequest{PodSandboxId: p.sb})
		rs.RemovePodSandbox(ctx, &cri.RemovePodSandboxRequest{PodSandboxId: p.sb})
	}
	execIn := func(id, script string) string {
		r, err := rs.ExecSync(ctx, &cri.ExecSyncRequest{ContainerId: id, Cmd: []string{"/bin/sh", "-c", script}, Timeout: 60})
		if err != nil {
			b.Fatalf("ExecSync %q: %v", script, err)
		}
		return string(r.Stdout)
	}

	p0, none, _ := start("bench-novol", false)
	stop(p0)
	p, withCM, swap := start("bench-cm10", true)
	defer stop(p)
	if out := execIn(p.ctr, "ls /etc/config | grep -c key; head -n1 /etc/config/key9"); out != "10\nvalue-9-gen-1\n" {
		b.Fatalf("configmap in the guest: %q", out)
	}
	b.ReportMetric(float64(none.Milliseconds()), "novol-start-ms")
	b.ReportMetric(float64(withCM.Milliseconds()), "cm10-start-ms")
	b.ReportMetric(float64(withCM)/float64(none), "cm10/novol-start")

	// ExecSync round trip: the resolution of the propagation figure.
	const rtN = 5
	t0 := time.Now()
	for i := 0; i < rtN; i++ {
		execIn(p.ctr, "true")
	}
	rt := time.Since(t0) / rtN

	const updates = 5
	var total, worst time.Duration
	for gen := 2; gen < 2+updates; gen++ {
		want := fmt.Sprintf("value-9-gen-%d\n", gen)
		t1 := time.Now()
		swap(content(gen))
		for {
			if out := execIn(p.ctr, "head -n1 /etc/config/key9"); out == want {
				break
			}
			if time.Since(t1) > time.Minute {
				b.Fatalf("configmap update %d not in the guest after a minute", gen)
			}
			time.Sleep(100 * time.Millisecond)
		}
		d := time.Since(t1)
		total += d
		if d > worst {
			worst = d
		}
	}
	b.ReportMetric(float64(total.Milliseconds())/updates, "update-mean-ms")
	b.ReportMetric(float64(worst.Milliseconds()), "update-max-ms")
	b.ReportMetric(float64(rt.Milliseconds()), "execsync-rtt-ms")
}
