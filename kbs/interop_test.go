package kbs_test

// Interop: request and response bodies published by the Trustee project
// parse and round-trip through raksh's types, server and client.
//
// Sources (quoted verbatim below):
//   - confidential-containers/trustee, kbs/docs/kbs_attestation_protocol.md
//     (sections "Request", "Challenge", "Attestation", "Response",
//     "Attestation Results Token", "Set Resource Policy", "Error information").
//   - confidential-containers/kbs-types, src/lib.rs unit tests (parse_request,
//     parse_challenge, parse_response, parse_attestation_ec,
//     parse_attestation_rsa), the Rust types Trustee's KBS and clients use.

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	jose "github.com/go-jose/go-jose/v4"

	"github.com/raksh-project/raksh/kbs"
	"github.com/raksh-project/raksh/kbs/api"
	"github.com/raksh-project/raksh/kbs/client"
)

// roundTrip decodes body into v, re-encodes it and checks the JSON value is
// unchanged.
func roundTrip(t *testing.T, body string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(body), v); err != nil {
		t.Fatalf("decode: %v", err)
	}
	out, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var a, b any
	_ = json.Unmarshal([]byte(body), &a)
	_ = json.Unmarshal(out, &b)
	if !reflect.DeepEqual(a, b) {
		t.Fatalf("round trip changed the body:\n in: %s\nout: %s", body, out)
	}
}

func TestInteropRequest(t *testing.T) {
	// kbs_attestation_protocol.md "Request" (with "$tee" instantiated).
	doc := `{"version": "0.1.1", "tee": "snp", "extra-params": {}}`
	var r api.Request
	roundTrip(t, doc, &r)
	if r.Version != "0.1.1" || r.TEE != "snp" {
		t.Fatalf("%+v", r)
	}
	// kbs-types parse_request: extra-params as an empty string.
	var r2 api.Request
	roundTrip(t, `{"version": "0.0.0", "tee": "sev", "extra-params": ""}`, &r2)
	if r2.TEE != "sev" || string(r2.ExtraParams) != `""` {
		t.Fatalf("%+v", r2)
	}
}

func TestInteropChallenge(t *testing.T) {
	// kbs-types parse_challenge.
	var c api.Challenge
	roundTrip(t, `{"nonce": "42", "extra-params": ""}`, &c)
	if c.Nonce != "42" {
		t.Fatalf("%+v", c)
	}
	// raksh-kbs's own challenge has the same shape.
	out, _ := json.Marshal(api.Challenge{Nonce: "n", ExtraParams: api.EmptyParams})
	if string(out) != `{"nonce":"n","extra-params":{}}` {
		t.Fatalf("challenge %s", out)
	}
}

func TestInteropAttestation(t *testing.T) {
	// kbs-types parse_attestation_ec and parse_attestation_rsa.
	for _, doc := range []string{
		`{"runtime-data": {"tee-pubkey": {"kty": "EC", "crv": "fakecrv", "alg": "fakealgorithm", "x": "fakex", "y": "fakey"}}, "tee-evidence": "fakeevidence"}`,
		`{"runtime-data": {"tee-pubkey": {"kty": "RSA", "alg": "fakealgorithm", "n": "fakemodulus", "e": "fakeexponent"}}, "tee-evidence": "fakeevidence"}`,
	} {
		var a api.Attestation
		roundTrip(t, doc, &a)
		var rd api.RuntimeData
		if err := json.Unmarshal(a.RuntimeData, &rd); err != nil {
			t.Fatal(err)
		}
		ev, err := api.DecodeEvidence(a.TEEEvidence)
		if err != nil || string(ev) != "fakeevidence" {
			t.Fatalf("evidence %q %v", ev, err)
		}
		// The fake key values must be refused, with a clear error.
		if _, err := kbs.ParseTEEPubKey(rd.TEEPubKey); err == nil || !strings.Contains(err.Error(), "tee-pubkey") {
			t.Fatalf("fake tee-pubkey: %v", err)
		}
	}
	// kbs_attestation_protocol.md "Attestation" with init-data; a real
	// P-256 key in the kbs-types EC shape (kty, crv, alg, x, y).
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	jwk, _ := json.Marshal(&jose.JSONWebKey{Key: &k.PublicKey, Algorithm: "ECDH-ES+A256KW"})
	doc := `{"init-data": {"format": "toml", "body": "algorithm = \"sha384\""}, "runtime-data": {"nonce": "42", "tee-pubkey": ` + string(jwk) + `}, "tee-evidence": {"report": "x"}}`
	var a api.Attestation
	roundTrip(t, doc, &a)
	if a.InitData == nil || a.InitData.Format != "toml" {
		t.Fatalf("%+v", a.InitData)
	}
	var rd api.RuntimeData
	_ = json.Unmarshal(a.RuntimeData, &rd)
	if _, err := kbs.ParseTEEPubKey(rd.TEEPubKey); err != nil {
		t.Fatalf("kbs-types shaped EC key: %v", err)
	}
	if ev, _ := api.DecodeEvidence(a.TEEEvidence); string(ev) != `{"report": "x"}` {
		t.Fatalf("object evidence %s", ev)
	}
	// Report data is independent of key order and whitespace.
	r1, _ := api.ReportData([]byte(`{"nonce":"42","tee-pubkey":{"a":1,"b":2}}`))
	r2, _ := api.ReportData([]byte(`{ "tee-pubkey": {"b":2, "a":1}, "nonce": "42" }`))
	if r1 != r2 {
		t.Fatal("report data depends on JSON formatting")
	}
}

func TestInteropResponse(t *testing.T) {
	// kbs-types parse_response: the Response shape. The placeholders
	// ("fakealg") must be refused by the client, clearly.
	doc := `{"protected": "eyJhbGciOiJmYWtlYWxnIiwiZW5jIjoiZmFrZWVuYyJ9", "encrypted_key": "ZmFrZWtleQ", "iv": "cmFuZG9tZGF0YQ", "ciphertext": "ZmFrZWVuY291dHB1dA", "tag": "ZmFrZXRhZw"}`
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if _, err := client.DecryptResponse([]byte(doc), k); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("fake algorithms: %v", err)
	}
	// raksh-kbs responses have exactly the Response members (no "aad").
	jwk := &jose.JSONWebKey{Key: &k.PublicKey}
	out, err := kbs.EncryptResponse([]byte("resource"), jwk)
	if err != nil {
		t.Fatal(err)
	}
	var members map[string]string
	if err := json.Unmarshal(out, &members); err != nil {
		t.Fatal(err)
	}
	var keys []string
	for m := range members {
		keys = append(keys, m)
	}
	for _, want := range []string{"protected", "encrypted_key", "iv", "ciphertext", "tag"} {
		if _, ok := members[want]; !ok {
			t.Fatalf("response lacks %q: %v", want, keys)
		}
	}
	if len(members) != 5 {
		t.Fatalf("response members %v", keys)
	}
	hdr, _ := base64.RawURLEncoding.DecodeString(members["protected"])
	var h map[string]any
	_ = json.Unmarshal(hdr, &h)
	if h["alg"] != "ECDH-ES+A256KW" || h["enc"] != "A256GCM" {
		t.Fatalf("protected header %s", hdr)
	}
	if plain, err := client.DecryptResponse(out, k); err != nil || string(plain) != "resource" {
		t.Fatalf("decrypt %q %v", plain, err)
	}
	// The response alg follows the tee-pubkey's alg (protocol doc:
	// "alg must be the same value as described in the Attestation's
	// tee-pubkey field"); RSA1_5 is refused.
	rk, _ := rsa.GenerateKey(rand.Reader, 2048)
	for _, alg := range []string{"RSA-OAEP", "RSA-OAEP-256", ""} {
		out, err := kbs.EncryptResponse([]byte("r"), &jose.JSONWebKey{Key: &rk.PublicKey, Algorithm: alg})
		if err != nil {
			t.Fatalf("%q: %v", alg, err)
		}
		var m map[string]string
		_ = json.Unmarshal(out, &m)
		hb, _ := base64.RawURLEncoding.DecodeString(m["protected"])
		want := alg
		if want == "" {
			want = "RSA-OAEP-256"
		}
		if !strings.Contains(string(hb), `"alg":"`+want+`"`) {
			t.Fatalf("tee-pubkey alg %q: header %s", alg, hb)
		}
		if plain, err := client.DecryptResponse(out, rk); err != nil || string(plain) != "r" {
			t.Fatalf("%q: decrypt %v", alg, err)
		}
	}
	for _, bad := range []*jose.JSONWebKey{
		{Key: &rk.PublicKey, Algorithm: "RSA1_5"},
		{Key: &k.PublicKey, Algorithm: "RSA-OAEP"},
		{Key: &k.PublicKey, Algorithm: "ECDH-ES"},
	} {
		raw, _ := json.Marshal(bad)
		if _, err := kbs.ParseTEEPubKey(raw); err == nil || !strings.Contains(err.Error(), "alg") {
			t.Fatalf("tee-pubkey alg %q accepted: %v", bad.Algorithm, err)
		}
	}
	// Trustee writes "aad" = the protected header (protocol doc: "AAD field
	// should be calculated by ASCII(BASE64URL(UTF8(JWE Protected Header)))"):
	// the client accepts that form.
	members["aad"] = members["protected"]
	withAAD, _ := json.Marshal(members)
	if plain, err := client.DecryptResponse(withAAD, k); err != nil || string(plain) != "resource" {
		t.Fatalf("Trustee aad form: %q %v", plain, err)
	}
	// Any other aad is authenticated and must not decrypt.
	members["aad"] = "b3RoZXI"
	otherAAD, _ := json.Marshal(members)
	if _, err := client.DecryptResponse(otherAAD, k); !errdefs.IsPermissionDenied(err) {
		t.Fatalf("foreign aad: %v", err)
	}
}

func TestInteropTokenErrorPolicy(t *testing.T) {
	// "Attestation Results Token" HTTP response, "Error information",
	// "Set Resource Policy" bodies.
	var tok api.AttestationToken
	roundTrip(t, `{"token": "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.e30.c2ln"}`, &tok)
	var info api.ErrorInformation
	roundTrip(t, `{"type": "https://github.com/confidential-containers/kbs/errors/PolicyDeny", "detail": "denied"}`, &info)
	if !strings.HasPrefix(info.Type, api.ProblemTypePrefix) {
		t.Fatalf("problem type %s", info.Type)
	}
	var rp api.ResourcePolicy
	roundTrip(t, `{"policy": "eyJydWxlcyI6W119"}`, &rp)
	doc, _ := base64.StdEncoding.DecodeString(rp.Policy)
	if _, err := kbs.ParsePolicy(doc); err != nil {
		t.Fatalf("policy: %v", err)
	}
	// A Trustee Rego policy is not a raksh policy: refused clearly.
	if _, err := kbs.ParsePolicy([]byte("package policy\ndefault allow = false")); !errors.Is(err, kbs.ErrInvalidPolicy) {
		t.Fatalf("rego: %v", err)
	}
}
