package kbs

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	jose "github.com/go-jose/go-jose/v4"

	"github.com/raksh-project/raksh/kbs/api"
	"github.com/raksh-project/raksh/tee"
)

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
