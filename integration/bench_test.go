//go:build integration

package integration

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/raksh-project/raksh/integration/harness"
)

// BenchmarkRunVsRunc times `ctr run --rm IMAGE echo` to its output through
// the raksh runtime and through runc on the same image, in one run, and
// reports the ratio.
func BenchmarkRunVsRunc(b *testing.B) {
	h := startWithBusyboxB(b)
	var raksh, runc time.Duration
	for i := 0; i < b.N; i++ {
		for _, rt := range []string{"io.containerd.runc.v2", rakshRuntime} {
			id := fmt.Sprintf("bench-%d-%d", i, len(rt))
			start := time.Now()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			out, err := h.CtrContext(ctx, "run", "--rm", "--runtime", rt, busyboxRef, id, "echo", "first-output")
			cancel()
			if err != nil || !strings.Contains(out, "first-output") {
				b.Fatalf("%s: %v %q", rt, err, out)
			}
			if rt == rakshRuntime {
				raksh += time.Since(start)
			} else {
				runc += time.Since(start)
			}
		}
	}
	b.ReportMetric(float64(raksh.Milliseconds())/float64(b.N), "raksh-ms/run")
	b.ReportMetric(float64(runc.Milliseconds())/float64(b.N), "runc-ms/run")
	b.ReportMetric(float64(raksh)/float64(runc), "raksh/runc")
}

// BenchmarkHostRSS reports the host memory (RSS) of the shim and of QEMU
// for one running container.
func BenchmarkHostRSS(b *testing.B) {
	h := startWithBusyboxB(b)
	var shimKB, qemuKB int
	for i := 0; i < b.N; i++ {
		id := fmt.Sprintf("rss%d", i)
		if out, err := h.Ctr("run", "-d", "--runtime", rakshRuntime, busyboxRef, id, "sleep", "600"); err != nil {
			b.Fatalf("%v %s", err, out)
		}
		deadline := time.Now().Add(3 * time.Minute)
		for len(h.QEMUProcesses()) == 0 && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		time.Sleep(2 * time.Second) // settle
		q := h.QEMUProcesses()
		if len(q) != 1 {
			b.Fatalf("qemu processes %v", q)
		}
		qemuKB += rssKB(q[0])
		shimKB += rssKB(parentPid(q[0]))
		h.Ctr("task", "kill", "-s", "SIGKILL", id)
		time.Sleep(time.Second)
		h.Ctr("task", "rm", "-f", id)
		h.Ctr("container", "rm", id)
	}
	b.ReportMetric(float64(shimKB)/float64(b.N)/1024, "shim-MiB")
	b.ReportMetric(float64(qemuKB)/float64(b.N)/1024, "qemu-MiB")
}

func startWithBusyboxB(b *testing.B) *harness.Containerd {
	b.Helper()
	b.StopTimer()
	defer b.StartTimer()
	return startWithBusybox(b, harness.Options{})
}

func rssKB(pid int) int { return statusKB(pid, "VmRSS") }

// statusKB is field (e.g. VmRSS, RssShmem) of /proc/pid/status in KiB, 0
// when absent.
func statusKB(pid int, field string) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == field+":" {
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	return 0
}

func parentPid(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndex(s, ")")+2:])
	ppid, _ := strconv.Atoi(f[1])
	return ppid
}

// BenchmarkExecStdoutThroughput streams an exec's stdout (32 MiB of zeros
// from `head -c`) out of the VM to `ctr task exec`: runc's pipe, the guest
// fifo and the agent's copy to its stream, the virtio-serial transport and
// the shim's copy to containerd's fifo.
func BenchmarkExecStdoutThroughput(b *testing.B) {
	const size = 32 << 20
	h := startWithBusyboxB(b)
	if out, err := h.Ctr("run", "-d", "--runtime", rakshRuntime, busyboxRef, "tput", "sleep", "600"); err != nil {
		b.Fatalf("%v %s", err, out)
	}
	defer h.Ctr("task", "kill", "-s", "SIGKILL", "tput")
	b.SetBytes(size)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		out, err := h.Ctr("task", "exec", "--exec-id", fmt.Sprintf("t%d", i), "tput", "head", "-c", strconv.Itoa(size), "/dev/zero")
		if err != nil || len(out) != size {
			b.Fatalf("exec: %v, %d bytes", err, len(out))
		}
	}
}
