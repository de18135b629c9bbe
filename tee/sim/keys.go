package sim

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"

	"github.com/containerd/errdefs"
)

var randReader = rand.Reader

// MarshalPlatformKey encodes a platform key as PKCS#8 PEM (to bake into a
// guest image).
func MarshalPlatformKey(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// MarshalPlatformPublicKey encodes a platform public key as PKIX PEM (for
// the broker's trust list).
func MarshalPlatformPublicKey(pub *ecdsa.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

// ParsePlatformKey decodes a P-384 platform private key from PEM (PKCS#8 or
// SEC 1).
func ParsePlatformKey(data []byte) (*ecdsa.PrivateKey, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("no PEM block in sim platform key: %w", errdefs.ErrInvalidArgument)
	}
	var key any
	var err error
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("PEM block %q is not a private key: %w", block.Type, errdefs.ErrInvalidArgument)
	}
	if err != nil {
		return nil, fmt.Errorf("invalid sim platform key: %w", errdefs.ErrInvalidArgument)
	}
	k, ok := key.(*ecdsa.PrivateKey)
	if !ok || k.Curve != elliptic.P384() {
		return nil, fmt.Errorf("sim platform key must be ECDSA P-384: %w", errdefs.ErrInvalidArgument)
	}
	return k, nil
}

// ParsePlatformPublicKeys decodes every P-384 PUBLIC KEY block of a PEM
// bundle.
func ParsePlatformPublicKeys(data []byte) ([]*ecdsa.PublicKey, error) {
	var out []*ecdsa.PublicKey
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "PUBLIC KEY" {
			continue
		}
		k, err := x509.ParsePKIXPublicKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("invalid sim platform public key: %w", errdefs.ErrInvalidArgument)
		}
		ek, ok := k.(*ecdsa.PublicKey)
		if !ok || ek.Curve != elliptic.P384() {
			return nil, fmt.Errorf("sim platform public key must be ECDSA P-384: %w", errdefs.ErrInvalidArgument)
		}
		out = append(out, ek)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no sim platform public key found: %w", errdefs.ErrInvalidArgument)
	}
	return out, nil
}
