package runtime

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/raksh-project/raksh/runtime/network"
)

func TestPodNetnsPath(t *testing.T) {
	for _, tc := range []struct {
		name string
		spec *specs.Spec
		want string
	}{
		{"nil", nil, ""},
		{"no linux", &specs.Spec{}, ""},
		{"host network", &specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.PIDNamespace}}}}, ""},
		{"new netns", &specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.NetworkNamespace}}}}, ""},
		{"pod netns", &specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.NetworkNamespace, Path: "/var/run/netns/cni-1"}}}}, "/var/run/netns/cni-1"},
	} {
		if got := podNetnsPath(tc.spec); got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestSetupRequest(t *testing.T) {
	_, def4, _ := net.ParseCIDR("0.0.0.0/0")
	_, sub, _ := net.ParseCIDR("10.200.0.0/16")
	mac, _ := net.ParseMAC("02:42:0a:c7:26:05")
	c := &network.Config{
		Interfaces: []network.Interface{{Name: "eth0", MAC: mac, MTU: 1450, Addrs: []*net.IPNet{{IP: net.ParseIP("10.199.38.5").To4(), Mask: net.CIDRMask(24, 32)}}}},
		Routes: []network.Route{
			{Dst: def4, Gw: net.ParseIP("10.199.38.1"), Device: "eth0"},
			{Gw: net.ParseIP("10.199.38.1"), Device: "eth0"},
			{Dst: sub, Device: "eth0", Scope: unix.RT_SCOPE_LINK, Src: net.ParseIP("10.199.38.5")},
		},
		Neighbors: []network.Neighbor{{IP: net.ParseIP("10.199.38.1"), MAC: mac, Device: "eth0"}},
	}
	r := setupRequest(c)
	if len(r.Interfaces) != 1 || r.Interfaces[0].Mac != "02:42:0a:c7:26:05" || r.Interfaces[0].Mtu != 1450 || r.Interfaces[0].Addresses[0] != "10.199.38.5/24" {
		t.Fatalf("interfaces %v", r.Interfaces)
	}
	if r.Routes[0].Destination != "" || r.Routes[1].Destination != "" || r.Routes[0].Gateway != "10.199.38.1" {
		t.Fatalf("default routes %v %v", r.Routes[0], r.Routes[1])
	}
	if r.Routes[2].Destination != "10.200.0.0/16" || r.Routes[2].Scope != unix.RT_SCOPE_LINK || r.Routes[2].Source != "10.199.38.5" {
		t.Fatalf("link route %v", r.Routes[2])
	}
	if len(r.Neighbors) != 1 || r.Neighbors[0].Ip != "10.199.38.1" {
		t.Fatalf("neighbours %v", r.Neighbors)
	}
}

func TestHostHooks(t *testing.T) {
	ctx := context.Background()
	if h, err := newHostHooks("c", "/b", &specs.Spec{Hooks: &specs.Hooks{StartContainer: []specs.Hook{{Path: "/x"}}}}); h != nil || err != nil {
		t.Fatalf("hooks that are not the host's: %v %v", h, err)
	}
	dir := t.TempDir()
	out := filepath.Join(dir, "state")
	spec := &specs.Spec{Annotations: map[string]string{"a": "b"}, Hooks: &specs.Hooks{
		CreateRuntime: []specs.Hook{{Path: "/bin/sh", Args: []string{"sh", "-c", "cat > " + out}}},
		Prestart:      []specs.Hook{{Path: "/bin/sh", Args: []string{"sh", "-c", "echo boom >&2; exit 3"}}},
	}}
	h, err := newHostHooks("c1", "/bundle", spec)
	if err != nil || h == nil || h.holder != nil {
		t.Fatalf("%v %v", h, err)
	}
	err = h.create(ctx, 42)
	if err == nil || !strings.Contains(err.Error(), "prestart hook /bin/sh") || !strings.Contains(err.Error(), "boom") {
		t.Fatalf("failing prestart hook: %v", err)
	}
	b, _ := os.ReadFile(out)
	for _, w := range []string{`"id":"c1"`, `"status":"creating"`, `"pid":42`, `"bundle":"/bundle"`, `"a":"b"`} {
		if !strings.Contains(string(b), w) {
			t.Fatalf("state %s lacks %s", b, w)
		}
	}
}
