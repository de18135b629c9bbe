package image

import (
	"context"
	"fmt"
	"io"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	agentapi "github.com/raksh-project/raksh/api/agent/v1"
)

// BlobOpener opens the ciphertext blob of a BLOB layer, which the host sends
// into the VM (the agent opens the layer's blob stream).
type BlobOpener func(ctx context.Context, l *agentapi.RootfsLayer) (io.ReadCloser, error)

type decryptOptions struct {
	open BlobOpener
}

// DecryptOpt configures DecryptLayers.
type DecryptOpt func(*decryptOptions)

// WithBlobOpener sets how layer blobs are opened (required).
func WithBlobOpener(o BlobOpener) DecryptOpt {
	return func(d *decryptOptions) { d.open = o }
}

// DecryptLayers builds a rootfs in dest from a rootfs descriptor of mode
// LAYERS: each blob layer is read (ciphertext, as cached by the host),
// its digest checked, decrypted with keys from keys when encrypted,
// decompressed, checked against its diff ID and unpacked, bottom to top.
// dest must not exist or be empty; on error nothing is left behind.
// Layers of source REGISTRY are not supported here (BuildRootfs fetches
// them).
func DecryptLayers(ctx context.Context, desc *agentapi.RootfsDescriptor, keys KeyProvider, dest string, opts ...DecryptOpt) ([]LayerResult, error) {
	var o decryptOptions
	for _, opt := range opts {
		opt(&o)
	}
	if err := ValidateDescriptor(desc); err != nil {
		return nil, fmt.Errorf("%w: %w", err, errdefs.ErrInvalidArgument)
	}
	if desc.GetMode() != agentapi.RootfsDescriptor_LAYERS {
		return nil, fmt.Errorf("rootfs descriptor mode %v is not %v (use Pull): %w", desc.GetMode(), agentapi.RootfsDescriptor_LAYERS, errdefs.ErrInvalidArgument)
	}
	if o.open == nil {
		return nil, fmt.Errorf("no blob opener for the descriptor's blob layers: %w", errdefs.ErrFailedPrecondition)
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
		if l.GetSource() != agentapi.RootfsLayer_BLOB {
			return nil, fmt.Errorf("layer %s: source %v: %w", l.Digest, l.GetSource(), errdefs.ErrNotImplemented)
		}
		d, err := digest.Parse(l.Digest)
		if err != nil {
			return nil, fmt.Errorf("layer digest %q: %w", l.Digest, errdefs.ErrInvalidArgument)
		}
		diffID, err := digest.Parse(l.DiffId)
		if err != nil {
			return nil, fmt.Errorf("layer %s: diff ID %q: %w", l.Digest, l.DiffId, errdefs.ErrInvalidArgument)
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
