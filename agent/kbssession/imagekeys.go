package kbssession

import (
	"context"
	"fmt"
	"strings"

	"github.com/containerd/errdefs"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/raksh-project/raksh/agent/image"
	"github.com/raksh-project/raksh/agent/unseal"
	"github.com/raksh-project/raksh/envelope"
)

// ImageKeysArg is the kernel parameter (raksh.image_keys, without the
// prefix) naming, comma separated, the key broker resources holding the
// image decryption keys: runtime.KernelParamImageKeys, rendered by the
// shim from the runtime config's image_keys. Being on the command line, it
// is part of the guest's launch measurement.
const ImageKeysArg = "image_keys"

// ParseImageKeys returns the resource paths (repo/type/tag) of v.
func ParseImageKeys(v string) ([]string, error) {
	var paths []string
	for _, p := range strings.Split(v, ",") {
		if _, err := envelope.ParseKeyID(envelope.KeyIDScheme + p); err != nil {
			return nil, fmt.Errorf("raksh.%s: %q is not a key broker resource path repo/type/tag: %w", ImageKeysArg, p, errdefs.ErrInvalidArgument)
		}
		paths = append(paths, p)
	}
	return paths, nil
}

// ImageKeys is an image.KeyProvider fetching the private keys of
// encrypted image layers from the key broker: every configured resource,
// on every call (the broker's policy decides each release; the keys are
// only ever in guest memory and are not kept). Any resource the broker
// refuses fails the layer.
type ImageKeys struct {
	paths []string
	kbs   func(ctx context.Context) (unseal.ResourceGetter, error)
}

// NewImageKeys returns the key provider fetching the resources at paths
// (repo/type/tag) from the broker kbs returns.
func NewImageKeys(paths []string, kbs func(ctx context.Context) (unseal.ResourceGetter, error)) *ImageKeys {
	return &ImageKeys{paths: paths, kbs: kbs}
}

var _ image.KeyProvider = (*ImageKeys)(nil)

// PrivateKeys implements image.KeyProvider.
func (k *ImageKeys) PrivateKeys(ctx context.Context, _ ocispec.Descriptor) ([][]byte, error) {
	if len(k.paths) == 0 {
		return nil, fmt.Errorf("no image key resources configured: %w", errdefs.ErrNotFound)
	}
	c, err := k.kbs(ctx)
	if err != nil {
		return nil, fmt.Errorf("key broker for image keys: %w", err)
	}
	keys := make([][]byte, 0, len(k.paths))
	for _, p := range k.paths {
		b, err := c.Resource(ctx, p)
		if err != nil {
			return nil, fmt.Errorf("image key %s from the key broker: %w", p, err)
		}
		keys = append(keys, b)
	}
	return keys, nil
}
