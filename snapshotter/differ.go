//go:build linux

package snapshotter

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/diff"
	"github.com/containerd/containerd/v2/core/diff/apply"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/containerd/v2/pkg/snapshotters"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/raksh-project/raksh/snapshotter/rootfs"
)

// IsEncrypted reports whether mediaType is an ocicrypt encrypted layer type
// ("...+encrypted").
func IsEncrypted(mediaType string) bool {
	return strings.HasSuffix(mediaType, "+encrypted")
}

// Differ is the raksh diff applier, served to containerd as a proxy "diff"
// plugin on the snapshotter's socket. It is what carries encrypted layers past
// containerd's unpacker without decrypting them:
//
//   - encrypted layers (media type "...+encrypted") applied to a raksh
//     snapshot: the ciphertext is copied, digest-verified, from containerd's
//     content store into the BlobCache, a layer record is written into the
//     active snapshot (no file lands in its filesystem), and the diff ID the
//     unpacker passed in the containerd.io/snapshot/diff-id label is returned,
//     so containerd's diff-ID check passes. The guest verifies the real diff ID.
//   - other layer types on raksh snapshots: applied like containerd's walking
//     differ (containerd's core/diff/apply with the same content store).
//   - mounts that are not this snapshotter's: errdefs.ErrNotImplemented, so
//     containerd's diff service falls through to the next differ.
type Differ struct {
	sn *Snapshotter
}

var _ diff.Applier = (*Differ)(nil)

// Differ returns the diff applier bound to this snapshotter; it reads blobs
// through the content provider given with WithContentProvider.
func (s *Snapshotter) Differ() *Differ { return &Differ{sn: s} }

// Apply applies the layer desc onto the mounts of an active raksh snapshot.
func (d *Differ) Apply(ctx context.Context, desc ocispec.Descriptor, mounts []mount.Mount, opts ...diff.ApplyOpt) (ocispec.Descriptor, error) {
	s := d.sn
	id, ok := s.snapshotIDFromMounts(mounts)
	if !ok {
		return ocispec.Descriptor{}, fmt.Errorf("mounts are not raksh snapshots: %w", errdefs.ErrNotImplemented)
	}
	if s.opts.content == nil {
		return ocispec.Descriptor{}, fmt.Errorf("raksh differ has no content store (containerd_address unset): %w", errdefs.ErrFailedPrecondition)
	}
	if !IsEncrypted(desc.MediaType) {
		if !images.IsLayerType(desc.MediaType) {
			return ocispec.Descriptor{}, fmt.Errorf("unsupported layer media type %q: %w", desc.MediaType, errdefs.ErrInvalidArgument)
		}
		return apply.NewFileSystemApplier(s.opts.content).Apply(ctx, desc, mounts, opts...)
	}
	if err := desc.Digest.Validate(); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("invalid layer digest: %w", errdefs.ErrInvalidArgument)
	}

	var labels map[string]string
	if err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		ids, err := storage.IDMap(ctx)
		if err != nil {
			return err
		}
		key, ok := ids[id]
		if !ok {
			return fmt.Errorf("snapshot %s: %w", id, errdefs.ErrNotFound)
		}
		_, info, _, err := storage.GetInfo(ctx, key)
		if err != nil {
			return err
		}
		if info.Kind != snapshots.KindActive {
			return fmt.Errorf("snapshot %s is not active: %w", key, errdefs.ErrFailedPrecondition)
		}
		labels = info.Labels
		return nil
	}); err != nil {
		return ocispec.Descriptor{}, err
	}
	diffID, err := digest.Parse(labels[snapshots.LabelSnapshotDiffID])
	if err != nil {
		// Unlabelled extraction (ctr pull --local, ctr image unpack): find
		// the diff ID in the image config the layer belongs to.
		if diffID, err = s.diffIDFromContent(ctx, desc); err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("encrypted layer %s: no %s label and no image config found for it: %w",
				desc.Digest, snapshots.LabelSnapshotDiffID, err)
		}
	}

	s.cacheMu.RLock()
	defer s.cacheMu.RUnlock()
	if !s.cache.Has(desc.Digest) {
		ra, err := s.opts.content.ReaderAt(ctx, desc)
		if err != nil {
			return ocispec.Descriptor{}, fmt.Errorf("failed to read layer %s from content store: %w", desc.Digest, err)
		}
		_, err = s.cache.Put(ctx, desc, content.NewReader(ra))
		ra.Close()
		if err != nil {
			return ocispec.Descriptor{}, err
		}
	}
	rec := &layerRecord{
		Source:         rootfs.SourceBlob,
		Digest:         desc.Digest.String(),
		DiffID:         diffID.String(),
		MediaType:      desc.MediaType,
		Annotations:    desc.Annotations,
		Size:           desc.Size,
		ImageRef:       labels[snapshotters.TargetRefLabel],
		ManifestDigest: labels[snapshotters.TargetManifestDigestLabel],
	}
	if err := writeLayerRecord(s.snapshotPath(id), rec); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("failed to record encrypted layer: %w", err)
	}
	log.G(ctx).WithField("layer", desc.Digest).WithField("snapshot", id).Debug("encrypted layer kept as ciphertext")
	return ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: diffID}, nil
}

// snapshotIDFromMounts finds the active snapshot whose upper directory the
// mounts write to.
func (s *Snapshotter) snapshotIDFromMounts(mounts []mount.Mount) (string, bool) {
	if len(mounts) != 1 {
		return "", false
	}
	m := mounts[0]
	var upper string
	switch m.Type {
	case "bind", "rbind":
		upper = m.Source
	case "overlay":
		for _, o := range m.Options {
			if v, ok := strings.CutPrefix(o, "upperdir="); ok {
				upper = v
			}
		}
	}
	if upper == "" || filepath.Base(upper) != "fs" {
		return "", false
	}
	dir := filepath.Dir(upper)
	if filepath.Dir(dir) != filepath.Join(s.root, "snapshots") {
		return "", false
	}
	return filepath.Base(dir), true
}

// maxLayers bounds the manifest layer index searched by diffIDFromContent.
const maxLayers = 256

// diffIDFromContent finds the diff ID of layer desc through containerd's
// content store: a manifest referencing the layer (by the GC labels
// containerd sets while fetching), then its config's rootfs.diff_ids.
func (s *Snapshotter) diffIDFromContent(ctx context.Context, desc ocispec.Descriptor) (digest.Digest, error) {
	mgr, ok := s.opts.content.(content.Manager)
	if !ok {
		return "", fmt.Errorf("content store cannot be searched: %w", errdefs.ErrFailedPrecondition)
	}
	filters := make([]string, 0, maxLayers)
	for i := 0; i < maxLayers; i++ {
		filters = append(filters, fmt.Sprintf(`labels.%q==%q`, fmt.Sprintf("containerd.io/gc.ref.content.l.%d", i), desc.Digest.String()))
	}
	var manifests []digest.Digest
	if err := mgr.Walk(ctx, func(info content.Info) error {
		manifests = append(manifests, info.Digest)
		return nil
	}, filters...); err != nil {
		return "", err
	}
	for _, md := range manifests {
		b, err := content.ReadBlob(ctx, s.opts.content, ocispec.Descriptor{Digest: md})
		if err != nil {
			continue
		}
		var m ocispec.Manifest
		if json.Unmarshal(b, &m) != nil {
			continue
		}
		for i, l := range m.Layers {
			if l.Digest != desc.Digest {
				continue
			}
			cb, err := content.ReadBlob(ctx, s.opts.content, m.Config)
			if err != nil {
				break
			}
			var cfg ocispec.Image
			if json.Unmarshal(cb, &cfg) != nil || i >= len(cfg.RootFS.DiffIDs) {
				break
			}
			return cfg.RootFS.DiffIDs[i], cfg.RootFS.DiffIDs[i].Validate()
		}
	}
	return "", errdefs.ErrNotFound
}
