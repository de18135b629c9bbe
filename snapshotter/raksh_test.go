//go:build linux

package snapshotter

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/snapshotters"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/raksh-project/raksh/snapshotter/rootfs"
)

const encMediaType = "application/vnd.oci.image.layer.v1.tar+gzip+encrypted"

type memContent map[digest.Digest][]byte

type memReaderAt struct{ *bytes.Reader }

func (memReaderAt) Close() error  { return nil }
func (r memReaderAt) Size() int64 { return r.Reader.Size() }

func (m memContent) ReaderAt(ctx context.Context, desc ocispec.Descriptor) (content.ReaderAt, error) {
	b, ok := m[desc.Digest]
	if !ok {
		return nil, fmt.Errorf("%s: %w", desc.Digest, errdefs.ErrNotFound)
	}
	return memReaderAt{bytes.NewReader(b)}, nil
}

func testCtx(t *testing.T) context.Context {
	return namespaces.WithNamespace(context.Background(), "test")
}

func newTest(t *testing.T, opts ...Opt) (*Snapshotter, string) {
	t.Helper()
	root := t.TempDir()
	sn, err := New(root, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sn.Close() })
	return sn, root
}

func criLabels(ref, target, parent string, layer, manifest, diffID digest.Digest) map[string]string {
	l := map[string]string{
		snapshots.LabelSnapshotRef:                target,
		snapshots.LabelSnapshotDiffID:             diffID.String(),
		snapshotters.TargetRefLabel:               ref,
		snapshotters.TargetLayerDigestLabel:       layer.String(),
		snapshotters.TargetManifestDigestLabel:    manifest.String(),
		"containerd.io/snapshot/cri.image-layers": layer.String(),
	}
	if parent != "" {
		l["containerd.io/snapshot/parent-chain-id"] = parent
	}
	return l
}

// dirHasFiles reports whether any regular file exists under dir whose name is not in allowed.
func countFiles(t *testing.T, dir string) int {
	n := 0
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			n++
		}
		return nil
	})
	return n
}

func TestGuestPull(t *testing.T) {
	ctx := testCtx(t)
	sn, root := newTest(t, WithGuestPull(`127\.0\.0\.1:\d+/raksh/.*`))
	ref := "127.0.0.1:5000/raksh/app:1"
	manifest := digest.FromString("manifest")
	layers := []digest.Digest{digest.FromString("l0"), digest.FromString("l1")}
	diffIDs := []digest.Digest{digest.FromString("d0"), digest.FromString("d1")}
	chain := []string{"chain0", "chain1"}

	parent := ""
	for i := range layers {
		_, err := sn.Prepare(ctx, fmt.Sprintf("extract-%d", i), parent,
			snapshots.WithLabels(criLabels(ref, chain[i], parent, layers[i], manifest, diffIDs[i])))
		if !errdefs.IsAlreadyExists(err) {
			t.Fatalf("layer %d: want ErrAlreadyExists, got %v", i, err)
		}
		info, err := sn.Stat(ctx, chain[i])
		if err != nil {
			t.Fatalf("target %s not committed: %v", chain[i], err)
		}
		if info.Kind != snapshots.KindCommitted || info.Parent != parent || info.Labels[LabelMode] != rootfs.SourceGuestPull {
			t.Fatalf("bad target info %+v", info)
		}
		if _, err := sn.Stat(ctx, fmt.Sprintf("extract-%d", i)); !errdefs.IsNotFound(err) {
			t.Fatalf("extraction key should not survive: %v", err)
		}
		// containerd's metadata store finds the target exactly this way.
		found := 0
		filter := fmt.Sprintf(`labels.%q==%s,parent==%q`, snapshots.LabelSnapshotRef, chain[i], parent)
		if err := sn.Walk(ctx, func(ctx context.Context, i snapshots.Info) error { found++; return nil }, filter); err != nil {
			t.Fatal(err)
		}
		if found != 1 {
			t.Fatalf("walk with %s found %d", filter, found)
		}
		parent = chain[i]
	}
	// A second pull of the same layer (another namespace, a retry) is still "already exists".
	if _, err := sn.Prepare(ctx, "extract-again", "", snapshots.WithLabels(criLabels(ref, chain[0], "", layers[0], manifest, diffIDs[0]))); !errdefs.IsAlreadyExists(err) {
		t.Fatalf("repeat: want ErrAlreadyExists, got %v", err)
	}

	for _, kind := range []string{"prepare", "view"} {
		var (
			mounts []mount.Mount
			err    error
		)
		if kind == "prepare" {
			mounts, err = sn.Prepare(ctx, "container", chain[1])
		} else {
			mounts, err = sn.View(ctx, "view", chain[1])
		}
		if err != nil {
			t.Fatal(err)
		}
		desc, ok, err := rootfs.ParseMounts(mounts)
		if err != nil || !ok {
			t.Fatalf("%s: not a raksh rootfs mount: %v %v (%+v)", kind, ok, err, mounts)
		}
		if !mounts[0].ReadOnly() {
			t.Fatalf("%s: rootfs descriptor mount must be read-only: %+v", kind, mounts[0])
		}
		if desc.Mode != rootfs.ModeGuestPull || desc.ImageRef != ref || desc.ManifestDigest != manifest.String() || len(desc.Layers) != 2 {
			t.Fatalf("bad descriptor %+v", desc)
		}
		for i, l := range desc.Layers {
			if l.Digest != layers[i].String() || l.DiffID != diffIDs[i].String() || l.Source != rootfs.SourceGuestPull || l.Path != "" {
				t.Fatalf("layer %d: %+v", i, l)
			}
		}
		if b, err := os.ReadFile(filepath.Join(mounts[0].Source, "etc", "passwd")); err != nil || !bytes.HasPrefix(b, []byte("root:x:0:0:")) {
			t.Fatalf("stub passwd: %q %v", b, err)
		}
	}
	again, err := sn.Mounts(ctx, "container")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := rootfs.ParseMounts(again); !ok {
		t.Fatalf("Mounts lost the descriptor: %+v", again)
	}
	// The host holds no layer data: the only files are records, descriptors and stubs.
	for _, dir := range []string{filepath.Join(root, "cache")} {
		if n := countFiles(t, dir); n != 0 {
			t.Fatalf("%s holds %d files", dir, n)
		}
	}

	// Restart: committed guest-pull snapshots and the container survive.
	if err := sn.Close(); err != nil {
		t.Fatal(err)
	}
	sn2, err := New(root, WithGuestPull(`127\.0\.0\.1:\d+/raksh/.*`))
	if err != nil {
		t.Fatal(err)
	}
	defer sn2.Close()
	m2, err := sn2.Mounts(ctx, "container")
	if err != nil {
		t.Fatal(err)
	}
	if d, ok, err := rootfs.ParseMounts(m2); !ok || err != nil || d.ImageRef != ref {
		t.Fatalf("after restart: %v %v %+v", ok, err, d)
	}
}

func TestGuestPullNotSelected(t *testing.T) {
	ctx := testCtx(t)
	manifest, layer, diffID := digest.FromString("m"), digest.FromString("l"), digest.FromString("d")
	for _, tc := range []struct {
		name string
		opts []Opt
		ref  string
	}{
		{"disabled", nil, "127.0.0.1:5000/raksh/app:1"},
		{"pattern mismatch", []Opt{WithGuestPull(`127\.0\.0\.1:\d+/raksh/.*`)}, "docker.io/library/busybox:latest"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sn, _ := newTest(t, tc.opts...)
			mounts, err := sn.Prepare(ctx, "extract", "", snapshots.WithLabels(criLabels(tc.ref, "chain0", "", layer, manifest, diffID)))
			if err != nil {
				t.Fatalf("ordinary layer must be prepared normally: %v", err)
			}
			if len(mounts) != 1 || mounts[0].Type != "bind" || mounts[0].ReadOnly() {
				t.Fatalf("want writable bind for extraction, got %+v", mounts)
			}
			if _, ok, _ := rootfs.ParseMounts(mounts); ok {
				t.Fatal("ordinary layer parsed as raksh rootfs")
			}
		})
	}
}

func TestGuestPullMalformedLabels(t *testing.T) {
	ctx := testCtx(t)
	ref := "127.0.0.1:5000/raksh/app:1"
	good := criLabels(ref, "chain0", "", digest.FromString("l"), digest.FromString("m"), digest.FromString("d"))
	for _, tc := range []struct {
		name  string
		key   string
		value string
	}{
		{"bad layer digest", snapshotters.TargetLayerDigestLabel, "sha256:nothex"},
		{"bad manifest digest", snapshotters.TargetManifestDigestLabel, "manifest"},
		{"empty image ref", snapshotters.TargetRefLabel, " "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sn, root := newTest(t, WithGuestPull())
			labels := map[string]string{}
			for k, v := range good {
				labels[k] = v
			}
			labels[tc.key] = tc.value
			_, err := sn.Prepare(ctx, "extract", "", snapshots.WithLabels(labels))
			if !errdefs.IsInvalidArgument(err) {
				t.Fatalf("want ErrInvalidArgument, got %v", err)
			}
			if _, err := sn.Stat(ctx, "chain0"); !errdefs.IsNotFound(err) {
				t.Fatalf("target must not exist: %v", err)
			}
			if entries, _ := os.ReadDir(filepath.Join(root, "snapshots")); len(entries) != 0 {
				t.Fatalf("left behind %d snapshot dirs", len(entries))
			}
		})
	}
}

// extract runs what containerd's unpacker does for one layer through the raksh differ.
func extract(ctx context.Context, sn *Snapshotter, key, target, parent string, desc ocispec.Descriptor, diffID digest.Digest, extra map[string]string) (ocispec.Descriptor, error) {
	labels := map[string]string{snapshots.LabelSnapshotRef: target, snapshots.LabelSnapshotDiffID: diffID.String()}
	for k, v := range extra {
		labels[k] = v
	}
	mounts, err := sn.Prepare(ctx, key, parent, snapshots.WithLabels(labels))
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	applied, err := sn.Differ().Apply(ctx, desc, mounts)
	if err != nil {
		sn.Remove(ctx, key)
		return applied, err
	}
	return applied, sn.Commit(ctx, target, key, snapshots.WithLabels(labels))
}

func TestEncryptedLayerCache(t *testing.T) {
	ctx := testCtx(t)
	ciphertext := []byte("ciphertext-not-really-but-opaque-to-the-host")
	desc := ocispec.Descriptor{
		MediaType:   encMediaType,
		Digest:      digest.FromBytes(ciphertext),
		Size:        int64(len(ciphertext)),
		Annotations: map[string]string{"org.opencontainers.image.enc.keys.jwe": "d3JhcHBlZA==", "org.opencontainers.image.enc.pubopts": "e30="},
	}
	diffID := digest.FromString("plaintext tar")
	sn, root := newTest(t, WithContentProvider(memContent{desc.Digest: ciphertext}))

	applied, err := extract(ctx, sn, "extract-0", "chain0", "", desc, diffID, nil)
	if err != nil {
		t.Fatal(err)
	}
	if applied.Digest != diffID {
		t.Fatalf("differ returned %s, want the diff ID %s", applied.Digest, diffID)
	}
	b, err := os.ReadFile(sn.Cache().Path(desc.Digest))
	if err != nil || !bytes.Equal(b, ciphertext) {
		t.Fatalf("cache does not hold the ciphertext: %v", err)
	}
	mounts, err := sn.Prepare(ctx, "pod-a", "chain0")
	if err != nil {
		t.Fatal(err)
	}
	d, ok, err := rootfs.ParseMounts(mounts)
	if !ok || err != nil {
		t.Fatalf("not a raksh rootfs: %v %v", ok, err)
	}
	l := d.Layers[0]
	if d.Mode != rootfs.ModeLayers || len(d.Layers) != 1 || l.Source != rootfs.SourceBlob || l.Path != sn.Cache().Path(desc.Digest) ||
		l.MediaType != encMediaType || l.Annotations["org.opencontainers.image.enc.keys.jwe"] != "d3JhcHBlZA==" || l.DiffID != diffID.String() {
		t.Fatalf("bad descriptor %+v", d)
	}

	// A second image sharing the layer, pulled with CRI labels: the cache hit
	// is staged (read-only mount), nothing is fetched or applied, one copy.
	labels := criLabels("127.0.0.1:5000/other:1", "chain0-other", "", desc.Digest, digest.FromString("m2"), diffID)
	staged, err := sn.Prepare(ctx, "extract-other", "", snapshots.WithLabels(labels))
	if err != nil {
		t.Fatal(err)
	}
	if len(staged) != 1 || !staged[len(staged)-1].ReadOnly() {
		t.Fatalf("cache hit must be staged read-only, got %+v", staged)
	}
	if err := sn.Commit(ctx, "chain0-other", "extract-other", snapshots.WithLabels(labels)); err != nil {
		t.Fatal(err)
	}
	m2, err := sn.Prepare(ctx, "pod-b", "chain0-other")
	if err != nil {
		t.Fatal(err)
	}
	d2, ok, err := rootfs.ParseMounts(m2)
	if !ok || err != nil || d2.Layers[0].Path != l.Path || d2.ImageRef != "127.0.0.1:5000/other:1" {
		t.Fatalf("second pod: %v %v %+v", ok, err, d2)
	}
	if n := countFiles(t, filepath.Join(root, "cache", "blobs")); n != 2 { // blob + its metadata
		t.Fatalf("cache holds %d files, want one blob and its metadata", n)
	}

	// Cleanup keeps referenced blobs and drops unreferenced ones.
	if err := sn.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if !sn.Cache().Has(desc.Digest) {
		t.Fatal("referenced blob pruned")
	}
	for _, k := range []string{"pod-a", "pod-b", "chain0", "chain0-other"} {
		if err := sn.Remove(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	if err := sn.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if sn.Cache().Has(desc.Digest) {
		t.Fatal("unreferenced blob not pruned")
	}
}

func TestDifferErrors(t *testing.T) {
	ctx := testCtx(t)
	ciphertext := []byte("opaque")
	good := ocispec.Descriptor{MediaType: encMediaType, Digest: digest.FromBytes(ciphertext), Size: int64(len(ciphertext))}
	corrupt := ocispec.Descriptor{MediaType: encMediaType, Digest: digest.FromString("other"), Size: int64(len(ciphertext))}
	store := memContent{good.Digest: ciphertext, corrupt.Digest: ciphertext}

	for _, tc := range []struct {
		name    string
		desc    ocispec.Descriptor
		noDiff  bool
		content bool
		check   func(error) bool
	}{
		{"corrupt ciphertext", corrupt, false, true, errdefs.IsFailedPrecondition},
		{"unknown media type", ocispec.Descriptor{MediaType: "application/x-unknown", Digest: good.Digest}, false, true, errdefs.IsInvalidArgument},
		{"missing diff id label", good, true, true, errdefs.IsFailedPrecondition},
		{"no content store", good, false, false, errdefs.IsFailedPrecondition},
		{"blob not in content store", ocispec.Descriptor{MediaType: encMediaType, Digest: digest.FromString("absent")}, false, true, errdefs.IsNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var opts []Opt
			if tc.content {
				opts = append(opts, WithContentProvider(store))
			}
			sn, root := newTest(t, opts...)
			labels := map[string]string{snapshots.LabelSnapshotRef: "chain0"}
			if !tc.noDiff {
				labels[snapshots.LabelSnapshotDiffID] = digest.FromString("d").String()
			}
			mounts, err := sn.Prepare(ctx, "extract", "", snapshots.WithLabels(labels))
			if err != nil {
				t.Fatal(err)
			}
			_, err = sn.Differ().Apply(ctx, tc.desc, mounts)
			if err == nil || !tc.check(err) {
				t.Fatalf("unexpected error %v", err)
			}
			if n := countFiles(t, filepath.Join(root, "cache")); n != 0 {
				t.Fatalf("cache holds %d files after a failed apply", n)
			}
			if rec, _ := readLayerRecord(filepath.Dir(mounts[0].Source)); rec != nil {
				t.Fatal("layer record written for a failed apply")
			}
		})
	}

	t.Run("foreign mounts", func(t *testing.T) {
		sn, _ := newTest(t, WithContentProvider(store))
		_, err := sn.Differ().Apply(ctx, good, []mount.Mount{{Type: "bind", Source: "/var/lib/containerd/snapshots/1/fs"}})
		if !errdefs.IsNotImplemented(err) {
			t.Fatalf("want ErrNotImplemented for another snapshotter's mounts, got %v", err)
		}
	})
}

func TestListenStaleSocket(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "s.sock")
	l, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(sock); !errdefs.IsAlreadyExists(err) {
		t.Fatalf("second listener on a live socket: want ErrAlreadyExists, got %v", err)
	}
	// Simulate a crash: the socket file stays, nobody listens.
	l.(interface{ SetUnlinkOnClose(bool) }).SetUnlinkOnClose(false)
	l.Close()
	if _, err := os.Stat(sock); err != nil {
		t.Fatalf("stale socket should still exist: %v", err)
	}
	l2, err := Listen(sock)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	l2.Close()
	if err := os.WriteFile(filepath.Join(dir, "file"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(filepath.Join(dir, "file")); err == nil {
		t.Fatal("regular file at the socket path must not be removed")
	}
}

func TestConfig(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, body string
		wantErr    bool
	}{
		{"example", "root = \"/x\"\naddress = \"/x.sock\"\n[guest_pull]\nenable = true\nimage_patterns = [\"127\\\\.0\\\\.0\\\\.1:.*\"]\n", false},
		{"unknown key", "rot = \"/x\"\n", true},
		{"bad pattern", "[guest_pull]\nimage_patterns = [\"(\"]\n", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, tc.name+".toml")
			os.WriteFile(p, []byte(tc.body), 0o600)
			cfg, err := LoadConfig(p)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
			if !tc.wantErr && (!cfg.GuestPull.Enable || cfg.Root != "/x" || len(cfg.Opts()) != 1) {
				t.Fatalf("bad config %+v", cfg)
			}
		})
	}
	if _, err := LoadConfig("../contrib/raksh/snapshotter.toml"); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("shipped example config: %v", err)
	}
}

func TestIsExtraction(t *testing.T) {
	for _, tc := range []struct {
		key    string
		labels map[string]string
		want   bool
	}{
		{"extract-123-abcd sha256:0123abcd", nil, true},
		{"default/7/extract-881726318-mllo sha256:6677c9ec3df3fdbc", nil, true},
		{"default/8/pod-a", nil, false},
		{"k8s.io/9/5f2c0a3e1b", nil, false},
		{"default/9/extract-with-no-chain", nil, false},
		{"default/10/anything", map[string]string{snapshots.LabelSnapshotRef: "sha256:aa"}, true},
	} {
		if got := isExtraction(tc.key, tc.labels); got != tc.want {
			t.Errorf("isExtraction(%q) = %v, want %v", tc.key, got, tc.want)
		}
	}
}

// memStore adds the content.Manager methods the differ uses to memContent,
// with the GC labels containerd puts on a manifest.
type memStore struct {
	memContent
	labels map[digest.Digest]map[string]string
}

func (m memStore) Info(ctx context.Context, d digest.Digest) (content.Info, error) {
	return content.Info{Digest: d, Labels: m.labels[d]}, nil
}
func (m memStore) Update(ctx context.Context, info content.Info, fieldpaths ...string) (content.Info, error) {
	return info, errdefs.ErrNotImplemented
}
func (m memStore) Delete(ctx context.Context, d digest.Digest) error {
	return errdefs.ErrNotImplemented
}
func (m memStore) Walk(ctx context.Context, fn content.WalkFunc, filters ...string) error {
	for d, l := range m.labels {
		match := false
		for _, f := range filters {
			for k, v := range l {
				if f == fmt.Sprintf(`labels.%q==%q`, k, v) {
					match = true
				}
			}
		}
		if match {
			if err := fn(content.Info{Digest: d, Labels: l}); err != nil {
				return err
			}
		}
	}
	return nil
}

// TestDifferUnlabelled covers ctr pull --local / ctr image unpack: no labels,
// extraction recognised by its key, diff ID found through the image config.
func TestDifferUnlabelled(t *testing.T) {
	ctx := testCtx(t)
	ciphertext := []byte("opaque layer bytes")
	layer := ocispec.Descriptor{MediaType: encMediaType, Digest: digest.FromBytes(ciphertext), Size: int64(len(ciphertext))}
	diffID := digest.FromString("plain tar")
	cfg := []byte(fmt.Sprintf(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[%q]}}`, diffID))
	cfgDesc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(cfg), Size: int64(len(cfg))}
	man := []byte(fmt.Sprintf(`{"schemaVersion":2,"config":{"mediaType":%q,"digest":%q,"size":%d},"layers":[{"mediaType":%q,"digest":%q,"size":%d}]}`,
		cfgDesc.MediaType, cfgDesc.Digest, cfgDesc.Size, layer.MediaType, layer.Digest, layer.Size))
	md := digest.FromBytes(man)

	for _, tc := range []struct {
		name     string
		labelled bool
		wantErr  func(error) bool
	}{
		{"manifest found", true, nil},
		{"no manifest references the layer", false, errdefs.IsNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store := memStore{
				memContent: memContent{layer.Digest: ciphertext, cfgDesc.Digest: cfg, md: man},
				labels:     map[digest.Digest]map[string]string{},
			}
			if tc.labelled {
				store.labels[md] = map[string]string{"containerd.io/gc.ref.content.config": cfgDesc.Digest.String(), "containerd.io/gc.ref.content.l.0": layer.Digest.String()}
			}
			sn, _ := newTest(t, WithContentProvider(store))
			key := "default/1/extract-1-abcd " + digest.FromString("chain").String()
			mounts, err := sn.Prepare(ctx, key, "")
			if err != nil {
				t.Fatal(err)
			}
			applied, err := sn.Differ().Apply(ctx, layer, mounts)
			if tc.wantErr != nil {
				if !tc.wantErr(err) {
					t.Fatalf("unexpected error %v", err)
				}
				return
			}
			if err != nil || applied.Digest != diffID {
				t.Fatalf("applied %v, %v; want diff ID %s", applied.Digest, err, diffID)
			}
			// The unlabelled container rootfs on top still gets a descriptor.
			if err := sn.Commit(ctx, "chain", key); err != nil {
				t.Fatal(err)
			}
			m, err := sn.Prepare(ctx, "default/2/container", "chain")
			if err != nil {
				t.Fatal(err)
			}
			if d, ok, err := rootfs.ParseMounts(m); !ok || err != nil || d.Layers[0].DiffID != diffID.String() {
				t.Fatalf("descriptor: %v %v %+v", ok, err, d)
			}
		})
	}
}

// TestCrashLeftovers: what a kill -9 can leave behind is discarded on
// restart (partial cache writes) or by Cleanup (unrenamed snapshot dirs,
// blob metadata without its blob).
func TestCrashLeftovers(t *testing.T) {
	ctx := testCtx(t)
	sn, root := newTest(t)
	if _, err := sn.Prepare(ctx, "kept", ""); err != nil {
		t.Fatal(err)
	}
	sn.Close()
	stray := filepath.Join(root, "snapshots", "new-123456")
	os.MkdirAll(filepath.Join(stray, "fs"), 0o755)
	os.WriteFile(filepath.Join(root, "cache", "ingest", "partial"), []byte("half"), 0o644)
	orphan := filepath.Join(root, "cache", "blobs", "sha256")
	os.MkdirAll(orphan, 0o755)
	orphanMeta := filepath.Join(orphan, digest.FromString("x").Encoded()+".json")
	os.WriteFile(orphanMeta, []byte(`{}`), 0o444)

	// The directory of an ID whose transaction never committed: the next
	// snapshot gets that ID again.
	uncommitted := filepath.Join(root, "snapshots", "2")
	os.MkdirAll(filepath.Join(uncommitted, "fs"), 0o755)
	os.WriteFile(filepath.Join(uncommitted, layerRecordName), []byte(`{"source":"guest-pull"}`), 0o644)

	sn2, err := New(root)
	if err != nil {
		t.Fatal(err)
	}
	defer sn2.Close()
	if entries, _ := os.ReadDir(filepath.Join(root, "cache", "ingest")); len(entries) != 0 {
		t.Fatal("partial cache write survived restart")
	}
	for _, d := range []string{stray, uncommitted} {
		if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("stale snapshot dir %s survived restart", d)
		}
	}
	if _, err := sn2.Prepare(ctx, "next", ""); err != nil {
		t.Fatalf("prepare after an interrupted transaction: %v", err)
	}
	if err := sn2.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(orphanMeta); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("orphan blob metadata not pruned")
	}
	if _, err := sn2.Mounts(ctx, "kept"); err != nil {
		t.Fatalf("active snapshot lost: %v", err)
	}
}

// TestGuestPullKeyExists: an extraction key that already exists is reported
// as such, not as "target present" (containerd would then look for a target
// that is not there).
func TestGuestPullKeyExists(t *testing.T) {
	ctx := testCtx(t)
	sn, _ := newTest(t, WithGuestPull())
	if _, err := sn.Prepare(ctx, "extract-0", ""); err != nil {
		t.Fatal(err)
	}
	labels := criLabels("127.0.0.1:5000/raksh/app:1", "chain0", "", digest.FromString("l"), digest.FromString("m"), digest.FromString("d"))
	_, err := sn.Prepare(ctx, "extract-0", "", snapshots.WithLabels(labels))
	if !errdefs.IsAlreadyExists(err) || errors.Is(err, errTargetExists) {
		t.Fatalf("want a key conflict, got %v", err)
	}
	if _, err := sn.Stat(ctx, "chain0"); !errdefs.IsNotFound(err) {
		t.Fatalf("target must not be committed: %v", err)
	}
}

// TestConcurrentSharedLayer: several pulls of images sharing an encrypted
// layer apply it at the same time; one cached copy, every snapshot recorded.
func TestConcurrentSharedLayer(t *testing.T) {
	ctx := testCtx(t)
	ciphertext := bytes.Repeat([]byte("shared ciphertext "), 1<<14)
	desc := ocispec.Descriptor{MediaType: encMediaType, Digest: digest.FromBytes(ciphertext), Size: int64(len(ciphertext))}
	sn, root := newTest(t, WithContentProvider(memContent{desc.Digest: ciphertext}))
	const n = 8
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func(i int) {
			_, err := extract(ctx, sn, fmt.Sprintf("extract-%d", i), fmt.Sprintf("chain-%d", i), "", desc, digest.FromString("d"), nil)
			errs <- err
		}(i)
	}
	for i := 0; i < n; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if n := countFiles(t, filepath.Join(root, "cache", "blobs")); n != 2 {
		t.Fatalf("cache holds %d files, want one blob and its metadata", n)
	}
	for i := 0; i < n; i++ {
		m, err := sn.Prepare(ctx, fmt.Sprintf("pod-%d", i), fmt.Sprintf("chain-%d", i))
		if err != nil {
			t.Fatal(err)
		}
		if d, ok, err := rootfs.ParseMounts(m); !ok || err != nil || d.Layers[0].Path != sn.Cache().Path(desc.Digest) {
			t.Fatalf("pod %d: %v %v", i, ok, err)
		}
	}
}

func TestCleanupEmpty(t *testing.T) {
	sn, _ := newTest(t)
	if err := sn.Cleanup(testCtx(t)); err != nil {
		t.Fatalf("Cleanup on a new snapshotter: %v", err)
	}
}
