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
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	jose "github.com/go-jose/go-jose/v4"

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
