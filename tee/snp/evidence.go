// Package snp is the AMD SEV-SNP backend: the guest's Attester (configfs-tsm
// or /dev/sev-guest), the key broker's Verifier (go-sev-guest verify and
// validate against AMD's roots and reference values) and the host's Launcher
// (QEMU sev-snp-guest options).
package snp

import (
	"encoding/json"
	"fmt"

	"github.com/containerd/errdefs"
	"github.com/google/go-sev-guest/abi"
)

// EvidenceVersion is the version of the Evidence wire format.
const EvidenceVersion = 1

// maxCertTableSize bounds the certificate table carried in evidence. The
// kernel's SNP_GET_EXT_REPORT certificate buffer is at most a few pages.
const maxCertTableSize = 64 * 1024

// Evidence is the SNP evidence wire format: the raw attestation report as
// the AMD firmware signed it, plus the certificate table (the GUID table of
// SNP_GET_EXT_REPORT, or configfs-tsm's auxblob) when the host provides one.
// It is serialized as JSON; byte fields are base64.
type Evidence struct {
	// Version is EvidenceVersion.
	Version int `json:"version"`
	// Report is the raw ATTESTATION_REPORT structure (abi.ReportSize bytes).
	Report []byte `json:"report"`
	// CertTable is the AMD certificate table (VCEK or VLEK, ASK, ARK, ...);
	// optional.
	CertTable []byte `json:"cert_table,omitempty"`
	// Provider names where the report came from ("configfs:sev_guest" or
	// "dev:sev-guest"). Informational only, not trusted.
	Provider string `json:"provider,omitempty"`
}

// Marshal serializes e.
func (e *Evidence) Marshal() ([]byte, error) {
	return json.Marshal(e)
}

// ParseEvidence decodes and structurally checks SNP evidence. It does not
// verify any signature.
func ParseEvidence(b []byte) (*Evidence, error) {
	var e Evidence
	if err := json.Unmarshal(b, &e); err != nil {
		return nil, fmt.Errorf("snp: failed to decode evidence: %w", errdefs.ErrInvalidArgument)
	}
	if e.Version != EvidenceVersion {
		return nil, fmt.Errorf("snp: unsupported evidence version %d: %w", e.Version, errdefs.ErrInvalidArgument)
	}
	if len(e.Report) < abi.ReportSize {
		return nil, fmt.Errorf("snp: report is %d bytes, want at least %d: %w", len(e.Report), abi.ReportSize, errdefs.ErrInvalidArgument)
	}
	// The SEV guest interface returns a 4000-byte buffer of which the
	// report is the first abi.ReportSize bytes; keep exactly the report.
	e.Report = e.Report[:abi.ReportSize]
	if err := abi.ValidateReportFormat(e.Report); err != nil {
		return nil, fmt.Errorf("snp: malformed report: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	if len(e.CertTable) > maxCertTableSize {
		return nil, fmt.Errorf("snp: certificate table is %d bytes, limit %d: %w", len(e.CertTable), maxCertTableSize, errdefs.ErrInvalidArgument)
	}
	if len(e.CertTable) > 0 {
		if _, err := parseCertTable(e.CertTable); err != nil {
			return nil, err
		}
	}
	return &e, nil
}

// parseCertTable decodes an AMD certificate table. Entry bounds are checked
// with 64-bit arithmetic before abi.CertTable.Unmarshal, whose 32-bit
// offset+length sum can wrap around and slice out of range.
func parseCertTable(b []byte) (*abi.CertTable, error) {
	entries, err := abi.ParseSnpCertTableHeader(b)
	if err != nil {
		return nil, fmt.Errorf("snp: malformed certificate table: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	for i, ent := range entries {
		if uint64(ent.Offset)+uint64(ent.Length) > uint64(len(b)) {
			return nil, fmt.Errorf("snp: certificate table entry %d out of range: %w", i, errdefs.ErrInvalidArgument)
		}
	}
	var t abi.CertTable
	if err := t.Unmarshal(b); err != nil {
		return nil, fmt.Errorf("snp: malformed certificate table: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	return &t, nil
}
