// Package sim is the simulated, INSECURE software TEE.
//
// It is a real attester, not a stub: evidence is a JWS (ES384) signed by a
// simulated platform key (ECDSA P-384) and carries the launch measurement
// (SHA-384 over kernel, initrd and command line, computed by Measure on the
// host), the init-data digest, the 64 bytes of report data and
// "insecure": true. The platform key lives in the guest image, so anyone who
// can read the image can forge evidence: brokers must refuse sim evidence
// unless a policy explicitly allows it, and every claim it yields has
// Insecure set.
package sim

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"os"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	jose "github.com/go-jose/go-jose/v4"

	"github.com/raksh-project/raksh/tee"
)

const (
	// EvidenceVersion is the version of the sim evidence payload.
	EvidenceVersion = "raksh.sim.evidence/v1"
	// KernelParamMeasurement is the kernel parameter carrying the launch
	// measurement (hex) to the guest attester.
	KernelParamMeasurement = "raksh.sim.measurement"
	// KernelParamInitData is the kernel parameter carrying the init-data
	// digest (hex) to the guest attester.
	KernelParamInitData = "raksh.sim.init_data"
	// MaxEvidenceSize bounds the evidence a Verifier parses.
	MaxEvidenceSize = 64 << 10
	// DefaultKeyPath is where the guest image carries the platform key.
	DefaultKeyPath = "/etc/raksh/sim-platform-key.pem"
)

// Errors of the sim verifier.
var (
	// ErrMalformedEvidence is returned for evidence that does not parse.
	ErrMalformedEvidence = fmt.Errorf("malformed sim evidence: %w", errdefs.ErrInvalidArgument)
	// ErrUntrustedPlatform is returned for evidence signed by a platform key
	// the verifier does not trust, or with an invalid signature.
	ErrUntrustedPlatform = fmt.Errorf("sim evidence not signed by a trusted platform key: %w", errdefs.ErrPermissionDenied)
	// ErrReportDataMismatch is returned when evidence binds other report data
	// than expected.
	ErrReportDataMismatch = fmt.Errorf("sim evidence binds other report data: %w", errdefs.ErrPermissionDenied)
)

// evidence is the signed payload.
type evidence struct {
	Version        string `json:"version"`
	TEE            string `json:"tee"`
	Insecure       bool   `json:"insecure"`
	Measurement    string `json:"measurement"`
	InitDataDigest string `json:"init_data_digest"`
	ReportData     string `json:"report_data"`
	Debug          bool   `json:"debug"`
	IssuedAt       int64  `json:"iat"`
}

// Measure returns the sim launch measurement: SHA-384 over the
// length-prefixed kernel, initrd and command line. Kernel parameters named
// raksh.sim.* are excluded from the command line, since they carry the
// measurement itself.
func Measure(kernel, initrd io.Reader, cmdline string) ([]byte, error) {
	h := sha512.New384()
	for _, r := range []io.Reader{kernel, initrd} {
		if err := measurePart(h, r); err != nil {
			return nil, err
		}
	}
	if err := measurePart(h, strings.NewReader(stripSimParams(cmdline))); err != nil {
		return nil, err
	}
	return h.Sum(nil), nil
}

func measurePart(h hash.Hash, r io.Reader) error {
	ph := sha512.New384()
	n, err := io.Copy(ph, r)
	if err != nil {
		return fmt.Errorf("failed to measure: %w", err)
	}
	var l [8]byte
	binary.BigEndian.PutUint64(l[:], uint64(n))
	h.Write(l[:])
	h.Write(ph.Sum(nil))
	return nil
}

func stripSimParams(cmdline string) string {
	var out []string
	for _, f := range strings.Fields(cmdline) {
		if !strings.HasPrefix(f, "raksh.sim.") {
			out = append(out, f)
		}
	}
	return strings.Join(out, " ")
}

// MeasureFiles is Measure over the named kernel and initrd files.
func MeasureFiles(kernel, initrd, cmdline string) ([]byte, error) {
	k, err := os.Open(kernel)
	if err != nil {
		return nil, err
	}
	defer k.Close()
	i, err := os.Open(initrd)
	if err != nil {
		return nil, err
	}
	defer i.Close()
	return Measure(bufio.NewReader(k), bufio.NewReader(i), cmdline)
}

// GenerateKey returns a new simulated platform key.
func GenerateKey() (*ecdsa.PrivateKey, error) {
	return ecdsa.GenerateKey(elliptic.P384(), randReader)
}

// keyID is the RFC 7638 thumbprint of a platform public key.
func keyID(pub *ecdsa.PublicKey) (string, error) {
	tp, err := (&jose.JSONWebKey{Key: pub}).Thumbprint(crypto.SHA256)
	if err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(tp), nil
}

// Attester is the guest side of the sim TEE.
type Attester struct {
	signer      jose.Signer
	measurement []byte
	initData    []byte
	debug       bool
	now         func() time.Time
}

var _ tee.Attester = (*Attester)(nil)

// AttesterOpt configures an Attester.
type AttesterOpt func(*Attester) error

// WithMeasurement sets the launch measurement the attester reports.
func WithMeasurement(m []byte) AttesterOpt {
	return func(a *Attester) error { a.measurement = bytes.Clone(m); return nil }
}

// WithInitDataDigest sets the init-data digest the attester reports.
func WithInitDataDigest(d []byte) AttesterOpt {
	return func(a *Attester) error { a.initData = bytes.Clone(d); return nil }
}

// WithDebug marks the simulated TEE as debuggable.
func WithDebug(debug bool) AttesterOpt {
	return func(a *Attester) error { a.debug = debug; return nil }
}

// WithKernelCmdline takes the measurement and init-data digest from the
// raksh.sim.* parameters of a kernel command line (see Launcher).
func WithKernelCmdline(cmdline string) AttesterOpt {
	return func(a *Attester) error {
		for _, f := range strings.Fields(cmdline) {
			k, v, ok := strings.Cut(f, "=")
			if !ok {
				continue
			}
			var dst *[]byte
			switch k {
			case KernelParamMeasurement:
				dst = &a.measurement
			case KernelParamInitData:
				dst = &a.initData
			default:
				continue
			}
			b, err := hex.DecodeString(v)
			if err != nil {
				return fmt.Errorf("kernel parameter %s is not hex: %w", k, errdefs.ErrInvalidArgument)
			}
			*dst = b
		}
		return nil
	}
}

// NewAttester returns an attester signing with the platform key.
func NewAttester(key *ecdsa.PrivateKey, opts ...AttesterOpt) (*Attester, error) {
	if key == nil || key.Curve != elliptic.P384() {
		return nil, fmt.Errorf("sim platform key must be ECDSA P-384: %w", errdefs.ErrInvalidArgument)
	}
	kid, err := keyID(&key.PublicKey)
	if err != nil {
		return nil, err
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES384, Key: key},
		(&jose.SignerOptions{}).WithType("raksh-sim-evidence").WithHeader(jose.HeaderKey("kid"), kid))
	if err != nil {
		return nil, fmt.Errorf("failed to create signer: %w", err)
	}
	a := &Attester{signer: signer, now: time.Now}
	for _, o := range opts {
		if err := o(a); err != nil {
			return nil, err
		}
	}
	return a, nil
}

// NewAttesterFromFiles reads the platform key (PEM) from keyPath and the
// measurement and init-data digest from the kernel command line at
// cmdlinePath (normally /proc/cmdline; empty to skip). Options given
// override the command line.
func NewAttesterFromFiles(keyPath, cmdlinePath string, opts ...AttesterOpt) (*Attester, error) {
	data, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("failed to read sim platform key: %w", err)
	}
	key, err := ParsePlatformKey(data)
	if err != nil {
		return nil, err
	}
	if cmdlinePath != "" {
		cmdline, err := os.ReadFile(cmdlinePath)
		if err != nil {
			return nil, fmt.Errorf("failed to read kernel command line: %w", err)
		}
		opts = append([]AttesterOpt{WithKernelCmdline(string(cmdline))}, opts...)
	}
	return NewAttester(key, opts...)
}

// Type implements tee.Attester.
func (a *Attester) Type() tee.Type { return tee.Sim }

var _ tee.InitDataReporter = (*Attester)(nil)

// InitDataDigest implements tee.InitDataReporter: the digest the evidence
// carries.
func (a *Attester) InitDataDigest(context.Context) ([]byte, error) {
	return bytes.Clone(a.initData), nil
}

// Evidence implements tee.Attester.
func (a *Attester) Evidence(ctx context.Context, reportData [tee.ReportDataSize]byte) ([]byte, error) {
	payload, err := json.Marshal(evidence{
		Version:        EvidenceVersion,
		TEE:            string(tee.Sim),
		Insecure:       true,
		Measurement:    hex.EncodeToString(a.measurement),
		InitDataDigest: hex.EncodeToString(a.initData),
		ReportData:     hex.EncodeToString(reportData[:]),
		Debug:          a.debug,
		IssuedAt:       a.now().Unix(),
	})
	if err != nil {
		return nil, err
	}
	jws, err := a.signer.Sign(payload)
	if err != nil {
		return nil, fmt.Errorf("failed to sign sim evidence: %w", err)
	}
	s, err := jws.CompactSerialize()
	if err != nil {
		return nil, err
	}
	return []byte(s), nil
}

// Verifier is the broker side of the sim TEE. It trusts a fixed set of
// platform public keys.
type Verifier struct {
	trusted map[string]*ecdsa.PublicKey
}

var _ tee.Verifier = (*Verifier)(nil)

// NewVerifier returns a verifier trusting the given platform keys.
func NewVerifier(trusted ...*ecdsa.PublicKey) (*Verifier, error) {
	v := &Verifier{trusted: map[string]*ecdsa.PublicKey{}}
	for _, k := range trusted {
		if k == nil || k.Curve != elliptic.P384() {
			return nil, fmt.Errorf("sim platform key must be ECDSA P-384: %w", errdefs.ErrInvalidArgument)
		}
		kid, err := keyID(k)
		if err != nil {
			return nil, err
		}
		v.trusted[kid] = k
	}
	if len(v.trusted) == 0 {
		return nil, fmt.Errorf("sim verifier needs at least one trusted platform key: %w", errdefs.ErrInvalidArgument)
	}
	return v, nil
}

// Type implements tee.Verifier.
func (v *Verifier) Type() tee.Type { return tee.Sim }

// Verify implements tee.Verifier.
func (v *Verifier) Verify(ctx context.Context, data []byte, reportData [tee.ReportDataSize]byte) (*tee.Claims, error) {
	if len(data) > MaxEvidenceSize {
		return nil, fmt.Errorf("%d bytes: %w", len(data), ErrMalformedEvidence)
	}
	jws, err := jose.ParseSigned(string(data), []jose.SignatureAlgorithm{jose.ES384})
	if err != nil {
		return nil, fmt.Errorf("%v: %w", err, ErrMalformedEvidence)
	}
	if len(jws.Signatures) != 1 {
		return nil, fmt.Errorf("want one signature: %w", ErrMalformedEvidence)
	}
	key, ok := v.trusted[jws.Signatures[0].Header.KeyID]
	if !ok {
		return nil, fmt.Errorf("unknown platform key: %w", ErrUntrustedPlatform)
	}
	payload, err := jws.Verify(key)
	if err != nil {
		return nil, fmt.Errorf("bad signature: %w", ErrUntrustedPlatform)
	}
	var ev evidence
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&ev); err != nil {
		return nil, fmt.Errorf("payload: %w", ErrMalformedEvidence)
	}
	if ev.Version != EvidenceVersion || ev.TEE != string(tee.Sim) || !ev.Insecure {
		return nil, fmt.Errorf("version %q tee %q insecure %v: %w", ev.Version, ev.TEE, ev.Insecure, ErrMalformedEvidence)
	}
	rd, err := hex.DecodeString(ev.ReportData)
	if err != nil || len(rd) != tee.ReportDataSize {
		return nil, fmt.Errorf("report data: %w", ErrMalformedEvidence)
	}
	if subtle.ConstantTimeCompare(rd, reportData[:]) != 1 {
		return nil, ErrReportDataMismatch
	}
	m, err1 := hex.DecodeString(ev.Measurement)
	d, err2 := hex.DecodeString(ev.InitDataDigest)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("digests: %w", ErrMalformedEvidence)
	}
	c := &tee.Claims{
		TEE:            tee.Sim,
		Measurement:    m,
		InitDataDigest: d,
		Debug:          ev.Debug,
		Insecure:       true,
		Extra:          map[string]any{"platform_key": jws.Signatures[0].Header.KeyID, "iat": ev.IssuedAt},
	}
	copy(c.ReportData[:], rd)
	return c, nil
}

// Launcher is the host side of the sim TEE: no QEMU options, only kernel
// parameters telling the guest attester its measurement and init-data
// digest (a real TEE measures these itself; the sim trusts the host, which
// is one reason it is insecure).
type Launcher struct {
	measurement []byte
}

var _ tee.Launcher = (*Launcher)(nil)

// NewLauncher returns a launcher reporting measurement (see Measure); nil
// leaves the measurement out.
func NewLauncher(measurement []byte) *Launcher {
	return &Launcher{measurement: bytes.Clone(measurement)}
}

// Type implements tee.Launcher.
func (l *Launcher) Type() tee.Type { return tee.Sim }

// LaunchArgs implements tee.Launcher.
func (l *Launcher) LaunchArgs(p tee.LaunchParams) (tee.LaunchArgs, error) {
	var args tee.LaunchArgs
	if len(l.measurement) > 0 {
		args.KernelParams = append(args.KernelParams, KernelParamMeasurement+"="+hex.EncodeToString(l.measurement))
	}
	if len(p.InitDataDigest) > 0 {
		if n := len(p.InitDataDigest); n != sha256.Size && n != sha512.Size384 {
			return args, fmt.Errorf("init-data digest of %d bytes (want 32 or 48): %w", n, errdefs.ErrInvalidArgument)
		}
		args.KernelParams = append(args.KernelParams, KernelParamInitData+"="+hex.EncodeToString(p.InitDataDigest))
	}
	return args, nil
}
