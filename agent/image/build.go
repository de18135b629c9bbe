package image

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/protobuf/proto"

	agentapi "github.com/raksh-project/raksh/api/agent/v1"
)

// Sources are what BuildRootfs may use to get layers.
type Sources struct {
	// Dialer reaches the registry (through the host-forwarded stream). It is
	// required for guest pull, and for plain layers of mixed images, which
	// are fetched by digest rather than taken from the host's unpacked
	// directories (those cannot be verified).
	Dialer Dialer
	// Keys decrypts encrypted layers.
	Keys KeyProvider
	// OpenBlob opens the cached ciphertext blobs of BLOB layers.
	OpenBlob BlobOpener
	// PullOpts are extra options for Pull (e.g. WithPlainHTTP, WithAuthorizer).
	PullOpts []PullOpt
}

// BuildRootfs builds into dest the rootfs a rootfs descriptor describes: by
// pulling the image (mode GUEST_PULL, pinned to the descriptor's manifest
// digest) or by decrypting the host's cached ciphertext layers (mode
// LAYERS), fetching REGISTRY layers from the registry by digest. Every
// layer is verified as in Pull and DecryptLayers.
func BuildRootfs(ctx context.Context, desc *agentapi.RootfsDescriptor, src Sources, dest string) ([]LayerResult, error) {
	if err := ValidateDescriptor(desc); err != nil {
		return nil, fmt.Errorf("%w: %w", err, errdefs.ErrInvalidArgument)
	}
	switch desc.GetMode() {
	case agentapi.RootfsDescriptor_GUEST_PULL:
		if src.Dialer == nil {
			return nil, fmt.Errorf("guest pull without registry access: %w", errdefs.ErrFailedPrecondition)
		}
		md, err := digest.Parse(desc.ManifestDigest)
		if err != nil {
			return nil, fmt.Errorf("guest pull needs a valid manifest digest, got %q: %w", desc.ManifestDigest, errdefs.ErrInvalidArgument)
		}
		opts := append(append([]PullOpt(nil), src.PullOpts...), WithManifestDigest(md))
		if src.Keys != nil {
			opts = append(opts, WithKeyProvider(src.Keys))
		}
		img, err := Pull(ctx, desc.ImageRef, src.Dialer, dest, opts...)
		if err != nil {
			return nil, err
		}
		return img.Layers, nil
	}

	open := src.OpenBlob
	if open == nil {
		open = func(context.Context, *agentapi.RootfsLayer) (io.ReadCloser, error) {
			return nil, fmt.Errorf("no blob source: %w", errdefs.ErrFailedPrecondition)
		}
	}
	var fetcher func(ctx context.Context, l *agentapi.RootfsLayer) (io.ReadCloser, error)
	needRegistry := false
	for _, l := range desc.Layers {
		needRegistry = needRegistry || l.GetSource() != agentapi.RootfsLayer_BLOB
	}
	if needRegistry {
		if src.Dialer == nil || desc.ImageRef == "" {
			return nil, fmt.Errorf("plain layers need registry access and an image reference: %w", errdefs.ErrFailedPrecondition)
		}
		f, closeFn, err := registryFetcher(ctx, desc.ImageRef, desc.ManifestDigest, src.Dialer, src.PullOpts)
		if err != nil {
			return nil, err
		}
		defer closeFn()
		fetcher = f
	}
	// Plain layers come from the registry by digest, verified like the rest.
	patched := proto.Clone(desc).(*agentapi.RootfsDescriptor)
	fromRegistry := map[string]bool{}
	for _, l := range patched.Layers {
		if l.GetSource() != agentapi.RootfsLayer_BLOB {
			if l.MediaType == "" {
				// The manifest's media type is used for fetching;
				// DecompressStream detects the compression.
				l.MediaType = ocispec.MediaTypeImageLayerGzip
			}
			fromRegistry[l.Digest] = true
			l.Source = agentapi.RootfsLayer_BLOB
		}
	}
	return DecryptLayers(ctx, patched, src.Keys, dest, WithBlobOpener(func(ctx context.Context, l *agentapi.RootfsLayer) (io.ReadCloser, error) {
		if fromRegistry[l.Digest] {
			return fetcher(ctx, l)
		}
		return open(ctx, l)
	}))
}

// registryFetcher returns a function fetching layer blobs of ref's image by
// digest: the manifest pinned by manifestDigest (verified) gives their
// media types and sizes; a layer it does not list is refused. Blob
// verification is the caller's.
func registryFetcher(ctx context.Context, ref string, manifestDigest string, dialer Dialer, popts []PullOpt) (func(context.Context, *agentapi.RootfsLayer) (io.ReadCloser, error), func(), error) {
	md, err := digest.Parse(manifestDigest)
	if err != nil {
		return nil, nil, fmt.Errorf("fetching plain layers needs the manifest digest, got %q: %w", manifestDigest, errdefs.ErrFailedPrecondition)
	}
	o := pullOptions{plainHTTP: docker.MatchLocalhost}
	for _, opt := range popts {
		opt(&o)
	}
	transport := &http.Transport{DialContext: dialer}
	ropts := []docker.RegistryOpt{docker.WithClient(&http.Client{Transport: transport}), docker.WithPlainHTTP(o.plainHTTP)}
	if o.authorize != nil {
		ropts = append(ropts, docker.WithAuthorizer(o.authorize))
	}
	resolver := docker.NewResolver(docker.ResolverOptions{Hosts: docker.ConfigureDefaultRegistries(ropts...)})
	name, mdesc, err := resolver.Resolve(ctx, refWithDigest(ref, md))
	if err != nil {
		transport.CloseIdleConnections()
		return nil, nil, fmt.Errorf("failed to resolve manifest %s: %w", md, err)
	}
	f, err := resolver.Fetcher(ctx, name)
	if err != nil {
		transport.CloseIdleConnections()
		return nil, nil, err
	}
	mb, err := fetchBlob(ctx, f, mdesc)
	if err != nil {
		transport.CloseIdleConnections()
		return nil, nil, err
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(mb, &m); err != nil {
		transport.CloseIdleConnections()
		return nil, nil, fmt.Errorf("malformed manifest %s: %w", md, errdefs.ErrInvalidArgument)
	}
	layers := map[string]ocispec.Descriptor{}
	for _, l := range m.Layers {
		layers[l.Digest.String()] = l
	}
	return func(ctx context.Context, l *agentapi.RootfsLayer) (io.ReadCloser, error) {
		d, ok := layers[l.Digest]
		if !ok {
			return nil, fmt.Errorf("layer %s is not in manifest %s: %w", l.Digest, md, errdefs.ErrNotFound)
		}
		return f.Fetch(ctx, d)
	}, transport.CloseIdleConnections, nil
}

// refWithDigest replaces any tag of ref by @dgst.
func refWithDigest(ref string, dgst digest.Digest) string {
	if i := strings.Index(ref, "@"); i >= 0 {
		ref = ref[:i]
	}
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		ref = ref[:i]
	}
	return ref + "@" + dgst.String()
}
