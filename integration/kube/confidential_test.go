//go:build integration

package kube

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/raksh-project/raksh/integration/harness"
)

// sealedNS is the namespace whose raksh pods raksh-nri handles: an owner's
// envelope is checked and adopted, anything else sealed on the node. Pods in
// other namespaces are left alone.
const sealedNS = "sealed"

// workloadKID names the workload key in the broker.
const workloadKID = "kbs:///default/workload/e2e"

// confidential is the owner's side of the cluster: raksh-kbs on loopback
// (trusting the sim platform key of the initrd), the workload key pair,
// and raksh-nri pre-registered with the node's containerd.
type confidential struct {
	dir       string
	kbsAddr   string
	env       []string // RAKSH_KBS_URL and RAKSH_KBS_ADMIN_KEY for rakshctl
	pub       string   // workload public key (the recipient)
	kbsCmd    *exec.Cmd
	kbsDone   chan struct{}
	nriConfig string // containerd config: NRI with raksh-nri
}

// startConfidential starts raksh-kbs, stores the workload key in it and
// prepares raksh-nri (seal mode, handler raksh, namespace sealedNS).
func startConfidential(t *testing.T, dir, kubeletPods string) *confidential {
	simPub := filepath.Join(harness.Output(), "keys", "sim-platform.pub")
	if _, err := os.Stat(simPub); err != nil {
		t.Fatalf("sim platform key not generated (run make build): %v", err)
	}
	k := &confidential{dir: dir, kbsDone: make(chan struct{})}
	os.MkdirAll(filepath.Join(dir, "kbs"), 0o700)
	k.rakshctl(t, "keys", "generate", "--alg", "ed25519", "--private", k.path("admin.key"), "--public", k.path("admin.pub"))
	logPath := k.path("kbs.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	k.kbsCmd = exec.Command(harness.Bin(t, "raksh-kbs"), "--address", "127.0.0.1:0",
		"--resource-dir", k.path("kbs/resources"), "--policy", k.path("kbs/policy.json"),
		"--admin-public-key", k.path("admin.pub"), "--sim-platform-keys", simPub)
	k.kbsCmd.Stdout, k.kbsCmd.Stderr = logf, logf
	k.kbsCmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := k.kbsCmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { k.kbsCmd.Wait(); close(k.kbsDone) }()
	t.Cleanup(func() {
		k.kbsCmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-k.kbsDone:
		case <-time.After(10 * time.Second):
			k.kbsCmd.Process.Kill()
		}
	})
	addrRe := regexp.MustCompile(`address="?(127\.0\.0\.1:[0-9]+)`)
	deadline := time.Now().Add(30 * time.Second)
	for k.kbsAddr == "" {
		b, _ := os.ReadFile(logPath)
		if m := addrRe.FindSubmatch(b); m != nil {
			k.kbsAddr = string(m[1])
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("raksh-kbs did not come up:\n%s", b)
		}
		time.Sleep(100 * time.Millisecond)
	}
	k.env = []string{"RAKSH_KBS_URL=http://" + k.kbsAddr, "RAKSH_KBS_ADMIN_KEY=" + k.path("admin.key")}
	k.pub = k.path("workload.pub")
	k.rakshctl(t, "keys", "generate", "--alg", "ec-p256", "--private", k.path("workload.key"), "--public", k.pub, "--kid", workloadKID)
	k.rakshctl(t, "kbs", "resource", "set", "--file", k.path("workload.key"), strings.TrimPrefix(workloadKID, "kbs:///"))

	// raksh-nri, pre-registered with containerd's NRI.
	for _, d := range []string{"nri/plugins", "nri/conf.d"} {
		os.MkdirAll(k.path(d), 0o755)
	}
	plugin, err := os.ReadFile(harness.Bin(t, "raksh-nri"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(k.path("nri/plugins/10-raksh"), plugin, 0o755)
	os.WriteFile(k.path("nri/conf.d/10-raksh.conf"), []byte(fmt.Sprintf(`mode: seal
runtimeHandlers: [raksh]
namespaces: [%s]
recipients:
- keyID: %s
  keyFile: %s
kubeletPodsDir: %s
`, sealedNS, workloadKID, k.pub, kubeletPods)), 0o644)
	k.nriConfig = fmt.Sprintf(`
[plugins.'io.containerd.nri.v1.nri']
  disable = false
  socket_path = %q
  plugin_path = %q
  plugin_config_path = %q
`, k.path("nri/nri.sock"), k.path("nri/plugins"), k.path("nri/conf.d"))
	return k
}

func (k *confidential) path(name string) string { return filepath.Join(k.dir, name) }

// runtimeConfig is the shim's: the simulated TEE and the broker behind the
// shim's kbs proxy; debug off, as on a production node (debug keeps each
// VM's state directory after the pod is gone).
func (k *confidential) runtimeConfig() string {
	return fmt.Sprintf("tee = \"sim\"\ndebug = false\n\n[proxy]\nkbs = %q\n", k.kbsAddr)
}

// setPolicy lets guests launched with runtimeConfigs (the sim TEE, their
// launch measurements) have the workload and image keys.
func (k *confidential) setPolicy(t *testing.T, runtimeConfigs ...string) {
	var ms []string
	for _, rc := range runtimeConfigs {
		ms = append(ms, fmt.Sprintf("%q", strings.TrimSpace(k.rakshctl(t, "tee", "measure", "--runtime-config", rc))))
	}
	doc := fmt.Sprintf(`{"rules": [{"resources": ["default/workload/*", "default/image-key/*"], "tee": ["sim"], "measurements": [%s]}]}`, strings.Join(ms, ", "))
	os.WriteFile(k.path("policy.json"), []byte(doc), 0o600)
	k.rakshctl(t, "kbs", "policy", "set", "--file", k.path("policy.json"))
}

func (k *confidential) rakshctl(t *testing.T, args ...string) string {
	out, err := k.rakshctlE(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func (k *confidential) rakshctlE(args ...string) (string, error) {
	bin := filepath.Join(harness.Output(), "bin", "rakshctl")
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), k.env...)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("rakshctl %s: %w: %s", strings.Join(args, " "), err, stderr.String())
	}
	return out.String(), nil
}

func sha16(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:])[:16]
}

// hashScript prints the first 16 hex digits of the SHA-256 of $SECRET and of
// the sealed file, never the values.
const hashScript = `echo "env-sha=$(printf %s "$SECRET" | sha256sum | cut -c1-16)"; ` +
	`echo "file-sha=$(cat /run/secrets/pw 2>/dev/null | sha256sum | cut -c1-16)"; ` +
	`echo "kernel=$(uname -r)"; exec sleep 3600`

// (f) A Deployment sealed by its owner with rakshctl seal: two replicas,
// each attesting to raksh-kbs and unsealing its env and file in the guest;
// no file of the node (etcd included) holds the secrets; kubectl exec is
// refused.
func sealedDeployment(s *S, c *cluster) {
	k := c.conf
	secret, file := random("env-"), random("file-")
	defer s.del("-n", sealedNS, "deployment", "vault")
	work := filepath.Join(k.dir, "owner")
	os.MkdirAll(work, 0o700)
	os.WriteFile(filepath.Join(work, "pw"), []byte(file), 0o600)
	os.WriteFile(filepath.Join(work, "deploy.yaml"), []byte(fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata: {name: vault, namespace: %s}
spec:
  replicas: 2
  selector: {matchLabels: {app: vault}}
  template:
    metadata: {labels: {app: vault}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: app
        image: %s
        imagePullPolicy: Never
        command: ["/bin/sh", "-c", %q]
        env:
        - {name: SECRET, value: %s}
`, sealedNS, busyboxRef, hashScript, secret)), 0o600)
	if _, err := k.rakshctlE("seal", "-f", filepath.Join(work, "deploy.yaml"), "--recipient", k.pub, "--kid", workloadKID,
		"--secret-file", "app:/run/secrets/pw="+filepath.Join(work, "pw"), "--allow-logs", "--out", filepath.Join(work, "sealed.yaml")); err != nil {
		s.Fatalf("%v", err)
	}
	sealed, _ := os.ReadFile(filepath.Join(work, "sealed.yaml"))
	if bytes.Contains(sealed, []byte(secret)) || bytes.Contains(sealed, []byte(file)) {
		s.Fatalf("the sealed manifest holds a secret in clear")
	}
	c.kubectl("create", "namespace", sealedNS) // may exist (g)
	if _, err := c.kubectl("apply", "-f", filepath.Join(work, "sealed.yaml")); err != nil {
		s.Fatalf("%v", err)
	}
	if _, err := c.kubectl("-n", sealedNS, "rollout", "status", "deployment/vault", "--timeout="+(2*podTimeout).String()); err != nil {
		desc, _ := c.kubectl("-n", sealedNS, "describe", "pods", "-l", "app=vault")
		s.Fatalf("sealed Deployment not rolled out: %v\n%s", err, tail(desc, 3000))
	}
	pods := strings.Fields(s.kubectl("-n", sealedNS, "get", "pods", "-l", "app=vault", "-o", "jsonpath={.items[*].metadata.name}"))
	if len(pods) != 2 {
		s.Fatalf("%d vault pods, want 2: %v", len(pods), pods)
	}
	for _, p := range pods {
		var logs string
		s.eventually("kubectl logs "+p, time.Minute, func() error {
			logs = s.kubectl("-n", sealedNS, "logs", p)
			if !strings.Contains(logs, "kernel=") {
				return fmt.Errorf("log %q", logs)
			}
			return nil
		})
		if !strings.Contains(logs, "env-sha="+sha16(secret)+"\n") || !strings.Contains(logs, "file-sha="+sha16(file)+"\n") {
			s.Errorf("pod %s did not get its sealed env and file (log %q)", p, logs)
		}
		if strings.Contains(logs, "kernel="+hostKernel()) {
			s.Errorf("pod %s runs on the host kernel", p)
		}
		out, err := c.kubectl("-n", sealedNS, "exec", p, "--", "cat", "/proc/1/environ")
		if err == nil || strings.Contains(out, secret) {
			s.Errorf("kubectl exec into sealed pod %s was not refused (%v)", p, err)
		} else {
			s.Logf("kubectl exec into %s refused: %s", p, lastLine(err.Error()))
		}
	}
	logs, _ := filepath.Glob(filepath.Join(c.dir, "*.log"))
	if hits := filesContaining(append(logs, filepath.Join(c.dir, "etcd"), c.kubeletDir, c.logsDir, c.containerd.Dir), secret, file); len(hits) > 0 {
		s.Errorf("the node's files hold a sealed secret: %v", hits)
	}
}

// (g) An unmodified pod with a secret env value in its spec, in the
// namespace raksh-nri seals: the node hands the shim only the envelope, the
// guest unseals the value.
func nriSealing(s *S, c *cluster) {
	secret := random("nri-")
	defer s.del("-n", sealedNS, "pod", "nodesealed")
	c.kubectl("create", "namespace", sealedNS) // may exist (f)
	s.apply(fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: nodesealed, namespace: %s}
spec:
  runtimeClassName: raksh
  terminationGracePeriodSeconds: 2
  containers:
  - name: app
    image: %s
    imagePullPolicy: Never
    command: ["/bin/sh", "-c", %q]
    env:
    - {name: SECRET, value: %s}
`, sealedNS, busyboxRef, hashScript, secret))
	s.waitReady("nodesealed", "-n", sealedNS)
	var logs string
	s.eventually("kubectl logs", time.Minute, func() error {
		logs = s.kubectl("-n", sealedNS, "logs", "nodesealed")
		if !strings.Contains(logs, "kernel=") {
			return fmt.Errorf("log %q", logs)
		}
		return nil
	})
	if !strings.Contains(logs, "env-sha="+sha16(secret)+"\n") {
		s.Errorf("the guest did not get SECRET from the node-sealed envelope (log %q)", logs)
	}
	// The OCI spec containerd handed the shim: the placeholder and the
	// envelope, not the value.
	bundles, _ := filepath.Glob(filepath.Join(c.containerd.Dir, "state", "io.containerd.runtime.v2.task", "k8s.io", "*", "config.json"))
	found := false
	for _, b := range bundles {
		spec, _ := os.ReadFile(b)
		if !bytes.Contains(spec, []byte(`"io.kubernetes.pod.name":"nodesealed"`)) && !bytes.Contains(spec, []byte(`"io.kubernetes.cri.sandbox-name":"nodesealed"`)) {
			continue
		}
		if !bytes.Contains(spec, []byte(`"io.kubernetes.cri.container-name":"app"`)) {
			continue
		}
		found = true
		if bytes.Contains(spec, []byte(secret)) {
			s.Errorf("the container's OCI spec %s holds SECRET in clear", b)
		}
		if !bytes.Contains(spec, []byte("SECRET=raksh-sealed")) || !bytes.Contains(spec, []byte(`"io.raksh.envelope"`)) {
			s.Errorf("the container's OCI spec %s has no placeholder or no envelope", b)
		}
	}
	if !found {
		s.Errorf("no bundle of the nodesealed container among %d", len(bundles))
	}
}

// filesContaining lists the regular files below dirs (or files) holding any
// needle.
func filesContaining(dirs []string, needles ...string) []string {
	var hits []string
	for _, d := range dirs {
		filepath.WalkDir(d, func(p string, e fs.DirEntry, err error) error {
			if err != nil || !e.Type().IsRegular() {
				return nil
			}
			if info, err := e.Info(); err != nil || info.Size() > 256<<20 {
				return nil
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return nil
			}
			for _, n := range needles {
				if bytes.Contains(b, []byte(n)) {
					hits = append(hits, p)
					break
				}
			}
			return nil
		})
	}
	return hits
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}
