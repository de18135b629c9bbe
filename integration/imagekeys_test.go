//go:build integration

package integration

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/raksh-project/raksh/agent"
	"github.com/raksh-project/raksh/agent/image/imagetest"
	"github.com/raksh-project/raksh/integration/harness"
	rakshruntime "github.com/raksh-project/raksh/runtime"
	"github.com/raksh-project/raksh/tee/initdata"
)

const kbsImageMarker = "RAKSH-KBS-IMAGE-KEY-MARKER-41d7"

// initrdFiles lists the files of an initrd (a newc cpio archive,
// gzipped or not) and returns them with its decompressed bytes.
func initrdFiles(t *testing.T, p string) ([]string, []byte) {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.HasPrefix(b, []byte{0x1f, 0x8b}) {
		zr, err := gzip.NewReader(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		if b, err = io.ReadAll(zr); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("cpio", "-it", "--quiet")
	cmd.Stdin = bytes.NewReader(b)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("list %s: %v", p, err)
	}
	return strings.Fields(string(out)), b
}

// pemBody returns 64 characters from the middle of a PEM block's base64
// body: key material, not the ASN.1 prefix every key of a type shares.
func pemBody(pem []byte) []byte {
	var body []byte
	for _, l := range bytes.Split(pem, []byte("\n")) {
		if len(l) > 0 && !bytes.HasPrefix(l, []byte("-----")) {
			body = append(body, l...)
		}
	}
	return body[len(body)/2 : len(body)/2+64]
}

// TestImageKeysFromKBS: an ocicrypt (JWE) image whose private key lives
// only in a real raksh-kbs. The runtime config names the key's resource
// (image_keys, on the measured kernel command line) and the broker's
// policy pins the sim TEE and this guest's launch measurement; the agent
// attests through the shim's kbs proxy, fetches the key into guest memory
// and decrypts the host-cached ciphertext. The initrd carries no image key,
// and neither the key nor the image's plaintext reaches the host. Refusals:
// a policy that does not release the resource, a resource the broker does
// not hold, and a host that rewrites image_keys to ask for another
// resource (the command line, so the measurement, changes), a runtime
// without a TEE — each a clear error, nothing left behind. The same with
// the resource named by the node's init data (image_keys) instead: the
// broker pins the document's digest and refuses a one-byte change.
func TestImageKeysFromKBS(t *testing.T) {
	harness.RequiresRoot(t)
	ctx := context.Background()
	host, stop := imagetest.Registry()
	defer stop()
	priv, pub, err := imagetest.RSAKey()
	if err != nil {
		t.Fatal(err)
	}
	bb, err := imagetest.Encrypt(busyboxLayer(t), pub)
	if err != nil {
		t.Fatal(err)
	}
	top, err := imagetest.Encrypt(imagetest.GzipLayer(imagetest.Tar(map[string]string{"app/marker": kbsImageMarker})), pub)
	if err != nil {
		t.Fatal(err)
	}
	img, err := imagetest.Image(bb, top)
	if err != nil {
		t.Fatal(err)
	}
	ref := host + "/enc/kbs:1"
	if _, err := imagetest.Push(ref, img); err != nil {
		t.Fatal(err)
	}

	k := startKBS(t)
	const resource = "default/image-key/demo"
	if err := k.Admin.SetResource(ctx, resource, priv); err != nil {
		t.Fatal(err)
	}
	s := startSnapshotter(t, "") // no guest pull: the host caches the ciphertext
	h := withSnapshotterOpts(t, s, harness.Options{RuntimeConfig: fmt.Sprintf("tee = \"sim\"\nimage_keys = [%q]\n[proxy]\nkbs = %q\nregistry = %q\n",
		resource, k.hostPort(), host)})
	s.useContainerd(h.Address)

	cfg, err := rakshruntime.LoadConfig(h.RuntimeConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	// The guest's initrd is the stock one: no image key directory, no key.
	files, cpio := initrdFiles(t, cfg.Initrd)
	if !slices.Contains(files, "init") {
		t.Fatalf("initrd %s lists no init: %q", cfg.Initrd, files)
	}
	for _, f := range files {
		if strings.HasPrefix("/"+f, agent.DefaultImageKeyDir) {
			t.Fatalf("the initrd %s carries %s", cfg.Initrd, f)
		}
	}
	if bytes.Contains(cpio, pemBody(priv)) {
		t.Fatalf("the initrd %s carries the image key", cfg.Initrd)
	}
	m, err := rakshruntime.LaunchMeasurement(cfg)
	if err != nil {
		t.Fatal(err)
	}
	policy := fmt.Sprintf(`{"rules":[{"resources":["default/image-key/*"],"tee":["sim"],"measurements":[%q]}]}`, hex.EncodeToString(m))
	k.setPolicy(t, policy)

	if out, err := h.Ctr("images", "pull", "--plain-http", "--snapshotter", "raksh", ref); err != nil {
		t.Fatalf("pull: %v\n%s", err, out)
	}
	if cached := filepath.Join(s.root, "cache", "blobs", "sha256", top.Digest().Encoded()); !fileExists(cached) {
		t.Fatalf("ciphertext of the marker layer not cached at %s", cached)
	}

	start := time.Now()
	out, err := runRaksh(t, h, ref, "kbskey-run", "/bin/cat", "/app/marker")
	if err != nil {
		t.Fatalf("ctr run: %v\n%s", err, out)
	}
	t.Logf("ctr run of the encrypted image, key from the broker (VM boot, attestation, key fetch, decryption, run): %v", time.Since(start))
	if strings.TrimSpace(out) != kbsImageMarker {
		t.Fatalf("container printed %q, want the image's marker", out)
	}
	keyBody := string(pemBody(priv))
	for _, dir := range []string{s.root, h.Dir, k.Dir} {
		if hits := filesContaining(dir, kbsImageMarker); len(hits) > 0 {
			t.Fatalf("plaintext marker found on the host: %v", hits)
		}
	}
	// The broker stores the key; nothing else on the host holds it (the
	// shim's log in containerd's, the console logs, the snapshotter's root).
	for _, dir := range []string{s.root, h.Dir} {
		if hits := filesContaining(dir, keyBody); len(hits) > 0 {
			t.Fatalf("the image key reached the host: %v", hits)
		}
	}
	if b, _ := os.ReadFile(k.Log); bytes.Contains(b, []byte(keyBody)) {
		t.Fatal("the image key is in the broker's log")
	}

	refused := func(t *testing.T, id, want string) {
		t.Helper()
		out, err := runRaksh(t, h, ref, id, "/bin/cat", "/app/marker")
		if err == nil {
			t.Fatalf("container ran without its image key: %s", out)
		}
		for _, w := range []string{"image key " + resource + " from the key broker", want} {
			if !strings.Contains(err.Error(), w) {
				t.Fatalf("error %v, want one saying %q", err, w)
			}
		}
		if strings.Contains(err.Error()+out, keyBody) || strings.Contains(err.Error()+out, kbsImageMarker) {
			t.Fatal("the key or the plaintext leaked into the error")
		}
		if _, msg, ok := strings.Cut(err.Error(), "ctr: "); ok {
			t.Logf("refused: %s", msg)
		}
		noLeftovers(t, h, id)
	}
	t.Run("policy refuses the resource", func(t *testing.T) {
		k.setPolicy(t, fmt.Sprintf(`{"rules":[{"resources":["default/workload/*"],"tee":["sim"],"measurements":[%q]}]}`, hex.EncodeToString(m)))
		defer k.setPolicy(t, policy)
		refused(t, "kbskey-denied", "PolicyDeny: resource "+resource+": no policy rule covers the resource")
	})
	t.Run("other measurement", func(t *testing.T) {
		k.setPolicy(t, `{"rules":[{"resources":["default/image-key/*"],"tee":["sim"],"measurements":["`+strings.Repeat("ab", 48)+`"]}]}`)
		defer k.setPolicy(t, policy)
		refused(t, "kbskey-otherm", "PolicyDeny: resource "+resource+": launch measurement not allowed by policy")
	})
	t.Run("resource missing", func(t *testing.T) {
		if err := os.Remove(filepath.Join(k.Dir, "resources", resource)); err != nil {
			t.Fatal(err)
		}
		defer func() {
			if err := k.Admin.SetResource(ctx, resource, priv); err != nil {
				t.Fatal(err)
			}
		}()
		refused(t, "kbskey-missing", "404 ResourceNotFound")
	})
	t.Run("host asks for another resource", func(t *testing.T) {
		// The node edits image_keys to make the guest fetch a key the policy
		// would release to the measured launch: the command line is measured,
		// so the launch is another one and the broker releases nothing.
		const other = "default/image-key/other"
		if err := k.Admin.SetResource(ctx, other, priv); err != nil {
			t.Fatal(err)
		}
		orig := readFile(t, h.RuntimeConfigPath)
		edited := strings.Replace(orig, fmt.Sprintf("image_keys = [%q]", resource), fmt.Sprintf("image_keys = [%q]", other), 1)
		if edited == orig {
			t.Fatal("image_keys not found in the runtime config")
		}
		os.WriteFile(h.RuntimeConfigPath, []byte(edited), 0o644)
		defer os.WriteFile(h.RuntimeConfigPath, []byte(orig), 0o644)
		out, err := runRaksh(t, h, ref, "kbskey-otherres", "/bin/cat", "/app/marker")
		if err == nil || !strings.Contains(err.Error(), "image key "+other+" from the key broker") ||
			!strings.Contains(err.Error(), "launch measurement not allowed by policy") {
			t.Fatalf("run with rewritten image_keys: %v\n%s", err, out)
		}
		noLeftovers(t, h, "kbskey-otherres")
	})
	t.Run("no TEE", func(t *testing.T) {
		orig := readFile(t, h.RuntimeConfigPath)
		edited := strings.Replace(orig, `tee = "sim"`, `tee = "none"`, 1)
		if edited == orig {
			t.Fatal("tee not found in the runtime config")
		}
		os.WriteFile(h.RuntimeConfigPath, []byte(edited), 0o644)
		defer os.WriteFile(h.RuntimeConfigPath, []byte(orig), 0o644)
		out, err := runRaksh(t, h, ref, "kbskey-notee", "/bin/cat", "/app/marker")
		if err == nil || !strings.Contains(err.Error(), "key broker for image keys") || !strings.Contains(err.Error(), "launched without one") {
			t.Fatalf("run without a TEE: %v\n%s", err, out)
		}
		noLeftovers(t, h, "kbskey-notee")
	})
	t.Run("image key from the node's init data", func(t *testing.T) {
		// The image policy comes from the init data instead of the
		// runtime config: the document's image_keys name the resource,
		// its digest is bound at launch and pinned by the broker; the same
		// document with one byte changed gets nothing.
		orig := readFile(t, h.RuntimeConfigPath)
		doc := fmt.Sprintf(`{"version":%q,"image_keys":[%q]}`, initdata.Version, resource)
		other := strings.Replace(doc, `"version"`, `"Version"`, 1)
		docFile := filepath.Join(t.TempDir(), "init-data.json")
		useDoc := func(t *testing.T, doc string) {
			t.Helper()
			os.WriteFile(docFile, []byte(doc), 0o644)
			edited := strings.Replace(orig, fmt.Sprintf("image_keys = [%q]\n", resource), fmt.Sprintf("init_data = %q\n", docFile), 1)
			if edited == orig {
				t.Fatal("image_keys not found in the runtime config")
			}
			os.WriteFile(h.RuntimeConfigPath, []byte(edited), 0o644)
		}
		defer os.WriteFile(h.RuntimeConfigPath, []byte(orig), 0o644)
		useDoc(t, doc)
		cfg, err := rakshruntime.LoadConfig(h.RuntimeConfigPath)
		if err != nil {
			t.Fatal(err)
		}
		if len(cfg.ImageKeys) != 0 {
			t.Fatalf("the runtime config still names image keys: %v", cfg.ImageKeys)
		}
		m, err := rakshruntime.LaunchMeasurement(cfg)
		if err != nil {
			t.Fatal(err)
		}
		k.setPolicy(t, fmt.Sprintf(`{"rules":[{"resources":["default/image-key/*"],"tee":["sim"],"measurements":[%q],"init_data_digests":[%q]}]}`,
			hex.EncodeToString(m), hex.EncodeToString(initdata.Digest([]byte(doc)))))
		defer k.setPolicy(t, policy)
		out, err := runRaksh(t, h, ref, "kbskey-initdata", "/bin/cat", "/app/marker")
		if err != nil || strings.TrimSpace(out) != kbsImageMarker {
			t.Fatalf("run with image_keys from the init data: %v %q", err, out)
		}
		useDoc(t, other)
		refused(t, "kbskey-initdata-other", "init-data digest not allowed by policy")
	})
	// Still runs afterwards, with the key released again.
	if out, err := runRaksh(t, h, ref, "kbskey-again", "/bin/cat", "/app/marker"); err != nil || strings.TrimSpace(out) != kbsImageMarker {
		t.Fatalf("run after the refusals: %v %q", err, out)
	}
}
