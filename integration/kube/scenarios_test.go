//go:build integration

package kube

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/raksh-project/raksh/integration/harness"
)

// scenarios run in this order; each asserts what kubectl shows.
var scenarios = []scenario{
	{id: "j", name: "installer DaemonSet installs Raksh on the node", run: installerInstall},
	{id: "a", name: "plain raksh pod: logs show the guest kernel", run: plainPod},
	{id: "b", name: "ConfigMap, Secret, SA token, emptyDir volumes", run: volumes},
	{id: "c", name: "ClusterIP Service: runc pod to raksh pod", run: service},
	{id: "d", name: "exec and httpGet liveness/readiness probes", run: probes},
	{id: "e", name: "kubectl exec, exec -it, port-forward", run: execAndPortForward},
	{id: "f", name: "sealed Deployment (2 replicas), exec refused", run: sealedDeployment},
	{id: "g", name: "NRI node-side sealing of an unmodified pod", run: nriSealing},
	{id: "h", name: "ocicrypt image via raksh-snapshotter", run: encryptedImage},
	{id: "i", name: "pod deletion leaves no VM, tap, mount, state", run: deletion},
	{id: "k", name: "installer DaemonSet uninstalls (label removed)", run: installerUninstall},
}

// podTimeout bounds a raksh pod's start: a VM boot under TCG on a loaded
// 2-core machine.
const podTimeout = 5 * time.Minute

func hostKernel() string {
	b, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return strings.TrimSpace(string(b))
}

func random(prefix string) string {
	b := make([]byte, 8)
	rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// kubectl runs kubectl and ends the scenario on error.
func (s *S) kubectl(args ...string) string {
	out, err := s.c.kubectl(args...)
	if err != nil {
		s.Fatalf("%v", err)
	}
	return out
}

// del deletes objects without waiting (a scenario's pods go when it ends:
// each raksh pod holds the RuntimeClass's CPU overhead of the node).
func (s *S) del(args ...string) {
	if _, err := s.c.kubectl(append(append([]string{"delete"}, args...), "--wait=false", "--ignore-not-found")...); err != nil {
		s.Logf("clean-up: %v", err)
	}
}

func (s *S) apply(manifest string) {
	if err := s.c.apply(manifest); err != nil {
		s.Fatalf("apply: %v", err)
	}
}

// eventually polls f until it succeeds or ends the scenario after timeout.
func (s *S) eventually(what string, timeout time.Duration, f func() error) {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			s.Fatalf("%s: not within %s: %v", what, timeout, err)
		}
		time.Sleep(time.Second)
	}
}

// stuck are the container waiting reasons that do not clear up by waiting.
var stuck = map[string]bool{"ImagePullBackOff": true, "ErrImageNeverPull": true, "InvalidImageName": true,
	"CrashLoopBackOff": true, "CreateContainerConfigError": true, "CreateContainerError": true}

// waitReady waits for the pod's Ready condition; on timeout or a container
// stuck (image pull back-off, crash loop...) it ends the scenario with the
// pod's events.
func (s *S) waitReady(pod string, ns ...string) {
	args := append(append([]string{}, ns...), "get", "pod", pod, "-o",
		`jsonpath={.status.conditions[?(@.type=="Ready")].status} {.status.containerStatuses[*].state.waiting.reason}`)
	fail := func(why string) {
		desc, _ := s.c.kubectl(append(append([]string{}, ns...), "describe", "pod", pod)...)
		if i := strings.Index(desc, "Events:"); i >= 0 {
			desc = desc[i:]
		}
		s.Fatalf("pod %s not Ready: %s\n%s", pod, why, tail(desc, 4000))
	}
	deadline := time.Now().Add(podTimeout)
	for {
		out, err := s.c.kubectl(args...)
		f := strings.Fields(out)
		if err == nil && len(f) > 0 && f[0] == "True" {
			return
		}
		for _, r := range f {
			if stuck[r] {
				fail("container " + r)
			}
		}
		if time.Now().After(deadline) {
			fail(fmt.Sprintf("not within %s (%q, %v)", podTimeout, out, err))
		}
		time.Sleep(2 * time.Second)
	}
}

// pod renders a pod on runtime class rc ("" = the default, runc) running
// script in busybox; extra is YAML added to the container (indented 4).
func pod(name, rc, script, extra string) string {
	rcLine := ""
	if rc != "" {
		rcLine = "  runtimeClassName: " + rc + "\n"
	}
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %s
  labels: {app: %s}
spec:
%s  terminationGracePeriodSeconds: 2
  containers:
  - name: main
    image: %s
    imagePullPolicy: Never
    command: ["/bin/sh", "-c", %q]
%s`, name, name, rcLine, busyboxRef, script, extra)
}

// (a) A pod on the raksh RuntimeClass: its log shows the guest's kernel, the
// RuntimeClass admission set the VM's overhead.
func plainPod(s *S, c *cluster) {
	defer s.del("pod", "plain")
	s.apply(pod("plain", "raksh", "echo kernel=$(uname -r); exec sleep 3600", ""))
	s.waitReady("plain")
	var logs string
	s.eventually("kubectl logs", time.Minute, func() error {
		logs = s.kubectl("logs", "plain")
		if !strings.Contains(logs, "kernel=") {
			return fmt.Errorf("log %q", logs)
		}
		return nil
	})
	guest := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(logs), "kernel="))
	if guest == "" || guest == hostKernel() {
		s.Errorf("pod kernel %q, host kernel %q: the pod does not run in the VM", guest, hostKernel())
	}
	s.Logf("guest kernel %s, host kernel %s", guest, hostKernel())
	if o := s.kubectl("get", "pod", "plain", "-o", "jsonpath={.spec.overhead.memory} {.spec.overhead.cpu}"); o != "576Mi 250m" {
		s.Errorf("pod overhead %q, want the RuntimeClass's 576Mi 250m", o)
	}
	qemu := c.containerd.QEMUProcesses()
	if len(qemu) < 1 {
		s.Fatalf("no QEMU process for the raksh pod")
	}
	if b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(qemu[0]), "cmdline")); err == nil {
		for _, a := range []string{"tcg", "kvm"} {
			if bytes.Contains(b, []byte("accel="+a)) {
				c.accel = strings.ToUpper(a)
			}
		}
	}
}

// (b) ConfigMap, Secret, projected service-account token and emptyDir
// volumes are readable in the guest; a ConfigMap update reaches it.
func volumes(s *S, c *cluster) {
	secret := random("sec-")
	defer s.del("pod/vols", "configmap/vols-cm", "secret/vols-secret")
	s.apply(fmt.Sprintf(`apiVersion: v1
kind: ConfigMap
metadata: {name: vols-cm}
data: {greeting: hello-1}
---
apiVersion: v1
kind: Secret
metadata: {name: vols-secret}
stringData: {token: %s}
`, secret))
	s.apply(pod("vols", "raksh", "echo written > /scratch/f; exec sleep 3600", `    volumeMounts:
    - {name: cm, mountPath: /etc/cm}
    - {name: sec, mountPath: /etc/sec, readOnly: true}
    - {name: scratch, mountPath: /scratch}
  volumes:
  - name: cm
    configMap: {name: vols-cm}
  - name: sec
    secret: {secretName: vols-secret}
  - name: scratch
    emptyDir: {}
`))
	s.waitReady("vols")
	exec := func(cmd string) (string, error) {
		out, err := c.kubectl("exec", "vols", "--", "sh", "-c", cmd)
		return strings.TrimSpace(out), err
	}
	if k, err := exec("uname -r"); err != nil || k == hostKernel() {
		s.Errorf("uname -r in the pod: %q, %v (host %s)", k, err, hostKernel())
	}
	if v, err := exec("cat /etc/cm/greeting"); err != nil || v != "hello-1" {
		s.Errorf("ConfigMap file: %q, %v", v, err)
	}
	if v, err := exec("cat /etc/sec/token"); err != nil || v != secret {
		s.Errorf("Secret file: does not hold the Secret's value (%d bytes, %v)", len(v), err)
	}
	if v, err := exec("cat /var/run/secrets/kubernetes.io/serviceaccount/token"); err != nil || strings.Count(v, ".") != 2 || !strings.HasPrefix(v, "eyJ") {
		s.Errorf("service-account token: not a JWT (%d bytes, %v)", len(v), err)
	}
	if v, err := exec("cat /var/run/secrets/kubernetes.io/serviceaccount/namespace"); err != nil || v != "default" {
		s.Errorf("service-account namespace file: %q, %v", v, err)
	}
	if v, err := exec("cat /scratch/f && echo more >> /scratch/f && wc -l < /scratch/f"); err != nil || v != "written\n2" {
		s.Errorf("emptyDir: %q, %v", v, err)
	}
	s.kubectl("patch", "configmap", "vols-cm", "--type", "merge", "-p", `{"data":{"greeting":"hello-2"}}`)
	t0 := time.Now()
	s.eventually("ConfigMap update seen in the guest", 3*time.Minute, func() error {
		v, err := exec("cat /etc/cm/greeting")
		if err != nil || v != "hello-2" {
			return fmt.Errorf("%q, %v", v, err)
		}
		return nil
	})
	s.Logf("ConfigMap update seen in the guest after %s", time.Since(t0).Round(time.Second))
}

// webScript serves /www on port 8080 with busybox httpd; the page names the
// kernel, so a client can tell the guest served it.
const webScript = "mkdir -p /www && echo raksh-web-$(uname -r) > /www/index.html && touch /tmp/healthy && exec busybox httpd -f -p 8080 -h /www"

// (c) A ClusterIP Service in front of a raksh pod, reached from a runc pod
// through kube-proxy's rules.
func service(s *S, c *cluster) {
	defer s.del("pod/web", "pod/client", "service/web")
	s.apply(pod("web", "raksh", webScript, "    ports: [{containerPort: 8080}]\n"))
	s.apply(`apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
`)
	s.apply(pod("client", "", "exec sleep 3600", ""))
	s.waitReady("web")
	s.waitReady("client")
	ip := s.kubectl("get", "service", "web", "-o", "jsonpath={.spec.clusterIP}")
	if !strings.HasPrefix(ip, "10.199.41.") {
		s.Errorf("ClusterIP %q outside the service range %s", ip, serviceCIDR)
	}
	var body string
	s.eventually("GET http://"+ip+"/ from the runc pod", 2*time.Minute, func() error {
		out, err := c.kubectl("exec", "client", "--", "sh", "-c",
			`printf 'GET /index.html HTTP/1.0\r\n\r\n' | busybox nc -w 5 `+ip+` 80`)
		body = out
		if err != nil || !strings.Contains(out, "raksh-web-") {
			return fmt.Errorf("%q, %v", out, err)
		}
		return nil
	})
	if strings.Contains(body, "raksh-web-"+hostKernel()) {
		s.Errorf("the page was served by the host kernel: %q", body)
	}
	if k := s.kubectl("exec", "client", "--", "uname", "-r"); strings.TrimSpace(k) != hostKernel() {
		s.Errorf("the runc client pod runs kernel %q, want the host's", k)
	}
}

// (d) exec and httpGet probes make a raksh pod Ready; a failing liveness
// probe restarts its container.
func probes(s *S, c *cluster) {
	defer s.del("pod", "probed")
	s.apply(pod("probed", "raksh", webScript, `    readinessProbe:
      httpGet: {path: /index.html, port: 8080}
      periodSeconds: 2
    livenessProbe:
      exec: {command: ["cat", "/tmp/healthy"]}
      periodSeconds: 3
      failureThreshold: 1
`))
	s.waitReady("probed")
	if r := s.kubectl("get", "pod", "probed", "-o", "jsonpath={.status.containerStatuses[0].restartCount}"); r != "0" {
		s.Errorf("restarts before the liveness probe was made to fail: %s", r)
	}
	// The liveness probe fails once /tmp/healthy is gone: the kubelet
	// restarts the container, which becomes Ready again.
	s.kubectl("exec", "probed", "--", "rm", "/tmp/healthy")
	s.eventually("restart by the failing liveness probe", 2*time.Minute, func() error {
		r, err := c.kubectl("get", "pod", "probed", "-o", "jsonpath={.status.containerStatuses[0].restartCount}")
		if err != nil || r == "0" {
			return fmt.Errorf("restartCount %q, %v", r, err)
		}
		return nil
	})
	s.waitReady("probed")
}

// (e) kubectl exec (with and without a terminal) and kubectl port-forward
// into a raksh pod, through the kubelet's streaming server.
func execAndPortForward(s *S, c *cluster) {
	defer s.del("pod", "streams")
	s.apply(pod("streams", "raksh", webScript, ""))
	s.waitReady("streams")
	out := strings.TrimSpace(s.kubectl("exec", "streams", "--", "sh", "-c", "echo out-$((6*7)); uname -r"))
	lines := strings.Split(out, "\n")
	if len(lines) != 2 || lines[0] != "out-42" || lines[1] == hostKernel() {
		s.Errorf("kubectl exec: %q", out)
	}
	if _, err := c.kubectl("exec", "streams", "--", "sh", "-c", "exit 3"); err == nil || !strings.Contains(err.Error(), "exit status 3") {
		s.Errorf("kubectl exec of exit 3: %v, want exit status 3", err)
	}
	// exec -it: a terminal in the guest.
	tty, err := runInPty(c, "exec", "-it", "streams", "--", "sh", "-c", "tty; echo tty-$((6*7)); stty size")
	if err != nil || !strings.Contains(tty, "/dev/pts/") || !strings.Contains(tty, "tty-42") {
		s.Errorf("kubectl exec -it: %q, %v", tty, err)
	}
	// port-forward to the pod's port 8080.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pf := c.kubectlCmd(ctx, "port-forward", "pod/streams", "18080:8080", "--address", "127.0.0.1")
	stdout, _ := pf.StdoutPipe()
	pf.Stderr = pf.Stdout
	if err := pf.Start(); err != nil {
		s.Fatalf("port-forward: %v", err)
	}
	defer func() { pf.Process.Signal(syscall.SIGTERM); pf.Wait() }()
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "Forwarding from") {
				ready <- sc.Text()
			}
		}
		io.Copy(io.Discard, stdout)
	}()
	select {
	case <-ready:
	case <-time.After(time.Minute):
		s.Fatalf("kubectl port-forward did not start")
	}
	s.eventually("GET through kubectl port-forward", time.Minute, func() error {
		resp, err := http.Get("http://127.0.0.1:18080/index.html")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if !strings.HasPrefix(string(b), "raksh-web-") || strings.Contains(string(b), hostKernel()) {
			return fmt.Errorf("%d %q", resp.StatusCode, b)
		}
		return nil
	})
}

// runInPty runs kubectl with a pseudo-terminal as its stdio and returns what
// it wrote to the terminal.
func runInPty(c *cluster, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return harness.RunInPty(c.kubectlCmd(ctx, args...))
}

// (i) Deleting raksh pods stops their VMs and leaves no tap, mount or
// state directory of theirs.
func deletion(s *S, c *cluster) {
	s.apply(pod("doomed", "raksh", "exec sleep 3600", ""))
	s.waitReady("doomed")
	uid := s.kubectl("get", "pod", "doomed", "-o", "jsonpath={.metadata.uid}")
	sb := c.sandboxOf(uid)
	if sb.id == "" {
		s.Fatalf("no CRI sandbox for pod uid %s", uid)
	}
	qemu := c.qemuOf(sb.id)
	if len(qemu) != 1 {
		s.Errorf("%d QEMU processes for the pod's sandbox, want 1", len(qemu))
	}
	state := c.stateDirsOf(sb.id)
	if len(state) == 0 {
		s.Errorf("no raksh state directory for sandbox %s", sb.id)
	}
	if sb.netns == "" {
		s.Errorf("no network namespace for sandbox %s", sb.id)
	} else if taps := tapsIn(sb.netns); len(taps) == 0 {
		s.Errorf("no tap device in the pod's network namespace %s", sb.netns)
	}
	mounts := mountsContaining(uid, sb.id)
	if len(mounts) == 0 {
		s.Errorf("no mounts of the pod (uid %s, sandbox %s)", uid, sb.id)
	}
	s.kubectl("delete", "pod", "doomed", "--wait=true", "--timeout=3m")
	s.eventually("the pod's VM, state, mounts and network namespace gone", 2*time.Minute, func() error {
		var left []string
		for _, p := range qemu {
			if syscall.Kill(p, 0) == nil {
				left = append(left, fmt.Sprintf("qemu pid %d", p))
			}
		}
		left = append(left, c.stateDirsOf(sb.id)...)
		left = append(left, mountsContaining(uid, sb.id)...)
		if sb.netns != "" {
			if _, err := os.Stat(sb.netns); err == nil {
				left = append(left, "netns "+sb.netns)
			}
		}
		if c.sandboxOf(uid).id != "" {
			left = append(left, "CRI sandbox "+sb.id)
		}
		if len(left) > 0 {
			return fmt.Errorf("left behind: %s", strings.Join(left, ", "))
		}
		return nil
	})
	s.Logf("pod deleted: QEMU %v gone, %d state dirs, %d mounts and netns %s removed", qemu, len(state), len(mounts), sb.netns)
}

// stateDirsOf lists the raksh state directories of a sandbox.
func (c *cluster) stateDirsOf(id string) []string {
	ds, _ := filepath.Glob(filepath.Join(c.containerd.StateDir, "*", id))
	d2, _ := filepath.Glob(filepath.Join(c.containerd.StateDir, id))
	return append(ds, d2...)
}
