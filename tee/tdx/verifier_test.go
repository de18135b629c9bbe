package tdx

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	tdxtesting "github.com/google/go-tdx-guest/testing"

	"github.com/raksh-project/raksh/tee"
)

// quoteNow is when go-tdx-guest's own tests check the sample's
// certificates and collateral.
var quoteNow = time.Date(2023, time.July, 1, 1, 0, 0, 0, time.UTC)

const (
	sampleMRTD  = "6363b8043668a3ad953278e10389574d326c6749fb78aa810ecd9336923db86f22fc00b8dcd404bc10d5e119d7215cbb"
	sampleRD    = "6c62dec1b8191749a31dab490be532a35944dea47caef1f980863993d9899545eb7406a38d1eed313b987a467dacead6f0c87a6d766c66f6f29f8acb281f1113"
	sampleRTMR0 = "2927da70461cd63266f43230cc1849c03ef25ebe490062a801d8fcc80af42976823adf08f833c1e50b51779c6593f32a"
	sampleRTMR2 = "8652f0caaba7e215ea442dc36a4499d8fec3362f3a0b2ca151cbe4b3e6466fe59c7368b3c2287fc7c3bf5c924eb4424e"

	// Offsets into the raw v4 quote: 48-byte header, then the TD quote
	// body (MRTD at +136), then the 4-byte signed data size and the
	// ECDSA signature.
	offMRTD      = 48 + 136
	offSignature = 48 + 584 + 4
)

func sampleQuote(t testing.TB) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "tdx_prod_quote_SPR_E4.dat"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func sampleReportData(t testing.TB) [tee.ReportDataSize]byte {
	var rd [tee.ReportDataSize]byte
	b, _ := hex.DecodeString(sampleRD)
	copy(rd[:], b)
	return rd
}

func evidenceOf(t testing.TB, quote []byte) []byte {
	t.Helper()
	b, err := (&Evidence{Version: EvidenceVersion, Quote: quote}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func sampleConfig() Config {
	return Config{
		MRTDs:            []string{sampleMRTD},
		RTMRs:            []string{sampleRTMR0, "", sampleRTMR2},
		InitDataDigests:  []string{hex.EncodeToString(make([]byte, 48))},
		MinimumTEETCBSVN: "03000400000000000000000000000000",
	}
}

func TestVerifySampleQuote(t *testing.T) {
	v, err := NewVerifier(sampleConfig(), WithNow(func() time.Time { return quoteNow }))
	if err != nil {
		t.Fatal(err)
	}
	rd := sampleReportData(t)
	c, err := v.Verify(context.Background(), evidenceOf(t, sampleQuote(t)), rd)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if c.TEE != tee.TDX || hex.EncodeToString(c.Measurement) != sampleMRTD || c.Debug || c.ReportData != rd {
		t.Errorf("unexpected claims %+v", c)
	}
	if len(c.InitDataDigest) != MrConfigIDSize {
		t.Errorf("init data digest %x", c.InitDataDigest)
	}
	if rtmrs := c.Extra["rtmrs"].([]string); len(rtmrs) != 4 || rtmrs[2] != sampleRTMR2 {
		t.Errorf("rtmrs %v", rtmrs)
	}
}

func selfSignedPool(t testing.TB) *x509.CertPool {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Intel SGX Root CA"},
		NotBefore: quoteNow.Add(-time.Hour), NotAfter: quoteNow.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	p := x509.NewCertPool()
	p.AddCert(c)
	return p
}

func TestVerifySampleQuoteNegative(t *testing.T) {
	other384 := sha512.Sum384([]byte("another pod's init data"))
	flip := func(off int) func([]byte) []byte {
		return func(q []byte) []byte { q[off] ^= 0x01; return q }
	}
	for _, tc := range []struct {
		name  string
		cfg   func(*Config)
		quote func([]byte) []byte
		rd    *[tee.ReportDataSize]byte
		now   time.Time
		opts  []Opt
		want  error
	}{
		{name: "flipped MRTD byte", quote: flip(offMRTD), want: ErrSignature},
		{name: "flipped signature byte", quote: flip(offSignature + 3), want: ErrSignature},
		{name: "wrong reference MRTD", cfg: func(c *Config) { c.MRTDs = []string{hex.EncodeToString(make([]byte, 48))} }, want: ErrMeasurement},
		{name: "wrong RTMR2", cfg: func(c *Config) { c.RTMRs = []string{"", "", sampleRTMR0} }, want: ErrRTMR},
		{name: "replayed report data", rd: &[tee.ReportDataSize]byte{1}, want: ErrReportData},
		{name: "wrong MRCONFIGID", cfg: func(c *Config) { c.InitDataDigests = []string{hex.EncodeToString(other384[:])} }, want: ErrInitData},
		{name: "TEE TCB too low", cfg: func(c *Config) { c.MinimumTEETCBSVN = "03000500000000000000000000000000" }, want: ErrTCB},
		{name: "wrong MRSEAM", cfg: func(c *Config) { c.MRSEAMs = []string{hex.EncodeToString(make([]byte, 48))} }, want: ErrPolicy},
		{name: "certificates expired", now: time.Date(2053, 7, 1, 0, 0, 0, 0, time.UTC), want: ErrSignature},
		{name: "untrusted root", opts: []Opt{WithRoots(selfSignedPool(t))}, want: ErrSignature},
		// go-tdx-guest's sample PCS responses (TCB info for FMSPC
		// 50806f000000) have no TCB level matching the sample quote: the
		// collateral path is engaged and fails closed.
		{name: "collateral without matching TCB level", opts: []Opt{WithCollateral(tdxtesting.TestGetter)}, want: ErrCollateral},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := sampleConfig()
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			now := quoteNow
			if !tc.now.IsZero() {
				now = tc.now
			}
			v, err := NewVerifier(cfg, append([]Opt{WithNow(func() time.Time { return now })}, tc.opts...)...)
			if err != nil {
				t.Fatal(err)
			}
			q := sampleQuote(t)
			if tc.quote != nil {
				q = tc.quote(q)
			}
			rd := sampleReportData(t)
			if tc.rd != nil {
				rd = *tc.rd
			}
			c, err := v.Verify(context.Background(), evidenceOf(t, q), rd)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Verify = %v, %v; want %v", c, err, tc.want)
			}
			if !errdefs.IsPermissionDenied(err) {
				t.Errorf("%v is not permission denied", err)
			}
		})
	}
}

// TestCheckBodyDebug covers the debug attribute: no public signed quote of
// a debug TD exists, so the policy check runs on the sample's verified
// body with TD_ATTRIBUTES bit 0 set.
func TestCheckBodyDebug(t *testing.T) {
	q, err := ParseQuote(sampleQuote(t))
	if err != nil {
		t.Fatal(err)
	}
	b := q.GetTdQuoteBody()
	b.TdAttributes[0] |= tdAttributesDebug
	rd := sampleReportData(t)
	v, _ := NewVerifier(sampleConfig())
	if err := v.checkBody(b, rd); !errors.Is(err, ErrDebug) {
		t.Fatalf("checkBody(debug) = %v, want ErrDebug", err)
	}
	cfg := sampleConfig()
	cfg.AllowDebug = true
	v, _ = NewVerifier(cfg)
	if err := v.checkBody(b, rd); err != nil {
		t.Fatalf("checkBody(debug, allowed) = %v", err)
	}
	// And the full path: a debug bit flipped into the signed quote breaks
	// the signature before any policy runs.
	raw := sampleQuote(t)
	raw[48+16+48+48+8] |= tdAttributesDebug
	v, _ = NewVerifier(sampleConfig(), WithNow(func() time.Time { return quoteNow }))
	if _, err := v.Verify(context.Background(), evidenceOf(t, raw), rd); !errors.Is(err, ErrSignature) {
		t.Fatalf("Verify(debug bit flipped) = %v, want ErrSignature", err)
	}
}

func TestMrConfigID(t *testing.T) {
	s256 := sha256.Sum256([]byte("x"))
	s384 := sha512.Sum384([]byte("x"))
	got, err := MrConfigID(s256[:])
	if err != nil || len(got) != 48 || string(got[:32]) != string(s256[:]) || string(got[32:]) != string(make([]byte, 16)) {
		t.Fatalf("MrConfigID(sha256) = %x, %v", got, err)
	}
	if got, err := MrConfigID(s384[:]); err != nil || string(got) != string(s384[:]) {
		t.Fatalf("MrConfigID(sha384) = %x, %v", got, err)
	}
	if _, err := MrConfigID(make([]byte, 20)); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("MrConfigID(20 bytes) = %v", err)
	}
}

func TestVerifyMalformed(t *testing.T) {
	v, err := NewVerifier(Config{})
	if err != nil {
		t.Fatal(err)
	}
	truncated := sampleQuote(t)[:1000]
	badVer, _ := (&Evidence{Version: 2, Quote: sampleQuote(t)}).Marshal()
	for name, ev := range map[string][]byte{
		"not json":        []byte("]"),
		"empty quote":     evidenceOf(t, nil),
		"truncated quote": evidenceOf(t, truncated),
		"unknown version": badVer,
		"huge quote":      evidenceOf(t, make([]byte, maxQuoteSize+1)),
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := v.Verify(context.Background(), ev, [64]byte{}); !errdefs.IsInvalidArgument(err) {
				t.Fatalf("Verify = %v, want invalid argument", err)
			}
		})
	}
}

func TestNewVerifierBadConfig(t *testing.T) {
	for name, cfg := range map[string]Config{
		"short mrtd":     {MRTDs: []string{"00"}},
		"five rtmrs":     {RTMRs: []string{"", "", "", "", ""}},
		"bad rtmr":       {RTMRs: []string{"zz"}},
		"20-byte digest": {InitDataDigests: []string{hex.EncodeToString(make([]byte, 20))}},
		"bad tcb":        {MinimumTEETCBSVN: "0102"},
		"missing root":   {RootCertFile: "testdata/nope.pem"},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := NewVerifier(cfg); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}
