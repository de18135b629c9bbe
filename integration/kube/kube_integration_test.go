//go:build integration

// Package kube is the Kubernetes end-to-end test: a real single-node
// cluster (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
// kubelet, kube-proxy built by hack/deps.sh kube) whose kubelet runs pods
// through the test's private containerd with the runc and raksh handlers,
// Raksh installed from contrib/kubernetes with kubectl, and scenarios driven
// with kubectl as a user would.
package kube

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/raksh-project/raksh/integration/harness"
)

// inNetNS marks the re-executed test running in its own network namespace.
const inNetNS = "RAKSH_KUBE_NETNS"

// scenario is one kubectl scenario. waits names the issue a scenario that
// cannot pass yet waits for: it still runs and fails, and the table and the
// failure say what it waits for.
type scenario struct {
	id, name string
	waits    string
	run      func(s *S, c *cluster)
}

// S is a scenario's test context: Errorf records a failure, Fatalf records
// one and ends the scenario.
type S struct {
	c    *cluster
	mu   sync.Mutex
	errs []string
	t    *testing.T
}

// Errorf records a failure.
func (s *S) Errorf(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.errs = append(s.errs, fmt.Sprintf(format, args...))
}

// Fatalf records a failure and ends the scenario.
func (s *S) Fatalf(format string, args ...any) {
	s.Errorf(format, args...)
	runtime.Goexit()
}

// Logf logs to the test.
func (s *S) Logf(format string, args ...any) { s.t.Logf(format, args...) }

type result struct {
	id, name, waits, status, detail string
	took                            time.Duration
}

// TestKube brings up the cluster, installs Raksh with kubectl apply -k
// contrib/kubernetes, runs every scenario and writes the results table to
// _output/kube-e2e.txt.
func TestKube(t *testing.T) {
	harness.RequiresRoot(t)
	if os.Getenv(inNetNS) != "1" {
		reexecInNetNS(t)
		return
	}
	start := time.Now()
	c := startCluster(t)
	install(t, c)

	var results []result
	for _, sc := range scenarios {
		t.Run(sc.id+"_"+sc.name, func(t *testing.T) {
			s := &S{c: c, t: t}
			t0 := time.Now()
			done := make(chan struct{})
			go func() {
				defer close(done)
				sc.run(s, c)
			}()
			<-done
			r := result{id: sc.id, name: sc.name, waits: sc.waits, took: time.Since(t0), status: "PASS"}
			switch {
			case len(s.errs) > 0 && sc.waits == "":
				r.status, r.detail = "FAIL", s.errs[0]
				for _, e := range s.errs {
					t.Error(e)
				}
			case len(s.errs) > 0:
				r.status, r.detail = "FAIL (waits for "+sc.waits+")", s.errs[0]
				for _, e := range s.errs {
					t.Errorf("not passing yet (waits for %s): %s", sc.waits, e)
				}
			case sc.waits != "":
				r.detail = "passes: remove its waits mark (" + sc.waits + ")"
				t.Errorf("scenario %s passes: remove its mark (waits for %s)", sc.id, sc.waits)
			}
			results = append(results, r)
		})
	}
	var table bytes.Buffer
	fmt.Fprintf(&table, "Kubernetes e2e (%s, etcd %s, containerd v2.4.2, raksh handler under %s): cluster up in %s, run %s\n\n",
		KubeVersion, EtcdVersion, c.accel, c.Up.Round(time.Second), time.Since(start).Round(time.Second))
	fmt.Fprintf(&table, "%-3s %-46s %-7s %-20s %s\n", "id", "scenario", "time", "result", "detail")
	for _, r := range results {
		d := r.detail
		if len(d) > 300 {
			d = d[:300] + "..."
		}
		fmt.Fprintf(&table, "%-3s %-46s %-7s %-20s %s\n", r.id, r.name, r.took.Round(time.Second), r.status, strings.ReplaceAll(d, "\n", " "))
	}
	out := filepath.Join(harness.Output(), "kube-e2e.txt")
	if err := os.WriteFile(out, table.Bytes(), 0o644); err != nil {
		t.Error(err)
	}
	t.Logf("scenario results (%s):\n%s", out, table.String())
}

// reexecInNetNS runs this test again in a new network namespace: the node's
// addresses, bridge, iptables rules and listening ports are its own.
func reexecInNetNS(t *testing.T) {
	args := []string{"--net", "--", os.Args[0], "-test.run", "^TestKube$", "-test.v", "-test.timeout", "40m"}
	cmd := exec.Command("unshare", args...)
	cmd.Env = append(os.Environ(), inNetNS+"=1")
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("Kubernetes e2e in its own network namespace: %v", err)
	}
}

// install applies contrib/kubernetes the admin's way (kubectl apply -k):
// the namespace, the RuntimeClass and the installer DaemonSet with its RBAC.
// The DaemonSet only runs on nodes labelled raksh.io/installer=true; the
// installer image is not built here (no image builder on CI machines), so
// the node is not labelled for it: the test's containerd already has the
// raksh handler (contrib's drop-in, as install.sh writes it, covered by
// TestNodeInstaller) and the test labels the node raksh.io/runtime=true as
// the installer would when done.
func install(t *testing.T, c *cluster) {
	out, err := c.kubectl("apply", "-k", filepath.Join(harness.Repo(), "contrib", "kubernetes"))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kubectl apply -k contrib/kubernetes:\n%s", out)
	if h, err := c.kubectl("get", "runtimeclass", "raksh", "-o", "jsonpath={.handler} {.overhead.podFixed.memory}"); err != nil || h != "raksh 576Mi" {
		t.Fatalf("RuntimeClass raksh: %q, %v", h, err)
	}
	if _, err := c.kubectl("label", "node", nodeName, "raksh.io/runtime=true", "--overwrite"); err != nil {
		t.Fatal(err)
	}
	t.Logf("installer DaemonSet raksh-deploy applied but not run: its image is not built in the test (node not labelled raksh.io/installer=true); the node's containerd has the raksh handler from contrib/containerd/conf.d")
}
