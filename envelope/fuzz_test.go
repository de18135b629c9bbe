package envelope

import (
	"crypto/ecdsa"
	"os"
	"testing"
)

// fuzzKey is a test-only P-256 key (testdata/fuzz-key.pem); the seed corpus
// under testdata/fuzz/FuzzParseOpen holds envelopes sealed to it.
func fuzzKey(f *testing.F) *ecdsa.PrivateKey {
	data, err := os.ReadFile("testdata/fuzz-key.pem")
	if err != nil {
		f.Fatal(err)
	}
	k, err := ParsePrivateKey(data)
	if err != nil {
		f.Fatal(err)
	}
	return k.(*ecdsa.PrivateKey)
}

// FuzzParseOpen: parsing and opening arbitrary input never panics, and
// anything that opens is a valid spec whose manifest matches the header.
func FuzzParseOpen(f *testing.F) {
	key := fuzzKey(f)
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		env, err := Parse(data)
		if err != nil {
			return
		}
		b := env.Binding()
		if err := b.Validate(); err != nil {
			t.Fatalf("parsed envelope with invalid binding: %v", err)
		}
		s, err := env.Open(b, key)
		if err != nil {
			return
		}
		if err := s.Validate(); err != nil {
			t.Fatalf("opened an invalid spec: %v", err)
		}
		if !manifestEqual(s.Manifest(), env.Manifest()) {
			t.Fatal("opened spec does not match its manifest")
		}
	})
}

// FuzzBindingMatch: a pattern never matches a name with a different
// namespace or container, and an exact binding matches itself.
func FuzzBindingMatch(f *testing.F) {
	f.Add("web-*-*", "web-5d8f7c9b4-x7k2p")
	f.Add("db-*", "db-0")
	f.Add("pod", "pod")
	f.Fuzz(func(t *testing.T, pattern, name string) {
		p := Binding{Namespace: "ns", Pod: pattern, Container: "c"}
		a := Binding{Namespace: "ns", Pod: name, Container: "c"}
		if p.Matches(Binding{Namespace: "other", Pod: name, Container: "c"}) || p.Matches(Binding{Namespace: "ns", Pod: name, Container: "d"}) {
			t.Fatal("matched across namespace or container")
		}
		if !containsStar(pattern) && p.Matches(a) != (pattern == name) {
			t.Fatalf("literal pattern %q vs %q", pattern, name)
		}
	})
}

func containsStar(s string) bool {
	for i := range len(s) {
		if s[i] == '*' {
			return true
		}
	}
	return false
}
