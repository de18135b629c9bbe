package rootfs

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/v2/core/mount"
	"google.golang.org/protobuf/proto"

	agentapi "github.com/raksh-project/raksh/api/agent/v1"
)

func TestWriteParse(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "rootfs")
	d := &Descriptor{Version: Version, Mode: ModeLayers, ImageRef: "r", Layers: []Layer{
		{Digest: "sha256:aa", MediaType: "application/vnd.oci.image.layer.v1.tar+gzip+encrypted", Source: SourceBlob, Path: "/cache/aa",
			Annotations: map[string]string{"org.opencontainers.image.enc.keys.jwe": "x"}},
	}}
	if err := Write(dir, d); err != nil {
		t.Fatal(err)
	}
	got, ok, err := ParseMount(mount.Mount{Type: "bind", Source: dir, Options: []string{"ro", "rbind"}})
	if err != nil || !ok {
		t.Fatalf("ParseMount: %v %v", ok, err)
	}
	if got.Layers[0].Path != "/cache/aa" || got.Layers[0].Annotations["org.opencontainers.image.enc.keys.jwe"] != "x" {
		t.Fatalf("round trip: %+v", got)
	}
	if _, err := os.Stat(filepath.Join(dir, "etc", "passwd")); err != nil {
		t.Fatalf("no stub passwd: %v", err)
	}
}

func TestParseMountNegative(t *testing.T) {
	tmp := t.TempDir()
	write := func(name, body string) string {
		d := filepath.Join(tmp, name)
		os.MkdirAll(d, 0o755)
		os.WriteFile(filepath.Join(d, FileName), []byte(body), 0o644)
		return d
	}
	for _, tc := range []struct {
		name   string
		m      mount.Mount
		wantOK bool
		errs   bool
	}{
		{"overlay", mount.Mount{Type: "overlay", Source: "overlay"}, false, false},
		{"plain bind", mount.Mount{Type: "bind", Source: tmp}, false, false},
		{"future version", mount.Mount{Type: "bind", Source: write("v2", `{"version":2,"mode":"layers","layers":[{"digest":"d","source":"guest-pull"}]}`)}, true, true},
		{"malformed", mount.Mount{Type: "bind", Source: write("bad", `{"version":`)}, true, true},
		{"unknown mode", mount.Mount{Type: "bind", Source: write("mode", `{"version":1,"mode":"x","layers":[{"digest":"d","source":"guest-pull"}]}`)}, true, true},
		{"blob without path", mount.Mount{Type: "bind", Source: write("path", `{"version":1,"mode":"layers","layers":[{"digest":"d","source":"blob"}]}`)}, true, true},
		{"guest pull without ref", mount.Mount{Type: "bind", Source: write("ref", `{"version":1,"mode":"guest-pull","layers":[{"digest":"d","source":"guest-pull"}]}`)}, true, true},
		{"no layers", mount.Mount{Type: "bind", Source: write("nol", `{"version":1,"mode":"layers","layers":[]}`)}, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, ok, err := ParseMount(tc.m)
			if ok != tc.wantOK || (err != nil) != tc.errs || (d != nil) == tc.errs && tc.wantOK {
				t.Fatalf("ParseMount = %v, %v, %v", d, ok, err)
			}
		})
	}
}

// TestAgentDescriptor checks what crosses to the guest: modes and sources
// mapped, every layer field but the host path kept.
func TestAgentDescriptor(t *testing.T) {
	d := &Descriptor{Version: Version, Mode: ModeLayers, ImageRef: "r/a:1", ManifestDigest: "sha256:mm", Layers: []Layer{
		{Digest: "sha256:aa", DiffID: "sha256:da", Source: SourceDir, Path: "/var/lib/host/dir"},
		{Digest: "sha256:bb", DiffID: "sha256:db", MediaType: "m", Size: 7, Annotations: map[string]string{"k": "v"}, Source: SourceBlob, Path: "/var/lib/host/blob"},
	}}
	g := d.AgentDescriptor()
	if g.Mode != agentapi.RootfsDescriptor_LAYERS || g.ImageRef != "r/a:1" || g.ManifestDigest != "sha256:mm" || len(g.Layers) != 2 {
		t.Fatalf("%v", g)
	}
	if l := g.Layers[0]; l.Source != agentapi.RootfsLayer_REGISTRY || l.Digest != "sha256:aa" || l.DiffId != "sha256:da" {
		t.Errorf("dir layer: %v", l)
	}
	if l := g.Layers[1]; l.Source != agentapi.RootfsLayer_BLOB || l.MediaType != "m" || l.Size != 7 || l.Annotations["k"] != "v" {
		t.Errorf("blob layer: %v", l)
	}
	b, err := proto.Marshal(g)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(b, []byte("/var/lib/host")) {
		t.Error("a host path crosses to the guest")
	}
	d.Mode = ModeGuestPull
	if g := d.AgentDescriptor(); g.Mode != agentapi.RootfsDescriptor_GUEST_PULL {
		t.Errorf("guest-pull mode: %v", g.Mode)
	}
}
