package kbs

import (
	"errors"
	"fmt"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/raksh-project/raksh/tee"
)

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
