package kbs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/containerd/log"
	jose "github.com/go-jose/go-jose/v4"

	"github.com/raksh-project/raksh/kbs/api"
	"github.com/raksh-project/raksh/tee"
)

func (s *Server) handleAttest(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	id, sess, p := s.lookupSession(r)
	if p == nil && sess.used {
		p = fail(http.StatusUnauthorized, api.ProblemNonceReplayed, errors.New("nonce already used: request a new challenge"))
	}
	if p == nil {
		sess.used = true // single use, whatever the outcome
	}
	s.mu.Unlock()
	if p != nil {
		writeProblem(w, r, p)
		return
	}
	claims, key, p := s.attest(w, r, sess)
	if p != nil {
		writeProblem(w, r, p)
		return
	}
	token, err := s.issueToken(claims, key)
	if err != nil {
		writeProblem(w, r, fail(http.StatusInternalServerError, api.ProblemInternal, errors.New("failed to sign token")))
		return
	}
	s.mu.Lock()
	sess.attested, sess.claims, sess.teeKey = true, claims, key
	expires := sess.expires
	s.mu.Unlock()
	log.G(r.Context()).WithField("tee", claims.TEE).WithField("insecure", claims.Insecure).Info("kbs attestation succeeded")
	s.setCookie(w, r, id, expires)
	writeJSON(w, api.AttestationToken{Token: token})
}

func (s *Server) attest(w http.ResponseWriter, r *http.Request, sess *session) (*tee.Claims, *jose.JSONWebKey, *problem) {
	body, p := readBody(w, r, maxAttestationBody)
	if p != nil {
		return nil, nil, p
	}
	var att api.Attestation
	if err := json.Unmarshal(body, &att); err != nil || len(att.RuntimeData) == 0 || len(att.TEEEvidence) == 0 {
		return nil, nil, fail(http.StatusBadRequest, api.ProblemInvalidRequest, errors.New("attestation needs runtime-data and tee-evidence"))
	}
	var rd api.RuntimeData
	if err := json.Unmarshal(att.RuntimeData, &rd); err != nil {
		return nil, nil, fail(http.StatusBadRequest, api.ProblemInvalidRequest, errors.New("runtime-data is not a JSON object with nonce and tee-pubkey"))
	}
	if subtle.ConstantTimeCompare([]byte(rd.Nonce), []byte(sess.nonce)) != 1 {
		return nil, nil, fail(http.StatusUnauthorized, api.ProblemNonceMismatch, errors.New("runtime-data nonce is not this session's challenge"))
	}
	key, err := ParseTEEPubKey(rd.TEEPubKey)
	if err != nil {
		return nil, nil, fail(http.StatusBadRequest, api.ProblemInvalidRequest, err)
	}
	reportData, err := api.ReportData(att.RuntimeData)
	if err != nil {
		return nil, nil, fail(http.StatusBadRequest, api.ProblemInvalidRequest, err)
	}
	evidence, err := api.DecodeEvidence(att.TEEEvidence)
	if err != nil {
		return nil, nil, fail(http.StatusBadRequest, api.ProblemInvalidRequest, err)
	}
	v, err := s.verifiers.Verifier(sess.tee)
	if err != nil {
		return nil, nil, fail(http.StatusUnauthorized, api.ProblemUnsupportedTEE, err)
	}
	claims, err := v.Verify(r.Context(), evidence, reportData)
	if err != nil {
		return nil, nil, fail(http.StatusUnauthorized, api.ProblemAttestation, fmt.Errorf("evidence verification failed: %w", err))
	}
	if claims.TEE != sess.tee {
		return nil, nil, fail(http.StatusUnauthorized, api.ProblemAttestation, fmt.Errorf("evidence of TEE %q in a %q session", claims.TEE, sess.tee))
	}
	if att.InitData != nil {
		if err := checkInitData(att.InitData, claims.InitDataDigest); err != nil {
			return nil, nil, fail(http.StatusUnauthorized, api.ProblemInitData, err)
		}
	}
	if claims.TEE == tee.Sim && !s.Policy().AllowsTEE(tee.Sim) {
		return nil, nil, fail(http.StatusUnauthorized, api.ProblemSimNotAllowed, ErrSimNotAllowed)
	}
	return claims, key, nil
}

// checkInitData checks that the init-data body hashes to the digest bound
// at launch (SHA-256 or SHA-384, by the digest's length).
func checkInitData(d *api.InitData, digest []byte) error {
	var sum []byte
	switch len(digest) {
	case sha256.Size:
		s := sha256.Sum256([]byte(d.Body))
		sum = s[:]
	case sha512.Size384:
		s := sha512.Sum384([]byte(d.Body))
		sum = s[:]
	default:
		return errors.New("init-data sent but the evidence binds no SHA-256/384 init-data digest")
	}
	if subtle.ConstantTimeCompare(sum, digest) != 1 {
		return errors.New("init-data does not match the digest bound in the evidence")
	}
	return nil
}

// ParseTEEPubKey decodes the tee-pubkey JWK and checks it is a public EC
// P-256/P-384 or RSA (2048+) key a resource can be encrypted to.
func ParseTEEPubKey(raw json.RawMessage) (*jose.JSONWebKey, error) {
	if len(raw) == 0 {
		return nil, errors.New("runtime-data has no tee-pubkey")
	}
	var k jose.JSONWebKey
	if err := k.UnmarshalJSON(raw); err != nil {
		return nil, errors.New("tee-pubkey is not a valid JWK")
	}
	if !k.IsPublic() {
		return nil, errors.New("tee-pubkey must be a public key")
	}
	switch pk := k.Key.(type) {
	case *ecdsa.PublicKey:
		if pk.Curve != elliptic.P256() && pk.Curve != elliptic.P384() {
			return nil, errors.New("tee-pubkey EC curve must be P-256 or P-384")
		}
	case *rsa.PublicKey:
		if pk.N.BitLen() < 2048 {
			return nil, errors.New("tee-pubkey RSA key must have 2048 bits or more")
		}
	default:
		return nil, fmt.Errorf("tee-pubkey type %T not supported", k.Key)
	}
	if _, err := responseAlgorithm(&k); err != nil {
		return nil, err
	}
	return &k, nil
}

// responseAlgorithm is the JWE key management algorithm for a tee-pubkey:
// the key's "alg" when it is one raksh-kbs uses for that key type (the
// protocol says the response alg must be the tee-pubkey's), else the
// default for the type. RSA1_5 is refused (padding oracles).
func responseAlgorithm(k *jose.JSONWebKey) (jose.KeyAlgorithm, error) {
	_, isRSA := k.Key.(*rsa.PublicKey)
	switch alg := jose.KeyAlgorithm(k.Algorithm); {
	case alg == "" && isRSA:
		return jose.RSA_OAEP_256, nil
	case alg == "":
		return jose.ECDH_ES_A256KW, nil
	case isRSA && (alg == jose.RSA_OAEP || alg == jose.RSA_OAEP_256):
		return alg, nil
	case !isRSA && alg == jose.ECDH_ES_A256KW:
		return alg, nil
	default:
		return "", fmt.Errorf("tee-pubkey alg %q not supported for this key type (RSA: RSA-OAEP, RSA-OAEP-256; EC: ECDH-ES+A256KW)", k.Algorithm)
	}
}
