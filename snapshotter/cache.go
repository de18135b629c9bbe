package snapshotter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/continuity"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// BlobCache is a digest-keyed store of layer blobs exactly as fetched from the
// registry (for encrypted layers: ciphertext), shared by every snapshot that
// uses them. It never decrypts or decompresses. Layout:
//
//	<root>/blobs/<alg>/<hex>        the blob (read-only, 0444)
//	<root>/blobs/<alg>/<hex>.json   BlobMeta: media type, size, annotations
//	<root>/ingest/                  partial writes (removed on start)
//
// A blob is only visible once fully written and verified against its digest:
// writes go to ingest/ and are renamed into place (meta first, blob last).
type BlobCache struct {
	root string
}

// BlobMeta is what the cache keeps about a blob besides its bytes.
type BlobMeta struct {
	MediaType   string            `json:"media_type"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// NewBlobCache opens (creating if needed) a cache in root and discards
// partial writes left by a crash.
func NewBlobCache(root string) (*BlobCache, error) {
	if err := os.RemoveAll(filepath.Join(root, "ingest")); err != nil {
		return nil, err
	}
	for _, d := range []string{"blobs", "ingest"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o711); err != nil {
			return nil, err
		}
	}
	return &BlobCache{root: root}, nil
}

// Path returns the host path of the blob with digest d (whether or not present).
func (c *BlobCache) Path(d digest.Digest) string {
	return filepath.Join(c.root, "blobs", d.Algorithm().String(), d.Encoded())
}

// Has reports whether the blob is fully present.
func (c *BlobCache) Has(d digest.Digest) bool {
	if d.Validate() != nil {
		return false
	}
	_, err := os.Stat(c.Path(d))
	return err == nil
}

// Meta returns the metadata of a present blob.
func (c *BlobCache) Meta(d digest.Digest) (BlobMeta, error) {
	var m BlobMeta
	if err := d.Validate(); err != nil {
		return m, fmt.Errorf("invalid digest: %w", errdefs.ErrInvalidArgument)
	}
	b, err := os.ReadFile(c.Path(d) + ".json")
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return m, fmt.Errorf("blob %s: %w", d, errdefs.ErrNotFound)
		}
		return m, err
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("corrupt cache metadata for %s: %w", d, err)
	}
	return m, nil
}

// Put stores the blob described by desc, read from r, unless already present.
// The bytes are verified against desc.Digest and desc.Size before the blob
// becomes visible; on mismatch nothing is left behind and the error wraps
// errdefs.ErrFailedPrecondition.
func (c *BlobCache) Put(ctx context.Context, desc ocispec.Descriptor, r io.Reader) (string, error) {
	if err := desc.Digest.Validate(); err != nil {
		return "", fmt.Errorf("invalid layer digest: %w", errdefs.ErrInvalidArgument)
	}
	path := c.Path(desc.Digest)
	if c.Has(desc.Digest) {
		return path, nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o711); err != nil {
		return "", err
	}
	tmp, err := os.CreateTemp(filepath.Join(c.root, "ingest"), desc.Digest.Encoded()+"-")
	if err != nil {
		return "", err
	}
	defer func() {
		tmp.Close()
		os.Remove(tmp.Name())
	}()
	verifier := desc.Digest.Verifier()
	n, err := io.Copy(io.MultiWriter(tmp, verifier), r)
	if err != nil {
		return "", fmt.Errorf("failed to copy blob %s: %w", desc.Digest, err)
	}
	if desc.Size > 0 && n != desc.Size {
		return "", fmt.Errorf("blob %s: got %d bytes, want %d: %w", desc.Digest, n, desc.Size, errdefs.ErrFailedPrecondition)
	}
	if !verifier.Verified() {
		return "", fmt.Errorf("blob %s: content does not match digest: %w", desc.Digest, errdefs.ErrFailedPrecondition)
	}
	if err := tmp.Chmod(0o444); err != nil {
		return "", err
	}
	if err := tmp.Sync(); err != nil {
		return "", err
	}
	meta, err := json.Marshal(BlobMeta{MediaType: desc.MediaType, Size: n, Annotations: desc.Annotations})
	if err != nil {
		return "", err
	}
	if err := continuity.AtomicWriteFile(path+".json", meta, 0o444); err != nil {
		return "", err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return "", err
	}
	log.G(ctx).WithField("digest", desc.Digest).WithField("size", n).Debug("cached layer blob")
	return path, nil
}

// Prune removes blobs whose digest is not in used.
func (c *BlobCache) Prune(ctx context.Context, used map[string]struct{}) error {
	algs, err := os.ReadDir(filepath.Join(c.root, "blobs"))
	if err != nil {
		return err
	}
	for _, alg := range algs {
		dir := filepath.Join(c.root, "blobs", alg.Name())
		entries, err := os.ReadDir(dir)
		if err != nil {
			return err
		}
		for _, e := range entries {
			name := e.Name()
			if strings.HasSuffix(name, ".json") {
				if _, err := os.Stat(filepath.Join(dir, strings.TrimSuffix(name, ".json"))); err == nil {
					continue
				}
			} else if _, ok := used[alg.Name()+":"+name]; ok {
				continue
			}
			// Blob first, then its metadata (Has only looks at the blob).
			if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				log.G(ctx).WithError(err).WithField("blob", name).Warn("failed to prune cached blob")
				continue
			}
			if !strings.HasSuffix(name, ".json") {
				os.Remove(filepath.Join(dir, name+".json"))
			}
		}
	}
	return nil
}

// Size returns the total size in bytes of the cached blobs.
func (c *BlobCache) Size() (int64, error) {
	var total int64
	err := filepath.WalkDir(filepath.Join(c.root, "blobs"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		total += info.Size()
		return nil
	})
	return total, err
}
