package agent

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/v2/pkg/archive"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/raksh-project/raksh/agent/image"
	agentapi "github.com/raksh-project/raksh/api/agent/v1"
	"github.com/raksh-project/raksh/internal/wire"
)

// DefaultImageKeyDir is where the agent looks for private keys (PEM, DER or
// JWK files) decrypting ocicrypt-encrypted image layers when no other
// KeyProvider is configured: bake them into the initrd with
// `rakshctl initrd build --file /etc/raksh/image-keys/<name>=<key file>`.
// The key broker client replaces this (WithImageKeys).
const DefaultImageKeyDir = "/etc/raksh/image-keys"

// RegistryProxyTarget is the proxy target (runtime config `[proxy]
// registry = "host:port"`) through which the agent reaches the registry
// for guest pulls. The guest has no network: every registry connection of
// a pull goes to this one allow-listed registry, whatever host the image
// reference names (TLS, when used, is still verified against that name).
const RegistryProxyTarget = "registry"

// blobDrainTimeout bounds the wait for blob streams the shim still has to
// open after a failed rootfs build.
const blobDrainTimeout = 10 * time.Second

// WithImageKeys sets where the agent gets private keys for encrypted image
// layers (default: the files in DefaultImageKeyDir). This is the seam for
// the key broker client.
func WithImageKeys(k image.KeyProvider) Opt {
	return func(s *Service) { s.imageKeys = k }
}

// WithImagePullOpts adds options to the agent's guest pulls (tests:
// image.WithPlainHTTP).
func WithImagePullOpts(opts ...image.PullOpt) Opt {
	return func(s *Service) { s.pullOpts = append(s.pullOpts, opts...) }
}

// KeyDir is an image.KeyProvider offering every regular file in a directory
// as a private key, read on every call. An empty or missing directory
// provides no keys.
type KeyDir string

// PrivateKeys implements image.KeyProvider.
func (d KeyDir) PrivateKeys(ctx context.Context, layer ocispec.Descriptor) ([][]byte, error) {
	entries, err := os.ReadDir(string(d))
	if err != nil && !os.IsNotExist(err) {
		return nil, fmt.Errorf("image key directory %s: %w", string(d), err)
	}
	var files image.KeyFiles
	for _, e := range entries {
		if e.Type().IsRegular() {
			files = append(files, filepath.Join(string(d), e.Name()))
		}
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no image decryption keys in %s: %w", string(d), errdefs.ErrNotFound)
	}
	return files.PrivateKeys(ctx, layer)
}

// prepareRootfs builds a container's root filesystem in dest (an empty
// directory in guest memory) from what the shim passed: a rootfs
// descriptor the guest builds the rootfs from itself (then no rootfs
// mounts), the erofs layer disks of a plain image (wire.RootfsErofs
// mounts), or one rootfs mount naming the tar stream of a host snapshot.
func (s *Service) prepareRootfs(ctx context.Context, id string, mounts []*types.Mount, desc *agentapi.RootfsDescriptor, dest string) error {
	if desc != nil {
		if len(mounts) != 0 {
			return fmt.Errorf("a rootfs descriptor and %d rootfs mounts: want one or the other: %w", len(mounts), errdefs.ErrInvalidArgument)
		}
		return s.buildImageRootfs(ctx, id, desc, dest)
	}
	if len(mounts) > 0 && mounts[0].Type == wire.RootfsErofs {
		return s.mountLayers(ctx, id, mounts, dest)
	}
	return s.receiveRootfs(ctx, id, mounts, dest)
}

// receiveRootfs unpacks the tar archive the shim streams (the host's
// ordinary snapshot of a non-confidential image).
func (s *Service) receiveRootfs(ctx context.Context, id string, mounts []*types.Mount, dest string) error {
	if len(mounts) != 1 || mounts[0].Type != wire.RootfsTar {
		return fmt.Errorf("rootfs must be one %s mount or a rootfs descriptor, got %d mounts: %w", wire.RootfsTar, len(mounts), errdefs.ErrInvalidArgument)
	}
	if mounts[0].Source != wire.RootfsStream(id) {
		return fmt.Errorf("rootfs stream %q does not belong to container %q: %w", mounts[0].Source, id, errdefs.ErrInvalidArgument)
	}
	st, err := s.streams.claim(ctx, mounts[0].Source, streamTimeout)
	if err != nil {
		return err
	}
	defer st.Close()
	start := time.Now()
	n, err := archive.Apply(ctx, dest, st)
	if err != nil {
		return fmt.Errorf("unpack rootfs of %q: %w", id, err)
	}
	log.G(ctx).WithField("id", id).WithField("bytes", n).WithField("elapsed", time.Since(start)).Debug("rootfs received")
	return nil
}

// buildImageRootfs builds dest from a rootfs descriptor with
// image.BuildRootfs: a guest pull through the host-forwarded registry
// stream, or the host's cached ciphertext blobs from the shim's blob
// streams, decrypted with the agent's image keys. Everything is verified
// (blob digests, ocicrypt's HMAC, diff IDs, the pinned manifest) and
// unpacked into a staging directory renamed to dest only at the end: on any
// error dest stays empty.
func (s *Service) buildImageRootfs(ctx context.Context, id string, d *agentapi.RootfsDescriptor, dest string) error {
	streams := newBlobStreams(s.streams, id, d)
	defer streams.drain(ctx)
	keys := s.imageKeys
	if keys == nil {
		keys = KeyDir(DefaultImageKeyDir)
	}
	src := image.Sources{Keys: keys, OpenBlob: streams.open, PullOpts: s.pullOpts}
	if s.dialProxy != nil {
		src.Dialer = func(ctx context.Context, network, addr string) (net.Conn, error) {
			log.G(ctx).WithField("id", id).WithField("addr", addr).Debug("registry connection through the host")
			return s.dialProxy(ctx, RegistryProxyTarget)
		}
	}
	start := time.Now()
	layers, err := image.BuildRootfs(ctx, d, src, dest)
	if err != nil {
		via := ""
		if needsRegistry(d) {
			via = fmt.Sprintf(", registry reached through the host's [proxy] %q target", RegistryProxyTarget)
		}
		return fmt.Errorf("build rootfs of %q from image %s (%s%s): %w", id, d.ImageRef, d.Mode, via, err)
	}
	log.G(ctx).WithField("id", id).WithField("mode", d.Mode).WithField("image", d.ImageRef).WithField("layers", len(layers)).
		WithField("elapsed", time.Since(start)).Info("rootfs built in the guest")
	return nil
}

// needsRegistry reports whether building d fetches from the registry.
func needsRegistry(d *agentapi.RootfsDescriptor) bool {
	for _, l := range d.GetLayers() {
		if l.GetSource() != agentapi.RootfsLayer_BLOB {
			return true
		}
	}
	return false
}

// blobStreams hands the shim's blob streams of one container to
// image.BuildRootfs, and drains the ones it did not read.
type blobStreams struct {
	s        *streams
	id       string
	expected map[string]bool // stream names the shim sends
	mu       sync.Mutex
	opened   map[string]int // digest -> occurrences opened
	claimed  map[string]bool
}

func newBlobStreams(s *streams, id string, d *agentapi.RootfsDescriptor) *blobStreams {
	b := &blobStreams{s: s, expected: map[string]bool{}, opened: map[string]int{}, claimed: map[string]bool{}}
	seen := map[string]int{}
	for _, l := range d.GetLayers() {
		if l.GetSource() == agentapi.RootfsLayer_BLOB {
			b.expected[wire.BlobStream(id, l.Digest, seen[l.Digest])] = true
			seen[l.Digest]++
		}
	}
	b.id = id
	return b
}

// open is the image.BlobOpener: the next occurrence of l's blob.
func (b *blobStreams) open(ctx context.Context, l *agentapi.RootfsLayer) (io.ReadCloser, error) {
	b.mu.Lock()
	name := wire.BlobStream(b.id, l.Digest, b.opened[l.Digest])
	b.opened[l.Digest]++
	ok := b.expected[name]
	b.claimed[name] = true
	b.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("layer %s is not a blob layer of the descriptor: %w", l.Digest, errdefs.ErrNotFound)
	}
	return b.s.claim(ctx, name, streamTimeout)
}

// drain reads and closes, in the background, every expected blob stream
// that was not opened (the build failed before), so the shim's sends end.
func (b *blobStreams) drain(ctx context.Context) {
	b.mu.Lock()
	var left []string
	for name := range b.expected {
		if !b.claimed[name] {
			left = append(left, name)
		}
	}
	b.mu.Unlock()
	for _, name := range left {
		go func() {
			c, err := b.s.claim(context.WithoutCancel(ctx), name, blobDrainTimeout)
			if err != nil {
				return
			}
			defer c.Close()
			io.Copy(io.Discard, c)
		}()
	}
}
