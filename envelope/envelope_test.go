package envelope

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"sync"
	"testing"
)

const testKID = "kbs:///default/workload/key1"

var (
	keyOnce sync.Once
	keyP256 *ecdsa.PrivateKey
	keyP384 *ecdsa.PrivateKey
	keyRSA  *rsa.PrivateKey
)

func testKeys(t testing.TB) {
	keyOnce.Do(func() {
		keyP256, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		keyP384, _ = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
		keyRSA, _ = rsa.GenerateKey(rand.Reader, 2048)
	})
}

func testSpec() *Spec {
	return &Spec{
		Args:  []string{"/bin/server", "--token", "s3cr3t"},
		Env:   []string{"DB_PASSWORD=hunter2", "MODE=prod"},
		Cwd:   "/srv",
		Files: []File{{Path: "/etc/secret/tls.key", Mode: 0o400, Content: []byte("PRIVATE")}},
		Image: &ImageRef{Reference: "registry.example/app:1", Digest: "sha256:" + strings.Repeat("a", 64)},
		Exec:  &ExecPolicy{AllowLogs: true},
	}
}

var testBinding = Binding{Namespace: "default", Pod: "web-0", Container: "app"}

func seal(t testing.TB, key crypto.PublicKey) []byte {
	t.Helper()
	data, err := Seal(testSpec(), testBinding, Recipient{KeyID: testKID, Key: key})
	if err != nil {
		t.Fatalf("Seal: %v", err)
	}
	return data
}

func TestSealOpenRoundTrip(t *testing.T) {
	testKeys(t)
	for _, tc := range []struct {
		name string
		priv crypto.Signer
		alg  string
	}{
		{"P-256", keyP256, "ECDH-ES+A256KW"},
		{"P-384", keyP384, "ECDH-ES+A256KW"},
		{"RSA-2048", keyRSA, "RSA-OAEP-256"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := seal(t, tc.priv.Public())
			for _, secret := range []string{"s3cr3t", "hunter2", "PRIVATE", "registry.example"} {
				if bytes.Contains(data, []byte(secret)) {
					t.Fatalf("envelope contains plaintext %q", secret)
				}
			}
			env, err := Parse(data)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if env.KeyID() != testKID || env.Binding() != testBinding || env.Algorithm() != tc.alg {
				t.Fatalf("kid %q binding %v alg %s", env.KeyID(), env.Binding(), env.Algorithm())
			}
			want := Manifest{Args: true, Cwd: true, Env: []string{"DB_PASSWORD", "MODE"}, Files: []string{"/etc/secret/tls.key"}, Image: true, Exec: true}
			if !reflect.DeepEqual(env.Manifest(), want) {
				t.Fatalf("manifest %+v, want %+v", env.Manifest(), want)
			}
			got, err := env.Open(testBinding, tc.priv)
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			w := testSpec()
			w.Version = Version
			if !reflect.DeepEqual(got, w) {
				t.Fatalf("opened %+v, want %+v", got, w)
			}
		})
	}
}

func TestFreshKeyAndNonce(t *testing.T) {
	testKeys(t)
	seen := map[string]bool{}
	for range 20 {
		var raw rawEnvelope
		if err := json.Unmarshal(seal(t, keyP256.Public()), &raw); err != nil {
			t.Fatal(err)
		}
		for _, v := range []string{"iv:" + raw.IV, "ek:" + raw.EncryptedKey, "ct:" + raw.Ciphertext} {
			if seen[v] {
				t.Fatalf("value repeated across envelopes: %s", v[:3])
			}
			seen[v] = true
		}
	}
}

func TestWrongBinding(t *testing.T) {
	testKeys(t)
	data := seal(t, keyP256.Public())
	env, err := Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range []Binding{
		{Namespace: "default", Pod: "web-0", Container: "sidecar"},
		{Namespace: "default", Pod: "web-1", Container: "app"},
		{Namespace: "other", Pod: "web-0", Container: "app"},
	} {
		if err := env.CheckBinding(b); !errors.Is(err, ErrWrongBinding) {
			t.Errorf("CheckBinding(%v) = %v, want ErrWrongBinding", b, err)
		}
		if _, err := env.Open(b, keyP256); !errors.Is(err, ErrWrongBinding) {
			t.Errorf("Open(%v) = %v, want ErrWrongBinding", b, err)
		}
	}
	if err := env.CheckBinding(testBinding); err != nil {
		t.Fatalf("CheckBinding(own) = %v", err)
	}
}

// TestRebindAAD rewrites the visible binding to another container: the
// binding check passes, but decryption must fail (AAD is authenticated).
func TestRebindAAD(t *testing.T) {
	testKeys(t)
	var raw map[string]any
	if err := json.Unmarshal(seal(t, keyP256.Public()), &raw); err != nil {
		t.Fatal(err)
	}
	other := Binding{Namespace: "default", Pod: "web-0", Container: "sidecar"}
	c, _ := other.canonical()
	raw["aad"] = base64.RawURLEncoding.EncodeToString(c)
	moved, _ := json.Marshal(raw)
	env, err := Parse(moved)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.Open(other, keyP256); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("Open of rebound envelope = %v, want ErrDecrypt", err)
	}
}

func TestWrongKey(t *testing.T) {
	testKeys(t)
	data := seal(t, keyP256.Public())
	env, err := Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if _, err := env.Open(testBinding, other); !errors.Is(err, ErrDecrypt) {
		t.Errorf("other P-256 key: %v, want ErrDecrypt", err)
	}
	if _, err := env.Open(testBinding, keyP384); !errors.Is(err, ErrDecrypt) {
		t.Errorf("P-384 key: %v, want ErrDecrypt", err)
	}
	if _, err := env.Open(testBinding, keyRSA); !errors.Is(err, ErrDecrypt) {
		t.Errorf("RSA key: %v, want ErrDecrypt", err)
	}
	if _, err := env.Open(testBinding, []byte("0123456789abcdef0123456789abcdef")); !errors.Is(err, ErrUnsupportedAlgorithm) {
		t.Errorf("symmetric key: %v, want ErrUnsupportedAlgorithm", err)
	}
}

// TestTamper flips one bit in every decoded byte of every JWE member: the
// envelope must never open, and the error must be one of the distinct
// envelope errors.
func TestTamper(t *testing.T) {
	testKeys(t)
	data := seal(t, keyP256.Public())
	var raw map[string]string
	if err := json.Unmarshal(data, &raw); err != nil {
		t.Fatal(err)
	}
	for _, member := range []string{"protected", "encrypted_key", "aad", "iv", "ciphertext", "tag"} {
		orig, err := base64.RawURLEncoding.DecodeString(raw[member])
		if err != nil {
			t.Fatal(err)
		}
		step := 1
		if len(orig) > 64 {
			step = len(orig) / 64
		}
		for i := 0; i < len(orig); i += step {
			mod := bytes.Clone(orig)
			mod[i] ^= 0x01
			m := map[string]string{}
			for k, v := range raw {
				m[k] = v
			}
			m[member] = base64.RawURLEncoding.EncodeToString(mod)
			tampered, _ := json.Marshal(m)
			env, err := Parse(tampered)
			if err == nil {
				_, err = env.Open(testBinding, keyP256)
			}
			switch {
			case err == nil:
				t.Fatalf("%s byte %d flipped: envelope opened", member, i)
			case errors.Is(err, ErrDecrypt), errors.Is(err, ErrMalformed), errors.Is(err, ErrWrongBinding),
				errors.Is(err, ErrUnsupportedVersion), errors.Is(err, ErrUnsupportedAlgorithm):
			default:
				t.Fatalf("%s byte %d flipped: undistinguished error %v", member, i, err)
			}
		}
	}
	// Truncation of the ciphertext and tag.
	for _, member := range []string{"ciphertext", "tag", "iv"} {
		m := map[string]string{}
		for k, v := range raw {
			m[k] = v
		}
		m[member] = m[member][:len(m[member])-4]
		tampered, _ := json.Marshal(m)
		env, err := Parse(tampered)
		if err == nil {
			_, err = env.Open(testBinding, keyP256)
		}
		if !errors.Is(err, ErrDecrypt) && !errors.Is(err, ErrMalformed) {
			t.Fatalf("truncated %s: %v", member, err)
		}
	}
}

func setHeader(t *testing.T, data []byte, mutate func(h map[string]any)) []byte {
	t.Helper()
	var raw map[string]string
	if err := json.Unmarshal(data, &raw); err != nil {
		t.Fatal(err)
	}
	hb, _ := base64.RawURLEncoding.DecodeString(raw["protected"])
	var h map[string]any
	if err := json.Unmarshal(hb, &h); err != nil {
		t.Fatal(err)
	}
	mutate(h)
	hb, _ = json.Marshal(h)
	raw["protected"] = base64.RawURLEncoding.EncodeToString(hb)
	out, _ := json.Marshal(raw)
	return out
}

func TestParseStrict(t *testing.T) {
	testKeys(t)
	good := seal(t, keyP256.Public())
	var raw map[string]any
	_ = json.Unmarshal(good, &raw)
	with := func(k string, v any) []byte {
		m := map[string]any{}
		for kk, vv := range raw {
			m[kk] = vv
		}
		if v == nil {
			delete(m, k)
		} else {
			m[k] = v
		}
		out, _ := json.Marshal(m)
		return out
	}
	for _, tc := range []struct {
		name string
		data []byte
		want error
	}{
		{"empty", nil, ErrMalformed},
		{"compact", []byte("eyJhbGciOiJ.a.b.c.d"), ErrMalformed},
		{"array", []byte("[]"), ErrMalformed},
		{"trailing", append(bytes.Clone(good), []byte(" {}")...), ErrMalformed},
		{"too large", bytes.Repeat([]byte(" "), MaxSize+1), ErrTooLarge},
		{"unprotected header", with("header", map[string]string{"kid": "x"}), ErrMalformed},
		{"multi recipient", with("recipients", []any{}), ErrMalformed},
		{"no tag", with("tag", nil), ErrMalformed},
		{"no aad", with("aad", nil), ErrMalformed},
		{"non-canonical aad", with("aad", base64.RawURLEncoding.EncodeToString([]byte(`{"namespace":"default","pod":"web-0","container":"app"}`))), ErrMalformed},
		{"empty binding", with("aad", base64.RawURLEncoding.EncodeToString([]byte(`{"container":"","namespace":"default","pod":"web-0"}`))), ErrMalformed},
		{"unknown version", setHeader(t, good, func(h map[string]any) { h["raksh.v"] = "raksh.envelope/v2" }), ErrUnsupportedVersion},
		{"no version", setHeader(t, good, func(h map[string]any) { delete(h, "raksh.v") }), ErrUnsupportedVersion},
		{"alg dir", setHeader(t, good, func(h map[string]any) { h["alg"] = "dir" }), ErrUnsupportedAlgorithm},
		{"alg RSA1_5", setHeader(t, good, func(h map[string]any) { h["alg"] = "RSA1_5" }), ErrUnsupportedAlgorithm},
		{"enc CBC", setHeader(t, good, func(h map[string]any) { h["enc"] = "A128CBC-HS256" }), ErrUnsupportedAlgorithm},
		{"zip", setHeader(t, good, func(h map[string]any) { h["zip"] = "DEF" }), ErrMalformed},
		{"crit", setHeader(t, good, func(h map[string]any) { h["crit"] = []string{"x"} }), ErrMalformed},
		{"bad kid", setHeader(t, good, func(h map[string]any) { h["kid"] = "kbs:///a/../b" }), ErrMalformed},
		{"no manifest", setHeader(t, good, func(h map[string]any) { delete(h, "raksh.manifest") }), ErrMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Parse(tc.data); !errors.Is(err, tc.want) {
				t.Fatalf("Parse = %v, want %v", err, tc.want)
			}
		})
	}
}

// TestManifestMismatch: a header manifest that lies about the content is
// caught on Open (the header is authenticated, so this only happens if the
// sealer lied; it must still not pass silently).
func TestManifestMismatch(t *testing.T) {
	testKeys(t)
	data := seal(t, keyP256.Public())
	forged := setHeader(t, data, func(h map[string]any) { h["raksh.manifest"] = map[string]any{"args": true} })
	env, err := Parse(forged)
	if err != nil {
		t.Fatal(err)
	}
	// The header is authenticated: a forged manifest fails decryption.
	if _, err := env.Open(testBinding, keyP256); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("forged manifest: %v, want ErrDecrypt", err)
	}
}

func TestSealRejects(t *testing.T) {
	testKeys(t)
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	r := Recipient{KeyID: testKID, Key: keyP256.Public()}
	for _, tc := range []struct {
		name string
		spec *Spec
		b    Binding
		r    Recipient
		want error
	}{
		{"nil spec", nil, testBinding, r, ErrInvalidSpec},
		{"empty container", testSpec(), Binding{Namespace: "a", Pod: "b"}, r, nil},
		{"bad kid", testSpec(), testBinding, Recipient{KeyID: "kbs://host/a/b/c", Key: r.Key}, nil},
		{"RSA-1024", testSpec(), testBinding, Recipient{KeyID: testKID, Key: small.Public()}, ErrUnsupportedAlgorithm},
		{"P-224", testSpec(), testBinding, Recipient{KeyID: testKID, Key: p224.Public()}, ErrUnsupportedAlgorithm},
		{"private key as recipient", testSpec(), testBinding, Recipient{KeyID: testKID, Key: keyP256}, ErrUnsupportedAlgorithm},
		{"env without =", &Spec{Env: []string{"NOVALUE"}}, testBinding, r, ErrInvalidSpec},
		{"env twice", &Spec{Env: []string{"A=1", "A=2"}}, testBinding, r, ErrInvalidSpec},
		{"relative file", &Spec{Files: []File{{Path: "etc/x"}}}, testBinding, r, ErrInvalidSpec},
		{"dotdot file", &Spec{Files: []File{{Path: "/etc/../x"}}}, testBinding, r, ErrInvalidSpec},
		{"setuid file", &Spec{Files: []File{{Path: "/x", Mode: 0o4755}}}, testBinding, r, ErrInvalidSpec},
		{"relative cwd", &Spec{Cwd: "srv"}, testBinding, r, ErrInvalidSpec},
		{"other version", &Spec{Version: "raksh.envelope/v0"}, testBinding, r, ErrUnsupportedVersion},
		{"too large", &Spec{Files: []File{{Path: "/big", Content: make([]byte, MaxSize)}}}, testBinding, r, ErrTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Seal(tc.spec, tc.b, tc.r)
			if err == nil {
				t.Fatal("Seal succeeded")
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("Seal = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestErrorsDoNotLeak(t *testing.T) {
	testKeys(t)
	_, err := Seal(&Spec{Env: []string{"PASSWORD=hunter2", "PASSWORD=hunter3"}}, testBinding, Recipient{KeyID: testKID, Key: keyP256.Public()})
	if err == nil || strings.Contains(err.Error(), "hunter") {
		t.Fatalf("error leaks or is nil: %v", err)
	}
}

func TestKeyRoundTrip(t *testing.T) {
	for _, alg := range []string{KeyP256, KeyP384, KeyRSA3072} {
		t.Run(alg, func(t *testing.T) {
			k, err := GenerateKey(alg)
			if err != nil {
				t.Fatal(err)
			}
			privPEM, err := MarshalPrivateKey(k)
			if err != nil {
				t.Fatal(err)
			}
			pubPEM, err := MarshalPublicKey(k.Public())
			if err != nil {
				t.Fatal(err)
			}
			priv, err := ParsePrivateKey(privPEM)
			if err != nil {
				t.Fatal(err)
			}
			pub, err := ParsePublicKey(pubPEM)
			if err != nil {
				t.Fatal(err)
			}
			data, err := Seal(testSpec(), testBinding, Recipient{KeyID: testKID, Key: pub})
			if err != nil {
				t.Fatal(err)
			}
			env, err := Parse(data)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := env.Open(testBinding, priv); err != nil {
				t.Fatal(err)
			}
			if _, err := ParsePrivateKey(pubPEM); err == nil {
				t.Fatal("public key parsed as private")
			}
		})
	}
	if _, err := GenerateKey("ed25519"); !errors.Is(err, ErrUnsupportedAlgorithm) {
		t.Fatalf("ed25519: %v", err)
	}
	if _, err := ParsePublicKey([]byte("garbage")); err == nil {
		t.Fatal("garbage parsed")
	}
}

func TestParseKeyID(t *testing.T) {
	for kid, ok := range map[string]bool{
		"kbs:///default/workload/key1": true,
		"kbs:///a/b":                   false,
		"kbs:///a/b/c/d":               false,
		"kbs://host/a/b/c":             false,
		"kbs:///a/../c":                false,
		"kbs:///a/b/c%2f":              false,
		"https://a/b/c":                false,
	} {
		if _, err := ParseKeyID(kid); (err == nil) != ok {
			t.Errorf("ParseKeyID(%q) = %v", kid, err)
		}
	}
}

func TestBindingPattern(t *testing.T) {
	testKeys(t)
	pat := Binding{Namespace: "prod", Pod: "web-*-*", Container: "app"}
	data, err := Seal(testSpec(), pat, Recipient{KeyID: testKID, Key: keyP256.Public()})
	if err != nil {
		t.Fatal(err)
	}
	env, err := Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	for pod, ok := range map[string]bool{
		"web-5d8f7c9b4-x7k2p":       true,
		"web-admin-5d8f7c9b4-x7k2p": false,
		"web-5d8f7c9b4":             false,
		"web--x7k2p":                false,
		"web-5d8f7c9b4-x7k2p-extra": false,
		"web-ABC-x7k2p":             false,
		"api-5d8f7c9b4-x7k2p":       false,
	} {
		b := Binding{Namespace: "prod", Pod: pod, Container: "app"}
		err := env.CheckBinding(b)
		if (err == nil) != ok {
			t.Errorf("pod %q: CheckBinding = %v, want match %v", pod, err, ok)
		}
		if ok {
			if _, err := env.Open(b, keyP256); err != nil {
				t.Errorf("pod %q: Open = %v", pod, err)
			}
		}
	}
	if err := env.CheckBinding(Binding{Namespace: "dev", Pod: "web-5d8f7c9b4-x7k2p", Container: "app"}); !errors.Is(err, ErrWrongBinding) {
		t.Errorf("other namespace: %v", err)
	}
	if err := env.CheckBinding(Binding{Namespace: "prod", Pod: "web-5d8f7c9b4-x7k2p", Container: "sidecar"}); !errors.Is(err, ErrWrongBinding) {
		t.Errorf("other container: %v", err)
	}
	for _, b := range []Binding{{"*", "p", "c"}, {"n", "p", "*"}, {"n", "web-**", "c"}} {
		if err := b.Validate(); err == nil {
			t.Errorf("%v validated", b)
		}
	}
}

func TestMountPolicy(t *testing.T) {
	p := &MountPolicy{Allow: []MountRule{
		{Destination: "/etc/config", ReadOnly: true},
		{Destination: "/data/*", Kinds: []string{MountShared, MountEmptyDir}},
	}}
	for _, tc := range []struct {
		dest, kind string
		ro, want   bool
	}{
		{"/etc/config", MountCopy, true, true},
		{"/etc/config", MountCopy, false, false},
		{"/etc/config", MountShared, true, false}, // shared only when named
		{"/etc/config/x", MountCopy, true, false},
		{"/data/a", MountShared, false, true},
		{"/data/a/b", MountEmptyDir, false, true},
		{"/data", MountShared, false, false},
		{"/database", MountShared, false, false},
		{"/data/a", MountCopy, false, false},
	} {
		if got := p.Allows(tc.dest, tc.kind, tc.ro); got != tc.want {
			t.Errorf("%s %s ro=%v: %v, want %v", tc.dest, tc.kind, tc.ro, got, tc.want)
		}
	}
	for _, bad := range []MountRule{{Destination: "etc"}, {Destination: "/etc/../x"}, {Destination: "/x", Kinds: []string{"hostpath"}}, {Destination: ""}} {
		s := Spec{Version: Version, Mounts: &MountPolicy{Allow: []MountRule{bad}}}
		if err := s.Validate(); err == nil {
			t.Errorf("rule %+v accepted", bad)
		}
	}
	s := Spec{Version: Version, Mounts: &MountPolicy{Allow: []MountRule{{Destination: "/*"}}}}
	if err := s.Validate(); err != nil || !s.Manifest().Mounts {
		t.Errorf("'/*' rule: %v, manifest %+v", err, s.Manifest())
	}
}
