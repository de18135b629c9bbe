package main

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

// auditTree is a node's directories under a temp dir.
type auditTree struct {
	root, state, snap, rstate, logs, proc string
}

func newAuditTree(t *testing.T) auditTree {
	d := t.TempDir()
	tr := auditTree{filepath.Join(d, "root"), filepath.Join(d, "state"), filepath.Join(d, "snap"), filepath.Join(d, "run"), filepath.Join(d, "log"), filepath.Join(d, "proc")}
	for _, p := range []string{tr.root, tr.state, tr.snap, tr.rstate, tr.logs} {
		write(t, filepath.Join(p, "sub", "clean.txt"), []byte("nothing to see, raksh-sealed"))
	}
	write(t, filepath.Join(tr.proc, "1", "cmdline"), []byte("/sbin/init\x00"))
	write(t, filepath.Join(tr.proc, "1", "environ"), []byte("HOME=/\x00"))
	write(t, filepath.Join(tr.proc, "1", "comm"), []byte("init\n"))
	write(t, filepath.Join(tr.proc, "self-not-a-pid", "cmdline"), []byte("x"))
	return tr
}

func write(t *testing.T, p string, b []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func gz(b []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(b)
	zw.Close()
	return buf.Bytes()
}

func (tr auditTree) args(extra ...string) []string {
	return append([]string{"audit", "--address", "", "--containerd-root", tr.root, "--containerd-state", tr.state,
		"--snapshotter-root", tr.snap, "--runtime-state", tr.rstate, "--log", tr.logs, "--proc", tr.proc}, extra...)
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	var ec cli.ExitCoder
	if errors.As(err, &ec) {
		return ec.ExitCode()
	}
	return -1
}

// TestAuditFindsPlantedMarkers: a marker planted in each place the audit
// searches is found there (a gzip layer decompressed, a marker straddling
// the 1 MiB chunk boundary), the value itself is never printed, and a clean
// tree reports nothing with exit status 0.
func TestAuditFindsPlantedMarkers(t *testing.T) {
	const marker = "SECRET-MARKER-5f2a9d"
	tr := newAuditTree(t)

	out, err := run(t, "", tr.args("--marker", marker, "-o", "json")...)
	if exitCode(err) != auditClean {
		t.Fatalf("clean tree: exit %d (%v)\n%s", exitCode(err), err, out)
	}
	var rep auditReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil || len(rep.Findings) != 0 || len(rep.Scanned) != 6 || len(rep.CannotSee) == 0 {
		t.Fatalf("clean report %v: %s", err, out)
	}

	plant := map[string]string{
		"containerd-root":  filepath.Join(tr.root, "io.containerd.content.v1.content", "blobs", "sha256", "layer"),
		"containerd-state": filepath.Join(tr.state, "io.containerd.runtime.v2.task", "k8s.io", "c1", "config.json"),
		"snapshotter-root": filepath.Join(tr.snap, "snapshots", "3", "fs", "app", "env"),
		"runtime-state":    filepath.Join(tr.rstate, "pod", "console.log"),
		"log":              filepath.Join(tr.logs, "pods", "ns_pod", "app", "0.log"),
	}
	for place, p := range plant {
		b := []byte("prefix " + marker + " suffix")
		if place == "containerd-root" {
			b = gz(b) // a cached plain layer: compressed
		}
		if place == "log" {
			// Straddles the scanner's chunk boundary.
			b = append(bytes.Repeat([]byte{'x'}, 1<<20-5), []byte(marker)...)
		}
		write(t, p, b)
	}
	write(t, filepath.Join(tr.proc, "4242", "environ"), []byte("A=1\x00TOKEN="+marker+"\x00"))
	write(t, filepath.Join(tr.proc, "4243", "cmdline"), []byte("app\x00--password="+marker+"\x00"))
	mf := filepath.Join(t.TempDir(), "markers")
	write(t, mf, []byte("another-marker-not-planted\n"+marker+"\n"))

	out, err = run(t, "", tr.args("--marker-file", mf, "-o", "json")...)
	if exitCode(err) != auditFindings {
		t.Fatalf("exit %d (%v), want %d", exitCode(err), err, auditFindings)
	}
	if strings.Contains(out, marker) {
		t.Fatal("the report prints the marker's value")
	}
	rep = auditReport{}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatal(err)
	}
	got := map[string]finding{}
	for _, f := range rep.Findings {
		if f.What != "marker 2" {
			t.Errorf("finding %+v names another marker", f)
		}
		got[f.Path] = f
	}
	for place, p := range plant {
		f, ok := got[p]
		if !ok || f.Place != place {
			t.Errorf("%s: marker at %s not found (%+v)", place, p, f)
		}
	}
	if !got[plant["containerd-root"]].Gunzipped {
		t.Error("the gzip layer's hit is not marked gunzipped")
	}
	if f := got[plant["log"]]; f.Offset != 1<<20-5 {
		t.Errorf("straddling marker at offset %d", f.Offset)
	}
	for _, pid := range []string{"4242/environ", "4243/cmdline"} {
		p := filepath.Join(tr.proc, pid)
		found := false
		for path, f := range got {
			found = found || (strings.HasPrefix(path, p+" (") && f.Place == "proc")
		}
		if !found {
			t.Errorf("marker in %s not found", p)
		}
	}
	if len(rep.Findings) != len(plant)+2 {
		t.Errorf("%d findings, want %d: %+v", len(rep.Findings), len(plant)+2, rep.Findings)
	}

	// Text output: FOUND lines and what the audit cannot see, no value.
	text, err := run(t, "", tr.args("--marker", marker)...)
	if exitCode(err) != auditFindings || !strings.Contains(text, "FOUND marker 1 in runtime-state") ||
		!strings.Contains(text, "cannot see:") || strings.Contains(text, marker) {
		t.Fatalf("text: exit %d\n%s", exitCode(err), text)
	}
}

// TestAuditPatterns: without markers the audit looks for well-known secret
// shapes and names the pattern, not the value.
func TestAuditPatterns(t *testing.T) {
	tr := newAuditTree(t)
	key := "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n"
	write(t, filepath.Join(tr.rstate, "leak.pem"), []byte(key))
	write(t, filepath.Join(tr.logs, "app.log"), []byte("aws AKIAABCDEFGHIJKLMNOP here"))
	out, err := run(t, "", tr.args("-o", "json")...)
	if exitCode(err) != auditFindings || strings.Contains(out, "AKIAABCDEFGHIJKLMNOP") || strings.Contains(out, "MIIEvQ") {
		t.Fatalf("exit %d: %s", exitCode(err), out)
	}
	var rep auditReport
	json.Unmarshal([]byte(out), &rep)
	whats := map[string]bool{}
	for _, f := range rep.Findings {
		whats[f.What] = true
	}
	if !whats["pattern pem-private-key"] || !whats["pattern aws-access-key-id"] || len(rep.Findings) != 2 {
		t.Fatalf("findings %+v", rep.Findings)
	}
}

// TestAuditErrors: bad input and unreadable places exit 2.
func TestAuditErrors(t *testing.T) {
	tr := newAuditTree(t)
	if _, err := run(t, "", tr.args("--marker", "abc")...); exitCode(err) != auditError || !strings.Contains(err.Error(), "at least 6") {
		t.Fatalf("short marker: %v", err)
	}
	if _, err := run(t, "", tr.args("--marker", "abcdefgh", "-o", "xml")...); exitCode(err) != auditError {
		t.Fatalf("bad format: %v", err)
	}
	out, err := run(t, "", tr.args("--marker", "abcdefgh", "--address", filepath.Join(t.TempDir(), "no.sock"))...)
	if exitCode(err) != auditError || !strings.Contains(out, "ERROR containerd") {
		t.Fatalf("no containerd: exit %d\n%s", exitCode(err), out)
	}
	// Absent places are reported as such, not as errors.
	out, err = run(t, "", tr.args("--marker", "abcdefgh", "--path", filepath.Join(tr.root, "missing"))...)
	if exitCode(err) != auditClean || !strings.Contains(out, "missing (absent)") {
		t.Fatalf("absent path: exit %d\n%s", exitCode(err), out)
	}
}
