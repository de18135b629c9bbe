package tdx

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/google/go-configfs-tsm/configfs/configfsi"
	"github.com/google/go-configfs-tsm/configfs/faketsm"

	"github.com/raksh-project/raksh/tee"
)

// fakeConfigfs is go-configfs-tsm's faketsm report subsystem answering
// with a canned outblob and recording the inblob written.
func fakeConfigfs(provider string, outblob []byte, gotInblob *[]byte) configfsi.Client {
	rs := faketsm.ReportV7(0)
	fallback := rs.ReadAttr
	rs.ReadAttr = func(e *faketsm.ReportEntry, attr string) ([]byte, error) {
		switch attr {
		case "provider":
			return []byte(provider + "\n"), nil
		case "outblob":
			*gotInblob = bytes.Clone(e.InAttrs["inblob"].Value)
			return outblob, nil
		}
		return fallback(e, attr)
	}
	return &faketsm.Client{Subsystems: map[string]configfsi.Client{"report": rs}}
}

func TestAttester(t *testing.T) {
	rd := sampleReportData(t)
	var inblob []byte
	a := NewAttester(fakeConfigfs(ConfigfsProvider, sampleQuote(t), &inblob))
	if a.Type() != tee.TDX {
		t.Fatal(a.Type())
	}
	ev, err := a.Evidence(context.Background(), rd)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(inblob, rd[:]) {
		t.Fatalf("inblob %x, want report data", inblob)
	}
	v, _ := NewVerifier(sampleConfig(), WithNow(func() time.Time { return quoteNow }))
	if _, err := v.Verify(context.Background(), ev, rd); err != nil {
		t.Fatalf("Verify(attester evidence) = %v", err)
	}
}

func TestAttesterRefuses(t *testing.T) {
	var inblob []byte
	if _, err := NewAttester(fakeConfigfs("sev_guest", sampleQuote(t), &inblob)).Evidence(context.Background(), [64]byte{}); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("wrong provider: %v", err)
	}
	if _, err := NewAttester(fakeConfigfs(ConfigfsProvider, []byte("garbage"), &inblob)).Evidence(context.Background(), [64]byte{}); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("garbage quote: %v", err)
	}
}
