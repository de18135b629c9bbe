package nri

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	nri "github.com/containerd/nri/pkg/adaptation"
	"github.com/containerd/nri/pkg/api"
	"github.com/containerd/nri/pkg/stub"
	validator "github.com/containerd/nri/plugins/default-validator"

	"github.com/raksh-project/raksh/envelope"
	"github.com/raksh-project/raksh/policy/guard"
)

// runtime is the runtime side of NRI (what containerd embeds), in process.
type runtime struct {
	t    testing.TB
	dir  string
	sock string
	r    *nri.Adaptation
}

// startRuntime starts an NRI runtime with the default validator requiring
// the raksh plugin, as the node configuration in docs/nri.md does.
func startRuntime(t testing.TB, dir string) *runtime {
	t.Helper()
	rt := &runtime{t: t, dir: dir, sock: filepath.Join(dir, "nri.sock")}
	sync := func(ctx context.Context, cb nri.SyncCB) error {
		_, err := cb(ctx, nil, nil)
		return err
	}
	update := func(context.Context, []*nri.ContainerUpdate) ([]*nri.ContainerUpdate, error) { return nil, nil }
	r, err := nri.New("raksh-test-runtime", "v0.0.0", sync, update,
		nri.WithPluginPath(filepath.Join(dir, "opt", "nri", "plugins")),
		nri.WithPluginConfigPath(filepath.Join(dir, "etc", "nri", "conf.d")),
		nri.WithSocketPath(rt.sock),
		nri.WithDefaultValidator(&validator.DefaultValidatorConfig{Enable: true, RequiredPlugins: []string{PluginName}}),
	)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	rt.r = r
	t.Cleanup(rt.stop)
	return rt
}

func (rt *runtime) stop() {
	if rt.r != nil {
		rt.r.Stop()
		rt.r = nil
	}
}

func (rt *runtime) create(ctx context.Context, pod *api.PodSandbox, ctr *api.Container) (*api.ContainerAdjustment, error) {
	b := rt.r.BlockPluginSync()
	defer b.Unblock()
	if err := rt.r.RunPodSandbox(ctx, &api.RunPodSandboxRequest{Pod: pod}); err != nil {
		return nil, err
	}
	rpl, err := rt.r.CreateContainer(ctx, &api.CreateContainerRequest{Pod: pod, Container: ctr})
	if err != nil {
		return nil, err
	}
	return rpl.GetAdjust(), nil
}

// socketDir returns a short directory for the NRI socket (unix socket paths
// are limited to 108 bytes).
func socketDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "rnri")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// runPlugin runs the plugin as an external NRI plugin against sock and
// returns a channel signalled on every (re)connection and the Run result.
func runPlugin(t testing.TB, ctx context.Context, sock string, config string) (<-chan struct{}, <-chan error) {
	t.Helper()
	p, err := New(WithConfig([]byte(config)))
	if err != nil {
		t.Fatal(err)
	}
	connected := make(chan struct{}, 8)
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, p, RunOpts{
			StubOptions: []stub.Option{stub.WithSocketPath(sock)},
			MinBackoff:  20 * time.Millisecond,
			MaxBackoff:  100 * time.Millisecond,
			OnConnect:   func() { connected <- struct{}{} },
		})
	}()
	return connected, done
}

// waitConnected waits for the plugin to register, then until the runtime
// has it in its plugin list (registration completes after the plugin's
// Configure returns): until a probe container passes the required-plugin
// validation.
func waitConnected(t testing.TB, rt *runtime, c <-chan struct{}, done <-chan error) {
	t.Helper()
	select {
	case <-c:
	case err := <-done:
		t.Fatalf("plugin exited: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("plugin did not connect")
	}
	probe := &api.PodSandbox{Id: "probe", Name: "probe", Namespace: "probe", RuntimeHandler: "runc"}
	ctr := &api.Container{Id: "probe", PodSandboxId: "probe", Name: "probe"}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := rt.create(context.Background(), probe, ctr)
		if err == nil {
			return
		}
		if !strings.Contains(err.Error(), "required plugin") || time.Now().After(deadline) {
			t.Fatalf("plugin not registered: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestAdaptation(t *testing.T) {
	f := newFixture(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rt := startRuntime(t, socketDir(t))
	connected, done := runPlugin(t, ctx, rt.sock, f.config("seal:\n  args: true\n  env: {all: true, exclude: [PATH]}\n  files: {secrets: true}\n"))
	waitConnected(t, rt, connected, done)

	t.Run("raksh pod: sealed and stripped", func(t *testing.T) {
		pod, ctr := f.pod("raksh"), f.container()
		orig := f.container() // the runtime rewrites ctr in place
		adj, err := rt.create(ctx, pod, ctr)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(adj.GetArgs(), []string{envelope.Placeholder}) {
			t.Errorf("args = %q, want [%s]", adj.GetArgs(), envelope.Placeholder)
		}
		// What reaches containerd: NRI merged the removals away (#13432),
		// the placeholder overrides remain.
		if got, want := placeholderEnv(adj), []string{"DB_PASSWORD", "LOG_LEVEL", "SECRET"}; !slices.Equal(got, want) {
			t.Errorf("env set to the placeholder = %q, want %q", got, want)
		}
		if got := removedEnv(adj); len(got) != 0 {
			t.Logf("NRI now passes env removals through: %q", got)
		}
		if got, want := removedMounts(adj), []string{"/etc/creds"}; !slices.Equal(got, want) {
			t.Errorf("removed mounts = %q, want %q", got, want)
		}
		for _, m := range adj.GetMounts() {
			if _, removal := m.IsMarkedForRemoval(); !removal {
				t.Errorf("mount %q added", m.Destination)
			}
		}
		_, spec := f.open(t, adj, binding)
		if !slices.Equal(spec.Args, orig.Args) || len(spec.Env) != 3 || len(spec.Files) != 2 {
			t.Errorf("sealed spec: args %v, %d env, %d files", len(spec.Args), len(spec.Env), len(spec.Files))
		}
		oci := ociSpec(pod, orig)
		apply(oci, adj, false)
		if err := guard.Check(oci, guard.Options{RequireEnvelope: true}); err != nil {
			t.Errorf("guard refuses the adjusted spec: %v", err)
		}
		for _, e := range oci.Process.Env {
			if strings.Contains(e, secretValue) {
				t.Errorf("adjusted spec still carries a secret env value")
			}
		}
	})

	t.Run("runc pod: untouched", func(t *testing.T) {
		pod, ctr := f.pod("runc"), f.container()
		pod.Name, pod.Id, ctr.PodSandboxId = "web-runc", "sandbox-runc", "sandbox-runc"
		adj, err := rt.create(ctx, pod, ctr)
		if err != nil {
			t.Fatal(err)
		}
		if len(adj.GetArgs()) != 0 || len(adj.GetEnv()) != 0 || len(adj.GetMounts()) != 0 || len(adj.GetAnnotations()) != 0 {
			t.Errorf("runc container adjusted: %v", adj)
		}
	})

	for _, tc := range []struct {
		name    string
		mutate  func(t *testing.T, pod *api.PodSandbox, ctr *api.Container)
		mention string
	}{
		{
			name: "envelope for another container",
			mutate: func(t *testing.T, pod *api.PodSandbox, _ *api.Container) {
				pod.Annotations[envelope.PodAnnotationPrefix+"app"] = f.ownerSeal(t, &envelope.Spec{Env: []string{"A=b"}}, envelope.Binding{Namespace: "shop", Pod: "web-0", Container: "db"})
			},
			mention: "envelope bound to another container",
		},
		{
			name: "oversized env",
			mutate: func(_ *testing.T, _ *api.PodSandbox, ctr *api.Container) {
				ctr.Env = append(ctr.Env, "BLOB="+strings.Repeat("x", DefaultMaxValueBytes))
			},
			mention: `env "BLOB"`,
		},
		{
			name: "oversized file",
			mutate: func(t *testing.T, _ *api.PodSandbox, ctr *api.Container) {
				src := f.volume(t, "kubernetes.io~secret", "big", map[string]string{"blob": strings.Repeat("x", DefaultMaxFileBytes+1)})
				ctr.Mounts = append(ctr.Mounts, &api.Mount{Destination: "/etc/big", Type: "bind", Source: src, Options: []string{"rbind", "ro"}})
			},
			mention: `file "/etc/big/blob" is`,
		},
	} {
		t.Run("refused: "+tc.name, func(t *testing.T) {
			pod, ctr := f.pod("raksh"), f.container()
			tc.mutate(t, pod, ctr)
			adj, err := rt.create(ctx, pod, ctr)
			if err == nil {
				t.Fatalf("CreateContainer succeeded with %v", adj)
			}
			if !strings.Contains(err.Error(), tc.mention) {
				t.Errorf("error %q does not mention %q", err, tc.mention)
			}
			if strings.Contains(err.Error(), secretValue) || strings.Contains(err.Error(), "xxxxxxxx") {
				t.Errorf("error leaks a value")
			}
		})
	}
}

func TestAdaptationBadConfig(t *testing.T) {
	f := newFixture(t)
	for _, tc := range []struct {
		name, config, mention string
	}{
		{name: "malformed config", config: "mode: [seal", mention: "malformed raksh-nri configuration"},
		{name: "missing recipient key", config: "mode: seal\nrecipients: [{keyID: \"" + kid1 + "\", keyFile: /nonexistent/key.pem}]\n", mention: "recipient " + kid1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			rt := startRuntime(t, socketDir(t))
			connected, done := runPlugin(t, ctx, rt.sock, tc.config)
			select {
			case err := <-done:
				if err == nil || !strings.Contains(err.Error(), tc.mention) {
					t.Fatalf("Run = %v, want an error mentioning %q", err, tc.mention)
				}
			case <-connected:
				t.Fatal("plugin registered with a bad configuration")
			case <-time.After(10 * time.Second):
				t.Fatal("plugin neither failed nor connected")
			}
			// Nothing starts: the node requires the plugin.
			_, err := rt.create(ctx, f.pod("raksh"), f.container())
			if err == nil || !strings.Contains(err.Error(), `required plugin "raksh"`) {
				t.Fatalf("CreateContainer without the plugin = %v, want a required-plugin refusal", err)
			}
		})
	}
}

// proxy relays unix socket connections to target; kill closes every relayed
// connection, as the death of the runtime process does.
type proxy struct {
	l      net.Listener
	target string
	mu     sync.Mutex
	conns  []net.Conn
}

func newProxy(t testing.TB, path, target string) *proxy {
	t.Helper()
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{l: l, target: target}
	t.Cleanup(func() { l.Close(); p.kill() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("unix", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, u)
			p.mu.Unlock()
			go func() { io.Copy(u, c); u.Close(); c.Close() }()
			go func() { io.Copy(c, u); u.Close(); c.Close() }()
		}
	}()
	return p
}

func (p *proxy) kill() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func TestReconnect(t *testing.T) {
	f := newFixture(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := socketDir(t)
	rt := startRuntime(t, dir)
	px := newProxy(t, filepath.Join(dir, "plugin.sock"), rt.sock)
	connected, done := runPlugin(t, ctx, filepath.Join(dir, "plugin.sock"), f.config(""))
	waitConnected(t, rt, connected, done)

	// containerd restarts: its connections die with it, and it comes back
	// on the same socket.
	rt.stop()
	px.kill()
	rt = startRuntime(t, dir)
	waitConnected(t, rt, connected, done)
	adj, err := rt.create(ctx, f.pod("raksh"), f.container())
	if err != nil {
		t.Fatalf("CreateContainer after reconnecting: %v", err)
	}
	if _, ok := adj.GetAnnotations()[envelope.ContainerAnnotation]; !ok {
		t.Fatal("no envelope after reconnecting")
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run after cancel = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

func TestRunPreRegisteredDoesNotRetry(t *testing.T) {
	// With NRI_PLUGIN_SOCKET set the runtime launched us and relaunches us;
	// the plugin must not try to reconnect. An invalid fd makes the
	// connection fail at once.
	t.Setenv(api.PluginSocketEnvVar, "not-a-fd")
	p, err := New(WithConfig([]byte("mode: \"off\"\n")))
	if err != nil {
		t.Fatal(err)
	}
	err = Run(context.Background(), p, RunOpts{MinBackoff: time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "pre-registered plugin failed to start") || !strings.Contains(err.Error(), "not-a-fd") {
		t.Fatalf("Run = %v, want a pre-registered exit", err)
	}
}
