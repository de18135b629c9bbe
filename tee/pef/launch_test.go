package pef

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
	for name, d := range map[string][]byte{"sha256": s256[:], "sha384": s384[:]} {
		t.Run(name, func(t *testing.T) {
			l, err := NewLauncher(LaunchConfig{})
			if err != nil {
				t.Fatal(err)
			}
			args, err := l.LaunchArgs(tee.LaunchParams{InitDataDigest: d, Firmware: "ignored"})
			if err != nil {
				t.Fatal(err)
			}
			golden(t, name, args)
		})
	}
}

func TestLaunchArgsRefused(t *testing.T) {
	l, _ := NewLauncher(LaunchConfig{})
	if _, err := l.LaunchArgs(tee.LaunchParams{}); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("no init data: %v", err)
	}
	if _, err := NewLauncher(LaunchConfig{ObjectID: "x,y"}); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("bad id: %v", err)
	}
}
