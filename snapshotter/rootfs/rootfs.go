// Package rootfs defines the versioned descriptor that raksh-snapshotter
// returns, instead of a host filesystem, as the rootfs mount of a container
// whose image the guest builds itself (guest pull or encrypted layers).
//
// The mount is an ordinary read-only bind mount of a small directory:
//
//	<dir>/raksh-rootfs.json   the Descriptor (this package), version 1
//	<dir>/etc/passwd          harmless stub (root, nobody) for host-side readers
//	<dir>/etc/group           harmless stub
//
// Host-side readers that mount the rootfs (ctr/nerdctl resolving a user, CRI
// copying image volumes) see the stub and no image content. The shim calls
// ParseMount on the rootfs mounts it is given to decide what to hand the VM.
//
// The package is deliberately dependency-light: it only needs the mount type
// and the agent API's RootfsDescriptor, which is what crosses to the guest
// (AgentDescriptor).
package rootfs

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/containerd/containerd/v2/core/mount"

	agentapi "github.com/raksh-project/raksh/api/agent/v1"
)

// Version is the descriptor format version this package writes and reads.
const Version = 1

// FileName is the name of the descriptor file inside the mounted directory.
const FileName = "raksh-rootfs.json"

// Modes of a Descriptor.
const (
	// ModeGuestPull means the guest pulls the whole image itself from the
	// registry (through the host-forwarded, allow-listed stream) by ImageRef,
	// and checks it against ManifestDigest. The host holds no layer data.
	ModeGuestPull = "guest-pull"
	// ModeLayers means the guest builds the rootfs from Layers in order:
	// encrypted layers are ciphertext blobs the host cached (Source
	// SourceBlob), plain layers were unpacked on the host (SourceDir).
	ModeLayers = "layers"
)

// Layer sources.
const (
	// SourceGuestPull: the guest fetches the layer blob by Digest itself.
	SourceGuestPull = "guest-pull"
	// SourceBlob: Path is the host path of the (ciphertext) blob, exactly as
	// fetched from the registry, in the snapshotter's digest-keyed cache.
	SourceBlob = "blob"
	// SourceDir: Path is a host directory holding the unpacked (plain,
	// unencrypted) layer, an overlay lower directory with overlay whiteouts.
	SourceDir = "dir"
)

// Descriptor tells the shim and the guest how to build a container rootfs.
// Every value in it comes from the untrusted node: the guest verifies layer
// digests, diff IDs and the manifest digest itself.
type Descriptor struct {
	// Version is the format version, always Version when written.
	Version int `json:"version"`
	// Mode is ModeGuestPull or ModeLayers.
	Mode string `json:"mode"`
	// ImageRef is the image reference as given to containerd (CRI label), if known.
	ImageRef string `json:"image_ref,omitempty"`
	// ManifestDigest is the digest of the image manifest, if known.
	ManifestDigest string `json:"manifest_digest,omitempty"`
	// Layers lists the layers bottom to top.
	Layers []Layer `json:"layers"`
}

// Layer is one image layer of a Descriptor.
type Layer struct {
	// Digest is the digest of the layer blob as stored in the registry
	// (for encrypted layers: of the ciphertext).
	Digest string `json:"digest"`
	// DiffID is the digest of the uncompressed, decrypted tar, from the image
	// config as containerd passed it (unverified on the host).
	DiffID string `json:"diff_id,omitempty"`
	// MediaType is the layer media type (e.g. ...tar+gzip+encrypted), when known.
	MediaType string `json:"media_type,omitempty"`
	// Annotations are the layer descriptor annotations, notably the ocicrypt
	// ones (org.opencontainers.image.enc.keys.*, ...enc.pubopts): wrapped keys,
	// never plaintext keys.
	Annotations map[string]string `json:"annotations,omitempty"`
	// Size is the blob size in bytes, when known.
	Size int64 `json:"size,omitempty"`
	// Source is SourceGuestPull, SourceBlob or SourceDir.
	Source string `json:"source"`
	// Path is the host path of the blob (SourceBlob) or directory (SourceDir).
	Path string `json:"path,omitempty"`
}

// Validate checks the descriptor for structural errors.
func (d *Descriptor) Validate() error {
	if d.Version != Version {
		return fmt.Errorf("unsupported raksh rootfs descriptor version %d (want %d)", d.Version, Version)
	}
	switch d.Mode {
	case ModeGuestPull:
		if d.ImageRef == "" {
			return errors.New("guest-pull rootfs descriptor without image reference")
		}
	case ModeLayers:
	default:
		return fmt.Errorf("unknown raksh rootfs descriptor mode %q", d.Mode)
	}
	if len(d.Layers) == 0 {
		return errors.New("raksh rootfs descriptor without layers")
	}
	for i, l := range d.Layers {
		if l.Digest == "" {
			return fmt.Errorf("layer %d: no digest", i)
		}
		switch l.Source {
		case SourceGuestPull:
		case SourceBlob, SourceDir:
			if l.Path == "" {
				return fmt.Errorf("layer %d: source %s without path", i, l.Source)
			}
		default:
			return fmt.Errorf("layer %d: unknown source %q", i, l.Source)
		}
	}
	return nil
}

// AgentDescriptor is what the guest gets of d, in the agent API: no host
// paths. Layers the host unpacked (SourceDir) cannot be verified in the
// guest, which fetches them from the registry by digest, as it does
// SourceGuestPull layers; SourceBlob layers arrive on blob streams.
func (d *Descriptor) AgentDescriptor() *agentapi.RootfsDescriptor {
	g := &agentapi.RootfsDescriptor{Mode: agentapi.RootfsDescriptor_LAYERS, ImageRef: d.ImageRef, ManifestDigest: d.ManifestDigest}
	if d.Mode == ModeGuestPull {
		g.Mode = agentapi.RootfsDescriptor_GUEST_PULL
	}
	for _, l := range d.Layers {
		src := agentapi.RootfsLayer_REGISTRY
		if l.Source == SourceBlob {
			src = agentapi.RootfsLayer_BLOB
		}
		g.Layers = append(g.Layers, &agentapi.RootfsLayer{
			Digest: l.Digest, DiffId: l.DiffID, MediaType: l.MediaType, Annotations: l.Annotations, Size: l.Size, Source: src,
		})
	}
	return g
}

// Stub files written next to the descriptor for host-side readers.
var stubFiles = map[string]string{
	"etc/passwd": "root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n",
	"etc/group":  "root:x:0:\nnobody:x:65534:\n",
}

// Write creates dir (which must not exist yet, or be empty) holding the
// descriptor and the stub files. It writes into a temporary sibling and
// renames it into place, so a crash leaves either nothing or a complete dir.
func Write(dir string, d *Descriptor) error {
	if err := d.Validate(); err != nil {
		return err
	}
	b, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), ".rootfs-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if err := os.Chmod(tmp, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(tmp, FileName), b, 0o444); err != nil {
		return err
	}
	for name, content := range stubFiles {
		p := filepath.Join(tmp, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, []byte(content), 0o444); err != nil {
			return err
		}
	}
	_ = os.Remove(dir) // only succeeds if empty
	return os.Rename(tmp, dir)
}

// Read reads and validates the descriptor in dir. It returns an error
// wrapping fs.ErrNotExist when dir holds no descriptor.
func Read(dir string) (*Descriptor, error) {
	b, err := os.ReadFile(filepath.Join(dir, FileName))
	if err != nil {
		return nil, err
	}
	var d Descriptor
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, fmt.Errorf("malformed raksh rootfs descriptor: %w", err)
	}
	if err := d.Validate(); err != nil {
		return nil, err
	}
	return &d, nil
}

// ParseMount reports whether m is a raksh rootfs mount and, if so, returns its
// descriptor. A mount that is not a bind mount, or whose source holds no
// descriptor file, is not a raksh mount: (nil, false, nil). A raksh mount with
// an unreadable, malformed or unsupported descriptor returns (nil, true, err):
// the caller must refuse it rather than fall back to the stub directory.
func ParseMount(m mount.Mount) (*Descriptor, bool, error) {
	if m.Type != "bind" && m.Type != "rbind" {
		return nil, false, nil
	}
	d, err := Read(m.Source)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, false, nil
		}
		return nil, true, err
	}
	return d, true, nil
}

// ParseMounts applies ParseMount to the rootfs mounts of a container: a raksh
// rootfs is always exactly one mount.
func ParseMounts(mounts []mount.Mount) (*Descriptor, bool, error) {
	if len(mounts) != 1 {
		return nil, false, nil
	}
	return ParseMount(mounts[0])
}
