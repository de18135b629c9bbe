package envelope

import (
	"crypto"
	"testing"
)

func benchKeys(b *testing.B) map[string]crypto.Signer {
	keys := map[string]crypto.Signer{}
	for _, alg := range []string{KeyP256, KeyP384, KeyRSA3072} {
		k, err := GenerateKey(alg)
		if err != nil {
			b.Fatal(err)
		}
		keys[alg] = k
	}
	return keys
}

// BenchmarkSeal measures sealing one container's spec.
func BenchmarkSeal(b *testing.B) {
	for alg, k := range benchKeys(b) {
		b.Run(alg, func(b *testing.B) {
			r := Recipient{KeyID: testKID, Key: k.Public()}
			for b.Loop() {
				if _, err := Seal(testSpec(), testBinding, r); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkOpen measures parsing and opening one container's envelope.
func BenchmarkOpen(b *testing.B) {
	for alg, k := range benchKeys(b) {
		b.Run(alg, func(b *testing.B) {
			data, err := Seal(testSpec(), testBinding, Recipient{KeyID: testKID, Key: k.Public()})
			if err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				env, err := Parse(data)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := env.Open(testBinding, k); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
