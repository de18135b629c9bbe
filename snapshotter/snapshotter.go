//go:build linux

// Package snapshotter implements raksh-snapshotter: a containerd snapshotter
// that behaves like overlayfs for ordinary images and, for raksh images,
// never holds plaintext layer data on the host. Guest-pulled layers are
// committed as metadata-only snapshots; encrypted layers are kept as
// ciphertext in a digest-keyed cache shared by all snapshots (see Differ);
// the rootfs of a container on such an image is a read-only directory holding
// a rootfs.Descriptor (package snapshotter/rootfs) instead of a filesystem.
package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sync"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/containerd/v2/plugins/snapshots/overlay"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/raksh-project/raksh/snapshotter/rootfs"
)

type options struct {
	asyncRemove   bool
	mountOptions  []string
	guestPull     bool
	imagePatterns []*regexp.Regexp
	content       content.Provider
	images        ImageLister
}

// Opt configures a Snapshotter.
type Opt func(*options) error

// WithAsyncRemove defers removal of snapshot directories to Cleanup.
func WithAsyncRemove() Opt {
	return func(o *options) error { o.asyncRemove = true; return nil }
}

// WithMountOptions adds overlay mount options for ordinary snapshots.
func WithMountOptions(opts []string) Opt {
	return func(o *options) error { o.mountOptions = append(o.mountOptions, opts...); return nil }
}

// WithGuestPull enables guest pull for images whose reference fully matches
// one of the regular expressions (all images carrying the CRI labels when
// none is given).
func WithGuestPull(patterns ...string) Opt {
	return func(o *options) error {
		o.guestPull = true
		for _, p := range patterns {
			re, err := regexp.Compile("^(?:" + p + ")$")
			if err != nil {
				return fmt.Errorf("bad guest pull image pattern %q: %w", p, err)
			}
			o.imagePatterns = append(o.imagePatterns, re)
		}
		return nil
	}
}

// WithContentProvider gives the differ access to layer blobs (containerd's
// content store, through its gRPC API in the daemon).
func WithContentProvider(p content.Provider) Opt {
	return func(o *options) error { o.content = p; return nil }
}

// ImageLister lists containerd's images in the caller's namespace (the
// List method of containerd's images.Store).
type ImageLister interface {
	List(ctx context.Context, filters ...string) ([]images.Image, error)
}

// WithImageLister lets the descriptor builder find the image reference of a
// raksh image that was unpacked without labels (see ContainerdImages).
func WithImageLister(l ImageLister) Opt {
	return func(o *options) error { o.images = l; return nil }
}

// Snapshotter is the raksh snapshotter. It implements snapshots.Snapshotter
// and, through Differ, diff.Applier.
//
// Ordinary snapshots are containerd's overlay snapshotter (package
// plugins/snapshots/overlay), sharing this snapshotter's metadata store and
// directory layout (<root>/snapshots/<id>/fs). Raksh adds files to a
// snapshot's directory beside fs: the layer record of a guest-pulled or
// ciphertext-only layer, a marker on snapshots whose parent chain holds such
// layers, and the rootfs descriptor directory a container rootfs on a raksh
// image mounts instead of an overlay.
type Snapshotter struct {
	overlay snapshots.Snapshotter
	root    string
	ms      *storage.MetaStore
	opts    options
	cache   *BlobCache

	// cacheMu orders cache pruning (write lock) against writers of layer
	// records that refer to cached blobs (read lock).
	cacheMu sync.RWMutex
}

var _ snapshots.Snapshotter = (*Snapshotter)(nil)

// New returns a Snapshotter storing metadata (bbolt), snapshot directories
// and the blob cache under root.
func New(root string, opts ...Opt) (*Snapshotter, error) {
	var o options
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return nil, err
	}
	cache, err := NewBlobCache(filepath.Join(root, "cache"))
	if err != nil {
		return nil, err
	}
	ms, err := storage.NewMetaStore(filepath.Join(root, "metadata.db"))
	if err != nil {
		return nil, err
	}
	oopts := []overlay.Opt{overlay.WithMetaStore(ms), overlay.WithMountOptions(o.mountOptions)}
	if o.asyncRemove {
		oopts = append(oopts, overlay.AsynchronousRemove)
	}
	inner, err := overlay.NewSnapshotter(root, oopts...)
	if err != nil {
		ms.Close()
		return nil, err
	}
	sn := &Snapshotter{overlay: inner, root: root, ms: ms, opts: o, cache: cache}
	// A kill -9 inside a create transaction can leave a snapshot directory
	// whose ID was never committed; the ID is then handed out again and the
	// rename into place would fail. Remove such directories now.
	if err := sn.cleanupDirectories(context.Background()); err != nil {
		ms.Close()
		return nil, err
	}
	return sn, nil
}

// cleanupDirectories removes the directories of removed snapshots and those
// left by interrupted transactions (overlay's Cleanup), including before the
// first snapshot was ever committed.
func (s *Snapshotter) cleanupDirectories(ctx context.Context) error {
	err := s.overlay.(snapshots.Cleaner).Cleanup(ctx)
	if !errdefs.IsNotFound(err) {
		return err
	}
	// No snapshot bucket yet: every directory is stale.
	dir := filepath.Join(s.root, "snapshots")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		log.G(ctx).WithField("path", p).Info("removing snapshot directory left by an interrupted transaction")
		if err := os.RemoveAll(p); err != nil {
			return err
		}
	}
	return nil
}

// Cache returns the ciphertext blob cache.
func (s *Snapshotter) Cache() *BlobCache { return s.cache }

// Stat returns the info for an active or committed snapshot by name or key.
func (s *Snapshotter) Stat(ctx context.Context, key string) (snapshots.Info, error) {
	return s.overlay.Stat(ctx, key)
}

// Update updates the labels of a snapshot.
func (s *Snapshotter) Update(ctx context.Context, info snapshots.Info, fieldpaths ...string) (snapshots.Info, error) {
	return s.overlay.Update(ctx, info, fieldpaths...)
}

// Usage returns the resources taken by the snapshot identified by key. For
// active snapshots the upper directory is scanned; guest-pulled and
// encrypted layers use no space in their snapshot (the shared ciphertext
// cache is accounted for separately, see BlobCache).
func (s *Snapshotter) Usage(ctx context.Context, key string) (snapshots.Usage, error) {
	return s.overlay.Usage(ctx, key)
}

// Prepare creates an active snapshot. For an extraction snapshot of a layer
// the guest pulls itself (CRI labels, guest pull enabled and matching), it
// instead commits a metadata-only snapshot under the target name and returns
// an error wrapping errdefs.ErrAlreadyExists, so containerd neither fetches
// nor unpacks the layer. For an encrypted layer already in the ciphertext
// cache, it returns a read-only ("staged") mount so containerd skips the
// fetch and the apply and just commits.
func (s *Snapshotter) Prepare(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	var base snapshots.Info
	for _, opt := range opts {
		if err := opt(&base); err != nil {
			return nil, err
		}
	}
	if target, ok := base.Labels[snapshots.LabelSnapshotRef]; ok && target != "" {
		s.cacheMu.RLock()
		defer s.cacheMu.RUnlock()
		rec, err := s.remoteLayer(base.Labels)
		if err != nil {
			return nil, err
		}
		if rec != nil {
			switch rec.Source {
			case rootfs.SourceGuestPull:
				err := s.commitRemote(ctx, key, parent, target, rec, opts)
				if err == nil || errors.Is(err, errTargetExists) {
					log.G(ctx).WithField("key", key).WithField("target", target).WithField("layer", rec.Digest).Debug("layer left to guest pull")
					return nil, fmt.Errorf("target snapshot %q: %w", target, errdefs.ErrAlreadyExists)
				}
				return nil, err
			case rootfs.SourceBlob:
				return s.createSnapshot(ctx, snapshots.KindActive, key, parent, opts, rec)
			}
		}
	}
	return s.createSnapshot(ctx, snapshots.KindActive, key, parent, opts, nil)
}

// View creates a read-only view of parent.
func (s *Snapshotter) View(ctx context.Context, key, parent string, opts ...snapshots.Opt) ([]mount.Mount, error) {
	return s.createSnapshot(ctx, snapshots.KindView, key, parent, opts, nil)
}

// Mounts returns the mounts of the active or view snapshot identified by key.
func (s *Snapshotter) Mounts(ctx context.Context, key string) ([]mount.Mount, error) {
	var sn storage.Snapshot
	if err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) (err error) {
		sn, err = storage.GetSnapshot(ctx, key)
		return err
	}); err != nil {
		return nil, fmt.Errorf("failed to get active mount: %w", err)
	}
	if m, ok := s.rootfsMounts(sn.ID); ok {
		return m, nil
	}
	return s.overlay.Mounts(ctx, key)
}

// Commit turns the active snapshot key into the committed snapshot name.
// A layer record the differ wrote into the active snapshot stays with it.
func (s *Snapshotter) Commit(ctx context.Context, name, key string, opts ...snapshots.Opt) error {
	return s.overlay.Commit(ctx, name, key, opts...)
}

// Remove abandons the snapshot identified by key. The snapshot immediately
// becomes unavailable; its directory is removed now or, with async removal,
// on the next Cleanup. Cached ciphertext is released by Cleanup.
func (s *Snapshotter) Remove(ctx context.Context, key string) error {
	return s.overlay.Remove(ctx, key)
}

// Walk calls fn for every snapshot matching the filters.
func (s *Snapshotter) Walk(ctx context.Context, fn snapshots.WalkFunc, filters ...string) error {
	return s.overlay.Walk(ctx, fn, filters...)
}

// Cleanup removes directories of removed snapshots and cached ciphertext no
// snapshot refers to any more.
func (s *Snapshotter) Cleanup(ctx context.Context) error {
	s.cacheMu.Lock()
	defer s.cacheMu.Unlock()
	if err := s.cleanupDirectories(ctx); err != nil {
		return err
	}
	var used map[string]struct{}
	if err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) (err error) {
		used, err = s.usedBlobs(ctx)
		return err
	}); err != nil {
		return err
	}
	return s.cache.Prune(ctx, used)
}

// createSnapshot creates the snapshot with containerd's overlay snapshotter
// and adds raksh's files to its directory: the layer record of a staged
// encrypted layer, the chain marker, and for a container rootfs on a raksh
// image the rootfs descriptor, whose bind mount it then returns. If that
// fails the snapshot is removed again.
func (s *Snapshotter) createSnapshot(ctx context.Context, kind snapshots.Kind, key, parent string, opts []snapshots.Opt, staged *layerRecord) (_ []mount.Mount, err error) {
	var mounts []mount.Mount
	if kind == snapshots.KindView {
		mounts, err = s.overlay.View(ctx, key, parent, opts...)
	} else {
		mounts, err = s.overlay.Prepare(ctx, key, parent, opts...)
	}
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			if err1 := s.overlay.Remove(ctx, key); err1 != nil {
				log.G(ctx).WithError(err1).WithField("key", key).Error("failed to remove snapshot after a failed prepare")
			}
		}
	}()

	var (
		sn   storage.Snapshot
		info snapshots.Info
		desc *rootfs.Descriptor
	)
	if err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) (err error) {
		if sn, err = storage.GetSnapshot(ctx, key); err != nil {
			return fmt.Errorf("failed to get snapshot: %w", err)
		}
		if _, info, _, err = storage.GetInfo(ctx, key); err != nil {
			return fmt.Errorf("failed to get snapshot info: %w", err)
		}
		if staged == nil && len(sn.ParentIDs) > 0 && !isExtraction(key, info.Labels) && s.chainHasRaksh(sn.ParentIDs[0]) {
			desc, err = s.rootfsDescriptor(ctx, sn.ParentIDs)
		}
		return err
	}); err != nil {
		return nil, err
	}
	dir := s.snapshotPath(sn.ID)
	if staged != nil {
		staged.DiffID = info.Labels[snapshots.LabelSnapshotDiffID]
		if err := writeLayerRecord(dir, staged); err != nil {
			return nil, err
		}
	}
	if len(sn.ParentIDs) > 0 && s.chainHasRaksh(sn.ParentIDs[0]) {
		// Mark the chain so children find out from their parent alone.
		if err := os.WriteFile(filepath.Join(dir, chainMarkerName), nil, 0o644); err != nil {
			return nil, err
		}
	}
	if desc != nil {
		if err := rootfs.Write(s.rootfsPath(sn.ID), desc); err != nil {
			return nil, fmt.Errorf("failed to write raksh rootfs descriptor: %w", err)
		}
		m, _ := s.rootfsMounts(sn.ID)
		return m, nil
	}
	if staged != nil {
		// Read-only last mount: containerd's unpacker treats the layer as
		// staged and commits without fetching or applying it.
		return []mount.Mount{{Source: s.upperPath(sn.ID), Type: "bind", Options: []string{"ro", "rbind"}}}, nil
	}
	return mounts, nil
}

// extractionKey matches containerd's unpack keys (snapshots.UnpackKeyFormat,
// "extract-<unique> <chain ID>"), possibly prefixed by the namespace and
// sequence containerd's metadata store adds ("<ns>/<n>/").
var extractionKey = regexp.MustCompile(`(^|/)extract-[^ /]+ [a-z0-9]+:[a-f0-9]+$`)

// isExtraction reports whether a new snapshot is a layer being unpacked
// rather than a container rootfs: labelled by containerd's unpacker, or keyed
// like one (ctr pull --local and ctr image unpack pass no labels).
func isExtraction(key string, labels map[string]string) bool {
	if _, ok := labels[snapshots.LabelSnapshotRef]; ok {
		return true
	}
	return extractionKey.MatchString(key)
}

// rootfsMounts returns the read-only bind mount of snapshot id's rootfs
// descriptor directory, if it has one.
func (s *Snapshotter) rootfsMounts(id string) ([]mount.Mount, bool) {
	dir := s.rootfsPath(id)
	if !fileExists(filepath.Join(dir, rootfs.FileName)) {
		return nil, false
	}
	return []mount.Mount{{Source: dir, Type: "bind", Options: []string{"ro", "rbind"}}}, true
}

// Snapshot directories as containerd's overlay snapshotter lays them out,
// plus raksh's rootfs descriptor directory.
func (s *Snapshotter) snapshotPath(id string) string { return filepath.Join(s.root, "snapshots", id) }
func (s *Snapshotter) upperPath(id string) string {
	return filepath.Join(s.root, "snapshots", id, "fs")
}
func (s *Snapshotter) rootfsPath(id string) string {
	return filepath.Join(s.root, "snapshots", id, "rootfs")
}

// chainMarkerName marks a snapshot whose parent chain holds raksh layers.
const chainMarkerName = "raksh-chain"

// chainHasRaksh reports whether snapshot id is a raksh layer or sits on one.
func (s *Snapshotter) chainHasRaksh(id string) bool {
	dir := s.snapshotPath(id)
	return fileExists(filepath.Join(dir, layerRecordName)) || fileExists(filepath.Join(dir, chainMarkerName))
}

func fileExists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// Close closes the metadata store.
func (s *Snapshotter) Close() error {
	return s.overlay.Close()
}
