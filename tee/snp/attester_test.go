package snp

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/google/go-configfs-tsm/configfs/configfsi"
	"github.com/google/go-configfs-tsm/configfs/faketsm"

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
