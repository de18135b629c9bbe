//go:build integration

package critest

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/raksh-project/raksh/integration/testimage"
)

// Registries whose names critest v1.37.0 pulls from; hosts.toml sends each
// to the local registry, under the same repository path.
var registries = []string{"registry.k8s.io", "gcr.io", "k8s.gcr.io"}

const (
	e2e     = "e2e-test-images/"
	staging = "k8s-staging-cri-tools/"
)

// webServer stands in for nginx and httpd: busybox httpd on $PORT (80) run by a
// script named nginx, so that /proc/1/cmdline reads "master process", pidof
// finds "nginx" and /var/run/nginx.pid holds its pid (what critest checks).
const webServer = `#!/bin/sh
echo $$ > /var/run/nginx.pid
echo "httpd (busybox) serving on port ${PORT:-80}"
httpd -f -p "${PORT:-80}" -h /usr/share/nginx/html &
trap 'kill $!; exit 0' TERM INT
wait
`

// Debian's static busybox has no pgrep or ipcs; critest's tests call them
// (pgrep sleep, ipcs -m). These stand-ins read /proc like the real ones.
const (
	pgrep = `#!/bin/sh
# pgrep NAME: the pids of processes whose command name is NAME.
rc=1
for d in /proc/[0-9]*; do
	if [ "$(cat "$d/comm" 2>/dev/null)" = "$1" ]; then echo "${d#/proc/}"; rc=0; fi
done
exit $rc
`
	ipcs = `#!/bin/sh
# ipcs -m: the ids of the System V shared memory segments.
echo "------ Shared Memory Segments --------"
awk 'NR > 1 { print "shmid " $2 }' /proc/sysvipc/shm
`
)

// file is a file or a hard link (to link) of an image layer.
type file struct {
	mode    int64
	content string
	link    string
}

// layer returns a layer holding static busybox with every applet it lists,
// the users and groups critest's images define, and extra.
func layer(extra map[string]file) (v1.Layer, error) {
	bb, err := os.ReadFile(testimage.BusyboxPath)
	if err != nil {
		return nil, fmt.Errorf("busybox (apt-get install busybox-static): %w", err)
	}
	out, err := exec.Command(testimage.BusyboxPath, "--list-full").Output()
	if err != nil {
		return nil, fmt.Errorf("busybox --list-full: %w", err)
	}
	files := map[string]file{
		"bin/busybox": {mode: 0o755, content: string(bb)},
		"etc/passwd": {mode: 0o644, content: "root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33:www-data:/var/www:/bin/sh\n" +
			"default-user:x:1000:1000:default-user:/home/default-user:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"},
		"etc/group": {mode: 0o644, content: "root:x:0:\nwww-data:x:33:\ndefault-user:x:1000:\n" +
			"group-defined-in-image:x:50000:default-user\nnogroup:x:65534:\n"},
		"usr/share/nginx/html/index.html": {mode: 0o644, content: "<html><body>raksh critest</body></html>\n"},
	}
	for _, a := range strings.Fields(string(out)) {
		if a != "bin/busybox" {
			files[a] = file{link: "bin/busybox"}
		}
	}
	files["usr/bin/pgrep"] = file{mode: 0o755, content: pgrep}
	files["usr/bin/ipcs"] = file{mode: 0o755, content: ipcs}
	for k, v := range extra {
		files[k] = v
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	for _, d := range []string{"bin", "sbin", "usr/bin", "usr/sbin", "etc", "tmp", "proc", "sys", "dev", "root", "var/run", "var/www", "home/default-user", "usr/share/nginx/html"} {
		if err := addDir(tw, dirs, d); err != nil {
			return nil, err
		}
	}
	names := make([]string, 0, len(files))
	for k := range files {
		names = append(names, k)
	}
	// busybox first: a hard link names a file written before it.
	sort.Slice(names, func(i, j int) bool {
		if (names[i] == "bin/busybox") != (names[j] == "bin/busybox") {
			return names[i] == "bin/busybox"
		}
		return names[i] < names[j]
	})
	for _, n := range names {
		f := files[n]
		if err := addDir(tw, dirs, filepath.Dir(n)); err != nil {
			return nil, err
		}
		h := &tar.Header{Name: n, Mode: f.mode, Typeflag: tar.TypeReg, Size: int64(len(f.content))}
		if f.link != "" {
			// Hard links, as in busybox images: masking /bin/ls must not
			// mask busybox itself.
			h = &tar.Header{Name: n, Mode: 0o755, Typeflag: tar.TypeLink, Linkname: f.link}
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if f.link == "" {
			if _, err := io.WriteString(tw, f.content); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil },
		tarball.WithMediaType(types.OCILayer))
}

func addDir(tw *tar.Writer, done map[string]bool, d string) error {
	if d == "." || d == "" || done[d] {
		return nil
	}
	if err := addDir(tw, done, filepath.Dir(d)); err != nil {
		return err
	}
	done[d] = true
	mode := int64(0o755)
	if d == "tmp" {
		mode = 0o1777
	}
	return tw.WriteHeader(&tar.Header{Name: d + "/", Typeflag: tar.TypeDir, Mode: mode})
}

// image returns a linux/amd64 image of one layer with the given config.
func image(extra map[string]file, user string, cmd []string, env ...string) (v1.Image, error) {
	l, err := layer(extra)
	if err != nil {
		return nil, err
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	if img, err = mutate.AppendLayers(img, l); err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS = "amd64", "linux"
	cf.Config.Env = append([]string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}, env...)
	cf.Config.WorkingDir = "/"
	cf.Config.User = user
	cf.Config.Cmd = cmd
	return mutate.ConfigFile(img, cf)
}

// criImages builds the images critest v1.37.0 pulls, keyed by repository
// path and tag (the registry host left out: every registry in registries
// maps to the same path). nonewprivs and pause are the built commands of
// the same names.
// test-image-digest@sha256:9700f9... cannot be rebuilt (its digest names
// Google's bytes), so the tests pulling it fail on every handler.
func criImages(nonewprivs, pause []byte) (map[string]v1.Image, error) {
	imgs := map[string]v1.Image{}
	var firstErr error
	add := func(refs []string, img v1.Image, err error) {
		if err != nil && firstErr == nil {
			firstErr = err
		}
		for _, r := range refs {
			imgs[r] = img
		}
	}
	sh := []string{"sh"}
	bb, err := image(nil, "", sh)
	add([]string{e2e + "busybox:1.29-2"}, bb, err)
	// Each test image has an id of its own (the Image Manager tests count
	// an image's tags), but test-image-tags:1-3 are one image.
	for _, refs := range [][]string{{"test-image-latest:latest"}, {"test-image-tag:test"}, {"test-image-tag:all"},
		{"test-image-tags:1", "test-image-tags:2", "test-image-tags:3"}} {
		img, err := image(map[string]file{"etc/test-image": {mode: 0o644, content: refs[0] + "\n"}}, "", sh)
		for _, r := range refs {
			add([]string{staging + r}, img, err)
		}
	}
	for i := 1; i <= 3; i++ {
		img, err := image(map[string]file{"etc/test-image": {mode: 0o644, content: fmt.Sprintf("%d\n", i)}}, "", sh)
		add([]string{fmt.Sprintf("%stest-image-%d:latest", staging, i)}, img, err)
	}
	web, err := image(map[string]file{"usr/sbin/nginx": {mode: 0o755, content: webServer}}, "", []string{"/usr/sbin/nginx", "master process"})
	add([]string{e2e + "nginx:1.14-2", e2e + "httpd:2.4.39-4"}, web, err)
	// The host-network web server listens on 12003 (critest's
	// webServerHostNetContainerPort).
	hostnet, err := image(map[string]file{"usr/sbin/nginx": {mode: 0o755, content: webServer}}, "", []string{"/usr/sbin/nginx", "master process"}, "PORT=12003")
	add([]string{staging + "hostnet-nginx-amd64:latest"}, hostnet, err)
	nnp, err := image(map[string]file{"usr/local/bin/nonewprivs": {mode: 0o4755, content: string(nonewprivs)}}, "", []string{"/usr/local/bin/nonewprivs"})
	add([]string{e2e + "nonewprivs:1.3"}, nnp, err)
	for ref, user := range map[string]string{
		"test-image-user-uid": "1002", "test-image-user-username": "www-data", "test-image-user-uid-group": "1003:1003",
		"test-image-user-username-group": "www-data:www-data", "test-image-predefined-group": "1000",
	} {
		img, err := image(nil, user, sh)
		add([]string{staging + ref + ":latest"}, img, err)
	}
	// testimage.PauseRef is the sandbox image; critest pulls pause:3.9 and
	// counts its tags, so the two differ.
	for ref, version := range map[string]string{strings.TrimPrefix(testimage.PauseRef, "registry.k8s.io/"): "3.10.2", "pause:3.9": "3.9"} {
		img, err := image(map[string]file{"pause": {mode: 0o755, content: string(pause)},
			"etc/pause-version": {mode: 0o644, content: version + "\n"}}, "", []string{"/pause"})
		add([]string{ref}, img, err)
	}
	return imgs, firstErr
}

// push writes every image to the registry at host (127.0.0.1:port).
func push(host string, imgs map[string]v1.Image) error {
	for ref, img := range imgs {
		tag, err := name.NewTag(host+"/"+ref, name.Insecure)
		if err != nil {
			return err
		}
		if err := remote.Write(tag, img); err != nil {
			return fmt.Errorf("push %s: %w", tag, err)
		}
	}
	return nil
}

// hostsTOML writes containerd's registry host configuration that sends
// every registry critest names to the local registry.
func hostsTOML(dir, host string) error {
	for _, r := range registries {
		d := filepath.Join(dir, r)
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		cfg := fmt.Sprintf("server = \"https://%s\"\n\n[host.\"http://%s\"]\n  capabilities = [\"pull\", \"resolve\"]\n", r, host)
		if err := os.WriteFile(filepath.Join(d, "hosts.toml"), []byte(cfg), 0o644); err != nil {
			return err
		}
	}
	return nil
}
