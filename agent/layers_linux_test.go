package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"

	agentapi "github.com/raksh-project/raksh/api/agent/v1"
	"github.com/raksh-project/raksh/internal/wire"
)

// TestMountLayersRefusesHostInput checks layer mounts the host could forge
// are refused before anything is looked up or mounted.
func TestMountLayersRefusesHostInput(t *testing.T) {
	s := &Service{}
	for name, ms := range map[string][]*types.Mount{
		"path as serial":  {{Type: wire.RootfsErofs, Source: "/dev/vda"}},
		"traversal":       {{Type: wire.RootfsErofs, Source: "raksh-ro-1/../../etc"}},
		"scratch disk":    {{Type: wire.RootfsErofs, Source: "raksh-scratch"}},
		"rw option":       {{Type: wire.RootfsErofs, Source: "raksh-ro-1", Options: []string{"rw"}}},
		"mixed types":     {{Type: wire.RootfsErofs, Source: "raksh-ro-1"}, {Type: "bind", Source: "/"}},
		"tar among disks": {{Type: wire.RootfsErofs, Source: "raksh-ro-1"}, {Type: wire.RootfsTar, Source: "rootfs/c"}},
	} {
		err := s.mountLayers(context.Background(), "c", ms, t.TempDir())
		if !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s: %v, want an invalid-argument error", name, err)
		}
	}
}

// TestReleaseLayer checks the guest side of a layer disk's detach: a
// forged serial is refused, a layer an overlay still stacks (or a
// container is stacking) is refused and stays mounted, a serial whose
// prefix matches another layer's does not count, and an unused layer is
// unmounted and forgotten.
func TestReleaseLayer(t *testing.T) {
	mi := filepath.Join(t.TempDir(), "mountinfo")
	var unmounted []string
	oldPath, oldUnmount := mountInfoPath, unmountLayer
	mountInfoPath = mi
	unmountLayer = func(mp string) error { unmounted = append(unmounted, mp); return nil }
	t.Cleanup(func() {
		mountInfoPath, unmountLayer = oldPath, oldUnmount
		layerMu.Lock()
		clear(layerMounted)
		clear(layerStacking)
		layerMu.Unlock()
	})
	table := func(lowers ...string) {
		var b strings.Builder
		b.WriteString("22 1 0:20 / /run rw,nosuid shared:5 - tmpfs tmpfs rw\n")
		b.WriteString("40 22 254:1 / " + LayerRoot + "/raksh-ro-1 ro,relatime shared:9 - erofs /dev/vdb ro,user_xattr\n")
		for i, l := range lowers {
			fmt.Fprintf(&b, "%d 22 0:%d / /run/raksh/c%d/rootfs rw,relatime shared:1 - overlay overlay rw,lowerdir=%s,upperdir=/run/raksh/c%d/upper,workdir=/run/raksh/c%d/work\n", 50+i, 60+i, i, l, i, i)
		}
		if err := os.WriteFile(mi, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	l := &layersService{}
	release := func(serial string) error {
		_, err := l.Release(context.Background(), &agentapi.ReleaseLayerRequest{Serial: serial})
		return errgrpc.ToNative(err)
	}
	for _, bad := range []string{"", "/dev/vda", "raksh-ro-1/../../etc", "raksh-scratch", "raksh-ro-01"} {
		if err := release(bad); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("serial %q: %v, want an invalid-argument error", bad, err)
		}
	}
	mp1, mp10 := filepath.Join(LayerRoot, "raksh-ro-1"), filepath.Join(LayerRoot, "raksh-ro-10")
	layerMu.Lock()
	layerMounted["raksh-ro-1"], layerMounted["raksh-ro-10"] = mp1, mp10
	layerMu.Unlock()

	table(mp10+":"+mp1, mp10)
	if err := release("raksh-ro-1"); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("release of a stacked layer: %v, want a failed-precondition error", err)
	}
	layerMu.Lock()
	layerStacking["raksh-ro-1"] = 1
	layerMu.Unlock()
	table(mp10)
	if err := release("raksh-ro-1"); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("release of a layer being stacked: %v, want a failed-precondition error", err)
	}
	if len(unmounted) != 0 {
		t.Fatalf("unmounted %v while in use", unmounted)
	}
	layerMu.Lock()
	delete(layerStacking, "raksh-ro-1")
	layerMu.Unlock()
	// Only raksh-ro-10 is stacked now: raksh-ro-1 (a prefix of it) goes.
	if err := release("raksh-ro-1"); err != nil {
		t.Fatalf("release of an unused layer: %v", err)
	}
	if len(unmounted) != 1 || unmounted[0] != mp1 {
		t.Fatalf("unmounted %v, want %s", unmounted, mp1)
	}
	layerMu.Lock()
	_, still := layerMounted["raksh-ro-1"]
	layerMu.Unlock()
	if still {
		t.Error("a released layer is still remembered as mounted")
	}
	// Not mounted (any more): nothing to do.
	if err := release("raksh-ro-1"); err != nil || len(unmounted) != 1 {
		t.Errorf("second release: %v, unmounted %v", err, unmounted)
	}
	if err := release("raksh-ro-10"); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("release of raksh-ro-10, still stacked: %v", err)
	}
}
