package nri

import (
	"context"
	"crypto"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/containerd/nri/pkg/api"

	"github.com/raksh-project/raksh/envelope"
	"github.com/raksh-project/raksh/policy/guard"
)

// open decrypts the envelope annotation of adj with the fixture's key for
// kid (test-only: the node never holds these keys).
func (f *fixture) open(t *testing.T, adj *api.ContainerAdjustment, b envelope.Binding) (*envelope.Envelope, *envelope.Spec) {
	t.Helper()
	data, ok := adj.GetAnnotations()[envelope.ContainerAnnotation]
	if !ok {
		t.Fatalf("adjustment carries no %s annotation", envelope.ContainerAnnotation)
	}
	env, err := envelope.Parse([]byte(data))
	if err != nil {
		t.Fatal(err)
	}
	priv := f.privs[0]
	if env.KeyID() == kid2 {
		priv = f.privs[1]
	}
	spec, err := env.Open(b, priv)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	return env, spec
}

var binding = envelope.Binding{Namespace: "shop", Pod: "web-0", Container: "app"}

func TestSealOnNode(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()

	for _, tc := range []struct {
		name       string
		extra      string
		podAnn     map[string]string
		wantArgs   bool
		wantEnv    []string // sealed and removed names, sorted
		wantFiles  []string // sealed file paths, sorted
		wantMounts []string // removed mount destinations, sorted
		wantImage  bool
		wantKid    string
	}{
		{
			name:       "defaults: args, all env, secret volumes",
			wantArgs:   true,
			wantEnv:    []string{"DB_PASSWORD", "LOG_LEVEL", "PATH", "SECRET"},
			wantFiles:  []string{"/etc/creds/nested/config", "/etc/creds/password"},
			wantMounts: []string{"/etc/creds"},
			wantKid:    kid1,
		},
		{
			name: "env by name and pattern, exclusions, projected volumes, image",
			extra: `seal:
  args: false
  env:
    names: [SECRET, LOG_LEVEL]
    patterns: ["*_PASSWORD"]
    exclude: [LOG_*]
  files:
    projected: true
  image: true
`,
			wantEnv:    []string{"DB_PASSWORD", "SECRET"},
			wantFiles:  []string{"/var/run/secrets/kubernetes.io/serviceaccount/token"},
			wantMounts: []string{"/var/run/secrets/kubernetes.io/serviceaccount"},
			wantImage:  true,
			wantKid:    kid1,
		},
		{
			name:     "pod selects the second recipient",
			extra:    "seal: {args: true}\n",
			podAnn:   map[string]string{RecipientAnnotation: kid2},
			wantArgs: true,
			wantKid:  kid2,
		},
		{
			name:    "nothing selected still attaches an (empty) envelope",
			extra:   "seal: {}\n",
			wantKid: kid1,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := f.state(t, tc.extra)
			pod, ctr := f.pod("raksh"), f.container()
			for k, v := range tc.podAnn {
				pod.Annotations[k] = v
			}
			adj, err := st.adjust(ctx, pod, ctr)
			if err != nil {
				t.Fatal(err)
			}

			// The adjustment, field by field.
			if tc.wantArgs {
				if !slices.Equal(adj.GetArgs(), []string{envelope.Placeholder}) {
					t.Errorf("args = %q, want the placeholder", adj.GetArgs())
				}
			} else if len(adj.GetArgs()) != 0 {
				t.Errorf("args adjusted to %q, want untouched", adj.GetArgs())
			}
			if got := removedEnv(adj); !slices.Equal(got, tc.wantEnv) {
				t.Errorf("removed env = %q, want %q", got, tc.wantEnv)
			}
			if got := placeholderEnv(adj); !slices.Equal(got, tc.wantEnv) {
				t.Errorf("env set to the placeholder = %q, want %q", got, tc.wantEnv)
			}
			if len(adj.GetEnv()) != 2*len(tc.wantEnv) {
				t.Errorf("env adjustments = %d, want a removal and a placeholder per sealed name", len(adj.GetEnv()))
			}
			if got := removedMounts(adj); !slices.Equal(got, tc.wantMounts) {
				t.Errorf("removed mounts = %q, want %q", got, tc.wantMounts)
			}
			for _, m := range adj.GetMounts() {
				if _, removal := m.IsMarkedForRemoval(); !removal {
					t.Errorf("adjustment adds mount %q", m.Destination)
				}
			}
			if len(adj.GetAnnotations()) != 1 {
				t.Errorf("annotations = %d, want only the envelope", len(adj.GetAnnotations()))
			}
			if adj.GetLinux() != nil || len(adj.GetHooks().GetPrestart()) != 0 || adj.GetRlimits() != nil {
				t.Errorf("adjustment touches more than args, env, mounts and annotations: %v", adj)
			}

			// The envelope: readable manifest, sealed values.
			env, spec := f.open(t, adj, binding)
			if env.KeyID() != tc.wantKid {
				t.Errorf("kid = %s, want %s", env.KeyID(), tc.wantKid)
			}
			if tc.wantArgs && !slices.Equal(spec.Args, ctr.Args) {
				t.Errorf("sealed args differ from the container's")
			}
			var names []string
			for _, e := range spec.Env {
				n, v, _ := strings.Cut(e, "=")
				names = append(names, n)
				if !slices.Contains(ctr.Env, n+"="+v) {
					t.Errorf("sealed env %q has another value than the container's", n)
				}
			}
			slices.Sort(names)
			if !slices.Equal(names, tc.wantEnv) {
				t.Errorf("sealed env = %q, want %q", names, tc.wantEnv)
			}
			var paths []string
			for _, fl := range spec.Files {
				paths = append(paths, fl.Path)
				if fl.Mode != 0o640 {
					t.Errorf("file %s mode %o, want 640", fl.Path, fl.Mode)
				}
			}
			slices.Sort(paths)
			if !slices.Equal(paths, tc.wantFiles) {
				t.Errorf("sealed files = %q, want %q", paths, tc.wantFiles)
			}
			for _, fl := range spec.Files {
				if fl.Path == "/etc/creds/password" && string(fl.Content) != fileSecret {
					t.Errorf("sealed file content differs from the volume's")
				}
			}
			if tc.wantImage != (spec.Image != nil) {
				t.Errorf("image sealed = %v, want %v", spec.Image != nil, tc.wantImage)
			} else if tc.wantImage && (spec.Image.Reference != ctr.Image.Name || spec.Image.Digest != ctr.Image.Digest) {
				t.Errorf("sealed image = %+v", spec.Image)
			}

			// The envelope annotation leaks nothing.
			data := adj.GetAnnotations()[envelope.ContainerAnnotation]
			for _, v := range []string{secretValue, argSecret, fileSecret} {
				if strings.Contains(data, v) {
					t.Errorf("envelope annotation contains a secret in clear")
				}
			}

			// Applied the way containerd applies it, the spec passes the
			// shim's guard...
			oci := ociSpec(pod, ctr)
			apply(oci, adj, false)
			if err := guard.Check(oci, guard.Options{RequireEnvelope: true}); err != nil {
				t.Errorf("guard refuses the adjusted spec: %v", err)
			}
			// ...and with containerd #13432 (env adjustments dropped) it does not.
			if len(tc.wantEnv) > 0 {
				oci := ociSpec(pod, ctr)
				apply(oci, adj, true)
				if err := guard.Check(oci, guard.Options{RequireEnvelope: true}); !errors.Is(err, guard.ErrCleartext) {
					t.Errorf("guard accepted a spec whose env removals were dropped: %v", err)
				}
			}
		})
	}
}

func TestUntouched(t *testing.T) {
	f := newFixture(t)
	for _, tc := range []struct {
		name    string
		extra   string
		handler string
		mutate  func(*api.PodSandbox)
	}{
		{name: "runc handler", handler: "runc"},
		{name: "default handler", handler: ""},
		{name: "mode off", handler: "raksh", extra: "mode: \"off\"\n"},
		{name: "namespace not selected", handler: "raksh", extra: "namespaces: [\"team-*\"]\n"},
		{name: "namespace excluded", handler: "raksh", extra: "excludeNamespaces: [kube-system, \"sh*\"]\n"},
		{name: "label missing", handler: "raksh", extra: "podSelector: {confidential: \"true\"}\n"},
		{name: "label value differs", handler: "raksh", extra: "podSelector: {app: db}\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := f.state(t, tc.extra)
			adj, err := st.adjust(context.Background(), f.pod(tc.handler), f.container())
			if err != nil || adj != nil {
				t.Fatalf("adjust = %v, %v; want untouched", adj, err)
			}
		})
	}
	// The positive counterparts of the selectors.
	st := f.state(t, "namespaces: [\"sh*\"]\npodSelector: {app: \"*\"}\nruntimeHandlers: [kata, raksh]\n")
	if adj, err := st.adjust(context.Background(), f.pod("raksh"), f.container()); err != nil || adj == nil {
		t.Fatalf("selected pod: adjust = %v, %v", adj, err)
	}
}

// ownerSeal seals spec for b the way rakshctl does.
func (f *fixture) ownerSeal(t *testing.T, spec *envelope.Spec, b envelope.Binding) string {
	t.Helper()
	pub := f.privs[0].(interface{ Public() crypto.PublicKey }).Public()
	data, err := envelope.Seal(spec, b, envelope.Recipient{KeyID: "kbs:///owner/workload/key", Key: pub})
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func TestAdoptOwnerEnvelope(t *testing.T) {
	f := newFixture(t)
	owner := &envelope.Spec{
		Args:  []string{"/bin/server", argSecret},
		Env:   []string{"SECRET=" + secretValue},
		Files: []envelope.File{{Path: "/etc/creds/password", Content: []byte(fileSecret)}},
	}
	for _, mode := range []string{"seal", "require-client-sealed"} {
		t.Run(mode, func(t *testing.T) {
			st := f.state(t, "mode: "+mode+"\n")
			data := f.ownerSeal(t, owner, binding)
			pod, ctr := f.pod("raksh"), f.container()
			pod.Annotations[envelope.PodAnnotationPrefix+"app"] = data
			// What rakshctl leaves visible: placeholders.
			ctr.Args = []string{envelope.Placeholder}
			ctr.Env = []string{"PATH=/bin", "SECRET=" + envelope.Placeholder, "OTHER=" + envelope.Placeholder}

			adj, err := st.adjust(context.Background(), pod, ctr)
			if err != nil {
				t.Fatal(err)
			}
			if len(adj.GetArgs()) != 0 {
				t.Errorf("args already the placeholder, adjusted to %q", adj.GetArgs())
			}
			// SECRET already carries the placeholder: nothing to override;
			// placeholders get a best-effort removal only.
			if got, want := removedEnv(adj), []string{"OTHER", "SECRET"}; !slices.Equal(got, want) {
				t.Errorf("removed env = %q, want %q", got, want)
			}
			if got := placeholderEnv(adj); len(got) != 0 {
				t.Errorf("env set to the placeholder = %q, want none", got)
			}
			if got, want := removedMounts(adj), []string{"/etc/creds"}; !slices.Equal(got, want) {
				t.Errorf("removed mounts = %q, want %q", got, want)
			}
			if got := adj.GetAnnotations()[envelope.ContainerAnnotation]; got != data {
				t.Errorf("container annotation is not the owner's envelope, unchanged")
			}
			oci := ociSpec(pod, ctr)
			apply(oci, adj, false)
			if err := guard.Check(oci, guard.Options{RequireEnvelope: true}); err != nil {
				t.Errorf("guard refuses the adjusted spec: %v", err)
			}
		})
	}

	t.Run("clear args and env left by the owner are stripped", func(t *testing.T) {
		st := f.state(t, "mode: require-client-sealed\n")
		pod, ctr := f.pod("raksh"), f.container()
		pod.Annotations[envelope.PodAnnotationPrefix+"app"] = f.ownerSeal(t, owner, binding)
		adj, err := st.adjust(context.Background(), pod, ctr)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(adj.GetArgs(), []string{envelope.Placeholder}) {
			t.Errorf("args = %q, want the placeholder", adj.GetArgs())
		}
		if got := placeholderEnv(adj); !slices.Equal(got, []string{"SECRET"}) {
			t.Errorf("env set to the placeholder = %q", got)
		}
		oci := ociSpec(pod, ctr)
		apply(oci, adj, false)
		if err := guard.Check(oci, guard.Options{RequireEnvelope: true}); err != nil {
			t.Errorf("guard refuses the adjusted spec: %v", err)
		}
	})

	t.Run("container annotation (ctr/nerdctl style) is adopted too", func(t *testing.T) {
		st := f.state(t, "mode: require-client-sealed\n")
		pod, ctr := f.pod("raksh"), f.container()
		data := f.ownerSeal(t, owner, binding)
		ctr.Annotations[envelope.ContainerAnnotation] = data
		adj, err := st.adjust(context.Background(), pod, ctr)
		if err != nil {
			t.Fatal(err)
		}
		if _, set := adj.GetAnnotations()[envelope.ContainerAnnotation]; set {
			t.Errorf("annotation re-added although already present")
		}
	})
}

func TestRefused(t *testing.T) {
	f := newFixture(t)
	small := &envelope.Spec{Env: []string{"SECRET=" + secretValue}}
	for _, tc := range []struct {
		name    string
		extra   string
		mutate  func(t *testing.T, pod *api.PodSandbox, ctr *api.Container)
		want    error
		mention string
	}{
		{
			name:    "require-client-sealed without envelope",
			extra:   "mode: require-client-sealed\n",
			want:    ErrNotSealed,
			mention: "shop/web-0/app",
		},
		{
			name: "envelope for another container",
			mutate: func(t *testing.T, pod *api.PodSandbox, _ *api.Container) {
				pod.Annotations[envelope.PodAnnotationPrefix+"app"] = f.ownerSeal(t, small, envelope.Binding{Namespace: "shop", Pod: "web-0", Container: "sidecar"})
			},
			want:    envelope.ErrWrongBinding,
			mention: "shop/web-0/sidecar",
		},
		{
			name: "envelope for another pod",
			mutate: func(t *testing.T, pod *api.PodSandbox, _ *api.Container) {
				pod.Annotations[envelope.PodAnnotationPrefix+"app"] = f.ownerSeal(t, small, envelope.Binding{Namespace: "shop", Pod: "web-1", Container: "app"})
			},
			want:    ErrOwnerEnvelope,
			mention: "web-1",
		},
		{
			name: "malformed envelope",
			mutate: func(_ *testing.T, pod *api.PodSandbox, _ *api.Container) {
				pod.Annotations[envelope.PodAnnotationPrefix+"app"] = "not-a-jwe"
			},
			want:    envelope.ErrMalformed,
			mention: "owner-sealed envelope",
		},
		{
			name:  "owner envelope over the limit",
			extra: "limits: {maxEnvelopeBytes: 1024}\n",
			mutate: func(t *testing.T, pod *api.PodSandbox, _ *api.Container) {
				big := &envelope.Spec{Env: []string{"BIG=" + strings.Repeat("x", 4096)}}
				pod.Annotations[envelope.PodAnnotationPrefix+"app"] = f.ownerSeal(t, big, binding)
			},
			want:    ErrTooLarge,
			mention: "limit 1024",
		},
		{
			name:  "oversized env",
			extra: "limits: {maxValueBytes: 64}\n",
			mutate: func(_ *testing.T, _ *api.PodSandbox, ctr *api.Container) {
				ctr.Env = append(ctr.Env, "HUGE="+strings.Repeat(secretValue, 10))
			},
			want:    ErrTooLarge,
			mention: `env "HUGE"`,
		},
		{
			name:    "oversized arg",
			extra:   "limits: {maxValueBytes: 16}\n",
			want:    ErrTooLarge,
			mention: "args[1]",
		},
		{
			name:    "oversized file",
			extra:   "limits: {maxFileBytes: 8}\n",
			want:    ErrTooLarge,
			mention: `file "/etc/creds/`,
		},
		{
			name:    "envelope over the limit",
			extra:   "limits: {maxEnvelopeBytes: 64}\n",
			want:    ErrTooLarge,
			mention: "envelope limit 64",
		},
		{
			name: "unknown recipient",
			mutate: func(_ *testing.T, pod *api.PodSandbox, _ *api.Container) {
				pod.Annotations[RecipientAnnotation] = "kbs:///nobody/workload/key"
			},
			want:    ErrUnknownRecipient,
			mention: "kbs:///nobody/workload/key",
		},
		{
			name: "secret volume outside the kubelet pods directory",
			mutate: func(t *testing.T, _ *api.PodSandbox, ctr *api.Container) {
				ctr.Mounts[1].Source = filepath.Join(f.dir, "elsewhere", "volumes", "kubernetes.io~secret", "x")
			},
			want:    ErrSecretVolume,
			mention: "kubelet pods directory",
		},
		{
			name: "secret volume entry linking out of the volume",
			mutate: func(t *testing.T, _ *api.PodSandbox, _ *api.Container) {
				target := filepath.Join(f.dir, "host-file")
				if err := os.WriteFile(target, []byte("host"), 0o600); err != nil {
					t.Fatal(err)
				}
				link := filepath.Join(f.secretSrc, "escape")
				os.Remove(link)
				if err := os.Symlink(target, link); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { os.Remove(link) })
			},
			want:    ErrSecretVolume,
			mention: `"/etc/creds/escape" links outside`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := f.state(t, tc.extra)
			pod, ctr := f.pod("raksh"), f.container()
			if tc.mutate != nil {
				tc.mutate(t, pod, ctr)
			}
			adj, err := st.adjust(context.Background(), pod, ctr)
			if !errors.Is(err, tc.want) {
				t.Fatalf("adjust = %v, %v; want %v", adj, err, tc.want)
			}
			if adj != nil {
				t.Errorf("adjustment returned with an error")
			}
			if !strings.Contains(err.Error(), tc.mention) {
				t.Errorf("error %q does not mention %q", err, tc.mention)
			}
			for _, v := range []string{secretValue, argSecret, fileSecret, "correct-horse"} {
				if strings.Contains(err.Error(), v) {
					t.Errorf("error leaks a secret: %q", err)
				}
			}
		})
	}
}

func TestConfig(t *testing.T) {
	f := newFixture(t)
	for _, tc := range []struct {
		name    string
		yaml    string
		want    error
		mention string
	}{
		{name: "valid", yaml: f.config("")},
		{name: "off needs no recipient", yaml: "mode: \"off\"\n"},
		{name: "client-sealed needs no recipient", yaml: "mode: require-client-sealed\n"},
		{name: "empty", yaml: "  \n", want: errdefs.ErrInvalidArgument, mention: "empty"},
		{name: "not YAML", yaml: "mode: [seal\n", want: errdefs.ErrInvalidArgument, mention: "malformed"},
		{name: "unknown field", yaml: f.config("sael: {}\n"), want: errdefs.ErrInvalidArgument, mention: "sael"},
		{name: "bad mode", yaml: "mode: encrypt\n", want: errdefs.ErrInvalidArgument, mention: `mode "encrypt"`},
		{name: "seal without recipient", yaml: "mode: seal\n", want: errdefs.ErrInvalidArgument, mention: "at least one recipient"},
		{name: "bad key id", yaml: "mode: seal\nrecipients: [{keyID: node-key, keyFile: /x}]\n", want: errdefs.ErrInvalidArgument, mention: "recipients[0]"},
		{name: "no key file", yaml: "mode: seal\nrecipients: [{keyID: \"" + kid1 + "\"}]\n", want: errdefs.ErrInvalidArgument, mention: "keyFile is empty"},
		{name: "bad pattern", yaml: f.config("seal: {env: {patterns: [\"[\"]}}\n"), want: errdefs.ErrInvalidArgument, mention: "bad pattern"},
		{name: "limit over format", yaml: f.config("limits: {maxEnvelopeBytes: 999999999}\n"), want: errdefs.ErrInvalidArgument, mention: "maxEnvelopeBytes"},
		{name: "relative pods dir", yaml: "mode: \"off\"\nkubeletPodsDir: pods\n", want: errdefs.ErrInvalidArgument, mention: "kubeletPodsDir"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(tc.yaml))
			if tc.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.mention) {
				t.Fatalf("ParseConfig = %v, want %v mentioning %q", err, tc.want, tc.mention)
			}
		})
	}

	t.Run("missing recipient key file", func(t *testing.T) {
		cfg, err := ParseConfig([]byte("mode: seal\nrecipients: [{keyID: \"" + kid1 + "\", keyFile: " + filepath.Join(f.dir, "missing.pem") + "}]\n"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := newState(cfg); !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), kid1) {
			t.Fatalf("newState = %v, want a not-exist error naming the recipient", err)
		}
	})
	t.Run("recipient key file is not a key", func(t *testing.T) {
		p := filepath.Join(f.dir, "garbage.pem")
		if err := os.WriteFile(p, []byte("garbage"), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := ParseConfig([]byte("mode: seal\nrecipients: [{keyID: \"" + kid1 + "\", keyFile: " + p + "}]\n"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := newState(cfg); !errdefs.IsInvalidArgument(err) {
			t.Fatalf("newState = %v, want invalid argument", err)
		}
	})
	t.Run("a seal section replaces the default selection", func(t *testing.T) {
		cfg, err := ParseConfig([]byte(f.config("seal: {env: {names: [X]}}\n")))
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Seal.Args || cfg.Seal.Env.All || cfg.Seal.Files.Secrets {
			t.Fatalf("seal = %+v, want only env X", cfg.Seal)
		}
		cfg, err = ParseConfig([]byte(f.config("")))
		if err != nil {
			t.Fatal(err)
		}
		if !cfg.Seal.Args || !cfg.Seal.Env.All || !cfg.Seal.Files.Secrets || cfg.Seal.Files.Projected {
			t.Fatalf("default seal = %+v", cfg.Seal)
		}
	})
}
