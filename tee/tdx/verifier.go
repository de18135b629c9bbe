package tdx

import (
	"bytes"
	"context"
	"crypto/subtle"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/google/go-tdx-guest/abi"
	pb "github.com/google/go-tdx-guest/proto/tdx"
	"github.com/google/go-tdx-guest/validate"
	"github.com/google/go-tdx-guest/verify"
	"github.com/google/go-tdx-guest/verify/trust"

	"github.com/raksh-project/raksh/tee"
)

// Verification failures. Each wraps errdefs.ErrPermissionDenied.
var (
	// ErrSignature: the quote signature, the QE report or the PCK
	// certificate chain does not verify against Intel's SGX root.
	ErrSignature = fmt.Errorf("tdx: quote signature or certificate chain invalid: %w", errdefs.ErrPermissionDenied)
	// ErrCollateral: the TCB info / QE identity collateral does not verify
	// or does not accept the platform's TCB.
	ErrCollateral = fmt.Errorf("tdx: collateral check failed: %w", errdefs.ErrPermissionDenied)
	// ErrReportData: REPORTDATA is not the expected value.
	ErrReportData = fmt.Errorf("tdx: report data mismatch: %w", errdefs.ErrPermissionDenied)
	// ErrDebug: the TD's attributes allow debugging.
	ErrDebug = fmt.Errorf("tdx: TD attributes allow debug: %w", errdefs.ErrPermissionDenied)
	// ErrTCB: TEE_TCB_SVN is below the configured minimum.
	ErrTCB = fmt.Errorf("tdx: TEE TCB SVN below minimum: %w", errdefs.ErrPermissionDenied)
	// ErrMeasurement: MRTD is not a reference value.
	ErrMeasurement = fmt.Errorf("tdx: MRTD not in reference values: %w", errdefs.ErrPermissionDenied)
	// ErrRTMR: an RTMR differs from its reference value.
	ErrRTMR = fmt.Errorf("tdx: RTMR differs from reference value: %w", errdefs.ErrPermissionDenied)
	// ErrInitData: MRCONFIGID is not an accepted init-data digest.
	ErrInitData = fmt.Errorf("tdx: MRCONFIGID is not an accepted init-data digest: %w", errdefs.ErrPermissionDenied)
	// ErrPolicy: another go-tdx-guest validation check failed.
	ErrPolicy = fmt.Errorf("tdx: quote violates policy: %w", errdefs.ErrPermissionDenied)
)

// tdAttributesDebug is TD_ATTRIBUTES bit 0 (DEBUG).
const tdAttributesDebug = 1

// MrConfigIDSize is the size of MRCONFIGID.
const MrConfigIDSize = 48

// MrConfigID returns the MRCONFIGID value that binds an init-data digest:
// a SHA-384 digest (48 bytes) as is, a SHA-256 digest (32 bytes) followed
// by 16 zero bytes.
func MrConfigID(digest []byte) ([]byte, error) {
	switch len(digest) {
	case MrConfigIDSize:
		return bytes.Clone(digest), nil
	case 32:
		out := make([]byte, MrConfigIDSize)
		copy(out, digest)
		return out, nil
	}
	return nil, fmt.Errorf("tdx: init-data digest is %d bytes, want 32 (SHA-256) or 48 (SHA-384): %w", len(digest), errdefs.ErrInvalidArgument)
}

// Config holds the TDX reference values and trust settings of a key broker.
type Config struct {
	// MRTDs are the accepted MRTD values (hex, 48 bytes): the measurement
	// of the TD's initial memory (the TDVF firmware). Empty accepts any.
	MRTDs []string `toml:"mrtds"`
	// RTMRs are the expected RTMR0..3 (hex, 48 bytes); an empty string or
	// a missing entry leaves that RTMR unchecked. RTMR1/2 cover the kernel,
	// command line and initrd when TDVF measures a direct-boot kernel.
	RTMRs []string `toml:"rtmrs"`
	// InitDataDigests are the accepted init-data digests (hex, 32 or 48
	// bytes; see MrConfigID). Empty leaves the check to the broker policy.
	InitDataDigests []string `toml:"init_data_digests"`
	// MinimumTEETCBSVN is the component-wise minimum TEE_TCB_SVN (hex, 16
	// bytes). Empty does not check.
	MinimumTEETCBSVN string `toml:"minimum_tee_tcb_svn"`
	// MRSEAMs are the accepted TDX module measurements (hex, 48 bytes).
	MRSEAMs []string `toml:"mrseams"`
	// AllowDebug accepts debuggable TDs. Never set in production.
	AllowDebug bool `toml:"allow_debug"`
	// RootCertFile replaces the Intel SGX root CA embedded in go-tdx-guest
	// (PEM).
	RootCertFile string `toml:"root_cert_file"`
}

// Opt configures a Verifier.
type Opt func(*Verifier) error

// WithNow fixes the time at which certificates and collateral are checked.
func WithNow(now func() time.Time) Opt {
	return func(v *Verifier) error { v.now = now; return nil }
}

// WithCollateral makes the verifier fetch and check TCB info, QE identity
// and CRLs through g (Intel PCS or a PCCS; go-tdx-guest's
// trust.DefaultHTTPSGetter() for the PCS). Without it the verifier never
// touches the network and checks the quote's own PCK chain only.
func WithCollateral(g trust.HTTPSGetter) Opt {
	return func(v *Verifier) error { v.collateral = g; return nil }
}

// WithRoots replaces the embedded Intel SGX root CA.
func WithRoots(pool *x509.CertPool) Opt {
	return func(v *Verifier) error { v.roots = pool; return nil }
}

// Verifier checks TDX evidence on the key broker's side.
type Verifier struct {
	mrtds      [][]byte
	rtmrs      [][]byte
	initData   [][]byte
	minTCB     []byte
	mrseams    [][]byte
	allowDebug bool
	roots      *x509.CertPool
	collateral trust.HTTPSGetter
	now        func() time.Time
}

var _ tee.Verifier = (*Verifier)(nil)

// NewVerifier returns a Verifier for cfg.
func NewVerifier(cfg Config, opts ...Opt) (*Verifier, error) {
	v := &Verifier{allowDebug: cfg.AllowDebug, now: time.Now}
	var err error
	if v.mrtds, err = decodeHexList("mrtds", cfg.MRTDs, 48); err != nil {
		return nil, err
	}
	if v.mrseams, err = decodeHexList("mrseams", cfg.MRSEAMs, 48); err != nil {
		return nil, err
	}
	if len(cfg.RTMRs) > 4 {
		return nil, fmt.Errorf("tdx: %d rtmrs, at most 4: %w", len(cfg.RTMRs), errdefs.ErrInvalidArgument)
	}
	for i, s := range cfg.RTMRs {
		if s == "" {
			v.rtmrs = append(v.rtmrs, nil)
			continue
		}
		b, err := hex.DecodeString(s)
		if err != nil || len(b) != 48 {
			return nil, fmt.Errorf("tdx: rtmrs[%d] is not 48 hex bytes: %w", i, errdefs.ErrInvalidArgument)
		}
		v.rtmrs = append(v.rtmrs, b)
	}
	for _, s := range cfg.InitDataDigests {
		b, err := hex.DecodeString(s)
		if err != nil {
			return nil, fmt.Errorf("tdx: init_data_digests entry %q is not hex: %w", s, errdefs.ErrInvalidArgument)
		}
		id, err := MrConfigID(b)
		if err != nil {
			return nil, err
		}
		v.initData = append(v.initData, id)
	}
	if cfg.MinimumTEETCBSVN != "" {
		if v.minTCB, err = hex.DecodeString(cfg.MinimumTEETCBSVN); err != nil || len(v.minTCB) != abi.TeeTcbSvnSize {
			return nil, fmt.Errorf("tdx: minimum_tee_tcb_svn is not %d hex bytes: %w", abi.TeeTcbSvnSize, errdefs.ErrInvalidArgument)
		}
	}
	if cfg.RootCertFile != "" {
		b, err := os.ReadFile(cfg.RootCertFile)
		if err != nil {
			return nil, fmt.Errorf("tdx: failed to read root certificate: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("tdx: no certificate in %s: %w", cfg.RootCertFile, errdefs.ErrInvalidArgument)
		}
		v.roots = pool
	}
	for _, o := range opts {
		if err := o(v); err != nil {
			return nil, err
		}
	}
	return v, nil
}

// Type returns tee.TDX.
func (v *Verifier) Type() tee.Type { return tee.TDX }

// Verify checks TDX evidence and returns its claims. Errors wrap the
// package's Err* values.
func (v *Verifier) Verify(ctx context.Context, evidence []byte, reportData [tee.ReportDataSize]byte) (c *tee.Claims, err error) {
	// Evidence comes from the network; a parser panic in a vendor library
	// must refuse the evidence, not take the key broker down.
	defer func() {
		if r := recover(); r != nil {
			c, err = nil, fmt.Errorf("tdx: evidence crashed the parser: %v: %w", r, errdefs.ErrInvalidArgument)
		}
	}()
	_, q, err := ParseEvidence(evidence)
	if err != nil {
		return nil, err
	}
	// go-tdx-guest keeps per-call state in Options: build fresh ones.
	vopts := &verify.Options{
		Now:          v.now(),
		TrustedRoots: v.roots,
	}
	if v.collateral != nil {
		vopts.GetCollateral = true
		vopts.CheckRevocations = true
		vopts.Getter = v.collateral
	}
	if err := verify.TdxQuote(q, vopts); err != nil {
		log.G(ctx).WithError(err).Debug("tdx: quote verification failed")
		if v.collateral != nil && !isSignatureError(q, v.roots, vopts.Now) {
			return nil, fmt.Errorf("%w: %v", ErrCollateral, err)
		}
		return nil, fmt.Errorf("%w: %v", ErrSignature, err)
	}
	body := q.GetTdQuoteBody()
	if err := v.checkBody(body, reportData); err != nil {
		return nil, err
	}
	// Second line: go-tdx-guest's own field validation (XFAM and
	// TD_ATTRIBUTES fixed bits, and the bindings checked above).
	vo := &validate.Options{TdQuoteBodyOptions: validate.TdQuoteBodyOptions{
		ReportData:       reportData[:],
		MinimumTeeTcbSvn: v.minTCB,
	}}
	if err := validate.TdxQuote(q, vo); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrPolicy, err)
	}

	attrs := binary.LittleEndian.Uint64(body.GetTdAttributes())
	rtmrs := make([]string, 0, len(body.GetRtmrs()))
	for _, r := range body.GetRtmrs() {
		rtmrs = append(rtmrs, hex.EncodeToString(r))
	}
	c = &tee.Claims{
		TEE:            tee.TDX,
		Measurement:    bytes.Clone(body.GetMrTd()),
		InitDataDigest: bytes.Clone(body.GetMrConfigId()),
		Debug:          attrs&tdAttributesDebug != 0,
		Extra: map[string]any{
			"rtmrs":         rtmrs,
			"mrseam":        hex.EncodeToString(body.GetMrSeam()),
			"mrowner":       hex.EncodeToString(body.GetMrOwner()),
			"tee_tcb_svn":   hex.EncodeToString(body.GetTeeTcbSvn()),
			"td_attributes": fmt.Sprintf("%#016x", attrs),
			"xfam":          hex.EncodeToString(body.GetXfam()),
			"collateral":    v.collateral != nil,
		},
	}
	copy(c.ReportData[:], body.GetReportData())
	return c, nil
}

// checkBody applies the reference values to a quote body whose signature
// has been verified.
func (v *Verifier) checkBody(body *pb.TDQuoteBody, reportData [tee.ReportDataSize]byte) error {
	if subtle.ConstantTimeCompare(body.GetReportData(), reportData[:]) != 1 {
		return ErrReportData
	}
	if len(body.GetTdAttributes()) != abi.TdAttributesSize {
		return fmt.Errorf("%w: bad TD attributes size", ErrPolicy)
	}
	if binary.LittleEndian.Uint64(body.GetTdAttributes())&tdAttributesDebug != 0 && !v.allowDebug {
		return ErrDebug
	}
	if v.minTCB != nil {
		svn := body.GetTeeTcbSvn()
		if len(svn) != len(v.minTCB) {
			return fmt.Errorf("%w: bad TEE_TCB_SVN size", ErrTCB)
		}
		for i := range svn {
			if svn[i] < v.minTCB[i] {
				return fmt.Errorf("%w: %x < %x", ErrTCB, svn, v.minTCB)
			}
		}
	}
	if len(v.mrseams) > 0 && !slices.ContainsFunc(v.mrseams, equalTo(body.GetMrSeam())) {
		return fmt.Errorf("%w: MRSEAM %x not accepted", ErrPolicy, body.GetMrSeam())
	}
	if len(v.mrtds) > 0 && !slices.ContainsFunc(v.mrtds, equalTo(body.GetMrTd())) {
		return fmt.Errorf("%w: %x", ErrMeasurement, body.GetMrTd())
	}
	got := body.GetRtmrs()
	for i, want := range v.rtmrs {
		if want == nil {
			continue
		}
		if i >= len(got) || !bytes.Equal(got[i], want) {
			return fmt.Errorf("%w: RTMR%d", ErrRTMR, i)
		}
	}
	if len(v.initData) > 0 && !slices.ContainsFunc(v.initData, equalTo(body.GetMrConfigId())) {
		return fmt.Errorf("%w: %x", ErrInitData, body.GetMrConfigId())
	}
	return nil
}

// isSignatureError tells whether a failed verification with collateral
// also fails without it, i.e. the quote or its chain is bad rather than
// the collateral.
func isSignatureError(q *pb.QuoteV4, roots *x509.CertPool, now time.Time) bool {
	return verify.TdxQuote(q, &verify.Options{Now: now, TrustedRoots: roots}) != nil
}

func decodeHexList(name string, in []string, size int) ([][]byte, error) {
	out := make([][]byte, 0, len(in))
	for _, s := range in {
		b, err := hex.DecodeString(s)
		if err != nil || len(b) != size {
			return nil, fmt.Errorf("tdx: %s entry %q is not %d hex bytes: %w", name, s, size, errdefs.ErrInvalidArgument)
		}
		out = append(out, b)
	}
	return out, nil
}

// equalTo returns a predicate matching byte slices equal to b.
func equalTo(b []byte) func([]byte) bool {
	return func(x []byte) bool { return bytes.Equal(x, b) }
}
