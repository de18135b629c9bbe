package snp

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"

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

// TestLaunchToVerifyInitData follows the init-data digest from the
// launcher's host-data option, through the firmware (which copies it into
// every report's HOST_DATA; here a test-only signer stands in), to the
// verifier.
func TestLaunchToVerifyInitData(t *testing.T) {
	l, err := NewLauncher(LaunchConfig{})
	if err != nil {
		t.Fatal(err)
	}
	args, err := l.LaunchArgs(tee.LaunchParams{InitDataDigest: initData[:], Firmware: "/ovmf.fd"})
	if err != nil {
		t.Fatal(err)
	}
	var hostData []byte
	for _, kv := range strings.Split(args.Objects[0], ",") {
		if v, ok := strings.CutPrefix(kv, "host-data="); ok {
			if hostData, err = base64.StdEncoding.DecodeString(v); err != nil {
				t.Fatal(err)
			}
		}
	}
	tcb := kds.TCBParts{BlSpl: 3, SnpSpl: 8, UcodeSpl: 115}
	chipID := make([]byte, abi.ChipIDSize)
	s := testOnlySigner(t, tcb, chipID, time.Now())
	table, err := s.CertTableBytes()
	if err != nil {
		t.Fatal(err)
	}
	roots := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.Ask.Raw}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.Ark.Raw})...)
	rd := [tee.ReportDataSize]byte{4}
	rep := signedReport(t, s, tcb, chipID, synth{policy: DefaultPolicy, hostData: hostData, rd: rd})
	ev, _ := (&Evidence{Version: EvidenceVersion, Report: rep, CertTable: table}).Marshal()
	for _, tc := range []struct {
		digest []byte
		want   error
	}{{initData[:], nil}, {make([]byte, 32), ErrInitData}} {
		v, err := NewVerifier(Config{InitDataDigests: []string{hex.EncodeToString(tc.digest)}},
			WithTrustedRoots(kds.ProductLine(abi.DefaultSevProduct()), roots))
		if err != nil {
			t.Fatal(err)
		}
		c, err := v.Verify(context.Background(), ev, rd)
		if !errors.Is(err, tc.want) || (tc.want == nil && err != nil) {
			t.Fatalf("Verify = %v, want %v", err, tc.want)
		}
		if tc.want == nil && !bytes.Equal(c.InitDataDigest, initData[:]) {
			t.Fatalf("claims init data %x", c.InitDataDigest)
		}
	}
}
