//go:build integration

package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/raksh-project/raksh/integration/harness"
	"github.com/raksh-project/raksh/integration/testimage"
)

// TestNodePathsNeverResolveInGuest is the regression test of node paths
// reaching the guest's own files: -v /etc/raksh:/x used to hand the
// container the guest's /etc/raksh (the sim platform key) and -v /run:/r
// the guest's bundles. Both are refused, the error naming each mount.
func TestNodePathsNeverResolveInGuest(t *testing.T) {
	h := startWithBusybox(t, harness.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := h.CtrContext(ctx, "run", "--rm", "--runtime", rakshRuntime,
		"--mount", "type=bind,src=/etc/raksh,dst=/x,options=rbind:ro",
		"--mount", "type=bind,src=/run,dst=/r,options=rbind:rw",
		busyboxRef, "guestpaths2", "sh", "-c", "cat /x/sim-platform-key.pem; ls /r; echo ran")
	if err == nil {
		t.Fatalf("a container with node bind mounts ran: %q", out)
	}
	if strings.Contains(out, "PRIVATE KEY") || strings.Contains(out, "ran") {
		t.Fatalf("the container ran and saw %q", out)
	}
	for _, want := range []string{`"/etc/raksh" at "/x"`, `"/run" at "/r"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not name the mount %s: %v", want, err)
		}
	}
	waitNoQEMU(t, h)
}

// euidSource prints its real and effective user ids: setuid root, it
// shows whether the guest honours the setuid bit.
const euidSource = `package main

import (
	"fmt"
	"os"
)

func main() { fmt.Printf("uid=%d euid=%d\n", os.Getuid(), os.Geteuid()) }
`

// buildEUID builds euidSource as a static binary.
func buildEUID(t *testing.T) []byte {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(euidSource), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module euid\n\ngo 1.21\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "euid")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=", "GOWORK=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build euid: %v\n%s", err, out)
	}
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

const usersRef = "docker.io/raksh/users:test"

// startWithUsersImage imports a busybox image with a setuid-root euid
// binary, a file only group 1234 reads and a non-root user.
func startWithUsersImage(t *testing.T, o harness.Options, ns string) *harness.Containerd {
	t.Helper()
	h := harness.StartContainerd(t, o)
	img, err := testimage.Busybox(map[string]testimage.File{
		"bin/euid":        {Mode: 0o4755, Content: buildEUID(t)},
		"etc/group-1234":  {Mode: 0o640, Content: []byte("for-group-1234\n")},
		"etc/raksh-owner": {Mode: 0o600, Content: []byte("root-only\n")},
	}, "/bin/sh")
	if err != nil {
		t.Fatal(err)
	}
	h.ImportImage(t, img, usersRef, ns)
	return h
}

// TestNonRootAndSetuid runs an image as a non-root user: the image's files
// keep their modes (the rootfs was 0700 and every non-root container failed
// with "Permission denied"), and a setuid-root binary runs as root, as on
// runc (the guest rootfs is nodev but not nosuid).
func TestNonRootAndSetuid(t *testing.T) {
	h := startWithUsersImage(t, harness.Options{}, "")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	script := "id -u; id -g; head -1 /etc/passwd; /bin/euid; cat /etc/raksh-owner 2>/dev/null || echo denied; stat -c %a /"
	run := func(runtime, id string, extra ...string) string {
		args := append([]string{"run", "--rm", "--runtime", runtime, "--user", "65534:65534"}, extra...)
		out, err := h.CtrContext(ctx, append(args, usersRef, id, "sh", "-c", script)...)
		if err != nil {
			t.Fatalf("non-root run on %s: %v\n%s", runtime, err, out)
		}
		return out
	}
	const want = "65534\n65534\nroot:x:0:0:root:/root:/bin/sh\nuid=65534 euid=%d\ndenied\n755\n"
	for _, tc := range []struct {
		runtime, id string
		euid        int
		extra       []string
	}{
		{"io.containerd.runc.v2", "onrunc", 0, []string{"--allow-new-privs"}},
		{rakshRuntime, "newprivs", 0, []string{"--allow-new-privs"}},
		{rakshRuntime, "nonewprivs", 65534, nil}, // ctr's default spec sets noNewPrivileges
	} {
		if got := run(tc.runtime, tc.id, tc.extra...); got != fmt.Sprintf(want, tc.euid) {
			t.Errorf("%s %v: non-root container printed\n%s\nwant\n%s", tc.runtime, tc.extra, got, fmt.Sprintf(want, tc.euid))
		}
	}
}

// TestExecTTYLongIDs execs with a terminal into a container whose
// container and exec ids are 64 characters, as CRI's are (the console
// socket path built from them exceeded a unix socket address).
func TestExecTTYLongIDs(t *testing.T) {
	h := startWithBusybox(t, harness.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	id := strings.Repeat("c", 64)
	execID := strings.Repeat("e", 64)
	if out, err := h.CtrContext(ctx, "run", "-d", "--runtime", rakshRuntime, busyboxRef, id, "sleep", "600"); err != nil {
		t.Fatalf("run -d: %v\n%s", err, out)
	}
	defer func() {
		h.CtrContext(ctx, "task", "kill", "-s", "SIGKILL", id)
		waitStatus(t, h, id, "STOPPED", time.Minute)
		h.CtrContext(ctx, "task", "rm", id)
		h.CtrContext(ctx, "container", "rm", id)
		waitNoQEMU(t, h)
	}()
	waitStatus(t, h, id, "RUNNING", 2*time.Minute)
	out, err := h.RunInPty(t, "task", "exec", "-t", "--exec-id", execID, id, "sh", "-c", "tty; echo exec-tty-ok")
	if err != nil {
		t.Fatalf("exec -t: %v\n%s", err, out)
	}
	if !strings.Contains(out, "/dev/pts/") || !strings.Contains(out, "exec-tty-ok") {
		t.Fatalf("exec -t output %q", out)
	}
}
