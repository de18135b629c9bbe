//go:build integration

package critest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"

	"github.com/raksh-project/raksh/integration/harness"
)

// inNetNS marks the re-executed test running in its own network namespace.
const inNetNS = "RAKSH_CRITEST_NETNS"

// rakshSkip leaves tests out of the raksh run to keep it near 12-15 min
// under TCG (~13 s per test with a pod): the image service tests (the
// runtime handler plays no part in them; the runc run covers them), four of
// the five container stats listings, five of the seven seccomp variants,
// two of the three read-only mount rejections, the idmap user namespace test
// (fails on runc here too), ReadOnlyRootfs=false, dropping one capability
// (dropping all runs) and unsafe sysctls (safe ones run). Runtime info, pod
// sandbox, container lifecycle, exec, attach, logs, volumes and mounts,
// security context, networking, port-forward and multi-container tests run.
var rakshSkip = []string{
	`\[k8s\.io\] Image (Manager|Consistency|Identifier Consistency) `,
	`should support listing stats for `,
	`SeccompProfilePath (runtime should ignore|runtime should not block|runtime should support an seccomp|should support nil profile|should support seccomp unconfined)`,
	`should reject a recursive readonly mount with (PROPAGATION_HOST_TO_CONTAINER|ReadOnly: false)`,
	`UserNamespaces when Host idmap mount support is needed`,
	`should support that ReadOnlyRootfs is false`,
	`should support dropping capability$`,
	`should support unsafe sysctls$`,
}

// TestCritest runs critest with the runc handler (all tests) and the raksh
// handler (rakshSkip and the allow-list left out), writes the side-by-side
// table to _output/critest.txt and fails when a test passing on runc fails
// on raksh without an allow-list entry. RAKSH_CRITEST_ALLOWLISTED=1 runs the
// allow-listed tests on raksh too; RAKSH_CRITEST_FOCUS (a ginkgo regex)
// narrows the raksh run, e.g. to the tests one is fixing.
//
// It runs in a network namespace of its own (the CNI bridge rkcri0, the
// port mappings and the local registry never touch the host's).
func TestCritest(t *testing.T) {
	harness.RequiresRoot(t)
	if os.Getenv(inNetNS) != "1" {
		reexecInNetNS(t)
		return
	}
	if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("loopback up: %v: %s", err, out)
	}
	critest := harness.Bin(t, "critest")
	allowPath := filepath.Join(harness.Repo(), "integration", "critest", "allowlist.yaml")
	b, err := os.ReadFile(allowPath)
	if err != nil {
		t.Fatal(err)
	}
	allow, err := ParseAllowList(b)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()

	// Images: built here, served by a registry on loopback that hosts.toml
	// sends registry.k8s.io, gcr.io and k8s.gcr.io to.
	tools := map[string][]byte{}
	for _, name := range []string{"nonewprivs", "pause"} {
		bin := filepath.Join(dir, name)
		build := exec.Command("go", "build", "-o", bin, "./"+name)
		build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOPROXY=off")
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v: %s", name, err, out)
		}
		if tools[name], err = os.ReadFile(bin); err != nil {
			t.Fatal(err)
		}
	}
	imgs, err := criImages(tools["nonewprivs"], tools["pause"])
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: registry.New(registry.Logger(log.New(io.Discard, "", 0))), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	host := l.Addr().String()
	if err := push(host, imgs); err != nil {
		t.Fatal(err)
	}
	certsDir := filepath.Join(dir, "certs.d")
	if err := hostsTOML(certsDir, host); err != nil {
		t.Fatal(err)
	}

	// CNI: bridge rkcri0 on 10.199.37.0/24, no masquerade, no routes.
	// The raksh handler shares node paths (hostPath, image volumes) with
	// virtio-fs, as a node running Kubernetes workloads with hostPath
	// volumes must opt in to (docs/volumes.md).
	c := harness.StartContainerd(t, harness.Options{
		RuntimeConfig: "shared_fs = \"virtio-fs\"\n",
		CNI:           &harness.CNI{Bridge: "rkcri0", Subnet: "10.199.37.0/24", PortMap: true},
		Config: fmt.Sprintf(`
[plugins.'io.containerd.cri.v1.images'.registry]
  config_path = %q
`, certsDir)})

	out := harness.Output()
	runc := runCritest(t, critest, c.Address, "runc", "", nil, filepath.Join(out, "critest-runc"))
	skip := append([]string{}, rakshSkip...)
	if os.Getenv("RAKSH_CRITEST_ALLOWLISTED") != "1" {
		if p := ExactPattern(allow.Names()); p != "" {
			skip = append(skip, p)
		}
	}
	raksh := runCritest(t, critest, c.Address, "raksh", os.Getenv("RAKSH_CRITEST_FOCUS"), skip, filepath.Join(out, "critest-raksh"))

	cmp := Compare(runc.results, raksh.results, allow)
	var table bytes.Buffer
	header := fmt.Sprintf("critest v1.37.0 against containerd v2.4.2: runc run %s, raksh run %s (RAKSH_CRITEST_ALLOWLISTED=%s)",
		runc.took.Round(time.Second), raksh.took.Round(time.Second), os.Getenv("RAKSH_CRITEST_ALLOWLISTED"))
	cmp.WriteTable(&table, header)
	if err := os.WriteFile(filepath.Join(out, "critest.txt"), table.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("side-by-side table (%s):\n%s", filepath.Join(out, "critest.txt"), table.String())
	for _, s := range cmp.Stale {
		t.Errorf("allow-listed test passes on raksh, remove its entry from %s: %s", allowPath, s)
	}
	for _, u := range cmp.Unknown {
		t.Errorf("allow-list entry names a test critest does not have: %s", u)
	}
	for _, r := range cmp.Regressions {
		t.Errorf("passes on runc, fails on raksh (see %s-raksh.log): %s", filepath.Join(out, "critest"), r)
	}
	if p, _ := runc.results.Count(); p == 0 {
		t.Errorf("no test passed on runc: the setup is broken (see %s)", runc.log)
	}
}

type run struct {
	results Results
	took    time.Duration
	log     string
}

// runCritest runs critest with one runtime handler; its output goes to
// <base>.log and its JSON report to <base>/report.json.
func runCritest(t *testing.T, critest, addr, handler, focus string, skip []string, base string) run {
	t.Helper()
	os.RemoveAll(base)
	if err := os.MkdirAll(base, 0o755); err != nil {
		t.Fatal(err)
	}
	args := []string{"--runtime-endpoint", "unix://" + addr, "--image-endpoint", "unix://" + addr,
		"--runtime-handler", handler, "--ginkgo.json-report", filepath.Join(base, "report.json"), "--ginkgo.no-color", "--ginkgo.timeout", "40m"}
	if focus != "" {
		args = append(args, "--ginkgo.focus", focus)
	}
	for _, s := range skip {
		args = append(args, "--ginkgo.skip", s)
	}
	logPath := base + ".log"
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, critest, args...)
	cmd.Dir = base
	cmd.Stdout, cmd.Stderr = logf, logf
	start := time.Now()
	err = cmd.Run() // fails when a test fails; the report says which
	took := time.Since(start)
	t.Logf("critest %s: %s (exit: %v), log %s", handler, took.Round(time.Second), err, logPath)
	reports, _ := filepath.Glob(filepath.Join(base, "*.json"))
	if len(reports) == 0 {
		t.Fatalf("critest %s wrote no report (see %s): %v", handler, logPath, err)
	}
	all := Results{}
	for _, r := range reports {
		f, err := os.Open(r)
		if err != nil {
			t.Fatal(err)
		}
		res, err := ParseReport(f)
		f.Close()
		if err != nil {
			t.Fatalf("%s: %v", r, err)
		}
		for k, v := range res {
			all[k] = v
		}
	}
	p, f := all.Count()
	t.Logf("critest %s: %d passed, %d failed", handler, p, f)
	return run{results: all, took: took, log: logPath}
}

// reexecInNetNS runs this test again in a new network namespace.
func reexecInNetNS(t *testing.T) {
	args := []string{"--net", "--", os.Args[0], "-test.run", "^TestCritest$", "-test.v", "-test.timeout", "55m"}
	cmd := exec.Command("unshare", args...)
	cmd.Env = append(os.Environ(), inNetNS+"=1")
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("critest in its own network namespace: %v", err)
	}
}
