package unseal

import (
	"context"
	"crypto"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/raksh-project/raksh/envelope"
)

const kid = "kbs:///default/workload/key1"

var b = Binding{Namespace: "ns", Pod: "pod", Container: "app"}

type countingKeys struct {
	KeySource
	calls int
}

func (c *countingKeys) PrivateKey(ctx context.Context, k string) (crypto.PrivateKey, error) {
	c.calls++
	return c.KeySource.PrivateKey(ctx, k)
}

type fakeKBS struct {
	data  map[string][]byte
	calls int
}

func (f *fakeKBS) Resource(_ context.Context, p string) ([]byte, error) {
	f.calls++
	d, ok := f.data[p]
	if !ok {
		return nil, errdefs.ErrNotFound
	}
	return d, nil
}

func sealed(t *testing.T) ([]byte, crypto.Signer) {
	key, err := envelope.GenerateKey(envelope.KeyP256)
	if err != nil {
		t.Fatal(err)
	}
	data, err := envelope.Seal(&envelope.Spec{
		Args: []string{"/srv", "-v"}, Env: []string{"PASSWORD=x", "NEW=1"}, Cwd: "/work",
	}, b, envelope.Recipient{KeyID: kid, Key: key.Public()})
	if err != nil {
		t.Fatal(err)
	}
	return data, key
}

func TestOpen(t *testing.T) {
	ctx := context.Background()
	data, key := sealed(t)
	keys := &countingKeys{KeySource: StaticKeys{kid: key}}
	s, err := Open(ctx, data, b, keys)
	if err != nil {
		t.Fatal(err)
	}
	if s.Cwd != "/work" {
		t.Fatalf("spec %+v", s)
	}
	// Wrong binding: refused before any key is fetched.
	keys.calls = 0
	if _, err := Open(ctx, data, Binding{Namespace: "ns", Pod: "pod", Container: "other"}, keys); !errors.Is(err, envelope.ErrWrongBinding) || keys.calls != 0 {
		t.Fatalf("wrong binding: %v, %d key fetches", err, keys.calls)
	}
	if _, err := Open(ctx, data, b, StaticKeys{}); !errdefs.IsNotFound(err) {
		t.Fatalf("missing key: %v", err)
	}
	other, _ := envelope.GenerateKey(envelope.KeyP256)
	if _, err := Open(ctx, data, b, StaticKeys{kid: other}); !errors.Is(err, envelope.ErrDecrypt) {
		t.Fatalf("wrong key: %v", err)
	}
	if _, err := Open(ctx, []byte("{}"), b, keys); !errors.Is(err, envelope.ErrMalformed) {
		t.Fatalf("garbage: %v", err)
	}
}

func TestKBSKeys(t *testing.T) {
	ctx := context.Background()
	data, key := sealed(t)
	pemKey, _ := envelope.MarshalPrivateKey(key)
	kbs := &fakeKBS{data: map[string][]byte{"default/workload/key1": pemKey}}
	keys := NewKBSKeys(kbs)
	for range 3 {
		if _, err := Open(ctx, data, b, keys); err != nil {
			t.Fatal(err)
		}
	}
	if kbs.calls != 1 {
		t.Fatalf("%d KBS fetches, want 1 (cached)", kbs.calls)
	}
	if _, err := keys.PrivateKey(ctx, "kbs:///default/workload/missing"); !errdefs.IsNotFound(err) {
		t.Fatalf("missing: %v", err)
	}
	kbs.data["default/workload/junk"] = []byte("not a key")
	if _, err := keys.PrivateKey(ctx, "kbs:///default/workload/junk"); err == nil {
		t.Fatal("junk resource accepted as key")
	}
	if _, err := keys.PrivateKey(ctx, "https://evil/a/b/c"); err == nil {
		t.Fatal("non-kbs key id accepted")
	}
}

func TestMerge(t *testing.T) {
	spec := &specs.Spec{Process: &specs.Process{
		Args: []string{envelope.Placeholder},
		Env:  []string{"PATH=/bin", "PASSWORD=" + envelope.Placeholder, "PASSWORD=dup"},
		Cwd:  "/",
	}}
	sealedSpec := &envelope.Spec{Args: []string{"/srv", "-v"}, Env: []string{"PASSWORD=x", "NEW=1"}, Cwd: "/work"}
	if err := Merge(spec, sealedSpec); err != nil {
		t.Fatal(err)
	}
	want := &specs.Process{Args: []string{"/srv", "-v"}, Env: []string{"PATH=/bin", "PASSWORD=x", "NEW=1"}, Cwd: "/work"}
	if !reflect.DeepEqual(spec.Process, want) {
		t.Fatalf("merged %+v, want %+v", spec.Process, want)
	}
	// Nothing sealed: unchanged.
	before := *spec.Process
	if err := Merge(spec, &envelope.Spec{}); err != nil || !reflect.DeepEqual(*spec.Process, before) {
		t.Fatalf("empty merge changed the spec: %+v", spec.Process)
	}
	empty := &specs.Spec{}
	if err := Merge(empty, sealedSpec); err != nil || empty.Process == nil || empty.Process.Cwd != "/work" {
		t.Fatalf("nil process: %v %+v", err, empty.Process)
	}
	if err := Merge(nil, sealedSpec); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("nil spec: %v", err)
	}
}

func TestWriteFiles(t *testing.T) {
	root := t.TempDir()
	files := []envelope.File{
		{Path: "/etc/secret/token", Mode: 0o440, Content: []byte("abc")},
		{Path: "/run/key", Content: []byte("k")},
	}
	if err := WriteFiles(root, files); err != nil {
		t.Fatal(err)
	}
	for _, f := range []struct {
		path string
		mode os.FileMode
		data string
	}{{"etc/secret/token", 0o440, "abc"}, {"run/key", 0o400, "k"}} {
		st, err := os.Stat(filepath.Join(root, f.path))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != f.mode {
			t.Errorf("%s mode %o, want %o", f.path, st.Mode().Perm(), f.mode)
		}
		if d, _ := os.ReadFile(filepath.Join(root, f.path)); string(d) != f.data {
			t.Errorf("%s content differs", f.path)
		}
	}
	// A symlink in the rootfs pointing outside must not be followed.
	outside := t.TempDir()
	if err := os.Symlink(outside, filepath.Join(root, "escape")); err != nil {
		t.Fatal(err)
	}
	if err := WriteFiles(root, []envelope.File{{Path: "/escape/pwned", Content: []byte("x")}}); err == nil {
		t.Fatal("write through escaping symlink succeeded")
	}
	if _, err := os.Stat(filepath.Join(outside, "pwned")); err == nil {
		t.Fatal("file written outside the rootfs")
	}
}

func TestApply(t *testing.T) {
	ctx := context.Background()
	data, key := sealed(t)
	keys := StaticKeys{kid: key}
	mk := func(env ...string) *specs.Spec {
		return &specs.Spec{
			Process: &specs.Process{Args: []string{envelope.Placeholder}, Env: env},
			Annotations: map[string]string{
				envelope.ContainerAnnotation: string(data),
				SandboxNamespaceAnnotation:   "ns", SandboxNameAnnotation: "pod", ContainerNameAnnotation: "app",
			},
		}
	}
	spec := mk("PATH=/bin", "PASSWORD="+envelope.Placeholder)
	s, err := Apply(ctx, spec, keys)
	if err != nil || s == nil {
		t.Fatalf("Apply: %v", err)
	}
	if spec.Process.Args[0] != "/srv" || !slices.Contains(spec.Process.Env, "PASSWORD=x") {
		t.Fatalf("merged %+v", spec.Process)
	}
	// A placeholder the envelope does not fill.
	if _, err := Apply(ctx, mk("OTHER="+envelope.Placeholder), keys); !errors.Is(err, ErrPlaceholder) {
		t.Fatalf("stray placeholder: %v", err)
	}
	// Another pod's annotations.
	moved := mk()
	moved.Annotations[SandboxNameAnnotation] = "pod-2"
	if _, err := Apply(ctx, moved, keys); !errors.Is(err, envelope.ErrWrongBinding) {
		t.Fatalf("moved: %v", err)
	}
	noCRI := mk()
	delete(noCRI.Annotations, ContainerNameAnnotation)
	if _, err := Apply(ctx, noCRI, keys); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("no CRI annotations: %v", err)
	}
	if s, err := Apply(ctx, &specs.Spec{}, keys); s != nil || err != nil {
		t.Fatalf("no envelope: %v %v", s, err)
	}
}
