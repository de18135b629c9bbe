//go:build integration

package integration

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/raksh-project/raksh/envelope"
	"github.com/raksh-project/raksh/integration/harness"
	"github.com/raksh-project/raksh/integration/testimage"
	rakshruntime "github.com/raksh-project/raksh/runtime"
)

// startSharedFS starts containerd with the raksh handler sharing node
// paths over virtio-fs, busybox and pause in CRI's namespace.
func startSharedFS(t *testing.T) (*harness.Containerd, cri.RuntimeServiceClient) {
	t.Helper()
	h := harness.StartContainerd(t, harness.Options{RuntimeConfig: "shared_fs = \"virtio-fs\"\n"})
	img, err := testimage.Busybox(nil, "/bin/sh")
	must(t, err)
	h.ImportImage(t, img, busyboxRef, "k8s.io")
	pause, err := testimage.Pause()
	must(t, err)
	h.ImportImage(t, pause, testimage.PauseRef, "k8s.io")
	return h, criRuntime(t, h)
}

// virtiofsdProcesses returns the virtiofsd processes sharing a directory
// under this containerd's raksh state directory.
func virtiofsdProcesses(h *harness.Containerd) []string {
	var found []string
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !bytes.Contains(b, []byte("virtiofsd")) || !bytes.Contains(b, []byte(h.StateDir)) {
			continue
		}
		found = append(found, filepath.Base(filepath.Dir(p)))
	}
	return found
}

// checkNothingLeft waits for the pod's VM, virtiofsd and every mount under
// the state directory to be gone, and checks the node's files survived.
func checkNothingLeft(t *testing.T, h *harness.Containerd, survivors ...string) {
	t.Helper()
	waitNoQEMU(t, h)
	deadline := time.Now().Add(30 * time.Second)
	for {
		procs := virtiofsdProcesses(h)
		mounts, err := mountinfo.GetMounts(mountinfo.PrefixFilter(h.StateDir))
		must(t, err)
		if len(procs) == 0 && len(mounts) == 0 {
			break
		}
		if time.Now().After(deadline) {
			var mps []string
			for _, m := range mounts {
				mps = append(mps, m.Mountpoint)
			}
			t.Fatalf("left on the node after the pod: virtiofsd %v, mounts %v", procs, mps)
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, p := range survivors {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("node file %s did not survive the pod's teardown: %v", p, err)
		}
	}
	shares, _ := filepath.Glob(filepath.Join(h.StateDir, "*", "*", "shared"))
	if len(shares) > 0 {
		t.Errorf("virtio-fs share directories left: %v", shares)
	}
	// Debian's virtiofsd writes /run/virtiofsd/<socket path, dotted>.pid.
	pidFiles, _ := filepath.Glob(filepath.Join("/run/virtiofsd", strings.ReplaceAll(h.StateDir, "/", ".")+"*"))
	if len(pidFiles) > 0 {
		t.Errorf("virtiofsd pid files left: %v", pidFiles)
	}
}

// TestCRIHostPathVirtioFS runs pods through containerd's CRI on a handler
// with shared_fs = "virtio-fs": a read-write hostPath is shared live (a
// guest write is on the node, a node write in the guest), a read-only one
// refuses writes, a single-file hostPath works, symlinks inside the share
// resolve in the container (an absolute one in the container's root, never
// the guest's or the node's), and nothing is left on the node after the
// pod is removed, nor after its QEMU or its shim was killed with SIGKILL. (Without
// shared_fs, TestCRIVolumes checks a hostPath is refused, named.)
func TestCRIHostPathVirtioFS(t *testing.T) {
	h, rs := startSharedFS(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()

	data := filepath.Join(h.Dir, "hostdata")
	rw, ro := filepath.Join(data, "rw"), filepath.Join(data, "ro")
	must(t, os.MkdirAll(filepath.Join(rw, "sub"), 0o755))
	must(t, os.MkdirAll(ro, 0o755))
	must(t, os.WriteFile(filepath.Join(rw, "from-node"), []byte("node-v1\n"), 0o644))
	must(t, os.WriteFile(filepath.Join(rw, "sub", "target"), []byte("via-link\n"), 0o644))
	must(t, os.Symlink("sub/target", filepath.Join(rw, "rel-link")))
	must(t, os.Symlink("/etc/hostname", filepath.Join(rw, "abs-link")))
	must(t, os.WriteFile(filepath.Join(ro, "kept"), []byte("read-only\n"), 0o644))
	single := filepath.Join(data, "single.conf")
	must(t, os.WriteFile(single, []byte("one-file\n"), 0o644))
	// A node mount under the shared directory (as kubelet's and critest's).
	sub := filepath.Join(rw, "submount")
	must(t, os.Mkdir(sub, 0o755))
	must(t, syscall.Mount("tmpfs", sub, "tmpfs", 0, "size=1m"))
	defer syscall.Unmount(sub, syscall.MNT_DETACH)
	must(t, os.WriteFile(filepath.Join(sub, "in-tmpfs"), []byte("sub\n"), 0o644))

	runPod := func(name string) (string, *cri.PodSandboxConfig, string) {
		t.Helper()
		pod := &cri.PodSandboxConfig{
			Metadata: &cri.PodSandboxMetadata{Name: name, Uid: "uid-" + name, Namespace: "raksh-test"},
			Hostname: name,
			Linux: &cri.LinuxPodSandboxConfig{SecurityContext: &cri.LinuxSandboxSecurityContext{
				NamespaceOptions: &cri.NamespaceOption{Network: cri.NamespaceMode_NODE},
			}},
		}
		sb, err := rs.RunPodSandbox(ctx, &cri.RunPodSandboxRequest{Config: pod, RuntimeHandler: "raksh"})
		if err != nil {
			t.Fatalf("RunPodSandbox: %v", err)
		}
		c, err := rs.CreateContainer(ctx, &cri.CreateContainerRequest{
			PodSandboxId: sb.PodSandboxId, SandboxConfig: pod,
			Config: &cri.ContainerConfig{
				Metadata: &cri.ContainerMetadata{Name: "app"},
				Image:    &cri.ImageSpec{Image: busyboxRef},
				Command:  []string{"sleep", "600"},
				Mounts: []*cri.Mount{
					{ContainerPath: "/rw", HostPath: rw},
					{ContainerPath: "/ro", HostPath: ro, Readonly: true},
					{ContainerPath: "/etc/single.conf", HostPath: single},
				},
			},
		})
		if err != nil {
			t.Fatalf("CreateContainer with hostPath volumes: %v", err)
		}
		if _, err := rs.StartContainer(ctx, &cri.StartContainerRequest{ContainerId: c.ContainerId}); err != nil {
			t.Fatalf("StartContainer: %v", err)
		}
		return sb.PodSandboxId, pod, c.ContainerId
	}
	removePod := func(id string) {
		// After the VM died, containerd may still hold the container as
		// running until it has handled the exit event (it retries): so
		// does kubelet, which retries the removal.
		var err error
		for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(time.Second) {
			rs.StopPodSandbox(ctx, &cri.StopPodSandboxRequest{PodSandboxId: id})
			if _, err = rs.RemovePodSandbox(ctx, &cri.RemovePodSandboxRequest{PodSandboxId: id}); err == nil {
				return
			}
		}
		t.Errorf("RemovePodSandbox: %v", err)
	}
	exec := func(id, script string) (string, int32) {
		t.Helper()
		r, err := rs.ExecSync(ctx, &cri.ExecSyncRequest{ContainerId: id, Cmd: []string{"sh", "-c", script}, Timeout: 60})
		if err != nil {
			t.Fatalf("ExecSync %q: %v", script, err)
		}
		return string(r.Stdout) + string(r.Stderr), r.ExitCode
	}

	sb, pod, c := runPod("sfpod")

	// The termination message a container writes is copied back to
	// kubelet's node file before its exit is reported.
	termLog := filepath.Join(data, "termination-log")
	must(t, os.WriteFile(termLog, nil, 0o666))
	tc, err := rs.CreateContainer(ctx, &cri.CreateContainerRequest{
		PodSandboxId: sb, SandboxConfig: pod,
		Config: &cri.ContainerConfig{
			Metadata: &cri.ContainerMetadata{Name: "term"},
			Image:    &cri.ImageSpec{Image: busyboxRef},
			Command:  []string{"sh", "-c", "echo 'bye: disk full' > /dev/termination-log; exit 3"},
			Mounts:   []*cri.Mount{{ContainerPath: "/dev/termination-log", HostPath: termLog}},
		},
	})
	must(t, err)
	_, err = rs.StartContainer(ctx, &cri.StartContainerRequest{ContainerId: tc.ContainerId})
	must(t, err)
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(300 * time.Millisecond) {
		st, err := rs.ContainerStatus(ctx, &cri.ContainerStatusRequest{ContainerId: tc.ContainerId})
		must(t, err)
		if st.Status.State == cri.ContainerState_CONTAINER_EXITED {
			if st.Status.ExitCode != 3 {
				t.Errorf("termination container exit code %d", st.Status.ExitCode)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("termination container did not exit")
		}
	}
	if b, err := os.ReadFile(termLog); err != nil || string(b) != "bye: disk full\n" {
		t.Errorf("termination message on the node: %q, %v", b, err)
	}
	if out, code := exec(c, "cat /rw/from-node /rw/rel-link /rw/abs-link /ro/kept /etc/single.conf"); code != 0 || out != "node-v1\nvia-link\nsfpod\nread-only\none-file\n" {
		t.Errorf("node content, symlinks and a single file in the guest: exit %d: %q", code, out)
	}
	// Read-write: the guest's write is on the node, the node's in the guest.
	if out, code := exec(c, "echo guest-wrote > /rw/from-guest && echo appended >> /etc/single.conf"); code != 0 {
		t.Fatalf("write to the read-write hostPath: exit %d: %s", code, out)
	}
	if b, err := os.ReadFile(filepath.Join(rw, "from-guest")); err != nil || string(b) != "guest-wrote\n" {
		t.Errorf("guest write on the node: %q, %v", b, err)
	}
	if b, err := os.ReadFile(single); err != nil || string(b) != "one-file\nappended\n" {
		t.Errorf("guest write to the single-file hostPath on the node: %q, %v", b, err)
	}
	must(t, os.WriteFile(filepath.Join(rw, "from-node"), []byte("node-v2\n"), 0o644))
	var out string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(300 * time.Millisecond) {
		if out, _ = exec(c, "cat /rw/from-node"); out == "node-v2\n" {
			break
		}
	}
	if out != "node-v2\n" {
		t.Errorf("node update in the guest: %q", out)
	}
	// Read-only: refused in the guest, nothing on the node.
	if out, code := exec(c, "echo x > /ro/new; echo x >> /ro/kept"); code == 0 || !strings.Contains(out, "Read-only file system") {
		t.Errorf("write to the read-only hostPath: exit %d: %q", code, out)
	}
	if _, err := os.Stat(filepath.Join(ro, "new")); !os.IsNotExist(err) {
		t.Errorf("a write to the read-only hostPath reached the node: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(ro, "kept")); string(b) != "read-only\n" {
		t.Errorf("read-only file changed on the node: %q", b)
	}
	// The share holds opaque ids only: the node's path is nowhere in the guest.
	if out, _ := exec(c, "grep -c "+filepath.Base(data)+" /proc/mounts"); strings.TrimSpace(out) != "0" {
		t.Errorf("the node path is visible in the container's mounts: %q", out)
	}
	if len(virtiofsdProcesses(h)) == 0 {
		t.Error("no virtiofsd runs for the pod")
	}
	// The node's submount is in the guest (rbind), and the node can still
	// unmount and remove it while the pod runs, as with runc: the share's
	// binds are not mount points of the node's namespace.
	if out, code := exec(c, "cat /rw/submount/in-tmpfs"); code != 0 || out != "sub\n" {
		t.Errorf("node submount in the guest: exit %d: %q", code, out)
	}
	must(t, syscall.Unmount(sub, 0))
	if err := os.Remove(sub); err != nil {
		t.Errorf("the node cannot remove its own mount point under a shared directory while the pod runs: %v", err)
	}
	removePod(sb)
	checkNothingLeft(t, h, filepath.Join(rw, "from-node"), filepath.Join(rw, "from-guest"), filepath.Join(ro, "kept"), single)

	// kill -9 of the pod's QEMU: the pod's removal still leaves nothing.
	sb, _, c = runPod("sfkill")
	if out, code := exec(c, "cat /rw/from-guest"); code != 0 || out != "guest-wrote\n" {
		t.Errorf("second pod reads the node's file: exit %d: %q", code, out)
	}
	pids := h.QEMUProcesses()
	if len(pids) != 1 {
		t.Fatalf("QEMU processes: %v", pids)
	}
	must(t, syscall.Kill(pids[0], syscall.SIGKILL))
	for deadline := time.Now().Add(30 * time.Second); len(virtiofsdProcesses(h)) > 0 && time.Now().Before(deadline); {
		time.Sleep(200 * time.Millisecond)
	}
	if p := virtiofsdProcesses(h); len(p) > 0 {
		t.Errorf("virtiofsd outlived its QEMU by 30 s: %v", p)
	}
	removePod(sb)
	checkNothingLeft(t, h, filepath.Join(rw, "from-node"), filepath.Join(rw, "from-guest"), filepath.Join(ro, "kept"), single)

	// kill -9 of the pod's shim: containerd's clean-up (the shim's delete
	// action) and the pod's removal leave nothing either.
	sb, _, c = runPod("sfshim")
	if out, code := exec(c, "cat /ro/kept"); code != 0 || out != "read-only\n" {
		t.Errorf("third pod reads the node's file: exit %d: %q", code, out)
	}
	pids = h.QEMUProcesses()
	if len(pids) != 1 {
		t.Fatalf("QEMU processes: %v", pids)
	}
	must(t, syscall.Kill(parentPid(pids[0]), syscall.SIGKILL))
	removePod(sb)
	checkNothingLeft(t, h, filepath.Join(rw, "from-node"), filepath.Join(rw, "from-guest"), filepath.Join(ro, "kept"), single)
}

// TestSealedMountPolicy: on a node sharing node paths (shared_fs), a
// sealed container whose envelope's mount policy accepts a read-only
// shared mount at /data runs with it, and the same container with a
// node path elsewhere, or /data read-write, is refused, naming the mount.
func TestSealedMountPolicy(t *testing.T) {
	harness.RequiresRoot(t)
	ctx := context.Background()
	k := startKBS(t)
	h := startWithBusybox(t, harness.Options{
		RuntimeConfig: fmt.Sprintf("tee = \"sim\"\nshared_fs = \"virtio-fs\"\n[proxy]\nkbs = %q\n", k.hostPort()),
	})
	cfg, err := rakshruntime.LoadConfig(h.RuntimeConfigPath)
	must(t, err)
	m, err := rakshruntime.LaunchMeasurement(cfg)
	must(t, err)
	k.setPolicy(t, fmt.Sprintf(`{"rules":[{"resources":["default/workload/*"],"tee":["sim"],"measurements":[%q]}]}`, hex.EncodeToString(m)))
	const kid = "kbs:///default/workload/mounts"
	key, err := envelope.GenerateKey(envelope.KeyP256)
	must(t, err)
	pemKey, _ := envelope.MarshalPrivateKey(key)
	must(t, k.Admin.SetResource(ctx, "default/workload/mounts", pemKey))

	data := filepath.Join(h.Dir, "policy-data")
	must(t, os.MkdirAll(data, 0o755))
	must(t, os.WriteFile(filepath.Join(data, "f"), []byte("node-data\n"), 0o644))
	run := func(id string, mounts ...string) (string, error) {
		sealed, err := envelope.Seal(&envelope.Spec{
			Args:   []string{"cat", "/data/f"},
			Mounts: &envelope.MountPolicy{Allow: []envelope.MountRule{{Destination: "/data", Kinds: []string{envelope.MountShared}, ReadOnly: true}}},
		}, envelope.Binding{Namespace: "default", Pod: id, Container: id}, envelope.Recipient{KeyID: kid, Key: key.Public()})
		must(t, err)
		cctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		defer cancel()
		args := []string{"run", "--rm", "--runtime", rakshRuntime, "--annotation", envelope.ContainerAnnotation + "=" + string(sealed)}
		for _, m := range mounts {
			args = append(args, "--mount", m)
		}
		return h.CtrContext(cctx, append(args, busyboxRef, id, envelope.Placeholder)...)
	}
	if out, err := run("policy-ok", "type=bind,src="+data+",dst=/data,options=rbind:ro"); err != nil || !strings.Contains(out, "node-data") {
		t.Errorf("sealed container with its accepted mount: %v %q", err, out)
	}
	out, err := run("policy-other", "type=bind,src="+data+",dst=/data,options=rbind:ro", "type=bind,src="+data+",dst=/other,options=rbind:ro")
	if err == nil || !strings.Contains(err.Error(), `shared mount at "/other"`) || strings.Contains(out, "node-data") {
		t.Errorf("a mount outside the sealed policy: %v %q", err, out)
	}
	out, err = run("policy-rw", "type=bind,src="+data+",dst=/data,options=rbind:rw")
	if err == nil || !strings.Contains(err.Error(), `shared mount at "/data" (read-only false)`) || strings.Contains(out, "node-data") {
		t.Errorf("a read-write mount where the policy asks read-only: %v %q", err, out)
	}
	waitNoQEMU(t, h)
}
