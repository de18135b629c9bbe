package rootfs

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/v2/core/mount"
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
