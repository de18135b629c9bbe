// Package tdx is the Intel TDX backend: the guest's Attester (quotes
// through configfs-tsm), the key broker's Verifier (go-tdx-guest verify and
// validate: PCK chain to Intel's SGX root, quote signature, MRTD, RTMRs,
// MRCONFIGID) and the host's Launcher (QEMU tdx-guest options).
package tdx

import (
	"encoding/json"
	"fmt"

	"github.com/containerd/errdefs"
	"github.com/google/go-tdx-guest/abi"
	pb "github.com/google/go-tdx-guest/proto/tdx"
)

// EvidenceVersion is the version of the Evidence wire format.
const EvidenceVersion = 1

// maxQuoteSize bounds a quote (header, body, signature, QE report and PCK
// certificate chain are a few KiB).
const maxQuoteSize = 64 * 1024

// Evidence is the TDX evidence wire format: a raw TDX quote (version 4) as
// the quoting enclave produced it. It is serialized as JSON; byte fields
// are base64.
type Evidence struct {
	// Version is EvidenceVersion.
	Version int `json:"version"`
	// Quote is the raw quote.
	Quote []byte `json:"quote"`
	// Provider names where the quote came from. Informational only.
	Provider string `json:"provider,omitempty"`
}

// Marshal serializes e.
func (e *Evidence) Marshal() ([]byte, error) {
	return json.Marshal(e)
}

// ParseEvidence decodes TDX evidence and parses its quote. It does not
// verify any signature.
func ParseEvidence(b []byte) (*Evidence, *pb.QuoteV4, error) {
	var e Evidence
	if err := json.Unmarshal(b, &e); err != nil {
		return nil, nil, fmt.Errorf("tdx: failed to decode evidence: %w", errdefs.ErrInvalidArgument)
	}
	if e.Version != EvidenceVersion {
		return nil, nil, fmt.Errorf("tdx: unsupported evidence version %d: %w", e.Version, errdefs.ErrInvalidArgument)
	}
	q, err := ParseQuote(e.Quote)
	if err != nil {
		return nil, nil, err
	}
	return &e, q, nil
}

// ParseQuote parses a raw version 4 TDX quote with go-tdx-guest and checks
// its structure.
func ParseQuote(raw []byte) (*pb.QuoteV4, error) {
	if len(raw) > maxQuoteSize {
		return nil, fmt.Errorf("tdx: quote is %d bytes, limit %d: %w", len(raw), maxQuoteSize, errdefs.ErrInvalidArgument)
	}
	anyQ, err := quoteToProto(raw)
	if err != nil {
		return nil, fmt.Errorf("tdx: malformed quote: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	q, ok := anyQ.(*pb.QuoteV4)
	if !ok {
		return nil, fmt.Errorf("tdx: unsupported quote type %T: %w", anyQ, errdefs.ErrInvalidArgument)
	}
	if err := abi.CheckQuoteV4(q); err != nil {
		return nil, fmt.Errorf("tdx: malformed quote: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	return q, nil
}

// quoteToProto calls abi.QuoteToProto, turning a panic into an error:
// go-tdx-guest v0.3.1 slices out of range on some malformed QE
// authentication data (found by FuzzParseQuote), and evidence comes from
// the network.
func quoteToProto(raw []byte) (q any, err error) {
	defer func() {
		if r := recover(); r != nil {
			q, err = nil, fmt.Errorf("quote parser failed: %v", r)
		}
	}()
	return abi.QuoteToProto(raw)
}
