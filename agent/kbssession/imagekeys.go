package kbssession

import (
	"context"
	"fmt"
	"slices"
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

// PodImageKeys is the agent's image.KeyProvider: the broker resources of
// the kernel command line (raksh.image_keys, from the runtime config) and
// of the pod's verified init data, fetched from the broker; with neither,
// the fallback (the key files baked into the initrd). It consults the init
// data on every call, so a pod whose bound init data was not delivered
// gets no keys.
type PodImageKeys struct {
	session  *Session
	cmdline  []string
	fallback image.KeyProvider
}

var _ image.KeyProvider = (*PodImageKeys)(nil)

// NewPodImageKeys returns the provider of a pod's image keys.
func NewPodImageKeys(s *Session, cmdline []string, fallback image.KeyProvider) *PodImageKeys {
	return &PodImageKeys{session: s, cmdline: cmdline, fallback: fallback}
}

// PrivateKeys implements image.KeyProvider.
func (k *PodImageKeys) PrivateKeys(ctx context.Context, layer ocispec.Descriptor) ([][]byte, error) {
	d, err := k.session.InitData(ctx)
	if err != nil {
		return nil, fmt.Errorf("image keys: %w", err)
	}
	paths := k.cmdline
	if d != nil {
		paths = append(slices.Clone(paths), d.ImageKeys...)
	}
	if len(paths) == 0 {
		return k.fallback.PrivateKeys(ctx, layer)
	}
	return NewImageKeys(paths, k.session.Resources).PrivateKeys(ctx, layer)
}
