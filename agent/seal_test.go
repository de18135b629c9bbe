package agent

import (
	"context"
	"crypto"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	runcproc "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2/process"
	"github.com/containerd/containerd/v2/pkg/stdio"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/raksh-project/raksh/agent/unseal"
	agentapi "github.com/raksh-project/raksh/api/agent/v1"
	"github.com/raksh-project/raksh/envelope"
)

const (
	testKID    = "kbs:///default/workload/demo"
	testSecret = "s3cr3t-value-7f1c"
)

type countingKeys struct {
	keys  unseal.KeySource
	calls int
}

func (c *countingKeys) PrivateKey(ctx context.Context, kid string) (crypto.PrivateKey, error) {
	c.calls++
	return c.keys.PrivateKey(ctx, kid)
}

func sealFor(t *testing.T, b envelope.Binding) ([]byte, crypto.Signer) {
	t.Helper()
	key, err := envelope.GenerateKey(envelope.KeyP256)
	if err != nil {
		t.Fatal(err)
	}
	data, err := envelope.Seal(&envelope.Spec{
		Args:  []string{"/bin/sh", "-c", "echo $SECRET"},
		Env:   []string{"SECRET=" + testSecret},
		Cwd:   "/srv",
		Files: []envelope.File{{Path: "/run/secrets/token", Mode: 0o400, Content: []byte(testSecret)}},
	}, b, envelope.Recipient{KeyID: testKID, Key: key.Public()})
	if err != nil {
		t.Fatal(err)
	}
	return data, key
}

func sealedContainer(id string, data []byte, annotations map[string]string, env ...string) *container {
	a := map[string]string{envelope.ContainerAnnotation: string(data)}
	for k, v := range annotations {
		a[k] = v
	}
	return &container{id: id, spec: &specs.Spec{
		Process:     &specs.Process{Args: []string{envelope.Placeholder}, Env: append([]string{"PATH=/bin"}, env...), Cwd: "/"},
		Annotations: a,
	}}
}

func withKeys(k unseal.KeySource) *Service {
	return &Service{keys: func(context.Context) (unseal.KeySource, error) { return k, nil }}
}

func TestBindingFor(t *testing.T) {
	cri := map[string]string{
		unseal.SandboxNamespaceAnnotation: "prod", unseal.SandboxNameAnnotation: "web-0", unseal.ContainerNameAnnotation: "app",
	}
	for _, tc := range []struct {
		name        string
		annotations map[string]string
		ns, id      string
		want        envelope.Binding
		wantErr     bool
	}{
		{name: "cri", annotations: cri, ns: "k8s.io", id: "abc123", want: envelope.Binding{Namespace: "prod", Pod: "web-0", Container: "app"}},
		{name: "ctr run", ns: "default", id: "sealed", want: envelope.Binding{Namespace: "default", Pod: "sealed", Container: "sealed"}},
		{name: "partial cri", annotations: map[string]string{unseal.ContainerNameAnnotation: "app"}, ns: "default", id: "x", wantErr: true},
		{name: "no namespace", id: "sealed", wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := BindingFor(&specs.Spec{Annotations: tc.annotations}, tc.ns, tc.id)
			if tc.wantErr {
				if !errdefs.IsInvalidArgument(err) {
					t.Fatalf("got %v, %v; want an invalid-argument error", b, err)
				}
				return
			}
			if err != nil || b != tc.want {
				t.Fatalf("got %v, %v; want %v", b, err, tc.want)
			}
		})
	}
}

func TestUnsealCtrContainer(t *testing.T) {
	ctx := namespaces.WithNamespace(context.Background(), "default")
	data, key := sealFor(t, envelope.Binding{Namespace: "default", Pod: "sealed", Container: "sealed"})
	rootfs := t.TempDir()
	c := sealedContainer("sealed", data, nil, "SECRET="+envelope.Placeholder)
	c.bundle = t.TempDir()
	if err := withKeys(unseal.StaticKeys{testKID: key}).unseal(ctx, c, rootfs); err != nil {
		t.Fatal(err)
	}
	p := c.spec.Process
	if !slices.Equal(p.Args, []string{"/bin/sh", "-c", "echo $SECRET"}) || p.Cwd != "/srv" {
		t.Errorf("process not merged: args %q cwd %q", p.Args, p.Cwd)
	}
	if !slices.Equal(p.Env, []string{"PATH=/bin", "SECRET=" + testSecret}) {
		t.Errorf("env not merged: %d entries", len(p.Env))
	}
	// The file is written in the guest, next to the bundle, and bind
	// mounted read-only: the rootfs is not touched.
	src := filepath.Join(c.bundle, sealedFilesDir, "run/secrets/token")
	st, err := os.Stat(src)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o400 {
		t.Errorf("secret file mode %o", st.Mode().Perm())
	}
	if b, _ := os.ReadFile(src); string(b) != testSecret {
		t.Error("secret file content differs")
	}
	if ents, _ := os.ReadDir(rootfs); len(ents) != 0 {
		t.Errorf("rootfs written: %v", ents)
	}
	want := specs.Mount{Destination: "/run/secrets/token", Type: "bind", Source: src, Options: []string{"rbind", "ro", "nosuid", "nodev", "noexec"}}
	if n := len(c.sealedMounts); n != 1 || !reflect.DeepEqual(c.sealedMounts[0], want) {
		t.Errorf("mounts %+v, want %+v", c.sealedMounts, want)
	}
	// The guest's binds of sealed files survive the rewrite that refuses
	// node bind mounts (their sources are guest paths).
	got, err := withKeys(unseal.StaticKeys{testKID: key}).guestMounts(c)
	if err != nil || len(got) == 0 || !reflect.DeepEqual(got[len(got)-1], want) {
		t.Errorf("guestMounts %+v (%v), want the sealed file's bind last", got, err)
	}
}

func TestUnsealCRIContainer(t *testing.T) {
	ctx := namespaces.WithNamespace(context.Background(), "k8s.io")
	data, key := sealFor(t, envelope.Binding{Namespace: "prod", Pod: "web-*", Container: "app"})
	c := sealedContainer("0123abcd", data, map[string]string{
		unseal.SandboxNamespaceAnnotation: "prod", unseal.SandboxNameAnnotation: "web-0", unseal.ContainerNameAnnotation: "app",
	})
	c.bundle = t.TempDir()
	if err := withKeys(unseal.StaticKeys{testKID: key}).unseal(ctx, c, t.TempDir()); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(c.spec.Process.Env, "SECRET="+testSecret) {
		t.Error("env not merged")
	}
}

func TestUnsealNoEnvelope(t *testing.T) {
	spec := &specs.Spec{Process: &specs.Process{Args: []string{"sh"}}}
	c := &container{id: "plain", spec: spec}
	// No key source is needed, nothing is touched.
	if err := (&Service{}).unseal(context.Background(), c, t.TempDir()); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(spec.Process.Args, []string{"sh"}) {
		t.Fatal("spec changed")
	}
}

func TestUnsealRefused(t *testing.T) {
	ctx := namespaces.WithNamespace(context.Background(), "default")
	data, key := sealFor(t, envelope.Binding{Namespace: "default", Pod: "sealed", Container: "sealed"})
	other, _ := envelope.GenerateKey(envelope.KeyP256)
	brokerDown := errors.New("kbs: 403 PolicyDeny: TEE type")
	for _, tc := range []struct {
		name      string
		svc       *Service
		c         *container
		ctx       context.Context
		is        error
		noKeyCall bool
	}{
		{name: "other container", c: sealedContainer("other", data, nil), is: envelope.ErrWrongBinding, noKeyCall: true},
		{name: "other namespace", ctx: namespaces.WithNamespace(context.Background(), "team-b"), c: sealedContainer("sealed", data, nil), is: envelope.ErrWrongBinding, noKeyCall: true},
		{name: "wrong key", svc: withKeys(unseal.StaticKeys{testKID: other}), c: sealedContainer("sealed", data, nil), is: envelope.ErrDecrypt},
		{name: "unknown key", svc: withKeys(unseal.StaticKeys{}), c: sealedContainer("sealed", data, nil), is: errdefs.ErrNotFound},
		{name: "stray placeholder", c: sealedContainer("sealed", data, nil, "TOKEN="+envelope.Placeholder), is: unseal.ErrPlaceholder},
		{name: "no key source", svc: &Service{}, c: sealedContainer("sealed", data, nil), is: ErrNoKeySource},
		{name: "broker refuses", svc: &Service{keys: func(context.Context) (unseal.KeySource, error) { return nil, brokerDown }}, c: sealedContainer("sealed", data, nil), is: brokerDown},
		{name: "garbage", c: sealedContainer("sealed", []byte(`{"protected":"x"}`), nil), is: envelope.ErrMalformed, noKeyCall: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			keys := &countingKeys{keys: unseal.StaticKeys{testKID: key}}
			svc := tc.svc
			if svc == nil {
				svc = withKeys(keys)
			}
			cctx := tc.ctx
			if cctx == nil {
				cctx = ctx
			}
			tc.c.bundle = t.TempDir()
			err := svc.unseal(cctx, tc.c, t.TempDir())
			if !errors.Is(err, tc.is) {
				t.Fatalf("got %v, want %v", err, tc.is)
			}
			if strings.Contains(err.Error(), testSecret) {
				t.Fatal("error carries the secret")
			}
			if tc.noKeyCall && keys.calls != 0 {
				t.Errorf("%d key fetches before the binding was checked", keys.calls)
			}
			if _, err := os.Stat(filepath.Join(tc.c.bundle, sealedFilesDir)); err == nil || len(tc.c.sealedMounts) != 0 {
				t.Error("secret files written or mounted for a refused container")
			}
		})
	}
}

func TestSealedExecPolicy(t *testing.T) {
	ctx := namespaces.WithNamespace(context.Background(), "default")
	b := envelope.Binding{Namespace: "default", Pod: "sealed", Container: "sealed"}
	key, _ := envelope.GenerateKey(envelope.KeyP256)
	for _, tc := range []struct {
		name   string
		policy *envelope.ExecPolicy
		allow  bool
	}{
		{name: "no policy", allow: false},
		{name: "exec not allowed", policy: &envelope.ExecPolicy{AllowLogs: true}, allow: false},
		{name: "exec allowed", policy: &envelope.ExecPolicy{AllowExec: true}, allow: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data, err := envelope.Seal(&envelope.Spec{Args: []string{"sleep", "1"}, Exec: tc.policy}, b, envelope.Recipient{KeyID: testKID, Key: key.Public()})
			if err != nil {
				t.Fatal(err)
			}
			c := sealedContainer("sealed", data, nil)
			c.bundle = t.TempDir()
			c.execs = map[string]*process{}
			c.init = createdInit(c.id)
			s := withKeys(unseal.StaticKeys{testKID: key})
			s.containers = map[string]*container{c.id: c}
			if err := s.unseal(ctx, c, t.TempDir()); err != nil {
				t.Fatal(err)
			}
			_, err = s.Exec(ctx, &taskAPI.ExecProcessRequest{ID: c.id, ExecID: "e1", Spec: packed(t, &agentapi.ExecProcessOptions{Process: []byte(`{"args":["env"]}`)})})
			if tc.allow {
				if err != nil || c.execs["e1"] == nil {
					t.Fatalf("exec refused: %v", err)
				}
				return
			}
			if !errdefs.IsPermissionDenied(errgrpc.ToNative(err)) || !strings.Contains(err.Error(), "does not allow exec") || c.execs["e1"] != nil {
				t.Fatalf("exec into a sealed container: %v", err)
			}
		})
	}
	// A container without an envelope allows exec.
	plain := &container{id: "plain", spec: &specs.Spec{Process: &specs.Process{Args: []string{"sh"}}}, execs: map[string]*process{}, init: createdInit("plain")}
	s := &Service{containers: map[string]*container{"plain": plain}}
	if _, err := s.Exec(ctx, &taskAPI.ExecProcessRequest{ID: "plain", ExecID: "e1", Spec: packed(t, &agentapi.ExecProcessOptions{Process: []byte(`{}`)})}); err != nil {
		t.Fatal(err)
	}
}

func TestSealedLogPolicy(t *testing.T) {
	ctx := namespaces.WithNamespace(context.Background(), "default")
	b := envelope.Binding{Namespace: "default", Pod: "sealed", Container: "sealed"}
	key, _ := envelope.GenerateKey(envelope.KeyP256)
	for _, tc := range []struct {
		name    string
		policy  *envelope.ExecPolicy
		discard bool
	}{
		{name: "no policy", discard: false},
		{name: "logs allowed", policy: &envelope.ExecPolicy{AllowLogs: true}, discard: false},
		{name: "exec only", policy: &envelope.ExecPolicy{AllowExec: true}, discard: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data, err := envelope.Seal(&envelope.Spec{Args: []string{"sleep", "1"}, Exec: tc.policy}, b, envelope.Recipient{KeyID: testKID, Key: key.Public()})
			if err != nil {
				t.Fatal(err)
			}
			c := sealedContainer("sealed", data, nil)
			c.bundle = t.TempDir()
			s := withKeys(unseal.StaticKeys{testKID: key})
			s.streams = newStreams()
			if err := s.unseal(ctx, c, t.TempDir()); err != nil {
				t.Fatal(err)
			}
			// The shim's ends of stdout and stderr.
			var host []net.Conn
			for _, n := range []string{"out", "err"} {
				guest, h := net.Pipe()
				s.streams.add(n, guest)
				host = append(host, h)
			}
			stdout, stderr, err := s.outputStreams(ctx, c, false, "out", "err")
			if err != nil {
				t.Fatal(err)
			}
			if !tc.discard {
				if stdout != "out" || stderr != "err" {
					t.Fatalf("streams %q %q, want out err", stdout, stderr)
				}
				return
			}
			if stdout != "" || stderr != "" {
				t.Fatalf("streams %q %q, want none", stdout, stderr)
			}
			for _, h := range host {
				if n, err := h.Read(make([]byte, 1)); n != 0 || err != io.EOF {
					t.Fatalf("the node's stream is open: %d, %v", n, err)
				}
			}
			if _, _, err := s.outputStreams(ctx, c, true, "", ""); !errors.Is(err, ErrLogsDenied) {
				t.Fatalf("terminal: %v", err)
			}
		})
	}
}

// TestRuntimeErrorsOfSealedContainersWithheld: runc quotes the process in
// its errors (e.g. a missing executable); for a sealed container that text
// must not travel to the node.
func TestRuntimeErrorsOfSealedContainersWithheld(t *testing.T) {
	runcErr := errors.New(`exec: "/opt/` + testSecret + `/bin/app": executable file not found in $PATH`)
	plain := &container{id: "plain"}
	if err := runtimeErr(plain, "create", runcErr); !strings.Contains(err.Error(), "executable file not found") {
		t.Errorf("plain container lost runc's reason: %v", err)
	}
	sealed := &container{id: "sealed", sealed: true}
	err := runtimeErr(sealed, "create", runcErr)
	if strings.Contains(err.Error(), testSecret) || errors.Is(err, runcErr) {
		t.Fatalf("sealed container's runtime error leaks: %v", err)
	}
	if !strings.Contains(err.Error(), `"sealed"`) || !errdefs.IsUnknown(err) {
		t.Errorf("withheld error should still name the container and carry a class: %v", err)
	}
}

// createdInit is the init of a created container (as far as the process
// package's state machine goes: no runc behind it).
func createdInit(id string) *process {
	init := runcproc.New(id, nil, stdio.Stdio{})
	return &process{id: id, proc: init, init: init}
}
