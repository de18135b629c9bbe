package agent

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/containerd/containerd/api/types"
	ptypes "github.com/containerd/containerd/v2/pkg/protobuf/types"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"

	agentapi "github.com/raksh-project/raksh/api/agent/v1"
	"github.com/raksh-project/raksh/internal/wire"
)

func packed(t *testing.T, m proto.Message) *ptypes.Any {
	t.Helper()
	a, err := typeurl.MarshalAnyToProto(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestDecodeCreateOptions(t *testing.T) {
	spec, _ := json.Marshal(specs.Spec{Process: &specs.Process{Args: []string{"true"}}})
	pull := func() *agentapi.RootfsDescriptor {
		return &agentapi.RootfsDescriptor{Mode: agentapi.RootfsDescriptor_GUEST_PULL, ImageRef: "127.0.0.1:5000/a:1", ManifestDigest: "sha256:aa",
			Layers: []*agentapi.RootfsLayer{{Digest: "sha256:bb", Source: agentapi.RootfsLayer_REGISTRY}}}
	}
	with := func(f func(d *agentapi.RootfsDescriptor)) *agentapi.RootfsDescriptor {
		d := pull()
		f(d)
		return d
	}
	for _, tc := range []struct {
		name string
		opts *ptypes.Any
		err  string // "" for success
	}{
		{"spec only", packed(t, &agentapi.CreateContainerOptions{Spec: spec}), ""},
		{"spec and rootfs descriptor", packed(t, &agentapi.CreateContainerOptions{Spec: spec, Rootfs: pull()}), ""},
		{"no options", nil, "missing"},
		{"JSON spec of old", &ptypes.Any{TypeUrl: "raksh.io/oci+json", Value: spec}, `type "raksh.io/oci+json"`},
		{"another message", packed(t, &agentapi.ExecProcessOptions{Process: spec}), "ExecProcessOptions"},
		{"garbage message", &ptypes.Any{TypeUrl: packed(t, &agentapi.CreateContainerOptions{}).TypeUrl, Value: []byte{0xff, 0xff}}, "decode"},
		{"garbage spec", packed(t, &agentapi.CreateContainerOptions{Spec: []byte("{")}), "decode OCI spec"},
		{"spec without process", packed(t, &agentapi.CreateContainerOptions{Spec: []byte("{}")}), "no process"},
		{"descriptor without mode", packed(t, &agentapi.CreateContainerOptions{Spec: spec, Rootfs: with(func(d *agentapi.RootfsDescriptor) { d.Mode = 0 })}), "unknown rootfs descriptor mode"},
		{"guest pull without image", packed(t, &agentapi.CreateContainerOptions{Spec: spec, Rootfs: with(func(d *agentapi.RootfsDescriptor) { d.ImageRef = "" })}), "without image reference"},
		{"no layers", packed(t, &agentapi.CreateContainerOptions{Spec: spec, Rootfs: with(func(d *agentapi.RootfsDescriptor) { d.Layers = nil })}), "without layers"},
		{"layer without digest", packed(t, &agentapi.CreateContainerOptions{Spec: spec, Rootfs: with(func(d *agentapi.RootfsDescriptor) { d.Layers[0].Digest = "" })}), "no digest"},
		{"layer without source", packed(t, &agentapi.CreateContainerOptions{Spec: spec, Rootfs: with(func(d *agentapi.RootfsDescriptor) { d.Layers[0].Source = 0 })}), "unknown source"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, d, err := decodeCreateOptions(tc.opts)
			if tc.err == "" {
				if err != nil || s.Process == nil || (d != nil && d.ImageRef != "127.0.0.1:5000/a:1") {
					t.Fatalf("%v %v %v", s, d, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) || !errdefs.IsInvalidArgument(err) {
				t.Fatalf("got %v, want %q (invalid argument)", err, tc.err)
			}
		})
	}
}

func TestDecodeExecOptions(t *testing.T) {
	proc, _ := json.Marshal(specs.Process{Args: []string{"true"}})
	if b, err := decodeExecOptions(packed(t, &agentapi.ExecProcessOptions{Process: proc})); err != nil || string(b) != string(proc) {
		t.Fatalf("%s %v", b, err)
	}
	for _, a := range []*ptypes.Any{
		nil,
		{TypeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Process", Value: proc},
		packed(t, &agentapi.ExecProcessOptions{Process: []byte("[")}),
	} {
		if _, err := decodeExecOptions(a); !errdefs.IsInvalidArgument(err) {
			t.Errorf("%v: got %v, want invalid argument", a, err)
		}
	}
}

func TestPrepareRootfsDescriptorAndMounts(t *testing.T) {
	s := &Service{}
	d := &agentapi.RootfsDescriptor{Mode: agentapi.RootfsDescriptor_LAYERS, Layers: []*agentapi.RootfsLayer{{Digest: "sha256:aa", Source: agentapi.RootfsLayer_BLOB}}}
	err := s.prepareRootfs(context.Background(), "c1", []*types.Mount{{Type: wire.RootfsTar, Source: wire.RootfsStream("c1")}}, d, t.TempDir())
	if !errdefs.IsInvalidArgument(err) {
		t.Fatalf("got %v, want invalid argument", err)
	}
}
