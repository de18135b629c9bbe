package image

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/opencontainers/go-digest"

	"github.com/raksh-project/raksh/agent/image/imagetest"
	agentapi "github.com/raksh-project/raksh/api/agent/v1"
)

const marker = "RAKSH-MARKER-7f3a9c"

type countingDialer struct{ n atomic.Int32 }

func (c *countingDialer) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	c.n.Add(1)
	var d net.Dialer
	return d.DialContext(ctx, network, addr)
}

// tamper serves the registry but flips a byte of one blob.
type tamper struct {
	h      http.Handler
	digest atomic.Value // string
}

type flipWriter struct {
	http.ResponseWriter
	done bool
}

func (f *flipWriter) Write(b []byte) (int, error) {
	if !f.done && len(b) > 10 {
		c := append([]byte(nil), b...)
		c[len(c)/2] ^= 0xff
		f.done = true
		return f.ResponseWriter.Write(c)
	}
	return f.ResponseWriter.Write(b)
}

func (t *tamper) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if d, _ := t.digest.Load().(string); d != "" && r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/blobs/"+d) {
		w = &flipWriter{ResponseWriter: w}
	}
	t.h.ServeHTTP(w, r)
}

func newRegistry(t *testing.T) (string, *tamper) {
	tp := &tamper{h: registry.New(registry.Logger(log.New(io.Discard, "", 0)))}
	srv := httptest.NewServer(tp)
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://"), tp
}

func keyFiles(t *testing.T, priv []byte) KeyFiles {
	p := filepath.Join(t.TempDir(), "key.pem")
	if err := os.WriteFile(p, priv, 0o600); err != nil {
		t.Fatal(err)
	}
	return KeyFiles{p}
}

func noLeftovers(t *testing.T, dest string) {
	t.Helper()
	if _, err := os.Stat(dest); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("dest %s exists after a failed pull: %v", dest, err)
	}
	entries, _ := os.ReadDir(filepath.Dir(dest))
	if len(entries) != 0 {
		t.Fatalf("left behind %d entries next to dest", len(entries))
	}
}

func TestPull(t *testing.T) {
	ctx := context.Background()
	host, _ := newRegistry(t)
	base := imagetest.GzipLayer(imagetest.Tar(map[string]string{"etc/os-release": "raksh", "old/gone": "x", "app/marker": marker}))
	top := imagetest.GzipLayer(imagetest.Tar(map[string]string{"old/gone": "<whiteout>", "app/top": "top"}))
	img, err := imagetest.Image(base, top)
	if err != nil {
		t.Fatal(err)
	}
	ref := host + "/raksh/plain:1"
	mdgst, err := imagetest.Push(ref, img)
	if err != nil {
		t.Fatal(err)
	}
	idxRef := host + "/raksh/index:1"
	if _, err := imagetest.PushIndex(idxRef, img); err != nil {
		t.Fatal(err)
	}

	for _, r := range []string{ref, idxRef} {
		t.Run(r, func(t *testing.T) {
			var dialer countingDialer
			dest := filepath.Join(t.TempDir(), "rootfs")
			res, err := Pull(ctx, r, dialer.dial, dest, WithManifestDigest(mdgst))
			if err != nil {
				t.Fatal(err)
			}
			if dialer.n.Load() == 0 {
				t.Fatal("Pull did not use the caller's dialer")
			}
			if res.Manifest != mdgst || len(res.Layers) != 2 || res.Layers[1].DiffID != top.DiffID {
				t.Fatalf("bad result %+v", res)
			}
			if b, err := os.ReadFile(filepath.Join(dest, "app", "marker")); err != nil || string(b) != marker {
				t.Fatalf("marker: %q %v", b, err)
			}
			if _, err := os.Stat(filepath.Join(dest, "old", "gone")); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("whiteout not applied: %v", err)
			}
			if _, err := os.Stat(filepath.Join(dest, "decoy")); err == nil {
				t.Fatal("unpacked the other platform's manifest")
			}
		})
	}

	t.Run("pinned digest mismatch", func(t *testing.T) {
		var dialer countingDialer
		dest := filepath.Join(t.TempDir(), "rootfs")
		_, err := Pull(ctx, ref, dialer.dial, dest, WithManifestDigest(digest.FromString("other")))
		if !errors.Is(err, ErrDigestMismatch) {
			t.Fatalf("want ErrDigestMismatch, got %v", err)
		}
		noLeftovers(t, dest)
	})
	t.Run("unknown image", func(t *testing.T) {
		var dialer countingDialer
		dest := filepath.Join(t.TempDir(), "rootfs")
		_, err := Pull(ctx, host+"/raksh/none:1", dialer.dial, dest)
		if !errdefs.IsNotFound(err) {
			t.Fatalf("want not found, got %v", err)
		}
		noLeftovers(t, dest)
	})
}

func TestPullCorruptLayer(t *testing.T) {
	ctx := context.Background()
	host, tp := newRegistry(t)
	l := imagetest.GzipLayer(imagetest.Tar(map[string]string{"app/marker": strings.Repeat(marker, 100)}))
	img, _ := imagetest.Image(l)
	ref := host + "/raksh/corrupt:1"
	if _, err := imagetest.Push(ref, img); err != nil {
		t.Fatal(err)
	}
	tp.digest.Store(l.Digest().String())
	var dialer countingDialer
	dest := filepath.Join(t.TempDir(), "rootfs")
	_, err := Pull(ctx, ref, dialer.dial, dest)
	if !errors.Is(err, ErrDigestMismatch) || !errdefs.IsDataLoss(err) {
		t.Fatalf("want ErrDigestMismatch, got %v", err)
	}
	noLeftovers(t, dest)
}

func TestPullEncrypted(t *testing.T) {
	ctx := context.Background()
	host, _ := newRegistry(t)
	priv, pub, err := imagetest.RSAKey()
	if err != nil {
		t.Fatal(err)
	}
	wrongPriv, _, err := imagetest.RSAKey()
	if err != nil {
		t.Fatal(err)
	}
	plain := imagetest.GzipLayer(imagetest.Tar(map[string]string{"app/secret": marker}))
	enc, err := imagetest.Encrypt(plain, pub)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(enc.Blob, []byte(marker)) {
		t.Fatal("ciphertext contains the marker")
	}
	img, _ := imagetest.Image(enc)
	ref := host + "/raksh/enc:1"
	if _, err := imagetest.Push(ref, img); err != nil {
		t.Fatal(err)
	}

	t.Run("right key", func(t *testing.T) {
		var dialer countingDialer
		dest := filepath.Join(t.TempDir(), "rootfs")
		if _, err := Pull(ctx, ref, dialer.dial, dest, WithKeyProvider(keyFiles(t, priv))); err != nil {
			t.Fatal(err)
		}
		if b, err := os.ReadFile(filepath.Join(dest, "app", "secret")); err != nil || string(b) != marker {
			t.Fatalf("secret: %q %v", b, err)
		}
	})
	for _, tc := range []struct {
		name string
		keys KeyProvider
	}{
		{"wrong key", keyFiles(t, wrongPriv)},
		{"no key provider", nil},
		{"missing key file", KeyFiles{"/nonexistent/key.pem"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var dialer countingDialer
			dest := filepath.Join(t.TempDir(), "rootfs")
			var opts []PullOpt
			if tc.keys != nil {
				opts = append(opts, WithKeyProvider(tc.keys))
			}
			_, err := Pull(ctx, ref, dialer.dial, dest, opts...)
			if !errors.Is(err, ErrDecrypt) {
				t.Fatalf("want ErrDecrypt, got %v", err)
			}
			if strings.Contains(err.Error(), "PRIVATE KEY") {
				t.Fatal("key material in error")
			}
			noLeftovers(t, dest)
		})
	}
}

// writeCache writes blobs as the host's ciphertext cache would hold them
// and returns their descriptor and the file of each blob digest.
func writeCache(t *testing.T, layers ...*imagetest.Layer) (*agentapi.RootfsDescriptor, map[string]string) {
	dir := t.TempDir()
	d := &agentapi.RootfsDescriptor{Mode: agentapi.RootfsDescriptor_LAYERS}
	files := map[string]string{}
	for _, l := range layers {
		p := filepath.Join(dir, l.Digest().Encoded())
		if err := os.WriteFile(p, l.Blob, 0o444); err != nil {
			t.Fatal(err)
		}
		files[l.Digest().String()] = p
		d.Layers = append(d.Layers, &agentapi.RootfsLayer{
			Digest: l.Digest().String(), DiffId: l.DiffID.String(), MediaType: l.MediaType,
			Annotations: l.Annotations, Size: int64(len(l.Blob)), Source: agentapi.RootfsLayer_BLOB,
		})
	}
	return d, files
}

// blobFiles opens each blob layer from the file of its digest, as the
// agent opens the blob stream the shim sends.
func blobFiles(files map[string]string) BlobOpener {
	return func(_ context.Context, l *agentapi.RootfsLayer) (io.ReadCloser, error) {
		p, ok := files[l.Digest]
		if !ok {
			return nil, fmt.Errorf("no blob %s: %w", l.Digest, errdefs.ErrNotFound)
		}
		return os.Open(p)
	}
}

func TestDecryptLayers(t *testing.T) {
	ctx := context.Background()
	priv, pub, err := imagetest.RSAKey()
	if err != nil {
		t.Fatal(err)
	}
	wrongPriv, _, _ := imagetest.RSAKey()
	base := imagetest.GzipLayer(imagetest.Tar(map[string]string{"etc/os-release": "raksh", "app/old": "x"}))
	top, err := imagetest.Encrypt(imagetest.GzipLayer(imagetest.Tar(map[string]string{"app/secret": marker, "app/old": "<whiteout>"})), pub)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("ok", func(t *testing.T) {
		desc, files := writeCache(t, base, top)
		dest := filepath.Join(t.TempDir(), "rootfs")
		res, err := DecryptLayers(ctx, desc, keyFiles(t, priv), dest, WithBlobOpener(blobFiles(files)))
		if err != nil {
			t.Fatal(err)
		}
		if len(res) != 2 || res[1].DiffID != top.DiffID {
			t.Fatalf("bad results %+v", res)
		}
		if b, err := os.ReadFile(filepath.Join(dest, "app", "secret")); err != nil || string(b) != marker {
			t.Fatalf("secret: %q %v", b, err)
		}
		if _, err := os.Stat(filepath.Join(dest, "app", "old")); !errors.Is(err, os.ErrNotExist) {
			t.Fatal("whiteout not applied")
		}
	})

	flip := func(b []byte) []byte {
		c := append([]byte(nil), b...)
		c[len(c)-40] ^= 0x01
		return c
	}
	for _, tc := range []struct {
		name   string
		mutate func(d *agentapi.RootfsDescriptor, files map[string]string)
		keys   KeyProvider
		want   error
	}{
		{"wrong key", nil, keyFiles(t, wrongPriv), ErrDecrypt},
		{"corrupt ciphertext", func(d *agentapi.RootfsDescriptor, files map[string]string) {
			p := files[d.Layers[1].Digest]
			os.Chmod(p, 0o644)
			b, _ := os.ReadFile(p)
			os.WriteFile(p, flip(b), 0o444)
		}, keyFiles(t, priv), ErrDigestMismatch},
		{"corrupt ciphertext, host lies about digest", func(d *agentapi.RootfsDescriptor, files map[string]string) {
			p := files[d.Layers[1].Digest]
			os.Chmod(p, 0o644)
			b, _ := os.ReadFile(p)
			b = flip(b)
			os.WriteFile(p, b, 0o444)
			d.Layers[1].Digest = digest.FromBytes(b).String()
			files[d.Layers[1].Digest] = p
		}, keyFiles(t, priv), ErrDecrypt},
		{"wrong diff id", func(d *agentapi.RootfsDescriptor, _ map[string]string) {
			d.Layers[1].DiffId = digest.FromString("x").String()
		}, keyFiles(t, priv), ErrDiffIDMismatch},
		{"unknown media type", func(d *agentapi.RootfsDescriptor, _ map[string]string) { d.Layers[0].MediaType = "application/x-tar" }, keyFiles(t, priv), ErrUnsupportedMediaType},
	} {
		t.Run(tc.name, func(t *testing.T) {
			desc, files := writeCache(t, base, top)
			if tc.mutate != nil {
				tc.mutate(desc, files)
			}
			dest := filepath.Join(t.TempDir(), "rootfs")
			_, err := DecryptLayers(ctx, desc, tc.keys, dest, WithBlobOpener(blobFiles(files)))
			if !errors.Is(err, tc.want) {
				t.Fatalf("want %v, got %v", tc.want, err)
			}
			noLeftovers(t, dest)
		})
	}

	t.Run("guest-pull descriptor", func(t *testing.T) {
		d := &agentapi.RootfsDescriptor{Mode: agentapi.RootfsDescriptor_GUEST_PULL, ImageRef: "r", Layers: []*agentapi.RootfsLayer{{Digest: "sha256:aa", Source: agentapi.RootfsLayer_REGISTRY}}}
		if _, err := DecryptLayers(ctx, d, nil, filepath.Join(t.TempDir(), "r"), WithBlobOpener(blobFiles(nil))); !errdefs.IsInvalidArgument(err) {
			t.Fatalf("want invalid argument, got %v", err)
		}
	})
}

func TestBuildRootfs(t *testing.T) {
	ctx := context.Background()
	host, _ := newRegistry(t)
	priv, pub, err := imagetest.RSAKey()
	if err != nil {
		t.Fatal(err)
	}
	base := imagetest.GzipLayer(imagetest.Tar(map[string]string{"etc/os-release": "mixed", "app/old": "x"}))
	top, err := imagetest.Encrypt(imagetest.GzipLayer(imagetest.Tar(map[string]string{"app/secret": marker, "app/old": "<whiteout>"})), pub)
	if err != nil {
		t.Fatal(err)
	}
	img, _ := imagetest.Image(base, top)
	ref := host + "/raksh/mixed:1"
	mdgst, err := imagetest.Push(ref, img)
	if err != nil {
		t.Fatal(err)
	}
	var dialer countingDialer
	check := func(t *testing.T, dest string) {
		t.Helper()
		if b, err := os.ReadFile(filepath.Join(dest, "app", "secret")); err != nil || string(b) != marker {
			t.Fatalf("secret: %q %v", b, err)
		}
		if _, err := os.Stat(filepath.Join(dest, "app", "old")); err == nil {
			t.Fatal("whiteout not applied")
		}
	}

	t.Run("guest pull", func(t *testing.T) {
		d := &agentapi.RootfsDescriptor{Mode: agentapi.RootfsDescriptor_GUEST_PULL, ImageRef: ref, ManifestDigest: mdgst.String(),
			Layers: []*agentapi.RootfsLayer{{Digest: base.Digest().String(), Source: agentapi.RootfsLayer_REGISTRY}, {Digest: top.Digest().String(), Source: agentapi.RootfsLayer_REGISTRY}}}
		dest := filepath.Join(t.TempDir(), "rootfs")
		if _, err := BuildRootfs(ctx, d, Sources{Dialer: dialer.dial, Keys: keyFiles(t, priv)}, dest); err != nil {
			t.Fatal(err)
		}
		check(t, dest)
	})

	mixed := func(t *testing.T) (*agentapi.RootfsDescriptor, BlobOpener) {
		d, files := writeCache(t, top)
		d.ImageRef, d.ManifestDigest = ref, mdgst.String()
		d.Layers = append([]*agentapi.RootfsLayer{{Digest: base.Digest().String(), DiffId: base.DiffID.String(), Source: agentapi.RootfsLayer_REGISTRY}}, d.Layers...)
		return d, blobFiles(files)
	}
	t.Run("mixed: plain layer from the registry, encrypted from the cache", func(t *testing.T) {
		before := dialer.n.Load()
		dest := filepath.Join(t.TempDir(), "rootfs")
		d, open := mixed(t)
		if _, err := BuildRootfs(ctx, d, Sources{Dialer: dialer.dial, Keys: keyFiles(t, priv), OpenBlob: open}, dest); err != nil {
			t.Fatal(err)
		}
		check(t, dest)
		if dialer.n.Load() == before {
			t.Fatal("plain layer not fetched from the registry")
		}
	})
	t.Run("mixed without registry access", func(t *testing.T) {
		dest := filepath.Join(t.TempDir(), "rootfs")
		d, open := mixed(t)
		if _, err := BuildRootfs(ctx, d, Sources{Keys: keyFiles(t, priv), OpenBlob: open}, dest); !errdefs.IsFailedPrecondition(err) {
			t.Fatalf("want failed precondition, got %v", err)
		}
		noLeftovers(t, dest)
	})
	t.Run("guest pull with a wrong manifest digest", func(t *testing.T) {
		d := &agentapi.RootfsDescriptor{Mode: agentapi.RootfsDescriptor_GUEST_PULL, ImageRef: ref, ManifestDigest: digest.FromString("x").String(),
			Layers: []*agentapi.RootfsLayer{{Digest: base.Digest().String(), Source: agentapi.RootfsLayer_REGISTRY}}}
		dest := filepath.Join(t.TempDir(), "rootfs")
		if _, err := BuildRootfs(ctx, d, Sources{Dialer: dialer.dial}, dest); !errors.Is(err, ErrDigestMismatch) {
			t.Fatalf("want ErrDigestMismatch, got %v", err)
		}
		noLeftovers(t, dest)
	})
}
