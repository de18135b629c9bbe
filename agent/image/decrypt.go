package image

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/raksh-project/raksh/snapshotter/rootfs"
)

// BlobOpener opens the ciphertext blob of a layer the host shared into the
// VM (by default os.Open of the layer's Path; the agent maps host paths to
// where the share is mounted in the guest, or opens a host stream).
type BlobOpener func(ctx context.Context, l rootfs.Layer) (io.ReadCloser, error)

type decryptOptions struct {
	open BlobOpener
}

// DecryptOpt configures DecryptLayers.
type DecryptOpt func(*decryptOptions)

// WithBlobOpener sets how layer blobs are opened.
func WithBlobOpener(o BlobOpener) DecryptOpt {
	return func(d *decryptOptions) { d.open = o }
}

// DecryptLayers builds a rootfs in dest from a raksh rootfs descriptor of
// mode "layers": each blob layer is read (ciphertext, as cached by the host),
// its digest checked, decrypted with keys from keys when encrypted,
// decompressed, checked against its diff ID and unpacked, bottom to top.
// dest must not exist or be empty; on error nothing is left behind.
// Host-unpacked plain layers (source "dir") are not supported here.
func DecryptLayers(ctx context.Context, desc *rootfs.Descriptor, keys KeyProvider, dest string, opts ...DecryptOpt) ([]LayerResult, error) {
	o := decryptOptions{open: func(_ context.Context, l rootfs.Layer) (io.ReadCloser, error) { return os.Open(l.Path) }}
	for _, opt := range opts {
		opt(&o)
	}
	if desc == nil {
		return nil, fmt.Errorf("no rootfs descriptor: %w", errdefs.ErrInvalidArgument)
	}
	if err := desc.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", err, errdefs.ErrInvalidArgument)
	}
	if desc.Mode != rootfs.ModeLayers {
		return nil, fmt.Errorf("rootfs descriptor mode %q is not %q (use Pull): %w", desc.Mode, rootfs.ModeLayers, errdefs.ErrInvalidArgument)
	}
	tmp, commit, discard, err := stage(dest)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			discard()
		}
	}()
	var results []LayerResult
	for _, l := range desc.Layers {
		if l.Source != rootfs.SourceBlob {
			return nil, fmt.Errorf("layer %s: source %q: %w", l.Digest, l.Source, errdefs.ErrNotImplemented)
		}
		d, err := digest.Parse(l.Digest)
		if err != nil {
			return nil, fmt.Errorf("layer digest %q: %w", l.Digest, errdefs.ErrInvalidArgument)
		}
		diffID, err := digest.Parse(l.DiffID)
		if err != nil {
			return nil, fmt.Errorf("layer %s: diff ID %q: %w", l.Digest, l.DiffID, errdefs.ErrInvalidArgument)
		}
		rc, err := o.open(ctx, l)
		if err != nil {
			return nil, fmt.Errorf("failed to open layer %s: %w", l.Digest, err)
		}
		err = applyLayer(ctx, tmp, rc, ocispec.Descriptor{MediaType: l.MediaType, Digest: d, Size: l.Size, Annotations: l.Annotations}, diffID, keys)
		rc.Close()
		if err != nil {
			return nil, err
		}
		results = append(results, LayerResult{Digest: d, DiffID: diffID})
		log.G(ctx).WithField("layer", d).Debug("layer decrypted and unpacked")
	}
	if err := commit(); err != nil {
		return nil, err
	}
	ok = true
	return results, nil
}
