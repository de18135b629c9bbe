package mounts

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// TestRewriteRefusesNodePaths is the regression test of the node paths that
// used to hand the container the guest's own files: a bind mount whose
// source happened to exist in the guest was bound from the guest.
func TestRewriteRefusesNodePaths(t *testing.T) {
	existing := t.TempDir() // exists where the test runs, as /etc/raksh and /run do in the guest
	for _, tc := range []struct {
		name string
		m    specs.Mount
	}{
		{"etc-raksh", specs.Mount{Destination: "/x", Type: "bind", Source: "/etc/raksh", Options: []string{"rbind", "ro"}}},
		{"run", specs.Mount{Destination: "/r", Type: "bind", Source: "/run", Options: []string{"rbind"}}},
		{"existing dir", specs.Mount{Destination: "/data", Source: existing, Options: []string{"rbind", "rw"}}},
		{"root", specs.Mount{Destination: "/host", Type: "none", Source: "/", Options: []string{"bind"}}},
		{"block device", specs.Mount{Destination: "/pv", Type: "ext4", Source: "/dev/vda"}},
		{"overlay", specs.Mount{Destination: "/o", Type: "overlay", Source: "overlay", Options: []string{"lowerdir=/run"}}},
		{"untyped", specs.Mount{Destination: "/u", Source: "/run"}},
		{"relative destination", specs.Mount{Destination: "proc", Type: "proc", Source: "proc"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Rewrite([]specs.Mount{{Destination: "/proc", Type: "proc", Source: "proc"}, tc.m}, nil)
			if !errdefs.IsInvalidArgument(err) {
				t.Fatalf("got %+v, %v; want an invalid argument error", got, err)
			}
			for _, want := range []string{tc.m.Source, tc.m.Destination} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not name %q", err, want)
				}
			}
		})
	}
}

func TestRewriteAllRefusedNamed(t *testing.T) {
	_, err := Rewrite([]specs.Mount{
		{Destination: "/a", Type: "bind", Source: "/etc/raksh"},
		{Destination: "/b", Type: "bind", Source: "/run"},
	}, nil)
	if err == nil || !strings.Contains(err.Error(), `"/a"`) || !strings.Contains(err.Error(), `"/b"`) {
		t.Fatalf("got %v, want both refused mounts named", err)
	}
}

func TestRewrite(t *testing.T) {
	guestDir := filepath.Join(t.TempDir(), "vol")
	if err := os.Mkdir(guestDir, 0o755); err != nil {
		t.Fatal(err)
	}
	resolve := func(m specs.Mount) (Resolved, bool) {
		switch m.Destination {
		case "/etc/config":
			return Resolved{Path: guestDir, ReadOnly: true}, true
		case "/etc/hosts":
			return Resolved{Path: guestDir + "/hosts"}, true
		}
		return Resolved{}, false
	}
	in := []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "/etc/raksh"},
		{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
		{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"ro"}},
		{Destination: "/etc/config", Type: "bind", Source: "/var/lib/kubelet/pods/u/volumes/kubernetes.io~configmap/c", Options: []string{"rbind", "rprivate", "rw", "rshared", "x-weird"}},
		{Destination: "/etc/hosts", Type: "bind", Source: "/var/lib/containerd/x/hosts", Options: []string{"rbind", "rprivate", "rw"}},
		{Destination: "/dev/shm", Type: "bind", Source: "/run/containerd/io.containerd.grpc.v1.cri/sandboxes/s/shm", Options: []string{"rbind", "ro"}},
	}
	got, err := Rewrite(in, resolve)
	if err != nil {
		t.Fatal(err)
	}
	want := []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc"},
		in[1], in[2],
		{Destination: "/etc/config", Type: "bind", Source: guestDir, Options: []string{"rbind", "rprivate", "ro"}},
		{Destination: "/etc/hosts", Type: "bind", Source: guestDir + "/hosts", Options: []string{"rbind", "rprivate"}},
		{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=" + DefaultShmSize}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got\n%+v\nwant\n%+v", got, want)
	}
}

func TestCheckDevices(t *testing.T) {
	if err := CheckDevices(&specs.Linux{}); err != nil {
		t.Fatal(err)
	}
	err := CheckDevices(&specs.Linux{Devices: []specs.LinuxDevice{{Path: "/dev/vport0p1", Type: "c", Major: 246, Minor: 1}}})
	if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "/dev/vport0p1 (c 246:1)") {
		t.Fatalf("got %v", err)
	}
}

// TestRewriteShared: a virtio-fs share entry is bound with the spec's
// options but without a plain "ro" (the node's bind enforces it on its top
// mount only, as runc does); "rro" is kept.
func TestRewriteShared(t *testing.T) {
	resolve := func(m specs.Mount) (Resolved, bool) {
		return Resolved{Path: "/run/raksh-volumes/c/x/" + filepath.Base(m.Destination), Shared: true}, true
	}
	got, err := Rewrite([]specs.Mount{
		{Destination: "/ro", Type: "bind", Source: "/host/a", Options: []string{"rbind", "rprivate", "ro"}},
		{Destination: "/rro", Type: "bind", Source: "/host/b", Options: []string{"rbind", "rprivate", "ro", "rro"}},
		{Destination: "/rw", Type: "bind", Source: "/host/c", Options: []string{"rbind", "rslave", "rw"}},
	}, resolve)
	if err != nil {
		t.Fatal(err)
	}
	want := [][]string{{"rbind", "rprivate"}, {"rbind", "rprivate", "rro"}, {"rbind", "rslave"}}
	for i, m := range got {
		if m.Source != "/run/raksh-volumes/c/x"+m.Destination || !reflect.DeepEqual(m.Options, want[i]) {
			t.Errorf("%s: %+v, want options %v", m.Destination, m, want[i])
		}
	}
}
