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
	"strings"
	"sync"
	"syscall"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/containerd/v2/plugins/snapshots/overlay/overlayutils"
	"github.com/containerd/continuity/fs"
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
type Snapshotter struct {
	root    string
	ms      *storage.MetaStore
	opts    options
	cache   *BlobCache
	overlay []string // overlay mount options

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
	supportsDType, err := fs.SupportsDType(root)
	if err != nil {
		return nil, err
	}
	if !supportsDType {
		return nil, fmt.Errorf("%s does not support d_type: %w", root, errdefs.ErrFailedPrecondition)
	}
	for _, d := range []string{"snapshots"} {
		if err := os.Mkdir(filepath.Join(root, d), 0o700); err != nil && !os.IsExist(err) {
			return nil, err
		}
	}
	cache, err := NewBlobCache(filepath.Join(root, "cache"))
	if err != nil {
		return nil, err
	}
	ms, err := storage.NewMetaStore(filepath.Join(root, "metadata.db"))
	if err != nil {
		return nil, err
	}
	mopts := append([]string(nil), o.mountOptions...)
	if !hasOption(mopts, "userxattr") {
		userxattr, err := overlayutils.NeedsUserXAttr(root)
		if err != nil {
			log.L.WithError(err).Debug("cannot detect whether overlay needs userxattr")
		}
		if userxattr {
			mopts = append(mopts, "userxattr")
		}
	}
	if !hasOption(mopts, "index") {
		if _, err := os.Stat("/sys/module/overlay/parameters/index"); err == nil {
			mopts = append(mopts, "index=off")
		}
	}
	sn := &Snapshotter{root: root, ms: ms, opts: o, cache: cache, overlay: mopts}
	// A kill -9 inside a create transaction can leave a snapshot directory
	// whose ID was never committed; the ID is then handed out again and the
	// rename into place would fail. Remove such directories now.
	var stale []string
	if err := ms.WithTransaction(context.Background(), false, func(ctx context.Context) (err error) {
		stale, err = sn.getCleanupDirectories(ctx)
		return err
	}); err != nil {
		ms.Close()
		return nil, err
	}
	for _, dir := range stale {
		log.L.WithField("path", dir).Info("removing snapshot directory left by an interrupted transaction")
		if err := os.RemoveAll(dir); err != nil {
			ms.Close()
			return nil, err
		}
	}
	return sn, nil
}

func hasOption(options []string, key string) bool {
	for _, option := range options {
		if k, _, _ := strings.Cut(option, "="); k == key {
			return true
		}
	}
	return false
}

// Cache returns the ciphertext blob cache.
func (s *Snapshotter) Cache() *BlobCache { return s.cache }

// Stat returns the info for an active or committed snapshot by name or key.
func (s *Snapshotter) Stat(ctx context.Context, key string) (info snapshots.Info, err error) {
	err = s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		_, info, _, err = storage.GetInfo(ctx, key)
		return err
	})
	return info, err
}

// Update updates the labels of a snapshot.
func (s *Snapshotter) Update(ctx context.Context, info snapshots.Info, fieldpaths ...string) (newInfo snapshots.Info, err error) {
	err = s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		newInfo, err = storage.UpdateInfo(ctx, info, fieldpaths...)
		return err
	})
	return newInfo, err
}

// Usage returns the resources taken by the snapshot identified by key. For
// active snapshots the upper directory is scanned; guest-pulled and
// encrypted layers use no space in their snapshot (the shared ciphertext
// cache is accounted for separately, see BlobCache).
func (s *Snapshotter) Usage(ctx context.Context, key string) (snapshots.Usage, error) {
	var (
		usage snapshots.Usage
		info  snapshots.Info
		id    string
		err   error
	)
	if err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		id, info, usage, err = storage.GetInfo(ctx, key)
		return err
	}); err != nil {
		return usage, err
	}
	if info.Kind == snapshots.KindActive {
		du, err := fs.DiskUsage(ctx, s.upperPath(id))
		if err != nil {
			return snapshots.Usage{}, err
		}
		usage = snapshots.Usage(du)
	}
	return usage, nil
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
func (s *Snapshotter) Mounts(ctx context.Context, key string) (_ []mount.Mount, err error) {
	var sn storage.Snapshot
	if err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		sn, err = storage.GetSnapshot(ctx, key)
		if err != nil {
			return fmt.Errorf("failed to get active mount: %w", err)
		}
		return nil
	}); err != nil {
		return nil, err
	}
	return s.mounts(sn), nil
}

// Commit turns the active snapshot key into the committed snapshot name.
// A layer record the differ wrote into the active snapshot stays with it.
func (s *Snapshotter) Commit(ctx context.Context, name, key string, opts ...snapshots.Opt) error {
	return s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		id, _, _, err := storage.GetInfo(ctx, key)
		if err != nil {
			return err
		}
		usage, err := fs.DiskUsage(ctx, s.upperPath(id))
		if err != nil {
			return err
		}
		if _, err = storage.CommitActive(ctx, key, name, snapshots.Usage(usage), opts...); err != nil {
			return fmt.Errorf("failed to commit snapshot %s: %w", key, err)
		}
		return nil
	})
}

// Remove abandons the snapshot identified by key. The snapshot immediately
// becomes unavailable; its directory is removed now or, with async removal,
// on the next Cleanup. Cached ciphertext is released by Cleanup.
func (s *Snapshotter) Remove(ctx context.Context, key string) (err error) {
	var removals []string
	defer func() {
		if err == nil {
			for _, dir := range removals {
				if err := os.RemoveAll(dir); err != nil {
					log.G(ctx).WithError(err).WithField("path", dir).Warn("failed to remove directory")
				}
			}
		}
	}()
	return s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		if _, _, err = storage.Remove(ctx, key); err != nil {
			return fmt.Errorf("failed to remove snapshot %s: %w", key, err)
		}
		if !s.opts.asyncRemove {
			removals, err = s.getCleanupDirectories(ctx)
			if err != nil {
				return fmt.Errorf("unable to get directories for removal: %w", err)
			}
		}
		return nil
	})
}

// Walk calls fn for every snapshot matching the filters.
func (s *Snapshotter) Walk(ctx context.Context, fn snapshots.WalkFunc, filters ...string) error {
	return s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		return storage.WalkInfo(ctx, fn, filters...)
	})
}

// Cleanup removes directories of removed snapshots and cached ciphertext no
// snapshot refers to any more.
func (s *Snapshotter) Cleanup(ctx context.Context) error {
	var (
		dirs []string
		used map[string]struct{}
	)
	s.cacheMu.Lock()
	defer s.cacheMu.Unlock()
	if err := s.ms.WithTransaction(ctx, true, func(ctx context.Context) (err error) {
		dirs, err = s.getCleanupDirectories(ctx)
		if err != nil {
			return err
		}
		used, err = s.usedBlobs(ctx)
		return err
	}); err != nil {
		return err
	}
	for _, dir := range dirs {
		if err := os.RemoveAll(dir); err != nil {
			log.G(ctx).WithError(err).WithField("path", dir).Warn("failed to remove directory")
		}
	}
	return s.cache.Prune(ctx, used)
}

func (s *Snapshotter) getCleanupDirectories(ctx context.Context) ([]string, error) {
	ids, err := storage.IDMap(ctx)
	if errdefs.IsNotFound(err) {
		ids = nil // a database without snapshots yet: every directory is stale
	} else if err != nil {
		return nil, err
	}
	snapshotDir := filepath.Join(s.root, "snapshots")
	entries, err := os.ReadDir(snapshotDir)
	if err != nil {
		return nil, err
	}
	var cleanup []string
	for _, e := range entries {
		if _, ok := ids[e.Name()]; ok {
			continue
		}
		cleanup = append(cleanup, filepath.Join(snapshotDir, e.Name()))
	}
	return cleanup, nil
}

func (s *Snapshotter) createSnapshot(ctx context.Context, kind snapshots.Kind, key, parent string, opts []snapshots.Opt, staged *layerRecord) (_ []mount.Mount, err error) {
	var (
		sn       storage.Snapshot
		td, path string
		isRootfs bool
	)
	defer func() {
		if err != nil {
			if td != "" {
				if err1 := os.RemoveAll(td); err1 != nil {
					log.G(ctx).WithError(err1).Warn("failed to cleanup temp snapshot directory")
				}
			}
			if path != "" {
				if err1 := os.RemoveAll(path); err1 != nil {
					log.G(ctx).WithError(err1).WithField("path", path).Error("failed to reclaim snapshot directory, directory may need removal")
					err = fmt.Errorf("failed to remove path: %v: %w", err1, err)
				}
			}
		}
	}()

	if err := s.ms.WithTransaction(ctx, true, func(ctx context.Context) (err error) {
		snapshotDir := filepath.Join(s.root, "snapshots")
		td, err = prepareDirectory(snapshotDir, kind)
		if err != nil {
			return fmt.Errorf("failed to create prepare snapshot dir: %w", err)
		}
		sn, err = storage.CreateSnapshot(ctx, kind, key, parent, opts...)
		if err != nil {
			return fmt.Errorf("failed to create snapshot: %w", err)
		}
		_, info, _, err := storage.GetInfo(ctx, key)
		if err != nil {
			return fmt.Errorf("failed to get snapshot info: %w", err)
		}

		if staged != nil {
			staged.DiffID = info.Labels[snapshots.LabelSnapshotDiffID]
			if err := writeLayerRecord(td, staged); err != nil {
				return err
			}
		}
		if len(sn.ParentIDs) > 0 && s.chainHasRaksh(sn.ParentIDs[0]) {
			// Mark the chain so children find out from their parent alone.
			if err := os.WriteFile(filepath.Join(td, chainMarkerName), nil, 0o644); err != nil {
				return err
			}
		}
		if staged == nil && len(sn.ParentIDs) > 0 && !isExtraction(key, info.Labels) && s.chainHasRaksh(sn.ParentIDs[0]) {
			desc, err := s.rootfsDescriptor(ctx, sn.ParentIDs)
			if err != nil {
				return err
			}
			if desc != nil {
				if err := rootfs.Write(filepath.Join(td, "rootfs"), desc); err != nil {
					return fmt.Errorf("failed to write raksh rootfs descriptor: %w", err)
				}
				isRootfs = true
			}
		}

		if len(sn.ParentIDs) > 0 && !isRootfs {
			st, err := os.Stat(s.upperPath(sn.ParentIDs[0]))
			if err != nil {
				return fmt.Errorf("failed to stat parent: %w", err)
			}
			stat, ok := st.Sys().(*syscall.Stat_t)
			if !ok {
				return errors.New("incompatible types after stat call: *syscall.Stat_t expected")
			}
			if err := os.Lchown(filepath.Join(td, "fs"), int(stat.Uid), int(stat.Gid)); err != nil {
				return fmt.Errorf("failed to chown: %w", err)
			}
		}

		path = filepath.Join(snapshotDir, sn.ID)
		if err = os.Rename(td, path); err != nil {
			return fmt.Errorf("failed to rename: %w", err)
		}
		td = ""
		return nil
	}); err != nil {
		return nil, err
	}
	if staged != nil {
		// Read-only last mount: containerd's unpacker treats the layer as
		// staged and commits without fetching or applying it.
		return []mount.Mount{{Source: s.upperPath(sn.ID), Type: "bind", Options: []string{"ro", "rbind"}}}, nil
	}
	return s.mounts(sn), nil
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

func prepareDirectory(snapshotDir string, kind snapshots.Kind) (string, error) {
	td, err := os.MkdirTemp(snapshotDir, "new-")
	if err != nil {
		return "", fmt.Errorf("failed to create temp dir: %w", err)
	}
	if err := os.Mkdir(filepath.Join(td, "fs"), 0o755); err != nil {
		return td, err
	}
	if kind == snapshots.KindActive {
		if err := os.Mkdir(filepath.Join(td, "work"), 0o711); err != nil {
			return td, err
		}
	}
	return td, nil
}

func (s *Snapshotter) mounts(sn storage.Snapshot) []mount.Mount {
	if dir := s.rootfsPath(sn.ID); fileExists(filepath.Join(dir, rootfs.FileName)) {
		return []mount.Mount{{Source: dir, Type: "bind", Options: []string{"ro", "rbind"}}}
	}
	if len(sn.ParentIDs) == 0 {
		roFlag := "rw"
		if sn.Kind == snapshots.KindView {
			roFlag = "ro"
		}
		return []mount.Mount{{Source: s.upperPath(sn.ID), Type: "bind", Options: []string{roFlag, "rbind"}}}
	}
	var options []string
	if sn.Kind == snapshots.KindActive {
		options = append(options,
			fmt.Sprintf("workdir=%s", s.workPath(sn.ID)),
			fmt.Sprintf("upperdir=%s", s.upperPath(sn.ID)),
		)
	} else if len(sn.ParentIDs) == 1 {
		return []mount.Mount{{Source: s.upperPath(sn.ParentIDs[0]), Type: "bind", Options: []string{"ro", "rbind"}}}
	}
	parentPaths := make([]string, len(sn.ParentIDs))
	for i := range sn.ParentIDs {
		parentPaths[i] = s.upperPath(sn.ParentIDs[i])
	}
	options = append(options, fmt.Sprintf("lowerdir=%s", strings.Join(parentPaths, ":")))
	options = append(options, s.overlay...)
	return []mount.Mount{{Type: "overlay", Source: "overlay", Options: options}}
}

func (s *Snapshotter) snapshotPath(id string) string { return filepath.Join(s.root, "snapshots", id) }
func (s *Snapshotter) upperPath(id string) string {
	return filepath.Join(s.root, "snapshots", id, "fs")
}
func (s *Snapshotter) workPath(id string) string {
	return filepath.Join(s.root, "snapshots", id, "work")
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
	return s.ms.Close()
}
