//go:build integration

package integration

import (
	"context"
	"strings"
	"syscall"
	"testing"
	"time"

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
