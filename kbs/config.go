package kbs

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/containerd/errdefs"
)

// Config is the raksh-kbs configuration (TOML, /etc/raksh/kbs.toml).
type Config struct {
	// Address is the listen address. Default 127.0.0.1:8080.
	Address string `toml:"address"`
	// TLSCertFile and TLSKeyFile enable HTTPS. Without them the broker
	// serves plain HTTP (for loopback or a TLS-terminating proxy only).
	TLSCertFile string `toml:"tls_cert_file"`
	TLSKeyFile  string `toml:"tls_key_file"`
	// ResourceDir holds the resources (<repo>/<type>/<tag>).
	ResourceDir string `toml:"resource_dir"`
	// PolicyFile holds the resource policy (JSON, see Policy); policies
	// set through the admin API are written back to it.
	PolicyFile string `toml:"policy_file"`
	// AdminPublicKeyFiles are PEM public keys (Ed25519, ECDSA, RSA) allowed
	// to call the admin API. None: the admin API is disabled.
	AdminPublicKeyFiles []string `toml:"admin_public_key_files"`
	// TokenKeyFile is a PEM ECDSA P-256 key signing attestation tokens; when
	// empty a key is generated at start.
	TokenKeyFile string `toml:"token_key_file"`
	// SimPlatformKeysFile is a PEM bundle of trusted sim platform public
	// keys; when empty the sim verifier is not registered at all. The policy
	// must still list "sim" for sim evidence to be accepted.
	SimPlatformKeysFile string `toml:"sim_platform_keys_file"`
	// SessionTTL bounds a session and its nonce ("5m").
	SessionTTL time.Duration `toml:"session_ttl"`
	// TokenTTL is the validity of attestation tokens ("30m"; the TOML
	// library decodes durations natively).
	TokenTTL time.Duration `toml:"token_ttl"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		Address:     "127.0.0.1:8080",
		ResourceDir: "/var/lib/raksh-kbs/resources",
		PolicyFile:  "/var/lib/raksh-kbs/policy.json",
		SessionTTL:  DefaultSessionTTL,
		TokenTTL:    DefaultTokenTTL,
	}
}

// LoadConfig reads a TOML file over the defaults. Unknown keys are errors.
func LoadConfig(path string) (Config, error) {
	cfg := DefaultConfig()
	md, err := toml.DecodeFile(path, &cfg)
	if err != nil {
		return cfg, fmt.Errorf("failed to load %s: %w", path, err)
	}
	if u := md.Undecoded(); len(u) > 0 {
		return cfg, fmt.Errorf("%s: unknown keys %v: %w", path, u, errdefs.ErrInvalidArgument)
	}
	return cfg, nil
}

// Opts returns the server options a Config describes (policy, admin keys,
// token key, TTLs).
func (c Config) Opts() ([]Opt, error) {
	var opts []Opt
	if c.PolicyFile != "" {
		opts = append(opts, WithPolicyFile(c.PolicyFile))
	}
	for _, f := range c.AdminPublicKeyFiles {
		pub, err := readPublicKey(f)
		if err != nil {
			return nil, err
		}
		opts = append(opts, WithAdminKey(pub))
	}
	if c.TokenKeyFile != "" {
		data, err := os.ReadFile(c.TokenKeyFile)
		if err != nil {
			return nil, fmt.Errorf("failed to read token key: %w", err)
		}
		block, _ := pem.Decode(data)
		if block == nil {
			return nil, fmt.Errorf("token key %s is not PEM: %w", c.TokenKeyFile, errdefs.ErrInvalidArgument)
		}
		var k any
		if block.Type == "EC PRIVATE KEY" {
			k, err = x509.ParseECPrivateKey(block.Bytes)
		} else {
			k, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		}
		ek, ok := k.(*ecdsa.PrivateKey)
		if err != nil || !ok {
			return nil, fmt.Errorf("token key %s is not an ECDSA key: %w", c.TokenKeyFile, errdefs.ErrInvalidArgument)
		}
		opts = append(opts, WithTokenKey(ek))
	}
	if c.SessionTTL > 0 {
		opts = append(opts, WithSessionTTL(c.SessionTTL))
	}
	if c.TokenTTL > 0 {
		opts = append(opts, WithTokenTTL(c.TokenTTL))
	}
	return opts, nil
}

func readPublicKey(path string) (crypto.PublicKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("failed to read admin key: %w", err)
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PUBLIC KEY" {
		return nil, fmt.Errorf("admin key %s is not a PEM PUBLIC KEY: %w", path, errdefs.ErrInvalidArgument)
	}
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("admin key %s: %w", path, errdefs.ErrInvalidArgument)
	}
	return pub, nil
}
