//go:build integration

package integration

import (
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/raksh-project/raksh/integration/harness"
	"github.com/raksh-project/raksh/integration/testimage"
)

// Content of BenchmarkPlainRootfsRead's tree: one big random file and
// readSmallDirs×readSmallDirs directories of readSmallPerDir small files.
const (
	readBigMiB       = 128
	readSmallDirs    = 10
	readSmallPerDir  = 50
	readSmallSize    = 4096
	readSmallCount   = readSmallDirs * readSmallDirs * readSmallPerDir
	rootfsReadRef    = "docker.io/library/rootfs-read:bench"
	rootfsReadShared = "/vfs"
)

// writeRootfsReadTree writes under dir/bench the benchmark's content:
// bench/big (readBigMiB of random bytes) and bench/small/aNN/bNN/fNN
// (readSmallCount files of readSmallSize random bytes).
func writeRootfsReadTree(b *testing.B, dir string) {
	b.Helper()
	r := rand.NewChaCha8([32]byte{14})
	write := func(p string, size int64) {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			b.Fatal(err)
		}
		f, err := os.Create(p)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.CopyN(f, r, size); err != nil {
			b.Fatal(err)
		}
		if err := f.Close(); err != nil {
			b.Fatal(err)
		}
	}
	write(filepath.Join(dir, "bench", "big"), readBigMiB<<20)
	for i := 0; i < readSmallDirs; i++ {
		for j := 0; j < readSmallDirs; j++ {
			for k := 0; k < readSmallPerDir; k++ {
				write(filepath.Join(dir, "bench", "small", fmt.Sprintf("a%02d", i), fmt.Sprintf("b%02d", j), fmt.Sprintf("f%02d", k)), readSmallSize)
			}
		}
	}
}

// BenchmarkPlainRootfsRead compares, in one run, reading the same image
// files in a container whose rootfs is a plain image on the tar path
// (plain_rootfs = "tar": guest tmpfs), on the erofs path (read-only layer
// disks), from a virtio-fs share (shared_fs = "virtio-fs") of the same
// files unpacked on the node, and in a runc container of the image (the
// node's overlay). The virtio-fs case is a bind mount of the node directory
// the image layer was made from into a busybox container: raksh has no
// virtio-fs rootfs, and a share of the unpacked snapshot is what one would
// read. Each container reads first, right after its start (the guest's
// page cache is cold except on the tar path, whose tmpfs is the page cache;
// the node's page cache is warm in every case: the files were just written,
// unpacked or built into erofs images): a walk of readSmallCount small
// files (find | xargs cat), then the big file with dd twice (first read,
// then again from the guest's cache). It also reports the time from
// `ctr run` to the container's first output (for erofs the run builds the
// layer images: cold), and, after the reads, QEMU's RSS and virtiofsd's
// (without shared memory: the guest RAM both map).
func BenchmarkPlainRootfsRead(b *testing.B) {
	h := startWithBusybox(b, harness.Options{})
	base, err := os.ReadFile(h.RuntimeConfigPath)
	if err != nil {
		b.Fatal(err)
	}
	dir, err := os.MkdirTemp("/var/tmp", "rk-rootfs-read-")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(dir)
	tree := filepath.Join(dir, "tree")
	writeRootfsReadTree(b, tree)
	layerTar := filepath.Join(dir, "layer.tar")
	if out, err := exec.Command("tar", "-C", tree, "--numeric-owner", "--owner=0", "--group=0", "-cf", layerTar, "bench").CombinedOutput(); err != nil {
		b.Fatalf("tar: %v %s", err, out)
	}
	bb, err := testimage.Busybox(nil, "/bin/sh")
	if err != nil {
		b.Fatal(err)
	}
	l, err := tarball.LayerFromFile(layerTar, tarball.WithMediaType(types.OCILayer), tarball.WithCompressionLevel(gzip.NoCompression))
	if err != nil {
		b.Fatal(err)
	}
	img, err := mutate.AppendLayers(bb, l)
	if err != nil {
		b.Fatal(err)
	}
	h.ImportImage(b, img, rootfsReadRef, "")
	os.Remove(layerTar)

	// s, s, MiB/s, MiB/s, MiB, MiB
	type result struct{ start, walk, big, bigWarm, qemuRSS, virtiofsdRSS float64 }
	// rss sums the RSS of pids, without shared memory if private: virtiofsd
	// maps the guest's RAM (a shared memfd), whose pages QEMU's RSS counts.
	rss := func(pids []int, private bool) (mib float64) {
		for _, p := range pids {
			kb := rssKB(p)
			if private {
				kb -= statusKB(p, "RssShmem")
			}
			mib += float64(kb) / 1024
		}
		return mib
	}
	measure := func(name, runtime, config, ref, root string, runArgs ...string) result {
		setRuntimeConfig(b, h, base, config)
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
		defer cancel()
		d, stop, err := startToFirstOutput(ctx, b, h, name, ref, append([]string{"--runtime", runtime}, runArgs...)...)
		if err != nil {
			b.Fatalf("%s: no output: %v", name, err)
		}
		defer stop()
		sh := func(script string) string { return execRetry(ctx, b, h, name, script) }
		secs := func(out string) float64 { return elapsedSeconds(b, name, out) }
		walk := sh(timed("find " + root + "/small -type f | xargs cat >/dev/null"))
		big := sh(timed("dd if=" + root + "/big of=/dev/null bs=1M 2>&1"))
		warm := sh(timed("dd if=" + root + "/big of=/dev/null bs=1M 2>&1"))
		for _, out := range []string{big, warm} {
			if !strings.Contains(out, fmt.Sprintf("%d+0 records in", readBigMiB)) {
				b.Fatalf("%s: read of the big file: %q", name, out)
			}
		}
		// Checked after the timed walk, not to warm the caches before it.
		n := strings.Fields(sh("find " + root + "/small -type f | wc -l; find " + root + "/small -type f | xargs cat | wc -c"))
		if strings.Join(n, " ") != fmt.Sprintf("%d %d", readSmallCount, readSmallCount*readSmallSize) {
			b.Fatalf("%s: small files and bytes read: %v", name, n)
		}
		res := result{d.Seconds(), secs(walk), readBigMiB / secs(big), readBigMiB / secs(warm), rss(h.QEMUProcesses(), false), rss(h.VirtioFSDProcesses(), true)}
		if strings.Contains(config, "virtio-fs") && res.virtiofsdRSS == 0 {
			b.Fatalf("%s: no virtiofsd of this containerd", name)
		}
		b.Logf("%s: first output %.1f s, walk of %d files %.2f s, big file %.1f MiB/s then %.1f MiB/s, RSS QEMU %.0f MiB virtiofsd %.1f MiB",
			name, res.start, readSmallCount, res.walk, res.big, res.bigWarm, res.qemuRSS, res.virtiofsdRSS)
		return res
	}
	res := map[string]result{}
	for i := 0; i < b.N; i++ {
		res["runc"] = measure(fmt.Sprintf("read-runc-%d", i), "io.containerd.runc.v2", "", rootfsReadRef, "/bench")
		res["tar"] = measure(fmt.Sprintf("read-tar-%d", i), rakshRuntime, "plain_rootfs = \"tar\"\n", rootfsReadRef, "/bench")
		res["erofs"] = measure(fmt.Sprintf("read-erofs-%d", i), rakshRuntime, "plain_rootfs = \"erofs\"\n", rootfsReadRef, "/bench")
		res["virtiofs"] = measure(fmt.Sprintf("read-virtiofs-%d", i), rakshRuntime, "shared_fs = \"virtio-fs\"\n", busyboxRef, rootfsReadShared,
			"--mount", "type=bind,src="+filepath.Join(tree, "bench")+",dst="+rootfsReadShared+",options=rbind:ro")
	}
	for _, k := range []string{"runc", "tar", "erofs", "virtiofs"} {
		b.ReportMetric(res[k].start, k+"-first-output-s")
		b.ReportMetric(res[k].walk, k+"-walk-s")
		b.ReportMetric(res[k].big, k+"-big-MiB/s")
		b.ReportMetric(res[k].bigWarm, k+"-big-warm-MiB/s")
		if k != "runc" {
			b.ReportMetric(res[k].qemuRSS, k+"-qemu-rss-MiB")
		}
	}
	b.ReportMetric(res["virtiofs"].virtiofsdRSS, "virtiofs-virtiofsd-rss-MiB")
	for _, k := range []string{"erofs", "virtiofs"} {
		b.ReportMetric(res[k].walk/res["tar"].walk, k+"/tar-walk-time")
		b.ReportMetric(res[k].big/res["tar"].big, k+"/tar-big-read")
		b.ReportMetric(res[k].bigWarm/res["tar"].bigWarm, k+"/tar-big-warm-read")
	}
	b.ReportMetric(res["virtiofs"].walk/res["erofs"].walk, "virtiofs/erofs-walk-time")
	b.ReportMetric(res["virtiofs"].big/res["erofs"].big, "virtiofs/erofs-big-read")
}
