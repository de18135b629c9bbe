package guard

import (
	"errors"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/raksh-project/raksh/envelope"
)

const (
	secretValue = "hunter2-do-not-print"
	argValue    = "--password=s3cr3t-arg"
	kid         = "kbs:///default/workload/key"
)

var binding = envelope.Binding{Namespace: "ns1", Pod: "pod1", Container: "app"}

func seal(t testing.TB, b envelope.Binding) string {
	t.Helper()
	key, err := envelope.GenerateKey(envelope.KeyP256)
	if err != nil {
		t.Fatal(err)
	}
	spec := &envelope.Spec{
		Args: []string{"/bin/app", argValue},
		Env:  []string{"SECRET=" + secretValue, "TOKEN=" + secretValue},
		Files: []envelope.File{
			{Path: "/etc/secret/password", Mode: 0o400, Content: []byte(secretValue)},
		},
	}
	data, err := envelope.Seal(spec, b, envelope.Recipient{KeyID: kid, Key: key.Public()})
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// sealedSpec is the spec containerd hands the shim when every NRI adjustment
// was applied.
func sealedSpec(env string) *specs.Spec {
	return &specs.Spec{
		Process: &specs.Process{
			Args: []string{envelope.Placeholder},
			Env:  []string{"PATH=/usr/bin:/bin", "PLAIN=visible"},
			Cwd:  "/",
		},
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm"},
			{Destination: "/etc/hosts", Type: "bind", Source: "/var/lib/containerd/sandbox/hosts", Options: []string{"rbind", "ro"}},
		},
		Annotations: map[string]string{
			ContainerTypeAnnotation:      "container",
			SandboxNamespaceAnnotation:   binding.Namespace,
			SandboxNameAnnotation:        binding.Pod,
			ContainerNameAnnotation:      binding.Container,
			envelope.ContainerAnnotation: env,
		},
	}
}

func TestCheck(t *testing.T) {
	env := seal(t, binding)
	other := seal(t, envelope.Binding{Namespace: "ns1", Pod: "pod1", Container: "sidecar"})
	secretMount := specs.Mount{
		Destination: "/etc/secret",
		Type:        "bind",
		Source:      "/var/lib/kubelet/pods/uid/volumes/kubernetes.io~secret/creds",
		Options:     []string{"rbind", "ro"},
	}

	for _, tc := range []struct {
		name    string
		mutate  func(*specs.Spec)
		opts    Options
		want    error  // nil: accepted
		mention string // the error names this item
	}{
		{name: "fully sealed", mutate: func(*specs.Spec) {}},
		{name: "fully sealed, envelope required", opts: Options{RequireEnvelope: true}, mutate: func(*specs.Spec) {}},
		{
			name: "sandbox exempt without envelope",
			opts: Options{RequireEnvelope: true},
			mutate: func(s *specs.Spec) {
				s.Annotations[ContainerTypeAnnotation] = ContainerTypeSandbox
				delete(s.Annotations, envelope.ContainerAnnotation)
			},
		},
		{
			name:   "no envelope, not required",
			mutate: func(s *specs.Spec) { delete(s.Annotations, envelope.ContainerAnnotation) },
		},
		{
			name:    "no envelope, required",
			opts:    Options{RequireEnvelope: true},
			mutate:  func(s *specs.Spec) { delete(s.Annotations, envelope.ContainerAnnotation) },
			want:    ErrMissingEnvelope,
			mention: "ns1/pod1/app",
		},
		{
			name:    "containerd #13432: RemoveEnv dropped, env still present",
			mutate:  func(s *specs.Spec) { s.Process.Env = append(s.Process.Env, "SECRET="+secretValue) },
			want:    ErrCleartext,
			mention: `env "SECRET"`,
		},
		{
			name: "override appended as duplicate: placeholder and clear value",
			mutate: func(s *specs.Spec) {
				s.Process.Env = append(s.Process.Env, "TOKEN="+envelope.Placeholder, "TOKEN="+secretValue)
			},
			want:    ErrCleartext,
			mention: `env "TOKEN"`,
		},
		{
			name:   "sealed env name left with the placeholder value",
			mutate: func(s *specs.Spec) { s.Process.Env = append(s.Process.Env, "SECRET="+envelope.Placeholder) },
		},
		{
			name:   "unsealed env is fine",
			mutate: func(s *specs.Spec) { s.Process.Env = append(s.Process.Env, "SECRETARY=visible") },
		},
		{
			name:    "SetArgs dropped: args in clear",
			mutate:  func(s *specs.Spec) { s.Process.Args = []string{"/bin/app", argValue} },
			want:    ErrCleartext,
			mention: "args",
		},
		{
			name:    "placeholder followed by more args",
			mutate:  func(s *specs.Spec) { s.Process.Args = []string{envelope.Placeholder, argValue} },
			want:    ErrCleartext,
			mention: "args",
		},
		{
			name:    "RemoveMount dropped: secret volume still mounted",
			mutate:  func(s *specs.Spec) { s.Mounts = append(s.Mounts, secretMount) },
			want:    ErrCleartext,
			mention: `mount "/etc/secret" (sealed file "/etc/secret/password")`,
		},
		{
			name: "secret file mounted alone (subPath)",
			mutate: func(s *specs.Spec) {
				m := secretMount
				m.Destination = "/etc/secret/password"
				s.Mounts = append(s.Mounts, m)
			},
			want:    ErrCleartext,
			mention: `mount "/etc/secret/password"`,
		},
		{
			name: "host mount of a parent directory",
			mutate: func(s *specs.Spec) {
				s.Mounts = append(s.Mounts, specs.Mount{Destination: "/etc/", Source: "/srv/etc", Options: []string{"bind"}})
			},
			want:    ErrCleartext,
			mention: `mount "/etc"`,
		},
		{
			name: "tmpfs over the sealed file's directory is fine",
			mutate: func(s *specs.Spec) {
				s.Mounts = append(s.Mounts, specs.Mount{Destination: "/etc/secret", Type: "tmpfs", Source: "tmpfs"})
			},
		},
		{
			name: "sibling path with a common prefix is fine",
			mutate: func(s *specs.Spec) {
				m := secretMount
				m.Destination = "/etc/secretive"
				s.Mounts = append(s.Mounts, m)
			},
		},
		{
			name: "everything dropped: all items named",
			mutate: func(s *specs.Spec) {
				s.Process.Args = []string{"/bin/app", argValue}
				s.Process.Env = append(s.Process.Env, "SECRET="+secretValue, "TOKEN="+secretValue)
				s.Mounts = append(s.Mounts, secretMount)
			},
			want:    ErrCleartext,
			mention: `args, env "SECRET", env "TOKEN", mount "/etc/secret"`,
		},
		{
			name:    "malformed envelope",
			mutate:  func(s *specs.Spec) { s.Annotations[envelope.ContainerAnnotation] = `{"protected":"x"}` },
			want:    ErrBadEnvelope,
			mention: "malformed",
		},
		{
			name:    "envelope for another container",
			mutate:  func(s *specs.Spec) { s.Annotations[envelope.ContainerAnnotation] = other },
			want:    envelope.ErrWrongBinding,
			mention: "ns1/pod1/sidecar",
		},
		{
			name: "no CRI names (ctr run): binding left to the agent",
			mutate: func(s *specs.Spec) {
				delete(s.Annotations, SandboxNamespaceAnnotation)
				delete(s.Annotations, SandboxNameAnnotation)
				delete(s.Annotations, ContainerNameAnnotation)
				s.Annotations[envelope.ContainerAnnotation] = other
			},
		},
		{
			name: "no CRI names (ctr run): clear env still refused",
			mutate: func(s *specs.Spec) {
				delete(s.Annotations, ContainerNameAnnotation)
				s.Process.Env = append(s.Process.Env, "SECRET="+secretValue)
			},
			want:    ErrCleartext,
			mention: `env "SECRET"`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := sealedSpec(env)
			tc.mutate(spec)
			err := Check(spec, tc.opts)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("Check refused a clean spec: %v", err)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("Check = %v, want %v", err, tc.want)
			}
			if !IsRefused(err) {
				t.Errorf("IsRefused(%v) = false", err)
			}
			if !strings.Contains(err.Error(), tc.mention) {
				t.Errorf("error %q does not name %q", err, tc.mention)
			}
			for _, v := range []string{secretValue, argValue} {
				if strings.Contains(err.Error(), v) {
					t.Errorf("error leaks a sealed value: %q", err)
				}
			}
		})
	}
}

func TestCheckNilSpec(t *testing.T) {
	if err := Check(nil, Options{}); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("Check(nil) = %v, want invalid argument", err)
	}
}

func TestErrorsAreFailedPrecondition(t *testing.T) {
	for _, err := range []error{ErrMissingEnvelope, ErrCleartext} {
		if !errdefs.IsFailedPrecondition(err) {
			t.Errorf("%v is not a failed precondition", err)
		}
	}
}

func BenchmarkCheck(b *testing.B) {
	spec := sealedSpec(seal(b, binding))
	for b.Loop() {
		if err := Check(spec, Options{RequireEnvelope: true}); err != nil {
			b.Fatal(err)
		}
	}
}
