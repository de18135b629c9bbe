package image

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// maxMetadataSize bounds manifests, indexes and configs read into memory.
const maxMetadataSize = 8 << 20

// Dialer opens a connection to the registry; in the guest it opens a stream
// the host forwards to an allow-listed registry (the guest has no network).
type Dialer func(ctx context.Context, network, addr string) (net.Conn, error)

type pullOptions struct {
	plainHTTP func(string) (bool, error)
	platform  platforms.MatchComparer
	manifest  digest.Digest
	keys      KeyProvider
	authorize docker.Authorizer
}

// PullOpt configures Pull.
type PullOpt func(*pullOptions)

// WithPlainHTTP makes Pull speak plain HTTP to every registry (default: only
// to localhost/loopback registries, TLS elsewhere).
func WithPlainHTTP() PullOpt {
	return func(o *pullOptions) { o.plainHTTP = docker.MatchAllHosts }
}

// WithPlatform selects the manifest of an index (default: this platform).
func WithPlatform(p platforms.MatchComparer) PullOpt {
	return func(o *pullOptions) { o.platform = p }
}

// WithManifestDigest pins the image: the resolved manifest (or, for an
// index, the selected platform manifest or the index itself) must have this
// digest, or Pull fails with ErrDigestMismatch.
func WithManifestDigest(d digest.Digest) PullOpt {
	return func(o *pullOptions) { o.manifest = d }
}

// WithKeyProvider lets Pull decrypt ocicrypt-encrypted layers.
func WithKeyProvider(k KeyProvider) PullOpt {
	return func(o *pullOptions) { o.keys = k }
}

// WithAuthorizer sets registry credentials handling (default: anonymous
// with token auth as the registry requests).
func WithAuthorizer(a docker.Authorizer) PullOpt {
	return func(o *pullOptions) { o.authorize = a }
}

// Image is what Pull checked and unpacked.
type Image struct {
	// Ref is the reference pulled.
	Ref string `json:"ref"`
	// Manifest is the digest of the image manifest unpacked.
	Manifest digest.Digest `json:"manifest"`
	// Config is the image configuration (entrypoint, env, user...).
	Config ocispec.Image `json:"config"`
	// Layers lists the layers, bottom to top.
	Layers []LayerResult `json:"layers"`
}

// Pull resolves ref with containerd's docker resolver over dialer, fetches
// and verifies the manifest, config and every layer (digests, decryption,
// diff IDs) and unpacks the layers in order into dest, which must not exist
// or be empty. On error dest is not created and nothing is left behind.
func Pull(ctx context.Context, ref string, dialer Dialer, dest string, opts ...PullOpt) (*Image, error) {
	o := pullOptions{plainHTTP: docker.MatchLocalhost, platform: platforms.Default()}
	for _, opt := range opts {
		opt(&o)
	}
	if dialer == nil {
		return nil, fmt.Errorf("no dialer: %w", errdefs.ErrInvalidArgument)
	}
	transport := &http.Transport{
		DialContext:           dialer,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 30 * time.Second,
		MaxIdleConns:          4,
		IdleConnTimeout:       30 * time.Second,
	}
	defer transport.CloseIdleConnections()
	client := &http.Client{Transport: transport}
	ropts := []docker.RegistryOpt{docker.WithClient(client), docker.WithPlainHTTP(o.plainHTTP)}
	if o.authorize != nil {
		ropts = append(ropts, docker.WithAuthorizer(o.authorize))
	}
	resolver := docker.NewResolver(docker.ResolverOptions{Hosts: docker.ConfigureDefaultRegistries(ropts...)})

	name, desc, err := resolver.Resolve(ctx, ref)
	if err != nil {
		return nil, fmt.Errorf("failed to resolve %s: %w", ref, err)
	}
	fetcher, err := resolver.Fetcher(ctx, name)
	if err != nil {
		return nil, err
	}
	pinnedIndex := o.manifest != "" && desc.Digest == o.manifest

	if images.IsIndexType(desc.MediaType) {
		b, err := fetchBlob(ctx, fetcher, desc)
		if err != nil {
			return nil, err
		}
		var idx ocispec.Index
		if err := json.Unmarshal(b, &idx); err != nil {
			return nil, fmt.Errorf("malformed index %s: %w", desc.Digest, errdefs.ErrInvalidArgument)
		}
		var found *ocispec.Descriptor
		for i := range idx.Manifests {
			m := idx.Manifests[i]
			if m.Platform != nil && !o.platform.Match(*m.Platform) {
				continue
			}
			if found == nil || (m.Platform != nil && found.Platform != nil && o.platform.Less(*m.Platform, *found.Platform)) {
				found = &idx.Manifests[i]
			}
		}
		if found == nil {
			return nil, fmt.Errorf("index %s has no manifest for this platform: %w", desc.Digest, errdefs.ErrNotFound)
		}
		desc = *found
	}
	if !images.IsManifestType(desc.MediaType) {
		return nil, fmt.Errorf("%s resolved to unsupported media type %q: %w", ref, desc.MediaType, errdefs.ErrNotImplemented)
	}
	if o.manifest != "" && !pinnedIndex && desc.Digest != o.manifest {
		return nil, fmt.Errorf("%s: manifest %s is not the pinned %s: %w: %w", ref, desc.Digest, o.manifest, ErrDigestMismatch, errdefs.ErrFailedPrecondition)
	}
	mb, err := fetchBlob(ctx, fetcher, desc)
	if err != nil {
		return nil, err
	}
	var manifest ocispec.Manifest
	if err := json.Unmarshal(mb, &manifest); err != nil {
		return nil, fmt.Errorf("malformed manifest %s: %w", desc.Digest, errdefs.ErrInvalidArgument)
	}
	cb, err := fetchBlob(ctx, fetcher, manifest.Config)
	if err != nil {
		return nil, err
	}
	img := &Image{Ref: ref, Manifest: desc.Digest}
	if err := json.Unmarshal(cb, &img.Config); err != nil {
		return nil, fmt.Errorf("malformed image config %s: %w", manifest.Config.Digest, errdefs.ErrInvalidArgument)
	}
	diffIDs := img.Config.RootFS.DiffIDs
	if len(diffIDs) != len(manifest.Layers) {
		return nil, fmt.Errorf("manifest has %d layers, config %d diff IDs: %w", len(manifest.Layers), len(diffIDs), errdefs.ErrInvalidArgument)
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
	for i, l := range manifest.Layers {
		rc, err := fetcher.Fetch(ctx, l)
		if err != nil {
			return nil, fmt.Errorf("failed to fetch layer %s: %w", l.Digest, err)
		}
		err = applyLayer(ctx, tmp, rc, l, diffIDs[i], o.keys)
		rc.Close()
		if err != nil {
			return nil, err
		}
		img.Layers = append(img.Layers, LayerResult{Digest: l.Digest, DiffID: diffIDs[i]})
		log.G(ctx).WithField("layer", l.Digest).WithField("encrypted", IsEncrypted(l.MediaType)).Debug("layer unpacked")
	}
	if err := commit(); err != nil {
		return nil, err
	}
	ok = true
	return img, nil
}

// fetchBlob reads a small blob fully and verifies its size and digest.
func fetchBlob(ctx context.Context, f remotes.Fetcher, desc ocispec.Descriptor) ([]byte, error) {
	if desc.Size > maxMetadataSize {
		return nil, fmt.Errorf("blob %s too large (%d bytes): %w", desc.Digest, desc.Size, errdefs.ErrInvalidArgument)
	}
	if err := desc.Digest.Validate(); err != nil {
		return nil, fmt.Errorf("blob digest %q: %w", desc.Digest, errdefs.ErrInvalidArgument)
	}
	rc, err := f.Fetch(ctx, desc)
	if err != nil {
		return nil, fmt.Errorf("failed to fetch %s: %w", desc.Digest, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, maxMetadataSize+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) != desc.Size || desc.Digest.Algorithm().FromBytes(b) != desc.Digest {
		return nil, fmt.Errorf("blob %s: %w: %w", desc.Digest, ErrDigestMismatch, errdefs.ErrDataLoss)
	}
	return b, nil
}
