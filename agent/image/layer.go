// Package image is the guest side of Raksh image handling: the agent pulls an
// image itself through a host-forwarded stream (Pull), or decrypts the
// ciphertext layers the host cached and shared into the VM (DecryptLayers).
// Every byte from the host or the registry is checked: blob digests, the
// digest of decrypted (still compressed) layers against the one sealed in the
// ocicrypt private options, and diff IDs of the uncompressed tar streams.
// Layers are unpacked with containerd's archive package into a staging
// directory that is renamed to the destination only when every layer checked
// out; on any error nothing is left behind.
package image

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/pkg/archive"
	"github.com/containerd/containerd/v2/pkg/archive/compression"
	"github.com/containerd/errdefs"
	"github.com/containers/ocicrypt"
	encconfig "github.com/containers/ocicrypt/config"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Errors callers can tell apart (all are also wrapped with an errdefs class).
var (
	// ErrDigestMismatch: a blob does not match its descriptor digest or size.
	ErrDigestMismatch = errors.New("digest mismatch")
	// ErrDiffIDMismatch: an uncompressed layer does not match its diff ID.
	ErrDiffIDMismatch = errors.New("diff ID mismatch")
	// ErrDecrypt: an encrypted layer could not be decrypted or authenticated
	// (no matching key, wrong key, tampered ciphertext).
	ErrDecrypt = errors.New("layer decryption failed")
	// ErrUnsupportedMediaType: not a layer media type this package handles.
	ErrUnsupportedMediaType = errors.New("unsupported layer media type")
)

// KeyProvider supplies private keys for ocicrypt layer decryption. The
// agent's first implementation reads key files (KeyFiles); the key broker
// client implements the same interface later. Keys must never be logged.
type KeyProvider interface {
	// PrivateKeys returns the private keys (PEM, DER or JWK, unencrypted)
	// that may unwrap the layer key of layer; ocicrypt tries each.
	PrivateKeys(ctx context.Context, layer ocispec.Descriptor) ([][]byte, error)
}

// KeyFiles is a KeyProvider reading private keys from files (the agent's
// config), re-read on every call.
type KeyFiles []string

// PrivateKeys implements KeyProvider.
func (k KeyFiles) PrivateKeys(ctx context.Context, _ ocispec.Descriptor) ([][]byte, error) {
	var keys [][]byte
	for _, p := range k {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("failed to read key file %s: %w", p, err)
		}
		keys = append(keys, b)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("no key files configured: %w", errdefs.ErrNotFound)
	}
	return keys, nil
}

// IsEncrypted reports whether mediaType is an ocicrypt encrypted layer.
func IsEncrypted(mediaType string) bool {
	return strings.HasSuffix(mediaType, "+encrypted")
}

// LayerResult records what was checked for one layer.
type LayerResult struct {
	Digest digest.Digest `json:"digest"`
	DiffID digest.Digest `json:"diff_id"`
}

// applyLayer unpacks one layer blob r (described by desc) into root,
// verifying desc.Digest, the decrypted digest for encrypted layers and
// diffID. root is a staging directory the caller discards on error.
func applyLayer(ctx context.Context, root string, r io.Reader, desc ocispec.Descriptor, diffID digest.Digest, keys KeyProvider) error {
	if !images.IsLayerType(desc.MediaType) {
		return fmt.Errorf("layer %s: %w %q: %w", desc.Digest, ErrUnsupportedMediaType, desc.MediaType, errdefs.ErrNotImplemented)
	}
	if err := desc.Digest.Validate(); err != nil {
		return fmt.Errorf("layer digest %q: %w", desc.Digest, errdefs.ErrInvalidArgument)
	}
	if err := diffID.Validate(); err != nil {
		return fmt.Errorf("layer %s: diff ID %q: %w", desc.Digest, diffID, errdefs.ErrInvalidArgument)
	}
	// Spool and verify the whole blob before parsing a byte of it: the
	// decompressor, ocicrypt and the tar reader only ever see content that
	// matches the digest (and a host cannot change a shared file under us).
	spool, err := os.CreateTemp("", "raksh-layer-")
	if err != nil {
		return err
	}
	defer func() {
		spool.Close()
		os.Remove(spool.Name())
	}()
	blobV := desc.Digest.Verifier()
	n, err := io.Copy(io.MultiWriter(spool, blobV), r)
	if err != nil {
		return fmt.Errorf("failed to read layer %s: %w", desc.Digest, err)
	}
	if !blobV.Verified() || (desc.Size > 0 && n != desc.Size) {
		return fmt.Errorf("layer %s: blob content: %w: %w", desc.Digest, ErrDigestMismatch, errdefs.ErrDataLoss)
	}
	if _, err := spool.Seek(0, io.SeekStart); err != nil {
		return err
	}
	counter := spool
	var (
		src    io.Reader = bufio.NewReaderSize(counter, 1<<20)
		plainV digest.Verifier
	)
	if IsEncrypted(desc.MediaType) {
		if keys == nil {
			return fmt.Errorf("layer %s is encrypted and no key provider is configured: %w: %w", desc.Digest, ErrDecrypt, errdefs.ErrFailedPrecondition)
		}
		privKeys, err := keys.PrivateKeys(ctx, desc)
		if err != nil {
			return fmt.Errorf("layer %s: no decryption keys: %w: %w", desc.Digest, ErrDecrypt, err)
		}
		cc, err := encconfig.DecryptWithPrivKeys(privKeys, make([][]byte, len(privKeys)))
		if err != nil {
			return fmt.Errorf("layer %s: unusable decryption keys: %w: %w", desc.Digest, ErrDecrypt, errdefs.ErrInvalidArgument)
		}
		plain, plainDigest, err := ocicrypt.DecryptLayer(cc.DecryptConfig, src, desc, false)
		if err != nil {
			// ocicrypt's message names the key wrappers tried, never key material.
			return fmt.Errorf("layer %s: %w: %w: %v", desc.Digest, ErrDecrypt, errdefs.ErrPermissionDenied, err)
		}
		// ocicrypt v1.3.x returns an empty digest here (the AES-CTR cipher does
		// not hand back the sealed one); integrity then rests on the HMAC over
		// the ciphertext, checked at EOF, and on the diff ID.
		if plainDigest != "" {
			if plainDigest.Validate() != nil {
				return fmt.Errorf("layer %s: decrypted options carry an invalid digest: %w: %w", desc.Digest, ErrDecrypt, errdefs.ErrInvalidArgument)
			}
			plainV = plainDigest.Verifier()
			plain = io.TeeReader(plain, plainV)
		}
		src = &errTagReader{r: plain}
	}
	ds, err := compression.DecompressStream(src)
	if err != nil {
		return layerReadError(desc, err)
	}
	defer ds.Close()
	diffV := diffID.Verifier()
	tarStream := io.TeeReader(ds, diffV)
	var aopts []archive.ApplyOpt
	if os.Geteuid() != 0 {
		aopts = append(aopts, archive.WithNoSameOwner())
	}
	if _, err := archive.Apply(ctx, root, tarStream, aopts...); err != nil {
		if rerr := layerReadError(desc, err); errors.Is(rerr, ErrDecrypt) {
			return rerr
		}
		return fmt.Errorf("failed to unpack layer %s: %w", desc.Digest, err)
	}
	// Drain trailing tar padding and the rest of the blob so every digest
	// covers every byte (and the HMAC of encrypted layers is checked).
	if _, err := io.Copy(io.Discard, tarStream); err != nil {
		return layerReadError(desc, err)
	}
	if _, err := io.Copy(io.Discard, src); err != nil {
		return layerReadError(desc, err)
	}
	if plainV != nil && !plainV.Verified() {
		return fmt.Errorf("layer %s: decrypted content does not match its sealed digest: %w: %w", desc.Digest, ErrDecrypt, errdefs.ErrDataLoss)
	}
	if !diffV.Verified() {
		return fmt.Errorf("layer %s: uncompressed content does not match %s: %w: %w", desc.Digest, diffID, ErrDiffIDMismatch, errdefs.ErrDataLoss)
	}
	return nil
}

// errTagReader marks read errors of the decrypted stream as decryption
// failures (ocicrypt reports HMAC failures as read errors at the end).
type errTagReader struct{ r io.Reader }

type decryptReadError struct{ err error }

func (e decryptReadError) Error() string { return e.err.Error() }
func (e decryptReadError) Unwrap() error { return e.err }

func (t *errTagReader) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	if err != nil && err != io.EOF {
		err = decryptReadError{err}
	}
	return n, err
}

func layerReadError(desc ocispec.Descriptor, err error) error {
	var de decryptReadError
	if errors.As(err, &de) {
		return fmt.Errorf("layer %s: ciphertext failed authentication: %w: %w", desc.Digest, ErrDecrypt, errdefs.ErrDataLoss)
	}
	return fmt.Errorf("layer %s: %w", desc.Digest, err)
}

// stage creates a staging directory next to dest and returns a commit
// function renaming it to dest and a discard function; dest must not exist
// or be an empty directory. (A directory is renamed: continuity's
// AtomicWriteFile, for single files, does not apply.)
func stage(dest string) (string, func() error, func(), error) {
	if entries, err := os.ReadDir(dest); err == nil && len(entries) > 0 {
		return "", nil, nil, fmt.Errorf("destination %s is not empty: %w", dest, errdefs.ErrAlreadyExists)
	}
	if err := os.MkdirAll(filepath.Dir(dest), 0o755); err != nil {
		return "", nil, nil, err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dest), "."+filepath.Base(dest)+"-partial-")
	if err != nil {
		return "", nil, nil, err
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		os.RemoveAll(tmp)
		return "", nil, nil, err
	}
	commit := func() error {
		_ = os.Remove(dest) // empty or absent
		return os.Rename(tmp, dest)
	}
	discard := func() { os.RemoveAll(tmp) }
	return tmp, commit, discard, nil
}
