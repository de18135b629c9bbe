package main

import (
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/raksh-project/raksh/tee/sim"
)

func TestTEEMeasure(t *testing.T) {
	dir := t.TempDir()
	kernel, initrd := filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "initrd.img")
	os.WriteFile(kernel, []byte("kernel"), 0o644)
	os.WriteFile(initrd, []byte("initrd"), 0o644)
	cfg := filepath.Join(dir, "runtime.toml")
	base := fmt.Sprintf("kernel = %q\ninitrd = %q\ntransport = \"serial\"\n", kernel, initrd)

	os.WriteFile(cfg, []byte(base+"tee = \"sim\"\n"), 0o644)
	out, err := run(t, "", "tee", "measure", "--runtime-config", cfg)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := sim.MeasureFiles(kernel, initrd, "console=ttyS0 quiet panic=-1")
	if strings.TrimSpace(out) != hex.EncodeToString(want) {
		t.Fatalf("measure printed %q, want %x", out, want)
	}

	os.WriteFile(cfg, []byte(base), 0o644)
	if _, err := run(t, "", "tee", "measure", "--runtime-config", cfg); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("config without a TEE: %v", err)
	}
}
