// Package imagetest builds small OCI images for tests and benchmarks: plain
// and ocicrypt (JWE) encrypted layers, pushed with go-containerregistry to a
// registry (typically its pkg/registry on 127.0.0.1).
package imagetest

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net/http/httptest"
	"runtime"
	"sort"
	"strings"

	"github.com/containers/ocicrypt"
	encconfig "github.com/containers/ocicrypt/config"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// MediaTypeLayerGzipEnc is ocicrypt's media type of an encrypted gzip layer.
const MediaTypeLayerGzipEnc = "application/vnd.oci.image.layer.v1.tar+gzip+encrypted"

// Layer is a layer blob with its descriptor data.
type Layer struct {
	Blob        []byte // as stored in the registry
	DiffID      digest.Digest
	MediaType   string
	Annotations map[string]string
}

// Digest returns the digest of the blob.
func (l *Layer) Digest() digest.Digest { return digest.FromBytes(l.Blob) }

// Descriptor returns the OCI descriptor of the layer.
func (l *Layer) Descriptor() ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: l.MediaType, Digest: l.Digest(), Size: int64(len(l.Blob)), Annotations: l.Annotations}
}

// Tar returns a tar stream holding files (path -> content; a content of
// "<whiteout>" writes an OCI whiteout for path instead), in path order.
func Tar(files map[string]string) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	dirs := map[string]bool{}
	for _, n := range names {
		parts := strings.Split(n, "/")
		for i := 1; i < len(parts); i++ {
			d := strings.Join(parts[:i], "/") + "/"
			if !dirs[d] {
				dirs[d] = true
				tw.WriteHeader(&tar.Header{Name: d, Typeflag: tar.TypeDir, Mode: 0o755})
			}
		}
		body := files[n]
		if body == "<whiteout>" {
			i := strings.LastIndex(n, "/")
			n = n[:i+1] + ".wh." + n[i+1:]
			body = ""
		}
		tw.WriteHeader(&tar.Header{Name: n, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(body))})
		tw.Write([]byte(body))
	}
	tw.Close()
	return buf.Bytes()
}

// GzipLayer returns a plain gzip layer of the tar stream t.
func GzipLayer(t []byte) *Layer {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(t)
	zw.Close()
	return &Layer{Blob: buf.Bytes(), DiffID: digest.FromBytes(t), MediaType: ocispec.MediaTypeImageLayerGzip}
}

// Encrypt returns l encrypted with ocicrypt for the JWE recipients pubKeys
// (PEM public keys), carrying ocicrypt's annotations.
func Encrypt(l *Layer, pubKeys ...[]byte) (*Layer, error) {
	cc, err := encconfig.EncryptWithJwe(pubKeys)
	if err != nil {
		return nil, err
	}
	r, fin, err := ocicrypt.EncryptLayer(cc.EncryptConfig, bytes.NewReader(l.Blob), l.Descriptor())
	if err != nil {
		return nil, err
	}
	ct, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	ann, err := fin()
	if err != nil {
		return nil, err
	}
	return &Layer{Blob: ct, DiffID: l.DiffID, MediaType: MediaTypeLayerGzipEnc, Annotations: ann}, nil
}

// RSAKey returns a fresh RSA key pair as PEM (PKCS#8 private, PKIX public).
func RSAKey() (priv, pub []byte, err error) {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, nil, err
	}
	pk, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, nil, err
	}
	pb, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pk}), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pb}), nil
}

// ggcrLayer adapts Layer to go-containerregistry.
type ggcrLayer struct{ l *Layer }

func hash(d digest.Digest) v1.Hash {
	return v1.Hash{Algorithm: d.Algorithm().String(), Hex: d.Encoded()}
}

func (g ggcrLayer) Digest() (v1.Hash, error) { return hash(g.l.Digest()), nil }
func (g ggcrLayer) DiffID() (v1.Hash, error) { return hash(g.l.DiffID), nil }
func (g ggcrLayer) Compressed() (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(g.l.Blob)), nil
}
func (g ggcrLayer) Uncompressed() (io.ReadCloser, error) {
	return nil, fmt.Errorf("not supported")
}
func (g ggcrLayer) Size() (int64, error)                { return int64(len(g.l.Blob)), nil }
func (g ggcrLayer) MediaType() (types.MediaType, error) { return types.MediaType(g.l.MediaType), nil }

// Image returns an OCI image of layers (bottom first) for this platform.
func Image(layers ...*Layer) (v1.Image, error) {
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = runtime.GOOS, runtime.GOARCH
	cf.Config.Cmd = []string{"/bin/true"}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return nil, err
	}
	for _, l := range layers {
		img, err = mutate.Append(img, mutate.Addendum{Layer: ggcrLayer{l}, Annotations: l.Annotations, MediaType: types.MediaType(l.MediaType)})
		if err != nil {
			return nil, err
		}
	}
	return img, nil
}

// Push writes img as ref (e.g. "127.0.0.1:5000/raksh/app:1") and returns the manifest digest.
func Push(ref string, img v1.Image) (digest.Digest, error) {
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		return "", err
	}
	if err := remote.Write(r, img); err != nil {
		return "", err
	}
	d, err := img.Digest()
	if err != nil {
		return "", err
	}
	return digest.Digest(d.String()), nil
}

// PushIndex writes an index holding img for this platform and a decoy
// manifest for another platform, and returns the index digest.
func PushIndex(ref string, img v1.Image) (digest.Digest, error) {
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		return "", err
	}
	decoy, err := Image(GzipLayer(Tar(map[string]string{"decoy": "wrong platform"})))
	if err != nil {
		return "", err
	}
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	idx = mutate.AppendManifests(idx,
		mutate.IndexAddendum{Add: decoy, Descriptor: v1.Descriptor{MediaType: types.OCIManifestSchema1, Platform: &v1.Platform{OS: "plan9", Architecture: "mips"}}},
		mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{MediaType: types.OCIManifestSchema1, Platform: &v1.Platform{OS: runtime.GOOS, Architecture: runtime.GOARCH}}},
	)
	if err := remote.WriteIndex(r, idx); err != nil {
		return "", err
	}
	d, err := idx.Digest()
	if err != nil {
		return "", err
	}
	return digest.Digest(d.String()), nil
}

// Registry starts go-containerregistry's in-memory registry on 127.0.0.1
// and returns its host:port and a stop function.
func Registry() (string, func()) {
	srv := httptest.NewServer(registry.New(registry.Logger(discardLogger())))
	return strings.TrimPrefix(srv.URL, "http://"), srv.Close
}
