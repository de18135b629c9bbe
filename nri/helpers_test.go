package nri

import (
	"crypto"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/nri/pkg/api"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/raksh-project/raksh/envelope"
)

const (
	kid1        = "kbs:///default/workload/node-key"
	kid2        = "kbs:///tenant-b/workload/node-key"
	secretValue = "hunter2-not-for-logs"
	argSecret   = "--db-password=correct-horse"
	fileSecret  = "file-secret-contents"
)

// fixture is a node: recipient keys on disk, a kubelet pods directory with a
// secret and a projected volume in the kubelet's atomic-writer layout.
type fixture struct {
	dir       string
	podsDir   string
	keyFiles  []string
	privs     []crypto.PrivateKey
	secretSrc string
	projSrc   string
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	dir := t.TempDir()
	f := &fixture{dir: dir, podsDir: filepath.Join(dir, "kubelet", "pods")}
	for i, alg := range []string{envelope.KeyP256, envelope.KeyP384} {
		key, err := envelope.GenerateKey(alg)
		if err != nil {
			t.Fatal(err)
		}
		pem, err := envelope.MarshalPublicKey(key.Public())
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, fmt.Sprintf("recipient%d.pem", i))
		if err := os.WriteFile(p, pem, 0o644); err != nil {
			t.Fatal(err)
		}
		f.keyFiles = append(f.keyFiles, p)
		f.privs = append(f.privs, key)
	}
	f.secretSrc = f.volume(t, "kubernetes.io~secret", "creds", map[string]string{
		"password":      fileSecret,
		"nested/config": "nested-" + fileSecret,
	})
	f.projSrc = f.volume(t, "kubernetes.io~projected", "kube-api-access-abcde", map[string]string{
		"token": "sa-token",
	})
	return f
}

// volume lays out a volume like the kubelet's atomic writer: the data in a
// timestamped directory, ..data linking to it, and each top-level name a
// link through ..data.
func (f *fixture) volume(t testing.TB, plugin, name string, files map[string]string) string {
	t.Helper()
	root := filepath.Join(f.podsDir, "0f1e2d3c", "volumes", plugin, name)
	ts := filepath.Join(root, "..2026_11_25_21_00_00.123")
	top := map[string]bool{}
	for p, content := range files {
		full := filepath.Join(ts, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(content), 0o640); err != nil {
			t.Fatal(err)
		}
		top[strings.Split(p, "/")[0]] = true
	}
	if err := os.Symlink(filepath.Base(ts), filepath.Join(root, "..data")); err != nil {
		t.Fatal(err)
	}
	for n := range top {
		if err := os.Symlink(filepath.Join("..data", n), filepath.Join(root, n)); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// config returns a seal-mode configuration for this node as YAML.
func (f *fixture) config(extra string) string {
	head := ""
	if !strings.Contains(extra, "mode:") {
		head += "mode: seal\n"
	}
	if !strings.Contains(extra, "runtimeHandlers:") {
		head += "runtimeHandlers: [raksh]\n"
	}
	return head + fmt.Sprintf(`recipients:
- keyID: %s
  keyFile: %s
- keyID: %s
  keyFile: %s
kubeletPodsDir: %s
%s`, kid1, f.keyFiles[0], kid2, f.keyFiles[1], f.podsDir, extra)
}

func (f *fixture) state(t testing.TB, extra string) *state {
	t.Helper()
	cfg, err := ParseConfig([]byte(f.config(extra)))
	if err != nil {
		t.Fatal(err)
	}
	st, err := newState(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func (f *fixture) pod(handler string) *api.PodSandbox {
	return &api.PodSandbox{
		Id:             "sandbox-id-1",
		Name:           "web-0",
		Uid:            "0f1e2d3c",
		Namespace:      "shop",
		Labels:         map[string]string{"app": "web"},
		Annotations:    map[string]string{},
		RuntimeHandler: handler,
	}
}

func (f *fixture) container() *api.Container {
	return &api.Container{
		Id:           "ctr-id-1",
		PodSandboxId: "sandbox-id-1",
		Name:         "app",
		Args:         []string{"/bin/server", argSecret},
		Env:          []string{"PATH=/usr/bin:/bin", "SECRET=" + secretValue, "DB_PASSWORD=" + secretValue, "LOG_LEVEL=info"},
		Mounts: []*api.Mount{
			{Destination: "/etc/hosts", Type: "bind", Source: filepath.Join(f.dir, "hosts"), Options: []string{"rbind", "rw"}},
			{Destination: "/etc/creds", Type: "bind", Source: f.secretSrc, Options: []string{"rbind", "ro"}},
			{Destination: "/var/run/secrets/kubernetes.io/serviceaccount", Type: "bind", Source: f.projSrc, Options: []string{"rbind", "ro"}},
		},
		Annotations: map[string]string{"io.kubernetes.cri.image-name": "registry.example/shop/web:1.2"},
		Image:       &api.Image{Name: "registry.example/shop/web:1.2", Digest: "sha256:" + strings.Repeat("ab", 32)},
	}
}

// ociSpec is the spec containerd would build for ctr before NRI.
func ociSpec(pod *api.PodSandbox, ctr *api.Container) *specs.Spec {
	s := &specs.Spec{
		Process: &specs.Process{Args: slices.Clone(ctr.Args), Env: slices.Clone(ctr.Env), Cwd: "/"},
		Annotations: map[string]string{
			"io.kubernetes.cri.container-type":    "container",
			"io.kubernetes.cri.sandbox-namespace": pod.Namespace,
			"io.kubernetes.cri.sandbox-name":      pod.Name,
			"io.kubernetes.cri.container-name":    ctr.Name,
		},
	}
	for k, v := range ctr.Annotations {
		s.Annotations[k] = v
	}
	for _, m := range ctr.Mounts {
		s.Mounts = append(s.Mounts, specs.Mount{Destination: m.Destination, Type: m.Type, Source: m.Source, Options: m.Options})
	}
	return s
}

// apply applies the parts of adj this plugin uses to s, with the semantics
// of NRI's runtime-tools generator (containerd's): args replaced, env
// removals and overrides by name, mounts removed by destination, annotations
// set. dropEnv simulates containerd #13432 as reported against containerd
// 2.3: every env adjustment of an existing variable ignored.
func apply(s *specs.Spec, adj *api.ContainerAdjustment, dropEnv bool) {
	if adj == nil {
		return
	}
	if len(adj.Args) > 0 {
		s.Process.Args = slices.Clone(adj.Args)
	}
	if len(adj.Env) > 0 && !dropEnv {
		mod := map[string]*api.KeyValue{}
		for _, e := range adj.Env {
			k, _ := api.IsMarkedForRemoval(e.Key)
			mod[k] = e
		}
		var env []string
		for _, e := range s.Process.Env {
			k, _, _ := strings.Cut(e, "=")
			if m, ok := mod[k]; ok {
				if _, removed := m.IsMarkedForRemoval(); !removed {
					env = append(env, m.Key+"="+m.Value)
				}
				continue
			}
			env = append(env, e)
		}
		s.Process.Env = env
	}
	for _, m := range adj.Mounts {
		if dest, removed := m.IsMarkedForRemoval(); removed {
			s.Mounts = slices.DeleteFunc(s.Mounts, func(x specs.Mount) bool { return x.Destination == dest })
		}
	}
	for k, v := range adj.Annotations {
		s.Annotations[k] = v
	}
}

// removedEnv returns the names adj removes.
func removedEnv(adj *api.ContainerAdjustment) []string {
	var out []string
	for _, e := range adj.GetEnv() {
		if k, ok := api.IsMarkedForRemoval(e.Key); ok {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

// placeholderEnv returns the names adj sets to the placeholder.
func placeholderEnv(adj *api.ContainerAdjustment) []string {
	var out []string
	for _, e := range adj.GetEnv() {
		if _, removal := e.IsMarkedForRemoval(); !removal && e.Value == envelope.Placeholder {
			out = append(out, e.Key)
		}
	}
	slices.Sort(out)
	return out
}

// removedMounts returns the destinations adj removes.
func removedMounts(adj *api.ContainerAdjustment) []string {
	var out []string
	for _, m := range adj.GetMounts() {
		if d, ok := m.IsMarkedForRemoval(); ok {
			out = append(out, d)
		}
	}
	slices.Sort(out)
	return out
}
