package snp

import (
	"bytes"
	"context"
	"crypto/subtle"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	"github.com/google/go-sev-guest/validate"
	"github.com/google/go-sev-guest/verify"
	"github.com/google/go-sev-guest/verify/trust"

	"github.com/raksh-project/raksh/tee"
)

// Verification failures. Each wraps errdefs.ErrPermissionDenied, so callers
// can tell "evidence refused" from "malformed input" (ErrInvalidArgument).
var (
	// ErrSignature: the report's signature or its certificate chain does
	// not verify against the trusted AMD roots.
	ErrSignature = fmt.Errorf("snp: report signature or certificate chain invalid: %w", errdefs.ErrPermissionDenied)
	// ErrReportData: REPORT_DATA is not the expected value (replay or
	// a report made for another session).
	ErrReportData = fmt.Errorf("snp: report data mismatch: %w", errdefs.ErrPermissionDenied)
	// ErrDebug: the guest policy allows debugging.
	ErrDebug = fmt.Errorf("snp: guest policy allows debug: %w", errdefs.ErrPermissionDenied)
	// ErrTCB: the reported TCB is below the configured minimum.
	ErrTCB = fmt.Errorf("snp: reported TCB below minimum: %w", errdefs.ErrPermissionDenied)
	// ErrMeasurement: the launch measurement is not a reference value.
	ErrMeasurement = fmt.Errorf("snp: launch measurement not in reference values: %w", errdefs.ErrPermissionDenied)
	// ErrInitData: HOST_DATA is not an accepted init-data digest.
	ErrInitData = fmt.Errorf("snp: HOST_DATA is not an accepted init-data digest: %w", errdefs.ErrPermissionDenied)
	// ErrPolicy: another go-sev-guest validation check failed (VMPL,
	// firmware versions, policy bits other than debug, ...).
	ErrPolicy = fmt.Errorf("snp: report violates policy: %w", errdefs.ErrPermissionDenied)
	// ErrNoEndorsementKey: neither the evidence nor the certificate cache
	// holds the VCEK/VLEK certificate for the report.
	ErrNoEndorsementKey = fmt.Errorf("snp: no VCEK/VLEK certificate for report: %w", errdefs.ErrNotFound)
)

// TCB is a minimum SNP TCB (security patch levels).
type TCB struct {
	Bootloader uint8 `toml:"bootloader" json:"bootloader"`
	TEE        uint8 `toml:"tee" json:"tee"`
	SNP        uint8 `toml:"snp" json:"snp"`
	Microcode  uint8 `toml:"microcode" json:"microcode"`
}

func (t TCB) parts() kds.TCBParts {
	return kds.TCBParts{BlSpl: t.Bootloader, TeeSpl: t.TEE, SnpSpl: t.SNP, UcodeSpl: t.Microcode}
}

// Config holds the SNP reference values and trust settings of a key broker.
type Config struct {
	// Measurements are the accepted launch measurements (hex, 48 bytes).
	// Empty accepts any measurement (the key broker's policy then has to
	// decide on Claims.Measurement).
	Measurements []string `toml:"measurements"`
	// InitDataDigests are the accepted HOST_DATA values (hex, 32 bytes).
	// Empty leaves the check to the broker's policy on Claims.InitDataDigest.
	InitDataDigests []string `toml:"init_data_digests"`
	// MinimumTCB is the component-wise minimum reported TCB.
	MinimumTCB TCB `toml:"minimum_tcb"`
	// AllowDebug accepts guests whose policy allows debugging. Never set
	// in production.
	AllowDebug bool `toml:"allow_debug"`
	// DisallowSMT refuses guests whose policy allows SMT.
	DisallowSMT bool `toml:"disallow_smt"`
	// CertFiles are cached VCEK/VLEK certificates (DER or PEM), used when
	// the evidence carries none. They are matched to a report by chip ID
	// and reported TCB.
	CertFiles []string `toml:"cert_files"`
	// RootBundles are ASK+ARK or ASVK+ARK bundles (KDS cert_chain PEM
	// format) to trust instead of the AMD roots embedded in go-sev-guest
	// (all product lines, VCEK and VLEK chains).
	RootBundles []string `toml:"root_bundles"`
	// ProductLine is the product line of RootBundles ("Milan", "Genoa",
	// "Turin"); required with RootBundles.
	ProductLine string `toml:"product_line"`
}

// Opt configures a Verifier.
type Opt func(*Verifier) error

// WithNow fixes the time at which certificate validity is checked.
func WithNow(now func() time.Time) Opt {
	return func(v *Verifier) error { v.now = now; return nil }
}

// WithKDSGetter lets the verifier fetch missing certificates through g
// (go-sev-guest's trust.HTTPSGetter, e.g. trust.DefaultHTTPSGetter() for
// the AMD KDS). Without it the verifier never touches the network.
func WithKDSGetter(g trust.HTTPSGetter) Opt {
	return func(v *Verifier) error { v.getter = g; return nil }
}

// WithCertificates adds cached VCEK/VLEK certificates (DER or PEM).
func WithCertificates(certs ...[]byte) Opt {
	return func(v *Verifier) error {
		for _, c := range certs {
			cert, err := parseCert(c)
			if err != nil {
				return err
			}
			v.cache = append(v.cache, cert)
		}
		return nil
	}
}

// WithTrustedRoots replaces the embedded AMD roots with the given
// ASK+ARK bundles (KDS cert_chain PEM) for productLine.
func WithTrustedRoots(productLine string, bundles ...[]byte) Opt {
	return func(v *Verifier) error {
		if productLine == "" {
			return fmt.Errorf("snp: trusted roots need a product line: %w", errdefs.ErrInvalidArgument)
		}
		if v.roots == nil {
			v.roots = map[string][]*trust.AMDRootCerts{}
		}
		for _, b := range bundles {
			r := trust.AMDRootCertsProduct(productLine)
			if err := r.FromKDSCertBytes(b); err != nil {
				return fmt.Errorf("snp: bad root bundle: %v: %w", err, errdefs.ErrInvalidArgument)
			}
			v.roots[productLine] = append(v.roots[productLine], r)
		}
		return nil
	}
}

// Verifier checks SNP evidence on the key broker's side: the report's
// signature through the VCEK/VLEK certificate chain up to AMD's ARK, the
// report-data binding, and the configured policy and reference values.
type Verifier struct {
	measurements [][]byte
	initData     [][]byte
	minTCB       kds.TCBParts
	allowDebug   bool
	allowSMT     bool
	cache        []*x509.Certificate
	roots        map[string][]*trust.AMDRootCerts
	getter       trust.HTTPSGetter
	now          func() time.Time
}

var _ tee.Verifier = (*Verifier)(nil)

// NewVerifier returns a Verifier for cfg.
func NewVerifier(cfg Config, opts ...Opt) (*Verifier, error) {
	v := &Verifier{
		minTCB:     cfg.MinimumTCB.parts(),
		allowDebug: cfg.AllowDebug,
		allowSMT:   !cfg.DisallowSMT,
		now:        time.Now,
	}
	var err error
	if v.measurements, err = decodeHexList("measurements", cfg.Measurements, abi.MeasurementSize); err != nil {
		return nil, err
	}
	if v.initData, err = decodeHexList("init_data_digests", cfg.InitDataDigests, abi.HostDataSize); err != nil {
		return nil, err
	}
	for _, f := range cfg.CertFiles {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("snp: failed to read certificate %s: %w", f, err)
		}
		opts = append([]Opt{WithCertificates(b)}, opts...)
	}
	for _, f := range cfg.RootBundles {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("snp: failed to read root bundle %s: %w", f, err)
		}
		opts = append([]Opt{WithTrustedRoots(cfg.ProductLine, b)}, opts...)
	}
	for _, o := range opts {
		if err := o(v); err != nil {
			return nil, err
		}
	}
	if v.roots == nil {
		if v.roots, err = defaultRoots(); err != nil {
			return nil, err
		}
	}
	return v, nil
}

// defaultRoots are AMD's ARK with both intermediates of every product
// line, as embedded in go-sev-guest: the ASK (certifies VCEKs) and the ASVK
// (certifies VLEKs). go-sev-guest's own fallback has only the ASK chains,
// which would refuse every VLEK-signed report.
func defaultRoots() (map[string][]*trust.AMDRootCerts, error) {
	roots := map[string][]*trust.AMDRootCerts{}
	for _, b := range []struct {
		line   string
		bundle []byte
	}{
		{"Milan", trust.AskArkMilanVcekBytes}, {"Milan", trust.AskArkMilanVlekBytes},
		{"Genoa", trust.AskArkGenoaVcekBytes}, {"Genoa", trust.AskArkGenoaVlekBytes},
		{"Turin", trust.AskArkTurinVcekBytes}, {"Turin", trust.AskArkTurinVlekBytes},
	} {
		r := trust.AMDRootCertsProduct(b.line)
		// One embedded bundle (Turin VLEK) ends in stray whitespace.
		if err := r.FromKDSCertBytes(append(bytes.TrimSpace(b.bundle), '\n')); err != nil {
			return nil, fmt.Errorf("snp: embedded AMD roots for %s: %w", b.line, err)
		}
		roots[b.line] = append(roots[b.line], r)
	}
	return roots, nil
}

// Type returns tee.SNP.
func (v *Verifier) Type() tee.Type { return tee.SNP }

// Verify checks SNP evidence and returns its claims. Errors wrap the
// package's Err* values.
func (v *Verifier) Verify(ctx context.Context, evidence []byte, reportData [tee.ReportDataSize]byte) (c *tee.Claims, err error) {
	// Evidence comes from the network; a parser panic in a vendor library
	// must refuse the evidence, not take the key broker down.
	defer func() {
		if r := recover(); r != nil {
			c, err = nil, fmt.Errorf("snp: evidence crashed the parser: %v: %w", r, errdefs.ErrInvalidArgument)
		}
	}()
	ev, err := ParseEvidence(evidence)
	if err != nil {
		return nil, err
	}
	rep, err := abi.ReportToProto(ev.Report)
	if err != nil {
		return nil, fmt.Errorf("snp: malformed report: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	att := &spb.Attestation{Report: rep, CertificateChain: &spb.CertificateChain{}}
	if len(ev.CertTable) > 0 {
		t, err := parseCertTable(ev.CertTable)
		if err != nil {
			return nil, err
		}
		att.CertificateChain = t.Proto()
	}
	info, err := abi.ParseSignerInfo(rep.GetSignerInfo())
	if err != nil {
		return nil, fmt.Errorf("snp: malformed signer info: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	v.fillFromCache(att, info.SigningKey)

	vopts := &verify.Options{
		DisableCertFetching: v.getter == nil,
		Getter:              v.getter,
		Now:                 v.now(),
		TrustedRoots:        v.roots,
	}
	if err := verify.SnpAttestationContext(ctx, att, vopts); err != nil {
		if errors.Is(err, verify.ErrMissingVlek) || isMissingCert(att, info.SigningKey) {
			return nil, fmt.Errorf("%w: %v", ErrNoEndorsementKey, err)
		}
		log.G(ctx).WithError(err).Debug("snp: report signature verification failed")
		return nil, fmt.Errorf("%w: %v", ErrSignature, err)
	}

	// The signature holds: the fields below are the firmware's.
	if subtle.ConstantTimeCompare(rep.GetReportData(), reportData[:]) != 1 {
		return nil, ErrReportData
	}
	policy, err := abi.ParseSnpPolicy(rep.GetPolicy())
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrPolicy, err)
	}
	if policy.Debug && !v.allowDebug {
		return nil, ErrDebug
	}
	reported := kds.DecomposeTCBVersion(kds.TCBVersion(rep.GetReportedTcb()))
	if !kds.TCBPartsLE(v.minTCB, reported) {
		return nil, fmt.Errorf("%w: reported %s", ErrTCB, tcbString(reported))
	}
	if len(v.measurements) > 0 && !slices.ContainsFunc(v.measurements, equalTo(rep.GetMeasurement())) {
		return nil, fmt.Errorf("%w: %x", ErrMeasurement, rep.GetMeasurement())
	}
	if len(v.initData) > 0 && !slices.ContainsFunc(v.initData, equalTo(rep.GetHostData())) {
		return nil, fmt.Errorf("%w: %x", ErrInitData, rep.GetHostData())
	}
	// Everything else go-sev-guest knows to check, repeating the binding
	// and TCB checks above as a second line.
	vmpl0 := 0
	valOpts := &validate.Options{
		GuestPolicy: abi.SnpPolicy{
			ABIMajor: 0, ABIMinor: 0,
			SMT:   v.allowSMT,
			Debug: v.allowDebug,
		},
		ReportData:                reportData[:],
		MinimumTCB:                v.minTCB,
		MinimumLaunchTCB:          v.minTCB,
		PermitProvisionalFirmware: true,
		VMPL:                      &vmpl0,
	}
	if err := validate.SnpAttestation(att, valOpts); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrPolicy, err)
	}

	c = &tee.Claims{
		TEE:            tee.SNP,
		Measurement:    bytes.Clone(rep.GetMeasurement()),
		InitDataDigest: bytes.Clone(rep.GetHostData()),
		Debug:          policy.Debug,
		Extra: map[string]any{
			"policy":       fmt.Sprintf("%#x", rep.GetPolicy()),
			"vmpl":         rep.GetVmpl(),
			"reported_tcb": tcbString(reported),
			"signer":       info.SigningKey.String(),
			"chip_id":      hex.EncodeToString(rep.GetChipId()),
			"guest_svn":    rep.GetGuestSvn(),
		},
	}
	copy(c.ReportData[:], rep.GetReportData())
	return c, nil
}

// fillFromCache adds a cached endorsement key certificate to att when the
// evidence carried none.
func (v *Verifier) fillFromCache(att *spb.Attestation, key abi.ReportSigner) {
	chain := att.GetCertificateChain()
	rep := att.GetReport()
	for _, c := range v.cache {
		switch key {
		case abi.VcekReportSigner:
			if len(chain.GetVcekCert()) > 0 {
				return
			}
			ext, err := kds.VcekCertificateExtensions(c)
			if err != nil || !bytes.Equal(ext.HWID, rep.GetChipId()) || uint64(ext.TCBVersion) != rep.GetReportedTcb() {
				continue
			}
			chain.VcekCert = c.Raw
		case abi.VlekReportSigner:
			if len(chain.GetVlekCert()) > 0 {
				return
			}
			ext, err := kds.VlekCertificateExtensions(c)
			if err != nil || uint64(ext.TCBVersion) != rep.GetReportedTcb() {
				continue
			}
			chain.VlekCert = c.Raw
		}
	}
}

func isMissingCert(att *spb.Attestation, key abi.ReportSigner) bool {
	switch key {
	case abi.VcekReportSigner:
		return len(att.GetCertificateChain().GetVcekCert()) == 0
	case abi.VlekReportSigner:
		return len(att.GetCertificateChain().GetVlekCert()) == 0
	}
	return false
}

func parseCert(b []byte) (*x509.Certificate, error) {
	if blk, _ := pem.Decode(b); blk != nil {
		b = blk.Bytes
	}
	c, err := x509.ParseCertificate(b)
	if err != nil {
		return nil, fmt.Errorf("snp: bad certificate: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	return c, nil
}

func decodeHexList(name string, in []string, size int) ([][]byte, error) {
	out := make([][]byte, 0, len(in))
	for _, s := range in {
		b, err := hex.DecodeString(s)
		if err != nil || len(b) != size {
			return nil, fmt.Errorf("snp: %s entry %q is not %d hex bytes: %w", name, s, size, errdefs.ErrInvalidArgument)
		}
		out = append(out, b)
	}
	return out, nil
}

func tcbString(t kds.TCBParts) string {
	return fmt.Sprintf("bl=%d tee=%d snp=%d ucode=%d", t.BlSpl, t.TeeSpl, t.SnpSpl, t.UcodeSpl)
}

// equalTo returns a predicate matching byte slices equal to b.
func equalTo(b []byte) func([]byte) bool {
	return func(x []byte) bool { return bytes.Equal(x, b) }
}
