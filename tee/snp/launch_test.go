package snp

import (
	"bytes"
	"crypto/sha256"
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

// initData is SHA-256 of a fixed init-data document.
var initData = sha256.Sum256([]byte("raksh init data v1"))

func TestLaunchArgsGolden(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  LaunchConfig
	}{
		{name: "default"},
		{name: "memfd-backend-no-kernel-hashes", cfg: LaunchConfig{ObjectID: "snp0", CBitPos: 47, MemoryBackend: "ram0", DisableKernelHashes: true, Policy: 0x20000}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := NewLauncher(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			args, err := l.LaunchArgs(tee.LaunchParams{InitDataDigest: initData[:], Firmware: "/usr/share/ovmf/OVMF.amdsev.fd"})
			if err != nil {
				t.Fatal(err)
			}
			golden(t, tc.name, args)
		})
	}
}

func TestLaunchArgsRefused(t *testing.T) {
	l, err := NewLauncher(LaunchConfig{})
	if err != nil {
		t.Fatal(err)
	}
	sha384 := make([]byte, 48)
	for name, p := range map[string]tee.LaunchParams{
		"no init data":   {Firmware: "/ovmf.fd"},
		"sha-384 digest": {InitDataDigest: sha384, Firmware: "/ovmf.fd"},
		"no firmware":    {InitDataDigest: initData[:]},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := l.LaunchArgs(p); !errdefs.IsInvalidArgument(err) {
				t.Fatalf("LaunchArgs = %v, want invalid argument", err)
			}
		})
	}
	for name, cfg := range map[string]LaunchConfig{
		"debug policy":        {Policy: DefaultPolicy | policyDebugBit},
		"reserved bit clear":  {Policy: 0x10000},
		"id with comma":       {ObjectID: "a,b"},
		"backend with equals": {MemoryBackend: "x=y"},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := NewLauncher(cfg); !errdefs.IsInvalidArgument(err) {
				t.Fatalf("NewLauncher = %v, want invalid argument", err)
			}
		})
	}
}
