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
)

// BenchmarkVirtioFSThroughput compares, in one run, sequential write and
// read throughput (busybox dd, 1 MiB blocks) of the same node directory
// bind-mounted into a runc container and shared into a raksh guest with
// virtio-fs (shared_fs = "virtio-fs"). The read is of a file the node
// wrote beforehand (in the node's page cache for both, never in the
// guest's); the write is a new file with fsync.
func BenchmarkVirtioFSThroughput(b *testing.B) {
	const sizeMiB = 64
	h := startWithBusybox(b, harness.Options{RuntimeConfig: "shared_fs = \"virtio-fs\"\n"})
	dir := filepath.Join(h.Dir, "bench-data")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "src"), make([]byte, sizeMiB<<20), 0o644); err != nil {
		b.Fatal(err)
	}
	type result struct{ w, r float64 }
	measure := func(name, runtime string) result {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
		defer cancel()
		if out, err := h.CtrContext(ctx, "run", "-d", "--runtime", runtime,
			"--mount", "type=bind,src="+dir+",dst=/data,options=rbind:rw",
			busyboxRef, name, "sleep", "900"); err != nil {
			b.Fatalf("run %s: %v %s", name, err, out)
		}
		defer func() {
			h.Ctr("task", "kill", "-s", "9", name)
			h.Ctr("task", "rm", "-f", name)
			h.Ctr("container", "rm", name)
		}()
		exec := func(script string) string { return execRetry(ctx, b, h, name, script) }
		secs := func(out string) float64 { return elapsedSeconds(b, name, out) }
		w := exec(timed(fmt.Sprintf("dd if=/dev/zero of=/data/out-%s bs=1M count=%d conv=fsync 2>&1", name, sizeMiB)))
		r := exec(timed("dd if=/data/src of=/dev/null bs=1M 2>&1"))
		if !strings.Contains(r, fmt.Sprintf("%d+0 records in", sizeMiB)) {
			b.Fatalf("%s: read: %q", name, r)
		}
		if st, err := os.Stat(filepath.Join(dir, "out-"+name)); err != nil || st.Size() != sizeMiB<<20 {
			b.Fatalf("%s: the write is not on the node: %v", name, err)
		}
		return result{float64(sizeMiB) / secs(w), float64(sizeMiB) / secs(r)}
	}
	var runc, raksh result
	for i := 0; i < b.N; i++ {
		runc = measure(fmt.Sprintf("vfs-runc-%d", i), "io.containerd.runc.v2")
		raksh = measure(fmt.Sprintf("vfs-raksh-%d", i), rakshRuntime)
	}
	b.ReportMetric(runc.w, "runc-write-MiB/s")
	b.ReportMetric(runc.r, "runc-read-MiB/s")
	b.ReportMetric(raksh.w, "virtiofs-write-MiB/s")
	b.ReportMetric(raksh.r, "virtiofs-read-MiB/s")
	b.ReportMetric(raksh.w/runc.w, "virtiofs/runc-write")
	b.ReportMetric(raksh.r/runc.r, "virtiofs/runc-read")
}
