package tee

import (
	"context"
	"testing"

	"github.com/containerd/errdefs"
)

type fakeVerifier struct{ t Type }

func (f fakeVerifier) Type() Type { return f.t }
func (f fakeVerifier) Verify(context.Context, []byte, [ReportDataSize]byte) (*Claims, error) {
	return &Claims{TEE: f.t}, nil
}

type fakeAttester struct{ t Type }

func (f fakeAttester) Type() Type { return f.t }
func (f fakeAttester) Evidence(context.Context, [ReportDataSize]byte) ([]byte, error) {
	return []byte(f.t), nil
}

type fakeLauncher struct{ t Type }

func (f fakeLauncher) Type() Type                                  { return f.t }
func (f fakeLauncher) LaunchArgs(LaunchParams) (LaunchArgs, error) { return LaunchArgs{}, nil }

func TestRegistry(t *testing.T) {
	r := NewRegistry()
	if err := r.RegisterVerifier(fakeVerifier{SNP}); err != nil {
		t.Fatal(err)
	}
	if err := r.RegisterVerifier(fakeVerifier{Sim}); err != nil {
		t.Fatal(err)
	}
	if err := r.RegisterVerifier(fakeVerifier{Sim}); !errdefs.IsAlreadyExists(err) {
		t.Fatalf("duplicate: %v", err)
	}
	if err := r.RegisterVerifier(fakeVerifier{""}); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("empty type: %v", err)
	}
	if err := r.RegisterAttester(fakeAttester{Sim}); err != nil {
		t.Fatal(err)
	}
	if err := r.RegisterLauncher(fakeLauncher{TDX}); err != nil {
		t.Fatal(err)
	}
	v, err := r.Verifier(Sim)
	if err != nil || v.Type() != Sim {
		t.Fatalf("Verifier(sim) = %v, %v", v, err)
	}
	if _, err := r.Verifier(TDX); !errdefs.IsNotFound(err) {
		t.Fatalf("Verifier(tdx) = %v", err)
	}
	if a, err := r.Attester(Sim); err != nil || a.Type() != Sim {
		t.Fatalf("Attester(sim) = %v, %v", a, err)
	}
	if _, err := r.Attester(SNP); !errdefs.IsNotFound(err) {
		t.Fatalf("Attester(snp) = %v", err)
	}
	if l, err := r.Launcher(TDX); err != nil || l.Type() != TDX {
		t.Fatalf("Launcher(tdx) = %v, %v", l, err)
	}
	if _, err := r.Launcher(Sim); !errdefs.IsNotFound(err) {
		t.Fatalf("Launcher(sim) = %v", err)
	}
	if got := r.VerifierTypes(); len(got) != 2 || got[0] != Sim || got[1] != SNP {
		t.Fatalf("VerifierTypes = %v", got)
	}
}
