// Package initdata is a pod's init data: one document, chosen by whoever
// deploys the pod, that says which key broker the guest trusts (URL and CA
// or public key), which rules the agent enforces (exec, logs, sealing) and
// which image keys it fetches. Its SHA-256 is bound into the TEE at launch
// (SNP HOST_DATA, TDX MRCONFIGID, the PEF sealed command line, the sim
// TEE's evidence), so the guest checks the document it is handed against
// its own report before using any of it, and a key broker can pin the
// digest. The digest is over the document's exact bytes; Parse decodes them
// strictly, so what is measured is what is enforced.
package initdata

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/url"

	"github.com/containerd/errdefs"

	"github.com/raksh-project/raksh/envelope"
)

// Annotation is the pod annotation carrying a pod's init-data document
// (the JSON text itself). Without it the runtime config's init_data file
// is the pod's, if set.
const Annotation = "io.raksh.init-data"

// Version is the version of the document format.
const Version = "raksh.initdata/v1"

// MaxSize bounds a document.
const MaxSize = 64 << 10

// Format is the init-data format name sent to the key broker with the
// document (kbs/api InitData.Format).
const Format = "json"

// Document is the parsed init data.
type Document struct {
	// Version is Version.
	Version string `json:"version"`
	// KBS is the key broker the guest trusts. Without it the guest speaks
	// plain HTTP to whatever the shim's "kbs" proxy reaches (the resources
	// it gets are still encrypted to its attested key).
	KBS *KBS `json:"kbs,omitempty"`
	// Policy are rules the agent enforces for every container of the pod.
	Policy Policy `json:"policy"`
	// ImageKeys are key broker resources (repo/type/tag) holding the
	// private keys of encrypted image layers, added to the runtime
	// config's image_keys.
	ImageKeys []string `json:"image_keys,omitempty"`
}

// KBS names the key broker and how the guest authenticates it.
type KBS struct {
	// URL is the broker's https URL. Its host is the TLS server name the
	// broker's certificate must carry; the connection itself always goes
	// through the shim's "kbs" proxy.
	URL string `json:"url"`
	// CA holds PEM certificates the broker's certificate chains to.
	CA string `json:"ca,omitempty"`
	// PublicKey is a PEM public key (SubjectPublicKeyInfo) the broker's
	// certificate must carry (pinning, instead of or beside CA).
	PublicKey string `json:"public_key,omitempty"`
}

// Policy are the agent's pod-wide rules. The zero value allows what the
// agent allows without init data.
type Policy struct {
	// RequireSealed refuses every container but the pod's sandbox without
	// a sealed envelope.
	RequireSealed bool `json:"require_sealed,omitempty"`
	// DenyExec refuses exec into any container of the pod.
	DenyExec bool `json:"deny_exec,omitempty"`
	// DenyLogs keeps every container's output in the guest (as a sealed
	// envelope without allow_logs does for its container).
	DenyLogs bool `json:"deny_logs,omitempty"`
}

// Digest returns the SHA-256 of doc, the value bound at launch.
func Digest(doc []byte) []byte {
	d := sha256.Sum256(doc)
	return d[:]
}

// Parse decodes and validates a document. Unknown fields are errors.
func Parse(doc []byte) (*Document, error) {
	if len(doc) > MaxSize {
		return nil, fmt.Errorf("init data is %d bytes, more than %d: %w", len(doc), MaxSize, errdefs.ErrInvalidArgument)
	}
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.DisallowUnknownFields()
	var d Document
	if err := dec.Decode(&d); err != nil {
		return nil, fmt.Errorf("init data: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	if dec.More() {
		return nil, fmt.Errorf("init data: trailing data after the document: %w", errdefs.ErrInvalidArgument)
	}
	if d.Version != Version {
		return nil, fmt.Errorf("init data version %q, want %q: %w", d.Version, Version, errdefs.ErrInvalidArgument)
	}
	if d.KBS != nil {
		if err := d.KBS.validate(); err != nil {
			return nil, err
		}
	}
	for _, p := range d.ImageKeys {
		if _, err := envelope.ParseKeyID(envelope.KeyIDScheme + p); err != nil {
			return nil, fmt.Errorf("init data image_keys: %q is not a key broker resource path repo/type/tag: %w", p, errdefs.ErrInvalidArgument)
		}
	}
	return &d, nil
}

func (k *KBS) validate() error {
	u, err := url.Parse(k.URL)
	if err != nil || u.Scheme != "https" || u.Hostname() == "" || u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
		return fmt.Errorf("init data kbs.url %q is not https://host[:port]: %w", k.URL, errdefs.ErrInvalidArgument)
	}
	if k.CA == "" && k.PublicKey == "" {
		return fmt.Errorf("init data kbs needs ca or public_key to authenticate the broker: %w", errdefs.ErrInvalidArgument)
	}
	if k.CA != "" {
		if _, err := k.CertPool(); err != nil {
			return err
		}
	}
	if k.PublicKey != "" {
		if _, err := k.PublicKeyDER(); err != nil {
			return err
		}
	}
	return nil
}

// ServerName returns the TLS server name of the broker.
func (k *KBS) ServerName() string {
	u, _ := url.Parse(k.URL)
	return u.Hostname()
}

// CertPool returns the CA certificates.
func (k *KBS) CertPool() (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	rest, n := []byte(k.CA), 0
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("init data kbs.ca: %v: %w", err, errdefs.ErrInvalidArgument)
		}
		pool.AddCert(c)
		n++
	}
	if n == 0 {
		return nil, fmt.Errorf("init data kbs.ca holds no PEM certificate: %w", errdefs.ErrInvalidArgument)
	}
	return pool, nil
}

// PublicKeyDER returns the pinned public key as DER SubjectPublicKeyInfo.
func (k *KBS) PublicKeyDER() ([]byte, error) {
	b, _ := pem.Decode([]byte(k.PublicKey))
	if b == nil || b.Type != "PUBLIC KEY" {
		return nil, fmt.Errorf("init data kbs.public_key is not a PEM PUBLIC KEY: %w", errdefs.ErrInvalidArgument)
	}
	if _, err := x509.ParsePKIXPublicKey(b.Bytes); err != nil {
		return nil, fmt.Errorf("init data kbs.public_key: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	return b.Bytes, nil
}

// Check returns nil when doc is the document whose digest the TEE reports.
// reported is the init-data field of the guest's own report: 32 bytes
// (SNP HOST_DATA, sim, PEF) or 48 (TDX MRCONFIGID: the SHA-256 followed by
// zeros). An empty or all-zero report means no init data was bound.
func Check(doc, reported []byte) error {
	want := Digest(doc)
	switch {
	case allZero(reported):
		return fmt.Errorf("init data delivered, but the TEE report binds none (the VM was launched without it): %w", errdefs.ErrPermissionDenied)
	case len(reported) == len(want):
	case len(reported) == 48 && allZero(reported[32:]):
		reported = reported[:32]
	default:
		return fmt.Errorf("the TEE report's init-data field (%d bytes) is not a SHA-256: %w", len(reported), errdefs.ErrPermissionDenied)
	}
	if subtle.ConstantTimeCompare(want, reported) != 1 {
		return fmt.Errorf("init data digest %s does not match the %s bound at launch: %w",
			hex.EncodeToString(want), hex.EncodeToString(reported), errdefs.ErrPermissionDenied)
	}
	return nil
}

// Bound reports whether a TEE report's init-data field binds a digest.
func Bound(reported []byte) bool { return !allZero(reported) }

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
