// Package testimage builds the small images the integration tests and the
// demo run: a busybox image from Debian's static busybox and a pause image.
// No registry is needed; the images are written as archives for
// `ctr image import` or pushed to a local registry.
package testimage

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"sort"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// BusyboxPath is where Debian's busybox-static installs busybox.
const BusyboxPath = "/bin/busybox"

// PauseRef is the CRI sandbox image name containerd v2.4 expects.
const PauseRef = "registry.k8s.io/pause:3.10.2"

var applets = []string{"sh", "echo", "cat", "ls", "sleep", "uname", "ps", "env", "id", "true", "false",
	"printf", "hostname", "grep", "wc", "head", "tail", "mkdir", "rm", "dd", "stat", "tr", "test", "kill", "date", "md5sum", "sha256sum", "seq", "yes"}

// File is a file to add to an image.
type File struct {
	Mode    int64
	Content []byte
}

// Busybox returns a single-layer linux/amd64 image holding static busybox,
// its common applets and extra files, with cmd as its default command.
func Busybox(extra map[string]File, cmd ...string) (v1.Image, error) {
	bb, err := os.ReadFile(BusyboxPath)
	if err != nil {
		return nil, fmt.Errorf("busybox (apt-get install busybox-static): %w", err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := []string{"bin/", "etc/", "tmp/", "proc/", "sys/", "dev/", "root/", "var/"}
	for _, d := range dirs {
		mode := int64(0o755)
		if d == "tmp/" {
			mode = 0o1777
		}
		if err := tw.WriteHeader(&tar.Header{Name: d, Typeflag: tar.TypeDir, Mode: mode}); err != nil {
			return nil, err
		}
	}
	if err := writeFile(tw, "bin/busybox", 0o755, bb); err != nil {
		return nil, err
	}
	for _, a := range applets {
		if err := tw.WriteHeader(&tar.Header{Name: "bin/" + a, Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777}); err != nil {
			return nil, err
		}
	}
	files := map[string]File{
		"etc/passwd": {0o644, []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")},
		"etc/group":  {0o644, []byte("root:x:0:\nnogroup:x:65534:\n")},
	}
	for k, v := range extra {
		files[k] = v
	}
	names := make([]string, 0, len(files))
	for k := range files {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, n := range names {
		if err := writeFile(tw, n, files[n].Mode, files[n].Content); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	layerBytes := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerBytes)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, err
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.AppendLayers(img, layer)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS = "amd64", "linux"
	cf.Config.Cmd = cmd
	cf.Config.Env = []string{"PATH=/bin"}
	cf.Config.WorkingDir = "/"
	return mutate.ConfigFile(img, cf)
}

// Pause returns a CRI sandbox image: busybox sleeping forever.
func Pause() (v1.Image, error) {
	return Busybox(nil, "/bin/sleep", "infinity")
}

// WriteArchive writes img tagged ref as an archive `ctr image import` reads.
func WriteArchive(img v1.Image, ref, path string) error {
	tag, err := name.NewTag(ref)
	if err != nil {
		return err
	}
	return tarball.WriteToFile(path, tag, img)
}

func writeFile(tw *tar.Writer, name string, mode int64, b []byte) error {
	if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: mode, Size: int64(len(b))}); err != nil {
		return err
	}
	_, err := tw.Write(b)
	return err
}
