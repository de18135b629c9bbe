package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"

	"github.com/raksh-project/raksh/envelope"
	"github.com/raksh-project/raksh/envelope/kube"
	"github.com/raksh-project/raksh/kbs"
	"github.com/raksh-project/raksh/tee"
	"github.com/raksh-project/raksh/tee/sim"
)

func run(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	app := newApp()
	var out, errOut bytes.Buffer
	app.Writer, app.ErrWriter, app.Reader = &out, &errOut, strings.NewReader(stdin)
	app.ExitErrHandler = func(*cli.Context, error) {}
	err := app.RunContext(context.Background(), append([]string{"rakshctl"}, args...))
	return out.String(), err
}

const podYAML = `apiVersion: v1
kind: Pod
metadata:
  name: web
spec:
  containers:
  - name: app
    image: app:1
    command: ["/app", "--password=topsecret"]
    env:
    - {name: API_KEY, value: key-value-123}
`

func TestKeysSealInspectUnseal(t *testing.T) {
	dir := t.TempDir()
	priv, pub := filepath.Join(dir, "w.key"), filepath.Join(dir, "w.pub")
	out, err := run(t, "", "keys", "generate", "--alg", "ec-p256", "--private", priv, "--public", pub, "--kid", "kbs:///default/workload/web", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var res map[string]string
	if err := json.Unmarshal([]byte(out), &res); err != nil || res["kid"] != "kbs:///default/workload/web" {
		t.Fatalf("keys json %q %v", out, err)
	}
	if st, _ := os.Stat(priv); st.Mode().Perm() != 0o600 {
		t.Fatalf("private key mode %o", st.Mode().Perm())
	}
	if _, err := run(t, "", "keys", "generate", "--private", priv, "--public", pub); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Fatalf("overwrite: %v", err)
	}
	secretFile := filepath.Join(dir, "tls.key")
	os.WriteFile(secretFile, []byte("file-secret"), 0o600)

	sealed, err := run(t, podYAML, "seal", "-f", "-", "--recipient", pub, "--kid", "kbs:///default/workload/web", "--secret-file", "app:/etc/tls/key="+secretFile+":0440", "--allow-logs", "--mount-allow", "app:/data/*:shared:ro", "--mount-allow", "app:/etc/config")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"topsecret", "key-value-123", "file-secret"} {
		if strings.Contains(sealed, s) {
			t.Fatalf("sealed output contains %q", s)
		}
	}
	if !strings.Contains(sealed, "runtimeClassName: raksh") || !strings.Contains(sealed, envelope.PodAnnotationPrefix+"app") {
		t.Fatalf("sealed output:\n%s", sealed)
	}
	sealedPath := filepath.Join(dir, "sealed.yaml")
	os.WriteFile(sealedPath, []byte(sealed), 0o600)

	js, err := run(t, "", "inspect", "-f", sealedPath, "--key", priv, "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var views []kube.View
	if err := json.Unmarshal([]byte(js), &views); err != nil || len(views) != 1 {
		t.Fatalf("inspect json: %v\n%s", err, js)
	}
	v := views[0]
	if v.Sealed == nil || !*v.Sealed.Opened || len(v.Sealed.Manifest.Files) != 1 || !v.Sealed.Manifest.Exec || !v.Sealed.Manifest.Mounts {
		t.Fatalf("view %+v", v.Sealed)
	}
	text, err := run(t, "", "inspect", "-f", sealedPath)
	if err != nil || !strings.Contains(text, "NODE SEES") || !strings.Contains(text, "file /etc/tls/key") || strings.Contains(text, "key-value-123") {
		t.Fatalf("inspect text %v:\n%s", err, text)
	}

	filesDir := filepath.Join(dir, "files")
	plain, err := run(t, "", "unseal", "-f", sealedPath, "--key", priv, "--files-dir", filesDir)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(plain, "--password=topsecret") || !strings.Contains(plain, "key-value-123") {
		t.Fatalf("unsealed:\n%s", plain)
	}
	if got, _ := os.ReadFile(filepath.Join(filesDir, "Pod", "web", "app", "etc", "tls", "key")); string(got) != "file-secret" {
		t.Fatalf("extracted file %q", got)
	}
	// Wrong key.
	other, otherPub := filepath.Join(dir, "o.key"), filepath.Join(dir, "o.pub")
	run(t, "", "keys", "generate", "--private", other, "--public", otherPub)
	if _, err := run(t, "", "unseal", "-f", sealedPath, "--key", other); err == nil || !strings.Contains(err.Error(), "decryption failed") {
		t.Fatalf("wrong key: %v", err)
	}
	// JSON output of seal.
	js, err = run(t, podYAML, "seal", "-f", "-", "--recipient", pub, "--kid", "kbs:///default/workload/web", "-o", "json")
	var docs []map[string]any
	if err != nil || json.Unmarshal([]byte(js), &docs) != nil || len(docs) != 1 || docs[0]["kind"] != "Pod" {
		t.Fatalf("seal -o json: %v\n%s", err, js)
	}
	// Bad inputs.
	for _, args := range [][]string{
		{"seal", "-f", "-", "--recipient", pub, "--kid", "kbs://bad"},
		{"seal", "-f", "-", "--recipient", priv, "--kid", "kbs:///a/b/c"},
		{"seal", "-f", "-", "--recipient", pub, "--kid", "kbs:///a/b/c", "--secret-file", "nocolon"},
		{"seal", "-f", "-", "--recipient", pub, "--kid", "kbs:///a/b/c", "-o", "xml"},
		{"keys", "generate", "--alg", "dsa", "--private", filepath.Join(dir, "x"), "--public", filepath.Join(dir, "y")},
	} {
		if _, err := run(t, podYAML, args...); err == nil {
			t.Errorf("%v succeeded", args)
		}
	}
}

func TestKBSResourceSet(t *testing.T) {
	dir := t.TempDir()
	adminKey, adminPub := filepath.Join(dir, "admin.key"), filepath.Join(dir, "admin.pub")
	if _, err := run(t, "", "keys", "generate", "--alg", "ed25519", "--private", adminKey, "--public", adminPub); err != nil {
		t.Fatal(err)
	}
	cfg := kbs.Config{AdminPublicKeyFiles: []string{adminPub}}
	opts, err := cfg.Opts()
	if err != nil {
		t.Fatal(err)
	}
	storeDir := filepath.Join(dir, "store")
	store, _ := kbs.NewFileStore(storeDir)
	srv, err := kbs.New(store, tee.NewRegistry(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv)
	defer ts.Close()
	wkey := filepath.Join(dir, "w.key")
	run(t, "", "keys", "generate", "--private", wkey, "--public", filepath.Join(dir, "w.pub"))
	if _, err := run(t, "", "kbs", "resource", "set", "--file", wkey, "--url", ts.URL, "--admin-key", adminKey, "default/workload/web"); err != nil {
		t.Fatal(err)
	}
	got, err := store.Get("default/workload/web")
	want, _ := os.ReadFile(wkey)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("stored resource differs: %v", err)
	}
	pol := filepath.Join(dir, "policy.json")
	os.WriteFile(pol, []byte(`{"rules":[{"resources":["default/workload/*"],"tee":["snp"]}]}`), 0o600)
	if _, err := run(t, "", "kbs", "policy", "set", "--file", pol, "--url", ts.URL, "--admin-key", adminKey); err != nil {
		t.Fatal(err)
	}
	out, err := run(t, "", "kbs", "policy", "get", "--url", ts.URL, "--admin-key", adminKey)
	if err != nil || !strings.Contains(out, `"snp"`) {
		t.Fatalf("policy get %v %s", err, out)
	}
	// Another admin key is refused.
	otherKey := filepath.Join(dir, "other.key")
	run(t, "", "keys", "generate", "--alg", "ed25519", "--private", otherKey, "--public", filepath.Join(dir, "other.pub"))
	if _, err := run(t, "", "kbs", "resource", "set", "--file", wkey, "--url", ts.URL, "--admin-key", otherKey, "default/workload/web"); err == nil || !strings.Contains(err.Error(), "AdminAuthFailed") {
		t.Fatalf("other admin key: %v", err)
	}
}

// TestSimPlatformKey: keys generate --alg ec-p384 makes a sim platform key
// pair the guest attester and the broker accept.
func TestSimPlatformKey(t *testing.T) {
	dir := t.TempDir()
	priv, pub := filepath.Join(dir, "p.key"), filepath.Join(dir, "p.pub")
	if _, err := run(t, "", "keys", "generate", "--alg", "ec-p384", "--private", priv, "--public", pub); err != nil {
		t.Fatal(err)
	}
	a, err := sim.NewAttesterFromFiles(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(pub)
	keys, err := sim.ParsePlatformPublicKeys(data)
	if err != nil {
		t.Fatal(err)
	}
	v, _ := sim.NewVerifier(keys...)
	var rd [64]byte
	ev, _ := a.Evidence(context.Background(), rd)
	if _, err := v.Verify(context.Background(), ev, rd); err != nil {
		t.Fatal(err)
	}
}

func TestParseMountAllow(t *testing.T) {
	pols, err := parseMountAllow([]string{"app:/data/*:shared,empty-dir:ro", "app:/etc/config", "side:/cache:empty-dir"})
	if err != nil {
		t.Fatal(err)
	}
	app := pols["app"]
	if app == nil || len(app.Allow) != 2 || !app.Allow[0].ReadOnly || len(app.Allow[0].Kinds) != 2 || app.Allow[1].Destination != "/etc/config" {
		t.Fatalf("app policy %+v", app)
	}
	if !app.Allows("/data/x", envelope.MountShared, true) || app.Allows("/data/x", envelope.MountShared, false) || app.Allows("/other", envelope.MountCopy, true) {
		t.Errorf("app policy decisions %+v", app)
	}
	for _, bad := range []string{"app", ":/x", "app:x", "app:/x:hostpath", "app:/x:ro:ro:ro", "app:/../x"} {
		if _, err := parseMountAllow([]string{bad}); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
