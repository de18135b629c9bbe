package envelope

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"strings"

	"github.com/containerd/errdefs"
	jose "github.com/go-jose/go-jose/v4"
)

// Key algorithms GenerateKey accepts.
const (
	KeyP256    = "ec-p256"
	KeyP384    = "ec-p384"
	KeyRSA3072 = "rsa-3072"
	KeyRSA4096 = "rsa-4096"
)

// GenerateKey generates a workload key pair of the named algorithm
// (KeyP256, KeyP384, KeyRSA3072 or KeyRSA4096).
func GenerateKey(alg string) (crypto.Signer, error) {
	switch alg {
	case KeyP256:
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case KeyP384, "":
		return ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case KeyRSA3072:
		return rsa.GenerateKey(rand.Reader, 3072)
	case KeyRSA4096:
		return rsa.GenerateKey(rand.Reader, 4096)
	default:
		return nil, fmt.Errorf("key algorithm %q (want %s, %s, %s or %s): %w", alg, KeyP256, KeyP384, KeyRSA3072, KeyRSA4096, ErrUnsupportedAlgorithm)
	}
}

// MarshalPrivateKey encodes a private key as PKCS#8 PEM.
func MarshalPrivateKey(key crypto.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("failed to encode private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// MarshalPublicKey encodes a public key as PKIX PEM.
func MarshalPublicKey(key crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(key)
	if err != nil {
		return nil, fmt.Errorf("failed to encode public key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

// ParsePrivateKey decodes a private key from PEM (PKCS#8, SEC 1 or PKCS#1)
// or from a JWK. Errors never include key material.
func ParsePrivateKey(data []byte) (crypto.PrivateKey, error) {
	if s := strings.TrimSpace(string(data)); strings.HasPrefix(s, "{") {
		var jwk jose.JSONWebKey
		if err := jwk.UnmarshalJSON([]byte(s)); err != nil || jwk.IsPublic() {
			return nil, fmt.Errorf("not a private JWK: %w", errdefs.ErrInvalidArgument)
		}
		return checkPrivate(jwk.Key)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("no PEM private key found: %w", errdefs.ErrInvalidArgument)
	}
	switch block.Type {
	case "PRIVATE KEY":
		k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("invalid PKCS#8 private key: %w", errdefs.ErrInvalidArgument)
		}
		return checkPrivate(k)
	case "EC PRIVATE KEY":
		k, err := x509.ParseECPrivateKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("invalid EC private key: %w", errdefs.ErrInvalidArgument)
		}
		return checkPrivate(k)
	case "RSA PRIVATE KEY":
		k, err := x509.ParsePKCS1PrivateKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("invalid RSA private key: %w", errdefs.ErrInvalidArgument)
		}
		return checkPrivate(k)
	default:
		return nil, fmt.Errorf("PEM block %q is not a private key: %w", block.Type, errdefs.ErrInvalidArgument)
	}
}

func checkPrivate(k any) (crypto.PrivateKey, error) {
	switch k := k.(type) {
	case *ecdsa.PrivateKey:
		if _, err := keyAlgorithm(&k.PublicKey); err != nil {
			return nil, err
		}
		return k, nil
	case *rsa.PrivateKey:
		if _, err := keyAlgorithm(&k.PublicKey); err != nil {
			return nil, err
		}
		return k, nil
	default:
		return nil, fmt.Errorf("private key type %T: %w", k, ErrUnsupportedAlgorithm)
	}
}

// ParsePublicKey decodes a public key from PEM (PKIX, or a certificate) or
// from a JWK, and checks it can be sealed to.
func ParsePublicKey(data []byte) (crypto.PublicKey, error) {
	var pub any
	if s := strings.TrimSpace(string(data)); strings.HasPrefix(s, "{") {
		var jwk jose.JSONWebKey
		if err := jwk.UnmarshalJSON([]byte(s)); err != nil {
			return nil, fmt.Errorf("invalid JWK: %w", errdefs.ErrInvalidArgument)
		}
		pub = jwk.Public().Key
	} else {
		block, _ := pem.Decode(data)
		if block == nil {
			return nil, fmt.Errorf("no PEM public key found: %w", errdefs.ErrInvalidArgument)
		}
		switch block.Type {
		case "PUBLIC KEY":
			k, err := x509.ParsePKIXPublicKey(block.Bytes)
			if err != nil {
				return nil, fmt.Errorf("invalid public key: %w", errdefs.ErrInvalidArgument)
			}
			pub = k
		case "CERTIFICATE":
			c, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				return nil, fmt.Errorf("invalid certificate: %w", errdefs.ErrInvalidArgument)
			}
			pub = c.PublicKey
		default:
			return nil, fmt.Errorf("PEM block %q is not a public key: %w", block.Type, errdefs.ErrInvalidArgument)
		}
	}
	if _, err := keyAlgorithm(pub); err != nil {
		return nil, err
	}
	return pub, nil
}

// PublicKey returns the public half of a private key.
func PublicKey(key crypto.PrivateKey) (crypto.PublicKey, error) {
	s, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("private key type %T: %w", key, ErrUnsupportedAlgorithm)
	}
	return s.Public(), nil
}
