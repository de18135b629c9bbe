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

func TestLayerSerial(t *testing.T) {
	for _, n := range []int{0, 7, 123456789} {
		s := LayerSerial(n)
		if len(s) > 20 {
			t.Errorf("serial %q is longer than virtio-blk's 20 bytes", s)
		}
		if got, err := ParseLayerSerial(s); err != nil || got != n {
			t.Errorf("ParseLayerSerial(%q) = %d, %v", s, got, err)
		}
	}
	for _, bad := range []string{"", "raksh-ro-", "raksh-ro-01", "raksh-ro--1", "raksh-ro-1a", "raksh-scratch", "raksh-ro-1/../x", "raksh-ro-1234567890"} {
		if _, err := ParseLayerSerial(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
