// Package api holds the wire types of the Trustee KBS attestation protocol
// (RCAR: Request, Challenge, Attestation, Response), shared by the raksh-kbs
// server and the KBS client.
//
// Reference: confidential-containers/trustee, kbs/docs/kbs_attestation_protocol.md.
package api

import (
	"bytes"
	"crypto/sha512"
	"encoding/json"
	"fmt"

	"github.com/containerd/errdefs"

	"github.com/raksh-project/raksh/tee"
)

// Protocol constants.
const (
	// ProtocolVersion is the KBS protocol version this implementation speaks.
	ProtocolVersion = "0.1.1"
	// SessionCookie is the cookie carrying the KBS session id.
	SessionCookie = "kbs-session-id"
	// PathPrefix prefixes every KBS endpoint.
	PathPrefix = "/kbs/v0"
	// AuthPath is the Request/Challenge endpoint.
	AuthPath = PathPrefix + "/auth"
	// AttestPath is the Attestation endpoint.
	AttestPath = PathPrefix + "/attest"
	// ResourcePath prefixes resource paths (repo/type/tag).
	ResourcePath = PathPrefix + "/resource/"
	// ResourcePolicyPath is the admin endpoint setting the resource policy.
	ResourcePolicyPath = PathPrefix + "/resource-policy"
	// ProblemTypePrefix prefixes the RFC 7807 "type" of error responses.
	ProblemTypePrefix = "https://github.com/confidential-containers/kbs/errors/"
)

// Request is the KBC's first message (POST /kbs/v0/auth).
type Request struct {
	Version string `json:"version"`
	TEE     string `json:"tee"`
	// ExtraParams is any JSON value (Trustee clients send {} or "").
	ExtraParams json.RawMessage `json:"extra-params"`
}

// Challenge is the KBS's answer to a Request.
type Challenge struct {
	Nonce string `json:"nonce"`
	// ExtraParams is any JSON value; raksh-kbs sends {}.
	ExtraParams json.RawMessage `json:"extra-params"`
}

// EmptyParams is the extra-params value raksh sends.
var EmptyParams = json.RawMessage(`{}`)

// InitData is the optional init data of an Attestation.
type InitData struct {
	Format string `json:"format"`
	Body   string `json:"body"`
}

// RuntimeData is the runtime data whose hash the evidence binds.
type RuntimeData struct {
	Nonce     string          `json:"nonce"`
	TEEPubKey json.RawMessage `json:"tee-pubkey"`
}

// Attestation is the KBC's evidence message (POST /kbs/v0/attest).
type Attestation struct {
	InitData    *InitData       `json:"init-data,omitempty"`
	RuntimeData json.RawMessage `json:"runtime-data"`
	TEEEvidence json.RawMessage `json:"tee-evidence"`
}

// AttestationToken is the KBS's answer to a successful Attestation.
type AttestationToken struct {
	Token string `json:"token"`
}

// ResourcePolicy is the body of POST /kbs/v0/resource-policy.
type ResourcePolicy struct {
	// Policy is the base64 (standard) encoded policy document.
	Policy string `json:"policy"`
}

// ErrorInformation is an RFC 7807 problem, the body of every error response.
type ErrorInformation struct {
	Type   string `json:"type"`
	Detail string `json:"detail"`
}

// Problem types (the suffix of ErrorInformation.Type).
const (
	ProblemInvalidRequest   = "InvalidRequest"
	ProblemVersion          = "ProtocolVersion"
	ProblemUnsupportedTEE   = "UnsupportedTee"
	ProblemSessionNotFound  = "SessionNotFound"
	ProblemSessionExpired   = "SessionExpired"
	ProblemNonceReplayed    = "NonceReplayed"
	ProblemNonceMismatch    = "NonceMismatch"
	ProblemAttestation      = "AttestationFailed"
	ProblemInitData         = "InitDataMismatch"
	ProblemSimNotAllowed    = "SimTeeNotAllowed"
	ProblemTokenInvalid     = "TokenVerificationFailed"
	ProblemUnauthenticated  = "Unauthenticated"
	ProblemPolicyDeny       = "PolicyDeny"
	ProblemResourceNotFound = "ResourceNotFound"
	ProblemAdminAuth        = "AdminAuthFailed"
	ProblemTooLarge         = "RequestTooLarge"
	ProblemInternal         = "InternalError"
)

// ReportData returns the report data the evidence must bind for a
// runtime-data document: SHA-384 of its canonical JSON (keys sorted, no
// insignificant whitespace), zero-padded to tee.ReportDataSize.
func ReportData(runtimeData []byte) ([tee.ReportDataSize]byte, error) {
	var out [tee.ReportDataSize]byte
	c, err := Canonical(runtimeData)
	if err != nil {
		return out, err
	}
	sum := sha512.Sum384(c)
	copy(out[:], sum[:])
	return out, nil
}

// Canonical re-encodes a JSON document with sorted object keys, no
// insignificant whitespace, no HTML escaping and numbers as written.
func Canonical(doc []byte) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("invalid JSON: %w", errdefs.ErrInvalidArgument)
	}
	if dec.More() {
		return nil, fmt.Errorf("trailing JSON: %w", errdefs.ErrInvalidArgument)
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// EncodeEvidence wraps backend evidence as the tee-evidence JSON value:
// evidence that is itself a JSON object is carried as is, anything else as a
// JSON string.
func EncodeEvidence(evidence []byte) (json.RawMessage, error) {
	if t := bytes.TrimSpace(evidence); len(t) > 0 && t[0] == '{' && json.Valid(t) {
		return json.RawMessage(t), nil
	}
	return json.Marshal(string(evidence))
}

// DecodeEvidence is the inverse of EncodeEvidence.
func DecodeEvidence(raw json.RawMessage) ([]byte, error) {
	t := bytes.TrimSpace(raw)
	if len(t) == 0 {
		return nil, fmt.Errorf("empty tee-evidence: %w", errdefs.ErrInvalidArgument)
	}
	if t[0] == '"' {
		var s string
		if err := json.Unmarshal(t, &s); err != nil {
			return nil, fmt.Errorf("tee-evidence string: %w", errdefs.ErrInvalidArgument)
		}
		return []byte(s), nil
	}
	if t[0] == '{' {
		return t, nil
	}
	return nil, fmt.Errorf("tee-evidence must be a JSON string or object: %w", errdefs.ErrInvalidArgument)
}
