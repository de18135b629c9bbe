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
	"github.com/raksh-project/raksh/integration/testimage"
)

const (
	rakshRuntime = "io.containerd.raksh.v2"
	busyboxRef   = "docker.io/raksh/busybox:test"
)

func startWithBusybox(t *testing.T, o harness.Options) *harness.Containerd {
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
