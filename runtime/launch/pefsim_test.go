package launch

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/u-root/u-root/pkg/dt"

	"github.com/raksh-project/raksh/tee/pef"
)

// writeRSAKey writes a PKCS#8 PEM RSA key and returns it.
func writeRSAKey(t *testing.T, path string) *rsa.PrivateKey {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKCS8PrivateKey(k)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return k
}

// TestSimulatedUltravisorBoot seals an initrd for what a pef-sim runtime
// config renders (PEFSealTarget) and runs the shim's simulated ultravisor
// over it: the released files are appended for /raksh/pef; another
// platform key, a flipped byte of the ESM blob, another kernel and another
// command line (the node's init data changed) are refused with errors
// naming the check.
func TestSimulatedUltravisorBoot(t *testing.T) {
	dir := t.TempDir()
	uvKey := writeRSAKey(t, filepath.Join(dir, "uv.key"))
	kernel := filepath.Join(dir, "vmlinuz")
	os.WriteFile(kernel, []byte("a kernel image"), 0o644)
	initData := filepath.Join(dir, "init-data.json")
	os.WriteFile(initData, []byte(`{"version":"raksh.initdata/v1"}`), 0o644)
	sealedPath := filepath.Join(dir, "initrd.pef")
	body := fmt.Sprintf("kernel = %q\ntransport = \"serial\"\ntee = \"pef\"\ninit_data = %q\n[pef]\nsealed_initrd = %q\nsimulated_ultravisor_key = %q\n",
		kernel, initData, sealedPath, filepath.Join(dir, "uv.key"))
	cfg, err := LoadConfig(writeConfig(t, body))
	if err != nil {
		t.Fatal(err)
	}
	if !PEFSimulated(cfg) || cfg.QEMUPath != "qemu-system-x86_64" || cfg.Machine != "pc" {
		t.Fatalf("pef-sim defaults: simulated %v, qemu %q, machine %q", PEFSimulated(cfg), cfg.QEMUPath, cfg.Machine)
	}
	// The probe names the missing sealed initrd (and nothing of PEF
	// hardware: the simulated ultravisor needs none).
	err = Probe(context.Background(), cfg, "/")
	if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "[pef] sealed_initrd "+sealedPath+" is not readable") || strings.Contains(err.Error(), "kvm_hv") {
		t.Fatalf("probe without the sealed initrd: %v", err)
	}

	kernelPath, cmdline, err := PEFSealTarget(cfg)
	if err != nil {
		t.Fatal(err)
	}
	secret := []byte("sealed secret")
	seal := func(key *rsa.PublicKey, cmdline string) []byte {
		b, err := pef.SealInitrd(key, []byte("the initramfs"), pef.SealInitrdOptions{
			Kernel: []byte("a kernel image"), Cmdline: cmdline, Files: map[string][]byte{"app.secret": secret},
		})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	if kernelPath != kernel || !strings.Contains(cmdline, "svm=on raksh.init_data=") || !strings.HasPrefix(cmdline, "console=ttyS0 ") {
		t.Fatalf("seal target: %q %q", kernelPath, cmdline)
	}
	sealed := seal(&uvKey.PublicKey, cmdline)
	os.WriteFile(sealedPath, sealed, 0o644)
	if err := Probe(context.Background(), cfg, "/"); err != nil {
		t.Fatalf("probe: %v", err)
	}
	qc, err := QEMUConfig(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if qc.Initrd != sealedPath || len(qc.TEE.Objects) != 0 || len(qc.TEE.MachineOptions) != 0 {
		t.Fatalf("pef-sim QEMU config: initrd %q, TEE %+v", qc.Initrd, qc.TEE)
	}
	// The shim renders the pod's VM with the node's init data bound.
	if qc, err = QEMUConfig(cfg, mustRead(t, initData)); err != nil {
		t.Fatal(err)
	}
	rd, err := SimulatedUltravisorBoot(cfg, qc)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(rd, sealed) || !bytes.Contains(rd[len(sealed):], []byte("raksh/pef/app.secret")) || !bytes.Contains(rd[len(sealed):], secret) {
		t.Fatalf("the booted initrd does not carry the released file after the sealed one")
	}

	refused := func(name string, want error, wantMsg string) {
		t.Helper()
		_, err := SimulatedUltravisorBoot(cfg, qc)
		if !errors.Is(err, want) || !strings.Contains(err.Error(), wantMsg) || !strings.Contains(err.Error(), "simulated ultravisor refused") {
			t.Errorf("%s: %v, want %v saying %q", name, err, want, wantMsg)
		}
		if err != nil && bytes.Contains([]byte(err.Error()), secret) {
			t.Errorf("%s: the error carries the secret", name)
		}
	}
	// A byte of the ESM blob flipped: in the sealed digests' ciphertext.
	tampered := bytes.Clone(sealed)
	tampered[sealedDigestsOffset(t, sealed)] ^= 0x01
	os.WriteFile(sealedPath, tampered, 0o644)
	refused("flipped ESM blob byte", pef.ErrIntegrity, "digests-fdt")
	other := writeRSAKey(t, filepath.Join(dir, "other.key"))
	os.WriteFile(sealedPath, seal(&other.PublicKey, cmdline), 0o644)
	refused("another platform key", pef.ErrNoKey, "not sealed for this platform")
	os.WriteFile(sealedPath, seal(&uvKey.PublicKey, cmdline+" extra"), 0o644)
	refused("another command line", pef.ErrIntegrity, "bootargs digest mismatch")
	os.WriteFile(sealedPath, sealed, 0o644)
	os.WriteFile(kernel, []byte("another kernel"), 0o644)
	refused("another kernel", pef.ErrIntegrity, "kernel digest mismatch")

	// A key that is not an RSA private key fails the probe.
	os.WriteFile(filepath.Join(dir, "uv.key"), []byte("not a key"), 0o600)
	if err := Probe(context.Background(), cfg, "/"); err == nil || !strings.Contains(err.Error(), "simulated_ultravisor_key") {
		t.Fatalf("probe with a bad key: %v", err)
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// sealedDigestsOffset returns the offset, in a sealed initrd, of a byte in
// the middle of the ESM blob's sealed digests (/digest/digests-fdt
// ciphertext).
func sealedDigestsOffset(t *testing.T, initrd []byte) int {
	t.Helper()
	blob, _, err := pef.FindESMBlob(initrd)
	if err != nil {
		t.Fatal(err)
	}
	f, err := dt.ReadFDT(bytes.NewReader(blob))
	if err != nil {
		t.Fatal(err)
	}
	d, ok := f.RootNode.LookupChildByName("digest")
	if !ok {
		t.Fatal("no /digest")
	}
	n, ok := d.LookupChildByName("digests-fdt")
	if !ok {
		t.Fatal("no /digest/digests-fdt")
	}
	ct, ok := n.LookProperty("ciphertext")
	if !ok {
		t.Fatal("no ciphertext")
	}
	return bytes.Index(initrd, ct.Value) + len(ct.Value)/2
}
