//go:build integration

package integration

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/raksh-project/raksh/integration/harness"
)

const criBusybox = "docker.io/raksh/busybox:cri"

// startCRI starts a private containerd with o, imports the pause image and
// the busybox image (as criBusybox) into the CRI's namespace, and returns
// the CRI runtime client.
func startCRI(t testing.TB, o harness.Options) (*harness.Containerd, cri.RuntimeServiceClient) {
	t.Helper()
	h := harness.StartContainerd(t, o)
	h.ImportCRIImages(t, criBusybox)
	return h, criRuntime(t, h)
}

// criRuntime dials the CRI of h; the connection is closed at test end.
func criRuntime(t testing.TB, h *harness.Containerd) cri.RuntimeServiceClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+h.Address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return cri.NewRuntimeServiceClient(conn)
}

// TestCRIPodOneVM runs a pod with two containers on the raksh handler: one
// VM (one QEMU) for the pod, ExecSync works, and removing the pod stops it.
func TestCRIPodOneVM(t *testing.T) {
	h, rs := startCRI(t, harness.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	checkRuntimeFeatures(ctx, t, h, rs)

	pod := &cri.PodSandboxConfig{
		Metadata: &cri.PodSandboxMetadata{Name: "pod1", Uid: "uid-pod1", Namespace: "raksh-test"},
		Hostname: "pod1",
		Linux: &cri.LinuxPodSandboxConfig{SecurityContext: &cri.LinuxSandboxSecurityContext{
			NamespaceOptions: &cri.NamespaceOption{Network: cri.NamespaceMode_NODE},
		}},
	}
	sb, err := rs.RunPodSandbox(ctx, &cri.RunPodSandboxRequest{Config: pod, RuntimeHandler: "raksh"})
	if err != nil {
		t.Fatalf("RunPodSandbox: %v", err)
	}
	var ids []string
	for _, name := range []string{"first", "second"} {
		c, err := rs.CreateContainer(ctx, &cri.CreateContainerRequest{
			PodSandboxId: sb.PodSandboxId, SandboxConfig: pod,
			Config: &cri.ContainerConfig{
				Metadata: &cri.ContainerMetadata{Name: name},
				Image:    &cri.ImageSpec{Image: criBusybox},
				Command:  []string{"/bin/sh", "-c", "echo " + name + " > /tmp/name; exec sleep 600"},
				Linux:    &cri.LinuxContainerConfig{},
			},
		})
		if err != nil {
			t.Fatalf("CreateContainer %s: %v", name, err)
		}
		if _, err := rs.StartContainer(ctx, &cri.StartContainerRequest{ContainerId: c.ContainerId}); err != nil {
			t.Fatalf("StartContainer %s: %v", name, err)
		}
		ids = append(ids, c.ContainerId)
	}
	if n := len(h.QEMUProcesses()); n != 1 {
		t.Fatalf("%d QEMU processes for one pod, want 1", n)
	}
	hostKernel := strings.TrimSpace(readFile(t, "/proc/sys/kernel/osrelease"))
	for i, id := range ids {
		r, err := rs.ExecSync(ctx, &cri.ExecSyncRequest{ContainerId: id, Cmd: []string{"/bin/sh", "-c", "cat /tmp/name; uname -r; exit 5"}, Timeout: 120})
		if err != nil {
			t.Fatalf("ExecSync: %v", err)
		}
		lines := strings.Fields(string(r.Stdout))
		if r.ExitCode != 5 || len(lines) != 2 || lines[0] != []string{"first", "second"}[i] || lines[1] == hostKernel {
			t.Fatalf("ExecSync in %s: exit %d stdout %q stderr %q", id, r.ExitCode, r.Stdout, r.Stderr)
		}
	}
	// Both containers share the pod's VM: the first sees the second's files? No:
	// each has its own rootfs, but they share one kernel (same boot id).
	var boots []string
	for _, id := range ids {
		r, err := rs.ExecSync(ctx, &cri.ExecSyncRequest{ContainerId: id, Cmd: []string{"cat", "/proc/sys/kernel/random/boot_id"}, Timeout: 60})
		if err != nil {
			t.Fatal(err)
		}
		boots = append(boots, strings.TrimSpace(string(r.Stdout)))
	}
	if boots[0] != boots[1] {
		t.Errorf("containers of one pod run in different kernels: %v", boots)
	}
	if _, err := rs.StopPodSandbox(ctx, &cri.StopPodSandboxRequest{PodSandboxId: sb.PodSandboxId}); err != nil {
		t.Fatalf("StopPodSandbox: %v", err)
	}
	if _, err := rs.RemovePodSandbox(ctx, &cri.RemovePodSandboxRequest{PodSandboxId: sb.PodSandboxId}); err != nil {
		t.Fatalf("RemovePodSandbox: %v", err)
	}
	waitNoQEMU(t, h)
}

// checkRuntimeFeatures: containerd introspected the raksh shim's features
// (its Info) at start: CRI lists the raksh handler with features and user
// namespaces off (the guest cannot idmap its tmpfs rootfs), and
// containerd's log has no introspection failure for it.
func checkRuntimeFeatures(ctx context.Context, t *testing.T, h *harness.Containerd, rs cri.RuntimeServiceClient) {
	t.Helper()
	st, err := rs.Status(ctx, &cri.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, rh := range st.GetRuntimeHandlers() {
		if rh.GetName() != "raksh" {
			continue
		}
		found = true
		if rh.GetFeatures() == nil {
			t.Error("CRI has no features for the raksh handler")
		} else if rh.GetFeatures().GetUserNamespaces() {
			t.Error("CRI offers user namespaces on raksh; the guest has no idmapped mounts")
		}
	}
	if !found {
		t.Errorf("CRI runtime handlers %v lack raksh", st.GetRuntimeHandlers())
	}
	if b, err := os.ReadFile(h.Log); err != nil {
		t.Fatal(err)
	} else if bytes.Contains(b, []byte(`failed to introspect features of runtime \"raksh\"`)) || bytes.Contains(b, []byte(`failed to introspect features of runtime "raksh"`)) {
		t.Error("containerd failed to introspect the raksh runtime's features (see its log)")
	}
}

// TestRuncFeaturesCurrent: the features the shim reports (embedded
// runtime/runc-features.json) are those of the runc the guest initrd
// carries.
func TestRuncFeaturesCurrent(t *testing.T) {
	out, err := exec.Command(harness.Bin(t, "runc"), "features").Output()
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(filepath.Join(harness.Repo(), "runtime", "runc-features.json"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(bytes.TrimSpace(out), bytes.TrimSpace(want)) {
		t.Fatal("runtime/runc-features.json is not `runc features` of the guest's runc: regenerate it with _output/deps/bin/runc features > runtime/runc-features.json")
	}
}
