package tdx

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-configfs-tsm/configfs/configfsi"
	"github.com/google/go-configfs-tsm/configfs/faketsm"
	pb "github.com/google/go-tdx-guest/proto/tdx"

	"github.com/raksh-project/raksh/tee"
)

// TestVerifyTestOnlyPlatform covers what no public signed quote shows: a
// debug TD, and a fresh nonce in REPORTDATA, on quotes signed through a
// test-only PCK hierarchy (see testPlatform).
func TestVerifyTestOnlyPlatform(t *testing.T) {
	p := newTestPlatform(t)
	nonce := [tee.ReportDataSize]byte{0xfe, 0xed}
	debug := func(b *pb.TDQuoteBody) {
		withReportData(nonce)(b)
		b.TdAttributes[0] |= tdAttributesDebug
	}
	for _, tc := range []struct {
		name    string
		mutate  func(*pb.TDQuoteBody)
		cfg     func(*Config)
		noRoots bool
		want    error
	}{
		{name: "fresh nonce, debug off", mutate: withReportData(nonce)},
		{name: "debug TD refused", mutate: debug, want: ErrDebug},
		{name: "debug TD allowed when configured", mutate: debug, cfg: func(c *Config) { c.AllowDebug = true }},
		{name: "test-only hierarchy refused by Intel's root", mutate: withReportData(nonce), noRoots: true, want: ErrSignature},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := sampleConfig()
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			opts := []Opt{WithNow(func() time.Time { return quoteNow })}
			if !tc.noRoots {
				opts = append(opts, WithRoots(p.roots()))
			}
			v, err := NewVerifier(cfg, opts...)
			if err != nil {
				t.Fatal(err)
			}
			c, err := v.Verify(context.Background(), evidenceOf(t, p.quote(t, tc.mutate)), nonce)
			t.Logf("Verify: %v", err)
			if !errors.Is(err, tc.want) || (tc.want == nil && err != nil) {
				t.Fatalf("Verify = %v; want %v", err, tc.want)
			}
			if tc.want == nil && c.ReportData != nonce {
				t.Fatalf("claims report data %x", c.ReportData)
			}
		})
	}
}

// TestAttesterEndToEndTestOnlyPlatform runs the configfs-tsm attester on a
// fake TSM whose "quoting enclave" signs a quote over whatever inblob the
// attester wrote: the broker's nonce travels into REPORTDATA and back.
func TestAttesterEndToEndTestOnlyPlatform(t *testing.T) {
	p := newTestPlatform(t)
	rs := faketsm.ReportV7(0)
	fallback := rs.ReadAttr
	rs.ReadAttr = func(e *faketsm.ReportEntry, attr string) ([]byte, error) {
		switch attr {
		case "provider":
			return []byte(ConfigfsProvider + "\n"), nil
		case "outblob":
			var rd [tee.ReportDataSize]byte
			copy(rd[:], e.InAttrs["inblob"].Value)
			return p.quote(t, withReportData(rd)), nil
		}
		return fallback(e, attr)
	}
	a := NewAttester(&faketsm.Client{Subsystems: map[string]configfsi.Client{"report": rs}})
	v, err := NewVerifier(sampleConfig(), WithRoots(p.roots()), WithNow(func() time.Time { return quoteNow }))
	if err != nil {
		t.Fatal(err)
	}
	var nonce [tee.ReportDataSize]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		t.Fatal(err)
	}
	ev, err := a.Evidence(context.Background(), nonce)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(context.Background(), ev, nonce); err != nil {
		t.Fatalf("Verify(fresh nonce) = %v", err)
	}
	other := nonce
	other[63] ^= 1
	if _, err := v.Verify(context.Background(), ev, other); !errors.Is(err, ErrReportData) {
		t.Fatalf("Verify(other nonce) = %v, want ErrReportData", err)
	}
}

// TestLaunchToVerifyInitData follows the init-data digest from the
// launcher's mrconfigid option, through the TD (the TDX module copies it
// into MRCONFIGID), to the verifier, for SHA-256 and SHA-384 digests.
func TestLaunchToVerifyInitData(t *testing.T) {
	p := newTestPlatform(t)
	l, err := NewLauncher(LaunchConfig{})
	if err != nil {
		t.Fatal(err)
	}
	nonce := [tee.ReportDataSize]byte{3}
	for name, digest := range map[string][]byte{
		"sha256": bytes.Repeat([]byte{0xab}, 32),
		"sha384": bytes.Repeat([]byte{0xcd}, 48),
	} {
		t.Run(name, func(t *testing.T) {
			args, err := l.LaunchArgs(tee.LaunchParams{InitDataDigest: digest, Firmware: "/tdvf.fd"})
			if err != nil {
				t.Fatal(err)
			}
			_, b64, ok := strings.Cut(args.Objects[0], "mrconfigid=")
			if !ok {
				t.Fatalf("no mrconfigid in %q", args.Objects[0])
			}
			mrconfigid, err := base64.StdEncoding.DecodeString(b64)
			if err != nil {
				t.Fatal(err)
			}
			quote := p.quote(t, func(b *pb.TDQuoteBody) {
				withReportData(nonce)(b)
				b.MrConfigId = mrconfigid
			})
			cfg := sampleConfig()
			cfg.InitDataDigests = []string{hex.EncodeToString(digest)}
			v, err := NewVerifier(cfg, WithRoots(p.roots()), WithNow(func() time.Time { return quoteNow }))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := v.Verify(context.Background(), evidenceOf(t, quote), nonce); err != nil {
				t.Fatalf("Verify = %v", err)
			}
			cfg.InitDataDigests = []string{hex.EncodeToString(bytes.Repeat([]byte{0xee}, len(digest)))}
			v, _ = NewVerifier(cfg, WithRoots(p.roots()), WithNow(func() time.Time { return quoteNow }))
			if _, err := v.Verify(context.Background(), evidenceOf(t, quote), nonce); !errors.Is(err, ErrInitData) {
				t.Fatalf("Verify with another init data = %v, want ErrInitData", err)
			}
		})
	}
}
