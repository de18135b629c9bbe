//go:build linux

package snapshotter

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/snapshotters"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/identity"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/raksh-project/raksh/snapshotter/rootfs"
)

// sharedBaseImage is a two-layer raksh image (plain gzip base, raksh top) as
// containerd's content store holds it: manifest, config and the GC labels
// containerd puts on the manifest.
type sharedBaseImage struct {
	base, top         ocispec.Descriptor
	baseDiff, topDiff digest.Digest
	manifest          digest.Digest
	store             memStore
}

func newSharedBaseImage(t *testing.T, topMediaType string, topBlob []byte, configDiffIDs ...digest.Digest) *sharedBaseImage {
	t.Helper()
	im := &sharedBaseImage{
		base: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromString("base blob (gzip)"), Size: 1234,
			Annotations: map[string]string{"org.example.base": "from the manifest"}},
		top:      ocispec.Descriptor{MediaType: topMediaType, Digest: digest.FromBytes(topBlob), Size: int64(len(topBlob))},
		baseDiff: digest.FromString("base tar"),
		topDiff:  digest.FromString("top tar"),
	}
	if configDiffIDs == nil {
		configDiffIDs = []digest.Digest{im.baseDiff, im.topDiff}
	}
	cfg, err := json.Marshal(ocispec.Image{Platform: ocispec.Platform{Architecture: "amd64", OS: "linux"},
		RootFS: ocispec.RootFS{Type: "layers", DiffIDs: configDiffIDs}})
	if err != nil {
		t.Fatal(err)
	}
	cfgDesc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(cfg), Size: int64(len(cfg))}
	man, err := json.Marshal(ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest, Config: cfgDesc, Layers: []ocispec.Descriptor{im.base, im.top}})
	if err != nil {
		t.Fatal(err)
	}
	im.manifest = digest.FromBytes(man)
	im.store = memStore{
		memContent: memContent{cfgDesc.Digest: cfg, im.manifest: man, im.top.Digest: topBlob},
		labels: map[digest.Digest]map[string]string{im.manifest: {
			"containerd.io/gc.ref.content.config": cfgDesc.Digest.String(),
			"containerd.io/gc.ref.content.l.0":    im.base.Digest.String(),
			"containerd.io/gc.ref.content.l.1":    im.top.Digest.String(),
		}},
	}
	return im
}

func (im *sharedBaseImage) chain() (base, top digest.Digest) {
	ids := identity.ChainIDs([]digest.Digest{im.baseDiff, im.topDiff})
	return ids[0], ids[1]
}

// TestSharedBaseUnlabelled: a raksh image whose base layer an ordinary image
// already unpacked on the node. Snapshot keys and names are those
// containerd's metadata store gives the backend ("<ns>/<seq>/<name>").
func TestSharedBaseUnlabelled(t *testing.T) {
	const ref = "127.0.0.1:5000/raksh/app:1"
	otherGzip := digest.FromString("the same tar, compressed differently by another image")
	for _, tc := range []struct {
		name string
		// encrypted: the top layer is an encrypted layer in the ciphertext
		// cache (mode layers); otherwise it is guest-pulled.
		encrypted bool
		// baseLabels are the labels of the base's extraction (nil: ctr image
		// import --local / ctr image unpack, no labels at all).
		baseLabels func(im *sharedBaseImage) map[string]string
		// topLabelled: the raksh layer was pulled with the CRI labels.
		topUnlabelled bool
		noContent     bool
		configDiffIDs func(im *sharedBaseImage) []digest.Digest
		// images: containerd's images (nil: no image lister).
		images   func(im *sharedBaseImage) fakeImages
		wantErr  string // substring; "" = success
		wantBase func(im *sharedBaseImage) digest.Digest
	}{
		{name: "guest pull over an unlabelled import"},
		{name: "encrypted over an unlabelled import", encrypted: true},
		{name: "guest pull over ctr pull --local (diff ID label only)", baseLabels: func(im *sharedBaseImage) map[string]string {
			return map[string]string{snapshots.LabelSnapshotDiffID: im.baseDiff.String()}
		}},
		{name: "encrypted over ctr pull --local (diff ID label only)", encrypted: true, baseLabels: func(im *sharedBaseImage) map[string]string {
			return map[string]string{snapshots.LabelSnapshotDiffID: im.baseDiff.String()}
		}},
		{name: "labelled base from another image: the raksh manifest wins", encrypted: true,
			baseLabels: func(im *sharedBaseImage) map[string]string {
				return map[string]string{snapshots.LabelSnapshotDiffID: im.baseDiff.String(), snapshotters.TargetLayerDigestLabel: otherGzip.String()}
			}},
		{name: "labelled base, no content store: labels still do", encrypted: false, noContent: true,
			baseLabels: func(im *sharedBaseImage) map[string]string {
				return map[string]string{snapshots.LabelSnapshotDiffID: im.baseDiff.String(), snapshotters.TargetLayerDigestLabel: im.base.Digest.String()}
			}},
		{name: "no labels, no content store", noContent: true, wantErr: "containerd_address"},
		{name: "manifest does not describe the chain",
			configDiffIDs: func(im *sharedBaseImage) []digest.Digest {
				return []digest.Digest{digest.FromString("other"), im.topDiff}
			},
			wantErr: "no image manifest in containerd's content store describes"},
		{name: "unlabelled encrypted top: no image reference for the guest", encrypted: true, topUnlabelled: true, wantErr: "image reference"},
		{name: "unlabelled encrypted top: no image of its manifest", encrypted: true, topUnlabelled: true, wantErr: "image reference",
			images: func(im *sharedBaseImage) fakeImages {
				return fakeImages{{Name: "other:1", Target: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromString("other")}}}
			}},
		{name: "unlabelled encrypted top: reference from containerd's image", encrypted: true, topUnlabelled: true,
			images: func(im *sharedBaseImage) fakeImages {
				return fakeImages{
					{Name: "zz-other:1", Target: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromString("other")}},
					{Name: ref, Target: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: im.manifest}},
				}
			}},
		{name: "unlabelled encrypted top: reference from containerd's image of an index", encrypted: true, topUnlabelled: true,
			images: func(im *sharedBaseImage) fakeImages {
				idx, err := json.Marshal(ocispec.Index{MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{
					{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromString("arm64 manifest")},
					{MediaType: ocispec.MediaTypeImageManifest, Digest: im.manifest},
				}})
				if err != nil {
					panic(err)
				}
				im.store.memContent[digest.FromBytes(idx)] = idx
				return fakeImages{{Name: ref, Target: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageIndex, Digest: digest.FromBytes(idx)}}}
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testCtx(t)
			topBlob := []byte("top layer blob " + tc.name)
			mt := ocispec.MediaTypeImageLayerGzip
			if tc.encrypted {
				mt = encMediaType
			}
			var cfgIDs []digest.Digest
			im := newSharedBaseImage(t, mt, topBlob)
			if tc.configDiffIDs != nil {
				cfgIDs = tc.configDiffIDs(im)
				im = newSharedBaseImage(t, mt, topBlob, cfgIDs...)
			}
			baseChain, topChain := im.chain()
			var opts []Opt
			if !tc.encrypted {
				opts = append(opts, WithGuestPull(`127\.0\.0\.1:\d+/raksh/.*`))
			}
			if tc.images != nil {
				opts = append(opts, WithImageLister(tc.images(im)))
			}
			if !tc.noContent {
				opts = append(opts, WithContentProvider(im.store))
			} else if tc.encrypted {
				t.Fatal("bad test: the differ needs the content store")
			}
			sn, _ := newTest(t, opts...)

			// The ordinary image's unpack of the shared base.
			key := "test/1/extract-1-aaaa " + baseChain.String()
			var sopts []snapshots.Opt
			if tc.baseLabels != nil {
				sopts = append(sopts, snapshots.WithLabels(tc.baseLabels(im)))
			}
			if _, err := sn.Prepare(ctx, key, "", sopts...); err != nil {
				t.Fatal(err)
			}
			baseName := "test/2/" + baseChain.String()
			if err := sn.Commit(ctx, baseName, key, sopts...); err != nil {
				t.Fatal(err)
			}

			// The raksh image's top layer.
			topName := "test/4/" + topChain.String()
			labels := criLabels(ref, topName, baseName, im.top.Digest, im.manifest, im.topDiff)
			if tc.topUnlabelled {
				labels = nil
			}
			if tc.encrypted {
				if _, err := extract(ctx, sn, "test/3/extract-2-bbbb "+topChain.String(), topName, baseName, im.top, im.topDiff, labels); err != nil {
					t.Fatal(err)
				}
			} else {
				if _, err := sn.Prepare(ctx, "test/3/extract-2-bbbb "+topChain.String(), baseName, snapshots.WithLabels(labels)); !errdefs.IsAlreadyExists(err) {
					t.Fatalf("guest pull of the top layer: %v", err)
				}
			}

			mounts, err := sn.Prepare(ctx, "test/5/container", topName)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errdefs.IsFailedPrecondition(err) {
					t.Fatalf("want a failed precondition mentioning %q, got %v", tc.wantErr, err)
				}
				if _, err := sn.Stat(ctx, "test/5/container"); !errdefs.IsNotFound(err) {
					t.Fatalf("failed Prepare left the container snapshot: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			d, ok, err := rootfs.ParseMounts(mounts)
			if !ok || err != nil {
				t.Fatalf("not a raksh rootfs: %v %v %+v", ok, err, mounts)
			}
			if len(d.Layers) != 2 {
				t.Fatalf("descriptor has %d layers: %+v", len(d.Layers), d)
			}
			b, top := d.Layers[0], d.Layers[1]
			if b.Digest != im.base.Digest.String() || b.DiffID != im.baseDiff.String() ||
				(!tc.noContent && (b.MediaType != im.base.MediaType || b.Size != im.base.Size || b.Annotations["org.example.base"] != "from the manifest")) {
				t.Fatalf("base layer %+v: want digest %s (from the raksh manifest), diff ID %s", b, im.base.Digest, im.baseDiff)
			}
			if top.Digest != im.top.Digest.String() || top.DiffID != im.topDiff.String() || d.ImageRef != ref || d.ManifestDigest != im.manifest.String() {
				t.Fatalf("descriptor %+v", d)
			}
			if tc.encrypted {
				if d.Mode != rootfs.ModeLayers || b.Source != rootfs.SourceDir || b.Path == "" || top.Source != rootfs.SourceBlob {
					t.Fatalf("mixed descriptor %+v", d)
				}
			} else if d.Mode != rootfs.ModeGuestPull || b.Source != rootfs.SourceGuestPull || b.Path != "" {
				t.Fatalf("guest-pull descriptor %+v", d)
			}
			if err := d.Validate(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestSharedBaseNamespaceFromKey: a request context without a namespace
// (not what containerd sends, but the names carry it) still resolves the
// manifest in the namespace the snapshot names give.
func TestSharedBaseNamespaceFromKey(t *testing.T) {
	im := newSharedBaseImage(t, ocispec.MediaTypeImageLayerGzip, []byte("top"))
	baseChain, topChain := im.chain()
	ns := nsRecorder{memStore: im.store, seen: map[string]bool{}}
	sn, _ := newTest(t, WithGuestPull(), WithContentProvider(ns))
	ctx := context.Background()
	key := "tenant/1/extract-1-aaaa " + baseChain.String()
	if _, err := sn.Prepare(ctx, key, ""); err != nil {
		t.Fatal(err)
	}
	if err := sn.Commit(ctx, "tenant/2/"+baseChain.String(), key); err != nil {
		t.Fatal(err)
	}
	labels := criLabels("127.0.0.1:5000/raksh/app:1", "tenant/4/"+topChain.String(), "tenant/2/"+baseChain.String(), im.top.Digest, im.manifest, im.topDiff)
	if _, err := sn.Prepare(ctx, "tenant/3/extract-2-bbbb "+topChain.String(), "tenant/2/"+baseChain.String(), snapshots.WithLabels(labels)); !errdefs.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	if _, err := sn.Prepare(ctx, "tenant/5/container", "tenant/4/"+topChain.String()); err != nil {
		t.Fatal(err)
	}
	if len(ns.seen) != 1 || !ns.seen["tenant"] {
		t.Fatalf("content store read in namespaces %v, want only tenant", ns.seen)
	}
}

// nsRecorder records the namespaces content is read in.
type nsRecorder struct {
	memStore
	seen map[string]bool
}

func (n nsRecorder) ReaderAt(ctx context.Context, desc ocispec.Descriptor) (content.ReaderAt, error) {
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return nil, err
	}
	n.seen[ns] = true
	return n.memStore.ReaderAt(ctx, desc)
}

// fakeImages is containerd's image list; it understands the
// target.digest==<digest> filter and no filter.
type fakeImages []images.Image

func (f fakeImages) List(ctx context.Context, filters ...string) ([]images.Image, error) {
	if _, err := namespaces.NamespaceRequired(ctx); err != nil {
		return nil, err
	}
	var out []images.Image
	for _, im := range f {
		match := len(filters) == 0
		for _, flt := range filters {
			match = match || flt == "target.digest=="+im.Target.Digest.String()
		}
		if match {
			out = append(out, im)
		}
	}
	return out, nil
}

// TestSharedBaseContentStoreHangs: a content store that does not answer
// fails the container's Prepare after resolveTimeout instead of holding the
// metadata transaction.
func TestSharedBaseContentStoreHangs(t *testing.T) {
	old := resolveTimeout
	resolveTimeout = 200 * time.Millisecond
	defer func() { resolveTimeout = old }()
	im := newSharedBaseImage(t, ocispec.MediaTypeImageLayerGzip, []byte("top"))
	baseChain, topChain := im.chain()
	sn, _ := newTest(t, WithGuestPull(), WithContentProvider(hangingStore{im.store}))
	ctx := testCtx(t)
	key := "test/1/extract-1-aaaa " + baseChain.String()
	if _, err := sn.Prepare(ctx, key, ""); err != nil {
		t.Fatal(err)
	}
	if err := sn.Commit(ctx, "test/2/"+baseChain.String(), key); err != nil {
		t.Fatal(err)
	}
	labels := criLabels("127.0.0.1:5000/raksh/app:1", "test/4/"+topChain.String(), "test/2/"+baseChain.String(), im.top.Digest, im.manifest, im.topDiff)
	if _, err := sn.Prepare(ctx, "test/3/extract-2-bbbb "+topChain.String(), "test/2/"+baseChain.String(), snapshots.WithLabels(labels)); !errdefs.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	start := time.Now()
	_, err := sn.Prepare(ctx, "test/5/container", "test/4/"+topChain.String())
	if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "deadline") || !strings.Contains(err.Error(), "check that containerd is reachable") {
		t.Fatalf("want a failed precondition naming the deadline, got %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Prepare took %v", d)
	}
	// The metadata store is usable again.
	if _, err := sn.Prepare(ctx, "test/6/other", ""); err != nil {
		t.Fatal(err)
	}
}

// hangingStore blocks every read until the context ends.
type hangingStore struct{ memStore }

func (h hangingStore) ReaderAt(ctx context.Context, desc ocispec.Descriptor) (content.ReaderAt, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}
