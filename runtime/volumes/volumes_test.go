package volumes

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	agentvolumes "github.com/raksh-project/raksh/agent/volumes"
	agentapi "github.com/raksh-project/raksh/api/agent/v1"
	"github.com/raksh-project/raksh/runtime/launch"
)

func TestClassify(t *testing.T) {
	dir := t.TempDir()
	hosts := filepath.Join(dir, "hosts")
	os.WriteFile(hosts, []byte("127.0.0.1 localhost\n"), 0o644)
	pods := "/var/lib/kubelet/pods/uid-1/volumes/"
	spec := &specs.Spec{Mounts: []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc"},
		{Destination: "/etc/config", Type: "bind", Source: pods + "kubernetes.io~configmap/cfg", Options: []string{"rbind", "ro"}},
		{Destination: "/etc/secret", Source: pods + "kubernetes.io~secret/s", Options: []string{"rbind", "ro"}},
		{Destination: "/var/run/secrets/kubernetes.io/serviceaccount", Type: "bind", Source: pods + "kubernetes.io~projected/kube-api-access-x", Options: []string{"rbind"}},
		{Destination: "/etc/podinfo", Type: "bind", Source: pods + "kubernetes.io~downward-api/info", Options: []string{"rbind"}},
		{Destination: "/cache", Type: "bind", Source: pods + "kubernetes.io~empty-dir/cache", Options: []string{"rbind"}},
		{Destination: "/etc/hosts", Type: "bind", Source: hosts, Options: []string{"rbind"}},
		{Destination: "/etc/resolv.conf", Type: "bind", Source: filepath.Join(dir, "missing"), Options: []string{"rbind"}},
		{Destination: "/host", Type: "bind", Source: "/var/lib/data", Options: []string{"rbind"}},
		{Destination: "/pv", Type: "bind", Source: pods + "kubernetes.io~csi/pv-1/mount", Options: []string{"rbind"}},
		{Destination: "/sub", Type: "bind", Source: "/var/lib/kubelet/pods/uid-1/volume-subpaths/cfg/c/0", Options: []string{"rbind"}},
		{Destination: "/dev/shm", Type: "bind", Source: "/run/containerd/sandboxes/x/shm", Options: []string{"rbind"}},
	}}
	got := map[string]Volume{}
	for _, v := range Classify(spec, false) {
		got[v.Destination] = v
	}
	want := map[string]Kind{"/etc/config": Tree, "/etc/secret": Tree, "/var/run/secrets/kubernetes.io/serviceaccount": Tree,
		"/etc/podinfo": Tree, "/cache": EmptyDir, "/etc/hosts": File}
	if len(got) != len(want) {
		t.Errorf("classified %d mounts, want %d: %+v", len(got), len(want), got)
	}
	for d, k := range want {
		if v, ok := got[d]; !ok || v.Kind != k {
			t.Errorf("%s: got %+v, want kind %d", d, v, k)
		}
	}
	if got["/cache"].Name != "cache" || got["/etc/config"].Plugin != "configmap" {
		t.Errorf("names: %+v %+v", got["/cache"], got["/etc/config"])
	}
}

// TestClassifyShared: with shared_fs, every bind mount that is not copied
// (hostPath, PVs, subPath mounts, a CRI file that is not a regular file)
// is shared, with its options; CRI's /dev/shm never is.
func TestClassifyShared(t *testing.T) {
	pods := "/var/lib/kubelet/pods/uid-1/volumes/"
	spec := &specs.Spec{Mounts: []specs.Mount{
		{Destination: "/etc/config", Type: "bind", Source: pods + "kubernetes.io~configmap/cfg", Options: []string{"rbind", "ro"}},
		{Destination: "/cache", Type: "bind", Source: pods + "kubernetes.io~empty-dir/cache", Options: []string{"rbind"}},
		{Destination: "/host", Type: "bind", Source: "/var/lib/data", Options: []string{"rbind", "ro", "rslave"}},
		{Destination: "/pv", Type: "bind", Source: pods + "kubernetes.io~csi/pv-1/mount", Options: []string{"rbind"}},
		{Destination: "/sub/", Type: "bind", Source: "/var/lib/kubelet/pods/uid-1/volume-subpaths/cfg/c/0", Options: []string{"rbind"}},
		{Destination: "/dev/shm", Type: "bind", Source: "/run/containerd/sandboxes/x/shm", Options: []string{"rbind"}},
		{Destination: "/proc", Type: "proc", Source: "proc"},
	}}
	got := map[string]Volume{}
	for _, v := range Classify(spec, true) {
		got[v.Destination] = v
	}
	want := map[string]Kind{"/etc/config": Tree, "/cache": EmptyDir, "/host": Shared, "/pv": Shared, "/sub": Shared}
	if len(got) != len(want) {
		t.Errorf("classified %d mounts, want %d: %+v", len(got), len(want), got)
	}
	for d, k := range want {
		if v, ok := got[d]; !ok || v.Kind != k {
			t.Errorf("%s: got %+v, want kind %d", d, v, k)
		}
	}
	if o := got["/host"].Options; len(o) != 3 || o[1] != "ro" || o[2] != "rslave" {
		t.Errorf("options of /host not kept: %v", o)
	}
	if _, ok := got["/dev/shm"]; ok {
		t.Error("/dev/shm shared")
	}
}

// TestShareID: ids are opaque, fixed-charset single path elements the
// agent accepts, distinct per container and destination.
func TestShareID(t *testing.T) {
	a, b, c := ShareID("c1", "/data"), ShareID("c1", "/other"), ShareID("c2", "/data")
	if a == b || a == c || a != ShareID("c1", "/data") {
		t.Fatalf("ids not distinct or not stable: %s %s %s", a, b, c)
	}
	for _, id := range []string{a, b, c, ShareID("c1", "/../../etc")} {
		if err := agentvolumes.ValidShareID(id); err != nil {
			t.Errorf("agent refuses %q: %v", id, err)
		}
	}
}

func TestParseBind(t *testing.T) {
	for _, tc := range []struct {
		opts []string
		want bindFlags
	}{
		{[]string{"rbind", "rprivate", "rw"}, bindFlags{recursive: true, prop: unix.MS_PRIVATE}},
		{[]string{"bind", "ro"}, bindFlags{readOnly: true, prop: unix.MS_PRIVATE}},
		{[]string{"rbind", "rro", "rprivate"}, bindFlags{recursive: true, readOnly: true, rro: true, prop: unix.MS_PRIVATE}},
		{[]string{"rbind", "rslave"}, bindFlags{recursive: true, prop: unix.MS_SLAVE}},
		{[]string{"rbind", "rshared"}, bindFlags{recursive: true, prop: unix.MS_SLAVE}},
	} {
		if got := parseBind(tc.opts); got != tc.want {
			t.Errorf("%v: %+v, want %+v", tc.opts, got, tc.want)
		}
	}
}

// configMap writes a ConfigMap volume as kubelet's atomic writer does and
// returns a function that swaps in new content the same way.
func configMap(t *testing.T, dir string, files map[string]string) func(map[string]string) {
	gen := 0
	write := func(files map[string]string) {
		gen++
		ts := filepath.Join(dir, "..ts"+strings.Repeat("x", gen))
		if err := os.Mkdir(ts, 0o755); err != nil {
			t.Fatal(err)
		}
		for k, v := range files {
			os.WriteFile(filepath.Join(ts, k), []byte(v), 0o644)
		}
		old, _ := os.Readlink(filepath.Join(dir, "..data"))
		os.Symlink(filepath.Base(ts), filepath.Join(dir, "..data_tmp"))
		os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data"))
		for k := range files {
			os.Symlink("..data/"+k, filepath.Join(dir, k))
		}
		if old != "" {
			os.RemoveAll(filepath.Join(dir, old))
		}
	}
	write(files)
	return write
}

type fakeAgent struct {
	mu         sync.Mutex
	puts       []*agentapi.PutVolumeRequest
	guestWrote string
}

func (f *fakeAgent) Put(_ context.Context, r *agentapi.PutVolumeRequest) (*agentapi.PutVolumeResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.puts = append(f.puts, r)
	return &agentapi.PutVolumeResponse{}, nil
}

func (f *fakeAgent) Remove(context.Context, *agentapi.RemoveVolumesRequest) (*agentapi.RemoveVolumesResponse, error) {
	return &agentapi.RemoveVolumesResponse{}, nil
}

// Get returns the guest's termination message: the content last put, with
// "guest wrote" appended as the container would, bounded by max_bytes.
func (f *fakeAgent) Get(_ context.Context, r *agentapi.GetVolumeRequest) (*agentapi.GetVolumeResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var data []byte
	for _, p := range f.puts {
		if p.GetDestination() == r.GetDestination() && len(p.GetEntries()) == 1 {
			data = append(append([]byte{}, p.GetEntries()[0].GetData()...), []byte(f.guestWrote)...)
		}
	}
	if int64(len(data)) > r.GetMaxBytes() {
		return &agentapi.GetVolumeResponse{Data: data[:r.GetMaxBytes()], Truncated: true}, nil
	}
	return &agentapi.GetVolumeResponse{Data: data}, nil
}

// TestCopyBackTerminationLog: the container's termination message is
// written to kubelet's node file in place, bounded, and not re-sent.
func TestCopyBackTerminationLog(t *testing.T) {
	dir := t.TempDir()
	node := filepath.Join(dir, "termlog")
	os.WriteFile(node, nil, 0o666)
	agent := &fakeAgent{guestWrote: "exited: disk full\n"}
	s := NewSyncer(agent, Config{PollInterval: 20 * time.Millisecond})
	vols := []Volume{{Kind: File, Source: node, Destination: TerminationLog, Plugin: "cri"}}
	if err := s.Deliver(context.Background(), "c1", "pod", vols); err != nil {
		t.Fatal(err)
	}
	defer s.Stop("c1")
	if err := s.CopyBack(context.Background(), "c1"); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(node); string(b) != "exited: disk full\n" {
		t.Fatalf("node file: %q", b)
	}
	_, n := agent.last()
	time.Sleep(100 * time.Millisecond)
	if _, n2 := agent.last(); n2 != n {
		t.Errorf("the copied-back message was sent into the guest again (%d puts, then %d)", n, n2)
	}
	agent.guestWrote = strings.Repeat("x", 2*MaxTerminationMessage)
	if err := s.CopyBack(context.Background(), "c1"); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(node); len(b) != MaxTerminationMessage {
		t.Errorf("message not bounded: %d bytes", len(b))
	}
	// Never through a symlink.
	os.Remove(node)
	os.Symlink(filepath.Join(dir, "elsewhere"), node)
	os.WriteFile(filepath.Join(dir, "elsewhere"), []byte("keep"), 0o644)
	if err := s.CopyBack(context.Background(), "c1"); err == nil {
		t.Error("copied back through a symlink")
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "elsewhere")); string(b) != "keep" {
		t.Errorf("symlink target written: %q", b)
	}
	// A container without a termination log: nothing to do.
	if err := s.CopyBack(context.Background(), "other"); err != nil {
		t.Error(err)
	}
}

func (f *fakeAgent) last() (*agentapi.PutVolumeRequest, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.puts) == 0 {
		return nil, 0
	}
	return f.puts[len(f.puts)-1], len(f.puts)
}

func content(r *agentapi.PutVolumeRequest) map[string]string {
	out := map[string]string{}
	for _, e := range r.GetEntries() {
		switch e.GetType() {
		case agentapi.EntryType_ENTRY_TYPE_REGULAR:
			out[e.GetPath()] = string(e.GetData())
		case agentapi.EntryType_ENTRY_TYPE_SYMLINK:
			out[e.GetPath()] = "-> " + e.GetTarget()
		}
	}
	return out
}

func TestDeliverAndUpdate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "volumes", "kubernetes.io~configmap", "cfg")
	os.MkdirAll(dir, 0o755)
	swap := configMap(t, dir, map[string]string{"key": "v1"})
	agent := &fakeAgent{}
	s := NewSyncer(agent, Config{PollInterval: 20 * time.Millisecond})
	vols := []Volume{{Kind: Tree, Source: dir, Destination: "/etc/config", Plugin: "configmap"}}
	if err := s.Deliver(context.Background(), "c1", "pod", vols); err != nil {
		t.Fatal(err)
	}
	defer s.Stop("c1")
	r, _ := agent.last()
	c := content(r)
	if r.GetContainerId() != "c1" || r.GetDestination() != "/etc/config" || c["key"] != "-> ..data/key" || c["..tsx/key"] != "v1" || c["..data"] != "-> ..tsx" {
		t.Fatalf("first delivery %v", c)
	}
	swap(map[string]string{"key": "v2"})
	deadline := time.Now().Add(5 * time.Second)
	for {
		r, _ := agent.last()
		if c := content(r); c["..data"] == "-> ..tsxx" && c["..tsxx/key"] == "v2" && c["..tsx/key"] == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("update not delivered: %v", content(r))
		}
		time.Sleep(10 * time.Millisecond)
	}
	s.Stop("c1")
	_, n := agent.last()
	swap(map[string]string{"key": "v3"})
	time.Sleep(100 * time.Millisecond)
	if _, m := agent.last(); m != n {
		t.Fatal("updates continue after Stop")
	}
}

func TestLimits(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "cfg")
	os.MkdirAll(dir, 0o755)
	for i := range 5 {
		os.WriteFile(filepath.Join(dir, strings.Repeat("f", i+1)), make([]byte, 100), 0o644)
	}
	v := Volume{Kind: Tree, Source: dir, Destination: "/etc/config", Plugin: "configmap"}
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{MaxBytes: 450, MaxFiles: 100}, "max_bytes = 450"},
		{Config{MaxBytes: 1 << 20, MaxFiles: 4}, "max_files = 4"},
	} {
		_, err := read(v, tc.cfg)
		if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "/etc/config") {
			t.Errorf("%+v: got %v, want an error naming the volume and %q", tc.cfg, err, tc.want)
		}
	}
	if _, err := read(v, Config{MaxBytes: 500, MaxFiles: 5}); err != nil {
		t.Errorf("at the limits: %v", err)
	}
}

// TestContribConfig: the shipped runtime.toml's [volumes] table loads.
func TestContribConfig(t *testing.T) {
	cfg, err := launch.LoadConfig(filepath.Join("..", "..", "contrib", "raksh", "runtime.toml"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Volumes.MaxBytes != 16<<20 || cfg.Volumes.MaxFiles != 1024 || cfg.Volumes.PollInterval != time.Second {
		t.Fatalf("[volumes] = %+v", cfg.Volumes)
	}
}
