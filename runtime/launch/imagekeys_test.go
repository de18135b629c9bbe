package launch

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

func TestLoadConfigImageKeys(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name    string
		body    string
		want    []string
		wantErr string
	}{
		{name: "none", body: "", want: nil},
		{name: "one", body: "image_keys = [\"default/image-key/demo\"]\n[proxy]\nkbs = \"127.0.0.1:8080\"\n", want: []string{"default/image-key/demo"}},
		{name: "two", body: "image_keys = [\"default/image-key/a\", \"team/image-key/b.v2\"]\n[proxy]\nkbs = \"127.0.0.1:8080\"\n",
			want: []string{"default/image-key/a", "team/image-key/b.v2"}},
		{name: "no kbs proxy", body: "image_keys = [\"default/image-key/demo\"]\n", wantErr: "[proxy] kbs is not set"},
		{name: "two segments", body: "image_keys = [\"default/demo\"]\n[proxy]\nkbs = \"127.0.0.1:8080\"\n", wantErr: "not a key broker resource path"},
		{name: "comma", body: "image_keys = [\"default/image-key/a,b\"]\n[proxy]\nkbs = \"127.0.0.1:8080\"\n", wantErr: "not a key broker resource path"},
		{name: "dot dot", body: "image_keys = [\"default/../demo\"]\n[proxy]\nkbs = \"127.0.0.1:8080\"\n", wantErr: "not a key broker resource path"},
		{name: "scheme", body: "image_keys = [\"kbs:///default/image-key/demo\"]\n[proxy]\nkbs = \"127.0.0.1:8080\"\n", wantErr: "not a key broker resource path"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, tc.name+".toml")
			os.WriteFile(p, []byte(tc.body), 0o644)
			cfg, err := LoadConfig(p)
			if tc.wantErr != "" {
				if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v, want an invalid argument error saying %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(cfg.ImageKeys, tc.want) {
				t.Fatalf("image_keys %q, want %q", cfg.ImageKeys, tc.want)
			}
		})
	}
}

// The image keys are on the measured command line: another set of
// resources is another launch measurement.
func TestImageKeysKernelParam(t *testing.T) {
	cfg := teeConfig(t, TEESim)
	if slices.ContainsFunc(KernelParams(cfg), func(p string) bool { return strings.HasPrefix(p, KernelParamImageKeys) }) {
		t.Fatalf("kernel parameters without image_keys carry %s: %q", KernelParamImageKeys, KernelParams(cfg))
	}
	m0, err := LaunchMeasurement(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ImageKeys = []string{"default/image-key/a", "default/image-key/b"}
	params := KernelParams(cfg)
	if !slices.Contains(params, KernelParamImageKeys+"=default/image-key/a,default/image-key/b") {
		t.Fatalf("kernel parameters %q lack the image keys", params)
	}
	m1, err := LaunchMeasurement(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ImageKeys = []string{"default/image-key/a"}
	m2, err := LaunchMeasurement(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(m0, m1) || bytes.Equal(m1, m2) || bytes.Equal(m0, m2) {
		t.Fatal("the launch measurement does not cover the image keys")
	}
}
