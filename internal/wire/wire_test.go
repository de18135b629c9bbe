package wire

import "testing"

func TestValidID(t *testing.T) {
	for _, ok := range []string{"c1", "0123abc", "pod_1-x.y"} {
		if err := ValidID(ok); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	long := make([]byte, 129)
	for i := range long {
		long[i] = 'a'
	}
	for _, bad := range []string{"", ".", "..", "a/b", "../x", "a\x00b", string(long)} {
		if err := ValidID(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestStreamNames(t *testing.T) {
	if got := StdioStream("c", "", "stdout"); got != "io/c/./stdout" {
		t.Errorf("init stdout stream %q", got)
	}
	if got := StdioStream("c", "e1", "stdin"); got != "io/c/e1/stdin" {
		t.Errorf("exec stdin stream %q", got)
	}
	// No valid exec id names the init's streams.
	for _, id := range []string{"init", ".", ""} {
		if ValidID(id) == nil && StdioStream("c", id, "stdout") == StdioStream("c", "", "stdout") {
			t.Errorf("exec %q shares the init's streams", id)
		}
	}
}
