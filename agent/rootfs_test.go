package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/containerd/api/types"
	"github.com/containerd/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/raksh-project/raksh/internal/wire"
)

func TestParseImageMount(t *testing.T) {
	const good = `{"version":1,"mode":"guest-pull","image_ref":"127.0.0.1:5000/a:1","manifest_digest":"sha256:aa","layers":[{"digest":"sha256:bb","source":"guest-pull"}]}`
	for _, tc := range []struct {
		name string
		opts []string
		err  string
	}{
		{"ok", []string{"ro", wire.DescriptorOption + good}, ""},
		{"none", []string{"ro"}, "carries 0 descriptors"},
		{"two", []string{wire.DescriptorOption + good, wire.DescriptorOption + good}, "carries 2 descriptors"},
		{"malformed", []string{wire.DescriptorOption + "{"}, "malformed raksh rootfs descriptor"},
		{"version", []string{wire.DescriptorOption + strings.Replace(good, `"version":1`, `"version":9`, 1)}, "unsupported raksh rootfs descriptor version"},
		{"blob without path", []string{wire.DescriptorOption + strings.Replace(good, `"source":"guest-pull"`, `"source":"blob"`, 1)}, "without path"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := parseImageMount(&types.Mount{Type: wire.RootfsImage, Options: tc.opts})
			if tc.err == "" {
				if err != nil || d.ImageRef != "127.0.0.1:5000/a:1" {
					t.Fatalf("%+v %v", d, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) || !errdefs.IsInvalidArgument(err) {
				t.Fatalf("got %v, want %q (invalid argument)", err, tc.err)
			}
		})
	}
}

func TestKeyDir(t *testing.T) {
	dir := t.TempDir()
	if _, err := KeyDir(dir).PrivateKeys(context.Background(), ocispec.Descriptor{}); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("empty dir: %v", err)
	}
	if _, err := KeyDir(filepath.Join(dir, "missing")).PrivateKeys(context.Background(), ocispec.Descriptor{}); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("missing dir: %v", err)
	}
	os.WriteFile(filepath.Join(dir, "a.pem"), []byte("key-a"), 0o600)
	os.Mkdir(filepath.Join(dir, "sub"), 0o700)
	keys, err := KeyDir(dir).PrivateKeys(context.Background(), ocispec.Descriptor{})
	if err != nil || len(keys) != 1 || string(keys[0]) != "key-a" {
		t.Fatalf("keys %q %v", keys, err)
	}
}
