//go:build integration

package kube

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/raksh-project/raksh/integration/harness"
)

// Versions hack/deps.sh kube builds into _output/kube/<KubeVersion>.
const (
	KubeVersion = "v1.34.4"
	EtcdVersion = "v3.6.16"
)

// The node's network, all inside the test's own network namespace: the
// node address on a veth (this kernel has no dummy links), the pods on a CNI
// bridge (no masquerade, no route out) and the Services' virtual range.
const (
	nodeName    = "raksh-node"
	nodeIP      = "10.199.42.1"
	podCIDR     = "10.199.40.0/24"
	serviceCIDR = "10.199.41.0/24"
	apiIP       = "10.199.41.1" // the kubernetes Service
	podBridge   = "rkkube0"
	busyboxRef  = "docker.io/raksh/busybox:kube"
)

// Host sysctls the kubelet sets (protectKernelDefaults is false): restored
// at teardown.
var kubeletSysctls = []string{"vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
	"kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes"}

// cluster is a single-node Kubernetes: etcd, kube-apiserver,
// kube-controller-manager, kube-scheduler, kubelet and kube-proxy, the
// kubelet running pods through the test's private containerd (runc and
// raksh handlers).
type cluster struct {
	t          *testing.T
	dir        string
	bin        string
	pki        *pki
	admin      string // admin kubeconfig
	containerd *harness.Containerd
	conf       *confidential
	enc        *encImage
	installer  *installerNode
	procs      []*proc
	kubeletDir string
	logsDir    string
	// accel is QEMU's accelerator as a raksh pod's VM ran ("TCG", "KVM").
	accel string
	// Up is how long the cluster took from etcd's start to the node Ready.
	Up time.Duration
}

type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{} // closed when the process exited
}

// kubeBin returns the path of a binary hack/deps.sh kube built.
func kubeBin(t *testing.T, name string) string {
	p := filepath.Join(harness.Output(), "kube", KubeVersion, name)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("%s not built: run hack/deps.sh kube (%v)", name, err)
	}
	return p
}

// startCluster brings the cluster up in the current network namespace
// (the test's own) and tears it down at test end: pods deleted, every
// process stopped, the kubelet's mounts, cgroups, log links and host
// sysctls undone.
func startCluster(t *testing.T) *cluster {
	start := time.Now()
	for _, b := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl"} {
		kubeBin(t, b)
	}
	dir, err := os.MkdirTemp("/tmp", "rkk-")
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{t: t, dir: dir, accel: "unknown accelerator", bin: filepath.Join(harness.Output(), "kube", KubeVersion),
		kubeletDir: filepath.Join(dir, "kubelet"), logsDir: filepath.Join(dir, "pod-logs")}
	t.Cleanup(func() { os.RemoveAll(dir) })

	// Sysctls and state the kubelet changes on the host, restored last.
	saved := map[string]string{}
	for _, s := range kubeletSysctls {
		if b, err := os.ReadFile("/proc/sys/" + s); err == nil {
			saved[s] = strings.TrimSpace(string(b))
		}
	}
	_, varLogErr := os.Stat("/var/log/containers")
	// The kubelet's device-plugin socket directory is fixed:
	// /var/lib/kubelet/device-plugins, whatever its root directory.
	_, varLibErr := os.Stat("/var/lib/kubelet")
	cgBefore := kubepodsCgroups()
	t.Cleanup(func() {
		for s, v := range saved {
			os.WriteFile("/proc/sys/"+s, []byte(v), 0o644)
		}
		if os.IsNotExist(varLibErr) {
			os.RemoveAll("/var/lib/kubelet")
		}
		c.removeLogLinks(os.IsNotExist(varLogErr))
		c.removeCgroups(cgBefore)
	})

	netSetup(t)

	// The owner's broker and raksh-nri; containerd with the raksh handler
	// (contrib's drop-in) on the sim TEE, NRI and the CNI bridge.
	// The owner's encrypted image on a registry on loopback, the
	// raksh-snapshotter and the raksh-enc handler using it.
	c.conf = startConfidential(t, filepath.Join(dir, "owner"), filepath.Join(c.kubeletDir, "pods"))
	enc, imports, registryConfig := prepareEncImage(t, filepath.Join(dir, "enc"), c.conf)
	c.enc = enc
	h := harness.StartContainerd(t, harness.Options{
		CNI:           &harness.CNI{Bridge: podBridge, Subnet: podCIDR, PortMap: true, Routes: []string{serviceCIDR}},
		RuntimeConfig: c.conf.runtimeConfig(),
		Config:        c.conf.nriConfig + registryConfig,
		Imports:       imports,
	})
	c.containerd = h
	c.enc.start(t, h)
	c.conf.setPolicy(t, h.RuntimeConfigPath, c.enc.encConfig)
	h.ImportCRIImages(t, busyboxRef)
	if err := c.prepareInstaller(); err != nil {
		t.Fatal(err)
	}

	// PKI: one CA, a certificate per component.
	p, err := newPKI(filepath.Join(dir, "pki"))
	if err != nil {
		t.Fatal(err)
	}
	c.pki = p
	certs := []struct {
		name, cn string
		orgs     []string
		hosts    []string
	}{
		{"apiserver", "kube-apiserver", nil, []string{"127.0.0.1", nodeIP, apiIP, "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}},
		{"apiserver-kubelet-client", "kube-apiserver-kubelet-client", []string{"system:masters"}, nil},
		{"admin", "e2e-admin", []string{"system:masters"}, nil},
		{"controller-manager", "system:kube-controller-manager", nil, nil},
		{"scheduler", "system:kube-scheduler", nil, nil},
		{"kubelet", "system:node:" + nodeName, []string{"system:nodes"}, []string{nodeIP, nodeName}},
		{"kube-proxy", "system:kube-proxy", nil, nil},
	}
	server := "https://" + nodeIP + ":6443"
	kc := map[string]string{}
	for _, cert := range certs {
		if err := p.issue(cert.name, cert.cn, cert.orgs, cert.hosts...); err != nil {
			t.Fatal(err)
		}
		if kc[cert.name], err = p.kubeconfig(cert.name, server); err != nil {
			t.Fatal(err)
		}
	}
	c.admin = kc["admin"]
	// Stopping comes before containerd's own clean-up (registered earlier).
	t.Cleanup(c.teardown)

	c.start("etcd", "--name", "e2e", "--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", "http://127.0.0.1:2379", "--advertise-client-urls", "http://127.0.0.1:2379",
		"--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
		"--initial-cluster", "e2e=http://127.0.0.1:2380", "--unsafe-no-fsync", "--log-level", "warn")
	c.start("kube-apiserver", "--etcd-servers", "http://127.0.0.1:2379",
		"--advertise-address", nodeIP, "--secure-port", "6443",
		"--client-ca-file", p.CA(), "--tls-cert-file", p.path("apiserver.crt"), "--tls-private-key-file", p.path("apiserver.key"),
		"--kubelet-client-certificate", p.path("apiserver-kubelet-client.crt"), "--kubelet-client-key", p.path("apiserver-kubelet-client.key"),
		"--kubelet-preferred-address-types", "InternalIP",
		"--service-cluster-ip-range", serviceCIDR,
		"--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file", p.path("sa.pub"), "--service-account-signing-key-file", p.path("sa.key"),
		"--authorization-mode", "Node,RBAC", "--allow-privileged=true", "--anonymous-auth=false")
	c.waitFor("kube-apiserver ready", 2*time.Minute, func() error {
		_, err := c.kubectl("get", "--raw", "/readyz")
		return err
	})
	c.start("kube-controller-manager", "--kubeconfig", kc["controller-manager"],
		"--authentication-kubeconfig", kc["controller-manager"], "--authorization-kubeconfig", kc["controller-manager"],
		"--service-account-private-key-file", p.path("sa.key"), "--root-ca-file", p.CA(),
		"--use-service-account-credentials=true", "--leader-elect=false", "--bind-address", "127.0.0.1",
		"--cluster-signing-cert-file", p.CA(), "--cluster-signing-key-file", p.path("ca.key"))
	c.start("kube-scheduler", "--kubeconfig", kc["scheduler"],
		"--authentication-kubeconfig", kc["scheduler"], "--authorization-kubeconfig", kc["scheduler"],
		"--leader-elect=false", "--bind-address", "127.0.0.1")

	kubeletCfg := filepath.Join(dir, "kubelet.yaml")
	os.WriteFile(kubeletCfg, []byte(fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# The host is cgroup v1 (containerd's runc uses cgroupfs).
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
address: %s
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
tlsCertFile: %s
tlsPrivateKeyFile: %s
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: %s}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://%s
podLogsDir: %s
clusterDomain: cluster.local
# No DNS in this cluster and nothing of the host's resolver in the pods.
resolvConf: ""
# ConfigMap and Secret updates reach the pods within seconds.
syncFrequency: 10s
# The machine is shared: no eviction or image GC because of its disk.
evictionHard: {memory.available: 100Mi, nodefs.available: 1%%, imagefs.available: 1%%, nodefs.inodesFree: 1%%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
rotateCertificates: false
# The kubelet names the pod's runtime handler in its image pulls, so that
# containerd unpacks into the handler's snapshotter (runtime_platforms).
featureGates: {RuntimeClassInImageCriApi: true}
`, nodeIP, p.path("kubelet.crt"), p.path("kubelet.key"), p.CA(), h.Address, c.logsDir)), 0o644)
	c.start("kubelet", "--config", kubeletCfg, "--kubeconfig", kc["kubelet"], "--root-dir", c.kubeletDir,
		"--hostname-override", nodeName, "--node-ip", nodeIP, "--v", "2")

	proxyCfg := filepath.Join(dir, "kube-proxy.yaml")
	os.WriteFile(proxyCfg, []byte(fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {kubeconfig: %s}
hostnameOverride: %s
clusterCIDR: %s
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# conntrack is the host's (global) table: leave its limits alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
`, kc["kube-proxy"], nodeName, podCIDR)), 0o644)
	c.start("kube-proxy", "--config", proxyCfg)

	c.waitFor("node Ready", 3*time.Minute, func() error {
		out, err := c.kubectl("get", "node", nodeName, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`)
		if err != nil {
			return err
		}
		if out != "True" {
			return fmt.Errorf("Ready=%q", out)
		}
		return nil
	})
	// The default service account exists once the controller made it.
	c.waitFor("default service account", time.Minute, func() error {
		_, err := c.kubectl("get", "serviceaccount", "default")
		return err
	})
	c.Up = time.Since(start)
	t.Logf("cluster up in %s (Kubernetes %s, etcd %s, node %s at %s)", c.Up.Round(time.Second), KubeVersion, EtcdVersion, nodeName, nodeIP)
	return c
}

// netSetup prepares the test's network namespace: loopback, the node's
// address on a veth pair, forwarding and bridge netfilter (kube-proxy's
// Services between pods on one bridge). All of it is the namespace's own.
func netSetup(t *testing.T) {
	for _, args := range [][]string{
		{"link", "set", "lo", "up"},
		{"link", "add", "rkknode", "type", "veth", "peer", "name", "rkknode1"},
		{"addr", "add", nodeIP + "/24", "dev", "rkknode"},
		{"link", "set", "rkknode", "up"},
		{"link", "set", "rkknode1", "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	for _, s := range []string{"net/ipv4/ip_forward", "net/bridge/bridge-nf-call-iptables"} {
		if err := os.WriteFile("/proc/sys/"+s, []byte("1"), 0o644); err != nil {
			t.Fatalf("sysctl %s (in the test's network namespace): %v", s, err)
		}
	}
}

// start runs a component with its output in <dir>/<name>.log.
func (c *cluster) start(name string, args ...string) {
	t := c.t
	logPath := filepath.Join(c.dir, name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(c.bin, name), args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	path := filepath.Join(harness.Output(), "deps", "bin") + ":" + os.Getenv("PATH")
	cmd.Env = append(os.Environ(), "PATH="+path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	logf.Close()
	pr := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	c.procs = append(c.procs, pr)
	go func() { cmd.Wait(); close(pr.done) }()
}

// waitFor polls f until it succeeds; on timeout the test fails with the
// components' log tails.
func (c *cluster) waitFor(what string, timeout time.Duration, f func() error) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			c.dumpLogs()
			c.t.Fatalf("%s: not within %s: %v", what, timeout, err)
		}
		time.Sleep(time.Second)
	}
}

func (c *cluster) dumpLogs() {
	for _, p := range c.procs {
		b, _ := os.ReadFile(p.log)
		if len(b) > 6000 {
			b = b[len(b)-6000:]
		}
		c.t.Logf("%s log tail:\n%s", p.name, b)
	}
}

// kubectl runs kubectl as the cluster admin and returns its stdout; the
// error carries stderr.
func (c *cluster) kubectl(args ...string) (string, error) {
	return c.kubectlIn(nil, args...)
}

// kubectlIn is kubectl with stdin.
func (c *cluster) kubectlIn(stdin []byte, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := c.kubectlCmd(ctx, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out.String(), nil
}

func (c *cluster) kubectlCmd(ctx context.Context, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, filepath.Join(c.bin, "kubectl"), append([]string{"--kubeconfig", c.admin}, args...)...)
}

// apply applies a manifest.
func (c *cluster) apply(manifest string) error {
	_, err := c.kubectlIn([]byte(manifest), "apply", "-f", "-")
	return err
}

// teardown deletes every pod (their VMs stop with them), stops the
// components, removes the CRI sandboxes the kubelet left and unmounts what
// the kubelet mounted.
func (c *cluster) teardown() {
	t := c.t
	if t.Failed() {
		c.dumpLogs()
	}
	for _, ns := range c.namespaces() {
		c.kubectl("delete", "deployments,daemonsets,pods,services,configmaps,secrets", "--all", "-n", ns, "--wait=false")
	}
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		out, err := c.kubectl("get", "pods", "-A", "-o", "name")
		if err != nil || strings.TrimSpace(out) == "" {
			break
		}
		time.Sleep(2 * time.Second)
	}
	// The kubelet and kube-proxy first, the control plane, etcd last.
	for i := len(c.procs) - 1; i >= 0; i-- {
		p := c.procs[i]
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(15 * time.Second):
			syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
			<-p.done
		}
	}
	c.removeSandboxes()
	unmountBelow(c.dir)
}

func (c *cluster) namespaces() []string {
	out, err := c.kubectl("get", "namespaces", "-o", "jsonpath={.items[*].metadata.name}")
	if err != nil {
		return []string{"default"}
	}
	var ns []string
	for _, n := range strings.Fields(out) {
		if n != "kube-system" && n != "kube-public" && n != "kube-node-lease" {
			ns = append(ns, n)
		}
	}
	return ns
}

// removeSandboxes stops and removes the pod sandboxes left in containerd
// (a pod the kubelet had no time to delete): their VMs, taps and IPs go.
func (c *cluster) removeSandboxes() {
	conn, err := grpc.NewClient("unix://"+c.containerd.Address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return
	}
	defer conn.Close()
	rs := cri.NewRuntimeServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	l, err := rs.ListPodSandbox(ctx, &cri.ListPodSandboxRequest{})
	if err != nil {
		return
	}
	for _, sb := range l.Items {
		c.t.Logf("teardown: removing sandbox %s/%s left by the kubelet", sb.Metadata.Namespace, sb.Metadata.Name)
		rs.StopPodSandbox(ctx, &cri.StopPodSandboxRequest{PodSandboxId: sb.Id})
		rs.RemovePodSandbox(ctx, &cri.RemovePodSandboxRequest{PodSandboxId: sb.Id})
	}
}

// unmountBelow unmounts every mount point below dir, deepest first.
func unmountBelow(dir string) {
	for _, m := range mountsBelow(dir) {
		syscall.Unmount(m, syscall.MNT_DETACH)
	}
}

// mountsBelow lists the mount points below dir, deepest first.
func mountsBelow(dir string) []string {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	var ms []string
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			ms = append(ms, f[4])
		}
	}
	sort.Slice(ms, func(i, j int) bool { return len(ms[i]) > len(ms[j]) })
	return ms
}

// removeLogLinks removes the kubelet's links in /var/log/containers that
// point at this cluster's pod logs (and the directory if it made it).
func (c *cluster) removeLogLinks(created bool) {
	links, _ := filepath.Glob("/var/log/containers/*")
	for _, l := range links {
		if dst, err := os.Readlink(l); err == nil && strings.HasPrefix(dst, c.logsDir+"/") {
			os.Remove(l)
		}
	}
	if created {
		os.Remove("/var/log/containers") // only if empty
	}
}

// kubepodsCgroups lists the kubelet's cgroup directories that exist.
func kubepodsCgroups() map[string]bool {
	m := map[string]bool{}
	ds, _ := filepath.Glob("/sys/fs/cgroup/*/kubepods")
	for _, d := range ds {
		m[d] = true
	}
	return m
}

// removeCgroups removes the kubepods cgroup trees the kubelet made (not
// ones that existed before), deepest first.
func (c *cluster) removeCgroups(before map[string]bool) {
	for d := range kubepodsCgroups() {
		if before[d] {
			continue
		}
		var dirs []string
		filepath.WalkDir(d, func(p string, e os.DirEntry, err error) error {
			if err == nil && e.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
		for _, x := range dirs {
			if err := syscall.Rmdir(x); err != nil {
				c.t.Logf("teardown: cgroup %s: %v", x, err)
			}
		}
	}
}
