// Package critest runs cri-tools' CRI validation suite (critest) against a
// private containerd once with the runc handler and once with the raksh
// handler, and compares the two runs: a test that passes on runc must pass
// on raksh unless the allow-list names it with its reason and the issue it
// waits for.
//
// This file holds the comparison logic (plain go test); the run itself is
// in critest_integration_test.go behind the "integration" build tag.
package critest

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strings"
	"text/tabwriter"

	"sigs.k8s.io/yaml"
)

// Result is a test's outcome in one run.
type Result string

// Outcomes as ginkgo's report names them (plus "-" for a test the run did
// not report at all).
const (
	Passed  Result = "passed"
	Failed  Result = "failed"
	Skipped Result = "skipped"
	Missing Result = "-"
)

// Results maps a test's full name (ginkgo's container and leaf texts joined
// by spaces, without labels) to its outcome.
type Results map[string]Result

// jsonReport is the part of ginkgo's JSON report (--ginkgo.json-report)
// read here.
type jsonReport []struct {
	SpecReports []struct {
		ContainerHierarchyTexts []string
		LeafNodeType            string
		LeafNodeText            string
		State                   string
	}
}

// ParseReport reads a ginkgo JSON report and returns the outcome of every It
// spec. Suite nodes (BeforeSuite, ReportAfterSuite, ...) are left out. Any
// state other than passed, skipped or pending (failed, panicked, timedout,
// interrupted, aborted) counts as failed. The names are the texts ginkgo
// matches --ginkgo.focus and --ginkgo.skip against (after the suite
// description); unlike the JUnit report's they carry no label suffix.
func ParseReport(r io.Reader) (Results, error) {
	var rep jsonReport
	if err := json.NewDecoder(r).Decode(&rep); err != nil {
		return nil, fmt.Errorf("parse ginkgo report: %w", err)
	}
	res := Results{}
	for _, suite := range rep {
		for _, s := range suite.SpecReports {
			if s.LeafNodeType != "It" {
				continue
			}
			var texts []string
			for _, t := range append(append([]string{}, s.ContainerHierarchyTexts...), s.LeafNodeText) {
				if t != "" {
					texts = append(texts, t)
				}
			}
			name := strings.Join(texts, " ")
			switch s.State {
			case "passed":
				res[name] = Passed
			case "skipped", "pending":
				res[name] = Skipped
			default:
				res[name] = Failed
			}
		}
	}
	if len(res) == 0 {
		return nil, errors.New("parse ginkgo report: no specs")
	}
	return res, nil
}

// Count returns how many tests passed and failed.
func (r Results) Count() (passed, failed int) {
	for _, v := range r {
		switch v {
		case Passed:
			passed++
		case Failed:
			failed++
		}
	}
	return passed, failed
}

// Waits names what an allow-listed test waits for.
const (
	WaitsNetworking = "#10"
	WaitsVolumes    = "#11"
	WaitsVM         = "vm" // an inherent difference of a VM sandbox
)

// AllowEntry is one allow-listed test: it may fail on raksh although it
// passes on runc.
type AllowEntry struct {
	// Test is the test's full name, exactly as in the report.
	Test string `json:"test"`
	// Waits is the issue the test waits for (#10, #11) or "vm" for an
	// inherent VM difference that will not go away.
	Waits string `json:"waits"`
	// Reason says why the test fails on raksh.
	Reason string `json:"reason"`
}

// AllowList is the set of allow-listed tests.
type AllowList []AllowEntry

// ParseAllowList reads the allow-list (YAML: a list of test/waits/reason).
// Every entry needs all three fields, waits must be #10, #11 or vm, and no
// test may be listed twice.
func ParseAllowList(b []byte) (AllowList, error) {
	var l AllowList
	if err := yaml.UnmarshalStrict(b, &l); err != nil {
		return nil, fmt.Errorf("parse allow-list: %w", err)
	}
	seen := map[string]bool{}
	for i, e := range l {
		switch {
		case strings.TrimSpace(e.Test) == "":
			return nil, fmt.Errorf("allow-list entry %d: no test name", i+1)
		case strings.TrimSpace(e.Reason) == "":
			return nil, fmt.Errorf("allow-list entry %d (%s): no reason", i+1, e.Test)
		case e.Waits != WaitsNetworking && e.Waits != WaitsVolumes && e.Waits != WaitsVM:
			return nil, fmt.Errorf("allow-list entry %d (%s): waits %q: want %s, %s or %s", i+1, e.Test, e.Waits, WaitsNetworking, WaitsVolumes, WaitsVM)
		case seen[e.Test]:
			return nil, fmt.Errorf("allow-list entry %d: %s listed twice", i+1, e.Test)
		}
		seen[e.Test] = true
	}
	return l, nil
}

// Lookup returns the entry for test.
func (l AllowList) Lookup(test string) (AllowEntry, bool) {
	for _, e := range l {
		if e.Test == test {
			return e, true
		}
	}
	return AllowEntry{}, false
}

// Names returns the allow-listed test names.
func (l AllowList) Names() []string {
	var n []string
	for _, e := range l {
		n = append(n, e.Test)
	}
	return n
}

// SuiteDescription is the description critest gives ginkgo.RunSpecs;
// ginkgo matches --ginkgo.focus and --ginkgo.skip against it, a space and
// the test's full name.
const SuiteDescription = "CRI validation"

// ExactPattern returns a regular expression for --ginkgo.focus or
// --ginkgo.skip matching exactly the given test names (each regex-escaped,
// the whole anchored), or "" for none.
func ExactPattern(names []string) string {
	if len(names) == 0 {
		return ""
	}
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = regexp.QuoteMeta(n)
	}
	sort.Strings(q)
	return "^" + regexp.QuoteMeta(SuiteDescription) + " (?:" + strings.Join(q, "|") + ")$"
}

// Row is one line of the side-by-side table.
type Row struct {
	Test        string
	Runc, Raksh Result
	// Note: "REGRESSION", "allowed (#10)", "fixed? (allow-listed, passes)".
	Note string
}

// Comparison is the outcome of comparing a runc and a raksh run.
type Comparison struct {
	Rows []Row
	// Regressions are tests that pass on runc and fail on raksh without an
	// allow-list entry.
	Regressions []string
	// Stale are allow-listed tests that passed on raksh: remove them.
	Stale []string
	// Unknown are allow-list entries naming a test neither run reported.
	Unknown []string
}

// Compare compares the runs. A test skipped on raksh (left out by the focus)
// is no regression; a test that passes on runc and fails on raksh is one
// unless allow-listed.
func Compare(runc, raksh Results, allow AllowList) Comparison {
	names := map[string]bool{}
	for n := range runc {
		names[n] = true
	}
	for n := range raksh {
		names[n] = true
	}
	var sorted []string
	for n := range names {
		sorted = append(sorted, n)
	}
	sort.Strings(sorted)
	var c Comparison
	for _, n := range sorted {
		r := Row{Test: n, Runc: orMissing(runc[n]), Raksh: orMissing(raksh[n])}
		e, listed := allow.Lookup(n)
		switch {
		case r.Runc == Passed && r.Raksh == Failed && !listed:
			r.Note = "REGRESSION"
			c.Regressions = append(c.Regressions, n)
		case r.Raksh == Failed && listed:
			r.Note = "allowed (" + e.Waits + ")"
		case r.Raksh == Passed && listed:
			r.Note = "allow-listed but passes: remove the entry"
			c.Stale = append(c.Stale, n)
		case r.Raksh == Skipped && listed:
			r.Note = "allow-listed (" + e.Waits + "), not run"
		}
		c.Rows = append(c.Rows, r)
	}
	for _, e := range allow {
		if !names[e.Test] {
			c.Unknown = append(c.Unknown, e.Test)
		}
	}
	return c
}

func orMissing(r Result) Result {
	if r == "" {
		return Missing
	}
	return r
}

// WriteTable writes the side-by-side table with a summary header.
func (c Comparison) WriteTable(w io.Writer, header string) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if header != "" {
		fmt.Fprintln(tw, header)
	}
	runc, raksh := Results{}, Results{}
	for _, r := range c.Rows {
		runc[r.Test], raksh[r.Test] = r.Runc, r.Raksh
	}
	rp, rf := runc.Count()
	kp, kf := raksh.Count()
	fmt.Fprintf(tw, "runc: %d passed, %d failed; raksh: %d passed, %d failed; %d regressions; %d tests\n\n", rp, rf, kp, kf, len(c.Regressions), len(c.Rows))
	fmt.Fprintln(tw, "TEST\tRUNC\tRAKSH\tNOTE")
	for _, r := range c.Rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.Test, r.Runc, r.Raksh, r.Note)
	}
	for _, u := range c.Unknown {
		fmt.Fprintf(tw, "allow-list names a test no run reported: %s\n", u)
	}
	return tw.Flush()
}
