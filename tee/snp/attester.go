package snp

import (
	"context"
	"fmt"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/google/go-configfs-tsm/configfs/configfsi"
	"github.com/google/go-configfs-tsm/configfs/linuxtsm"
	"github.com/google/go-configfs-tsm/report"
	"github.com/google/go-sev-guest/abi"
	sevclient "github.com/google/go-sev-guest/client"

	"github.com/raksh-project/raksh/tee"
)

// ConfigfsProvider is the configfs-tsm provider name of the SEV guest driver.
const ConfigfsProvider = "sev_guest"

// DevicePath is the SEV guest device of older kernels.
const DevicePath = "/dev/sev-guest"

// reportSource fetches a raw report and certificate table for reportData.
type reportSource func(ctx context.Context, reportData [tee.ReportDataSize]byte) (rep, certs []byte, provider string, err error)

// Attester produces SNP evidence inside the guest.
type Attester struct {
	src reportSource
}

var _ tee.Attester = (*Attester)(nil)

// NewConfigfsAttester returns an Attester that asks the kernel's configfs-tsm
// report interface (/sys/kernel/config/tsm/report, Linux 6.7+) for an
// extended report. client is the configfs client; nil uses the real
// /sys/kernel/config.
func NewConfigfsAttester(client configfsi.Client) *Attester {
	return &Attester{src: func(_ context.Context, rd [tee.ReportDataSize]byte) ([]byte, []byte, string, error) {
		c := client
		if c == nil {
			var err error
			if c, err = linuxtsm.MakeClient(); err != nil {
				return nil, nil, "", fmt.Errorf("snp: configfs-tsm unavailable: %v: %w", err, errdefs.ErrUnavailable)
			}
		}
		resp, err := report.Get(c, &report.Request{InBlob: rd[:], GetAuxBlob: true})
		if err != nil {
			return nil, nil, "", fmt.Errorf("snp: configfs-tsm report failed: %w", err)
		}
		if p := strings.TrimSpace(resp.Provider); p != ConfigfsProvider {
			return nil, nil, "", fmt.Errorf("snp: configfs-tsm provider is %q, not %q: %w", p, ConfigfsProvider, errdefs.ErrFailedPrecondition)
		}
		return resp.OutBlob, resp.AuxBlob, "configfs:" + ConfigfsProvider, nil
	}}
}

// NewDeviceAttester returns an Attester that uses the SNP_GET_EXT_REPORT
// ioctl of /dev/sev-guest through go-sev-guest. d is the device; nil opens
// DevicePath on each call.
func NewDeviceAttester(d sevclient.Device) *Attester {
	return &Attester{src: func(_ context.Context, rd [tee.ReportDataSize]byte) ([]byte, []byte, string, error) {
		dev := d
		if dev == nil {
			ld, err := sevclient.OpenDevice()
			if err != nil {
				return nil, nil, "", fmt.Errorf("snp: failed to open %s: %v: %w", DevicePath, err, errdefs.ErrUnavailable)
			}
			defer ld.Close()
			dev = ld
		}
		rep, certs, err := sevclient.GetRawExtendedReport(dev, rd)
		if err != nil {
			return nil, nil, "", fmt.Errorf("snp: SNP_GET_EXT_REPORT failed: %w", err)
		}
		return rep, certs, "dev:sev-guest", nil
	}}
}

// Type returns tee.SNP.
func (a *Attester) Type() tee.Type { return tee.SNP }

// Evidence returns an Evidence (JSON) whose report binds reportData in its
// REPORT_DATA field.
func (a *Attester) Evidence(ctx context.Context, reportData [tee.ReportDataSize]byte) ([]byte, error) {
	rep, certs, provider, err := a.src(ctx, reportData)
	if err != nil {
		return nil, err
	}
	ev := &Evidence{Version: EvidenceVersion, Report: rep, CertTable: certs, Provider: provider}
	b, err := ev.Marshal()
	if err != nil {
		return nil, err
	}
	// Check what we hand out parses, so a broken driver fails here.
	if _, err := ParseEvidence(b); err != nil {
		return nil, err
	}
	return b, nil
}

var _ tee.InitDataReporter = (*Attester)(nil)

// InitDataDigest implements tee.InitDataReporter: the HOST_DATA of a fresh
// report (the firmware copies it from the launch into every report).
func (a *Attester) InitDataDigest(ctx context.Context) ([]byte, error) {
	rep, _, _, err := a.src(ctx, [tee.ReportDataSize]byte{})
	if err != nil {
		return nil, err
	}
	if len(rep) < abi.ReportSize {
		return nil, fmt.Errorf("snp: report is %d bytes: %w", len(rep), errdefs.ErrInvalidArgument)
	}
	p, err := abi.ReportToProto(rep[:abi.ReportSize])
	if err != nil {
		return nil, fmt.Errorf("snp: report: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	return p.GetHostData(), nil
}
