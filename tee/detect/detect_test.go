package detect

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/google/go-configfs-tsm/configfs/configfsi"
	"github.com/google/go-configfs-tsm/configfs/faketsm"

	"github.com/raksh-project/raksh/tee"
	"github.com/raksh-project/raksh/tee/pef"
	"github.com/raksh-project/raksh/tee/snp"
	"github.com/raksh-project/raksh/tee/tdx"
)

func tsmWithProvider(provider string) configfsi.Client {
	rs := faketsm.ReportV7(0)
	fallback := rs.ReadAttr
	rs.ReadAttr = func(e *faketsm.ReportEntry, attr string) ([]byte, error) {
		if attr == "provider" {
			return []byte(provider + "\n"), nil
		}
		return fallback(e, attr)
	}
	return &faketsm.Client{Subsystems: map[string]configfsi.Client{"report": rs}}
}

// fakeRoot makes a guest filesystem with the given files.
func fakeRoot(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for p, content := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

type fakeSim struct{}

func (fakeSim) Type() tee.Type { return tee.Sim }
func (fakeSim) Evidence(context.Context, [tee.ReportDataSize]byte) ([]byte, error) {
	return nil, errors.New("not used")
}

func TestDetect(t *testing.T) {
	for _, tc := range []struct {
		name       string
		files      map[string]string
		tsm        configfsi.Client
		want       tee.Type
		wantSource string
		attester   any
	}{
		{name: "configfs-tsm sev_guest", tsm: tsmWithProvider("sev_guest"), want: tee.SNP, wantSource: "configfs-tsm:sev_guest", attester: &snp.Attester{}},
		{name: "configfs-tsm tdx_guest", tsm: tsmWithProvider("tdx_guest"), want: tee.TDX, wantSource: "configfs-tsm:tdx_guest", attester: &tdx.Attester{}},
		{name: "sev-guest device", files: map[string]string{SevGuestPath: ""}, want: tee.SNP, wantSource: "device:sev-guest", attester: &snp.Attester{}},
		{name: "unknown tsm provider falls through to devices", tsm: tsmWithProvider("fake"), files: map[string]string{TDXGuestPath: ""}, want: tee.TDX, wantSource: "device:tdx_guest", attester: &tdx.Attester{}},
		{name: "pef secure vm", files: map[string]string{PEFSVMPath: "1\n"}, want: tee.PEF, wantSource: "sysfs:cpu/svm", attester: &pef.Attester{}},
		{name: "pef simulated ultravisor", files: map[string]string{"raksh/pef/workload.key": "k"}, want: tee.PEF, wantSource: SourceSimUltravisor, attester: &pef.Attester{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := []Opt{WithRoot(fakeRoot(t, tc.files))}
			if tc.tsm != nil {
				opts = append(opts, WithConfigfsClient(tc.tsm))
			}
			res, err := Detect(context.Background(), opts...)
			if err != nil || res.Type != tc.want || res.Source != tc.wantSource {
				t.Fatalf("Detect = %+v, %v", res, err)
			}
			a, err := NewAttester(context.Background(), opts...)
			if err != nil {
				t.Fatal(err)
			}
			if a.Type() != tc.want {
				t.Fatalf("attester type %s", a.Type())
			}
			switch tc.attester.(type) {
			case *snp.Attester:
				_, ok := a.(*snp.Attester)
				if !ok {
					t.Fatalf("attester %T", a)
				}
			case *tdx.Attester:
				if _, ok := a.(*tdx.Attester); !ok {
					t.Fatalf("attester %T", a)
				}
			case *pef.Attester:
				if _, ok := a.(*pef.Attester); !ok {
					t.Fatalf("attester %T", a)
				}
			}
		})
	}
}

func TestDetectNoTEE(t *testing.T) {
	root := fakeRoot(t, map[string]string{PEFSVMPath: "0\n"})
	if _, err := Detect(context.Background(), WithRoot(root)); !errdefs.IsNotFound(err) {
		t.Fatalf("Detect = %v, want not found", err)
	}
	if _, err := NewAttester(context.Background(), WithRoot(root)); !errdefs.IsNotFound(err) {
		t.Fatalf("NewAttester without fallback = %v, want not found", err)
	}
	a, err := NewAttester(context.Background(), WithRoot(root), WithFallback(func() (tee.Attester, error) { return fakeSim{}, nil }))
	if err != nil || a.Type() != tee.Sim {
		t.Fatalf("NewAttester with fallback = %v, %v", a, err)
	}
	// A hardware TEE wins over the fallback.
	root = fakeRoot(t, map[string]string{SevGuestPath: ""})
	a, err = NewAttester(context.Background(), WithRoot(root), WithFallback(func() (tee.Attester, error) { return fakeSim{}, nil }))
	if err != nil || a.Type() != tee.SNP {
		t.Fatalf("NewAttester on SNP with fallback = %v, %v", a, err)
	}
}

func TestDetectSimPEFReadsReleasedFiles(t *testing.T) {
	root := fakeRoot(t, map[string]string{"raksh/pef/workload.key": "released"})
	a, err := NewAttester(context.Background(), WithRoot(root))
	if err != nil {
		t.Fatal(err)
	}
	pa, ok := a.(*pef.Attester)
	if !ok {
		t.Fatalf("attester %T", a)
	}
	b, err := pa.KeySource().ReadFile("workload.key")
	if err != nil || string(b) != "released" {
		t.Fatalf("ReadFile = %q, %v", b, err)
	}
}
