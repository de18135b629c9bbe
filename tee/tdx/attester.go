package tdx

import (
	"context"
	"fmt"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/google/go-configfs-tsm/configfs/configfsi"
	"github.com/google/go-configfs-tsm/configfs/linuxtsm"
	"github.com/google/go-configfs-tsm/report"

	"github.com/raksh-project/raksh/tee"
)

// ConfigfsProvider is the configfs-tsm provider name of the TDX guest driver.
const ConfigfsProvider = "tdx_guest"

// Attester produces TDX quotes inside the guest through the kernel's
// configfs-tsm report interface (Linux 6.7+). The kernel asks the host's
// quote generation service (QGS, via the VMM's quote-generation-socket)
// to turn the TD report into a quote signed by the quoting enclave.
type Attester struct {
	client configfsi.Client
}

var _ tee.Attester = (*Attester)(nil)

// NewAttester returns an Attester using client; nil uses the real
// /sys/kernel/config.
func NewAttester(client configfsi.Client) *Attester {
	return &Attester{client: client}
}

// Type returns tee.TDX.
func (a *Attester) Type() tee.Type { return tee.TDX }

// Evidence returns an Evidence (JSON) whose quote binds reportData in the
// TD report's REPORTDATA.
func (a *Attester) Evidence(_ context.Context, reportData [tee.ReportDataSize]byte) ([]byte, error) {
	c := a.client
	if c == nil {
		var err error
		if c, err = linuxtsm.MakeClient(); err != nil {
			return nil, fmt.Errorf("tdx: configfs-tsm unavailable: %v: %w", err, errdefs.ErrUnavailable)
		}
	}
	resp, err := report.Get(c, &report.Request{InBlob: reportData[:]})
	if err != nil {
		return nil, fmt.Errorf("tdx: configfs-tsm report failed: %w", err)
	}
	if p := strings.TrimSpace(resp.Provider); p != ConfigfsProvider {
		return nil, fmt.Errorf("tdx: configfs-tsm provider is %q, not %q: %w", p, ConfigfsProvider, errdefs.ErrFailedPrecondition)
	}
	if _, err := ParseQuote(resp.OutBlob); err != nil {
		return nil, err
	}
	return (&Evidence{Version: EvidenceVersion, Quote: resp.OutBlob, Provider: "configfs:" + ConfigfsProvider}).Marshal()
}

var _ tee.InitDataReporter = (*Attester)(nil)

// InitDataDigest implements tee.InitDataReporter: the MRCONFIGID of a
// fresh quote's TD report (set by the VMM at launch).
func (a *Attester) InitDataDigest(ctx context.Context) ([]byte, error) {
	ev, err := a.Evidence(ctx, [tee.ReportDataSize]byte{})
	if err != nil {
		return nil, err
	}
	_, q, err := ParseEvidence(ev)
	if err != nil {
		return nil, err
	}
	return q.GetTdQuoteBody().GetMrConfigId(), nil
}
