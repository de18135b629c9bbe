package critest

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

const report = `[{"SuiteDescription": "CRI validation", "SpecReports": [
  {"ContainerHierarchyTexts": null, "LeafNodeType": "SynchronizedBeforeSuite", "LeafNodeText": "", "State": "passed"},
  {"ContainerHierarchyTexts": ["[k8s.io] Container", "runtime should support basic operations on container"], "LeafNodeType": "It",
   "LeafNodeText": "runtime should support starting container [Conformance]", "State": "passed", "LeafNodeLabels": ["Serial"]},
  {"ContainerHierarchyTexts": ["[k8s.io] Networking", "runtime should support networking"], "LeafNodeType": "It",
   "LeafNodeText": "runtime should support port mapping with only container port [Conformance]", "State": "failed"},
  {"ContainerHierarchyTexts": ["[k8s.io] Security Context", "", "NamespaceOption"], "LeafNodeType": "It",
   "LeafNodeText": "runtime should support HostIpc is true", "State": "timedout"},
  {"ContainerHierarchyTexts": ["[k8s.io] Image Manager"], "LeafNodeType": "It",
   "LeafNodeText": "public image with tag should be pulled and removed [Conformance]", "State": "skipped"},
  {"ContainerHierarchyTexts": null, "LeafNodeType": "ReportAfterSuite", "LeafNodeText": "JSON report", "State": "failed"}
]}]`

func TestParseReport(t *testing.T) {
	r, err := ParseReport(strings.NewReader(report))
	if err != nil {
		t.Fatal(err)
	}
	want := Results{
		"[k8s.io] Container runtime should support basic operations on container runtime should support starting container [Conformance]":  Passed,
		"[k8s.io] Networking runtime should support networking runtime should support port mapping with only container port [Conformance]": Failed,
		"[k8s.io] Security Context NamespaceOption runtime should support HostIpc is true":                                                 Failed,
		"[k8s.io] Image Manager public image with tag should be pulled and removed [Conformance]":                                          Skipped,
	}
	if len(r) != len(want) {
		t.Fatalf("got %d results, want %d: %v", len(r), len(want), r)
	}
	for k, v := range want {
		if r[k] != v {
			t.Errorf("%s: got %q, want %q", k, r[k], v)
		}
	}
	if p, f := r.Count(); p != 1 || f != 2 {
		t.Errorf("Count() = %d, %d; want 1, 2", p, f)
	}
	for _, bad := range []string{"", "[]", `[{"SpecReports": []}]`, "not json"} {
		if _, err := ParseReport(strings.NewReader(bad)); err == nil {
			t.Errorf("ParseReport(%q): no error", bad)
		}
	}
}

func TestParseAllowList(t *testing.T) {
	for _, tc := range []struct {
		name, in, err string
	}{
		{"ok", "- test: a b [x]\n  waits: '#10'\n  reason: no tap yet\n- test: c\n  waits: vm\n  reason: host IPC\n", ""},
		{"empty", "[]\n", ""},
		{"no reason", "- test: a\n  waits: '#11'\n", "no reason"},
		{"no test", "- waits: '#11'\n  reason: r\n", "no test name"},
		{"bad waits", "- test: a\n  waits: '#99'\n  reason: r\n", `waits "#99"`},
		{"unknown field", "- test: a\n  waits: vm\n  reason: r\n  why: x\n", "unknown field"},
		{"twice", "- test: a\n  waits: vm\n  reason: r\n- test: a\n  waits: vm\n  reason: r\n", "listed twice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseAllowList([]byte(tc.in))
			if tc.err == "" && err != nil {
				t.Fatal(err)
			}
			if tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Fatalf("got %v, want error containing %q", err, tc.err)
			}
		})
	}
}

// The allow-list in the repository must parse.
func TestRepoAllowList(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(".", "allowlist.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParseAllowList(b); err != nil {
		t.Fatal(err)
	}
}

func TestExactPattern(t *testing.T) {
	names := []string{
		"[sig-node] Security Context NamespaceOption runtime should support HostIPC is true",
		"[sig-node] Container runtime should support basic operations on container [Conformance]",
	}
	if ExactPattern(nil) != "" {
		t.Error("ExactPattern(nil) is not empty")
	}
	re := regexp.MustCompile(ExactPattern(names))
	for _, tc := range []struct {
		text  string
		match bool
	}{
		// ginkgo matches the suite description, a space and the full name.
		{SuiteDescription + " " + names[0], true},
		{SuiteDescription + " " + names[1], true},
		{names[0], false},
		{SuiteDescription + " " + strings.TrimSuffix(names[0], " is true"), false},
		{SuiteDescription + " " + names[0] + " and more", false},
		// brackets are literal, not a character class
		{SuiteDescription + " [sig-node] Container runtime should support basic operations on container C", false},
	} {
		if got := re.MatchString(tc.text); got != tc.match {
			t.Errorf("match(%q) = %v, want %v", tc.text, got, tc.match)
		}
	}
}

func TestCompare(t *testing.T) {
	runc := Results{"pass both": Passed, "regress": Passed, "allowed": Passed, "stale": Passed, "skipped": Passed, "fail both": Failed, "runc only": Passed}
	raksh := Results{"pass both": Passed, "regress": Failed, "allowed": Failed, "stale": Passed, "skipped": Skipped, "fail both": Failed, "raksh only": Passed}
	allow := AllowList{
		{Test: "allowed", Waits: WaitsNetworking, Reason: "r"},
		{Test: "stale", Waits: WaitsVolumes, Reason: "r"},
		{Test: "gone", Waits: WaitsVM, Reason: "r"},
	}
	c := Compare(runc, raksh, allow)
	if strings.Join(c.Regressions, ",") != "regress" {
		t.Errorf("regressions %v, want [regress]", c.Regressions)
	}
	if strings.Join(c.Stale, ",") != "stale" {
		t.Errorf("stale %v, want [stale]", c.Stale)
	}
	if strings.Join(c.Unknown, ",") != "gone" {
		t.Errorf("unknown %v, want [gone]", c.Unknown)
	}
	if len(c.Rows) != 8 {
		t.Errorf("%d rows, want 8", len(c.Rows))
	}
	var b bytes.Buffer
	if err := c.WriteTable(&b, "hdr"); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"hdr\n", "runc: 6 passed, 1 failed; raksh: 3 passed, 3 failed; 1 regressions; 8 tests",
		"REGRESSION", "allowed (#10)", "remove the entry", "runc only", "raksh only", "gone"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "runc only") && !strings.Contains(l, "passed  -") {
			t.Errorf("runc-only row: %q", l)
		}
	}
}
