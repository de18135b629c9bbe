//go:build integration

package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/raksh-project/raksh/integration/harness"
	"github.com/raksh-project/raksh/integration/testimage"
)

const (
	rakshRuntime = "io.containerd.raksh.v2"
	busyboxRef   = "docker.io/raksh/busybox:test"
)

func startWithBusybox(t testing.TB, o harness.Options) *harness.Containerd {
	t.Helper()
	h := harness.StartContainerd(t, o)
	img, err := testimage.Busybox(map[string]testimage.File{
		"etc/raksh-marker": {Mode: 0o644, Content: []byte("from-the-image\n")},
	}, "/bin/sh")
	if err != nil {
		t.Fatal(err)
	}
	h.ImportImage(t, img, busyboxRef, "")
	return h
}

func ctrRun(t *testing.T, h *harness.Containerd, id string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	all := append([]string{"run", "--rm", "--runtime", rakshRuntime, busyboxRef, id}, args...)
	return h.CtrContext(ctx, all...)
}

// TestRunInVM runs a container through containerd and checks it ran in the
// guest: the guest's kernel, not the host's, and the image's files.
func TestRunInVM(t *testing.T) {
	h := startWithBusybox(t, harness.Options{})
	out, err := ctrRun(t, h, "run1", "sh", "-c", "uname -r; cat /etc/raksh-marker; cat /proc/1/comm; hostname")
	if err != nil {
		t.Fatalf("ctr run: %v\n%s", err, out)
	}
	guestKernel := strings.TrimSpace(readFile(t, filepath.Join(harness.Output(), "deps", "kernel", "package")))
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) < 4 {
		t.Fatalf("unexpected output %q", out)
	}
	if !strings.Contains(guestKernel, lines[0]) {
		t.Errorf("container kernel %q is not the guest kernel (%s)", lines[0], guestKernel)
	}
	host, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	if lines[0] == strings.TrimSpace(string(host)) {
		t.Errorf("container saw the host kernel %q", lines[0])
	}
	if lines[1] != "from-the-image" {
		t.Errorf("image file read %q", lines[1])
	}
	if lines[2] != "sh" {
		t.Errorf("PID 1 in the container is %q, want sh", lines[2])
	}
	if len(h.QEMUProcesses()) != 0 {
		t.Errorf("QEMU still running after ctr run --rm: %v", h.QEMUProcesses())
	}
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestExitCode propagates the container's exit status.
func TestExitCode(t *testing.T) {
	h := startWithBusybox(t, harness.Options{})
	out, err := ctrRun(t, h, "exit7", "sh", "-c", "echo bye; exit 7")
	if err == nil {
		t.Fatalf("exit 7 reported success: %s", out)
	}
	if !strings.Contains(out, "bye") {
		t.Errorf("output lost before exit: %q", out)
	}
	if !strings.Contains(fmt.Sprint(err), "exit status 7") {
		t.Errorf("ctr error %v, want exit status 7", err)
	}
}

func waitStatus(t *testing.T, h *harness.Containerd, id, want string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		out, _ := h.Ctr("task", "ls")
		for _, l := range strings.Split(out, "\n") {
			f := strings.Fields(l)
			if len(f) >= 3 && f[0] == id && f[2] == want {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("task %s did not reach %s:\n%s", id, want, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestExecKillLifecycle runs a detached container, execs into it, and
// stops it with SIGTERM through ctr task kill.
func TestExecKillLifecycle(t *testing.T) {
	h := startWithBusybox(t, harness.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if out, err := h.CtrContext(ctx, "run", "-d", "--runtime", rakshRuntime, busyboxRef, "life", "sh", "-c", "trap 'exit 143' TERM; while true; do sleep 0.2; done"); err != nil {
		t.Fatalf("run -d: %v\n%s", err, out)
	}
	waitStatus(t, h, "life", "RUNNING", 2*time.Minute)

	out, err := h.CtrContext(ctx, "task", "exec", "--exec-id", "e1", "life", "sh", "-c", "echo exec-ok; cat /etc/raksh-marker")
	if err != nil {
		t.Fatalf("exec: %v\n%s", err, out)
	}
	if !strings.Contains(out, "exec-ok") || !strings.Contains(out, "from-the-image") {
		t.Fatalf("exec output %q", out)
	}
	_, err = h.CtrContext(ctx, "task", "exec", "--exec-id", "e2", "life", "sh", "-c", "exit 3")
	if err == nil || !strings.Contains(err.Error(), "exit status 3") {
		t.Fatalf("exec exit 3: %v", err)
	}
	// Stdin reaches an exec'd process; output comes back.
	cmd := h.CtrCmd(ctx, "task", "exec", "--exec-id", "e3", "life", "sh", "-c", "read x; echo got-$x")
	cmd.Stdin = strings.NewReader("line\n")
	b, err := cmd.Output()
	if err != nil || !strings.Contains(string(b), "got-line") {
		t.Fatalf("exec with stdin: %v %q", err, b)
	}

	// Stats: cgroup v2 metrics from the guest.
	if out, err := h.CtrContext(ctx, "task", "metrics", "life"); err != nil || !strings.Contains(out, "memory") {
		t.Fatalf("task metrics: %v %q", err, out)
	}
	// Update: a memory limit set through containerd lands in the guest cgroup.
	updateMemory(t, h, "life", 268435456)
	out, err = h.CtrContext(ctx, "task", "metrics", "--format", "json", "life")
	if err != nil || !strings.Contains(out, "268435456") {
		t.Fatalf("memory limit not in the guest's cgroup metrics: %v %q", err, out)
	}
	pids, err := h.CtrContext(ctx, "task", "ps", "life")
	if err != nil || len(strings.Fields(pids)) < 2 {
		t.Fatalf("task ps: %v %q", err, pids)
	}
	if out, err := h.CtrContext(ctx, "task", "kill", "-s", "SIGTERM", "life"); err != nil {
		t.Fatalf("kill: %v %s", err, out)
	}
	waitStatus(t, h, "life", "STOPPED", time.Minute)
	if out, err := h.CtrContext(ctx, "task", "rm", "life"); err != nil {
		t.Fatalf("task rm: %v %s", err, out)
	}
	if out, err := h.CtrContext(ctx, "container", "rm", "life"); err != nil {
		t.Fatalf("container rm: %v %s", err, out)
	}
	waitNoQEMU(t, h)
}

func waitNoQEMU(t *testing.T, h *harness.Containerd) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for len(h.QEMUProcesses()) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("QEMU processes left behind: %v", h.QEMUProcesses())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestTerminal runs ctr run -t under a pseudo-terminal.
func TestTerminal(t *testing.T) {
	h := startWithBusybox(t, harness.Options{})
	out, err := h.RunInPty(t, "run", "--rm", "-t", "--runtime", rakshRuntime, busyboxRef, "tty1", "sh", "-c", "tty; stty size; echo tty-ok")
	if err != nil {
		t.Fatalf("run -t: %v\n%s", err, out)
	}
	if !strings.Contains(out, "/dev/pts/") || !strings.Contains(out, "tty-ok") {
		t.Fatalf("terminal output %q", out)
	}
}

// TestRepeatedRunsLeaveNothing runs 20 containers (20 pods: one VM each) in
// a row and checks that no QEMU, mount, socket or state directory is left:
// without debug, each VM's directory under state_dir (console log, pid file,
// sockets) goes with it.
func TestRepeatedRunsLeaveNothing(t *testing.T) {
	n := 20
	if testing.Short() {
		n = 3
	}
	h := startWithBusybox(t, harness.Options{RuntimeConfig: "debug = false\n"})
	mountsBefore := countMounts(t, h.Dir)
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("rep%d", i)
		out, err := ctrRun(t, h, id, "echo", id)
		if err != nil || strings.TrimSpace(out) != id {
			t.Fatalf("run %d: %v %q", i, err, out)
		}
	}
	waitNoQEMU(t, h)
	if m := countMounts(t, h.Dir); m != mountsBefore {
		t.Errorf("mounts: %d before, %d after", mountsBefore, m)
	}
	// The shim removes the VM's directory as the VM goes; allow it a moment
	// after QEMU has exited.
	var left []string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		left = stateLeftovers(t, h.StateDir)
		if len(left) == 0 || time.Now().After(deadline) {
			break
		}
	}
	if len(left) > 0 {
		t.Errorf("%d pods left state under %s: %v", n, h.StateDir, left)
	}
}

// stateLeftovers lists what pods left under state_dir: anything but the
// accelerator cache file and the (empty) per-namespace directories.
func stateLeftovers(t *testing.T, stateDir string) []string {
	t.Helper()
	var left []string
	top, err := os.ReadDir(stateDir)
	if err != nil {
		t.Fatalf("state_dir: %v", err)
	}
	for _, e := range top {
		p := filepath.Join(stateDir, e.Name())
		switch {
		case e.Name() == "accel" && e.Type().IsRegular():
		case e.IsDir() && !strings.HasPrefix(e.Name(), "h-"):
			sub, _ := os.ReadDir(p)
			for _, s := range sub {
				left = append(left, filepath.Join(p, s.Name()))
			}
		default:
			left = append(left, p)
		}
	}
	return left
}

// countMounts counts the mounts under dir (this test's containerd): other
// tests on the machine may mount and unmount meanwhile.
func countMounts(t *testing.T, dir string) int {
	n := 0
	for _, l := range strings.Split(readFile(t, "/proc/self/mountinfo"), "\n") {
		if f := strings.Fields(l); len(f) > 4 && strings.HasPrefix(f[4], dir) {
			n++
		}
	}
	return n
}

// TestLogURI sends the container's output to a file:// log URI.
func TestLogURI(t *testing.T) {
	h := startWithBusybox(t, harness.Options{})
	logPath := filepath.Join(t.TempDir(), "out.log")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if out, err := h.CtrContext(ctx, "run", "--rm", "--log-uri", "file://"+logPath, "--runtime", rakshRuntime, busyboxRef, "logged", "sh", "-c", "echo to-the-log; echo err-too >&2"); err != nil {
		t.Fatalf("run: %v %s", err, out)
	}
	got := readFile(t, logPath)
	if !strings.Contains(got, "to-the-log") || !strings.Contains(got, "err-too") {
		t.Fatalf("log file %q", got)
	}

	// binary://: containerd's logging-binary protocol (stdout on fd 3,
	// stderr on fd 4, ready when fd 5 closes).
	dir := t.TempDir()
	logger := filepath.Join(dir, "logger.sh")
	binOut := filepath.Join(dir, "binary.log")
	script := "#!/bin/sh\nexec 5>&-\ncat <&3 >>\"$2\" &\ncat <&4 >>\"$2\"\nwait\n"
	if err := os.WriteFile(logger, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := h.CtrContext(ctx, "run", "--rm", "--log-uri", "binary://"+logger+"?file="+binOut, "--runtime", rakshRuntime, busyboxRef, "binlogged", "sh", "-c", "echo via-binary"); err != nil {
		t.Fatalf("run: %v %s", err, out)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, _ := os.ReadFile(binOut)
		if strings.Contains(string(b), "via-binary") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("logging binary got %q", b)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// updateMemory sets a task's memory limit through containerd's client
// (ctr has no task update).
func updateMemory(t *testing.T, h *harness.Containerd, id string, limit int64) {
	t.Helper()
	c, err := containerd.New(h.Address, containerd.WithDefaultNamespace("default"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := namespaces.WithNamespace(context.Background(), "default")
	ctr, err := c.LoadContainer(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	task, err := ctr.Task(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Update(ctx, containerd.WithResources(&specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &limit}})); err != nil {
		t.Fatalf("task update: %v", err)
	}
}

// TestOOMEvent: a container exceeding its memory limit in the guest is
// OOM-killed there, and containerd receives /tasks/oom.
func TestOOMEvent(t *testing.T) {
	h := startWithBusybox(t, harness.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	events := h.CtrCmd(ctx, "events")
	evOut := &syncBuffer{}
	events.Stdout = evOut
	if err := events.Start(); err != nil {
		t.Fatal(err)
	}
	defer events.Process.Kill()
	time.Sleep(500 * time.Millisecond)
	out, err := h.CtrContext(ctx, "run", "--rm", "--memory-limit", "33554432", "--runtime", rakshRuntime, busyboxRef, "oom",
		"sh", "-c", "x=$(head -c 200000000 /dev/zero | tr '\\000' a); echo survived")
	if err == nil || strings.Contains(out, "survived") {
		t.Fatalf("container was not OOM-killed: %v %q", err, out)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(evOut.String(), "/tasks/oom") {
		if time.Now().After(deadline) {
			t.Fatalf("no /tasks/oom event; events:\n%s", evOut.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// syncBuffer is a bytes buffer safe for one writer and concurrent readers.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
