package runtime

import (
	"bytes"
	"context"
	"slices"
	"testing"

	"github.com/containerd/typeurl/v2"
	"github.com/opencontainers/runtime-spec/specs-go/features"

	"github.com/raksh-project/raksh/internal/version"
)

// TestInfoFeatures: the shim's Info carries our version and the guest's
// features in the form containerd's CRI plugin reads them.
func TestInfoFeatures(t *testing.T) {
	info, err := NewManager(RuntimeName).Info(context.Background(), bytes.NewReader(nil))
	if err != nil {
		t.Fatal(err)
	}
	if info.Version.GetVersion() != version.Version || info.Name != RuntimeName {
		t.Errorf("info %v, want %s version %s", info, RuntimeName, version.Version)
	}
	if info.Features == nil {
		t.Fatal("no features: containerd logs `failed to introspect features of runtime`")
	}
	x, err := typeurl.UnmarshalAny(info.Features)
	if err != nil {
		t.Fatal(err)
	}
	f, ok := x.(*features.Features)
	if !ok {
		t.Fatalf("features are %T, containerd wants *features.Features", x)
	}
	if f.OCIVersionMax == "" || f.Linux == nil {
		t.Fatalf("features %+v", f)
	}
	// What the guest can do: recursive read-only mounts (kernel 6.1 has
	// mount_setattr), the namespaces of a pod, seccomp.
	for _, o := range []string{"rro", "rbind", "nosuid"} {
		if !slices.Contains(f.MountOptions, o) {
			t.Errorf("mount option %s missing", o)
		}
	}
	for _, ns := range []string{"pid", "ipc", "uts", "mount", "network", "cgroup"} {
		if !slices.Contains(f.Linux.Namespaces, ns) {
			t.Errorf("namespace %s missing", ns)
		}
	}
	if f.Linux.Seccomp == nil || f.Linux.Seccomp.Enabled == nil || !*f.Linux.Seccomp.Enabled {
		t.Error("seccomp not reported")
	}
	// What it cannot: hooks, AppArmor, SELinux, idmapped mounts (so no CRI
	// user namespaces), checkpoints.
	if len(f.Hooks) != 0 {
		t.Errorf("hooks %v: the agent drops them", f.Hooks)
	}
	for name, e := range map[string]*bool{
		"apparmor": f.Linux.Apparmor.Enabled, "selinux": f.Linux.Selinux.Enabled,
		"idmap": f.Linux.MountExtensions.IDMap.Enabled, "intelRdt": f.Linux.IntelRdt.Enabled,
		"netDevices": f.Linux.NetDevices.Enabled,
	} {
		if e == nil || *e {
			t.Errorf("%s reported as supported", name)
		}
	}
	if f.Annotations["org.opencontainers.runc.checkpoint.enabled"] != "false" {
		t.Error("checkpoint reported as supported")
	}
	if f.Annotations["org.opencontainers.runc.version"] != "1.5.2" {
		t.Errorf("not the guest runc's features: %v", f.Annotations)
	}
}
