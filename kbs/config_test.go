package kbs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/raksh-project/raksh/tee"
)

func TestConfigOpts(t *testing.T) {
	dir := t.TempDir()
	tk, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalECPrivateKey(tk)
	tokenKey := filepath.Join(dir, "token.pem")
	os.WriteFile(tokenKey, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600)
	policy := filepath.Join(dir, "policy.json")
	os.WriteFile(policy, []byte(`{"rules":[{"resources":["a/b/*"],"tee":["snp"]}]}`), 0o600)
	cfg := DefaultConfig()
	cfg.TokenKeyFile, cfg.PolicyFile = tokenKey, policy
	cfg.SessionTTL, cfg.TokenTTL = time.Minute, 2*time.Minute
	opts, err := cfg.Opts()
	if err != nil {
		t.Fatal(err)
	}
	store, _ := NewFileStore(filepath.Join(dir, "store"))
	s, err := New(store, tee.NewRegistry(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	if !s.TokenPublicKey().Equal(&tk.PublicKey) || s.sessionTTL != time.Minute || s.tokenTTL != 2*time.Minute || !s.Policy().AllowsTEE(tee.SNP) {
		t.Fatal("config not applied")
	}
	for name, mutate := range map[string]func(*Config){
		"missing admin key": func(c *Config) { c.AdminPublicKeyFiles = []string{filepath.Join(dir, "nope")} },
		"admin key not PEM": func(c *Config) { c.AdminPublicKeyFiles = []string{policy} },
		"token key not PEM": func(c *Config) { c.TokenKeyFile = policy },
		"missing token key": func(c *Config) { c.TokenKeyFile = filepath.Join(dir, "nope") },
	} {
		c := DefaultConfig()
		mutate(&c)
		if _, err := c.Opts(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// A broken policy file fails the server, it does not fall back to "allow".
	os.WriteFile(policy, []byte(`{"rules": [`), 0o600)
	if _, err := New(store, tee.NewRegistry(), WithPolicyFile(policy)); err == nil {
		t.Fatal("broken policy file accepted")
	}
	// A P-384 token key is refused (tokens are ES256).
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if _, err := New(store, tee.NewRegistry(), WithTokenKey(p384)); err == nil {
		t.Fatal("P-384 token key accepted")
	}
}

func TestFileStore(t *testing.T) {
	s, err := NewFileStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Set("a/b/c", []byte("v1")); err != nil {
		t.Fatal(err)
	}
	if err := s.Set("a/b/c", []byte("v2")); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Get("a/b/c"); err != nil || string(got) != "v2" {
		t.Fatalf("Get = %q, %v", got, err)
	}
	for _, p := range []string{"a/b", "a/b/c/d", "../b/c", "a/./c", "a/b/c d", ""} {
		if _, err := s.Get(p); err == nil {
			t.Errorf("Get(%q) accepted", p)
		}
		if err := s.Set(p, nil); err == nil {
			t.Errorf("Set(%q) accepted", p)
		}
	}
}
