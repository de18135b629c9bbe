package runtime

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/shutdown"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"

	"github.com/raksh-project/raksh/agent"
	"github.com/raksh-project/raksh/agent/image"
	"github.com/raksh-project/raksh/agent/image/imagetest"
	"github.com/raksh-project/raksh/internal/transport"
	"github.com/raksh-project/raksh/internal/wire"
	"github.com/raksh-project/raksh/runtime/vm"
	"github.com/raksh-project/raksh/runtime/vm/qemu"
	"github.com/raksh-project/raksh/snapshotter/rootfs"
)

const imageMarker = "RAKSH-GUEST-BUILT-ROOTFS-7d1f"

// newImageEnv is newEnv with a runtime config (e.g. [proxy]) and an agent
// holding keys (nil: the agent's default key directory).
func newImageEnv(t *testing.T, runtimeConfig string, keys image.KeyProvider) *env {
	dir := t.TempDir()
	ctx := namespaces.WithNamespace(context.Background(), "test")
	ctx, sd := shutdown.WithShutdown(ctx)
	t.Cleanup(sd.Shutdown)
	rec := &recorder{}
	fv := &fakeVM{t: t, dir: dir, done: make(chan struct{})}
	fv.opts = func(guest func() transport.Session) []agent.Opt {
		opts := []agent.Opt{agent.WithProxyDialer(func(ctx context.Context, target string) (net.Conn, error) {
			return guest().Open(ctx, wire.ProxyPrefix+target)
		})}
		if keys != nil {
			opts = append(opts, agent.WithImageKeys(keys))
		}
		return opts
	}
	cfgPath := filepath.Join(dir, "runtime.toml")
	os.WriteFile(cfgPath, []byte("accel = \"tcg\"\n"+runtimeConfig), 0o644)
	t.Setenv(ConfigEnv, cfgPath)
	svc := NewService(ctx, "pod", rec, sd, func(context.Context, Config, string, []qemu.NIC) (vm.Instance, error) { return fv, nil })
	return &env{svc: svc, vm: fv, rec: rec, dir: dir, ctx: ctx}
}

// descriptorMount writes d as raksh-snapshotter does and returns the
// container's rootfs mount as containerd passes it.
func descriptorMount(t *testing.T, d *rootfs.Descriptor) []*types.Mount {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "rootfs")
	if err := rootfs.Write(dir, d); err != nil {
		t.Fatal(err)
	}
	return []*types.Mount{{Type: "bind", Source: dir, Options: []string{"ro", "rbind"}}}
}

// runImage creates and runs id (printing the marker file of its rootfs)
// and returns its stdout, or the Create error.
func (e *env) runImage(t *testing.T, id string, mounts []*types.Mount, args ...string) (string, error) {
	t.Helper()
	b := filepath.Join(e.dir, "bundles", id)
	if len(args) == 0 {
		args = []string{"/bin/cat", "app/marker"}
	}
	e.bundle(t, id, nil, args...)
	os.RemoveAll(filepath.Join(b, "rootfs")) // a raksh rootfs has no host copy
	_, stdout := mkfifo(t, filepath.Join(e.dir, id+"-stdout"))
	ctx, cancel := context.WithTimeout(e.ctx, 60*time.Second)
	defer cancel()
	_, err := e.svc.Create(ctx, &taskAPI.CreateTaskRequest{ID: id, Bundle: b, Rootfs: mounts, Stdout: filepath.Join(e.dir, id+"-stdout")})
	if err != nil {
		return "", errgrpc.ToNative(err)
	}
	if _, err := e.svc.Start(ctx, &taskAPI.StartRequest{ID: id}); err != nil {
		t.Fatal(err)
	}
	w, err := e.svc.Wait(ctx, &taskAPI.WaitRequest{ID: id})
	if err != nil || w.ExitStatus != 0 {
		t.Fatalf("wait: %v, status %d", err, w.GetExitStatus())
	}
	if _, err := e.svc.Delete(ctx, &taskAPI.DeleteRequest{ID: id}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(b, "rootfs")); err == nil {
		t.Error("the shim created a host rootfs for a raksh image")
	}
	return <-stdout, nil
}

// guestLeftovers lists what a failed build left in the guest's bundle root.
func guestLeftovers(e *env) []string {
	entries, _ := os.ReadDir(filepath.Join(e.dir, "guest"))
	var names []string
	for _, en := range entries {
		names = append(names, en.Name())
	}
	return names
}

func TestImageRootfsGuestPull(t *testing.T) {
	host, stop := imagetest.Registry()
	defer stop()
	base := imagetest.GzipLayer(imagetest.Tar(map[string]string{"etc/os-release": "raksh\n", "app/old": "x"}))
	top := imagetest.GzipLayer(imagetest.Tar(map[string]string{"app/marker": imageMarker, "app/old": "<whiteout>"}))
	img, err := imagetest.Image(base, top)
	if err != nil {
		t.Fatal(err)
	}
	ref := host + "/raksh/app:1"
	md, err := imagetest.Push(ref, img)
	if err != nil {
		t.Fatal(err)
	}
	desc := func(manifest string) *rootfs.Descriptor {
		return &rootfs.Descriptor{Version: rootfs.Version, Mode: rootfs.ModeGuestPull, ImageRef: ref, ManifestDigest: manifest, Layers: []rootfs.Layer{
			{Digest: base.Digest().String(), Source: rootfs.SourceGuestPull}, {Digest: top.Digest().String(), Source: rootfs.SourceGuestPull}}}
	}

	e := newImageEnv(t, fmt.Sprintf("[proxy]\nregistry = %q\n", host), nil)
	out, err := e.runImage(t, "gp", descriptorMount(t, desc(md.String())))
	if err != nil {
		t.Fatal(err)
	}
	if out != imageMarker {
		t.Fatalf("container printed %q, want the image's marker", out)
	}

	// The node lies about the manifest: refused, nothing left in the guest.
	other, _ := imagetest.Image(top)
	od, _ := other.Digest()
	_, err = e.runImage(t, "gp-pinned", descriptorMount(t, desc(od.String())))
	if err == nil || !strings.Contains(err.Error(), image.ErrDigestMismatch.Error()) {
		t.Fatalf("manifest mismatch: %v", err)
	}
	if left := guestLeftovers(e); len(left) != 0 {
		t.Fatalf("failed build left %v in the guest", left)
	}
}

func TestImageRootfsGuestPullNotAllowListed(t *testing.T) {
	host, stop := imagetest.Registry()
	defer stop()
	l := imagetest.GzipLayer(imagetest.Tar(map[string]string{"app/marker": imageMarker}))
	img, _ := imagetest.Image(l)
	ref := host + "/raksh/app:1"
	md, err := imagetest.Push(ref, img)
	if err != nil {
		t.Fatal(err)
	}
	e := newImageEnv(t, "", nil) // no [proxy] registry
	_, err = e.runImage(t, "gp", descriptorMount(t, &rootfs.Descriptor{Version: rootfs.Version, Mode: rootfs.ModeGuestPull, ImageRef: ref,
		ManifestDigest: md.String(), Layers: []rootfs.Layer{{Digest: l.Digest().String(), Source: rootfs.SourceGuestPull}}}))
	if err == nil || !strings.Contains(err.Error(), "failed to resolve") {
		t.Fatalf("guest pull without an allow-listed registry: %v", err)
	}
}

// encryptedCache returns a descriptor of mode layers over two encrypted
// layers whose ciphertext sits in a host cache directory, and the layers.
func encryptedCache(t *testing.T, pub []byte) (*rootfs.Descriptor, []*imagetest.Layer) {
	t.Helper()
	cache := t.TempDir()
	var d = &rootfs.Descriptor{Version: rootfs.Version, Mode: rootfs.ModeLayers, ImageRef: "127.0.0.1:1/enc/app:1"}
	var layers []*imagetest.Layer
	big := make([]byte, 3<<20)
	rand.Read(big)
	for _, files := range []map[string]string{
		{"etc/os-release": "raksh\n", "app/old": "x"},
		// Larger than the transport's stream window: a blob stream the
		// guest never reads would block the shim unless drained.
		{"app/marker": imageMarker, "app/old": "<whiteout>", "app/big": string(big)},
	} {
		l, err := imagetest.Encrypt(imagetest.GzipLayer(imagetest.Tar(files)), pub)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(cache, l.Digest().Encoded())
		if err := os.WriteFile(p, l.Blob, 0o444); err != nil {
			t.Fatal(err)
		}
		layers = append(layers, l)
		d.Layers = append(d.Layers, rootfs.Layer{Digest: l.Digest().String(), DiffID: l.DiffID.String(), MediaType: l.MediaType,
			Annotations: l.Annotations, Size: int64(len(l.Blob)), Source: rootfs.SourceBlob, Path: p})
	}
	return d, layers
}

func TestImageRootfsEncrypted(t *testing.T) {
	priv, pub, err := imagetest.RSAKey()
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(t.TempDir(), "key.pem")
	os.WriteFile(keyFile, priv, 0o600)
	d, _ := encryptedCache(t, pub)

	e := newImageEnv(t, "", image.KeyFiles{keyFile})
	// The same blob twice (as empty layers often are) travels twice.
	dup := *d
	dup.Layers = append(append([]rootfs.Layer(nil), d.Layers...), d.Layers[1])
	for id, desc := range map[string]*rootfs.Descriptor{"enc": d, "enc-dup": &dup} {
		out, err := e.runImage(t, id, descriptorMount(t, desc))
		if err != nil {
			t.Fatalf("%s: %v", id, err)
		}
		if out != imageMarker {
			t.Fatalf("%s: container printed %q, want the image's marker", id, out)
		}
	}
}

func TestImageRootfsErrors(t *testing.T) {
	_, pub, err := imagetest.RSAKey()
	if err != nil {
		t.Fatal(err)
	}
	wrongPriv, _, err := imagetest.RSAKey()
	if err != nil {
		t.Fatal(err)
	}
	wrongKey := filepath.Join(t.TempDir(), "wrong.pem")
	os.WriteFile(wrongKey, wrongPriv, 0o600)

	for _, tc := range []struct {
		name   string
		keys   image.KeyProvider
		mutate func(t *testing.T, d *rootfs.Descriptor) []*types.Mount
		want   error
		msg    string
	}{
		{name: "wrong key", keys: image.KeyFiles{wrongKey}, want: image.ErrDecrypt},
		{name: "no key", keys: agent.KeyDir(t.TempDir()), want: image.ErrDecrypt, msg: "no image decryption keys"},
		{name: "corrupt ciphertext in the host cache", keys: image.KeyFiles{wrongKey}, want: image.ErrDigestMismatch,
			mutate: func(t *testing.T, d *rootfs.Descriptor) []*types.Mount {
				b, _ := os.ReadFile(d.Layers[0].Path)
				b[len(b)/2] ^= 1
				os.Chmod(d.Layers[0].Path, 0o644)
				os.WriteFile(d.Layers[0].Path, b, 0o444)
				return nil
			}},
		{name: "cached blob missing", want: errdefs.ErrFailedPrecondition, msg: "cached layer blob",
			mutate: func(t *testing.T, d *rootfs.Descriptor) []*types.Mount {
				os.Remove(d.Layers[1].Path)
				return nil
			}},
		{name: "unsupported descriptor version", want: errdefs.ErrInvalidArgument, msg: "unsupported raksh rootfs descriptor version",
			mutate: func(t *testing.T, d *rootfs.Descriptor) []*types.Mount {
				m := descriptorMount(t, d)
				b, _ := os.ReadFile(filepath.Join(m[0].Source, rootfs.FileName))
				p := filepath.Join(m[0].Source, rootfs.FileName)
				os.Chmod(p, 0o644)
				os.WriteFile(p, []byte(strings.Replace(string(b), `"version": 1`, `"version": 2`, 1)), 0o444)
				return m
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, _ := encryptedCache(t, pub)
			var mounts []*types.Mount
			if tc.mutate != nil {
				mounts = tc.mutate(t, d)
			}
			if mounts == nil {
				mounts = descriptorMount(t, d)
			}
			e := newImageEnv(t, "", tc.keys)
			start := time.Now()
			_, err := e.runImage(t, "bad", mounts)
			if err == nil || !errors.Is(err, tc.want) && !strings.Contains(err.Error(), tc.want.Error()) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if tc.msg != "" && !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("error %q does not say %q", err, tc.msg)
			}
			t.Logf("error: %v", err)
			if time.Since(start) > 20*time.Second {
				t.Errorf("failing Create took %v: unread blob streams not drained?", time.Since(start))
			}
			if left := guestLeftovers(e); len(left) != 0 {
				t.Fatalf("failed build left %v in the guest", left)
			}
			if _, err := e.svc.container("bad"); !errdefs.IsNotFound(err) {
				t.Fatalf("shim kept the failed container: %v", err)
			}
		})
	}
}

// TestImageRootfsMixed: a mixed image (plain base, encrypted top) has a
// host-unpacked "dir" layer in its descriptor; the guest fetches that layer
// from the registry by digest (pinned by the manifest) instead of trusting
// the host's directory, and decrypts the cached top layer.
func TestImageRootfsMixed(t *testing.T) {
	host, stop := imagetest.Registry()
	defer stop()
	priv, pub, err := imagetest.RSAKey()
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(t.TempDir(), "key.pem")
	os.WriteFile(keyFile, priv, 0o600)
	base := imagetest.GzipLayer(imagetest.Tar(map[string]string{"app/base": "from-the-registry"}))
	top, err := imagetest.Encrypt(imagetest.GzipLayer(imagetest.Tar(map[string]string{"app/marker": imageMarker})), pub)
	if err != nil {
		t.Fatal(err)
	}
	img, _ := imagetest.Image(base, top)
	ref := host + "/mixed/app:1"
	md, err := imagetest.Push(ref, img)
	if err != nil {
		t.Fatal(err)
	}
	cache := t.TempDir()
	blob := filepath.Join(cache, top.Digest().Encoded())
	os.WriteFile(blob, top.Blob, 0o444)
	// The host's unpacked directory holds something else: it must not be used.
	hostDir := t.TempDir()
	os.MkdirAll(filepath.Join(hostDir, "app"), 0o755)
	os.WriteFile(filepath.Join(hostDir, "app", "base"), []byte("from-the-host"), 0o644)
	d := &rootfs.Descriptor{Version: rootfs.Version, Mode: rootfs.ModeLayers, ImageRef: ref, ManifestDigest: md.String(), Layers: []rootfs.Layer{
		{Digest: base.Digest().String(), DiffID: base.DiffID.String(), MediaType: base.MediaType, Size: int64(len(base.Blob)), Source: rootfs.SourceDir, Path: hostDir},
		{Digest: top.Digest().String(), DiffID: top.DiffID.String(), MediaType: top.MediaType, Annotations: top.Annotations, Size: int64(len(top.Blob)), Source: rootfs.SourceBlob, Path: blob},
	}}
	e := newImageEnv(t, fmt.Sprintf("[proxy]\nregistry = %q\n", host), image.KeyFiles{keyFile})
	out, err := e.runImage(t, "mixed", descriptorMount(t, d), "/bin/cat", "app/base", "app/marker")
	if err != nil {
		t.Fatal(err)
	}
	if out != "from-the-registry"+imageMarker {
		t.Fatalf("container printed %q", out)
	}
}

// TestImageRootfsAgentNeverReads: an agent that fails before it reads the
// rootfs (here: a spec without a process) leaves the blob streams unread;
// the shim's sends give up after blobSendIdle instead of blocking Create.
func TestImageRootfsAgentNeverReads(t *testing.T) {
	old := blobSendIdle
	blobSendIdle = time.Second
	defer func() { blobSendIdle = old }()
	_, pub, err := imagetest.RSAKey()
	if err != nil {
		t.Fatal(err)
	}
	d, _ := encryptedCache(t, pub) // its top blob exceeds the stream window
	e := newImageEnv(t, "", nil)
	b := filepath.Join(e.dir, "bundles", "np")
	os.MkdirAll(b, 0o755)
	os.WriteFile(filepath.Join(b, "config.json"), []byte(`{"ociVersion":"1.2.0"}`), 0o644)
	ctx, cancel := context.WithTimeout(e.ctx, 60*time.Second)
	defer cancel()
	start := time.Now()
	_, err = e.svc.Create(ctx, &taskAPI.CreateTaskRequest{ID: "np", Bundle: b, Rootfs: descriptorMount(t, d)})
	if err == nil || !strings.Contains(err.Error(), "no process") {
		t.Fatalf("got %v, want the agent's refusal of a spec without a process", err)
	}
	if el := time.Since(start); el > 20*time.Second {
		t.Fatalf("Create took %v", el)
	}
}
