package kbs

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/containerd/continuity"
	"github.com/containerd/log"
	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/raksh-project/raksh/kbs/api"
)

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
