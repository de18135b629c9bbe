//go:build integration

package detect

import (
	"context"
	"crypto/rand"
	"os"
	"testing"

	"github.com/containerd/errdefs"
	sevtrust "github.com/google/go-sev-guest/verify/trust"
	tdxtrust "github.com/google/go-tdx-guest/verify/trust"

	"github.com/raksh-project/raksh/tee"
	"github.com/raksh-project/raksh/tee/snp"
	"github.com/raksh-project/raksh/tee/tdx"
)

// TestHardwareEvidence runs inside a confidential guest: detect the TEE,
// produce evidence over a fresh nonce and verify it against the vendor's
// real roots. It skips on machines without a TEE (and needs root for
// configfs-tsm). RAKSH_ALLOW_VENDOR_FETCH=1 lets the verifier fetch a
// missing VCEK from AMD KDS, or TDX collateral from Intel PCS.
func TestHardwareEvidence(t *testing.T) {
	ctx := context.Background()
	res, err := Detect(ctx)
	if errdefs.IsNotFound(err) {
		t.Skip("no hardware TEE in this machine")
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("detected %s via %s", res.Type, res.Source)
	a, err := NewAttester(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var nonce [tee.ReportDataSize]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		t.Fatal(err)
	}
	ev, err := a.Evidence(ctx, nonce)
	if err != nil {
		t.Fatalf("Evidence: %v", err)
	}
	fetch := os.Getenv("RAKSH_ALLOW_VENDOR_FETCH") == "1"
	var v tee.Verifier
	switch res.Type {
	case tee.SNP:
		var opts []snp.Opt
		if fetch {
			opts = append(opts, snp.WithKDSGetter(sevtrust.DefaultHTTPSGetter()))
		}
		v, err = snp.NewVerifier(snp.Config{}, opts...)
	case tee.TDX:
		var opts []tdx.Opt
		if fetch {
			opts = append(opts, tdx.WithCollateral(tdxtrust.DefaultHTTPSGetter()))
		}
		v, err = tdx.NewVerifier(tdx.Config{}, opts...)
	default:
		t.Skipf("no hardware verification for %s here (PEF needs the sealed key's public half)", res.Type)
	}
	if err != nil {
		t.Fatal(err)
	}
	c, err := v.Verify(ctx, ev, nonce)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	t.Logf("measurement %x, init data %x, debug %v, extra %v", c.Measurement, c.InitDataDigest, c.Debug, c.Extra)
	other := nonce
	other[0] ^= 1
	if _, err := v.Verify(ctx, ev, other); err == nil {
		t.Fatal("evidence verified for another nonce")
	}
}
