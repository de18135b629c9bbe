package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containers/ocicrypt"
	encconfig "github.com/containers/ocicrypt/config"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/raksh-project/raksh/agent/image/imagetest"
	"github.com/raksh-project/raksh/kbs"
	"github.com/raksh-project/raksh/tee"
)

const imageMarker = "RAKSH-IMAGE-ENCRYPT-MARKER-9c1e"

// testBroker starts an in-process raksh-kbs with a file store and returns
// its URL, the admin key file, the store and the server.
func testBroker(t *testing.T) (string, string, *kbs.FileStore, *kbs.Server) {
	t.Helper()
	dir := t.TempDir()
	adminKey, adminPub := filepath.Join(dir, "admin.key"), filepath.Join(dir, "admin.pub")
	if _, err := run(t, "", "keys", "generate", "--alg", "ed25519", "--private", adminKey, "--public", adminPub); err != nil {
		t.Fatal(err)
	}
	opts, err := (&kbs.Config{AdminPublicKeyFiles: []string{adminPub}}).Opts()
	if err != nil {
		t.Fatal(err)
	}
	store, err := kbs.NewFileStore(filepath.Join(dir, "store"))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := kbs.New(store, tee.NewRegistry(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv)
	t.Cleanup(ts.Close)
	return ts.URL, adminKey, store, srv
}

// TestImageEncrypt: a plain image in a local registry is encrypted by
// image encrypt, its key lands in the broker under a policy rule that keeps
// the existing rules, and the pushed image holds only ciphertext that the
// stored key decrypts back to the original layers.
func TestImageEncrypt(t *testing.T) {
	host, stop := imagetest.Registry()
	defer stop()
	base := imagetest.GzipLayer(imagetest.Tar(map[string]string{"bin/app": "base layer"}))
	top := imagetest.GzipLayer(imagetest.Tar(map[string]string{"app/marker": imageMarker}))
	img, err := imagetest.Image(base, top)
	if err != nil {
		t.Fatal(err)
	}
	src, dst := host+"/plain/app:1", host+"/enc/app:1"
	if _, err := imagetest.Push(src, img); err != nil {
		t.Fatal(err)
	}
	url, adminKey, store, srv := testBroker(t)
	dir := t.TempDir()
	pol := filepath.Join(dir, "policy.json")
	os.WriteFile(pol, []byte(`{"rules":[{"resources":["default/workload/*"],"tee":["snp"]}]}`), 0o600)
	if _, err := run(t, "", "kbs", "policy", "set", "--file", pol, "--url", url, "--admin-key", adminKey); err != nil {
		t.Fatal(err)
	}
	meas := strings.Repeat("ab", 48)
	const resource = "default/image-key/app"
	out, err := run(t, "", "image", "encrypt", "--resource", resource, "--tee", "sim", "--measurement", meas,
		"--url", url, "--admin-key", adminKey, "--plain-http", "-o", "json", src, dst)
	if err != nil {
		t.Fatal(err)
	}
	var res encryptResult
	if err := json.Unmarshal([]byte(out), &res); err != nil || len(res.Layers) != 2 || !res.KeyStored || res.KeyID != "kbs:///"+resource {
		t.Fatalf("result %v: %s", err, out)
	}

	// The broker: key stored, rule added, the earlier rule kept.
	priv, err := store.Get(resource)
	if err != nil || !bytes.Contains(priv, []byte("PRIVATE KEY")) {
		t.Fatalf("stored key: %v", err)
	}
	p := srv.Policy()
	if len(p.Rules) != 2 || p.Rules[0].Resources[0] != "default/workload/*" || p.Rules[1].Resources[0] != resource ||
		p.Rules[1].TEE[0] != tee.Sim || p.Rules[1].Measurements[0] != meas {
		t.Fatalf("policy %+v", p.Rules)
	}
	// Again: the rule for the same resource is replaced, not duplicated.
	if _, err := run(t, "", "image", "encrypt", "--resource", resource, "--tee", "sim", "--url", url, "--admin-key", adminKey, "--plain-http", src, dst); err != nil {
		t.Fatal(err)
	}
	if p := srv.Policy(); len(p.Rules) != 2 || len(p.Rules[1].Measurements) != 0 {
		t.Fatalf("policy after a second run %+v", p.Rules)
	}
	priv, _ = store.Get(resource)

	// The registry: only encrypted layers, no plaintext; the key decrypts them.
	ref, _ := name.ParseReference(dst, name.Insecure)
	got, err := remote.Image(ref)
	if err != nil {
		t.Fatal(err)
	}
	m, err := got.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	cc, err := encconfig.DecryptWithPrivKeys([][]byte{priv}, [][]byte{nil})
	if err != nil {
		t.Fatal(err)
	}
	layers, _ := got.Layers()
	for i, want := range []*imagetest.Layer{base, top} {
		d := m.Layers[i]
		if d.MediaType != imagetest.MediaTypeLayerGzipEnc || d.Annotations["org.opencontainers.image.enc.keys.jwe"] == "" {
			t.Fatalf("layer %d: %s %v", i, d.MediaType, d.Annotations)
		}
		rc, _ := layers[i].Compressed()
		blob, _ := io.ReadAll(rc)
		if bytes.Contains(blob, want.Blob) || bytes.Contains(blob, []byte(imageMarker)) {
			t.Fatalf("layer %d holds plaintext", i)
		}
		desc := ocispec.Descriptor{MediaType: string(d.MediaType), Digest: digest.Digest(d.Digest.String()), Size: d.Size, Annotations: d.Annotations}
		plain, _, err := ocicrypt.DecryptLayer(cc.DecryptConfig, bytes.NewReader(blob), desc, false)
		if err != nil {
			t.Fatalf("layer %d: %v", i, err)
		}
		pb, err := io.ReadAll(plain)
		if err != nil || !bytes.Equal(pb, want.Blob) {
			t.Fatalf("layer %d decrypts to other bytes: %v", i, err)
		}
	}
	cf, _ := got.ConfigFile()
	if len(cf.RootFS.DiffIDs) != 2 || cf.RootFS.DiffIDs[1].String() != top.DiffID.String() {
		t.Fatalf("diff IDs %v", cf.RootFS.DiffIDs)
	}

	// Text output names the result; nothing of the key is printed.
	keyOut := filepath.Join(dir, "layer.key")
	text, err := run(t, "", "image", "encrypt", "--resource", resource, "--key-out", keyOut, "--plain-http", src, host+"/enc/app:2")
	if err != nil || !strings.Contains(text, "pushed "+host+"/enc/app:2@sha256:") || strings.Contains(text, "PRIVATE") {
		t.Fatalf("text output %v: %s", err, text)
	}
	if st, err := os.Stat(keyOut); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key-out: %v", err)
	}

	// Bad input.
	for _, args := range [][]string{
		{"image", "encrypt", "--resource", resource, "--plain-http", src, dst},                                // neither broker nor key-out
		{"image", "encrypt", "--resource", "bad", "--key-out", keyOut, "--plain-http", src, dst},              // resource path
		{"image", "encrypt", "--resource", resource, "--key-out", keyOut, "--plain-http", dst, host + "/x:1"}, // already encrypted
		{"image", "encrypt", "--resource", resource, "--key-out", keyOut, src},                                // one argument
		{"image", "encrypt", "--resource", resource, "--key-out", keyOut, "--key", pol, "--plain-http", src, dst},
	} {
		if _, err := run(t, "", args...); err == nil {
			t.Errorf("%v succeeded", args)
		}
	}
}
