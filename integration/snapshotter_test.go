//go:build integration

package integration

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	criapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/raksh-project/raksh/agent/image"
	"github.com/raksh-project/raksh/agent/image/imagetest"
	agentapi "github.com/raksh-project/raksh/api/agent/v1"
	"github.com/raksh-project/raksh/integration/harness"
	"github.com/raksh-project/raksh/snapshotter/rootfs"
)

const snMarker = "RAKSH-SNAPSHOTTER-MARKER-41c7e2"

var (
	snBinOnce sync.Once
	snBin     string
	snBinErr  error
)

// snapshotterBin returns raksh-snapshotter from _output/bin, or builds it.
func snapshotterBin(t testing.TB) string {
	t.Helper()
	p := filepath.Join(harness.Output(), "bin", "raksh-snapshotter")
	if _, err := os.Stat(p); err == nil {
		return p
	}
	snBinOnce.Do(func() {
		dir, err := os.MkdirTemp("", "raksh-sn-bin-")
		if err != nil {
			snBinErr = err
			return
		}
		snBin = filepath.Join(dir, "raksh-snapshotter")
		cmd := exec.Command("go", "build", "-o", snBin, "./cmd/raksh-snapshotter")
		cmd.Dir = harness.Repo()
		if out, err := cmd.CombinedOutput(); err != nil {
			snBinErr = fmt.Errorf("build: %v\n%s", err, out)
		}
	})
	if snBinErr != nil {
		t.Fatal(snBinErr)
	}
	return snBin
}

type snapshotterProc struct {
	t                   testing.TB
	dir, root, sock, cf string
	cmd                 *exec.Cmd
}

// guestPullConfig is the snapshotter config fragment that guest-pulls the
// images under host/raksh/ of the test registry.
func guestPullConfig(host string) string {
	return fmt.Sprintf("[guest_pull]\nenable = true\nimage_patterns = [%q]\n", regexp.QuoteMeta(host)+"/raksh/.*")
}

func startSnapshotter(t testing.TB, extra string) *snapshotterProc {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "rks-")
	if err != nil {
		t.Fatal(err)
	}
	s := &snapshotterProc{t: t, dir: dir, root: filepath.Join(dir, "root"), sock: filepath.Join(dir, "s.sock"), cf: filepath.Join(dir, "snapshotter.toml")}
	cfg := fmt.Sprintf("root = %q\naddress = %q\nlog_level = \"debug\"\n", s.root, s.sock) + extra
	if err := os.WriteFile(s.cf, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	s.start()
	t.Cleanup(func() {
		s.stop(syscall.SIGTERM)
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, "snapshotter.log"))
			if len(b) > 200000 {
				b = b[len(b)-200000:]
			}
			t.Logf("snapshotter log tail:\n%s", b)
		}
		exec.Command("umount", "-R", s.root).Run()
		os.RemoveAll(dir)
	})
	return s
}

func (s *snapshotterProc) start() {
	s.t.Helper()
	logf, err := os.OpenFile(filepath.Join(s.dir, "snapshotter.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		s.t.Fatal(err)
	}
	s.cmd = exec.Command(snapshotterBin(s.t), "-config", s.cf)
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	if err := s.cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if c, err := net.Dial("unix", s.sock); err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatal("raksh-snapshotter did not come up")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// useContainerd restarts the snapshotter with containerd_address set (a
// top-level key, so it goes before any table).
func (s *snapshotterProc) useContainerd(address string) {
	b, err := os.ReadFile(s.cf)
	if err != nil {
		s.t.Fatal(err)
	}
	if err := os.WriteFile(s.cf, append([]byte(fmt.Sprintf("containerd_address = %q\n", address)), b...), 0o644); err != nil {
		s.t.Fatal(err)
	}
	s.stop(syscall.SIGTERM)
	s.start()
}

func (s *snapshotterProc) stop(sig syscall.Signal) {
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Signal(sig)
	s.cmd.Wait()
	s.cmd = nil
}

// withSnapshotter starts containerd with contrib/containerd/snapshotter.toml
// pointed at s.
func withSnapshotter(t testing.TB, s *snapshotterProc, extra ...byte) *harness.Containerd {
	t.Helper()
	return withSnapshotterOpts(t, s, harness.Options{}, extra...)
}

// withSnapshotterOpts is withSnapshotter with more containerd options (the
// drop-in is added to o.Imports).
func withSnapshotterOpts(t testing.TB, s *snapshotterProc, o harness.Options, extra ...byte) *harness.Containerd {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(harness.Repo(), "contrib", "containerd", "snapshotter.toml"))
	if err != nil {
		t.Fatal(err)
	}
	b = bytes.ReplaceAll(b, []byte("/run/raksh-snapshotter/snapshotter.sock"), []byte(s.sock))
	b = bytes.ReplaceAll(b, []byte(`"linux/amd64"`), []byte(fmt.Sprintf("%q", "linux/"+goarch())))
	// Enable the optional diff-service block: the tests also unpack with
	// ctr pull --local.
	b = bytes.ReplaceAll(b, []byte("#[plugins.'io.containerd.service.v1.diff-service']\n#  default"), []byte("[plugins.'io.containerd.service.v1.diff-service']\n  default"))
	if !bytes.Contains(b, []byte("\n[plugins.'io.containerd.service.v1.diff-service']")) {
		t.Fatal("optional diff-service block not found in the drop-in")
	}
	b = append(b, extra...)
	p := filepath.Join(s.dir, "containerd-snapshotter.toml")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	o.Imports = append(o.Imports, p)
	return harness.StartContainerd(t, o)
}

func goarch() string {
	out, _ := exec.Command("go", "env", "GOARCH").Output()
	return strings.TrimSpace(string(out))
}

// grepTree reports files under root containing needle.
func grepTree(root, needle string) []string {
	var hits []string
	filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil || !fi.Mode().IsRegular() {
			return nil
		}
		if b, err := os.ReadFile(p); err == nil && bytes.Contains(b, []byte(needle)) {
			hits = append(hits, p)
		}
		return nil
	})
	return hits
}

var mountRE = regexp.MustCompile(`mount -t (\S+) (\S+) \S+ -o (\S+)`)

// rootfsOf prepares an active snapshot key on chain through containerd and
// parses its mount as a raksh rootfs descriptor.
func rootfsOf(t *testing.T, h *harness.Containerd, key string, chain digest.Digest) (*rootfs.Descriptor, string) {
	t.Helper()
	if _, err := h.Ctr("snapshots", "--snapshotter", "raksh", "prepare", key, chain.String()); err != nil {
		t.Fatal(err)
	}
	out, err := h.Ctr("snapshots", "--snapshotter", "raksh", "mounts", "/mnt", key)
	if err != nil {
		t.Fatal(err)
	}
	m := mountRE.FindStringSubmatch(out)
	if m == nil || m[1] != "bind" || !strings.Contains(m[3], "ro") {
		t.Fatalf("not a read-only bind mount: %q", out)
	}
	d, err := rootfs.Read(m[2])
	if err != nil {
		t.Fatalf("rootfs descriptor: %v", err)
	}
	// A host-side reader mounting it (user lookup, volume copy) gets the stub.
	target := t.TempDir()
	if out, err := exec.Command("mount", "-t", "bind", m[2], target, "-o", m[3]).CombinedOutput(); err != nil {
		t.Fatalf("mount the rootfs as a host reader would: %v %s", err, out)
	}
	passwd, err := os.ReadFile(filepath.Join(target, "etc", "passwd"))
	exec.Command("umount", target).Run()
	if err != nil || !bytes.HasPrefix(passwd, []byte("root:x:0:0:")) {
		t.Fatalf("stub /etc/passwd: %q %v", passwd, err)
	}
	return d, m[2]
}

func contentDigests(t testing.TB, h *harness.Containerd) string {
	out, err := h.Ctr("content", "ls", "-q")
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// ctrAfterRestart runs ctr, retrying while containerd's gRPC connection to
// the restarted proxy is still in reconnect backoff.
func ctrAfterRestart(h *harness.Containerd, args ...string) (string, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := h.Ctr(args...)
		if err == nil || time.Now().After(deadline) || !strings.Contains(err.Error(), "connection") {
			return out, err
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func tcpDial(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, network, addr)
}

func TestSnapshotterGuestPull(t *testing.T) {
	harness.RequiresRoot(t)
	host, stop := imagetest.Registry()
	defer stop()
	base := imagetest.GzipLayer(imagetest.Tar(map[string]string{"etc/os-release": "raksh\n"}))
	top := imagetest.GzipLayer(imagetest.Tar(map[string]string{"app/marker": snMarker}))
	img, err := imagetest.Image(base, top)
	if err != nil {
		t.Fatal(err)
	}
	ref := host + "/raksh/guest:1"
	mdgst, err := imagetest.Push(ref, img)
	if err != nil {
		t.Fatal(err)
	}
	cfgDigest, _ := img.ConfigName()

	s := startSnapshotter(t, guestPullConfig(host))
	h := withSnapshotter(t, s)

	if out, err := h.Ctr("images", "pull", "--plain-http", "--snapshotter", "raksh", ref); err != nil {
		t.Fatalf("pull: %v\n%s", err, out)
	}
	content := contentDigests(t, h)
	if !strings.Contains(content, mdgst.String()) || !strings.Contains(content, cfgDigest.String()) {
		t.Fatalf("content store lacks manifest or config:\n%s", content)
	}
	for _, l := range []*imagetest.Layer{base, top} {
		if strings.Contains(content, l.Digest().String()) {
			t.Fatalf("layer %s was fetched by containerd", l.Digest())
		}
	}
	if hits := append(grepTree(s.root, snMarker), grepTree(h.Dir, snMarker)...); len(hits) > 0 {
		t.Fatalf("marker found on the host: %v", hits)
	}
	chain := identity.ChainID([]digest.Digest{base.DiffID, top.DiffID})
	d, _ := rootfsOf(t, h, "pod-1", chain)
	if d.Mode != rootfs.ModeGuestPull || d.ImageRef != ref || d.ManifestDigest != mdgst.String() || len(d.Layers) != 2 {
		t.Fatalf("bad descriptor %+v", d)
	}

	// What the agent then does with it (here on the host, loopback dialer).
	dest := filepath.Join(t.TempDir(), "rootfs")
	if _, err := image.Pull(context.Background(), d.ImageRef, tcpDial, dest, image.WithManifestDigest(digest.Digest(d.ManifestDigest))); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dest, "app", "marker")); err != nil || string(b) != snMarker {
		t.Fatalf("guest pull: %q %v", b, err)
	}

	// kill -9 and restart: committed snapshots survive, containerd recovers.
	s.stop(syscall.SIGKILL)
	s.start()
	if out, err := ctrAfterRestart(h, "snapshots", "--snapshotter", "raksh", "info", chain.String()); err != nil {
		t.Fatalf("committed snapshot lost after kill -9: %v %s", err, out)
	}
	if _, err := h.Ctr("images", "rm", "--sync", ref); err != nil {
		t.Fatal(err)
	}
	if out, err := h.Ctr("images", "pull", "--plain-http", "--snapshotter", "raksh", ref); err != nil {
		t.Fatalf("pull after restart: %v\n%s", err, out)
	}
	if d2, _ := rootfsOf(t, h, "pod-2", chain); d2.ManifestDigest != mdgst.String() {
		t.Fatalf("after restart: %+v", d2)
	}
}

func TestSnapshotterEncrypted(t *testing.T) {
	harness.RequiresRoot(t)
	host, stop := imagetest.Registry()
	defer stop()
	priv, pub, err := imagetest.RSAKey()
	if err != nil {
		t.Fatal(err)
	}
	// mk builds a fresh two-layer encrypted image (distinct per variant, so
	// every pull path unpacks its own layers).
	mk := func(variant int) (l0, l1 *imagetest.Layer, chain digest.Digest) {
		var err error
		l0, err = imagetest.Encrypt(imagetest.GzipLayer(imagetest.Tar(map[string]string{"etc/os-release": fmt.Sprintf("raksh %d\n", variant), "app/old": "x"})), pub)
		if err != nil {
			t.Fatal(err)
		}
		l1, err = imagetest.Encrypt(imagetest.GzipLayer(imagetest.Tar(map[string]string{"app/marker": snMarker, "app/old": "<whiteout>", "app/variant": fmt.Sprint(variant)})), pub)
		if err != nil {
			t.Fatal(err)
		}
		return l0, l1, identity.ChainID([]digest.Digest{l0.DiffID, l1.DiffID})
	}

	s := startSnapshotter(t, "") // guest pull off: encrypted layers go through the ciphertext cache
	h := withSnapshotter(t, s)
	s.useContainerd(h.Address)

	keyFile := filepath.Join(t.TempDir(), "key.pem")
	os.WriteFile(keyFile, priv, 0o600)

	for i, pull := range []struct {
		name string
		args []string
	}{
		{"transfer service (ctr pull)", []string{"images", "pull", "--plain-http", "--snapshotter", "raksh"}},
		{"client unpack (ctr pull --local)", []string{"images", "pull", "--local", "--plain-http", "--snapshotter", "raksh"}},
	} {
		t.Run(pull.name, func(t *testing.T) {
			l0, l1, chain := mk(i)
			img, err := imagetest.Image(l0, l1)
			if err != nil {
				t.Fatal(err)
			}
			ref := fmt.Sprintf("%s/enc/app:%d", host, i)
			if _, err := imagetest.Push(ref, img); err != nil {
				t.Fatal(err)
			}
			if out, err := h.Ctr(append(pull.args, ref)...); err != nil {
				t.Fatalf("pull: %v\n%s", err, out)
			}
			for _, l := range []*imagetest.Layer{l0, l1} {
				p := filepath.Join(s.root, "cache", "blobs", "sha256", l.Digest().Encoded())
				got, err := os.ReadFile(p)
				if err != nil || !bytes.Equal(got, l.Blob) {
					t.Fatalf("cache lacks ciphertext of %s: %v", l.Digest(), err)
				}
			}
			if hits := append(grepTree(s.root, snMarker), grepTree(h.Dir, snMarker)...); len(hits) > 0 {
				t.Fatalf("plaintext marker found on the host: %v", hits)
			}
			// Two pods share one cached copy.
			da, _ := rootfsOf(t, h, fmt.Sprintf("pod-a-%d", i), chain)
			db, _ := rootfsOf(t, h, fmt.Sprintf("pod-b-%d", i), chain)
			if da.Mode != rootfs.ModeLayers || len(da.Layers) != 2 || da.Layers[1].Path != db.Layers[1].Path || da.Layers[1].Source != rootfs.SourceBlob {
				t.Fatalf("descriptors: %+v / %+v", da, db)
			}
			if n, _ := filepath.Glob(filepath.Join(s.root, "cache", "blobs", "sha256", "*[0-9a-f]")); len(n) != 2*(i+1) {
				t.Fatalf("cache holds %d blobs, want %d (one per layer)", len(n), 2*(i+1))
			}
			// The guest side: decrypt the shared ciphertext with the key.
			dest := filepath.Join(t.TempDir(), "rootfs")
			blobs := map[string]string{}
			for _, l := range da.Layers {
				blobs[l.Digest] = l.Path
			}
			open := func(_ context.Context, l *agentapi.RootfsLayer) (io.ReadCloser, error) {
				return os.Open(blobs[l.Digest])
			}
			if _, err := image.DecryptLayers(context.Background(), da.AgentDescriptor(), image.KeyFiles{keyFile}, dest, image.WithBlobOpener(open)); err != nil {
				t.Fatal(err)
			}
			if b, err := os.ReadFile(filepath.Join(dest, "app", "marker")); err != nil || string(b) != snMarker {
				t.Fatalf("decrypted rootfs: %q %v", b, err)
			}
			if _, err := os.Stat(filepath.Join(dest, "app", "old")); err == nil {
				t.Fatal("whiteout not applied")
			}
			if i != 0 {
				return
			}
			// Another namespace pulls the same image with labels: every layer
			// is a cache hit, staged by Prepare, so containerd commits without
			// fetching anything and the cache keeps one copy.
			if out, err := ctrNS(t, h, "tenant2", append(pull.args, ref)...); err != nil {
				t.Fatalf("pull in tenant2: %v\n%s", err, out)
			}
			content, err := ctrNS(t, h, "tenant2", "content", "ls", "-q")
			if err != nil {
				t.Fatal(err)
			}
			for _, l := range []*imagetest.Layer{l0, l1} {
				if strings.Contains(content, l.Digest().String()) {
					t.Fatalf("cached layer %s fetched again by the second namespace", l.Digest())
				}
			}
			if n, _ := filepath.Glob(filepath.Join(s.root, "cache", "blobs", "sha256", "*[0-9a-f]")); len(n) != 2 {
				t.Fatalf("cache holds %d blobs after the second namespace, want 2", len(n))
			}
			if out, err := ctrNS(t, h, "tenant2", "snapshots", "--snapshotter", "raksh", "prepare", "pod-t2", chain.String()); err != nil {
				t.Fatalf("%v %s", err, out)
			}
			out, err := ctrNS(t, h, "tenant2", "snapshots", "--snapshotter", "raksh", "mounts", "/mnt", "pod-t2")
			if err != nil {
				t.Fatal(err)
			}
			m := mountRE.FindStringSubmatch(out)
			if m == nil {
				t.Fatalf("mounts: %q", out)
			}
			if dt, err := rootfs.Read(m[2]); err != nil || dt.Layers[1].Path != da.Layers[1].Path || dt.Layers[1].DiffID != l1.DiffID.String() {
				t.Fatalf("tenant2 descriptor %+v: %v", dt, err)
			}
		})
	}

	// kill -9 at several points of pulls (transfer and client paths, 4-layer
	// encrypted images), restart, re-pull: metadata consistent, no partial
	// cache write, every layer's ciphertext intact in the cache.
	for n, delay := range []time.Duration{10 * time.Millisecond, 60 * time.Millisecond, 150 * time.Millisecond, 300 * time.Millisecond} {
		t.Run(fmt.Sprintf("kill -9 mid-pull after %v", delay), func(t *testing.T) {
			var layers []*imagetest.Layer
			var diffIDs []digest.Digest
			for j := 0; j < 4; j++ {
				l, err := imagetest.Encrypt(imagetest.GzipLayer(imagetest.Tar(map[string]string{
					fmt.Sprintf("f%d", j): strings.Repeat(fmt.Sprintf("crash %d %d ", n, j), 1<<18),
				})), pub)
				if err != nil {
					t.Fatal(err)
				}
				layers = append(layers, l)
				diffIDs = append(diffIDs, l.DiffID)
			}
			img, _ := imagetest.Image(layers...)
			ref := fmt.Sprintf("%s/enc/crash:%d", host, n)
			if _, err := imagetest.Push(ref, img); err != nil {
				t.Fatal(err)
			}
			pull := []string{"images", "pull", "--plain-http", "--snapshotter", "raksh"}
			if n%2 == 1 {
				pull = []string{"images", "pull", "--local", "--plain-http", "--snapshotter", "raksh"}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			errC := make(chan error, 1)
			go func() {
				_, err := h.CtrContext(ctx, append(pull, ref)...)
				errC <- err
			}()
			time.Sleep(delay)
			s.stop(syscall.SIGKILL)
			<-errC // fails or, if it was quick, succeeds
			s.start()
			if entries, _ := os.ReadDir(filepath.Join(s.root, "cache", "ingest")); len(entries) != 0 {
				t.Fatalf("partial cache writes survived a restart: %d", len(entries))
			}
			if out, err := ctrAfterRestart(h, append(pull, ref)...); err != nil {
				t.Fatalf("pull after kill -9: %v\n%s", err, out)
			}
			d, _ := rootfsOf(t, h, fmt.Sprintf("pod-crash-%d", n), identity.ChainID(diffIDs))
			if len(d.Layers) != len(layers) {
				t.Fatalf("descriptor has %d layers", len(d.Layers))
			}
			for j, l := range layers {
				got, err := os.ReadFile(d.Layers[j].Path)
				if err != nil || !bytes.Equal(got, l.Blob) || d.Layers[j].DiffID != l.DiffID.String() {
					t.Fatalf("layer %d after recovery: %v", j, err)
				}
			}
			if out, err := h.Ctr("snapshots", "--snapshotter", "raksh", "rm", fmt.Sprintf("pod-crash-%d", n)); err != nil {
				t.Fatalf("%v %s", err, out)
			}
		})
	}
}

// ctrNS runs ctr against h in namespace ns.
func ctrNS(t testing.TB, h *harness.Containerd, ns string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(harness.Bin(t, "ctr"), append([]string{"--address", h.Address, "--namespace", ns}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func TestSnapshotterGuestPullCRI(t *testing.T) {
	harness.RequiresRoot(t)
	host, stop := imagetest.Registry()
	defer stop()
	base := imagetest.GzipLayer(imagetest.Tar(map[string]string{"etc/os-release": "raksh cri\n"}))
	top := imagetest.GzipLayer(imagetest.Tar(map[string]string{"app/marker": snMarker + "-cri"}))
	img, err := imagetest.Image(base, top)
	if err != nil {
		t.Fatal(err)
	}
	ref := host + "/raksh/cri:1"
	mdgst, err := imagetest.Push(ref, img)
	if err != nil {
		t.Fatal(err)
	}

	s := startSnapshotter(t, guestPullConfig(host))
	hostsDir := filepath.Join(s.dir, "certs.d")
	os.MkdirAll(filepath.Join(hostsDir, host), 0o755)
	os.WriteFile(filepath.Join(hostsDir, host, "hosts.toml"), []byte(fmt.Sprintf("server = \"http://%s\"\n[host.\"http://%s\"]\n  capabilities = [\"pull\", \"resolve\"]\n", host, host)), 0o644)
	// CRI pulls into raksh through the transfer service (its default), plain
	// HTTP to the test registry.
	h := withSnapshotter(t, s, []byte(fmt.Sprintf("\n[plugins.'io.containerd.cri.v1.images']\n  snapshotter = \"raksh\"\n  [plugins.'io.containerd.cri.v1.images'.registry]\n    config_path = %q\n", hostsDir))...)

	conn, err := grpc.NewClient("unix://"+h.Address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	resp, err := criapi.NewImageServiceClient(conn).PullImage(ctx, &criapi.PullImageRequest{Image: &criapi.ImageSpec{Image: ref}})
	if err != nil {
		t.Fatalf("CRI PullImage: %v", err)
	}
	t.Logf("CRI pulled %s", resp.ImageRef)
	if lb, _ := os.ReadFile(h.Log); bytes.Contains(lb, []byte("Falling back to local image pull")) {
		t.Fatal("CRI fell back to client-side pulls: the drop-in must leave disable_snapshot_annotations alone")
	}

	content, err := ctrNS(t, h, "k8s.io", "content", "ls", "-q")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(content, mdgst.String()) {
		t.Fatalf("content store lacks the manifest:\n%s", content)
	}
	for _, l := range []*imagetest.Layer{base, top} {
		if strings.Contains(content, l.Digest().String()) {
			t.Fatalf("layer %s was fetched through CRI", l.Digest())
		}
	}
	if hits := append(grepTree(s.root, snMarker), grepTree(h.Dir, snMarker)...); len(hits) > 0 {
		t.Fatalf("marker found on the host: %v", hits)
	}
	chain := identity.ChainID([]digest.Digest{base.DiffID, top.DiffID})
	if out, err := ctrNS(t, h, "k8s.io", "snapshots", "--snapshotter", "raksh", "prepare", "cri-pod", chain.String()); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	out, err := ctrNS(t, h, "k8s.io", "snapshots", "--snapshotter", "raksh", "mounts", "/mnt", "cri-pod")
	if err != nil {
		t.Fatal(err)
	}
	m := mountRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("mounts: %q", out)
	}
	d, err := rootfs.Read(m[2])
	if err != nil || d.Mode != rootfs.ModeGuestPull || d.ImageRef != ref || d.ManifestDigest != mdgst.String() {
		t.Fatalf("descriptor %+v: %v", d, err)
	}
}

// diskUsage returns the bytes allocated to regular files under root.
func diskUsage(root string) int64 {
	var n int64
	filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				n += st.Blocks * 512
			}
		}
		return nil
	})
	return n
}

// BenchmarkHostBytes compares the host disk used by pulling the same image
// (three 4 MiB layers of random data) with containerd's overlayfs snapshotter
// and with raksh guest pull (content store plus snapshotter directories).
func BenchmarkHostBytes(b *testing.B) {
	harness.RequiresRoot(b)
	host, stop := imagetest.Registry()
	defer stop()
	s := startSnapshotter(b, "[guest_pull]\nenable = true\n")
	h := withSnapshotter(b, s)
	rng := rand.New(rand.NewSource(1))
	var overlayBytes, rakshBytes int64
	for i := 0; i < b.N; i++ {
		var layers []*imagetest.Layer
		for j := 0; j < 3; j++ {
			buf := make([]byte, 4<<20)
			rng.Read(buf)
			layers = append(layers, imagetest.GzipLayer(imagetest.Tar(map[string]string{fmt.Sprintf("l%d", j): string(buf)})))
		}
		img, err := imagetest.Image(layers...)
		if err != nil {
			b.Fatal(err)
		}
		ref := fmt.Sprintf("%s/bench/img:%d", host, i)
		if _, err := imagetest.Push(ref, img); err != nil {
			b.Fatal(err)
		}
		before := diskUsage(h.Dir) + diskUsage(s.root)
		if out, err := h.Ctr("images", "pull", "--plain-http", "--snapshotter", "overlayfs", ref); err != nil {
			b.Fatalf("%v %s", err, out)
		}
		mid := diskUsage(h.Dir) + diskUsage(s.root)
		overlayBytes += mid - before
		if _, err := h.Ctr("images", "rm", "--sync", ref); err != nil {
			b.Fatal(err)
		}
		h.Ctr("snapshots", "--snapshotter", "overlayfs", "ls") // let GC settle
		ref2 := fmt.Sprintf("%s/bench/img-raksh:%d", host, i)
		if _, err := imagetest.Push(ref2, img); err != nil {
			b.Fatal(err)
		}
		before = diskUsage(h.Dir) + diskUsage(s.root)
		if out, err := h.Ctr("images", "pull", "--plain-http", "--snapshotter", "raksh", ref2); err != nil {
			b.Fatalf("%v %s", err, out)
		}
		rakshBytes += diskUsage(h.Dir) + diskUsage(s.root) - before
		if _, err := h.Ctr("images", "rm", "--sync", ref2); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(overlayBytes)/float64(b.N), "overlayfs-host-bytes/image")
	b.ReportMetric(float64(rakshBytes)/float64(b.N), "raksh-guest-pull-host-bytes/image")
	b.ReportMetric(float64(rakshBytes)/float64(overlayBytes), "raksh/overlayfs")
}

// TestSnapshotterPlainAndMixed: a plain image on the raksh snapshotter is an
// ordinary overlay rootfs (applied by the raksh differ on both pull paths); a
// mixed image (plain base, encrypted top) gets a descriptor with a host dir
// layer and a ciphertext blob layer.
func TestSnapshotterPlainAndMixed(t *testing.T) {
	harness.RequiresRoot(t)
	host, stop := imagetest.Registry()
	defer stop()
	_, pub, err := imagetest.RSAKey()
	if err != nil {
		t.Fatal(err)
	}
	s := startSnapshotter(t, guestPullConfig(host))
	h := withSnapshotter(t, s)
	s.useContainerd(h.Address)

	for i, args := range [][]string{
		{"images", "pull", "--plain-http", "--snapshotter", "raksh"},
		{"images", "pull", "--local", "--plain-http", "--snapshotter", "raksh"},
	} {
		base := imagetest.GzipLayer(imagetest.Tar(map[string]string{"etc/os-release": fmt.Sprintf("plain %d\n", i), "app/old": "x"}))
		top := imagetest.GzipLayer(imagetest.Tar(map[string]string{"app/top": "visible", "app/old": "<whiteout>"}))
		img, _ := imagetest.Image(base, top)
		ref := fmt.Sprintf("%s/plain/app:%d", host, i)
		if _, err := imagetest.Push(ref, img); err != nil {
			t.Fatal(err)
		}
		if out, err := ctrAfterRestart(h, append(args, ref)...); err != nil {
			t.Fatalf("pull %s: %v\n%s", ref, err, out)
		}
		chain := identity.ChainID([]digest.Digest{base.DiffID, top.DiffID})
		key := fmt.Sprintf("plain-%d", i)
		if _, err := h.Ctr("snapshots", "--snapshotter", "raksh", "prepare", key, chain.String()); err != nil {
			t.Fatal(err)
		}
		out, err := h.Ctr("snapshots", "--snapshotter", "raksh", "mounts", "/mnt", key)
		if err != nil {
			t.Fatal(err)
		}
		m := mountRE.FindStringSubmatch(out)
		if m == nil || m[1] != "overlay" {
			t.Fatalf("plain image must get an overlay rootfs, got %q", out)
		}
		target := t.TempDir()
		if err := exec.Command("mount", "-t", "overlay", "overlay", target, "-o", m[3]).Run(); err != nil {
			t.Fatalf("mount: %v", err)
		}
		top1, err1 := os.ReadFile(filepath.Join(target, "app", "top"))
		_, errOld := os.Stat(filepath.Join(target, "app", "old"))
		exec.Command("umount", target).Run()
		if err1 != nil || string(top1) != "visible" || errOld == nil {
			t.Fatalf("overlay rootfs content wrong: %q %v, whiteout %v", top1, err1, errOld)
		}
	}

	// Mixed: plain base, encrypted top.
	base := imagetest.GzipLayer(imagetest.Tar(map[string]string{"etc/os-release": "mixed\n"}))
	top, err := imagetest.Encrypt(imagetest.GzipLayer(imagetest.Tar(map[string]string{"app/marker": snMarker + "-mixed"})), pub)
	if err != nil {
		t.Fatal(err)
	}
	img, _ := imagetest.Image(base, top)
	ref := host + "/mixed/app:1"
	if _, err := imagetest.Push(ref, img); err != nil {
		t.Fatal(err)
	}
	if out, err := h.Ctr("images", "pull", "--plain-http", "--snapshotter", "raksh", ref); err != nil {
		t.Fatalf("pull: %v\n%s", err, out)
	}
	d, _ := rootfsOf(t, h, "mixed-pod", identity.ChainID([]digest.Digest{base.DiffID, top.DiffID}))
	if d.Mode != rootfs.ModeLayers || len(d.Layers) != 2 || d.Layers[0].Source != rootfs.SourceDir || d.Layers[1].Source != rootfs.SourceBlob ||
		d.Layers[0].Digest != base.Digest().String() || d.Layers[1].Digest != top.Digest().String() {
		t.Fatalf("mixed descriptor %+v", d)
	}
	if b, err := os.ReadFile(filepath.Join(d.Layers[0].Path, "etc", "os-release")); err != nil || string(b) != "mixed\n" {
		t.Fatalf("host dir layer: %q %v", b, err)
	}
	if hits := append(grepTree(s.root, snMarker+"-mixed"), grepTree(h.Dir, snMarker+"-mixed")...); len(hits) > 0 {
		t.Fatalf("encrypted layer's marker found on the host: %v", hits)
	}
}
