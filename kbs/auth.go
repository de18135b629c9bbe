package kbs

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/raksh-project/raksh/kbs/api"
	"github.com/raksh-project/raksh/tee"
)

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
