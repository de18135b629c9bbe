package agent

import (
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/raksh-project/raksh/agent/volumes"
	"github.com/raksh-project/raksh/envelope"
)

// TestMountPolicy: a sealed envelope's mount policy accepts the node's
// volume mounts it lists (destination, kind, read-only) and refuses the
// container otherwise, naming each refused mount; guest filesystems are
// not volumes and always kept.
func TestMountPolicy(t *testing.T) {
	svc := &Service{volumes: volumes.NewStore(t.TempDir(), volumes.DefaultLimits)}
	for _, v := range []volumes.Volume{
		{Container: "c1", Destination: "/etc/config", Kind: volumes.Tree, Entries: []volumes.Entry{{Path: "key", Type: volumes.Regular, Mode: 0o644, Data: []byte("v")}}},
		{Container: "c1", Destination: "/etc/hosts", Kind: volumes.File, Entries: []volumes.Entry{{Type: volumes.Regular, Mode: 0o644, Data: []byte("127.0.0.1 localhost\n")}}},
	} {
		if err := svc.volumes.Put(v); err != nil {
			t.Fatal(err)
		}
	}
	spec := &specs.Spec{Mounts: []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc"},
		{Destination: "/etc/config", Type: "bind", Source: "/node/cfg", Options: []string{"rbind", "ro"}},
		{Destination: "/etc/hosts", Type: "bind", Source: "/node/hosts", Options: []string{"rbind", "rw"}},
	}}
	for _, tc := range []struct {
		name    string
		policy  *envelope.MountPolicy
		refused []string
	}{
		{"no policy", nil, nil},
		{"both listed", &envelope.MountPolicy{Allow: []envelope.MountRule{{Destination: "/etc/config", ReadOnly: true}, {Destination: "/etc/hosts"}}}, nil},
		{"wildcard", &envelope.MountPolicy{Allow: []envelope.MountRule{{Destination: "/etc/*", Kinds: []string{envelope.MountCopy}}}}, nil},
		{"hosts missing", &envelope.MountPolicy{Allow: []envelope.MountRule{{Destination: "/etc/config"}}}, []string{`copy mount at "/etc/hosts"`}},
		{"shared only", &envelope.MountPolicy{Allow: []envelope.MountRule{{Destination: "/etc/*", Kinds: []string{envelope.MountShared}}}}, []string{`"/etc/config"`, `"/etc/hosts"`}},
		{"hosts must be read-only", &envelope.MountPolicy{Allow: []envelope.MountRule{{Destination: "/etc/config"}, {Destination: "/etc/hosts", ReadOnly: true}}}, []string{`copy mount at "/etc/hosts" (read-only false)`}},
		{"empty policy", &envelope.MountPolicy{}, []string{`"/etc/config"`, `"/etc/hosts"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &container{id: "c1", spec: spec, mountPolicy: tc.policy}
			ms, err := svc.guestMounts(c)
			if tc.refused == nil {
				if err != nil || len(ms) != 3 {
					t.Fatalf("mounts %+v, %v", ms, err)
				}
				return
			}
			if !errdefs.IsPermissionDenied(err) {
				t.Fatalf("got %+v, %v; want a permission-denied error", ms, err)
			}
			for _, want := range tc.refused {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not name %s", err, want)
				}
			}
		})
	}
}
