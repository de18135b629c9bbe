//go:build linux

package snapshotter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/snapshotters"
	"github.com/containerd/continuity"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

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
	return continuity.AtomicWriteFile(filepath.Join(dir, layerRecordName), b, 0o600)
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
		// The directory layout of containerd's overlay snapshotter: an
		// (empty) fs directory children's upper directories are owned like.
		td, err = os.MkdirTemp(filepath.Join(s.root, "snapshots"), "new-")
		if err != nil {
			return fmt.Errorf("failed to create temp dir: %w", err)
		}
		if err := os.Mkdir(filepath.Join(td, "fs"), 0o755); err != nil {
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
//
// Plain layers in the chain are snapshots an ordinary image may have
// unpacked first (chain IDs come from plaintext diff IDs, so a raksh image
// shares them with any image built on the same base). The guest never uses
// their host directories: it fetches them from the registry by digest, so
// the descriptor must name them by the raksh image's own layer digest. That
// comes from the raksh image's manifest in containerd's content store
// (resolveImageLayers); the labels an earlier labelled pull left on the
// snapshot are only a fallback when the content store is not reachable,
// because another image may carry the same tar compressed differently.
func (s *Snapshotter) rootfsDescriptor(ctx context.Context, parentIDs []string) (*rootfs.Descriptor, error) {
	n := len(parentIDs)
	// Bottom first from here on: index i is the image's layer i.
	ids := make([]string, n)
	recs := make([]*layerRecord, n)
	raksh, plain, guestPull := false, false, false
	for i := range parentIDs {
		id := parentIDs[n-1-i]
		rec, err := readLayerRecord(s.snapshotPath(id))
		if err != nil {
			return nil, err
		}
		ids[i], recs[i] = id, rec
		raksh = raksh || rec != nil
		plain = plain || rec == nil
		guestPull = guestPull || (rec != nil && rec.Source == rootfs.SourceGuestPull)
	}
	if !raksh {
		return nil, nil
	}
	desc := &rootfs.Descriptor{Version: rootfs.Version, Mode: rootfs.ModeLayers}
	if guestPull {
		desc.Mode = rootfs.ModeGuestPull
	}
	for _, rec := range recs {
		if rec == nil {
			continue
		}
		if rec.ImageRef != "" {
			desc.ImageRef = rec.ImageRef
		}
		if rec.ManifestDigest != "" {
			desc.ManifestDigest = rec.ManifestDigest
		}
	}

	var (
		names    []string
		infos    []snapshots.Info
		resolved *imageLayers
		rerr     error
	)
	if plain {
		idNames, err := storage.IDMap(ctx)
		if err != nil {
			return nil, err
		}
		names = make([]string, n)
		infos = make([]snapshots.Info, n)
		for i, id := range ids {
			names[i] = idNames[id]
			if recs[i] == nil && names[i] != "" {
				if _, info, _, err := storage.GetInfo(ctx, names[i]); err == nil {
					infos[i] = info
				}
			}
		}
		// containerd is called inside the metadata transaction: bound it.
		rctx, cancel := context.WithTimeout(namespaceFromNames(ctx, names), resolveTimeout)
		resolved, rerr = s.resolveImageLayers(rctx, names, recs)
		if rerr == nil && desc.ManifestDigest == "" {
			desc.ManifestDigest = resolved.manifest.String()
		}
		if rerr == nil && desc.Mode == rootfs.ModeLayers && desc.ImageRef == "" {
			// Unpacked without labels: the guest needs a reference to fetch
			// the plain layers by; any image of this manifest will do (the
			// guest checks the manifest digest).
			ref, err := s.imageRef(rctx, resolved.manifest)
			if err != nil {
				log.G(ctx).WithError(err).WithField("manifest", resolved.manifest).Debug("no image reference for the raksh image")
			}
			desc.ImageRef = ref
		}
		cancel()
	}

	for i, rec := range recs {
		if rec == nil {
			l, err := plainLayer(ctx, i, names[i], infos[i], resolved, rerr, desc.Mode)
			if err != nil {
				return nil, err
			}
			if desc.Mode == rootfs.ModeGuestPull {
				// The guest pulls the whole image by reference: a base layer
				// shared with an ordinary image is pulled too, the host
				// directory is not handed over.
				l.Source = rootfs.SourceGuestPull
			} else {
				l.Source, l.Path = rootfs.SourceDir, s.upperPath(ids[i])
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
		if rec.Source == rootfs.SourceBlob {
			d, err := digest.Parse(rec.Digest)
			if err != nil {
				return nil, fmt.Errorf("corrupt layer record: %w", err)
			}
			l.Path = s.cache.Path(d)
		}
		desc.Layers = append(desc.Layers, l)
	}
	if plain && desc.Mode == rootfs.ModeLayers && (desc.ImageRef == "" || desc.ManifestDigest == "") {
		// The guest fetches plain layers from the registry by digest; it
		// needs the reference and the manifest for that.
		return nil, fmt.Errorf("raksh image with plain layers was unpacked without image labels (ctr pull --local, ctr image import, ctr image unpack) "+
			"and no containerd image names its manifest: the guest must fetch its plain layers from the registry but the image reference is unknown; "+
			"remove the image (`ctr image rm --sync`) and pull it again with `ctr image pull` (transfer service) or through the CRI: %w", errdefs.ErrFailedPrecondition)
	}
	log.G(ctx).WithField("mode", desc.Mode).WithField("layers", len(desc.Layers)).Debug("raksh rootfs descriptor")
	return desc, nil
}

// plainLayer names plain layer i of a raksh image (committed snapshot name,
// info) by digest: from the raksh image's manifest when it was resolved,
// else from the labels a labelled pull left on the snapshot.
func plainLayer(ctx context.Context, i int, name string, info snapshots.Info, resolved *imageLayers, rerr error, mode string) (rootfs.Layer, error) {
	if resolved != nil {
		m := resolved.layers[i]
		if label := info.Labels[snapshotters.TargetLayerDigestLabel]; label != "" && label != m.Digest.String() {
			log.G(ctx).WithField("snapshot", name).WithField("label", label).WithField("manifest", m.Digest).
				Debug("shared plain layer: the raksh image's manifest names another blob of the same tar")
		}
		// Media type and annotations as the manifest has them: a layer the
		// raksh image ships encrypted may share its plaintext (hence its chain
		// ID) with an ordinary image's plain layer, and the guest then
		// fetches and decrypts it like any encrypted layer.
		return rootfs.Layer{Digest: m.Digest.String(), DiffID: resolved.diffIDs[i].String(), MediaType: m.MediaType, Annotations: m.Annotations, Size: m.Size}, nil
	}
	l := rootfs.Layer{
		Digest: info.Labels[snapshotters.TargetLayerDigestLabel],
		DiffID: info.Labels[snapshots.LabelSnapshotDiffID],
	}
	if l.Digest == "" && mode == rootfs.ModeGuestPull && l.DiffID != "" {
		// The guest pulls the image by its manifest digest and does not use
		// per-layer digests; the diff ID stands in (exact for uncompressed
		// layers).
		l.Digest = l.DiffID
	}
	if l.Digest == "" {
		fix := "set containerd_address in the raksh-snapshotter config so it can read the manifest from containerd's content store"
		if !errors.Is(rerr, errNoContentStore) {
			fix = "check that containerd is reachable at containerd_address and still holds the raksh image"
		}
		return l, fmt.Errorf("plain layer %d (snapshot %s) under a raksh image has no layer digest: it was unpacked without labels "+
			"(ctr image import --local, ctr pull --local, ctr image unpack) and the raksh image's manifest could not be resolved (%v); "+
			"%s, or remove the image that unpacked this layer (`ctr image rm --sync`) and pull it again with `ctr image pull` or through the CRI: %w",
			i, name, rerr, fix, errdefs.ErrFailedPrecondition)
	}
	return l, nil
}

// imageLayers are the layers of a raksh image as its manifest and config name them.
type imageLayers struct {
	manifest digest.Digest
	layers   []ocispec.Descriptor
	diffIDs  []digest.Digest
}

// errNoContentStore: the snapshotter was started without containerd_address.
var errNoContentStore = errors.New("no containerd content store (containerd_address unset)")

// resolveImageLayers finds the manifest of the raksh image whose layer chain
// is names (committed snapshot names, bottom first, ending in their chain
// IDs as containerd's unpackers name them) and returns its layers. The
// candidates are the manifest digests the layer records carry, then
// manifests containerd's GC labels link to a recorded layer at its position.
// A candidate is taken only if its config's diff IDs give exactly the
// chain's chain IDs and every recorded layer digest matches the manifest at
// its position. The content store is read in the caller's namespace, or the
// one the snapshot names carry.
func (s *Snapshotter) resolveImageLayers(ctx context.Context, names []string, recs []*layerRecord) (*imageLayers, error) {
	if s.opts.content == nil {
		return nil, errNoContentStore
	}
	chain := make([]digest.Digest, len(names))
	for i, name := range names {
		d, err := digest.Parse(name[strings.LastIndex(name, "/")+1:])
		if err != nil {
			return nil, fmt.Errorf("snapshot %q of layer %d is not named by a chain ID: %w", name, i, errdefs.ErrNotFound)
		}
		chain[i] = d
	}
	var candidates []digest.Digest
	seen := map[digest.Digest]bool{}
	add := func(d digest.Digest) {
		if d.Validate() == nil && !seen[d] {
			seen[d] = true
			candidates = append(candidates, d)
		}
	}
	for i := len(recs) - 1; i >= 0; i-- {
		if recs[i] != nil && recs[i].ManifestDigest != "" {
			add(digest.Digest(recs[i].ManifestDigest))
		}
	}
	if mgr, ok := s.opts.content.(content.Manager); ok {
		for i := len(recs) - 1; i >= 0; i-- {
			if recs[i] == nil {
				continue
			}
			filter := fmt.Sprintf(`labels.%q==%q`, fmt.Sprintf("containerd.io/gc.ref.content.l.%d", i), recs[i].Digest)
			if err := mgr.Walk(ctx, func(info content.Info) error {
				add(info.Digest)
				return nil
			}, filter); err != nil {
				log.G(ctx).WithError(err).Debug("cannot search containerd's content store for the raksh image's manifest")
			}
			break // the topmost raksh layer is enough: its manifest covers the whole chain
		}
	}
	var readErr error
	for _, md := range candidates {
		il, err := s.readImageLayers(ctx, md)
		if err != nil {
			log.G(ctx).WithError(err).WithField("manifest", md).Debug("manifest candidate unreadable")
			readErr = fmt.Errorf("manifest %s: %w", md, err)
			continue
		}
		if matchesChain(il, chain, recs) {
			return il, nil
		}
	}
	if readErr != nil {
		return nil, fmt.Errorf("no image manifest in containerd's content store describes this layer chain (%d candidates; %w)", len(candidates), readErr)
	}
	return nil, fmt.Errorf("no image manifest in containerd's content store describes this layer chain (%d candidates): %w", len(candidates), errdefs.ErrNotFound)
}

// namespaceFromNames returns ctx with the namespace of the snapshot names
// ("<ns>/<seq>/<name>", as containerd's metadata store names backend
// snapshots) when ctx carries none.
func namespaceFromNames(ctx context.Context, names []string) context.Context {
	if _, ok := namespaces.Namespace(ctx); ok {
		return ctx
	}
	for _, name := range names {
		if ns, _, ok := strings.Cut(name, "/"); ok && ns != "" {
			return namespaces.WithNamespace(ctx, ns)
		}
	}
	return ctx
}

// imageRef returns the name of a containerd image (in the caller's
// namespace) whose target is manifest md, or an index listing it.
func (s *Snapshotter) imageRef(ctx context.Context, md digest.Digest) (string, error) {
	if s.opts.images == nil {
		return "", fmt.Errorf("no containerd image store (containerd_address unset): %w", errdefs.ErrFailedPrecondition)
	}
	ims, err := s.opts.images.List(ctx, fmt.Sprintf("target.digest==%s", md))
	if err != nil {
		return "", err
	}
	var names []string
	for _, im := range ims {
		names = append(names, im.Name)
	}
	if len(names) == 0 {
		// Pulled through an index: look for the manifest in the indexes.
		all, err := s.opts.images.List(ctx)
		if err != nil {
			return "", err
		}
		for _, im := range all {
			if !images.IsIndexType(im.Target.MediaType) {
				continue
			}
			b, err := s.readBlob(ctx, im.Target.Digest)
			if err != nil {
				continue
			}
			var idx ocispec.Index
			if json.Unmarshal(b, &idx) != nil {
				continue
			}
			for _, m := range idx.Manifests {
				if m.Digest == md {
					names = append(names, im.Name)
					break
				}
			}
		}
	}
	if len(names) == 0 {
		return "", fmt.Errorf("no image of manifest %s: %w", md, errdefs.ErrNotFound)
	}
	sort.Strings(names)
	return names[0], nil
}

// resolveTimeout bounds the calls to containerd that resolve a raksh image's
// manifest and name while building a descriptor.
var resolveTimeout = 10 * time.Second

// maxImageBlob bounds the manifest and config read from the content store.
const maxImageBlob = 4 << 20

// readImageLayers reads manifest md and its config from the content store,
// checking both against their digests.
func (s *Snapshotter) readImageLayers(ctx context.Context, md digest.Digest) (*imageLayers, error) {
	read := func(d digest.Digest) ([]byte, error) { return s.readBlob(ctx, d) }
	mb, err := read(md)
	if err != nil {
		return nil, err
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(mb, &m); err != nil {
		return nil, fmt.Errorf("manifest %s: %w", md, errdefs.ErrInvalidArgument)
	}
	cb, err := read(m.Config.Digest)
	if err != nil {
		return nil, err
	}
	var cfg ocispec.Image
	if err := json.Unmarshal(cb, &cfg); err != nil {
		return nil, fmt.Errorf("config %s: %w", m.Config.Digest, errdefs.ErrInvalidArgument)
	}
	return &imageLayers{manifest: md, layers: m.Layers, diffIDs: cfg.RootFS.DiffIDs}, nil
}

// readBlob reads a manifest, index or config from the content store and
// checks it against its digest.
func (s *Snapshotter) readBlob(ctx context.Context, d digest.Digest) ([]byte, error) {
	if s.opts.content == nil {
		return nil, errNoContentStore
	}
	ra, err := s.opts.content.ReaderAt(ctx, ocispec.Descriptor{Digest: d})
	if err != nil {
		return nil, err
	}
	defer ra.Close()
	if ra.Size() > maxImageBlob {
		return nil, fmt.Errorf("blob %s too large (%d bytes): %w", d, ra.Size(), errdefs.ErrInvalidArgument)
	}
	b := make([]byte, ra.Size())
	if _, err := ra.ReadAt(b, 0); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	if digest.FromBytes(b) != d {
		return nil, fmt.Errorf("blob %s: content does not match its digest: %w", d, errdefs.ErrDataLoss)
	}
	return b, nil
}

// matchesChain reports whether il's layers are exactly the chain: same
// length, its diff IDs give the chain IDs, and raksh layer records name the
// manifest's layer digest at their position.
func matchesChain(il *imageLayers, chain []digest.Digest, recs []*layerRecord) bool {
	if len(il.layers) != len(chain) || len(il.diffIDs) != len(chain) {
		return false
	}
	for _, d := range il.diffIDs {
		if d.Validate() != nil {
			return false
		}
	}
	for i, id := range identity.ChainIDs(append([]digest.Digest(nil), il.diffIDs...)) {
		if id != chain[i] {
			return false
		}
	}
	for i, rec := range recs {
		if rec != nil && rec.Digest != il.layers[i].Digest.String() {
			return false
		}
	}
	return true
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
