// Package client is the guest side of the Trustee KBS protocol (RCAR): it
// runs the handshake (auth, attest) with a tee.Attester, caches the
// attestation token and fetches resources, decrypting them with the
// ephemeral TEE key bound into the evidence. It works over any dialer, so
// the agent can reach the broker through a stream the host forwards.
package client

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/raksh-project/raksh/kbs/api"
	"github.com/raksh-project/raksh/tee"
)

const (
	maxResponse = 2 << 20
	// tokenMargin is how long before expiry a cached token is renewed.
	tokenMargin = 30 * time.Second
)

// Dialer opens a connection to the broker (net.Dialer.DialContext, or a
// stream forwarded by the host).
type Dialer func(ctx context.Context, network, addr string) (net.Conn, error)

// Error is a KBS error response (RFC 7807 problem).
type Error struct {
	// Status is the HTTP status code.
	Status int
	// Type is the problem type without the Trustee prefix (api.Problem...).
	Type string
	// Detail is the broker's explanation.
	Detail string
}

// Error renders the status, problem type and detail.
func (e *Error) Error() string {
	return fmt.Sprintf("kbs: %d %s: %s", e.Status, e.Type, e.Detail)
}

// Is maps the HTTP status to errdefs sentinels.
func (e *Error) Is(target error) bool {
	switch e.Status {
	case http.StatusUnauthorized:
		return target == errdefs.ErrUnauthenticated
	case http.StatusForbidden:
		return target == errdefs.ErrPermissionDenied
	case http.StatusNotFound:
		return target == errdefs.ErrNotFound
	case http.StatusBadRequest, http.StatusRequestEntityTooLarge:
		return target == errdefs.ErrInvalidArgument
	}
	return false
}

// Client talks to one KBS. It is safe for concurrent use.
type Client struct {
	base     *url.URL
	http     *http.Client
	attester tee.Attester
	initData *api.InitData
	now      func() time.Time

	mu     sync.Mutex
	token  string
	expiry time.Time
	key    *ecdsa.PrivateKey
}

type config struct {
	dialer   Dialer
	tls      *tls.Config
	initData *api.InitData
	timeout  time.Duration
	now      func() time.Time
}

// Opt configures a Client.
type Opt func(*config) error

// WithDialer sets how connections to the broker are opened.
func WithDialer(d Dialer) Opt { return func(c *config) error { c.dialer = d; return nil } }

// WithTLSConfig sets the TLS configuration for https URLs (e.g. RootCAs
// holding the broker's CA).
func WithTLSConfig(t *tls.Config) Opt { return func(c *config) error { c.tls = t; return nil } }

// WithInitData sends init data (format "toml" or "json") with the
// evidence; the broker checks it against the digest bound at launch.
func WithInitData(format, body string) Opt {
	return func(c *config) error { c.initData = &api.InitData{Format: format, Body: body}; return nil }
}

// WithTimeout bounds each HTTP request (default 30s).
func WithTimeout(d time.Duration) Opt { return func(c *config) error { c.timeout = d; return nil } }

// WithClock replaces time.Now (tests).
func WithClock(now func() time.Time) Opt { return func(c *config) error { c.now = now; return nil } }

// New returns a client of the broker at baseURL (http:// or https://
// host:port, without the /kbs/v0 path) attesting with attester.
func New(baseURL string, attester tee.Attester, opts ...Opt) (*Client, error) {
	u, err := url.Parse(baseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("kbs URL %q must be http(s)://host[:port]: %w", baseURL, errdefs.ErrInvalidArgument)
	}
	if attester == nil {
		return nil, fmt.Errorf("attester is required: %w", errdefs.ErrInvalidArgument)
	}
	cfg := config{timeout: 30 * time.Second, now: time.Now}
	for _, o := range opts {
		if err := o(&cfg); err != nil {
			return nil, err
		}
	}
	tr := &http.Transport{TLSClientConfig: cfg.tls, DisableCompression: true, MaxIdleConnsPerHost: 2}
	if cfg.dialer != nil {
		tr.DialContext = cfg.dialer
	}
	return &Client{
		base:     u,
		http:     &http.Client{Transport: tr, Timeout: cfg.timeout},
		attester: attester,
		initData: cfg.initData,
		now:      cfg.now,
	}, nil
}

func (c *Client) url(p string) string {
	u := *c.base
	u.Path = strings.TrimSuffix(u.Path, "/") + p
	return u.String()
}

func readError(resp *http.Response) error {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	e := &Error{Status: resp.StatusCode, Type: http.StatusText(resp.StatusCode)}
	var info api.ErrorInformation
	if json.Unmarshal(body, &info) == nil && info.Type != "" {
		e.Type = strings.TrimPrefix(info.Type, api.ProblemTypePrefix)
		e.Detail = info.Detail
	}
	return e
}

func (c *Client) post(ctx context.Context, p string, body any, cookie *http.Cookie) (*http.Response, error) {
	data, err := json.Marshal(body)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url(p), bytes.NewReader(data))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	if cookie != nil {
		req.AddCookie(cookie)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("kbs %s: %w", p, err)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		return nil, readError(resp)
	}
	return resp, nil
}

// Attest runs the RCAR handshake: a new ephemeral key, auth, evidence over
// the runtime data binding the challenge nonce and the key, and caches the
// token.
func (c *Client) Attest(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.attestLocked(ctx)
}

func (c *Client) attestLocked(ctx context.Context) error {
	resp, err := c.post(ctx, api.AuthPath, api.Request{Version: api.ProtocolVersion, TEE: string(c.attester.Type()), ExtraParams: api.EmptyParams}, nil)
	if err != nil {
		return err
	}
	var ch api.Challenge
	err = json.NewDecoder(io.LimitReader(resp.Body, maxResponse)).Decode(&ch)
	resp.Body.Close()
	if err != nil || ch.Nonce == "" {
		return fmt.Errorf("kbs challenge does not parse: %w", errdefs.ErrInvalidArgument)
	}
	var cookie *http.Cookie
	for _, ck := range resp.Cookies() {
		if ck.Name == api.SessionCookie {
			cookie = &http.Cookie{Name: ck.Name, Value: ck.Value}
		}
	}
	if cookie == nil {
		return fmt.Errorf("kbs challenge without %s cookie: %w", api.SessionCookie, errdefs.ErrInvalidArgument)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	att, err := c.attestation(ctx, ch.Nonce, key)
	if err != nil {
		return err
	}
	resp, err = c.post(ctx, api.AttestPath, att, cookie)
	if err != nil {
		return err
	}
	var tok api.AttestationToken
	err = json.NewDecoder(io.LimitReader(resp.Body, maxResponse)).Decode(&tok)
	resp.Body.Close()
	if err != nil || tok.Token == "" {
		return fmt.Errorf("kbs attestation response does not parse: %w", errdefs.ErrInvalidArgument)
	}
	expiry := c.now().Add(time.Minute)
	if t, err := jwt.ParseSigned(tok.Token, []jose.SignatureAlgorithm{jose.ES256, jose.ES384, jose.RS256, jose.PS256, jose.EdDSA}); err == nil {
		var cl jwt.Claims
		if t.UnsafeClaimsWithoutVerification(&cl) == nil && cl.Expiry != nil {
			expiry = cl.Expiry.Time()
		}
	}
	c.token, c.expiry, c.key = tok.Token, expiry, key
	log.G(ctx).WithField("tee", c.attester.Type()).Debug("kbs attestation succeeded")
	return nil
}

// attestation builds the Attestation payload for a nonce and TEE key.
func (c *Client) attestation(ctx context.Context, nonce string, key *ecdsa.PrivateKey) (*api.Attestation, error) {
	pub, err := json.Marshal(&jose.JSONWebKey{Key: &key.PublicKey, Algorithm: string(jose.ECDH_ES_A256KW)})
	if err != nil {
		return nil, err
	}
	rd, err := json.Marshal(api.RuntimeData{Nonce: nonce, TEEPubKey: pub})
	if err != nil {
		return nil, err
	}
	reportData, err := api.ReportData(rd)
	if err != nil {
		return nil, err
	}
	ev, err := c.attester.Evidence(ctx, reportData)
	if err != nil {
		return nil, fmt.Errorf("failed to get evidence: %w", err)
	}
	evJSON, err := api.EncodeEvidence(ev)
	if err != nil {
		return nil, err
	}
	return &api.Attestation{InitData: c.initData, RuntimeData: rd, TEEEvidence: evJSON}, nil
}

// Token returns the cached attestation token and its expiry ("" before the
// first handshake).
func (c *Client) Token() (string, time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.token, c.expiry
}

// Resource returns the plaintext of the resource at path (repo/type/tag),
// attesting first when no valid token is cached, and once more if the
// broker no longer accepts the token.
func (c *Client) Resource(ctx context.Context, path string) ([]byte, error) {
	if strings.Count(path, "/") != 2 || strings.Contains(path, "..") {
		return nil, fmt.Errorf("resource path %q is not repo/type/tag: %w", path, errdefs.ErrInvalidArgument)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.token == "" || !c.now().Add(tokenMargin).Before(c.expiry) {
		if err := c.attestLocked(ctx); err != nil {
			return nil, err
		}
	}
	data, err := c.fetch(ctx, path)
	var kerr *Error
	if errors.As(err, &kerr) && kerr.Status == http.StatusUnauthorized {
		if err := c.attestLocked(ctx); err != nil {
			return nil, err
		}
		data, err = c.fetch(ctx, path)
	}
	return data, err
}

func (c *Client) fetch(ctx context.Context, path string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url(api.ResourcePath+path), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("kbs resource %s: %w", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, readError(resp)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse+1))
	if err != nil {
		return nil, err
	}
	if len(body) > maxResponse {
		return nil, fmt.Errorf("kbs resource %s over %d bytes: %w", path, maxResponse, errdefs.ErrInvalidArgument)
	}
	return DecryptResponse(body, c.key)
}

// DecryptResponse opens a KBS Response (JWE JSON) with the TEE private key.
//
// Trustee sets the "aad" member to the base64url protected header itself
// (kbs_attestation_protocol.md, "Response"), which RFC 7516 would read as
// extra AAD; such an "aad" member is dropped so the RFC computation (AAD =
// ASCII(protected)) matches what Trustee encrypted with.
func DecryptResponse(body []byte, key any) ([]byte, error) {
	var members map[string]json.RawMessage
	if err := json.Unmarshal(body, &members); err != nil {
		return nil, fmt.Errorf("kbs response is not a JSON object: %w", errdefs.ErrInvalidArgument)
	}
	if aad, ok := members["aad"]; ok && bytes.Equal(aad, members["protected"]) {
		delete(members, "aad")
		body, _ = json.Marshal(members)
	}
	obj, err := jose.ParseEncryptedJSON(string(body),
		[]jose.KeyAlgorithm{jose.ECDH_ES_A256KW, jose.RSA_OAEP_256, jose.RSA_OAEP},
		[]jose.ContentEncryption{jose.A256GCM})
	if err != nil {
		return nil, fmt.Errorf("kbs response is not an accepted JWE: %w", errdefs.ErrInvalidArgument)
	}
	data, err := obj.Decrypt(key)
	if err != nil {
		return nil, fmt.Errorf("kbs response does not decrypt: %w", errdefs.ErrPermissionDenied)
	}
	return data, nil
}
