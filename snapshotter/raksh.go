//go:build linux

package snapshotter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/containerd/v2/pkg/snapshotters"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"

	"github.com/raksh-project/raksh/snapshotter/rootfs"
)

// Labels the snapshotter sets on the metadata-only snapshots it commits.
const (
	// LabelMode is "guest-pull" or "blob" on raksh layer snapshots.
	LabelMode = "containerd.io/snapshot/raksh.mode"
	// LabelLayerDigest is the layer blob digest of a raksh layer snapshot.
	LabelLayerDigest = "containerd.io/snapshot/raksh.layer-digest"
)

// layerRecordName is the file, in a snapshot's directory, recording that the
// snapshot is a raksh layer whose content is not on the host as a filesystem.
const layerRecordName = "raksh-layer.json"

// layerRecord describes a raksh layer snapshot.
type layerRecord struct {
	// Source is rootfs.SourceGuestPull or rootfs.SourceBlob.
	Source         string            `json:"source"`
	Digest         string            `json:"digest"`
	DiffID         string            `json:"diff_id,omitempty"`
	MediaType      string            `json:"media_type,omitempty"`
	Annotations    map[string]string `json:"annotations,omitempty"`
	Size           int64             `json:"size,omitempty"`
	ImageRef       string            `json:"image_ref,omitempty"`
	ManifestDigest string            `json:"manifest_digest,omitempty"`
}

func writeLayerRecord(dir string, rec *layerRecord) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, ".record-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), filepath.Join(dir, layerRecordName))
}

// readLayerRecord returns the record in dir, or nil if there is none.
func readLayerRecord(dir string) (*layerRecord, error) {
	b, err := os.ReadFile(filepath.Join(dir, layerRecordName))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, err
	}
	var rec layerRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, fmt.Errorf("corrupt raksh layer record in %s: %w", dir, err)
	}
	return &rec, nil
}

// remoteLayer decides, from the labels of an extraction Prepare, whether the
// layer is left to the guest (guest pull) or already in the ciphertext cache.
// It returns nil for an ordinary layer.
func (s *Snapshotter) remoteLayer(labels map[string]string) (*layerRecord, error) {
	ref, hasRef := labels[snapshotters.TargetRefLabel]
	layer, hasLayer := labels[snapshotters.TargetLayerDigestLabel]
	manifest, hasManifest := labels[snapshotters.TargetManifestDigestLabel]
	if !hasRef && !hasLayer && !hasManifest {
		return nil, nil
	}
	guestPull := s.opts.guestPull && hasRef && s.matchImage(ref)
	cached := false
	if hasLayer && !guestPull {
		if d, err := digest.Parse(layer); err == nil {
			cached = s.cache.Has(d)
		}
	}
	if !guestPull && !cached {
		return nil, nil
	}
	// From here on the labels decide what the guest gets: refuse malformed ones.
	if !hasRef || strings.TrimSpace(ref) == "" {
		return nil, fmt.Errorf("label %s missing or empty: %w", snapshotters.TargetRefLabel, errdefs.ErrInvalidArgument)
	}
	ld, err := digest.Parse(layer)
	if err != nil {
		return nil, fmt.Errorf("label %s=%q is not a digest: %w", snapshotters.TargetLayerDigestLabel, layer, errdefs.ErrInvalidArgument)
	}
	if _, err := digest.Parse(manifest); err != nil {
		return nil, fmt.Errorf("label %s=%q is not a digest: %w", snapshotters.TargetManifestDigestLabel, manifest, errdefs.ErrInvalidArgument)
	}
	rec := &layerRecord{
		Digest:         ld.String(),
		DiffID:         labels[snapshots.LabelSnapshotDiffID],
		ImageRef:       ref,
		ManifestDigest: manifest,
	}
	if guestPull {
		rec.Source = rootfs.SourceGuestPull
		return rec, nil
	}
	meta, err := s.cache.Meta(ld)
	if err != nil {
		return nil, err
	}
	rec.Source = rootfs.SourceBlob
	rec.MediaType = meta.MediaType
	rec.Annotations = meta.Annotations
	rec.Size = meta.Size
	return rec, nil
}

func (s *Snapshotter) matchImage(ref string) bool {
	if len(s.opts.imagePatterns) == 0 {
		return true
	}
	for _, re := range s.opts.imagePatterns {
		if re.MatchString(ref) {
			return true
		}
	}
	return false
}

// errTargetExists reports that the target of a guest-pulled layer is
// already committed.
var errTargetExists = fmt.Errorf("target snapshot: %w", errdefs.ErrAlreadyExists)

// commitRemote atomically creates the extraction snapshot key and commits it
// as target, holding only the layer record: one bbolt transaction, and the
// snapshot directory is renamed into place inside it.
func (s *Snapshotter) commitRemote(ctx context.Context, key, parent, target string, rec *layerRecord, opts []snapshots.Opt) (err error) {
	var td string
	defer func() {
		if td != "" {
			os.RemoveAll(td)
		}
	}()
	return s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		td, err = prepareDirectory(filepath.Join(s.root, "snapshots"), snapshots.KindActive)
		if err != nil {
			return err
		}
		if err := writeLayerRecord(td, rec); err != nil {
			return err
		}
		sn, err := storage.CreateSnapshot(ctx, snapshots.KindActive, key, parent, opts...)
		if err != nil {
			return fmt.Errorf("failed to create snapshot: %w", err)
		}
		copts := append(append([]snapshots.Opt(nil), opts...), snapshots.WithLabels(map[string]string{
			LabelMode:        rec.Source,
			LabelLayerDigest: rec.Digest,
		}))
		if _, err := storage.CommitActive(ctx, key, target, snapshots.Usage{}, copts...); err != nil {
			if errdefs.IsAlreadyExists(err) {
				// Another namespace or an earlier pull committed it: the
				// transaction rolls back and containerd finds that one.
				return errTargetExists
			}
			return fmt.Errorf("failed to commit snapshot %s: %w", target, err)
		}
		if err := os.Rename(td, s.snapshotPath(sn.ID)); err != nil {
			return err
		}
		td = ""
		return nil
	})
}

// rootfsDescriptor returns the rootfs descriptor for a snapshot whose parent
// chain (parentIDs, top first) holds raksh layers, or nil for an ordinary chain.
func (s *Snapshotter) rootfsDescriptor(ctx context.Context, parentIDs []string) (*rootfs.Descriptor, error) {
	recs := make([]*layerRecord, len(parentIDs))
	raksh := false
	for i, id := range parentIDs {
		rec, err := readLayerRecord(s.snapshotPath(id))
		if err != nil {
			return nil, err
		}
		recs[i] = rec
		raksh = raksh || rec != nil
	}
	if !raksh {
		return nil, nil
	}
	var names map[string]string
	desc := &rootfs.Descriptor{Version: rootfs.Version, Mode: rootfs.ModeLayers}
	for i := len(parentIDs) - 1; i >= 0; i-- {
		rec := recs[i]
		if rec == nil {
			// A plain layer of a mixed image, unpacked on the host.
			if names == nil {
				ids, err := storage.IDMap(ctx)
				if err != nil {
					return nil, err
				}
				names = ids
			}
			l := rootfs.Layer{Source: rootfs.SourceDir, Path: s.upperPath(parentIDs[i])}
			if name, ok := names[parentIDs[i]]; ok {
				if _, info, _, err := storage.GetInfo(ctx, name); err == nil {
					l.Digest = info.Labels[snapshotters.TargetLayerDigestLabel]
					l.DiffID = info.Labels[snapshots.LabelSnapshotDiffID]
				}
			}
			if l.Digest == "" {
				l.Digest = l.DiffID
			}
			if l.Digest == "" {
				return nil, fmt.Errorf("plain layer %s under a raksh image has no digest labels: %w", parentIDs[i], errdefs.ErrFailedPrecondition)
			}
			desc.Layers = append(desc.Layers, l)
			continue
		}
		l := rootfs.Layer{
			Digest:      rec.Digest,
			DiffID:      rec.DiffID,
			MediaType:   rec.MediaType,
			Annotations: rec.Annotations,
			Size:        rec.Size,
			Source:      rec.Source,
		}
		switch rec.Source {
		case rootfs.SourceGuestPull:
			desc.Mode = rootfs.ModeGuestPull
		case rootfs.SourceBlob:
			d, err := digest.Parse(rec.Digest)
			if err != nil {
				return nil, fmt.Errorf("corrupt layer record: %w", err)
			}
			l.Path = s.cache.Path(d)
		}
		if rec.ImageRef != "" {
			desc.ImageRef = rec.ImageRef
		}
		if rec.ManifestDigest != "" {
			desc.ManifestDigest = rec.ManifestDigest
		}
		desc.Layers = append(desc.Layers, l)
	}
	if desc.Mode == rootfs.ModeGuestPull {
		// The guest pulls the whole image by reference: a base layer shared
		// with an ordinary image (unpacked on the host) is pulled too, the
		// host directory is not handed over.
		for i := range desc.Layers {
			if desc.Layers[i].Source == rootfs.SourceDir {
				desc.Layers[i].Source = rootfs.SourceGuestPull
				desc.Layers[i].Path = ""
			}
		}
	}
	log.G(ctx).WithField("mode", desc.Mode).WithField("layers", len(desc.Layers)).Debug("raksh rootfs descriptor")
	return desc, nil
}

// usedBlobs returns the digests of cached blobs referenced by any snapshot.
func (s *Snapshotter) usedBlobs(ctx context.Context) (map[string]struct{}, error) {
	ids, err := storage.IDMap(ctx)
	if err != nil && !errdefs.IsNotFound(err) { // not found: no snapshots yet
		return nil, err
	}
	used := map[string]struct{}{}
	for id := range ids {
		rec, err := readLayerRecord(s.snapshotPath(id))
		if err != nil {
			return nil, err
		}
		if rec != nil && rec.Source == rootfs.SourceBlob {
			used[rec.Digest] = struct{}{}
		}
	}
	return used, nil
}
