package image

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/pkg/archive"
	"github.com/containerd/containerd/v2/pkg/archive/compression"
	"github.com/containers/ocicrypt"
	encconfig "github.com/containers/ocicrypt/config"

	"github.com/raksh-project/raksh/agent/image/imagetest"
	agentapi "github.com/raksh-project/raksh/api/agent/v1"
)

// benchLayer returns an encrypted gzip layer of 64 files, 32 MiB of
// half-compressible data in total, and the size of its tar stream.
func benchLayer(b *testing.B, pub []byte) (*imagetest.Layer, int) {
	b.Helper()
	rng := rand.New(rand.NewSource(1))
	files := map[string]string{}
	for i := 0; i < 64; i++ {
		buf := make([]byte, 512<<10)
		rng.Read(buf[:len(buf)/2]) // random half, zero half
		files[fmt.Sprintf("data/f%02d", i)] = string(buf)
	}
	t := imagetest.Tar(files)
	enc, err := imagetest.Encrypt(imagetest.GzipLayer(t), pub)
	if err != nil {
		b.Fatal(err)
	}
	return enc, len(t)
}

// BenchmarkDecryptUnpack measures, in one run and on the same layer, the
// guest path (DecryptLayers: spool + digest check + ocicrypt decrypt +
// gunzip + diff ID check + archive.Apply), the bare library path (ocicrypt
// DecryptLayer + DecompressStream + archive.Apply, no checks), and the raw
// AES-256-CTR + HMAC-SHA256 throughput of this CPU over the ciphertext.
// Throughput is in MB/s of uncompressed tar.
func BenchmarkDecryptUnpack(b *testing.B) {
	ctx := context.Background()
	priv, pub, err := imagetest.RSAKey()
	if err != nil {
		b.Fatal(err)
	}
	layer, tarSize := benchLayer(b, pub)
	dir := b.TempDir()
	blob := filepath.Join(dir, "blob")
	if err := os.WriteFile(blob, layer.Blob, 0o444); err != nil {
		b.Fatal(err)
	}
	keyFile := filepath.Join(dir, "key.pem")
	os.WriteFile(keyFile, priv, 0o600)
	desc := &agentapi.RootfsDescriptor{Mode: agentapi.RootfsDescriptor_LAYERS, Layers: []*agentapi.RootfsLayer{{
		Digest: layer.Digest().String(), DiffId: layer.DiffID.String(), MediaType: layer.MediaType,
		Annotations: layer.Annotations, Size: int64(len(layer.Blob)), Source: agentapi.RootfsLayer_BLOB,
	}}}
	open := blobFiles(map[string]string{layer.Digest().String(): blob})
	cc, err := encconfig.DecryptWithPrivKeys([][]byte{priv}, [][]byte{nil})
	if err != nil {
		b.Fatal(err)
	}
	key := make([]byte, 32)
	iv := make([]byte, aes.BlockSize)

	var tRaksh, tLib, tRaw time.Duration
	b.SetBytes(int64(tarSize))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// Guest path.
		dest := filepath.Join(dir, fmt.Sprintf("r%d", i))
		start := time.Now()
		if _, err := DecryptLayers(ctx, desc, KeyFiles{keyFile}, dest, WithBlobOpener(open)); err != nil {
			b.Fatal(err)
		}
		tRaksh += time.Since(start)

		// Library path, no verification.
		dest2 := filepath.Join(dir, fmt.Sprintf("l%d", i))
		os.MkdirAll(dest2, 0o755)
		start = time.Now()
		f, _ := os.Open(blob)
		plain, _, err := ocicrypt.DecryptLayer(cc.DecryptConfig, f, layer.Descriptor(), false)
		if err != nil {
			b.Fatal(err)
		}
		ds, err := compression.DecompressStream(plain)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := archive.Apply(ctx, dest2, ds); err != nil {
			b.Fatal(err)
		}
		ds.Close()
		f.Close()
		tLib += time.Since(start)

		// Raw AES-CTR + HMAC-SHA256 over the ciphertext.
		start = time.Now()
		blk, _ := aes.NewCipher(key)
		ctr := cipher.NewCTR(blk, iv)
		mac := hmac.New(sha256.New, key)
		w := cipher.StreamWriter{S: ctr, W: mac}
		if _, err := io.Copy(w, bytes.NewReader(layer.Blob)); err != nil {
			b.Fatal(err)
		}
		mac.Sum(nil)
		tRaw += time.Since(start)

		b.StopTimer()
		os.RemoveAll(dest)
		os.RemoveAll(dest2)
		b.StartTimer()
	}
	b.StopTimer()
	mbps := func(d time.Duration) float64 { return float64(tarSize) * float64(b.N) / d.Seconds() / 1e6 }
	b.ReportMetric(mbps(tRaksh), "raksh-MB/s")
	b.ReportMetric(mbps(tLib), "ocicrypt+archive-MB/s")
	b.ReportMetric(float64(len(layer.Blob))*float64(b.N)/tRaw.Seconds()/1e6, "aes-ctr+hmac-MB/s")
	b.ReportMetric(float64(tRaksh)/float64(tLib), "raksh/ocicrypt+archive")
}
