//go:build integration

package integration

import (
	"context"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/raksh-project/raksh/integration/harness"
)

// TestNodeInstaller runs contrib/kubernetes/installer/install.sh (what the
// raksh-deploy DaemonSet runs) against a private containerd that has no
// raksh runtime: after install and a containerd restart a pod runs on the
// raksh handler with the installed shim, kernel and initrd; after uninstall
// the handler is gone and the node is byte-for-byte as before.
func TestNodeInstaller(t *testing.T) {
	h := harness.StartContainerd(t, harness.Options{NoRakshDropin: true})
	h.ImportCRIImages(t, criBusybox)

	// The installer image's payload: binaries, kernel, initrd, contrib/.
	work := t.TempDir()
	payload := filepath.Join(work, "payload")
	for _, d := range []string{"bin", "share"} {
		os.MkdirAll(filepath.Join(payload, d), 0o755)
	}
	for _, b := range []string{"containerd-shim-raksh-v2", "raksh-snapshotter", "raksh-nri"} {
		os.Symlink(harness.Bin(t, b), filepath.Join(payload, "bin", b))
	}
	os.Symlink(harness.Kernel(), filepath.Join(payload, "share", "vmlinuz"))
	os.Symlink(harness.Initrd(), filepath.Join(payload, "share", "initrd.img"))
	os.Symlink(filepath.Join(harness.Repo(), "contrib"), filepath.Join(payload, "contrib"))

	// The "node": every path the installer writes below root, plus the
	// private containerd's own config.
	root := filepath.Join(work, "node")
	// Directories a node has before Raksh comes.
	for _, d := range []string{"etc/containerd", "etc/systemd/system", "opt", "run"} {
		os.MkdirAll(filepath.Join(root, d), 0o755)
	}
	calls := filepath.Join(work, "calls")
	fake := filepath.Join(work, "fake")
	os.WriteFile(fake, []byte("#!/bin/sh\necho \"$*\" >> "+calls+"\n"), 0o755)
	env := append(os.Environ(),
		"HOST_ROOT=", "PAYLOAD="+payload,
		"INSTALL_DIR="+filepath.Join(root, "opt/raksh"),
		"RAKSH_ETC="+filepath.Join(root, "etc/raksh"),
		"RAKSH_STATE_DIR="+h.StateDir, // short (socket paths) and watched by the harness
		"CONTAINERD_CONFIG="+h.ConfigPath,
		"CONTAINERD_CONF_DIR="+filepath.Join(root, "etc/containerd/conf.d"),
		"CONTAINERD_ADDRESS="+h.Address,
		"SNAPSHOTTER_SOCKET="+filepath.Join(root, "run/snapshotter.sock"),
		"SYSTEMD_DIR="+filepath.Join(root, "etc/systemd/system"),
		"SYSTEMCTL="+fake+" systemctl",
		"RESTART_CONTAINERD="+fake+" restart-containerd",
	)
	script := filepath.Join(harness.Repo(), "contrib", "kubernetes", "installer", "install.sh")
	runScript := func(arg string) {
		t.Helper()
		cmd := exec.Command(script, arg)
		cmd.Env = env
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("install.sh %s: %v\n%s", arg, err, out)
		}
	}
	configBefore := readFile(t, h.ConfigPath)
	treeBefore := tree(t, root)

	start := time.Now()
	runScript("install")
	for _, f := range []string{"opt/raksh/bin/containerd-shim-raksh-v2", "opt/raksh/bin/raksh-snapshotter", "opt/raksh/bin/raksh-nri",
		"opt/raksh/share/vmlinuz", "opt/raksh/share/initrd.img", "etc/raksh/runtime.toml", "etc/raksh/snapshotter.toml",
		"etc/systemd/system/raksh-snapshotter.service", "etc/systemd/system/raksh-nri.service"} {
		if _, err := os.Stat(filepath.Join(root, f)); err != nil {
			t.Errorf("install: %v", err)
		}
	}
	dropins := map[string][]string{
		"50-raksh-runtime.toml": {"runtimes.raksh]", "runtime_path = '" + filepath.Join(root, "opt/raksh/bin/containerd-shim-raksh-v2") + "'",
			"ConfigPath = '" + filepath.Join(root, "etc/raksh/runtime.toml") + "'"},
		"50-raksh-snapshotter.toml": {"[proxy_plugins.raksh]", `address = "` + filepath.Join(root, "run/snapshotter.sock") + `"`},
		"50-raksh-nri.toml":         {"[plugins.'io.containerd.nri.v1.nri']", "disable = false"},
	}
	for f, wants := range dropins {
		s := readFile(t, filepath.Join(root, "etc/containerd/conf.d", f))
		for _, w := range wants {
			if !strings.Contains(s, w) {
				t.Errorf("%s lacks %q:\n%s", f, w, s)
			}
		}
	}
	if s := readFile(t, filepath.Join(root, "etc/containerd/conf.d/50-raksh-nri.toml")); strings.Contains(s, "required_plugins") {
		t.Errorf("NRI drop-in is fail-closed without NRI_REQUIRED=true:\n%s", s)
	}
	rt := readFile(t, filepath.Join(root, "etc/raksh/runtime.toml"))
	for _, w := range []string{`kernel = "` + filepath.Join(root, "opt/raksh/share/vmlinuz") + `"`, `state_dir = "` + h.StateDir + `"`} {
		if !strings.Contains(rt, w) {
			t.Errorf("runtime.toml lacks %q:\n%s", w, rt)
		}
	}
	if s := readFile(t, h.ConfigPath); !strings.Contains(s, `"`+filepath.Join(root, "etc/containerd/conf.d")+`/*.toml"`) {
		t.Errorf("containerd config does not import the drop-ins:\n%s", s)
	}
	if s := readFile(t, calls); !strings.Contains(s, "systemctl enable --now raksh-snapshotter raksh-nri") || !strings.HasSuffix(s, "restart-containerd\n") {
		t.Errorf("install: service and restart calls:\n%s", s)
	}
	t.Logf("install took %s", time.Since(start).Round(time.Millisecond))

	// containerd restarts with the installed runtime; a pod runs on it.
	h.Restart()
	rs, closeConn := criClient(t, h)
	defer closeConn()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	pod := &cri.PodSandboxConfig{
		Metadata: &cri.PodSandboxMetadata{Name: "installed", Uid: "uid-installed", Namespace: "raksh-test"},
		Linux: &cri.LinuxPodSandboxConfig{SecurityContext: &cri.LinuxSandboxSecurityContext{
			NamespaceOptions: &cri.NamespaceOption{Network: cri.NamespaceMode_NODE},
		}},
	}
	sb, err := rs.RunPodSandbox(ctx, &cri.RunPodSandboxRequest{Config: pod, RuntimeHandler: "raksh"})
	if err != nil {
		t.Fatalf("RunPodSandbox on the installed handler: %v", err)
	}
	c, err := rs.CreateContainer(ctx, &cri.CreateContainerRequest{PodSandboxId: sb.PodSandboxId, SandboxConfig: pod,
		Config: &cri.ContainerConfig{Metadata: &cri.ContainerMetadata{Name: "c"}, Image: &cri.ImageSpec{Image: criBusybox},
			Command: []string{"sleep", "600"}, Linux: &cri.LinuxContainerConfig{}}})
	if err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}
	if _, err := rs.StartContainer(ctx, &cri.StartContainerRequest{ContainerId: c.ContainerId}); err != nil {
		t.Fatalf("StartContainer: %v", err)
	}
	r, err := rs.ExecSync(ctx, &cri.ExecSyncRequest{ContainerId: c.ContainerId, Cmd: []string{"uname", "-r"}, Timeout: 120})
	if err != nil {
		t.Fatalf("ExecSync: %v", err)
	}
	if host := strings.TrimSpace(readFile(t, "/proc/sys/kernel/osrelease")); r.ExitCode != 0 || strings.TrimSpace(string(r.Stdout)) == host {
		t.Errorf("container kernel %q (exit %d), host %q: not in a VM", r.Stdout, r.ExitCode, host)
	}
	if n := len(h.QEMUProcesses()); n != 1 {
		t.Errorf("%d QEMU processes, want 1", n)
	}
	if !shimRunsFrom(filepath.Join(root, "opt/raksh/bin/containerd-shim-raksh-v2")) {
		t.Errorf("no shim runs from the installed path")
	}
	rs.StopPodSandbox(ctx, &cri.StopPodSandboxRequest{PodSandboxId: sb.PodSandboxId})
	if _, err := rs.RemovePodSandbox(ctx, &cri.RemovePodSandboxRequest{PodSandboxId: sb.PodSandboxId}); err != nil {
		t.Fatalf("RemovePodSandbox: %v", err)
	}
	waitNoQEMU(t, h)

	// Uninstall: nothing of it is left and the handler is gone.
	os.Remove(calls)
	runScript("uninstall")
	if s := readFile(t, calls); !strings.Contains(s, "systemctl disable --now raksh-snapshotter") || !strings.HasSuffix(s, "restart-containerd\n") {
		t.Errorf("uninstall: service and restart calls:\n%s", s)
	}
	if got := tree(t, root); strings.Join(got, "\n") != strings.Join(treeBefore, "\n") {
		t.Errorf("uninstall left files behind:\n%s", strings.Join(got, "\n"))
	}
	if got := readFile(t, h.ConfigPath); got != configBefore {
		t.Errorf("uninstall did not restore containerd's config:\n%s\nwant:\n%s", got, configBefore)
	}
	h.Restart()
	rs2, close2 := criClient(t, h)
	defer close2()
	if _, err := rs2.RunPodSandbox(ctx, &cri.RunPodSandboxRequest{Config: pod, RuntimeHandler: "raksh"}); err == nil || !strings.Contains(err.Error(), "raksh") {
		t.Errorf("RunPodSandbox on raksh after uninstall: %v, want an unknown-handler error", err)
	}
}

func criClient(t *testing.T, h *harness.Containerd) (cri.RuntimeServiceClient, func()) {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+h.Address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	return cri.NewRuntimeServiceClient(conn), func() { conn.Close() }
}

// tree lists every path below dir.
func tree(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && p != dir {
			out = append(out, strings.TrimPrefix(p, dir))
		}
		return nil
	})
	sort.Strings(out)
	return out
}

// shimRunsFrom reports whether a running process executes path.
func shimRunsFrom(path string) bool {
	procs, _ := filepath.Glob("/proc/[0-9]*/exe")
	for _, p := range procs {
		if exe, err := os.Readlink(p); err == nil && exe == path {
			return true
		}
	}
	return false
}
