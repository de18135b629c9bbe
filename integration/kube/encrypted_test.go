//go:build integration

package kube

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/raksh-project/raksh/agent/image/imagetest"
	"github.com/raksh-project/raksh/integration/harness"
	"github.com/raksh-project/raksh/integration/testimage"
)

// imageKeyResource names the encrypted image's key in the broker.
const imageKeyResource = "default/image-key/e2e"

// encImage is the owner's encrypted image (ocicrypt, JWE to an RSA key the
// broker holds), served by a registry on loopback, and the node's side of
// it: raksh-snapshotter, and a second handler raksh-enc whose pods use that
// snapshotter and whose guests fetch the image key from the broker.
type encImage struct {
	dir       string
	registry  string
	ref       string
	marker    string
	top       string // digest of the encrypted marker layer
	snapRoot  string
	snapSock  string
	encConfig string // the raksh-enc handler's runtime.toml
	snapCmd   *exec.Cmd
	snapDone  chan struct{}
	kbsAddr   string
}

// prepareEncImage builds and pushes the encrypted image, stores its key in
// the broker and returns the containerd drop-ins (snapshotter, raksh-enc
// handler) and config (registry hosts) the node needs.
func prepareEncImage(t *testing.T, dir string, k *confidential) (*encImage, []string, string) {
	e := &encImage{dir: dir, marker: random("enc-marker-"), snapRoot: filepath.Join(dir, "snap"), snapSock: filepath.Join(dir, "snap.sock"),
		encConfig: filepath.Join(dir, "runtime-enc.toml"), snapDone: make(chan struct{}), kbsAddr: k.kbsAddr}
	os.MkdirAll(dir, 0o755)
	host, stop := imagetest.Registry()
	t.Cleanup(stop)
	e.registry = host
	priv, pub, err := imagetest.RSAKey()
	if err != nil {
		t.Fatal(err)
	}
	// The pause image's busybox layer (same tar, same chain) and a marker
	// layer, both encrypted.
	bb, err := busyboxLayer()
	if err != nil {
		t.Fatal(err)
	}
	encBase, err := imagetest.Encrypt(bb, pub)
	if err != nil {
		t.Fatal(err)
	}
	encTop, err := imagetest.Encrypt(imagetest.GzipLayer(imagetest.Tar(map[string]string{"app/marker": e.marker})), pub)
	if err != nil {
		t.Fatal(err)
	}
	img, err := imagetest.Image(encBase, encTop)
	if err != nil {
		t.Fatal(err)
	}
	e.ref = host + "/enc/app:1"
	if _, err := imagetest.Push(e.ref, img); err != nil {
		t.Fatal(err)
	}
	e.top = encTop.Digest().Encoded()
	keyFile := filepath.Join(dir, "image.key")
	os.WriteFile(keyFile, priv, 0o600)
	k.rakshctl(t, "kbs", "resource", "set", "--file", keyFile, imageKeyResource)
	os.Remove(keyFile)

	// Drop-ins: contrib's snapshotter one pointed at this socket, and the
	// raksh-enc handler: contrib's runtime drop-in renamed, on the raksh
	// snapshotter, reading its own runtime.toml.
	snap, err := os.ReadFile(filepath.Join(harness.Repo(), "contrib", "containerd", "snapshotter.toml"))
	if err != nil {
		t.Fatal(err)
	}
	snapDropin := filepath.Join(dir, "20-raksh-snapshotter.toml")
	os.WriteFile(snapDropin, bytes.ReplaceAll(snap, []byte("/run/raksh-snapshotter/snapshotter.sock"), []byte(e.snapSock)), 0o644)
	rt, err := os.ReadFile(filepath.Join(harness.Repo(), "contrib", "containerd", "conf.d", "10-raksh-runtime.toml"))
	if err != nil {
		t.Fatal(err)
	}
	r := strings.NewReplacer("runtimes.raksh]", "runtimes.raksh-enc]", "runtimes.raksh.options]", "runtimes.raksh-enc.options]",
		"/etc/raksh/runtime.toml", e.encConfig, "sandboxer = 'podsandbox'", "sandboxer = 'podsandbox'\n  snapshotter = 'raksh'")
	encDropin := filepath.Join(dir, "30-raksh-enc.toml")
	s := r.Replace(string(rt))
	if !strings.Contains(s, "runtimes.raksh-enc.options]") || !strings.Contains(s, "snapshotter = 'raksh'") {
		t.Fatalf("contrib's runtime drop-in changed shape:\n%s", s)
	}
	os.WriteFile(encDropin, []byte(s), 0o644)

	hosts := filepath.Join(dir, "certs.d")
	os.MkdirAll(filepath.Join(hosts, host), 0o755)
	os.WriteFile(filepath.Join(hosts, host, "hosts.toml"), []byte(fmt.Sprintf("server = \"http://%s\"\n[host.\"http://%s\"]\n  capabilities = [\"pull\", \"resolve\"]\n", host, host)), 0o644)
	// The kubelet's pulls for raksh-enc pods unpack into raksh (the
	// runtime's snapshotter setting covers its containers, not CRI pulls).
	cfg := fmt.Sprintf(`
[plugins.'io.containerd.cri.v1.images'.registry]
  config_path = %q
[plugins.'io.containerd.cri.v1.images'.runtime_platforms.raksh-enc]
  platform = "linux/amd64"
  snapshotter = "raksh"
`, hosts)
	return e, []string{snapDropin, encDropin}, cfg
}

// start writes the raksh-enc runtime config (the node's plus the image key),
// starts raksh-snapshotter for containerd h and unpacks the pause image into
// it (the raksh-enc sandboxes' image).
func (e *encImage) start(t *testing.T, h *harness.Containerd) {
	base, err := os.ReadFile(h.RuntimeConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	// A top-level key goes before the tables; the [proxy] table (the
	// broker) ends the node's config: the guest reaches the registry too.
	if !bytes.HasSuffix(bytes.TrimSpace(base), []byte(fmt.Sprintf("kbs = %q", e.kbsAddr))) {
		t.Fatalf("the node's runtime config does not end with its [proxy] table:\n%s", base)
	}
	cfg := fmt.Sprintf("image_keys = [%q]\n%s\nregistry = %q\n", imageKeyResource, bytes.TrimSpace(base), e.registry)
	os.WriteFile(e.encConfig, []byte(cfg), 0o644)

	cf := filepath.Join(e.dir, "snapshotter.toml")
	os.WriteFile(cf, []byte(fmt.Sprintf("root = %q\naddress = %q\ncontainerd_address = %q\n", e.snapRoot, e.snapSock, h.Address)), 0o644)
	logf, err := os.Create(filepath.Join(e.dir, "snapshotter.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	e.snapCmd = exec.Command(harness.Bin(t, "raksh-snapshotter"), "-config", cf)
	e.snapCmd.Stdout, e.snapCmd.Stderr = logf, logf
	e.snapCmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := e.snapCmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { e.snapCmd.Wait(); close(e.snapDone) }()
	t.Cleanup(func() {
		e.snapCmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-e.snapDone:
		case <-time.After(15 * time.Second):
			e.snapCmd.Process.Kill()
		}
		unmountBelow(e.snapRoot)
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if c, err := net.Dial("unix", e.snapSock); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(filepath.Join(e.dir, "snapshotter.log"))
			t.Fatalf("raksh-snapshotter did not come up:\n%s", b)
		}
		time.Sleep(100 * time.Millisecond)
	}
	pause, err := testimage.Pause()
	if err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(e.dir, "pause.tar")
	if err := testimage.WriteArchive(pause, testimage.PauseRef, archive); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(harness.Bin(t, "ctr"), "--address", h.Address, "--namespace", "k8s.io",
		"images", "import", "--local", "--snapshotter", "raksh", archive).CombinedOutput()
	if err != nil {
		t.Fatalf("import the pause image into raksh-snapshotter: %v\n%s", err, out)
	}
}

// busyboxLayer returns the busybox test image's layer (the pause image's)
// as a gzip layer.
func busyboxLayer() (*imagetest.Layer, error) {
	img, err := testimage.Busybox(nil, "/bin/sh")
	if err != nil {
		return nil, err
	}
	ls, err := img.Layers()
	if err != nil || len(ls) != 1 {
		return nil, fmt.Errorf("busybox layers: %d, %v", len(ls), err)
	}
	rc, err := ls[0].Uncompressed()
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	tarBytes, err := io.ReadAll(rc)
	if err != nil {
		return nil, err
	}
	return imagetest.GzipLayer(tarBytes), nil
}

// (h) A pod on an image its owner encrypted (ocicrypt), pulled by the
// kubelet through raksh-snapshotter: the node caches only ciphertext, the
// guest attests, fetches the image key from raksh-kbs and decrypts.
func encryptedImage(s *S, c *cluster) {
	e := c.enc
	defer s.del("pod/encimg", "runtimeclass/raksh-enc")
	s.apply(`apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata: {name: raksh-enc}
handler: raksh-enc
overhead: {podFixed: {memory: 576Mi, cpu: 250m}}
scheduling: {nodeSelector: {raksh.io/runtime: "true"}}
`)
	s.apply(fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: encimg}
spec:
  runtimeClassName: raksh-enc
  terminationGracePeriodSeconds: 2
  containers:
  - name: main
    image: %s
    imagePullPolicy: IfNotPresent
    command: ["/bin/sh", "-c", "echo marker-sha=$(sha256sum /app/marker | cut -c1-16); echo kernel=$(uname -r); exec sleep 3600"]
`, e.ref))
	s.waitReady("encimg")
	var logs string
	s.eventually("kubectl logs", time.Minute, func() error {
		logs = s.kubectl("logs", "encimg")
		if !strings.Contains(logs, "kernel=") {
			return fmt.Errorf("log %q", logs)
		}
		return nil
	})
	if !strings.Contains(logs, "marker-sha="+sha16(e.marker)+"\n") || strings.Contains(logs, "kernel="+hostKernel()) {
		s.Errorf("the guest did not decrypt the image's marker layer (log %q)", logs)
	}
	if _, err := os.Stat(filepath.Join(e.snapRoot, "cache", "blobs", "sha256", e.top)); err != nil {
		s.Errorf("the ciphertext of the marker layer is not in the snapshotter's cache: %v", err)
	}
	if hits := filesContaining([]string{e.snapRoot, c.containerd.Dir, c.kubeletDir, c.logsDir}, e.marker); len(hits) > 0 {
		s.Errorf("the image's plaintext is on the node: %v", hits)
	}
}
