package sim

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/raksh-project/raksh/tee"
)

func rd(b byte) (r [tee.ReportDataSize]byte) {
	for i := range r {
		r[i] = b + byte(i)
	}
	return r
}

func TestEvidenceRoundTrip(t *testing.T) {
	key, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	m, err := Measure(strings.NewReader("kernel"), strings.NewReader("initrd"), "console=hvc0")
	if err != nil {
		t.Fatal(err)
	}
	initData := bytes.Repeat([]byte{7}, 32)
	a, err := NewAttester(key, WithMeasurement(m), WithInitDataDigest(initData))
	if err != nil {
		t.Fatal(err)
	}
	v, err := NewVerifier(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	ev, err := a.Evidence(context.Background(), rd(1))
	if err != nil {
		t.Fatal(err)
	}
	c, err := v.Verify(context.Background(), ev, rd(1))
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if c.TEE != tee.Sim || !c.Insecure || c.Debug || !bytes.Equal(c.Measurement, m) || !bytes.Equal(c.InitDataDigest, initData) || c.ReportData != rd(1) {
		t.Fatalf("claims %+v", c)
	}
}

func TestVerifyNegative(t *testing.T) {
	ctx := context.Background()
	key, _ := GenerateKey()
	other, _ := GenerateKey()
	a, _ := NewAttester(key)
	v, _ := NewVerifier(&key.PublicKey)
	ev, err := a.Evidence(ctx, rd(1))
	if err != nil {
		t.Fatal(err)
	}
	forger, _ := NewAttester(other)
	forged, _ := forger.Evidence(ctx, rd(1))

	// Re-sign with the right kid but another key: signature must fail.
	parts := strings.Split(string(ev), ".")
	otherParts := strings.Split(string(forged), ".")
	swapped := []byte(parts[0] + "." + parts[1] + "." + otherParts[2])

	// Modify the payload (report data) keeping the signature.
	payload, _ := base64.RawURLEncoding.DecodeString(parts[1])
	modPayload := bytes.Replace(payload, []byte(`"debug":false`), []byte(`"debug":true `), 1)
	modified := []byte(parts[0] + "." + base64.RawURLEncoding.EncodeToString(modPayload) + "." + parts[2])

	for _, tc := range []struct {
		name string
		ev   []byte
		rd   [tee.ReportDataSize]byte
		want error
	}{
		{"other report data", ev, rd(2), ErrReportDataMismatch},
		{"untrusted platform", forged, rd(1), ErrUntrustedPlatform},
		{"swapped signature", swapped, rd(1), ErrUntrustedPlatform},
		{"modified payload", modified, rd(1), ErrUntrustedPlatform},
		{"garbage", []byte("not evidence"), rd(1), ErrMalformedEvidence},
		{"oversized", bytes.Repeat([]byte("a"), MaxEvidenceSize+1), rd(1), ErrMalformedEvidence},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := v.Verify(ctx, tc.ev, tc.rd); !errors.Is(err, tc.want) {
				t.Fatalf("Verify = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestKeyChecks(t *testing.T) {
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if _, err := NewAttester(p256); err == nil {
		t.Fatal("P-256 platform key accepted")
	}
	if _, err := NewVerifier(); err == nil {
		t.Fatal("verifier without keys accepted")
	}
	if _, err := NewVerifier(&p256.PublicKey); err == nil {
		t.Fatal("P-256 trusted key accepted")
	}
}

func TestLauncherAndCmdline(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	kernel, initrd := filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "initrd")
	os.WriteFile(kernel, []byte("kernel bytes"), 0o600)
	os.WriteFile(initrd, []byte("initrd bytes"), 0o600)
	m, err := MeasureFiles(kernel, initrd, "console=hvc0 quiet")
	if err != nil {
		t.Fatal(err)
	}
	m2, _ := Measure(strings.NewReader("kernel bytes"), strings.NewReader("initrd bytes!"), "console=hvc0 quiet")
	if bytes.Equal(m, m2) {
		t.Fatal("measurement ignores the initrd")
	}
	m3, _ := Measure(strings.NewReader("kernel bytes"), strings.NewReader("initrd bytes"), "console=hvc0 quiet init=/bin/sh")
	if bytes.Equal(m, m3) {
		t.Fatal("measurement ignores the command line")
	}
	initData := bytes.Repeat([]byte{9}, 48)
	args, err := NewLauncher(m).LaunchArgs(tee.LaunchParams{InitDataDigest: initData})
	if err != nil {
		t.Fatal(err)
	}
	if len(args.Objects) != 0 || len(args.MachineOptions) != 0 || len(args.KernelParams) != 2 {
		t.Fatalf("launch args %+v", args)
	}
	cmdline := "console=hvc0 quiet " + strings.Join(args.KernelParams, " ")
	if again, _ := MeasureFiles(kernel, initrd, cmdline); !bytes.Equal(again, m) {
		t.Fatal("raksh.sim.* parameters change the measurement")
	}
	if _, err := NewLauncher(nil).LaunchArgs(tee.LaunchParams{InitDataDigest: []byte{1, 2}}); err == nil {
		t.Fatal("2-byte init-data digest accepted")
	}

	key, _ := GenerateKey()
	pemKey, _ := MarshalPlatformKey(key)
	keyPath, cmdPath := filepath.Join(dir, "key.pem"), filepath.Join(dir, "cmdline")
	os.WriteFile(keyPath, pemKey, 0o600)
	os.WriteFile(cmdPath, []byte(cmdline+"\n"), 0o600)
	a, err := NewAttesterFromFiles(keyPath, cmdPath)
	if err != nil {
		t.Fatal(err)
	}
	pubPEM, _ := MarshalPlatformPublicKey(&key.PublicKey)
	pubs, err := ParsePlatformPublicKeys(pubPEM)
	if err != nil {
		t.Fatal(err)
	}
	v, _ := NewVerifier(pubs...)
	ev, _ := a.Evidence(ctx, rd(3))
	c, err := v.Verify(ctx, ev, rd(3))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(c.Measurement, m) || !bytes.Equal(c.InitDataDigest, initData) {
		t.Fatalf("claims from cmdline: %+v", c)
	}
	os.WriteFile(cmdPath, []byte(KernelParamInitData+"=zz"), 0o600)
	if _, err := NewAttesterFromFiles(keyPath, cmdPath); err == nil {
		t.Fatal("non-hex init data accepted")
	}
	if _, err := NewAttesterFromFiles(filepath.Join(dir, "missing"), ""); err == nil {
		t.Fatal("missing key accepted")
	}
}

func BenchmarkEvidence(b *testing.B) {
	key, _ := GenerateKey()
	a, _ := NewAttester(key)
	v, _ := NewVerifier(&key.PublicKey)
	ctx := context.Background()
	for b.Loop() {
		ev, err := a.Evidence(ctx, rd(1))
		if err != nil {
			b.Fatal(err)
		}
		if _, err := v.Verify(ctx, ev, rd(1)); err != nil {
			b.Fatal(err)
		}
	}
}
