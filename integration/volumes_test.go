//go:build integration

package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	cri "k8s.io/cri-api/pkg/apis/runtime/v1"

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

// kubeletConfigMap writes a ConfigMap volume as kubelet's atomic writer
// does (a timestamped directory, ..data pointing at it, a symlink per key)
// and returns a function swapping in new content the same way.
func kubeletConfigMap(t *testing.T, dir string, files map[string]string) func(map[string]string) {
	t.Helper()
	gen := 0
	var keys []string
	write := func(files map[string]string) {
		gen++
		ts := fmt.Sprintf("..2026_12_04_00_00_%02d.%d", gen, gen)
		must(t, os.MkdirAll(filepath.Join(dir, ts), 0o755))
		for k, v := range files {
			must(t, os.WriteFile(filepath.Join(dir, ts, k), []byte(v), 0o644))
		}
		old, _ := os.Readlink(filepath.Join(dir, "..data"))
		must(t, os.Symlink(ts, filepath.Join(dir, "..data_tmp")))
		must(t, os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")))
		for k := range files {
			os.Symlink("..data/"+k, filepath.Join(dir, k))
		}
		for _, k := range keys {
			if _, ok := files[k]; !ok {
				must(t, os.Remove(filepath.Join(dir, k)))
			}
		}
		keys = keys[:0]
		for k := range files {
			keys = append(keys, k)
		}
		if old != "" {
			must(t, os.RemoveAll(filepath.Join(dir, old)))
		}
	}
	write(files)
	return write
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestCRIVolumes runs a pod through containerd's CRI with the volumes
// kubelet hands a container: a ConfigMap-shaped volume is copied in
// (read-only) and an update made as kubelet makes it reaches the guest; an
// emptyDir is shared by the pod's two containers, a medium: Memory one has
// its size limit, neither reaches the node; CRI's /etc/hostname and
// /etc/hosts are the pod's; a non-root container with a supplemental group
// and a read-only root runs a setuid binary; a hostPath is refused, named.
func TestCRIVolumes(t *testing.T) {
	h := startWithUsersImage(t, harness.Options{}, "k8s.io")
	pause, err := testimage.Pause()
	must(t, err)
	h.ImportImage(t, pause, testimage.PauseRef, "k8s.io")
	rs := criRuntime(t, h)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()

	vols := filepath.Join(h.Dir, "pods", "uid-volpod", "volumes")
	cfgDir := filepath.Join(vols, "kubernetes.io~configmap", "cfg")
	cacheDir := filepath.Join(vols, "kubernetes.io~empty-dir", "cache")
	must(t, os.MkdirAll(cfgDir, 0o755))
	must(t, os.MkdirAll(cacheDir, 0o777))
	// medium: Memory with sizeLimit: kubelet mounts a tmpfs of that size.
	memDir := filepath.Join(vols, "kubernetes.io~empty-dir", "mem")
	must(t, os.MkdirAll(memDir, 0o777))
	must(t, syscall.Mount("tmpfs", memDir, "tmpfs", 0, "size=1m"))
	defer syscall.Unmount(memDir, syscall.MNT_DETACH)
	swap := kubeletConfigMap(t, cfgDir, map[string]string{"greeting": "hello-v1\n", "other": "o\n"})

	pod := &cri.PodSandboxConfig{
		Metadata: &cri.PodSandboxMetadata{Name: "volpod", Uid: "uid-volpod", Namespace: "raksh-test"},
		Hostname: "volpod",
		Linux: &cri.LinuxPodSandboxConfig{SecurityContext: &cri.LinuxSandboxSecurityContext{
			NamespaceOptions: &cri.NamespaceOption{Network: cri.NamespaceMode_NODE},
		}},
	}
	sb, err := rs.RunPodSandbox(ctx, &cri.RunPodSandboxRequest{Config: pod, RuntimeHandler: "raksh"})
	if err != nil {
		t.Fatalf("RunPodSandbox: %v", err)
	}
	defer func() {
		rs.StopPodSandbox(ctx, &cri.StopPodSandboxRequest{PodSandboxId: sb.PodSandboxId})
		rs.RemovePodSandbox(ctx, &cri.RemovePodSandboxRequest{PodSandboxId: sb.PodSandboxId})
		waitNoQEMU(t, h)
	}()
	create := func(name string, mounts []*cri.Mount, sc *cri.LinuxContainerSecurityContext) (string, error) {
		c, err := rs.CreateContainer(ctx, &cri.CreateContainerRequest{
			PodSandboxId: sb.PodSandboxId, SandboxConfig: pod,
			Config: &cri.ContainerConfig{
				Metadata: &cri.ContainerMetadata{Name: name},
				Image:    &cri.ImageSpec{Image: usersRef},
				Command:  []string{"sleep", "600"},
				Mounts:   mounts,
				Linux:    &cri.LinuxContainerConfig{SecurityContext: sc},
			},
		})
		if err != nil {
			return "", err
		}
		if _, err := rs.StartContainer(ctx, &cri.StartContainerRequest{ContainerId: c.ContainerId}); err != nil {
			return "", err
		}
		return c.ContainerId, nil
	}
	execIn := func(id, script string) string {
		t.Helper()
		r, err := rs.ExecSync(ctx, &cri.ExecSyncRequest{ContainerId: id, Cmd: []string{"sh", "-c", script}, Timeout: 60})
		if err != nil {
			t.Fatalf("ExecSync %q: %v", script, err)
		}
		if r.ExitCode != 0 {
			t.Fatalf("ExecSync %q: exit %d: %s %s", script, r.ExitCode, r.Stdout, r.Stderr)
		}
		return string(r.Stdout)
	}

	// A hostPath (a node directory) is refused, named.
	_, err = create("hostpath", []*cri.Mount{{ContainerPath: "/host", HostPath: filepath.Join(h.Dir, "pods")}}, nil)
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("%q at \"/host\"", filepath.Join(h.Dir, "pods"))) {
		t.Fatalf("hostPath mount: got %v, want a refusal naming it", err)
	}

	a, err := create("writer", []*cri.Mount{
		{ContainerPath: "/etc/config", HostPath: cfgDir, Readonly: true},
		{ContainerPath: "/cache", HostPath: cacheDir},
		{ContainerPath: "/mem", HostPath: memDir},
	}, nil)
	must(t, err)
	b, err := create("reader", []*cri.Mount{{ContainerPath: "/cache", HostPath: cacheDir}},
		&cri.LinuxContainerSecurityContext{
			RunAsUser: &cri.Int64Value{Value: 65534}, RunAsGroup: &cri.Int64Value{Value: 65534},
			SupplementalGroups: []int64{1234}, ReadonlyRootfs: true,
		})
	must(t, err)

	if out := execIn(a, "cat /etc/config/greeting; cat /etc/config/other; touch /etc/config/x 2>/dev/null && echo writable; cat /etc/hostname; grep -c localhost /etc/hosts"); out != "hello-v1\no\nvolpod\n1\n" {
		t.Errorf("configmap, hostname, hosts in the guest: %q", out)
	}
	// emptyDir: written by one container, read by the other; not on the node.
	execIn(a, "echo shared-in-guest > /cache/note; chmod 644 /cache/note")
	if out := execIn(b, "cat /cache/note"); out != "shared-in-guest\n" {
		t.Errorf("emptyDir read by the second container: %q", out)
	}
	if _, err := os.Stat(filepath.Join(cacheDir, "note")); !os.IsNotExist(err) {
		t.Errorf("emptyDir content reached the node: %v", err)
	}
	// The memory emptyDir is a guest tmpfs of the node's size (1 MiB).
	if out := execIn(a, "dd if=/dev/zero of=/mem/small bs=1k count=512 2>/dev/null && echo fits; dd if=/dev/zero of=/mem/big bs=1k count=1024 2>/dev/null || echo full"); out != "fits\nfull\n" {
		t.Errorf("medium: Memory emptyDir with a 1 MiB limit: %q", out)
	}
	if _, err := os.Stat(filepath.Join(memDir, "small")); !os.IsNotExist(err) {
		t.Errorf("memory emptyDir content reached the node: %v", err)
	}
	// Non-root, supplemental group, read-only root, setuid (CRI leaves
	// noNewPrivileges off unless asked, as on runc).
	if out := execIn(b, "id -u; id -G; /bin/euid; touch /rootfs-write 2>/dev/null && echo writable; echo done"); out != "65534\n65534 1234\nuid=65534 euid=0\ndone\n" {
		t.Errorf("non-root container: %q", out)
	}

	// An update made as kubelet makes it reaches the guest within seconds.
	start := time.Now()
	swap(map[string]string{"greeting": "hello-v2\n"})
	for {
		out := execIn(a, "cat /etc/config/greeting; ls /etc/config")
		if strings.HasPrefix(out, "hello-v2\n") && !strings.Contains(out, "other") {
			t.Logf("configmap update visible in the guest after %s", time.Since(start).Round(10*time.Millisecond))
			break
		}
		if time.Since(start) > 20*time.Second {
			t.Fatalf("configmap update not in the guest after 20s: %q", out)
		}
		time.Sleep(300 * time.Millisecond)
	}
}
