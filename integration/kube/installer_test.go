//go:build integration

package kube

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/raksh-project/raksh/integration/harness"
	"github.com/raksh-project/raksh/integration/testimage"
)

// installerRef is the image contrib/kubernetes's kustomization names.
const installerRef = "ghcr.io/raksh-project/raksh-installer:latest"

// installerImage is a stand-in for the Containerfile's image (no image
// builder on CI machines): busybox instead of Debian, with what install.sh
// and the DaemonSet's command use, the payload the Containerfile copies
// (install.sh, contrib/, the host binaries, kernel and initrd) and kubectl.
// restartLog is the node file the containerd restart is recorded in.
func (c *cluster) importInstallerImage(restartLog string) error {
	files := map[string]testimage.File{
		"bin/raksh-test-restart": {Mode: 0o755, Content: []byte("#!/bin/sh\necho restart-containerd >> /host" + restartLog + "\n")},
	}
	for _, a := range []string{"sed", "cp", "mv", "chmod", "dirname", "rmdir", "ln", "touch"} {
		files["bin/"+a] = testimage.File{Mode: 0o755, Content: []byte("#!/bin/sh\nexec /bin/busybox " + a + " \"$@\"\n")}
	}
	add := func(dst, src string, mode int64) error {
		b, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		files[dst] = testimage.File{Mode: mode, Content: b}
		return nil
	}
	repo := harness.Repo()
	p := "opt/raksh-payload/"
	if err := add(p+"install.sh", filepath.Join(repo, "contrib/kubernetes/installer/install.sh"), 0o755); err != nil {
		return err
	}
	for _, d := range []string{"containerd", "raksh", "nri"} {
		root := filepath.Join(repo, "contrib", d)
		err := filepath.WalkDir(root, func(path string, e fs.DirEntry, err error) error {
			if err != nil || !e.Type().IsRegular() {
				return err
			}
			rel, _ := filepath.Rel(root, path)
			return add(p+"contrib/"+d+"/"+rel, path, 0o644)
		})
		if err != nil {
			return err
		}
	}
	for _, b := range []string{"containerd-shim-raksh-v2", "raksh-snapshotter", "raksh-nri"} {
		if err := add(p+"bin/"+b, filepath.Join(harness.Output(), "bin", b), 0o755); err != nil {
			return err
		}
	}
	if err := add(p+"share/vmlinuz", harness.Kernel(), 0o644); err != nil {
		return err
	}
	if err := add(p+"share/initrd.img", harness.Initrd(), 0o644); err != nil {
		return err
	}
	if err := add("bin/kubectl", filepath.Join(c.bin, "kubectl"), 0o755); err != nil {
		return err
	}
	img, err := testimage.Busybox(files, "/bin/sh")
	if err != nil {
		return err
	}
	c.containerd.ImportImage(c.t, img, installerRef, "k8s.io")
	return nil
}

// installerNode is the installer's view of the node: every path install.sh
// writes, below one directory of the test (the node's root is at /host in
// the pod). containerd's config is a stand-in: the test's containerd
// already has the raksh handler, so the restart is recorded, not done.
type installerNode struct {
	root, calls string
}

func (n installerNode) path(p string) string { return filepath.Join(n.root, p) }

// (j) The installer DaemonSet runs on the node labelled for it: install.sh
// writes the binaries, runtime config and containerd drop-ins, asks for the
// containerd restart, and the pod labels the node raksh.io/runtime=true.
func installerInstall(s *S, c *cluster) {
	n := c.installer
	// The other scenarios need the node labelled: if the installer does not
	// do it, the test does (this scenario has failed then).
	defer func() {
		if l, _ := c.kubectl("get", "node", nodeName, "-o", `jsonpath={.metadata.labels.raksh\.io/runtime}`); l != "true" {
			c.kubectl("label", "node", nodeName, "raksh.io/runtime=true", "--overwrite")
		}
	}()
	s.kubectl("-n", "raksh-system", "set", "env", "daemonset/raksh-deploy",
		"INSTALL_DIR="+n.path("opt/raksh"), "RAKSH_ETC="+n.path("etc/raksh"), "RAKSH_STATE_DIR="+n.path("run/raksh"),
		"CONTAINERD_CONFIG="+n.path("etc/containerd/config.toml"), "CONTAINERD_CONF_DIR="+n.path("etc/containerd/conf.d"),
		"CONTAINERD_ADDRESS="+c.containerd.Address, "SNAPSHOTTER_SOCKET="+n.path("run/snapshotter.sock"),
		"SYSTEMD_DIR="+n.path("etc/systemd/system"), "SYSTEMCTL=", "RESTART_CONTAINERD=raksh-test-restart")
	s.kubectl("label", "node", nodeName, "raksh.io/installer=true")
	s.eventually("the installer labels the node raksh.io/runtime=true", 3*time.Minute, func() error {
		l, err := c.kubectl("get", "node", nodeName, "-o", `jsonpath={.metadata.labels.raksh\.io/runtime}`)
		if err != nil || l != "true" {
			pods, _ := c.kubectl("-n", "raksh-system", "get", "pods", "-o", "wide")
			return fmt.Errorf("label %q, %v; pods:\n%s", l, err, pods)
		}
		return nil
	})
	for _, f := range []string{"opt/raksh/bin/containerd-shim-raksh-v2", "opt/raksh/share/vmlinuz", "opt/raksh/share/initrd.img",
		"etc/raksh/runtime.toml", "etc/containerd/conf.d/50-raksh-runtime.toml", "etc/containerd/conf.d/50-raksh-snapshotter.toml"} {
		if _, err := os.Stat(n.path(f)); err != nil {
			s.Errorf("install: %v", err)
		}
	}
	if b, _ := os.ReadFile(n.path("etc/containerd/config.toml")); !strings.Contains(string(b), n.path("etc/containerd/conf.d")+"/*.toml") {
		s.Errorf("install: containerd's config does not import the drop-ins:\n%s", b)
	}
	if b, _ := os.ReadFile(n.calls); string(b) != "restart-containerd\n" {
		s.Errorf("install: containerd restart requests %q, want one", b)
	}
	logs, _ := c.kubectl("-n", "raksh-system", "logs", "daemonset/raksh-deploy")
	s.Logf("installer pod log:\n%s", logs)
}

// (k) Removing the node's installer label deletes the DaemonSet's pod: its
// preStop hook unlabels the node and uninstalls; the node's tree is as
// before.
func installerUninstall(s *S, c *cluster) {
	n := c.installer
	if _, err := os.Stat(n.path("opt/raksh")); err != nil {
		s.Fatalf("nothing installed to uninstall (%v)", err)
	}
	os.Remove(n.calls)
	s.kubectl("label", "node", nodeName, "raksh.io/installer-")
	s.eventually("the installer pod gone and the node unlabelled", 3*time.Minute, func() error {
		pods, err := c.kubectl("-n", "raksh-system", "get", "pods", "-o", "name")
		if err != nil || strings.TrimSpace(pods) != "" {
			return fmt.Errorf("pods %q, %v", pods, err)
		}
		l, err := c.kubectl("get", "node", nodeName, "-o", `jsonpath={.metadata.labels.raksh\.io/runtime}`)
		if err != nil || l != "" {
			return fmt.Errorf("raksh.io/runtime=%q, %v", l, err)
		}
		return nil
	})
	var left []string
	filepath.WalkDir(n.root, func(p string, e fs.DirEntry, err error) error {
		if err == nil && !e.IsDir() && p != n.calls && p != n.path("etc/containerd/config.toml") {
			left = append(left, p)
		}
		return nil
	})
	if len(left) > 0 {
		s.Errorf("uninstall left files behind: %v", left)
	}
	if b, _ := os.ReadFile(n.path("etc/containerd/config.toml")); string(b) != installerConfig {
		s.Errorf("uninstall did not restore containerd's config:\n%s", b)
	}
	if b, _ := os.ReadFile(n.calls); string(b) != "restart-containerd\n" {
		s.Errorf("uninstall: containerd restart requests %q, want one", b)
	}
}

// installerConfig is the stand-in containerd config the installer edits.
const installerConfig = "version = 3\n"

// prepareInstaller makes the installer's node tree and imports its image.
func (c *cluster) prepareInstaller() error {
	n := &installerNode{root: filepath.Join(c.dir, "node")}
	n.calls = n.path("calls")
	for _, d := range []string{"etc/containerd", "etc/systemd/system", "opt", "run"} {
		if err := os.MkdirAll(n.path(d), 0o755); err != nil {
			return err
		}
	}
	if err := os.WriteFile(n.path("etc/containerd/config.toml"), []byte(installerConfig), 0o644); err != nil {
		return err
	}
	c.installer = n
	return c.importInstallerImage(n.calls)
}
