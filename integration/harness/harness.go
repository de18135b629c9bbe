// Package harness starts the real parts the integration tests run against:
// a private containerd v2.4.2 (own root, state, sockets and config, built by
// hack/deps.sh under _output/deps/bin) with the Raksh runtime registered
// from contrib/, and the guest kernel and initrd under _output.
//
// Tests using it carry the build tag "integration" and call RequiresRoot.
// Typical use:
//
//	h := harness.StartContainerd(t, harness.Options{})
//	h.ImportImage(t, img, "docker.io/library/busybox:raksh")
//	out, err := h.Ctr("run", "--rm", "--runtime", "io.containerd.raksh.v2", ref, "id", "cmd")
package harness

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/console"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/vishvananda/netlink"

	"github.com/raksh-project/raksh/integration/testimage"
)

// RequiresRoot skips the test unless it runs as root.
func RequiresRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("test requires root")
	}
}

// Repo returns the repository root.
func Repo() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// Output returns the cache and build directory (_output, or $OUTPUT_DIR).
func Output() string {
	if d := os.Getenv("OUTPUT_DIR"); d != "" {
		return d
	}
	return filepath.Join(Repo(), "_output")
}

// Bin returns the path of a built binary: ours in _output/bin, the real
// parts in _output/deps/bin. It fails the test if the binary is missing.
func Bin(t testing.TB, name string) string {
	t.Helper()
	for _, d := range []string{filepath.Join(Output(), "bin"), filepath.Join(Output(), "deps", "bin")} {
		p := filepath.Join(d, name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Fatalf("%s not built: run make build deps", name)
	return ""
}

// Kernel and Initrd return the guest boot files.
func Kernel() string { return filepath.Join(Output(), "deps", "kernel", "vmlinuz") }

// Initrd returns the guest initrd built by make initrd.
func Initrd() string { return filepath.Join(Output(), "initrd.img") }

// Options configure a containerd.
type Options struct {
	// Config is appended to the generated config.toml (TOML, version 3).
	Config string
	// Imports are extra config files to import (drop-ins).
	Imports []string
	// RuntimeConfig is added to the generated raksh runtime.toml; its
	// top-level keys replace the harness defaults.
	RuntimeConfig string
	// Env is added to containerd's (and so the shims') environment.
	Env []string
	// NoRakshDropin leaves out the raksh runtime drop-in from contrib/ (the
	// installer test installs its own).
	NoRakshDropin bool
	// CNI, if set, gives the CRI plugin a CNI network (see CNI).
	CNI *CNI
}

// CNI describes a bridge network for the CRI plugin: the plugins built by
// hack/deps.sh cni (bridge, host-local, loopback, portmap), a bridge on a
// private subnet with host-local IPAM, no masquerade and no default route
// out of the machine (the bridge is the pods' gateway on the host only;
// IP forwarding is left as it is).
type CNI struct {
	// Bridge is the bridge device the plugin creates (e.g. "rknet0").
	Bridge string
	// Subnet is the pods' subnet (e.g. "10.199.38.0/24"); the bridge takes
	// its first address.
	Subnet string
	// PortMap adds the portmap plugin (hostPort) to the chain.
	PortMap bool
	// Routes are destinations (CIDRs) the pods reach through the bridge
	// (e.g. a Kubernetes Service range the node's kube-proxy answers); the
	// default is none beyond the pods' own subnet.
	Routes []string
}

// conflist renders the CNI network configuration.
func (n *CNI) conflist() string {
	pm := ""
	if n.PortMap {
		pm = `, {"type": "portmap", "capabilities": {"portMappings": true}}`
	}
	routes := ""
	for i, r := range n.Routes {
		if i > 0 {
			routes += ", "
		}
		routes += fmt.Sprintf(`{"dst": %q}`, r)
	}
	return fmt.Sprintf(`{"cniVersion": "1.0.0", "name": %q, "plugins": [
  {"type": "bridge", "bridge": %q, "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": %q}]], "routes": [%s], "dataDir": %q}}%s]}
`, n.Bridge, n.Bridge, n.Subnet, routes, "/run/raksh-test-cni/"+n.Bridge, pm)
}

// CNIBinDir is where hack/deps.sh cni puts the CNI plugins.
func CNIBinDir() string { return filepath.Join(Output(), "deps", "cni") }

// Containerd is a private containerd instance.
type Containerd struct {
	Dir, Address, ConfigPath, RuntimeConfigPath, Log string
	// StateDir is the raksh runtime's state directory (VM sockets, logs).
	StateDir string
	opts     Options
	cmd      *exec.Cmd
	t        testing.TB
}

// StartContainerd starts a private containerd and stops it at test end.
func StartContainerd(t testing.TB, o Options) *Containerd {
	t.Helper()
	RequiresRoot(t)
	// A short path: unix socket paths are limited to 108 bytes.
	dir, err := os.MkdirTemp("/tmp", "rk-")
	if err != nil {
		t.Fatal(err)
	}
	c := &Containerd{
		Dir: dir, Address: filepath.Join(dir, "c.sock"), ConfigPath: filepath.Join(dir, "config.toml"),
		RuntimeConfigPath: filepath.Join(dir, "runtime.toml"), Log: filepath.Join(dir, "containerd.log"),
		StateDir: filepath.Join(dir, "raksh"), opts: o, t: t,
	}
	rt := mergeTOML(fmt.Sprintf(`qemu_path = "qemu-system-x86_64"
kernel = %q
initrd = %q
accel = "auto"
memory_mib = 512
vcpus = 1
boot_timeout = "3m"
state_dir = %q
debug = true
`, Kernel(), Initrd(), c.StateDir), o.RuntimeConfig)
	if err := os.WriteFile(c.RuntimeConfigPath, []byte(rt), 0o644); err != nil {
		t.Fatal(err)
	}
	// The runtime drop-in from contrib/, pointed at this test's runtime.toml.
	dropin, err := os.ReadFile(filepath.Join(Repo(), "contrib", "containerd", "conf.d", "10-raksh-runtime.toml"))
	if err != nil {
		t.Fatal(err)
	}
	dropinPath := filepath.Join(dir, "10-raksh-runtime.toml")
	os.WriteFile(dropinPath, bytes.ReplaceAll(dropin, []byte("/etc/raksh/runtime.toml"), []byte(c.RuntimeConfigPath)), 0o644)
	imports := append([]string{dropinPath}, o.Imports...)
	if o.NoRakshDropin {
		imports = o.Imports
	}
	var q []string
	for _, i := range imports {
		q = append(q, fmt.Sprintf("%q", i))
	}
	cfg := fmt.Sprintf(`version = 3
root = %q
state = %q
imports = [%s]
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.blockfile", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = %q
[ttrpc]
  address = %q
[debug]
  level = "debug"

[plugins.'io.containerd.cri.v1.runtime']
  enable_selinux = false
  restrict_oom_score_adj = true
[plugins.'io.containerd.cri.v1.images']
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), strings.Join(q, ", "), c.Address, c.Address+".ttrpc", testimage.PauseRef) + o.Config
	if o.CNI != nil {
		cfg += c.cniConfig(t, o.CNI)
	}
	if err := os.WriteFile(c.ConfigPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	c.start()
	t.Cleanup(func() {
		c.Stop()
		c.killShims()
		if t.Failed() {
			b, _ := os.ReadFile(c.Log)
			if len(b) > 20000 {
				b = b[len(b)-20000:]
			}
			t.Logf("containerd log tail:\n%s", b)
			c.dumpConsoles()
		}
		exec.Command("umount", "-R", filepath.Join(dir, "root")).Run()
		os.RemoveAll(dir)
	})
	return c
}

// cniConfig writes the network's conflist and returns the CRI plugin's
// CNI settings.
func (c *Containerd) cniConfig(t testing.TB, n *CNI) string {
	for _, p := range []string{"bridge", "host-local", "loopback", "portmap"} {
		if _, err := os.Stat(filepath.Join(CNIBinDir(), p)); err != nil {
			t.Fatalf("CNI plugin %s not built: run hack/deps.sh cni (%v)", p, err)
		}
	}
	confDir := filepath.Join(c.Dir, "net.d")
	os.MkdirAll(confDir, 0o755)
	if err := os.WriteFile(filepath.Join(confDir, "10-"+n.Bridge+".conflist"), []byte(n.conflist()), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// The bridge plugin leaves its bridge; nothing else uses it.
		if l, err := netlink.LinkByName(n.Bridge); err == nil {
			netlink.LinkDel(l)
		}
		os.RemoveAll("/run/raksh-test-cni/" + n.Bridge)
	})
	return fmt.Sprintf(`
[plugins.'io.containerd.cri.v1.runtime'.cni]
  bin_dirs = [%q]
  conf_dir = %q
  max_conf_num = 1
`, CNIBinDir(), confDir)
}

// mergeTOML returns base with the top-level keys that extra sets removed,
// followed by extra.
func mergeTOML(base, extra string) string {
	set := map[string]bool{}
	for _, l := range strings.Split(extra, "\n") {
		l = strings.TrimSpace(l)
		if strings.HasPrefix(l, "[") {
			break
		}
		if k, _, ok := strings.Cut(l, "="); ok {
			set[strings.TrimSpace(k)] = true
		}
	}
	var out []string
	for _, l := range strings.Split(base, "\n") {
		if k, _, ok := strings.Cut(l, "="); ok && set[strings.TrimSpace(k)] {
			continue
		}
		out = append(out, l)
	}
	return strings.Join(out, "\n") + "\n" + extra
}

func (c *Containerd) dumpConsoles() {
	logs, _ := filepath.Glob(filepath.Join(c.StateDir, "*", "*", "console.log"))
	for _, l := range logs {
		b, _ := os.ReadFile(l)
		if len(b) > 4000 {
			b = b[len(b)-4000:]
		}
		c.t.Logf("guest console %s:\n%s", l, b)
	}
}

func (c *Containerd) start() {
	t := c.t
	t.Helper()
	logf, err := os.OpenFile(c.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(Bin(t, "containerd"), "--config", c.ConfigPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	path := filepath.Join(Output(), "bin") + ":" + filepath.Join(Output(), "deps", "bin") + ":" + os.Getenv("PATH")
	cmd.Env = append(append(os.Environ(), "PATH="+path, "RAKSH_RUNTIME_CONFIG="+c.RuntimeConfigPath), c.opts.Env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c.cmd = cmd
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := c.Ctr("version"); err == nil {
			return
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(c.Log)
			t.Fatalf("containerd did not come up:\n%s", b)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Stop stops containerd (not the shims, as a real restart would).
func (c *Containerd) Stop() {
	if c.cmd == nil {
		return
	}
	c.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { c.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		c.cmd.Process.Kill()
		<-done
	}
	c.cmd = nil
}

// Restart stops and starts containerd with the same config and state.
func (c *Containerd) Restart() {
	c.Stop()
	c.start()
}

// Ctr runs ctr against this containerd in namespace "default" and returns
// its combined output.
func (c *Containerd) Ctr(args ...string) (string, error) {
	return c.CtrContext(context.Background(), args...)
}

// CtrContext is Ctr with a context bounding the command. It returns ctr's
// stdout; on failure the error carries its stderr.
func (c *Containerd) CtrContext(ctx context.Context, args ...string) (string, error) {
	all := append([]string{"--address", c.Address, "--namespace", "default"}, args...)
	cmd := exec.CommandContext(ctx, Bin(c.t, "ctr"), all...)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("ctr %s: %w: %s", strings.Join(args, " "), err, ctrErrors(stderr.String()))
	}
	return out.String(), err
}

// ctrErrors drops ctr's deprecation warnings from its stderr.
func ctrErrors(s string) string {
	var keep []string
	for _, l := range strings.Split(s, "\n") {
		if !strings.Contains(l, "DEPRECATION") && strings.TrimSpace(l) != "" {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

// CtrCmd returns an unstarted ctr command against this containerd.
func (c *Containerd) CtrCmd(ctx context.Context, args ...string) *exec.Cmd {
	all := append([]string{"--address", c.Address, "--namespace", "default"}, args...)
	return exec.CommandContext(ctx, Bin(c.t, "ctr"), all...)
}

// ImportCRIImages imports the test pause image (testimage.PauseRef) and a
// busybox image (as busyboxRef, /bin/sh its command) into the CRI's
// namespace, as a kubelet's node has them.
func (c *Containerd) ImportCRIImages(t testing.TB, busyboxRef string) {
	t.Helper()
	pause, err := testimage.Pause()
	if err != nil {
		t.Fatal(err)
	}
	c.ImportImage(t, pause, testimage.PauseRef, "k8s.io")
	bb, err := testimage.Busybox(nil, "/bin/sh")
	if err != nil {
		t.Fatal(err)
	}
	c.ImportImage(t, bb, busyboxRef, "k8s.io")
}

// RunInPty runs ctr with a pseudo-terminal as its stdio and returns what it
// wrote to the terminal.
func (c *Containerd) RunInPty(t testing.TB, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	return RunInPty(c.CtrCmd(ctx, args...))
}

// RunInPty runs cmd with a new pseudo-terminal (120x40) as its controlling
// terminal and stdio, and returns what it wrote to the terminal.
func RunInPty(cmd *exec.Cmd) (string, error) {
	master, slavePath, err := console.NewPty()
	if err != nil {
		return "", err
	}
	defer master.Close()
	master.Resize(console.WinSize{Height: 40, Width: 120})
	slave, err := os.OpenFile(slavePath, os.O_RDWR, 0)
	if err != nil {
		return "", err
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true}
	var out bytes.Buffer
	done := make(chan struct{})
	go func() { io.Copy(&out, master); close(done) }()
	err = cmd.Run()
	slave.Close()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
	}
	return out.String(), err
}

// ImportImage imports img under ref into namespace ns ("" = default).
func (c *Containerd) ImportImage(t testing.TB, img v1.Image, ref, ns string) {
	t.Helper()
	if ns == "" {
		ns = "default"
	}
	archive := filepath.Join(c.Dir, strings.NewReplacer("/", "_", ":", "_").Replace(ref)+".tar")
	if err := testimage.WriteArchive(img, ref, archive); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(Bin(t, "ctr"), "--address", c.Address, "--namespace", ns, "image", "import", "--local", archive)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("import %s: %v\n%s", ref, err, out)
	}
}

// killShims kills shims of this containerd that a failed test left running
// (shims outlive containerd by design); their VMs die with them.
func (c *Containerd) killShims() {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !bytes.Contains(b, []byte("containerd-shim")) || !bytes.Contains(b, []byte(c.Address)) {
			continue
		}
		var pid int
		fmt.Sscanf(filepath.Base(filepath.Dir(p)), "%d", &pid)
		syscall.Kill(pid, syscall.SIGKILL)
	}
	for _, pid := range c.QEMUProcesses() {
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

// QEMUProcesses returns the pids of QEMU processes whose command line
// mentions this containerd's raksh state directory.
func (c *Containerd) QEMUProcesses() []int {
	return c.stateProcesses(func(argv0 string) bool { return strings.HasPrefix(argv0, "qemu") })
}

// VirtioFSDProcesses returns the pids of virtiofsd processes whose command
// line mentions this containerd's raksh state directory.
func (c *Containerd) VirtioFSDProcesses() []int {
	return c.stateProcesses(func(argv0 string) bool { return filepath.Base(argv0) == "virtiofsd" })
}

// stateProcesses returns the pids of processes whose argv[0] matches and
// whose command line mentions this containerd's raksh state directory.
func (c *Containerd) stateProcesses(match func(argv0 string) bool) []int {
	var pids []int
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !bytes.Contains(b, []byte(c.StateDir)) || !match(string(bytes.SplitN(b, []byte{0}, 2)[0])) {
			continue
		}
		var pid int
		fmt.Sscanf(filepath.Base(filepath.Dir(p)), "%d", &pid)
		pids = append(pids, pid)
	}
	return pids
}
