package snp

import (
	"testing"

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
