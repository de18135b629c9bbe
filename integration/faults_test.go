//go:build integration

package integration

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/console"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"

	"github.com/raksh-project/raksh/integration/harness"
)

// TestFaults checks that a broken VM fails the task with a clear error and
// leaves containerd healthy.
func TestFaults(t *testing.T) {
	for _, tc := range []struct {
		name, config, want string
	}{
		{"missing kernel", "kernel = \"/nonexistent/vmlinuz\"\n", "guest kernel"},
		{"missing initrd", "initrd = \"/nonexistent/initrd.img\"\n", "guest initrd"},
		{"qemu fails to start", "qemu_path = \"/bin/false\"\n", "qemu exited"},
		{"agent never answers", "boot_timeout = \"8s\"\nkernel_params = [\"raksh.port=nowhere\"]\n", "did not answer"},
		{"bad config", "accel = \"warp\"\n", "accel"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := startWithBusybox(t, harness.Options{RuntimeConfig: tc.config})
			out, err := ctrRun(t, h, "fault", "echo", "should-not-run")
			if err == nil {
				t.Fatalf("ran despite the fault: %q", out)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not name the problem (%q)", err, tc.want)
			}
			if strings.Contains(out, "should-not-run") {
				t.Fatal("the container ran")
			}
			if _, err := h.Ctr("version"); err != nil {
				t.Fatalf("containerd unhealthy after the fault: %v", err)
			}
			waitNoQEMU(t, h)
		})
	}
}

// TestQEMUKilledMidRun kills the VM under a running container: the task
// exits non-zero, can be deleted, and containerd stays healthy.
func TestQEMUKilledMidRun(t *testing.T) {
	h := startWithBusybox(t, harness.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if out, err := h.CtrContext(ctx, "run", "-d", "--runtime", rakshRuntime, busyboxRef, "victim", "sleep", "600"); err != nil {
		t.Fatalf("run -d: %v %s", err, out)
	}
	waitStatus(t, h, "victim", "RUNNING", 2*time.Minute)
	pids := h.QEMUProcesses()
	if len(pids) != 1 {
		t.Fatalf("QEMU processes: %v", pids)
	}
	syscall.Kill(pids[0], syscall.SIGKILL)
	waitStatus(t, h, "victim", "STOPPED", time.Minute)
	out, _ := h.Ctr("task", "ls")
	if !strings.Contains(out, "victim") {
		t.Fatalf("task vanished: %s", out)
	}
	if _, err := h.Ctr("task", "rm", "victim"); err != nil {
		t.Fatalf("task rm after VM death: %v", err)
	}
	if _, err := h.Ctr("container", "rm", "victim"); err != nil {
		t.Fatalf("container rm: %v", err)
	}
	// containerd still runs new containers.
	out, err := ctrRun(t, h, "after", "echo", "alive")
	if err != nil || strings.TrimSpace(out) != "alive" {
		t.Fatalf("run after fault: %v %q", err, out)
	}
}

// TestShimKilled kills the shim under a running container: its VM goes
// with it, containerd cleans up through the shim's delete action, and new
// containers still run.
func TestShimKilled(t *testing.T) {
	h := startWithBusybox(t, harness.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if out, err := h.CtrContext(ctx, "run", "-d", "--runtime", rakshRuntime, busyboxRef, "orphan", "sleep", "600"); err != nil {
		t.Fatalf("run -d: %v %s", err, out)
	}
	waitStatus(t, h, "orphan", "RUNNING", 2*time.Minute)
	q := h.QEMUProcesses()
	if len(q) != 1 {
		t.Fatalf("QEMU processes: %v", q)
	}
	shim := parentPid(q[0])
	if err := syscall.Kill(shim, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitNoQEMU(t, h)
	// containerd cleans up after a dead shim: the task is gone (or stopped).
	deadline := time.Now().Add(time.Minute)
	for {
		out, _ := h.Ctr("task", "ls")
		if !strings.Contains(out, "RUNNING") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("task still running after its shim died:\n%s", out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	h.Ctr("task", "rm", "orphan")
	if _, err := h.Ctr("container", "rm", "orphan"); err != nil {
		t.Fatalf("container rm: %v", err)
	}
	out, err := ctrRun(t, h, "after-shim", "echo", "alive")
	if err != nil || strings.TrimSpace(out) != "alive" {
		t.Fatalf("run after shim death: %v %q", err, out)
	}
}

// TestQEMUKilledDuringExec kills QEMU by hand (kill -9) while a `ctr task
// exec` is attached (stdin at EOF, stdin held open, or a terminal) and Waits
// on the exec and on the task are in flight: all of them end with the
// VM-gone exit instead of hanging. The bound is a liveness bound (the shim
// notices QEMU's exit at once), far above how long it takes.
func TestQEMUKilledDuringExec(t *testing.T) {
	for _, mode := range []string{"stdin-eof", "stdin-open", "tty"} {
		t.Run(mode, func(t *testing.T) { killQEMUDuringExec(t, mode) })
	}
}

func killQEMUDuringExec(t *testing.T, mode string) {
	const bound = time.Minute
	h := startWithBusybox(t, harness.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if out, err := h.CtrContext(ctx, "run", "-d", "--runtime", rakshRuntime, busyboxRef, "victim", "sleep", "600"); err != nil {
		t.Fatalf("run -d: %v %s", err, out)
	}
	waitStatus(t, h, "victim", "RUNNING", 2*time.Minute)

	args := []string{"task", "exec", "--exec-id", "inflight"}
	if mode == "tty" {
		args = append(args, "--tty")
	}
	exe := h.CtrCmd(ctx, append(args, "victim", "sh", "-c", "echo started; exec sleep 600")...)
	var out io.Reader
	switch mode {
	case "tty":
		master, slavePath, err := console.NewPty()
		if err != nil {
			t.Fatal(err)
		}
		defer master.Close()
		slave, err := os.OpenFile(slavePath, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer slave.Close()
		exe.Stdin, exe.Stdout, exe.Stderr = slave, slave, slave
		exe.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true}
		out = master
	case "stdin-open":
		w, err := exe.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		fallthrough
	default:
		r, err := exe.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		out = r
	}
	if err := exe.Start(); err != nil {
		t.Fatal(err)
	}
	started := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.TrimSpace(sc.Text()) == "started" {
				started <- nil
				io.Copy(io.Discard, out)
				return
			}
		}
		started <- fmt.Errorf("exec output ended before \"started\": %v", sc.Err())
	}()
	select {
	case err := <-started:
		if err != nil {
			t.Fatal(err)
		}
	case <-ctx.Done():
		t.Fatal("the exec never started")
	}
	execDone := make(chan error, 1)
	go func() { execDone <- exe.Wait() }()

	c, err := containerd.New(h.Address, containerd.WithDefaultNamespace("default"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	nctx := namespaces.WithNamespace(ctx, "default")
	ctr, err := c.LoadContainer(nctx, "victim")
	if err != nil {
		t.Fatal(err)
	}
	task, err := ctr.Task(nctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	taskWait, err := task.Wait(nctx)
	if err != nil {
		t.Fatal(err)
	}
	p, err := task.LoadProcess(nctx, "inflight", nil)
	if err != nil {
		t.Fatal(err)
	}
	execWait, err := p.Wait(nctx)
	if err != nil {
		t.Fatal(err)
	}

	pids := h.QEMUProcesses()
	if len(pids) != 1 {
		t.Fatalf("QEMU processes: %v", pids)
	}
	if err := syscall.Kill(pids[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	timeout := time.After(bound)
	select {
	case err := <-execDone:
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() == 0 {
			t.Errorf("ctr task exec after QEMU was killed: %v, want a non-zero exit", err)
		}
		t.Logf("ctr task exec ended %v after the kill: %v", time.Since(killed), err)
	case <-timeout:
		t.Fatalf("ctr task exec still attached %v after QEMU was killed", bound)
	}
	for _, w := range []struct {
		name string
		ch   <-chan containerd.ExitStatus
	}{{"exec", execWait}, {"task", taskWait}} {
		select {
		case st := <-w.ch:
			if st.ExitCode() == 0 {
				t.Errorf("%s Wait: exit %d, want non-zero", w.name, st.ExitCode())
			}
			t.Logf("%s Wait answered %v after the kill: exit %d", w.name, time.Since(killed), st.ExitCode())
		case <-timeout:
			t.Fatalf("%s Wait still pending %v after QEMU was killed", w.name, bound)
		}
	}
	if _, err := h.Ctr("task", "rm", "victim"); err != nil {
		t.Fatalf("task rm after VM death: %v", err)
	}
	if _, err := h.Ctr("version"); err != nil {
		t.Fatalf("containerd unhealthy: %v", err)
	}
}
