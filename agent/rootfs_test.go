package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

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
