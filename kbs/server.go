// Package kbs is raksh-kbs, a key broker speaking the Trustee KBS
// attestation protocol (RCAR, confidential-containers/trustee
// kbs/docs/kbs_attestation_protocol.md):
//
//	POST /kbs/v0/auth                           Request -> Challenge + kbs-session-id cookie
//	POST /kbs/v0/attest                         Attestation -> {"token": JWT}
//	GET  /kbs/v0/resource/<repo>/<type>/<tag>   cookie or Bearer token -> resource as JWE to the tee-pubkey
//	POST /kbs/v0/resource/<repo>/<type>/<tag>   admin: set a resource
//	POST /kbs/v0/resource-policy                admin: set the resource policy
//	GET  /kbs/v0/resource-policy                admin: read the resource policy
//
// Evidence is checked by tee.Verifiers from a tee.Registry; resources are
// released under a declarative Policy. Nonces are single-use, sessions
// expire, admin requests carry a short-lived JWT signed by an admin key.
package kbs

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/continuity"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/raksh-project/raksh/kbs/api"
	"github.com/raksh-project/raksh/tee"
)

// Defaults.
const (
	DefaultSessionTTL  = 5 * time.Minute
	DefaultTokenTTL    = 30 * time.Minute
	DefaultMaxSessions = 10000
	// MaxAdminTokenTTL is the longest validity an admin JWT may claim.
	MaxAdminTokenTTL = 10 * time.Minute
	// Issuer is the "iss" of attestation tokens.
	Issuer = "raksh-kbs"

	maxRequestBody     = 64 << 10
	maxAttestationBody = 1 << 20
	clockSkew          = 30 * time.Second
)

type session struct {
	tee      tee.Type
	nonce    string
	expires  time.Time
	used     bool
	attested bool
	claims   *tee.Claims
	teeKey   *jose.JSONWebKey
}

// Server is the KBS HTTP handler.
type Server struct {
	store       Store
	verifiers   *tee.Registry
	tokenKey    *ecdsa.PrivateKey
	tokenSigner jose.Signer
	adminKeys   []crypto.PublicKey
	policyFile  string
	sessionTTL  time.Duration
	tokenTTL    time.Duration
	maxSessions int
	now         func() time.Time
	mux         *http.ServeMux

	mu       sync.Mutex
	policy   *Policy
	sessions map[string]*session
}

var _ http.Handler = (*Server)(nil)

// Opt configures a Server.
type Opt func(*Server) error

// WithPolicy sets the initial resource policy (default: deny everything).
func WithPolicy(p *Policy) Opt {
	return func(s *Server) error {
		if err := p.Validate(); err != nil {
			return err
		}
		s.policy = p
		return nil
	}
}

// WithPolicyFile loads the policy from path if it exists, and persists
// policies set through the admin API there.
func WithPolicyFile(path string) Opt {
	return func(s *Server) error {
		s.policyFile = path
		data, err := os.ReadFile(path)
		if os.IsNotExist(err) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("failed to read policy: %w", err)
		}
		p, err := ParsePolicy(data)
		if err != nil {
			return err
		}
		s.policy = p
		return nil
	}
}

// WithAdminKey adds a public key (Ed25519, ECDSA or RSA) whose JWTs may call
// the admin endpoints. Without one the admin API is disabled.
func WithAdminKey(pub crypto.PublicKey) Opt {
	return func(s *Server) error {
		switch pub.(type) {
		case ed25519.PublicKey, *ecdsa.PublicKey, *rsa.PublicKey:
		default:
			return fmt.Errorf("admin key type %T: %w", pub, errdefs.ErrInvalidArgument)
		}
		s.adminKeys = append(s.adminKeys, pub)
		return nil
	}
}

// WithTokenKey sets the P-256 key signing attestation tokens (default: a
// fresh key per process, so tokens do not survive a restart).
func WithTokenKey(key *ecdsa.PrivateKey) Opt {
	return func(s *Server) error {
		if key == nil || key.Curve != elliptic.P256() {
			return fmt.Errorf("token key must be ECDSA P-256: %w", errdefs.ErrInvalidArgument)
		}
		s.tokenKey = key
		return nil
	}
}

// WithSessionTTL sets how long a session (and its nonce) lives.
func WithSessionTTL(d time.Duration) Opt {
	return func(s *Server) error { s.sessionTTL = d; return nil }
}

// WithTokenTTL sets the validity of attestation tokens.
func WithTokenTTL(d time.Duration) Opt {
	return func(s *Server) error { s.tokenTTL = d; return nil }
}

// WithMaxSessions bounds the number of live sessions.
func WithMaxSessions(n int) Opt {
	return func(s *Server) error { s.maxSessions = n; return nil }
}

// WithClock replaces time.Now (tests).
func WithClock(now func() time.Time) Opt {
	return func(s *Server) error { s.now = now; return nil }
}

// New returns a KBS serving resources from store to TEEs whose evidence a
// verifier in verifiers accepts.
func New(store Store, verifiers *tee.Registry, opts ...Opt) (*Server, error) {
	if store == nil || verifiers == nil {
		return nil, fmt.Errorf("store and verifiers are required: %w", errdefs.ErrInvalidArgument)
	}
	s := &Server{
		store:       store,
		verifiers:   verifiers,
		sessionTTL:  DefaultSessionTTL,
		tokenTTL:    DefaultTokenTTL,
		maxSessions: DefaultMaxSessions,
		now:         time.Now,
		policy:      &Policy{},
		sessions:    map[string]*session{},
	}
	for _, o := range opts {
		if err := o(s); err != nil {
			return nil, err
		}
	}
	if s.tokenKey == nil {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		s.tokenKey = k
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: s.tokenKey}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return nil, err
	}
	s.tokenSigner = signer
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+api.AuthPath, s.handleAuth)
	mux.HandleFunc("POST "+api.AttestPath, s.handleAttest)
	mux.HandleFunc("GET "+api.ResourcePath+"{repo}/{type}/{tag}", s.handleGetResource)
	mux.HandleFunc("POST "+api.ResourcePath+"{repo}/{type}/{tag}", s.handleSetResource)
	mux.HandleFunc("POST "+api.ResourcePolicyPath, s.handleSetPolicy)
	mux.HandleFunc("GET "+api.ResourcePolicyPath, s.handleGetPolicy)
	s.mux = mux
	return s, nil
}

// TokenPublicKey returns the key verifying attestation tokens.
func (s *Server) TokenPublicKey() *ecdsa.PublicKey { return &s.tokenKey.PublicKey }

// Policy returns the current resource policy.
func (s *Server) Policy() *Policy {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.policy
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	s.mux.ServeHTTP(w, r)
}

type problem struct {
	status int
	kind   string
	err    error
}

func (p *problem) Error() string { return p.err.Error() }

func fail(status int, kind string, err error) *problem { return &problem{status, kind, err} }

func writeProblem(w http.ResponseWriter, r *http.Request, p *problem) {
	log.G(r.Context()).WithField("path", r.URL.Path).WithField("problem", p.kind).WithError(p.err).Info("kbs request refused")
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(p.status)
	_ = json.NewEncoder(w).Encode(api.ErrorInformation{Type: api.ProblemTypePrefix + p.kind, Detail: p.err.Error()})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, *problem) {
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, fail(http.StatusRequestEntityTooLarge, api.ProblemTooLarge, fmt.Errorf("request body over %d bytes", limit))
		}
		return nil, fail(http.StatusBadRequest, api.ProblemInvalidRequest, errors.New("failed to read request body"))
	}
	return data, nil
}

// checkVersion accepts protocol versions 0.1.0 and later within major 0.
func checkVersion(v string) error {
	parts := strings.Split(v, ".")
	if len(parts) != 3 || parts[0] != "0" {
		return fmt.Errorf("protocol version %q not supported (want 0.x.y, x >= 1)", v)
	}
	minor, err1 := strconv.Atoi(parts[1])
	_, err2 := strconv.Atoi(parts[2])
	if err1 != nil || err2 != nil || minor < 1 {
		return fmt.Errorf("protocol version %q not supported (want 0.x.y, x >= 1)", v)
	}
	return nil
}

func (s *Server) handleAuth(w http.ResponseWriter, r *http.Request) {
	body, p := readBody(w, r, maxRequestBody)
	if p != nil {
		writeProblem(w, r, p)
		return
	}
	var req api.Request
	if err := json.Unmarshal(body, &req); err != nil {
		writeProblem(w, r, fail(http.StatusBadRequest, api.ProblemInvalidRequest, errors.New("request is not a KBS Request JSON object")))
		return
	}
	if err := checkVersion(req.Version); err != nil {
		writeProblem(w, r, fail(http.StatusUnauthorized, api.ProblemVersion, err))
		return
	}
	t := tee.Type(req.TEE)
	if _, err := s.verifiers.Verifier(t); err != nil {
		writeProblem(w, r, fail(http.StatusUnauthorized, api.ProblemUnsupportedTEE, fmt.Errorf("TEE %q not supported by this KBS", req.TEE)))
		return
	}
	if t == tee.Sim && !s.Policy().AllowsTEE(tee.Sim) {
		writeProblem(w, r, fail(http.StatusUnauthorized, api.ProblemSimNotAllowed, ErrSimNotAllowed))
		return
	}
	id, nonce := randomString(), randomString()
	now := s.now()
	expires := now.Add(s.sessionTTL)
	s.mu.Lock()
	for k, v := range s.sessions {
		if !now.Before(v.expires) {
			delete(s.sessions, k)
		}
	}
	if len(s.sessions) >= s.maxSessions {
		s.mu.Unlock()
		writeProblem(w, r, fail(http.StatusServiceUnavailable, api.ProblemInternal, errors.New("too many sessions")))
		return
	}
	s.sessions[id] = &session{tee: t, nonce: nonce, expires: expires}
	s.mu.Unlock()
	s.setCookie(w, r, id, expires)
	writeJSON(w, api.Challenge{Nonce: nonce, ExtraParams: api.EmptyParams})
}

func (s *Server) setCookie(w http.ResponseWriter, r *http.Request, id string, expires time.Time) {
	http.SetCookie(w, &http.Cookie{
		Name: api.SessionCookie, Value: id, Path: api.PathPrefix, Expires: expires,
		HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode,
	})
}

func randomString() string {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// lookupSession returns the live session of the request's cookie.
func (s *Server) lookupSession(r *http.Request) (string, *session, *problem) {
	c, err := r.Cookie(api.SessionCookie)
	if err != nil {
		return "", nil, fail(http.StatusUnauthorized, api.ProblemSessionNotFound, errors.New("no kbs-session-id cookie"))
	}
	sess, ok := s.sessions[c.Value]
	if !ok {
		return "", nil, fail(http.StatusUnauthorized, api.ProblemSessionNotFound, errors.New("unknown kbs session"))
	}
	if !s.now().Before(sess.expires) {
		delete(s.sessions, c.Value)
		return "", nil, fail(http.StatusUnauthorized, api.ProblemSessionExpired, errors.New("kbs session expired"))
	}
	return c.Value, sess, nil
}

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

// tokenClaims is the payload of an attestation token.
type tokenClaims struct {
	jwt.Claims
	JWK       *jose.JSONWebKey `json:"jwk"`
	TEEPubKey *jose.JSONWebKey `json:"tee-pubkey"`
	TCBStatus *tee.Claims      `json:"tcb-status"`
}

func (s *Server) issueToken(c *tee.Claims, key *jose.JSONWebKey) (string, error) {
	now := s.now()
	return jwt.Signed(s.tokenSigner).Claims(tokenClaims{
		Claims: jwt.Claims{
			Issuer:   Issuer,
			IssuedAt: jwt.NewNumericDate(now),
			Expiry:   jwt.NewNumericDate(now.Add(s.tokenTTL)),
		},
		JWK:       &jose.JSONWebKey{Key: &s.tokenKey.PublicKey, Algorithm: string(jose.ES256)},
		TEEPubKey: key,
		TCBStatus: c,
	}).Serialize()
}

func (s *Server) verifyToken(token string) (*tee.Claims, *jose.JSONWebKey, error) {
	t, err := jwt.ParseSigned(token, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		return nil, nil, errors.New("attestation token does not parse")
	}
	var c tokenClaims
	if err := t.Claims(&s.tokenKey.PublicKey, &c); err != nil {
		return nil, nil, errors.New("attestation token signature invalid")
	}
	if err := c.Claims.ValidateWithLeeway(jwt.Expected{Issuer: Issuer, Time: s.now()}, 0); err != nil {
		return nil, nil, fmt.Errorf("attestation token rejected: %v", err)
	}
	if c.TCBStatus == nil || c.TEEPubKey == nil {
		return nil, nil, errors.New("attestation token lacks tcb-status or tee-pubkey")
	}
	return c.TCBStatus, c.TEEPubKey, nil
}

func (s *Server) handleGetResource(w http.ResponseWriter, r *http.Request) {
	path, err := ParseResourcePath(r.PathValue("repo") + "/" + r.PathValue("type") + "/" + r.PathValue("tag"))
	if err != nil {
		writeProblem(w, r, fail(http.StatusBadRequest, api.ProblemInvalidRequest, err))
		return
	}
	var claims *tee.Claims
	var key *jose.JSONWebKey
	if bearer, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		claims, key, err = s.verifyToken(strings.TrimSpace(bearer))
		if err != nil {
			writeProblem(w, r, fail(http.StatusUnauthorized, api.ProblemTokenInvalid, err))
			return
		}
	} else {
		s.mu.Lock()
		_, sess, p := s.lookupSession(r)
		if p == nil && !sess.attested {
			p = fail(http.StatusUnauthorized, api.ProblemUnauthenticated, errors.New("kbs session not attested"))
		}
		if p == nil {
			claims, key = sess.claims, sess.teeKey
		}
		s.mu.Unlock()
		if p != nil {
			writeProblem(w, r, p)
			return
		}
	}
	if err := s.Policy().Decide(path, claims); err != nil {
		writeProblem(w, r, fail(http.StatusForbidden, api.ProblemPolicyDeny, err))
		return
	}
	data, err := s.store.Get(path)
	if errdefs.IsNotFound(err) {
		writeProblem(w, r, fail(http.StatusNotFound, api.ProblemResourceNotFound, fmt.Errorf("resource %s not found", path)))
		return
	}
	if err != nil {
		writeProblem(w, r, fail(http.StatusInternalServerError, api.ProblemInternal, errors.New("failed to read resource")))
		return
	}
	out, err := EncryptResponse(data, key)
	if err != nil {
		writeProblem(w, r, fail(http.StatusInternalServerError, api.ProblemInternal, errors.New("failed to encrypt resource")))
		return
	}
	log.G(r.Context()).WithField("resource", path).WithField("tee", claims.TEE).Info("kbs resource released")
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(out)
}

// EncryptResponse encrypts a resource to the TEE key as a KBS Response (JWE
// flattened JSON serialization, A256GCM): with the key's "alg" when allowed
// (RSA-OAEP, RSA-OAEP-256, ECDH-ES+A256KW), else ECDH-ES+A256KW for EC keys
// and RSA-OAEP-256 for RSA keys.
func EncryptResponse(data []byte, key *jose.JSONWebKey) ([]byte, error) {
	alg, err := responseAlgorithm(key)
	if err != nil {
		return nil, err
	}
	enc, err := jose.NewEncrypter(jose.A256GCM, jose.Recipient{Algorithm: alg, Key: key.Key}, nil)
	if err != nil {
		return nil, err
	}
	obj, err := enc.Encrypt(data)
	if err != nil {
		return nil, err
	}
	return []byte(obj.FullSerialize()), nil
}

// checkAdmin verifies the admin JWT of a request.
func (s *Server) checkAdmin(r *http.Request) *problem {
	if len(s.adminKeys) == 0 {
		return fail(http.StatusUnauthorized, api.ProblemAdminAuth, errors.New("admin API disabled: no admin key configured"))
	}
	bearer, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return fail(http.StatusUnauthorized, api.ProblemAdminAuth, errors.New("admin request without Bearer token"))
	}
	t, err := jwt.ParseSigned(strings.TrimSpace(bearer), []jose.SignatureAlgorithm{jose.EdDSA, jose.ES256, jose.ES384, jose.PS256, jose.RS256})
	if err != nil {
		return fail(http.StatusUnauthorized, api.ProblemAdminAuth, errors.New("admin token does not parse"))
	}
	for _, k := range s.adminKeys {
		var c jwt.Claims
		if err := t.Claims(k, &c); err != nil {
			continue
		}
		now := s.now()
		if err := c.ValidateWithLeeway(jwt.Expected{Time: now}, clockSkew); err != nil {
			return fail(http.StatusUnauthorized, api.ProblemAdminAuth, fmt.Errorf("admin token rejected: %v", err))
		}
		if c.Expiry == nil || c.IssuedAt == nil || c.Expiry.Time().Sub(c.IssuedAt.Time()) > MaxAdminTokenTTL {
			return fail(http.StatusUnauthorized, api.ProblemAdminAuth, fmt.Errorf("admin token needs iat and exp at most %s apart", MaxAdminTokenTTL))
		}
		return nil
	}
	return fail(http.StatusUnauthorized, api.ProblemAdminAuth, errors.New("admin token not signed by an admin key"))
}

func (s *Server) handleSetResource(w http.ResponseWriter, r *http.Request) {
	if p := s.checkAdmin(r); p != nil {
		writeProblem(w, r, p)
		return
	}
	path, err := ParseResourcePath(r.PathValue("repo") + "/" + r.PathValue("type") + "/" + r.PathValue("tag"))
	if err != nil {
		writeProblem(w, r, fail(http.StatusBadRequest, api.ProblemInvalidRequest, err))
		return
	}
	body, p := readBody(w, r, MaxResourceSize)
	if p != nil {
		writeProblem(w, r, p)
		return
	}
	if err := s.store.Set(path, body); err != nil {
		writeProblem(w, r, fail(http.StatusInternalServerError, api.ProblemInternal, errors.New("failed to store resource")))
		return
	}
	log.G(r.Context()).WithField("resource", path).Info("kbs resource set")
	w.WriteHeader(http.StatusOK)
}

func (s *Server) handleSetPolicy(w http.ResponseWriter, r *http.Request) {
	if p := s.checkAdmin(r); p != nil {
		writeProblem(w, r, p)
		return
	}
	body, p := readBody(w, r, maxRequestBody)
	if p != nil {
		writeProblem(w, r, p)
		return
	}
	var rp api.ResourcePolicy
	if err := json.Unmarshal(body, &rp); err != nil {
		writeProblem(w, r, fail(http.StatusBadRequest, api.ProblemInvalidRequest, errors.New(`body must be {"policy": "<base64>"}`)))
		return
	}
	doc, err := base64.StdEncoding.DecodeString(rp.Policy)
	if err != nil {
		writeProblem(w, r, fail(http.StatusBadRequest, api.ProblemInvalidRequest, errors.New("policy is not base64")))
		return
	}
	pol, err := ParsePolicy(doc)
	if err != nil {
		writeProblem(w, r, fail(http.StatusBadRequest, api.ProblemInvalidRequest, err))
		return
	}
	if s.policyFile != "" {
		if err := writeFileAtomic(s.policyFile, doc); err != nil {
			writeProblem(w, r, fail(http.StatusInternalServerError, api.ProblemInternal, errors.New("failed to persist policy")))
			return
		}
	}
	s.mu.Lock()
	s.policy = pol
	s.mu.Unlock()
	log.G(r.Context()).WithField("rules", len(pol.Rules)).Info("kbs resource policy set")
	w.WriteHeader(http.StatusOK)
}

func (s *Server) handleGetPolicy(w http.ResponseWriter, r *http.Request) {
	if p := s.checkAdmin(r); p != nil {
		writeProblem(w, r, p)
		return
	}
	doc, err := json.Marshal(s.Policy())
	if err != nil {
		writeProblem(w, r, fail(http.StatusInternalServerError, api.ProblemInternal, err))
		return
	}
	writeJSON(w, api.ResourcePolicy{Policy: base64.StdEncoding.EncodeToString(doc)})
}

// writeFileAtomic replaces path with data (fsynced before the rename).
func writeFileAtomic(path string, data []byte) error {
	return continuity.AtomicWriteFile(path, data, 0o600)
}
