//go:build integration

package integration

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/raksh-project/raksh/integration/harness"
)

// timed wraps a shell command so that it prints the seconds it took, from
// /proc/uptime (10 ms resolution; busybox dd does not report a time).
func timed(cmd string) string {
	return "a=$(cut -d' ' -f1 /proc/uptime); " + cmd + "; b=$(cut -d' ' -f1 /proc/uptime); echo \"elapsed $a $b\""
}

var elapsedRE = regexp.MustCompile(`elapsed ([0-9.]+) ([0-9.]+)`)

// elapsedSeconds is the time a timed command's output reports.
func elapsedSeconds(b *testing.B, name, out string) float64 {
	m := elapsedRE.FindStringSubmatch(out)
	if m == nil {
		b.Fatalf("%s: no time in %q", name, out)
	}
	t0, _ := strconv.ParseFloat(m[1], 64)
	t1, _ := strconv.ParseFloat(m[2], 64)
	if t1 <= t0 {
		t1 = t0 + 0.01 // below the clock's resolution
	}
	return t1 - t0
}

// execRetry runs script in container name's task, retrying while the task
// may still be starting, and returns its output.
func execRetry(ctx context.Context, b *testing.B, h *harness.Containerd, name, script string) string {
	var last error
	for try := 0; try < 60; try++ {
		out, err := h.CtrContext(ctx, "task", "exec", "--exec-id", fmt.Sprintf("e%d", time.Now().UnixNano()), name, "sh", "-c", script)
		if err == nil {
			return out
		}
		last = err
		time.Sleep(2 * time.Second)
	}
	b.Fatalf("exec in %s: %v", name, last)
	return ""
}

// BenchmarkScratchThroughput compares, in one run, sequential write and
// read throughput (dd, 1 MiB blocks) in four places: a runc container's
// root filesystem (overlay on the node's disk), a plain raksh guest's root
// filesystem (tmpfs in RAM only), and in a raksh guest with an encrypted
// scratch disk a medium Memory emptyDir (tmpfs spilling to the swap part
// of the disk) and a disk-backed emptyDir (the ext2 filesystem on
// dm-crypt+dm-integrity, read back with O_DIRECT so the guest's page cache
// does not answer). Each writes and reads back sizeMiB; the two scratch
// places also beyondMiB, more than the guest's RAM. The plain guest has
// the default 512 MiB; the scratch guest has scratchGuestMiB so that the
// tmpfs write pushes part of its memory to the encrypted swap; the swap in
// use afterwards is reported.
func BenchmarkScratchThroughput(b *testing.B) {
	const sizeMiB, beyondMiB, scratchGuestMiB = 128, 256, 256
	type result struct{ w, r float64 }
	res := map[string]result{}
	measure := func(h *harness.Containerd, name, runtime string, mib int, file, readFlags string, runArgs ...string) (result, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
		defer cancel()
		args := append(append([]string{"run", "-d", "--runtime", runtime}, runArgs...), busyboxRef, name, "sleep", "900")
		if out, err := h.CtrContext(ctx, args...); err != nil {
			b.Fatalf("run %s: %v %s", name, err, out)
		}
		defer func() {
			h.Ctr("task", "kill", "-s", "9", name)
			h.Ctr("task", "rm", "-f", name)
			h.Ctr("container", "rm", name)
		}()
		exec := func(script string) string { return execRetry(ctx, b, h, name, script) }
		secs := func(out string) float64 { return elapsedSeconds(b, name, out) }
		w := exec(timed(fmt.Sprintf("dd if=/dev/zero of=%s bs=1M count=%d conv=fsync 2>&1", file, mib)))
		r := exec(timed(fmt.Sprintf("dd if=%s of=/dev/null bs=1M %s 2>&1", file, readFlags)) + "; grep -E 'MemTotal|SwapTotal|SwapFree' /proc/meminfo")
		if !strings.Contains(r, fmt.Sprintf("%d+0 records in", mib)) {
			b.Fatalf("%s: read back: %q", name, r)
		}
		return result{float64(mib) / secs(w), float64(mib) / secs(r)}, r
	}

	// Plain guest (tmpfs in RAM) and runc on the node, one containerd.
	h := startWithBusybox(b, harness.Options{})
	res["runc"], _ = measure(h, "bench-runc", "io.containerd.runc.v2", sizeMiB, "/big", "")
	res["ram"], _ = measure(h, "bench-ram", rakshRuntime, sizeMiB, "/big", "")
	h.Stop()

	// Guest with an encrypted scratch disk: a medium Memory emptyDir
	// (kubelet's tmpfs on the node gives its size) and a disk-backed one.
	scratchDir, err := os.MkdirTemp("/var/tmp", "rk-scratch-")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(scratchDir)
	h = startWithBusybox(b, harness.Options{RuntimeConfig: fmt.Sprintf("memory_mib = %d\nscratch_disk_mib = 1024\nscratch_dir = %q\n", scratchGuestMiB, scratchDir)})
	vols := filepath.Join(h.Dir, "pods", "uid-bench", "volumes", "kubernetes.io~empty-dir")
	memDir, diskDir := filepath.Join(vols, "mem"), filepath.Join(vols, "disk")
	for _, d := range []string{memDir, diskDir} {
		if err := os.MkdirAll(d, 0o777); err != nil {
			b.Fatal(err)
		}
	}
	if err := unix.Mount("tmpfs", memDir, "tmpfs", 0, "size=512m"); err != nil {
		b.Fatal(err)
	}
	defer unix.Unmount(memDir, unix.MNT_DETACH)
	bind := func(src, dst string) string { return "type=bind,src=" + src + ",dst=" + dst + ",options=rbind:rw" }
	var info string
	res["swap"], info = measure(h, "bench-swap", rakshRuntime, sizeMiB, "/mem/big", "", "--mount", bind(memDir, "/mem"))
	res["scratchfs"], _ = measure(h, "bench-scratchfs", rakshRuntime, sizeMiB, "/disk/big", "iflag=direct", "--mount", bind(diskDir, "/disk"))
	// Beyond the guest's RAM: most of the tmpfs must go to swap.
	var bigInfo string
	res["swap-big"], bigInfo = measure(h, "bench-swap-big", rakshRuntime, beyondMiB, "/mem/big", "", "--mount", bind(memDir, "/mem"))
	res["scratchfs-big"], _ = measure(h, "bench-scratchfs-big", rakshRuntime, beyondMiB, "/disk/big", "iflag=direct", "--mount", bind(diskDir, "/disk"))
	h.Stop()
	if !swapUsed(info) {
		b.Logf("the scratch guest did not swap: %q", info)
	}
	b.ReportMetric(float64(swapUsedKB(info))/1024, "scratch-swap-used-MiB")
	b.ReportMetric(float64(swapUsedKB(bigInfo))/1024, "scratch-big-swap-used-MiB")

	for _, k := range []string{"runc", "ram", "swap", "scratchfs", "swap-big", "scratchfs-big"} {
		b.ReportMetric(res[k].w, k+"-write-MiB/s")
		b.ReportMetric(res[k].r, k+"-read-MiB/s")
	}
	for _, k := range []string{"swap", "scratchfs"} {
		b.ReportMetric(res[k].w/res["ram"].w, k+"/ram-write")
		b.ReportMetric(res[k].r/res["ram"].r, k+"/ram-read")
		b.ReportMetric(res[k].w/res["runc"].w, k+"/runc-write")
		b.ReportMetric(res[k].r/res["runc"].r, k+"/runc-read")
	}
	b.ReportMetric(res["scratchfs"].w/res["swap"].w, "scratchfs/swap-write")
	b.ReportMetric(res["scratchfs"].r/res["swap"].r, "scratchfs/swap-read")
	b.ReportMetric(res["scratchfs-big"].w/res["swap-big"].w, "scratchfs/swap-big-write")
	b.ReportMetric(res["scratchfs-big"].r/res["swap-big"].r, "scratchfs/swap-big-read")
	b.ReportMetric(res["ram"].w/res["runc"].w, "ram/runc-write")
	b.ReportMetric(res["ram"].r/res["runc"].r, "ram/runc-read")
}

// swapUsedKB is SwapTotal-SwapFree from /proc/meminfo lines.
func swapUsedKB(meminfo string) int64 {
	var total, free int64
	for _, l := range strings.Split(meminfo, "\n") {
		if f := strings.Fields(l); len(f) >= 2 {
			switch f[0] {
			case "SwapTotal:":
				fmt.Sscan(f[1], &total)
			case "SwapFree:":
				fmt.Sscan(f[1], &free)
			}
		}
	}
	return total - free
}

// BenchmarkFirstOutputVsImageSize times, in one run, `ctr run` of a plain
// image to the container's first output in a 512 MiB guest, for images
// carrying 0, 100, 300 and 600 MiB of random data the container never reads
// (on top of the busybox and whiteout layers of layeredImage), on the tar
// path (plain_rootfs = "tar": the merged rootfs streamed into guest tmpfs)
// and on the erofs path: first with a cold cache (the run builds the
// layers' erofs images) then warm. It also reports QEMU's RSS once the
// container has printed. A run that cannot start (the tar path beyond the
// guest's tmpfs) is logged and reported as -1.
func BenchmarkFirstOutputVsImageSize(b *testing.B) {
	sizes := []int{0, 100, 300, 600}
	if env := os.Getenv("RAKSH_BENCH_IMAGE_MIB"); env != "" { // e.g. "0,100"
		sizes = nil
		for _, f := range strings.Split(env, ",") {
			n, err := strconv.Atoi(f)
			if err != nil {
				b.Fatalf("RAKSH_BENCH_IMAGE_MIB: %v", err)
			}
			sizes = append(sizes, n)
		}
	}
	h := harness.StartContainerd(b, harness.Options{})
	base, err := os.ReadFile(h.RuntimeConfigPath)
	if err != nil {
		b.Fatal(err)
	}
	dir, err := os.MkdirTemp("/var/tmp", "rk-bench-img-")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(dir)
	for _, mib := range sizes {
		h.ImportImage(b, layeredImage(b, dir, mib), fmt.Sprintf("docker.io/library/size:%d", mib), "")
		os.RemoveAll(filepath.Join(dir, fmt.Sprintf("big-%d.tar", mib)))
	}
	run := func(mode, ref, id string) (time.Duration, int, error) {
		setRuntimeConfig(b, h, base, fmt.Sprintf("plain_rootfs = %q\n", mode))
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		d, stop, err := startToFirstOutput(ctx, b, h, id, ref, "--runtime", rakshRuntime)
		if err != nil {
			return 0, 0, err
		}
		defer stop()
		q := h.QEMUProcesses()
		if len(q) != 1 {
			b.Fatalf("QEMU processes %v", q)
		}
		return d, rssKB(q[0]), nil
	}
	for _, mib := range sizes {
		ref := fmt.Sprintf("docker.io/library/size:%d", mib)
		for _, m := range []struct{ name, mode string }{{"tar", "tar"}, {"erofs-cold", "erofs"}, {"erofs", "erofs"}} {
			d, kb, err := run(m.mode, ref, fmt.Sprintf("%s-%d", m.name, mib))
			if err != nil {
				b.Logf("%s, %d MiB: no output: %v", m.name, mib, err)
				b.ReportMetric(-1, fmt.Sprintf("%s-%dMiB-ms", m.name, mib))
				continue
			}
			b.Logf("%s, %d MiB: first output after %s, QEMU RSS %d MiB", m.name, mib, d.Round(10*time.Millisecond), kb/1024)
			b.ReportMetric(float64(d.Milliseconds()), fmt.Sprintf("%s-%dMiB-ms", m.name, mib))
			b.ReportMetric(float64(kb)/1024, fmt.Sprintf("%s-%dMiB-rss-MiB", m.name, mib))
		}
	}
}

// setRuntimeConfig writes h's runtime config: base (the harness's) then
// extra; the shim reads it at each container start.
func setRuntimeConfig(b *testing.B, h *harness.Containerd, base []byte, extra string) {
	b.Helper()
	if err := os.WriteFile(h.RuntimeConfigPath, append(append([]byte{}, base...), extra...), 0o644); err != nil {
		b.Fatal(err)
	}
}

// startToFirstOutput starts container id of image ref with `ctr run --rm`
// (runArgs before the image, e.g. --runtime, --mount) running a shell that
// prints one line and sleeps, and returns the time from the start of ctr to
// that line, and a function that kills and removes the container (call it
// before ctx is cancelled). The container does not run when err != nil.
func startToFirstOutput(ctx context.Context, b *testing.B, h *harness.Containerd, id, ref string, runArgs ...string) (time.Duration, func(), error) {
	b.Helper()
	args := append(append([]string{"run", "--rm"}, runArgs...), ref, id, "sh", "-c", "echo first-output; sleep 900")
	cmd := h.CtrCmd(ctx, args...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	stop := func() {
		h.Ctr("task", "kill", "-s", "SIGKILL", id)
		cmd.Wait()
		h.Ctr("container", "rm", id)
	}
	line, _ := bufio.NewReader(out).ReadString('\n')
	if strings.TrimSpace(line) != "first-output" {
		stop()
		return 0, nil, fmt.Errorf("%q %s", line, strings.TrimSpace(stderr.String()))
	}
	return time.Since(start), stop, nil
}
