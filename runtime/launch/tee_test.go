package launch

import (
	"bytes"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/raksh-project/raksh/tee/sim"
)

func teeConfig(t *testing.T, teeType string) Config {
	t.Helper()
	dir := t.TempDir()
	cfg := DefaultConfig()
	cfg.Kernel, cfg.Initrd = filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "initrd.img")
	os.WriteFile(cfg.Kernel, []byte("kernel"), 0o644)
	os.WriteFile(cfg.Initrd, []byte("initrd"), 0o644)
	cfg.TEE = teeType
	cfg.Debug = true
	cfg.Transport = "serial"
	return cfg
}

func TestLoadConfigTEE(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		body    string
		want    string
		wantErr bool
	}{
		{body: "", want: ""},
		{body: `tee = "none"`, want: "none"},
		{body: "tee = \"sim\"\n[proxy]\nkbs = \"127.0.0.1:8080\"\n", want: "sim"},
		{body: `tee = "sev"`, wantErr: true},
	} {
		p := filepath.Join(dir, "runtime.toml")
		os.WriteFile(p, []byte(tc.body), 0o644)
		cfg, err := LoadConfig(p)
		if tc.wantErr {
			if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "tee") {
				t.Errorf("%q: got %v, want an invalid tee error", tc.body, err)
			}
			continue
		}
		if err != nil || cfg.TEE != tc.want {
			t.Errorf("%q: tee %q, %v; want %q", tc.body, cfg.TEE, err, tc.want)
		}
	}
}

func TestSimLaunch(t *testing.T) {
	cfg := teeConfig(t, TEESim)
	m, err := LaunchMeasurement(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// The measurement is sim's over the command line the VM boots with.
	want, _ := sim.MeasureFiles(cfg.Kernel, cfg.Initrd, "console=ttyS0 quiet panic=-1 raksh.debug")
	if !bytes.Equal(m, want) {
		t.Fatalf("measurement %x, want %x", m, want)
	}
	args, err := TEEArgs(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(args.KernelParams) != 1 || args.KernelParams[0] != sim.KernelParamMeasurement+"="+hex.EncodeToString(m) {
		t.Fatalf("kernel params %q", args.KernelParams)
	}
	// The guest attester reads back what the launcher wrote.
	cmdline := strings.Join(append(KernelParams(cfg), args.KernelParams...), " ")
	key, _ := sim.GenerateKey()
	a, err := sim.NewAttester(key, sim.WithKernelCmdline(cmdline))
	if err != nil {
		t.Fatal(err)
	}
	ev, err := a.Evidence(t.Context(), [64]byte{})
	if err != nil {
		t.Fatal(err)
	}
	v, _ := sim.NewVerifier(&key.PublicKey)
	claims, err := v.Verify(t.Context(), ev, [64]byte{})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(claims.Measurement, m) {
		t.Fatalf("attested measurement %x, want %x", claims.Measurement, m)
	}

	// Another initrd, another command line: other measurements.
	os.WriteFile(cfg.Initrd, []byte("initrd with another key"), 0o644)
	if m2, _ := LaunchMeasurement(cfg); bytes.Equal(m2, m) {
		t.Error("initrd change not measured")
	}
	cfg.KernelParams = []string{"init=/bin/sh"}
	if m3, _ := LaunchMeasurement(cfg); bytes.Equal(m3, m) {
		t.Error("command line change not measured")
	}
	// The transport parameter is part of the measured command line.
	cfg.KernelParams = nil
	cfg.Transport = "vsock"
	m4, _ := LaunchMeasurement(cfg)
	want4, _ := sim.MeasureFiles(cfg.Kernel, cfg.Initrd, "console=ttyS0 quiet panic=-1 raksh.debug raksh.transport=vsock")
	if !bytes.Equal(m4, want4) {
		t.Error("vsock transport parameter not measured")
	}
}

func TestNoTEE(t *testing.T) {
	for _, typ := range []string{"", TEENone} {
		cfg := teeConfig(t, typ)
		args, err := TEEArgs(cfg, nil)
		if err != nil || len(args.KernelParams)+len(args.Objects)+len(args.MachineOptions)+len(args.Extra) != 0 {
			t.Errorf("tee %q: launch args %+v, %v", typ, args, err)
		}
		if _, err := LaunchMeasurement(cfg); !errdefs.IsFailedPrecondition(err) {
			t.Errorf("tee %q: measurement error %v", typ, err)
		}
	}
	cfg := teeConfig(t, TEESim)
	cfg.Initrd = filepath.Join(t.TempDir(), "missing")
	if _, err := TEEArgs(cfg, nil); err == nil {
		t.Error("missing initrd measured")
	}
	cfg.TEE = "tdx"
	if _, err := TEEArgs(cfg, nil); !errdefs.IsInvalidArgument(err) {
		t.Errorf("unknown tee: %v", err)
	}
}
