package kube

import (
	"os"
	"testing"

	"github.com/raksh-project/raksh/envelope"
)

// FuzzSeal: sealing arbitrary YAML never panics; when it succeeds, every
// container of every workload in the output carries an envelope that
// parses, and the document count is preserved.
func FuzzSeal(f *testing.F) {
	data, err := os.ReadFile("../testdata/fuzz-key.pem")
	if err != nil {
		f.Fatal(err)
	}
	key, err := envelope.ParsePrivateKey(data)
	if err != nil {
		f.Fatal(err)
	}
	pub, _ := envelope.PublicKey(key)
	opts := SealOptions{Recipient: envelope.Recipient{KeyID: "kbs:///default/workload/fuzz", Key: pub}}
	f.Fuzz(func(t *testing.T, in []byte) {
		out, err := Seal(in, opts)
		if err != nil {
			return
		}
		if n, m := len(SplitDocuments(in)), len(SplitDocuments(out)); n != m {
			t.Fatalf("%d documents in, %d out", n, m)
		}
		views, err := Inspect(out, key)
		if err != nil {
			t.Fatalf("sealed output does not inspect: %v", err)
		}
		for _, v := range views {
			if v.Sealed == nil || v.Sealed.Opened == nil || !*v.Sealed.Opened {
				t.Fatalf("container %s/%s not sealed: %+v", v.Name, v.Container, v.Sealed)
			}
		}
	})
}
