package tdx

import (
	"bytes"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/raksh-project/raksh/tee"
)

var update = flag.Bool("update", false, "rewrite golden files")

func golden(t *testing.T, name string, got tee.LaunchArgs) {
	t.Helper()
	b, err := json.MarshalIndent(got, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	b = append(b, '\n')
	path := filepath.Join("testdata", "launch", name+".golden")
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update)", err)
	}
	if !bytes.Equal(b, want) {
		t.Errorf("launch args differ from %s:\ngot:\n%s\nwant:\n%s", path, b, want)
	}
}

func TestLaunchArgsGolden(t *testing.T) {
	s256 := sha256.Sum256([]byte("raksh init data v1"))
	s384 := sha512.Sum384([]byte("raksh init data v1"))
	for _, tc := range []struct {
		name   string
		cfg    LaunchConfig
		digest []byte
	}{
		{name: "sha256-padded", digest: s256[:]},
		{name: "sha384", digest: s384[:]},
		{name: "sha384-qgs-vsock", cfg: LaunchConfig{ObjectID: "tdx0", QuoteGenerationVsockPort: 4050}, digest: s384[:]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := NewLauncher(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			args, err := l.LaunchArgs(tee.LaunchParams{InitDataDigest: tc.digest, Firmware: "/usr/share/ovmf/OVMF.tdx.fd"})
			if err != nil {
				t.Fatal(err)
			}
			golden(t, tc.name, args)
		})
	}
}

func TestLaunchArgsRefused(t *testing.T) {
	l, _ := NewLauncher(LaunchConfig{})
	d := sha256.Sum256(nil)
	for name, p := range map[string]tee.LaunchParams{
		"no init data": {Firmware: "/tdvf.fd"},
		"sha-1 digest": {InitDataDigest: make([]byte, 20), Firmware: "/tdvf.fd"},
		"no firmware":  {InitDataDigest: d[:]},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := l.LaunchArgs(p); !errdefs.IsInvalidArgument(err) {
				t.Fatalf("LaunchArgs = %v, want invalid argument", err)
			}
		})
	}
	if _, err := NewLauncher(LaunchConfig{ObjectID: "a,b"}); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("NewLauncher(bad id) = %v", err)
	}
}
