package pef

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha512"
	"crypto/subtle"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"strings"

	"github.com/containerd/errdefs"
	jose "github.com/go-jose/go-jose/v4"

	"github.com/raksh-project/raksh/tee"
)

// AttestationKeyFile is the name of the sealed file holding the VM's
// attestation key (P-384, PKCS#8 PEM). PEF has no hardware-signed report:
// possession of a key that only the ultravisor could release, and only to
// a VM with the sealed kernel, initrd and command line, stands in for one.
const AttestationKeyFile = "raksh-attest.key"

// evidencePayload is the signed content of PEF evidence.
type evidencePayload struct {
	TEE        tee.Type `json:"tee"`
	ReportData []byte   `json:"report_data"`
	// Simulated is the guest's own statement that the simulated
	// ultravisor released its key (it was booted by SimUltravisor). An
	// honest guest sealed for the simulated ultravisor says so, and a
	// verifier trusting its key for hardware refuses it.
	Simulated bool `json:"simulated,omitempty"`
	// InitDataDigest is the init-data digest on the VM's kernel command
	// line (raksh.init_data), which the ultravisor checked against the
	// sealed command line before releasing the attestation key.
	InitDataDigest []byte `json:"init_data_digest,omitempty"`
}

// AttesterOpt configures an Attester.
type AttesterOpt func(*Attester)

// WithKeyDir reads released files from dir (a DirSource); empty keeps the
// default.
func WithKeyDir(dir string) AttesterOpt {
	return func(a *Attester) {
		if dir != "" {
			a.src = DirSource{Dir: dir}
		}
	}
}

// WithKeySource reads released files from src.
func WithKeySource(src KeySource) AttesterOpt { return func(a *Attester) { a.src = src } }

// OnSimulatedUltravisor marks the attester as running in a VM the
// simulated ultravisor booted (SimUltravisor.BootInitrd): its evidence
// says so, and verifiers accept it only for keys listed as simulated.
func OnSimulatedUltravisor() AttesterOpt { return func(a *Attester) { a.simulated = true } }

// Attester signs report data with the attestation key the ultravisor
// released. Only needed when a PEF guest talks to a key broker; Raksh's PEF
// mode reads its workload keys straight from the KeySource.
type Attester struct {
	src       KeySource
	simulated bool
}

var _ tee.Attester = (*Attester)(nil)

// NewAttester returns a PEF attester reading from DefaultKeyDir unless an
// option says otherwise.
func NewAttester(opts ...AttesterOpt) *Attester {
	a := &Attester{src: DirSource{}}
	for _, o := range opts {
		o(a)
	}
	return a
}

// KeySource returns where the attester reads released files from, for the
// agent to fetch its workload keys the same way.
func (a *Attester) KeySource() KeySource { return a.src }

// Type returns tee.PEF.
func (a *Attester) Type() tee.Type { return tee.PEF }

// Evidence returns a JWS (ES384, compact) over the report data and the
// init-data digest of the kernel command line, signed with the released
// attestation key.
func (a *Attester) Evidence(ctx context.Context, reportData [tee.ReportDataSize]byte) ([]byte, error) {
	b, err := a.src.ReadFile(AttestationKeyFile)
	if err != nil {
		return nil, err
	}
	key, err := ParseAttestationKey(b)
	if err != nil {
		return nil, err
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES384, Key: key}, nil)
	if err != nil {
		return nil, err
	}
	digest, err := a.InitDataDigest(ctx)
	if err != nil {
		return nil, err
	}
	payload, err := json.Marshal(evidencePayload{TEE: tee.PEF, ReportData: reportData[:], Simulated: a.simulated, InitDataDigest: digest})
	if err != nil {
		return nil, err
	}
	jws, err := signer.Sign(payload)
	if err != nil {
		return nil, err
	}
	s, err := jws.CompactSerialize()
	if err != nil {
		return nil, err
	}
	return []byte(s), nil
}

// ParseAttestationKey decodes a P-384 attestation key (PKCS#8 PEM).
func ParseAttestationKey(b []byte) (*ecdsa.PrivateKey, error) {
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("pef: attestation key is not PEM: %w", errdefs.ErrInvalidArgument)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("pef: bad attestation key: %w", errdefs.ErrInvalidArgument)
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok || ek.Curve != elliptic.P384() {
		return nil, fmt.Errorf("pef: attestation key is not P-384: %w", errdefs.ErrInvalidArgument)
	}
	return ek, nil
}

// Verification failures.
var (
	// ErrSignature: the evidence is not signed by a trusted attestation key.
	ErrSignature = fmt.Errorf("pef: evidence not signed by a trusted attestation key: %w", errdefs.ErrPermissionDenied)
	// ErrReportData: the signed report data differs.
	ErrReportData = fmt.Errorf("pef: report data mismatch: %w", errdefs.ErrPermissionDenied)
	// ErrSimulated: evidence from a VM the simulated ultravisor booted,
	// signed by a key the verifier trusts for hardware only.
	ErrSimulated = fmt.Errorf("pef: evidence from the simulated (insecure) ultravisor, but its key is trusted for hardware only (list it in simulated_keys to accept it as insecure): %w", errdefs.ErrPermissionDenied)
)

// VerifierConfig configures a PEF verifier.
type VerifierConfig struct {
	// TrustedKeys are PEM files with the public attestation keys sealed
	// into initrds for PEF hardware (one per sealed application; rakshctl
	// initrd build --seal-for pef --attestation-public-key writes them).
	TrustedKeys []string `toml:"trusted_keys"`
	// SimulatedKeys are PEM files with public attestation keys sealed for
	// the simulated ultravisor (SimUltravisor, whose host sees every
	// released file): their claims carry Insecure, which a key broker
	// refuses unless its policy allows insecure claims. Evidence that says
	// it comes from the simulated ultravisor is refused for TrustedKeys.
	SimulatedKeys []string `toml:"simulated_keys"`
}

// Verifier checks PEF evidence against the public attestation keys the
// owner sealed.
type Verifier struct {
	keys []trustedKey
}

type trustedKey struct {
	pub       *ecdsa.PublicKey
	simulated bool
}

var _ tee.Verifier = (*Verifier)(nil)

// NewVerifier returns a Verifier trusting cfg.TrustedKeys and extra for
// hardware, and cfg.SimulatedKeys for the simulated ultravisor.
func NewVerifier(cfg VerifierConfig, extra ...*ecdsa.PublicKey) (*Verifier, error) {
	v := &Verifier{}
	for _, k := range extra {
		v.keys = append(v.keys, trustedKey{pub: k})
	}
	for _, set := range []struct {
		files     []string
		simulated bool
	}{{cfg.TrustedKeys, false}, {cfg.SimulatedKeys, true}} {
		for _, f := range set.files {
			keys, err := readPublicKeys(f)
			if err != nil {
				return nil, err
			}
			for _, k := range keys {
				v.keys = append(v.keys, trustedKey{pub: k, simulated: set.simulated})
			}
		}
	}
	if len(v.keys) == 0 {
		return nil, fmt.Errorf("pef: no trusted attestation keys: %w", errdefs.ErrInvalidArgument)
	}
	return v, nil
}

// readPublicKeys reads the P-384 public keys (PKIX PEM) of a file.
func readPublicKeys(f string) ([]*ecdsa.PublicKey, error) {
	b, err := os.ReadFile(f)
	if err != nil {
		return nil, fmt.Errorf("pef: failed to read trusted key: %w", err)
	}
	var keys []*ecdsa.PublicKey
	for blk, rest := pem.Decode(b); blk != nil; blk, rest = pem.Decode(rest) {
		pk, err := x509.ParsePKIXPublicKey(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("pef: bad trusted key in %s: %w", f, errdefs.ErrInvalidArgument)
		}
		ek, ok := pk.(*ecdsa.PublicKey)
		if !ok || ek.Curve != elliptic.P384() {
			return nil, fmt.Errorf("pef: trusted key in %s is not P-384: %w", f, errdefs.ErrInvalidArgument)
		}
		keys = append(keys, ek)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("pef: no PEM public key in %s: %w", f, errdefs.ErrInvalidArgument)
	}
	return keys, nil
}

// Type returns tee.PEF.
func (v *Verifier) Type() tee.Type { return tee.PEF }

// Verify checks the evidence signature and report data. The claims'
// Measurement is SHA-384 of the verifying key (SubjectPublicKeyInfo DER):
// the sealed key identifies the sealed launch.
func (v *Verifier) Verify(_ context.Context, evidence []byte, reportData [tee.ReportDataSize]byte) (*tee.Claims, error) {
	jws, err := jose.ParseSigned(string(bytes.TrimSpace(evidence)), []jose.SignatureAlgorithm{jose.ES384})
	if err != nil {
		return nil, fmt.Errorf("pef: malformed evidence: %w", errdefs.ErrInvalidArgument)
	}
	for _, k := range v.keys {
		payload, err := jws.Verify(k.pub)
		if err != nil {
			continue
		}
		var p evidencePayload
		if err := json.Unmarshal(payload, &p); err != nil || p.TEE != tee.PEF {
			return nil, fmt.Errorf("pef: malformed evidence payload: %w", errdefs.ErrInvalidArgument)
		}
		if subtle.ConstantTimeCompare(p.ReportData, reportData[:]) != 1 {
			return nil, ErrReportData
		}
		if p.Simulated && !k.simulated {
			return nil, ErrSimulated
		}
		if n := len(p.InitDataDigest); n != 0 && n != 32 && n != 48 {
			return nil, fmt.Errorf("pef: init-data digest of %d bytes: %w", n, errdefs.ErrInvalidArgument)
		}
		der, err := x509.MarshalPKIXPublicKey(k.pub)
		if err != nil {
			return nil, err
		}
		m := sha512.Sum384(der)
		c := &tee.Claims{
			TEE:         tee.PEF,
			Measurement: m[:],
			Insecure:    k.simulated,
			// Signed by a key released only to a VM booting the sealed
			// command line, which carries the digest.
			InitDataDigest: p.InitDataDigest,
			Extra:          map[string]any{"attestation_key": hex.EncodeToString(m[:])},
		}
		copy(c.ReportData[:], p.ReportData)
		return c, nil
	}
	return nil, ErrSignature
}

var _ tee.InitDataReporter = (*Attester)(nil)

// CmdlinePath is the kernel command line the PEF attester reads the
// init-data digest from.
var CmdlinePath = "/proc/cmdline"

// InitDataDigest implements tee.InitDataReporter: the raksh.init_data
// parameter of the kernel command line, whose SHA-512 the ultravisor
// checked against the ESM blob before entering secure mode.
func (a *Attester) InitDataDigest(context.Context) ([]byte, error) {
	b, err := os.ReadFile(CmdlinePath)
	if err != nil {
		return nil, fmt.Errorf("pef: kernel command line: %w", err)
	}
	for _, f := range strings.Fields(string(b)) {
		if v, ok := strings.CutPrefix(f, InitDataParam+"="); ok {
			d, err := hex.DecodeString(v)
			if err != nil {
				return nil, fmt.Errorf("pef: %s is not hex: %w", InitDataParam, errdefs.ErrInvalidArgument)
			}
			return d, nil
		}
	}
	return nil, nil
}
