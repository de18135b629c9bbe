package snp

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/google/go-sev-guest/abi"
)

// FuzzParseEvidence feeds arbitrary bytes to the evidence decoder and the
// report and certificate-table parsers behind it. Seeds: testdata/fuzz and
// the real go-sev-guest report.
func FuzzParseEvidence(f *testing.F) {
	f.Add(realEvidence(f, false))
	f.Add(realEvidence(f, true))
	f.Add(wrappingCertTable(f))
	f.Fuzz(func(t *testing.T, b []byte) {
		ev, err := ParseEvidence(b)
		if err != nil {
			return
		}
		if _, err := abi.ReportToProto(ev.Report); err != nil {
			return
		}
		if len(ev.CertTable) > 0 {
			if tbl, err := parseCertTable(ev.CertTable); err == nil {
				_ = tbl.Proto()
			}
		}
	})
}

// FuzzParseCertTable fuzzes the AMD certificate table parser on raw bytes.
func FuzzParseCertTable(f *testing.F) {
	f.Add(abi.CertsFromProto(nil).Marshal())
	f.Add(make([]byte, abi.CertTableEntrySize))
	f.Fuzz(func(t *testing.T, b []byte) {
		if tbl, err := parseCertTable(b); err == nil {
			_ = tbl.Proto()
		}
	})
}

// FuzzVerify runs whole verifications (go-sev-guest verify and validate
// behind ParseEvidence) on mutated evidence; only the seed may pass.
func FuzzVerify(f *testing.F) {
	f.Add(realEvidence(f, false))
	f.Add(realEvidence(f, true))
	v, err := NewVerifier(realConfig(), WithCertificates(readTestdata(f, "vcek.testcer")),
		WithNow(func() time.Time { return realNow }))
	if err != nil {
		f.Fatal(err)
	}
	real := readTestdata(f, "attestation.bin")
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := v.Verify(context.Background(), b, realReportData)
		if err != nil {
			return
		}
		// Anything accepted must carry the real, signed report.
		ev, perr := ParseEvidence(b)
		if perr != nil || !bytes.Equal(ev.Report, real) || c.ReportData != realReportData {
			t.Fatalf("accepted evidence that is not the signed report")
		}
	})
}
