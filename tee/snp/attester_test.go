package snp

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/google/go-configfs-tsm/configfs/configfsi"
	"github.com/google/go-configfs-tsm/configfs/faketsm"
	"github.com/google/go-sev-guest/abi"
	labi "github.com/google/go-sev-guest/client/linuxabi"
	"github.com/google/go-sev-guest/kds"
	sevtest "github.com/google/go-sev-guest/testing"

	"github.com/raksh-project/raksh/tee"
)

// fakeConfigfs is a configfs-tsm report subsystem (go-configfs-tsm's
// faketsm) whose provider returns outblob/auxblob and records the inblob
// the attester wrote.
func fakeConfigfs(provider string, outblob, auxblob []byte, gotInblob *[]byte) configfsi.Client {
	rs := faketsm.ReportV7(0)
	fallback := rs.ReadAttr
	rs.ReadAttr = func(e *faketsm.ReportEntry, attr string) ([]byte, error) {
		switch attr {
		case "provider":
			return []byte(provider + "\n"), nil
		case "outblob":
			*gotInblob = bytes.Clone(e.InAttrs["inblob"].Value)
			return outblob, nil
		case "auxblob":
			return auxblob, nil
		}
		return fallback(e, attr)
	}
	return &faketsm.Client{Subsystems: map[string]configfsi.Client{"report": rs}}
}

func TestConfigfsAttester(t *testing.T) {
	rep := readTestdata(t, "attestation.bin")
	var inblob []byte
	a := NewConfigfsAttester(fakeConfigfs(ConfigfsProvider, rep, nil, &inblob))
	if a.Type() != tee.SNP {
		t.Fatal(a.Type())
	}
	ev, err := a.Evidence(context.Background(), realReportData)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(inblob, realReportData[:]) {
		t.Fatalf("attester wrote inblob %x, want the report data", inblob)
	}
	v, err := NewVerifier(realConfig(), WithCertificates(readTestdata(t, "vcek.testcer")),
		WithNow(func() time.Time { return realNow }))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(context.Background(), ev, realReportData); err != nil {
		t.Fatalf("Verify(attester evidence) = %v", err)
	}
	// The (canned) report binds {1,2,3,4,5}; a verifier expecting the
	// nonce of another session refuses it.
	if _, err := v.Verify(context.Background(), ev, [tee.ReportDataSize]byte{7}); !errors.Is(err, ErrReportData) {
		t.Fatalf("Verify with other nonce = %v, want ErrReportData", err)
	}
}

func TestConfigfsAttesterWrongProvider(t *testing.T) {
	var inblob []byte
	a := NewConfigfsAttester(fakeConfigfs("tdx_guest", make([]byte, 1024), nil, &inblob))
	if _, err := a.Evidence(context.Background(), realReportData); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("Evidence = %v, want failed precondition", err)
	}
}

func TestConfigfsAttesterGarbageReport(t *testing.T) {
	var inblob []byte
	a := NewConfigfsAttester(fakeConfigfs(ConfigfsProvider, []byte("not a report"), nil, &inblob))
	if _, err := a.Evidence(context.Background(), realReportData); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("Evidence = %v, want invalid argument", err)
	}
}

// TestDeviceAttesterEndToEnd runs the /dev/sev-guest path on go-sev-guest's
// mock device, which signs whatever report it returns with a test-only
// VCEK: the nonce handed to the attester reaches REPORT_DATA, and the
// verifier (trusting the test-only ARK/ASK) binds it.
func TestDeviceAttesterEndToEnd(t *testing.T) {
	now := time.Now()
	tcb := kds.TCBParts{BlSpl: 3, SnpSpl: 8, UcodeSpl: 115}
	chipID := make([]byte, abi.ChipIDSize)
	chipID[1] = 0x77
	s := testOnlySigner(t, tcb, chipID, now)
	table, err := s.CertTableBytes()
	if err != nil {
		t.Fatal(err)
	}
	var nonce [tee.ReportDataSize]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		t.Fatal(err)
	}
	initData := sha256.Sum256([]byte("pod init data"))
	raw := signedReport(t, s, tcb, chipID, synth{policy: DefaultPolicy, hostData: initData[:], rd: nonce})
	var rsp labi.SnpReportRespABI
	copy(rsp.Data[:], raw)
	dev := &sevtest.Device{
		ReportDataRsp: map[string]any{hex.EncodeToString(nonce[:]): &sevtest.GetReportResponse{Resp: rsp}},
		Certs:         table,
		Signer:        s,
	}
	if err := dev.Open(""); err != nil {
		t.Fatal(err)
	}
	ev, err := NewDeviceAttester(dev).Evidence(context.Background(), nonce)
	if err != nil {
		t.Fatal(err)
	}
	roots := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.Ask.Raw}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.Ark.Raw})...)
	v, err := NewVerifier(Config{InitDataDigests: []string{hex.EncodeToString(initData[:])}},
		WithTrustedRoots(kds.ProductLine(abi.DefaultSevProduct()), roots))
	if err != nil {
		t.Fatal(err)
	}
	c, err := v.Verify(context.Background(), ev, nonce)
	if err != nil {
		t.Fatalf("Verify(device evidence) = %v", err)
	}
	if c.ReportData != nonce || c.Debug || !bytes.Equal(c.InitDataDigest, initData[:]) {
		t.Fatalf("claims %+v", c)
	}
	other := nonce
	other[0] ^= 1
	if _, err := v.Verify(context.Background(), ev, other); !errors.Is(err, ErrReportData) {
		t.Fatalf("Verify(other nonce) = %v, want ErrReportData", err)
	}
	// A nonce the device has no report for: the ioctl fails, no evidence.
	if _, err := NewDeviceAttester(dev).Evidence(context.Background(), other); err == nil {
		t.Fatal("Evidence for an unknown nonce succeeded")
	}
}
