package client

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/raksh-project/raksh/kbs/api"
)

// AdminToken returns a JWT for the KBS admin API signed by key (Ed25519,
// ECDSA P-256/P-384 or RSA), valid for ttl from now.
func AdminToken(key crypto.Signer, now time.Time, ttl time.Duration) (string, error) {
	var alg jose.SignatureAlgorithm
	switch k := key.(type) {
	case ed25519.PrivateKey:
		alg = jose.EdDSA
	case *ecdsa.PrivateKey:
		switch k.Curve {
		case elliptic.P256():
			alg = jose.ES256
		case elliptic.P384():
			alg = jose.ES384
		default:
			return "", fmt.Errorf("admin EC key curve: %w", errdefs.ErrInvalidArgument)
		}
	case *rsa.PrivateKey:
		alg = jose.PS256
	default:
		return "", fmt.Errorf("admin key type %T: %w", key, errdefs.ErrInvalidArgument)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return "", err
	}
	return jwt.Signed(signer).Claims(jwt.Claims{
		IssuedAt: jwt.NewNumericDate(now),
		Expiry:   jwt.NewNumericDate(now.Add(ttl)),
	}).Serialize()
}

// Admin calls the KBS admin endpoints.
type Admin struct {
	base *url.URL
	http *http.Client
	key  crypto.Signer
}

// NewAdmin returns an admin client of the broker at baseURL signing its
// requests with key.
func NewAdmin(baseURL string, key crypto.Signer, tlsConfig *tls.Config) (*Admin, error) {
	u, err := url.Parse(baseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("kbs URL %q must be http(s)://host[:port]: %w", baseURL, errdefs.ErrInvalidArgument)
	}
	return &Admin{base: u, key: key, http: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsConfig}}}, nil
}

func (a *Admin) do(ctx context.Context, method, p string, body []byte) ([]byte, error) {
	tok, err := AdminToken(a.key, time.Now(), 2*time.Minute)
	if err != nil {
		return nil, err
	}
	u := *a.base
	u.Path = strings.TrimSuffix(u.Path, "/") + p
	req, err := http.NewRequestWithContext(ctx, method, u.String(), bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := a.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("kbs %s: %w", p, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, readError(resp)
	}
	return io.ReadAll(io.LimitReader(resp.Body, maxResponse))
}

// SetResource creates or replaces the resource at path (repo/type/tag).
func (a *Admin) SetResource(ctx context.Context, path string, data []byte) error {
	_, err := a.do(ctx, http.MethodPost, api.ResourcePath+path, data)
	return err
}

// SetPolicy replaces the resource policy with the JSON document doc.
func (a *Admin) SetPolicy(ctx context.Context, doc []byte) error {
	body, err := json.Marshal(api.ResourcePolicy{Policy: base64.StdEncoding.EncodeToString(doc)})
	if err != nil {
		return err
	}
	_, err = a.do(ctx, http.MethodPost, api.ResourcePolicyPath, body)
	return err
}

// Policy returns the resource policy JSON document.
func (a *Admin) Policy(ctx context.Context) ([]byte, error) {
	out, err := a.do(ctx, http.MethodGet, api.ResourcePolicyPath, nil)
	if err != nil {
		return nil, err
	}
	var rp api.ResourcePolicy
	if err := json.Unmarshal(out, &rp); err != nil {
		return nil, fmt.Errorf("policy response does not parse: %w", errdefs.ErrInvalidArgument)
	}
	return base64.StdEncoding.DecodeString(rp.Policy)
}
