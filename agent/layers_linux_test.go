package agent

import (
	"context"
	"errors"
	"testing"

	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"

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
