package kbs

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/raksh-project/raksh/kbs/api"
	"github.com/raksh-project/raksh/tee"
	"github.com/raksh-project/raksh/tee/sim"
)

// fuzzServer returns a server for fuzzing. Each iteration opens a session:
// a clock ticking a second per reading and a short TTL let old sessions
// expire instead of filling the session table.
func fuzzServer(f *testing.F) *Server {
	var mu sync.Mutex
	now := time.Now()
	tick := func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		now = now.Add(time.Second)
		return now
	}
	opts := []Opt{WithClock(tick), WithSessionTTL(10 * time.Second)}
	key, _ := sim.GenerateKey()
	v, _ := sim.NewVerifier(&key.PublicKey)
	reg := tee.NewRegistry()
	_ = reg.RegisterVerifier(v)
	store, _ := NewFileStore(f.TempDir())
	s, err := New(store, reg, append([]Opt{WithPolicy(&Policy{Rules: []Rule{{Resources: []string{"*/*/*"}, TEE: []tee.Type{tee.Sim}}}})}, opts...)...)
	if err != nil {
		f.Fatal(err)
	}
	return s
}

// FuzzAuthRequest: any Request body gets a well-formed answer: a challenge
// or a problem, never a panic or a 5xx.
func FuzzAuthRequest(f *testing.F) {
	s := fuzzServer(f)
	f.Fuzz(func(t *testing.T, body []byte) {
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, api.AuthPath, bytes.NewReader(body)))
		switch rec.Code {
		case http.StatusOK:
			var ch api.Challenge
			if json.Unmarshal(rec.Body.Bytes(), &ch) != nil || ch.Nonce == "" {
				t.Fatalf("200 without a challenge: %s", rec.Body)
			}
		case http.StatusBadRequest, http.StatusUnauthorized, http.StatusRequestEntityTooLarge:
			var info api.ErrorInformation
			if json.Unmarshal(rec.Body.Bytes(), &info) != nil || info.Type == "" {
				t.Fatalf("%d without a problem body: %s", rec.Code, rec.Body)
			}
		default:
			t.Fatalf("status %d", rec.Code)
		}
	})
}

// FuzzAttestRequest: any Attestation body in a fresh session is refused
// with a problem (no evidence here is signed by the platform key) and never
// panics.
func FuzzAttestRequest(f *testing.F) {
	s := fuzzServer(f)
	f.Fuzz(func(t *testing.T, body []byte) {
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, api.AuthPath, bytes.NewReader([]byte(`{"version":"0.1.1","tee":"sim","extra-params":{}}`))))
		if rec.Code != http.StatusOK {
			t.Fatalf("auth: %d", rec.Code)
		}
		req := httptest.NewRequest(http.MethodPost, api.AttestPath, bytes.NewReader(body))
		for _, c := range rec.Result().Cookies() {
			req.AddCookie(c)
		}
		rec = httptest.NewRecorder()
		s.ServeHTTP(rec, req)
		if rec.Code == http.StatusOK || rec.Code >= 500 {
			t.Fatalf("attest with fuzzed body: %d %s", rec.Code, rec.Body)
		}
	})
}

// FuzzDecode covers the pieces of request decoding: runtime-data
// canonicalisation (idempotent), tee-pubkey and evidence decoding, policy
// parsing.
func FuzzDecode(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		if c, err := api.Canonical(data); err == nil {
			c2, err := api.Canonical(c)
			if err != nil || !bytes.Equal(c, c2) {
				t.Fatalf("canonical form not stable: %q -> %q", c, c2)
			}
		}
		_, _ = ParseTEEPubKey(data)
		_, _ = api.DecodeEvidence(data)
		if p, err := ParsePolicy(data); err == nil {
			if err := p.Validate(); err != nil {
				t.Fatalf("parsed policy does not validate: %v", err)
			}
			_ = p.Decide("a/b/c", &tee.Claims{TEE: tee.Sim, Insecure: true})
		}
	})
}
