package version

import (
	"strings"
	"testing"
)

func TestString(t *testing.T) {
	old, oldRev := Version, Revision
	defer func() { Version, Revision = old, oldRev }()
	Version, Revision = "v1.2.3", "abc123"
	if s := String("raksh-kbs"); !strings.HasPrefix(s, "raksh-kbs v1.2.3 (revision abc123, go") {
		t.Errorf("String = %q", s)
	}
	Revision = ""
	if s := String("x"); !strings.Contains(s, "revision unknown") {
		t.Errorf("unstamped revision: %q", s)
	}
}

func TestRequested(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want bool
	}{
		{[]string{"--version"}, true},
		{[]string{"-namespace", "k8s.io", "-version"}, true},
		{[]string{"-namespace", "k8s.io", "start"}, false},
		{nil, false},
	} {
		if got := Requested(tc.args); got != tc.want {
			t.Errorf("Requested(%q) = %v", tc.args, got)
		}
	}
}
