//go:build integration

package integration

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/raksh-project/raksh/integration/harness"
	"github.com/raksh-project/raksh/integration/testimage"
	"github.com/raksh-project/raksh/runtime"
	"github.com/raksh-project/raksh/runtime/vm/qemu"
)

// erofsConfig selects the erofs path for plain images explicitly.
const erofsConfig = "plain_rootfs = \"erofs\"\n"

// layeredImage returns a three- or four-layer busybox image: the base
// layer with a marker and files the next layer deletes, a layer of overlay
// whiteouts (a deleted file, an opaque directory), and, when bigMiB > 0, a
// layer with bigMiB of random (incompressible) data in /data/blob that the
// container never reads, written as a tar file in dir.
func layeredImage(t testing.TB, dir string, bigMiB int) v1.Image {
	t.Helper()
	base, err := testimage.Busybox(map[string]testimage.File{
		"etc/raksh-marker": {Mode: 0o644, Content: []byte("from-the-image\n")},
		"etc/gone":         {Mode: 0o644, Content: []byte("deleted by the next layer\n")},
		"opq/old":          {Mode: 0o644, Content: []byte("hidden by an opaque directory\n")},
	}, "/bin/sh")
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range []*tar.Header{
		{Name: "etc/.wh.gone", Typeflag: tar.TypeReg, Mode: 0o644},
		{Name: "opq/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "opq/.wh..wh..opq", Typeflag: tar.TypeReg, Mode: 0o644},
		{Name: "opq/new", Typeflag: tar.TypeReg, Mode: 0o644, Size: 4},
	} {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
	}
	tw.Write([]byte("new\n"))
	tw.Close()
	wh := buf.Bytes()
	whLayer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(wh)), nil },
		tarball.WithMediaType(types.OCILayer))
	if err != nil {
		t.Fatal(err)
	}
	layers := []v1.Layer{whLayer}
	if bigMiB > 0 {
		p := filepath.Join(dir, fmt.Sprintf("big-%d.tar", bigMiB))
		writeBigTar(t, p, int64(bigMiB)<<20)
		// Stored gzip blocks: no time spent compressing random data.
		l, err := tarball.LayerFromFile(p, tarball.WithMediaType(types.OCILayer), tarball.WithCompressionLevel(gzip.NoCompression))
		if err != nil {
			t.Fatal(err)
		}
		layers = append(layers, l)
	}
	img, err := mutate.AppendLayers(base, layers...)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// writeBigTar writes a tar holding /data/blob of size random bytes.
func writeBigTar(t testing.TB, p string, size int64) {
	t.Helper()
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	tw.WriteHeader(&tar.Header{Name: "data/", Typeflag: tar.TypeDir, Mode: 0o755})
	tw.WriteHeader(&tar.Header{Name: "data/blob", Typeflag: tar.TypeReg, Mode: 0o644, Size: size})
	r := rand.NewChaCha8([32]byte{byte(size >> 20)})
	if _, err := io.CopyN(tw, r, size); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
}

// layerImages lists the erofs layer images under containerd's overlayfs
// snapshotter, and leftover temporary files of their builds.
func layerImages(t testing.TB, h *harness.Containerd) (images, temps []string) {
	t.Helper()
	snaps := filepath.Join(h.Dir, "root", "io.containerd.snapshotter.v1.overlayfs", "snapshots")
	images, _ = filepath.Glob(filepath.Join(snaps, "*", runtime.LayerImageName))
	temps, _ = filepath.Glob(filepath.Join(snaps, "*", runtime.LayerImageName+".tmp-*"))
	return images, temps
}

// openLayerImages lists the erofs layer images QEMU process pid holds open.
func openLayerImages(pid int) []string {
	var out []string
	fds, _ := filepath.Glob(fmt.Sprintf("/proc/%d/fd/*", pid))
	for _, fd := range fds {
		if p, err := os.Readlink(fd); err == nil && filepath.Base(p) == runtime.LayerImageName {
			out = append(out, p)
		}
	}
	slices.Sort(out)
	return out
}

// TestErofsRootfs runs two pods (two VMs) of a plain three-layer image on
// the erofs path: each sees its rootfs as overlayfs over read-only erofs
// layer disks (no tar), with the lower layer's deleted file gone and the
// opaque directory showing only the upper layer's file (the whiteouts
// survived into the erofs images); its root filesystem is writable; both
// VMs hold the same cached image file of each layer, built once; removing
// the containers, then the image, leaves no VM, no layer image and no
// temporary file.
func TestErofsRootfs(t *testing.T) {
	dmBefore := hostDMDevices(t)
	h := harness.StartContainerd(t, harness.Options{RuntimeConfig: erofsConfig})
	const ref = "docker.io/library/layered:erofs"
	h.ImportImage(t, layeredImage(t, t.TempDir(), 0), ref, "")

	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	for _, id := range []string{"pod-a", "pod-b"} {
		if out, err := h.CtrContext(ctx, "run", "-d", "--runtime", rakshRuntime, ref, id, "sleep", "600"); err != nil {
			t.Fatalf("run %s: %v %s", id, err, out)
		}
	}
	waitStatus(t, h, "pod-a", "RUNNING", 3*time.Minute)
	waitStatus(t, h, "pod-b", "RUNNING", 3*time.Minute)

	script := `cat /etc/raksh-marker; test -e /etc/gone && echo gone-present; ls /opq | tr '\n' ' '; echo; ` +
		`grep ' / ' /proc/mounts; echo written > /etc/new && cat /etc/new`
	for _, id := range []string{"pod-a", "pod-b"} {
		out, err := h.CtrContext(ctx, "task", "exec", "--exec-id", "check", id, "sh", "-c", script)
		if err != nil {
			t.Fatalf("%s: exec: %v %q", id, err, out)
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 4 {
			t.Fatalf("%s: output %q", id, out)
		}
		if lines[0] != "from-the-image" {
			t.Errorf("%s: marker %q", id, lines[0])
		}
		if strings.TrimSpace(lines[1]) != "new" {
			t.Errorf("%s: the opaque directory shows %q, want only new (or a whiteout was lost: %q)", id, lines[1], out)
		}
		if !strings.HasPrefix(lines[2], "overlay / overlay ") || !strings.Contains(lines[2], "lowerdir=/run/raksh-layers/raksh-ro-") {
			t.Errorf("%s: rootfs is not overlayfs over erofs layer disks: %q", id, lines[2])
		}
		if n := strings.Count(lines[2], "/run/raksh-layers/"); n != 2 {
			t.Errorf("%s: %d lower layers, want 2: %q", id, n, lines[2])
		}
		if lines[3] != "written" {
			t.Errorf("%s: write to the rootfs: %q", id, lines[3])
		}
	}

	imgs, temps := layerImages(t, h)
	if len(imgs) != 2 || len(temps) != 0 {
		t.Fatalf("layer images %v, temporary files %v: want one image per layer (2), no temporary file", imgs, temps)
	}
	pids := h.QEMUProcesses()
	if len(pids) != 2 {
		t.Fatalf("QEMU processes %v, want 2", pids)
	}
	slices.Sort(imgs)
	for _, pid := range pids {
		if got := openLayerImages(pid); !slices.Equal(got, imgs) {
			t.Errorf("QEMU %d holds layer images %v, want the shared %v", pid, got, imgs)
		}
	}

	for _, id := range []string{"pod-a", "pod-b"} {
		h.CtrContext(ctx, "task", "kill", "-s", "SIGKILL", id)
	}
	for _, id := range []string{"pod-a", "pod-b"} {
		deadline := time.Now().Add(time.Minute)
		for {
			if out, err := h.CtrContext(ctx, "task", "rm", "-f", id); err == nil || strings.Contains(out, "not found") || time.Now().After(deadline) {
				break
			}
			time.Sleep(500 * time.Millisecond)
		}
		if out, err := h.CtrContext(ctx, "container", "rm", id); err != nil {
			t.Fatalf("container rm %s: %v %s", id, err, out)
		}
	}
	if p := h.QEMUProcesses(); len(p) != 0 {
		t.Errorf("QEMU still running after the pods' removal: %v", p)
	}
	// Nothing was mounted, looped or mapped on the node for the layers.
	if dm := hostDMDevices(t); dm != dmBefore {
		t.Errorf("device-mapper state changed on the node: %q -> %q", dmBefore, dm)
	}
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mounts), runtime.LayerImageName) || strings.Contains(string(mounts), h.Dir+"/root/io.containerd.snapshotter.v1.overlayfs/snapshots") {
		t.Errorf("a layer or snapshot is mounted on the node")
	}
	loops, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, l := range loops {
		if b, _ := os.ReadFile(l); strings.Contains(string(b), h.Dir) {
			t.Errorf("loop device %s backs %s", l, b)
		}
	}
	// The cache outlives pods (it belongs to the image's snapshots) ...
	if imgs, _ := layerImages(t, h); len(imgs) != 2 {
		t.Errorf("layer images after the pods' removal: %v, want the 2 cached ones", imgs)
	}
	// ... and goes with them.
	if out, err := h.CtrContext(ctx, "image", "rm", "--sync", ref); err != nil {
		t.Fatalf("image rm: %v %s", err, out)
	}
	if imgs, temps := layerImages(t, h); len(imgs) != 0 || len(temps) != 0 {
		t.Errorf("after the image's removal: layer images %v, temporary files %v", imgs, temps)
	}
}

// TestBigImageErofs runs an image of about 600 MB (a 600 MiB random layer
// the container does not read, on the busybox layers) in a 512 MiB guest
// on the erofs path: the container starts and reads its image files from
// the erofs disks, the guest's memory holds none of the unread layer, and
// the pod's removal leaves no VM, no temporary layer image and, once the
// image is removed, no layer image. On the tar path the same image cannot
// start (the guest's tmpfs is smaller than the image; docs/storage.md).
func TestBigImageErofs(t *testing.T) {
	h := harness.StartContainerd(t, harness.Options{RuntimeConfig: erofsConfig + "memory_mib = 512\n"})
	const ref = "docker.io/library/big:600"
	dir, err := os.MkdirTemp("/var/tmp", "rk-big-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	start := time.Now()
	h.ImportImage(t, layeredImage(t, dir, 600), ref, "")
	os.RemoveAll(dir)
	t.Logf("600 MiB image built and imported in %s", time.Since(start).Round(time.Second))

	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	start = time.Now()
	if out, err := h.CtrContext(ctx, "run", "-d", "--runtime", rakshRuntime, ref, "big", "sleep", "600"); err != nil {
		t.Fatalf("run: %v %s", err, out)
	}
	waitStatus(t, h, "big", "RUNNING", 5*time.Minute)
	t.Logf("running after %s (first run: includes building the layer images)", time.Since(start).Round(100*time.Millisecond))
	out, err := h.CtrContext(ctx, "task", "exec", "--exec-id", "check", "big", "sh", "-c",
		"cat /etc/raksh-marker; stat -c %s /data/blob; grep ' / ' /proc/mounts; grep -E 'MemTotal|MemAvailable' /proc/meminfo")
	if err != nil {
		t.Fatalf("exec: %v %q", err, out)
	}
	if !strings.HasPrefix(out, "from-the-image\n629145600\noverlay / overlay ") || strings.Count(out, "/run/raksh-layers/") != 3 {
		t.Fatalf("in the guest: %q (want the marker, the 600 MiB file, a rootfs on 3 erofs layers)", out)
	}
	t.Logf("guest: %s; QEMU RSS %s", strings.Join(strings.Fields(out)[len(strings.Fields(out))-6:], " "), rss(h.QEMUProcesses()[0]))
	imgs, _ := layerImages(t, h)
	if len(imgs) != 3 {
		t.Fatalf("layer images %v, want 3", imgs)
	}
	h.CtrContext(ctx, "task", "kill", "-s", "SIGKILL", "big")
	deadline := time.Now().Add(time.Minute)
	for {
		if out, err := h.CtrContext(ctx, "task", "rm", "-f", "big"); err == nil || strings.Contains(out, "not found") || time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if out, err := h.CtrContext(ctx, "container", "rm", "big"); err != nil {
		t.Fatalf("container rm: %v %s", err, out)
	}
	if p := h.QEMUProcesses(); len(p) != 0 {
		t.Errorf("QEMU still running: %v", p)
	}
	if out, err := h.CtrContext(ctx, "image", "rm", "--sync", ref); err != nil {
		t.Fatalf("image rm: %v %s", err, out)
	}
	if imgs, temps := layerImages(t, h); len(imgs) != 0 || len(temps) != 0 {
		t.Errorf("after the image's removal: layer images %v, temporary files %v", imgs, temps)
	}
}

// TestManyLayersErofs runs an image of 40 layers on the erofs path: more
// layer disks than the root PCI bus has free slots, so the shim's layer
// bridges take them; every layer's file is visible in the container.
func TestManyLayersErofs(t *testing.T) {
	h := harness.StartContainerd(t, harness.Options{RuntimeConfig: erofsConfig})
	const ref = "docker.io/library/many:40"
	img, err := testimage.Busybox(nil, "/bin/sh")
	if err != nil {
		t.Fatal(err)
	}
	var layers []v1.Layer
	for i := 1; i < 40; i++ {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		tw.WriteHeader(&tar.Header{Name: "layers/", Typeflag: tar.TypeDir, Mode: 0o755})
		content := fmt.Sprintf("%d\n", i)
		tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("layers/%02d", i), Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(content))})
		tw.Write([]byte(content))
		tw.Close()
		b := buf.Bytes()
		l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }, tarball.WithMediaType(types.OCILayer))
		if err != nil {
			t.Fatal(err)
		}
		layers = append(layers, l)
	}
	if img, err = mutate.AppendLayers(img, layers...); err != nil {
		t.Fatal(err)
	}
	h.ImportImage(t, img, ref, "")
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	out, err := h.CtrContext(ctx, "run", "--rm", "--runtime", rakshRuntime, ref, "many", "sh", "-c",
		"cat /layers/* | wc -l; grep ' / ' /proc/mounts | tr ':' '\\n' | grep -c /run/raksh-layers/")
	if err != nil {
		t.Fatalf("run: %v %s", err, out)
	}
	if f := strings.Fields(out); len(f) != 2 || f[0] != "39" || f[1] != "40" {
		t.Fatalf("in the guest: %q, want 39 layer files and 40 erofs lower layers", out)
	}
	if imgs, _ := layerImages(t, h); len(imgs) != 40 {
		t.Errorf("%d layer images, want 40", len(imgs))
	}
}

// churnImage returns a busybox image with n further layers of one small
// file each (/layers/<tag>-<i>), all distinct from every other image's.
func churnImage(t testing.TB, tag string, n int) v1.Image {
	t.Helper()
	img, err := testimage.Busybox(nil, "/bin/sh")
	if err != nil {
		t.Fatal(err)
	}
	var layers []v1.Layer
	for i := 0; i < n; i++ {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		tw.WriteHeader(&tar.Header{Name: "layers/", Typeflag: tar.TypeDir, Mode: 0o755})
		content := fmt.Sprintf("%s %d\n", tag, i)
		tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("layers/%s-%02d", tag, i), Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(content))})
		tw.Write([]byte(content))
		tw.Close()
		b := buf.Bytes()
		l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }, tarball.WithMediaType(types.OCILayer))
		if err != nil {
			t.Fatal(err)
		}
		layers = append(layers, l)
	}
	if img, err = mutate.AppendLayers(img, layers...); err != nil {
		t.Fatal(err)
	}
	return img
}

// qemuLayerDisks asks QEMU process pid over its QMP socket how many layer
// disk devices (ro-dev-*) and block nodes (ro-node-*) it has.
func qemuLayerDisks(t testing.TB, pid int) (devices, nodes int) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		t.Fatal(err)
	}
	args := strings.Split(string(b), "\x00")
	sock := ""
	for i, a := range args {
		if a == "-qmp" && i+1 < len(args) {
			sock, _, _ = strings.Cut(strings.TrimPrefix(args[i+1], "unix:"), ",server")
		}
	}
	if sock == "" {
		t.Fatalf("QEMU %d has no -qmp socket: %q", pid, args)
	}
	mon := qemu.NewQMPConn(sock, 10*time.Second)
	if err := mon.Connect(); err != nil {
		t.Fatal(err)
	}
	defer mon.Disconnect()
	var kids struct {
		Return []struct {
			Name string `json:"name"`
		} `json:"return"`
	}
	var graph struct {
		Return struct {
			Nodes []struct {
				Name string `json:"name"`
				Type string `json:"type"`
			} `json:"nodes"`
		} `json:"return"`
	}
	for _, q := range []struct {
		cmd string
		out any
	}{
		{`{"execute": "qom-list", "arguments": {"path": "/machine/peripheral"}}`, &kids},
		// The block graph (query-named-block-nodes' answer is large with
		// many nodes).
		{`{"execute": "x-debug-query-block-graph"}`, &graph},
	} {
		raw, err := mon.Run([]byte(q.cmd))
		if err != nil {
			t.Fatalf("qmp %s: %v", q.cmd, err)
		}
		if err := json.Unmarshal(raw, q.out); err != nil {
			t.Fatal(err)
		}
	}
	for _, k := range kids.Return {
		if strings.HasPrefix(k.Name, "ro-dev-") {
			devices++
		}
	}
	for _, n := range graph.Return.Nodes {
		if n.Type == "block-driver" && strings.HasPrefix(n.Name, "ro-node-") {
			nodes++
		}
	}
	return devices, nodes
}

// TestErofsLayerDetach churns containers of three plain images (32 layers
// of their own each, 96 distinct layers plus busybox's: more than the
// VM's layer bridges and root bus have slots) through one CRI pod, twice
// each, beside a long-running container of another image. After each
// container's removal QEMU is soon back to the keeper's layer disks only
// (devices and block nodes: the others were unplugged and their slots
// freed, else the later containers could not attach theirs: without the
// unplugs the third container fails at the 88th disk), the guest has no
// erofs mount nor virtio disk left of the removed container, and the
// keeper still runs and answers.
func TestErofsLayerDetach(t *testing.T) {
	const images, perImage, rounds = 3, 32, 2
	h, rs := startCRI(t, harness.Options{RuntimeConfig: erofsConfig})
	var refs []string
	for i := 0; i < images; i++ {
		ref := fmt.Sprintf("docker.io/raksh/churn:%d", i)
		h.ImportImage(t, churnImage(t, fmt.Sprintf("img%d", i), perImage), ref, "k8s.io")
		refs = append(refs, ref)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	pod := &cri.PodSandboxConfig{
		Metadata: &cri.PodSandboxMetadata{Name: "churn", Uid: "uid-churn", Namespace: "raksh-test"},
		Hostname: "churn",
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
	start := func(name, image string, cmd ...string) string {
		t.Helper()
		c, err := rs.CreateContainer(ctx, &cri.CreateContainerRequest{
			PodSandboxId: sb.PodSandboxId, SandboxConfig: pod,
			Config: &cri.ContainerConfig{
				Metadata: &cri.ContainerMetadata{Name: name},
				Image:    &cri.ImageSpec{Image: image},
				Command:  cmd,
				Linux:    &cri.LinuxContainerConfig{},
			},
		})
		if err != nil {
			t.Fatalf("CreateContainer %s: %v", name, err)
		}
		if _, err := rs.StartContainer(ctx, &cri.StartContainerRequest{ContainerId: c.ContainerId}); err != nil {
			t.Fatalf("StartContainer %s: %v", name, err)
		}
		return c.ContainerId
	}
	exec := func(id, script string) string {
		t.Helper()
		r, err := rs.ExecSync(ctx, &cri.ExecSyncRequest{ContainerId: id, Cmd: []string{"/bin/sh", "-c", script}, Timeout: 120})
		if err != nil || r.ExitCode != 0 {
			t.Fatalf("exec %q in %s: %v, exit %d, %q %q", script, id, err, r.GetExitCode(), r.GetStdout(), r.GetStderr())
		}
		return strings.TrimSpace(string(r.Stdout))
	}
	// The guest's view, from the keeper: erofs superblocks mounted
	// (/sys/fs/erofs has one entry per mounted disk, besides "features")
	// and virtio disks present.
	guest := func(keeper string) (erofs, disks int) {
		t.Helper()
		f := strings.Fields(exec(keeper, "ls /sys/fs/erofs | grep -vc '^features$'; ls /sys/block | grep -c '^vd'"))
		if len(f) != 2 {
			t.Fatalf("guest counts: %q", f)
		}
		fmt.Sscan(f[0], &erofs)
		fmt.Sscan(f[1], &disks)
		return erofs, disks
	}

	keeper := start("keeper", criBusybox, "/bin/sh", "-c", "echo alive > /tmp/alive; exec sleep 3600")
	pids := h.QEMUProcesses()
	if len(pids) != 1 {
		t.Fatalf("QEMU processes %v, want 1", pids)
	}
	qemu := pids[0]
	baseDev, baseNodes := qemuLayerDisks(t, qemu)
	baseErofs, baseDisks := guest(keeper)
	if baseDev == 0 || baseNodes != baseDev || baseErofs != baseDev {
		t.Fatalf("keeper alone: %d layer devices, %d nodes, %d erofs mounts in the guest: want the keeper's layers, on the erofs path", baseDev, baseNodes, baseErofs)
	}
	t.Logf("keeper: %d layer disk(s); guest: %d erofs mount(s), %d virtio disk(s)", baseDev, baseErofs, baseDisks)

	began := time.Now()
	var createTime, removeTime, detachTime time.Duration
	for round := 0; round < rounds; round++ {
		for i, ref := range refs {
			name := fmt.Sprintf("churn-%d-%d", round, i)
			t0 := time.Now()
			id := start(name, ref, "sleep", "3600")
			createTime += time.Since(t0)
			got := exec(id, fmt.Sprintf("cat /layers/img%d-* | wc -l; grep ' / ' /proc/mounts | tr ':' '\\n' | grep -c /run/raksh-layers/", i))
			if f := strings.Fields(got); len(f) != 2 || f[0] != fmt.Sprint(perImage) || f[1] != fmt.Sprint(perImage+1) {
				t.Fatalf("%s: %q, want %d layer files on %d erofs layers", name, got, perImage, perImage+1)
			}
			if dev, _ := qemuLayerDisks(t, qemu); dev < baseDev+perImage {
				t.Fatalf("%s running: %d layer devices, want at least %d", name, dev, baseDev+perImage)
			}
			t0 = time.Now()
			if _, err := rs.StopContainer(ctx, &cri.StopContainerRequest{ContainerId: id, Timeout: 30}); err != nil {
				t.Fatalf("StopContainer %s: %v", name, err)
			}
			if _, err := rs.RemoveContainer(ctx, &cri.RemoveContainerRequest{ContainerId: id}); err != nil {
				t.Fatalf("RemoveContainer %s: %v", name, err)
			}
			removeTime += time.Since(t0)
			// The unplugs run after the deletion returned.
			deadline := time.Now().Add(2 * time.Minute)
			for {
				dev, nodes := qemuLayerDisks(t, qemu)
				if dev == baseDev && nodes == baseNodes {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("after removing %s: QEMU has %d layer devices and %d block nodes, want the keeper's %d", name, dev, nodes, baseDev)
				}
				time.Sleep(200 * time.Millisecond)
			}
			detachTime += time.Since(t0)
			if erofs, disks := guest(keeper); erofs != baseErofs || disks != baseDisks {
				t.Fatalf("after removing %s: the guest has %d erofs mounts and %d virtio disks, want %d and %d", name, erofs, disks, baseErofs, baseDisks)
			}
			if got := exec(keeper, "cat /tmp/alive"); got != "alive" {
				t.Fatalf("keeper after %s: %q", name, got)
			}
		}
	}
	n := rounds * images
	avg := func(d time.Duration) time.Duration { return (d / time.Duration(n)).Round(10 * time.Millisecond) }
	t.Logf("%d containers of %d layers created and removed in %s: create+start %s, stop+remove %s, until the last unplug %s on average",
		n, perImage+1, time.Since(began).Round(time.Second), avg(createTime), avg(removeTime), avg(detachTime))
	if p := h.QEMUProcesses(); len(p) != 1 || p[0] != qemu {
		t.Fatalf("QEMU processes %v, want the pod's %d throughout", p, qemu)
	}
}
