//go:build integration

package integration

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	criapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/raksh-project/raksh/agent"
	"github.com/raksh-project/raksh/agent/image/imagetest"
	"github.com/raksh-project/raksh/integration/harness"
	"github.com/raksh-project/raksh/integration/testimage"
	"github.com/raksh-project/raksh/runtime/initrd"
	"github.com/raksh-project/raksh/snapshotter/rootfs"
)

// Guest-built rootfs end to end: containerd v2.4.2 with raksh-snapshotter
// pulls a raksh image without unpacking it on the host, `ctr run` hands the
// descriptor to the shim, and the agent builds the rootfs in guest memory
// (guest pull through the shim's registry proxy, or decryption of the
// host-cached ciphertext with a key baked into the initrd).

const (
	gpMarker  = "RAKSH-GUEST-PULLED-MARKER-5e0b"
	encMarker = "RAKSH-GUEST-DECRYPTED-MARKER-93ac"
)

// busyboxLayer returns the busybox test image's layer as a gzip layer.
func busyboxLayer(t *testing.T, extra ...string) *imagetest.Layer {
	t.Helper()
	files := map[string]testimage.File{}
	for _, f := range extra {
		files[f] = testimage.File{Mode: 0o644, Content: []byte(f)}
	}
	img, err := testimage.Busybox(files, "/bin/sh")
	if err != nil {
		t.Fatal(err)
	}
	ls, err := img.Layers()
	if err != nil || len(ls) != 1 {
		t.Fatalf("busybox layers: %v", err)
	}
	rc, err := ls[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tarBytes, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return imagetest.GzipLayer(tarBytes)
}

// keyInitrd builds a guest initrd (the agent under test) holding the
// private key priv in the agent's default image key directory, as
// `rakshctl initrd build --file /etc/raksh/image-keys/test.pem=KEY` does.
func keyInitrd(t *testing.T, priv []byte) string {
	t.Helper()
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "image-key.pem")
	if err := os.WriteFile(keyFile, priv, 0o600); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{path.Join(agent.DefaultImageKeyDir, "test.pem"): keyFile}
	// The simulated TEE's platform key, as hack/build-guest.sh bakes it in.
	if sim := filepath.Join(harness.Output(), "keys", "sim-platform.key"); fileExists(sim) {
		files["/etc/raksh/sim-platform-key.pem"] = sim
	}
	out := filepath.Join(dir, "initrd.img")
	if err := initrd.Build(initrd.Options{
		Agent: harness.Bin(t, "raksh-agent"), Runc: harness.Bin(t, "runc"),
		ModulesDir: filepath.Join(harness.Output(), "deps", "kernel", "modules"), Modules: initrd.DefaultModules,
		Files: files, Output: out,
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// runRaksh runs `ctr run --rm` of ref on the raksh snapshotter in the VM.
func runRaksh(t *testing.T, h *harness.Containerd, ref, id string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	return h.CtrContext(ctx, append([]string{"run", "--rm", "--snapshotter", "raksh", "--runtime", rakshRuntime, ref, id}, args...)...)
}

// noLeftovers checks a failed run left nothing behind on the host: no
// container, snapshot, mount, bundle or VM.
func noLeftovers(t *testing.T, h *harness.Containerd, id string) {
	t.Helper()
	if out, _ := h.Ctr("containers", "ls", "-q"); strings.Contains(out, id) {
		t.Errorf("container %s left behind", id)
	}
	if out, _ := h.Ctr("snapshots", "--snapshotter", "raksh", "ls"); strings.Contains(out, id) {
		t.Errorf("snapshot %s left behind:\n%s", id, out)
	}
	if b, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(b), "/"+id+"/") {
		t.Errorf("a mount of %s left behind", id)
	}
	if m, _ := filepath.Glob(filepath.Join(h.Dir, "state", "io.containerd.runtime.v2.task", "*", id)); len(m) > 0 {
		t.Errorf("bundle left behind: %v", m)
	}
	deadline := time.Now().Add(15 * time.Second)
	for len(h.QEMUProcesses()) > 0 {
		if time.Now().After(deadline) {
			t.Errorf("VM still running after the failed run: %v", h.QEMUProcesses())
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestGuestPullRunInVM: the guest pulls the image itself through the
// shim's allow-listed registry proxy; the container prints a file of the
// image; containerd's content store and the snapshotter hold no layer.
func TestGuestPullRunInVM(t *testing.T) {
	harness.RequiresRoot(t)
	host, stop := imagetest.Registry()
	defer stop()
	bb := busyboxLayer(t)
	top := imagetest.GzipLayer(imagetest.Tar(map[string]string{"app/marker": gpMarker}))
	img, err := imagetest.Image(bb, top)
	if err != nil {
		t.Fatal(err)
	}
	ref := host + "/raksh/run:1"
	if _, err := imagetest.Push(ref, img); err != nil {
		t.Fatal(err)
	}
	s := startSnapshotter(t, guestPullConfig(host))
	h := withSnapshotterOpts(t, s, harness.Options{RuntimeConfig: fmt.Sprintf("[proxy]\nregistry = %q\n", host)})

	if out, err := h.Ctr("images", "pull", "--plain-http", "--snapshotter", "raksh", ref); err != nil {
		t.Fatalf("pull: %v\n%s", err, out)
	}
	start := time.Now()
	out, err := runRaksh(t, h, ref, "gp-run", "/bin/sh", "-c", "cat /app/marker; echo; uname -r")
	if err != nil {
		t.Fatalf("ctr run: %v\n%s", err, out)
	}
	t.Logf("ctr run of the guest-pulled image (VM boot, guest pull of %d bytes, run): %v", len(bb.Blob)+len(top.Blob), time.Since(start))
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 || lines[0] != gpMarker {
		t.Fatalf("container printed %q, want the image's marker", out)
	}
	if hostKernel, _ := os.ReadFile("/proc/sys/kernel/osrelease"); strings.TrimSpace(string(hostKernel)) == lines[1] {
		t.Fatalf("ran on the host kernel %s", lines[1])
	}
	content := contentDigests(t, h)
	for _, l := range []*imagetest.Layer{bb, top} {
		if strings.Contains(content, l.Digest().String()) {
			t.Fatalf("layer %s is in containerd's content store", l.Digest())
		}
	}
	if hits := append(grepTree(s.root, gpMarker), grepTree(h.Dir, gpMarker)...); len(hits) > 0 {
		t.Fatalf("marker found on the host: %v", hits)
	}
	if len(grepTree(s.root, "busybox")) > 0 {
		t.Fatal("busybox layer content under the snapshotter root")
	}

	// Without the registry allow-listed, the guest cannot pull: a clear
	// error, nothing left behind.
	cfg := readFile(t, h.RuntimeConfigPath)
	i := strings.Index(cfg, "[proxy]")
	if i < 0 {
		t.Fatalf("no [proxy] table in the runtime config:\n%s", cfg)
	}
	if err := os.WriteFile(h.RuntimeConfigPath, []byte(cfg[:i]), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err = runRaksh(t, h, ref, "gp-noproxy", "/bin/cat", "/app/marker")
	if err == nil || !strings.Contains(err.Error(), "build rootfs") {
		t.Fatalf("guest pull without an allow-listed registry: %v\n%s", err, out)
	}
	t.Logf("without [proxy] registry: %v", err)
	noLeftovers(t, h, "gp-noproxy")
}

// TestEncryptedImageRunInVM: an ocicrypt (JWE) image is pulled with its
// ciphertext cached on the host; the shim streams the ciphertext into the
// VM, the agent decrypts it with the key baked into its initrd, and the
// container prints a file of the image, which is nowhere on the host. A
// wrong key and a corrupted cached blob fail with clear errors and leave
// nothing behind.
func TestEncryptedImageRunInVM(t *testing.T) {
	harness.RequiresRoot(t)
	host, stop := imagetest.Registry()
	defer stop()
	priv, pub, err := imagetest.RSAKey()
	if err != nil {
		t.Fatal(err)
	}
	wrongPriv, _, err := imagetest.RSAKey()
	if err != nil {
		t.Fatal(err)
	}
	bb, err := imagetest.Encrypt(busyboxLayer(t), pub)
	if err != nil {
		t.Fatal(err)
	}
	top, err := imagetest.Encrypt(imagetest.GzipLayer(imagetest.Tar(map[string]string{"app/marker": encMarker})), pub)
	if err != nil {
		t.Fatal(err)
	}
	img, err := imagetest.Image(bb, top)
	if err != nil {
		t.Fatal(err)
	}
	ref := host + "/enc/run:1"
	if _, err := imagetest.Push(ref, img); err != nil {
		t.Fatal(err)
	}
	rightInitrd, wrongInitrd := keyInitrd(t, priv), keyInitrd(t, wrongPriv)

	s := startSnapshotter(t, "") // no guest pull: the host caches the ciphertext
	h := withSnapshotterOpts(t, s, harness.Options{RuntimeConfig: fmt.Sprintf("initrd = %q\n[proxy]\nregistry = %q\n", rightInitrd, host)})
	s.useContainerd(h.Address)
	if out, err := h.Ctr("images", "pull", "--plain-http", "--snapshotter", "raksh", ref); err != nil {
		t.Fatalf("pull: %v\n%s", err, out)
	}
	cached := filepath.Join(s.root, "cache", "blobs", "sha256", top.Digest().Encoded())
	if !fileExists(cached) {
		t.Fatalf("ciphertext of the marker layer not cached at %s", cached)
	}

	start := time.Now()
	out, err := runRaksh(t, h, ref, "enc-run", "/bin/cat", "/app/marker")
	if err != nil {
		t.Fatalf("ctr run: %v\n%s", err, out)
	}
	t.Logf("ctr run of the encrypted image (VM boot, %d ciphertext bytes streamed and decrypted, run): %v", len(bb.Blob)+len(top.Blob), time.Since(start))
	if strings.TrimSpace(out) != encMarker {
		t.Fatalf("container printed %q, want the image's marker", out)
	}
	if hits := append(grepTree(s.root, encMarker), grepTree(h.Dir, encMarker)...); len(hits) > 0 {
		t.Fatalf("plaintext marker found on the host: %v", hits)
	}
	if len(grepTree(s.root, "busybox")) > 0 || len(grepTree(filepath.Join(h.Dir, "root"), "busybox")) > 0 {
		t.Fatal("plaintext busybox layer on the host")
	}

	// A mixed image (plain busybox base, encrypted top): the host unpacked
	// the base, but the guest fetches it from the registry by digest through
	// the proxy rather than trusting the host's directory.
	mixedTop, err := imagetest.Encrypt(imagetest.GzipLayer(imagetest.Tar(map[string]string{"app/marker": encMarker + "-mixed"})), pub)
	if err != nil {
		t.Fatal(err)
	}
	mixedImg, err := imagetest.Image(busyboxLayer(t), mixedTop)
	if err != nil {
		t.Fatal(err)
	}
	mixedRef := host + "/enc/mixed:1"
	if _, err := imagetest.Push(mixedRef, mixedImg); err != nil {
		t.Fatal(err)
	}
	if out, err := h.Ctr("images", "pull", "--plain-http", "--snapshotter", "raksh", mixedRef); err != nil {
		t.Fatalf("pull: %v\n%s", err, out)
	}
	if out, err := runRaksh(t, h, mixedRef, "mixed-run", "/bin/cat", "/app/marker"); err != nil || strings.TrimSpace(out) != encMarker+"-mixed" {
		t.Fatalf("mixed image: %v %q", err, out)
	}
	if hits := append(grepTree(s.root, encMarker+"-mixed"), grepTree(h.Dir, encMarker+"-mixed")...); len(hits) > 0 {
		t.Fatalf("plaintext marker of the mixed image found on the host: %v", hits)
	}

	setInitrd := func(p string) {
		cfg := regexp.MustCompile(`(?m)^initrd = .*$`).ReplaceAllString(readFile(t, h.RuntimeConfigPath), fmt.Sprintf("initrd = %q", p))
		if err := os.WriteFile(h.RuntimeConfigPath, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("wrong key", func(t *testing.T) {
		setInitrd(wrongInitrd)
		defer setInitrd(rightInitrd)
		out, err := runRaksh(t, h, ref, "enc-wrongkey", "/bin/cat", "/app/marker")
		if err == nil || !strings.Contains(err.Error(), "layer decryption failed") {
			t.Fatalf("wrong key: %v\n%s", err, out)
		}
		t.Logf("wrong key: %v", err)
		noLeftovers(t, h, "enc-wrongkey")
	})
	t.Run("corrupt cached ciphertext", func(t *testing.T) {
		b, err := os.ReadFile(cached)
		if err != nil {
			t.Fatal(err)
		}
		bad := append([]byte(nil), b...)
		bad[len(bad)/2] ^= 0x01
		mode := mustMode(t, cached)
		os.Chmod(cached, 0o644)
		if err := os.WriteFile(cached, bad, 0o644); err != nil {
			t.Fatal(err)
		}
		defer func() { os.WriteFile(cached, b, 0o644); os.Chmod(cached, mode) }()
		out, err := runRaksh(t, h, ref, "enc-corrupt", "/bin/cat", "/app/marker")
		if err == nil || !strings.Contains(err.Error(), "digest mismatch") {
			t.Fatalf("corrupt ciphertext: %v\n%s", err, out)
		}
		t.Logf("corrupt ciphertext: %v", err)
		noLeftovers(t, h, "enc-corrupt")
	})
	// Still runs afterwards (nothing half-written spoiled the cache).
	if out, err := runRaksh(t, h, ref, "enc-again", "/bin/cat", "/app/marker"); err != nil || strings.TrimSpace(out) != encMarker {
		t.Fatalf("run after the failures: %v %q", err, out)
	}
}

func mustMode(t *testing.T, p string) os.FileMode {
	t.Helper()
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return st.Mode().Perm()
}

// TestImagesCRIRunInVM: both paths through the CRI, as a kubelet drives
// them. PullImage leaves the guest-pull image's layers to the guest and
// caches the encrypted image's ciphertext; one raksh pod (one VM) runs a
// container of each, and each prints its image's marker file from a rootfs
// the guest built (pulled, or decrypted with the key in the initrd).
func TestImagesCRIRunInVM(t *testing.T) {
	harness.RequiresRoot(t)
	host, stop := imagetest.Registry()
	defer stop()
	priv, pub, err := imagetest.RSAKey()
	if err != nil {
		t.Fatal(err)
	}
	gpTop := imagetest.GzipLayer(imagetest.Tar(map[string]string{"app/marker": gpMarker + "-cri"}))
	// Both raksh images are built on the pause image's busybox base (same
	// tar, so the same chain ID; compressed, or encrypted, differently). The
	// pause image is imported without labels first, so each raksh chain
	// starts with the pause image's unlabelled plain snapshot, which the
	// snapshotter names by the raksh image's own manifest.
	gpImg, err := imagetest.Image(busyboxLayer(t), gpTop)
	gpImgBase := func(t *testing.T) digest.Digest { return busyboxLayer(t).DiffID }
	if err != nil {
		t.Fatal(err)
	}
	gpRef := host + "/raksh/cri-run:1"
	if _, err := imagetest.Push(gpRef, gpImg); err != nil {
		t.Fatal(err)
	}
	encBase, err := imagetest.Encrypt(busyboxLayer(t), pub) // the pause base, encrypted: see above
	if err != nil {
		t.Fatal(err)
	}
	encTop, err := imagetest.Encrypt(imagetest.GzipLayer(imagetest.Tar(map[string]string{"app/marker": encMarker + "-cri"})), pub)
	if err != nil {
		t.Fatal(err)
	}
	encImg, err := imagetest.Image(encBase, encTop)
	if err != nil {
		t.Fatal(err)
	}
	encRef := host + "/enc/cri-run:1"
	if _, err := imagetest.Push(encRef, encImg); err != nil {
		t.Fatal(err)
	}

	s := startSnapshotter(t, guestPullConfig(host))
	hostsDir := filepath.Join(s.dir, "certs.d")
	os.MkdirAll(filepath.Join(hostsDir, host), 0o755)
	os.WriteFile(filepath.Join(hostsDir, host, "hosts.toml"), []byte(fmt.Sprintf("server = \"http://%s\"\n[host.\"http://%s\"]\n  capabilities = [\"pull\", \"resolve\"]\n", host, host)), 0o644)
	h := withSnapshotterOpts(t, s, harness.Options{RuntimeConfig: fmt.Sprintf("initrd = %q\n[proxy]\nregistry = %q\n", keyInitrd(t, priv), host)},
		[]byte(fmt.Sprintf("\n[plugins.'io.containerd.cri.v1.images']\n  snapshotter = \"raksh\"\n  [plugins.'io.containerd.cri.v1.images'.registry]\n    config_path = %q\n", hostsDir))...)
	s.useContainerd(h.Address) // the raksh differ caches ciphertext and unpacks the pause image
	// The pinned sandbox image, unpacked into raksh (an ordinary image: its
	// rootfs is an overlay and travels as a tar).
	pause, err := testimage.Pause()
	if err != nil {
		t.Fatal(err)
	}
	if pl, err := pause.Layers(); err != nil || len(pl) != 1 {
		t.Fatalf("pause layers: %v", err)
	} else if d, err := pl[0].DiffID(); err != nil || d.String() != gpImgBase(t).String() {
		t.Fatalf("the pause image does not share the raksh images' base (diff ID %v, %v)", d, err)
	}
	archive := filepath.Join(s.dir, "pause.tar")
	if err := testimage.WriteArchive(pause, testimage.PauseRef, archive); err != nil {
		t.Fatal(err)
	}
	if out, err := ctrAfterRestartNS(t, h, "k8s.io", "images", "import", "--local", "--snapshotter", "raksh", archive); err != nil {
		t.Fatalf("import pause: %v\n%s", err, out)
	}

	conn, err := grpc.NewClient("unix://"+h.Address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	rs, is := criapi.NewRuntimeServiceClient(conn), criapi.NewImageServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	for _, ref := range []string{gpRef, encRef} {
		if _, err := is.PullImage(ctx, &criapi.PullImageRequest{Image: &criapi.ImageSpec{Image: ref}}); err != nil {
			t.Fatalf("CRI PullImage %s: %v", ref, err)
		}
	}
	if !fileExists(filepath.Join(s.root, "cache", "blobs", "sha256", encTop.Digest().Encoded())) {
		t.Fatal("the encrypted layer's ciphertext is not cached")
	}
	logDir := filepath.Join(s.dir, "logs")
	os.MkdirAll(logDir, 0o755)
	pod := &criapi.PodSandboxConfig{
		Metadata:     &criapi.PodSandboxMetadata{Name: "gp", Uid: "uid-gp", Namespace: "default"},
		LogDirectory: logDir,
		Linux: &criapi.LinuxPodSandboxConfig{SecurityContext: &criapi.LinuxSandboxSecurityContext{
			NamespaceOptions: &criapi.NamespaceOption{Network: criapi.NamespaceMode_NODE},
		}},
	}
	sb, err := rs.RunPodSandbox(ctx, &criapi.RunPodSandboxRequest{Config: pod, RuntimeHandler: "raksh"})
	if err != nil {
		t.Fatalf("RunPodSandbox: %v", err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		rs.StopPodSandbox(ctx, &criapi.StopPodSandboxRequest{PodSandboxId: sb.PodSandboxId})
		rs.RemovePodSandbox(ctx, &criapi.RemovePodSandboxRequest{PodSandboxId: sb.PodSandboxId})
	}()
	for _, tc := range []struct{ name, ref, marker string }{
		{"guest-pulled", gpRef, gpMarker + "-cri"},
		{"encrypted", encRef, encMarker + "-cri"},
	} {
		c, err := rs.CreateContainer(ctx, &criapi.CreateContainerRequest{PodSandboxId: sb.PodSandboxId, SandboxConfig: pod, Config: &criapi.ContainerConfig{
			Metadata: &criapi.ContainerMetadata{Name: tc.name},
			Image:    &criapi.ImageSpec{Image: tc.ref},
			Command:  []string{"/bin/cat", "/app/marker"},
			LogPath:  tc.name + ".log",
			Linux:    &criapi.LinuxContainerConfig{},
		}})
		if err != nil {
			t.Fatalf("CreateContainer %s: %v", tc.name, err)
		}
		if _, err := rs.StartContainer(ctx, &criapi.StartContainerRequest{ContainerId: c.ContainerId}); err != nil {
			t.Fatalf("StartContainer %s: %v", tc.name, err)
		}
		deadline := time.Now().Add(2 * time.Minute)
		for {
			st, err := rs.ContainerStatus(ctx, &criapi.ContainerStatusRequest{ContainerId: c.ContainerId})
			if err == nil && st.Status.State == criapi.ContainerState_CONTAINER_EXITED {
				if st.Status.ExitCode != 0 {
					t.Fatalf("%s exited %d: %s", tc.name, st.Status.ExitCode, st.Status.Message)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s did not exit: %v %v", tc.name, st, err)
			}
			time.Sleep(300 * time.Millisecond)
		}
		logs, err := os.ReadFile(filepath.Join(logDir, tc.name+".log"))
		if err != nil || !strings.Contains(string(logs), tc.marker) {
			t.Fatalf("%s container log %q: %v", tc.name, logs, err)
		}
		// The kubelet's container log holds the marker (the container
		// printed it); nothing else on the host does.
		hits := append(grepTree(s.root, tc.marker), grepTree(h.Dir, tc.marker)...)
		for _, hit := range hits {
			if !strings.HasPrefix(hit, logDir) {
				t.Fatalf("%s marker found on the host: %v", tc.name, hits)
			}
		}
	}
	if vms := h.QEMUProcesses(); len(vms) != 1 {
		t.Errorf("the pod runs in %d VMs, want 1", len(vms))
	}
	content, err := ctrNS(t, h, "k8s.io", "content", "ls", "-q")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(content, gpTop.Digest().String()) {
		t.Fatal("the guest-pulled marker layer was fetched by containerd")
	}
}

// ctrAfterRestartNS is ctrAfterRestart in namespace ns.
func ctrAfterRestartNS(t testing.TB, h *harness.Containerd, ns string, args ...string) (string, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := ctrNS(t, h, ns, args...)
		if err == nil || time.Now().After(deadline) || !strings.Contains(out, "connection") {
			return out, err
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// TestGuestPullSharedBase: a guest-pull image whose base layer an ordinary
// image already unpacked on the node (pulled with labels, through the
// transfer service) still runs: the chain is mixed, and the guest fetches
// the shared base from the registry by digest instead of using the host's.
func TestGuestPullSharedBase(t *testing.T) {
	harness.RequiresRoot(t)
	host, stop := imagetest.Registry()
	defer stop()
	base := busyboxLayer(t, "etc/shared-base")
	plainImg, err := imagetest.Image(base)
	if err != nil {
		t.Fatal(err)
	}
	plainRef := host + "/plain/base:1"
	if _, err := imagetest.Push(plainRef, plainImg); err != nil {
		t.Fatal(err)
	}
	top := imagetest.GzipLayer(imagetest.Tar(map[string]string{"app/marker": gpMarker + "-shared"}))
	img, err := imagetest.Image(base, top)
	if err != nil {
		t.Fatal(err)
	}
	ref := host + "/raksh/shared:1"
	if _, err := imagetest.Push(ref, img); err != nil {
		t.Fatal(err)
	}
	s := startSnapshotter(t, guestPullConfig(host))
	h := withSnapshotterOpts(t, s, harness.Options{RuntimeConfig: fmt.Sprintf("[proxy]\nregistry = %q\n", host)})
	s.useContainerd(h.Address)
	for _, r := range []string{plainRef, ref} {
		if out, err := ctrAfterRestart(h, "images", "pull", "--plain-http", "--snapshotter", "raksh", r); err != nil {
			t.Fatalf("pull %s: %v\n%s", r, err, out)
		}
	}
	out, err := runRaksh(t, h, ref, "shared-run", "/bin/cat", "/app/marker")
	if err != nil || strings.TrimSpace(out) != gpMarker+"-shared" {
		t.Fatalf("guest-pull image on a shared base: %v %q", err, out)
	}
	if hits := append(grepTree(s.root, gpMarker+"-shared"), grepTree(h.Dir, gpMarker+"-shared")...); len(hits) > 0 {
		t.Fatalf("marker found on the host: %v", hits)
	}
}

// TestGuestPullSharedBaseUnlabelled: raksh images whose base layer an
// ordinary image already unpacked on the node WITHOUT labels (`ctr image
// import --local`, as the CRI pause image is imported). The snapshot of the
// shared base carries no layer digest; the snapshotter names it by the
// raksh image's own manifest (containerd's content store), so a guest-pulled
// image and a mixed image (plain base, encrypted top) both run, the guest
// fetching the base from the registry; so does a mixed image itself pulled
// without labels (`ctr pull --local`), whose reference the snapshotter finds
// through containerd's images.
func TestGuestPullSharedBaseUnlabelled(t *testing.T) {
	harness.RequiresRoot(t)
	host, stop := imagetest.Registry()
	defer stop()
	priv, pub, err := imagetest.RSAKey()
	if err != nil {
		t.Fatal(err)
	}
	base := busyboxLayer(t, "etc/unlabelled-shared-base")
	plainImg, err := imagetest.Image(base)
	if err != nil {
		t.Fatal(err)
	}
	push := func(ref string, top *imagetest.Layer) {
		t.Helper()
		img, err := imagetest.Image(base, top)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := imagetest.Push(ref, img); err != nil {
			t.Fatal(err)
		}
	}
	gpTop := imagetest.GzipLayer(imagetest.Tar(map[string]string{"app/marker": gpMarker + "-unlabelled"}))
	gpRef := host + "/raksh/unlabelled:1"
	push(gpRef, gpTop)
	encTop, err := imagetest.Encrypt(imagetest.GzipLayer(imagetest.Tar(map[string]string{"app/marker": encMarker + "-unlabelled"})), pub)
	if err != nil {
		t.Fatal(err)
	}
	encRef := host + "/enc/unlabelled:1"
	push(encRef, encTop)
	localTop, err := imagetest.Encrypt(imagetest.GzipLayer(imagetest.Tar(map[string]string{"app/marker": encMarker + "-local"})), pub)
	if err != nil {
		t.Fatal(err)
	}
	localRef := host + "/enc/unlabelled-local:1"
	push(localRef, localTop)

	s := startSnapshotter(t, guestPullConfig(host))
	h := withSnapshotterOpts(t, s, harness.Options{RuntimeConfig: fmt.Sprintf("initrd = %q\n[proxy]\nregistry = %q\n", keyInitrd(t, priv), host)})
	s.useContainerd(h.Address)

	// The ordinary image, imported without labels: it unpacks the base.
	archive := filepath.Join(s.dir, "plain.tar")
	if err := testimage.WriteArchive(plainImg, host+"/plain/unlabelled-base:1", archive); err != nil {
		t.Fatal(err)
	}
	if out, err := ctrAfterRestart(h, "images", "import", "--local", "--snapshotter", "raksh", archive); err != nil {
		t.Fatalf("import: %v\n%s", err, out)
	}
	baseChain := base.DiffID

	for _, tc := range []struct {
		name, ref, marker, mode string
		top                     *imagetest.Layer
	}{
		{"guest pull", gpRef, gpMarker + "-unlabelled", rootfs.ModeGuestPull, gpTop},
		{"encrypted top", encRef, encMarker + "-unlabelled", rootfs.ModeLayers, encTop},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if out, err := h.Ctr("images", "pull", "--plain-http", "--snapshotter", "raksh", tc.ref); err != nil {
				t.Fatalf("pull: %v\n%s", err, out)
			}
			chain := identity.ChainID([]digest.Digest{baseChain, tc.top.DiffID})
			d, _ := rootfsOf(t, h, "desc-"+tc.mode, chain)
			if d.Mode != tc.mode || len(d.Layers) != 2 || d.Layers[0].Digest != base.Digest().String() || d.Layers[0].DiffID != base.DiffID.String() ||
				d.Layers[1].Digest != tc.top.Digest().String() {
				t.Fatalf("descriptor %+v: want the shared base named by its blob digest %s", d, base.Digest())
			}
			out, err := runRaksh(t, h, tc.ref, "unlabelled-"+tc.mode, "/bin/cat", "/app/marker")
			if err != nil || strings.TrimSpace(out) != tc.marker {
				t.Fatalf("raksh image over an unlabelled shared base: %v %q", err, out)
			}
			if hits := append(grepTree(s.root, tc.marker), grepTree(h.Dir, tc.marker)...); len(hits) > 0 {
				t.Fatalf("marker found on the host: %v", hits)
			}
		})
	}

	t.Run("mixed image unpacked without labels", func(t *testing.T) {
		// ctr pull --local: no labels on the raksh layers either. The
		// snapshotter finds the manifest through the GC labels and the
		// reference through containerd's images.
		if out, err := h.Ctr("images", "pull", "--local", "--plain-http", "--snapshotter", "raksh", localRef); err != nil {
			t.Fatalf("pull --local: %v\n%s", err, out)
		}
		d, _ := rootfsOf(t, h, "desc-local", identity.ChainID([]digest.Digest{baseChain, localTop.DiffID}))
		if d.Mode != rootfs.ModeLayers || d.ImageRef != localRef || d.Layers[0].Digest != base.Digest().String() || d.Layers[0].Source != rootfs.SourceDir {
			t.Fatalf("descriptor %+v", d)
		}
		out, err := runRaksh(t, h, localRef, "unlabelled-local", "/bin/cat", "/app/marker")
		if err != nil || strings.TrimSpace(out) != encMarker+"-local" {
			t.Fatalf("mixed image pulled with --local on an unlabelled base: %v %q", err, out)
		}
		if hits := append(grepTree(s.root, encMarker+"-local"), grepTree(h.Dir, encMarker+"-local")...); len(hits) > 0 {
			t.Fatalf("marker found on the host: %v", hits)
		}
	})
}

// bigLayer returns a busybox layer with size bytes of random (incompressible)
// data in /data.
func bigLayer(b testing.TB, seed int64, size int) *imagetest.Layer {
	b.Helper()
	img, err := testimage.Busybox(nil, "/bin/sh")
	if err != nil {
		b.Fatal(err)
	}
	ls, _ := img.Layers()
	rc, err := ls[0].Uncompressed()
	if err != nil {
		b.Fatal(err)
	}
	bbTar, _ := io.ReadAll(rc)
	rc.Close()
	data := make([]byte, size)
	rand.New(rand.NewSource(seed)).Read(data)
	// The busybox tar without its end-of-archive blocks, then the data file.
	return imagetest.GzipLayer(appendTarFile(b, bbTar, "data", data))
}

// appendTarFile appends a regular file to a tar stream.
func appendTarFile(b testing.TB, tarBytes []byte, name string, content []byte) []byte {
	b.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tr := tar.NewReader(bytes.NewReader(tarBytes))
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			b.Fatal(err)
		}
		tw.WriteHeader(hdr)
		io.Copy(tw, tr)
	}
	tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(content))})
	tw.Write(content)
	tw.Close()
	return buf.Bytes()
}

// BenchmarkRunImage compares `ctr run --rm` (VM boot, rootfs into guest
// memory, run `true`) of a busybox image carrying 16 MiB of random data on
// the three rootfs paths: the host's overlayfs snapshot streamed as a tar,
// guest pull through the registry proxy, and host-cached ciphertext
// decrypted in the guest.
func BenchmarkRunImage(b *testing.B) {
	harness.RequiresRoot(b)
	host, stop := imagetest.Registry()
	defer stop()
	priv, pub, err := imagetest.RSAKey()
	if err != nil {
		b.Fatal(err)
	}
	const size = 16 << 20
	plain := bigLayer(b, 1, size)
	gp := bigLayer(b, 2, size)
	enc, err := imagetest.Encrypt(bigLayer(b, 3, size), pub)
	if err != nil {
		b.Fatal(err)
	}
	refs := map[string]string{"tar": host + "/plain/big:1", "guest-pull": host + "/raksh/big:1", "encrypted": host + "/enc/big:1"}
	for name, l := range map[string]*imagetest.Layer{"tar": plain, "guest-pull": gp, "encrypted": enc} {
		img, err := imagetest.Image(l)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := imagetest.Push(refs[name], img); err != nil {
			b.Fatal(err)
		}
	}
	dir := b.TempDir()
	keyFile := filepath.Join(dir, "key.pem")
	os.WriteFile(keyFile, priv, 0o600)
	initrdPath := filepath.Join(dir, "initrd.img")
	if err := initrd.Build(initrd.Options{
		Agent: harness.Bin(b, "raksh-agent"), Runc: harness.Bin(b, "runc"),
		ModulesDir: filepath.Join(harness.Output(), "deps", "kernel", "modules"), Modules: initrd.DefaultModules,
		Files: map[string]string{path.Join(agent.DefaultImageKeyDir, "bench.pem"): keyFile}, Output: initrdPath,
	}); err != nil {
		b.Fatal(err)
	}
	s := startSnapshotter(b, fmt.Sprintf("[guest_pull]\nenable = true\nimage_patterns = [%q]\n", regexp.QuoteMeta(host)+"/raksh/.*"))
	h := withSnapshotterOpts(b, s, harness.Options{RuntimeConfig: fmt.Sprintf("initrd = %q\nmemory_mib = 1024\n[proxy]\nregistry = %q\n", initrdPath, host)})
	s.useContainerd(h.Address)
	snap := map[string]string{"tar": "overlayfs", "guest-pull": "raksh", "encrypted": "raksh"}
	for name, ref := range refs {
		if out, err := ctrAfterRestart(h, "images", "pull", "--plain-http", "--snapshotter", snap[name], ref); err != nil {
			b.Fatalf("pull %s: %v\n%s", ref, err, out)
		}
	}
	total := map[string]time.Duration{}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, name := range []string{"tar", "guest-pull", "encrypted"} {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			start := time.Now()
			out, err := h.CtrContext(ctx, "run", "--rm", "--snapshotter", snap[name], "--runtime", rakshRuntime, refs[name], fmt.Sprintf("bench-%s-%d", name, i), "/bin/true")
			cancel()
			if err != nil {
				b.Fatalf("%s: %v\n%s", name, err, out)
			}
			total[name] += time.Since(start)
		}
	}
	for name, d := range total {
		b.ReportMetric(float64(d.Milliseconds())/float64(b.N), name+"-ms/run")
	}
	b.ReportMetric(float64(total["guest-pull"])/float64(total["tar"]), "guest-pull/tar")
	b.ReportMetric(float64(total["encrypted"])/float64(total["tar"]), "encrypted/tar")
}
