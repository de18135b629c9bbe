//go:build integration

package integration

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/raksh-project/raksh/integration/harness"
)

// TestHardwareTEEProbeRefusesPod configures the runtime for each hardware
// TEE on this machine, which has none (no SEV-SNP, TDX or PEF), and runs a
// container through containerd: it fails at its VM's launch with the host
// probe's message naming what is missing, and no QEMU process starts, so a
// misconfigured node never runs a "confidential" pod unprotected.
func TestHardwareTEEProbeRefusesPod(t *testing.T) {
	harness.RequiresRoot(t)
	h := startWithBusybox(t, harness.Options{})
	base := readFile(t, h.RuntimeConfigPath)
	for _, tc := range []struct {
		name, config string
		want         []string
	}{
		{"snp", "tee = \"snp\"\n[snp]\nfirmware = \"/nonexistent/OVMF.amdsev.fd\"\n",
			[]string{`tee "snp" cannot be launched on this host`, "/dev/sev is missing", "sev_snp=1", "[snp] firmware /nonexistent/OVMF.amdsev.fd is not readable", "older than 9.1"}},
		{"tdx", "tee = \"tdx\"\n[tdx]\nfirmware = \"/nonexistent/OVMF.tdx.fd\"\n",
			[]string{`tee "tdx" cannot be launched on this host`, "tdx=1", "[tdx] firmware /nonexistent/OVMF.tdx.fd is not readable", "older than 10.1"}},
		{"pef", "tee = \"pef\"\n[pef]\nsealed_initrd = \"/nonexistent/initrd.pef\"\n",
			[]string{`tee "pef" cannot be launched on this host`, "kvm_hv is not loaded", "does not run the ultravisor", "[pef] sealed_initrd /nonexistent/initrd.pef is not readable"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rt := base
			if tc.name == "pef" {
				rt = strings.Replace(rt, `qemu_path = "qemu-system-x86_64"`, `qemu_path = "qemu-system-ppc64"`, 1)
			}
			if err := os.WriteFile(h.RuntimeConfigPath, []byte(rt+tc.config), 0o644); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.WriteFile(h.RuntimeConfigPath, []byte(base), 0o644) })
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			out, err := h.CtrContext(ctx, "run", "--rm", "--runtime", rakshRuntime, busyboxRef, "raksh-probe-"+tc.name, "true")
			if err == nil {
				t.Fatalf("a container ran with tee %q on a host without it: %s", tc.name, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("the error does not say %q: %v", w, err)
				}
			}
			if n := len(h.QEMUProcesses()); n != 0 {
				t.Fatalf("%d QEMU processes after the refusal", n)
			}
			_, msg, _ := strings.Cut(err.Error(), "ctr: ")
			t.Logf("refused: %s", msg)
		})
	}
}

// TestPEFGoldenArgsQEMU runs Debian's qemu-system-ppc64 (7.2, installed by
// hack/deps.sh) on the hardware PEF command line the shim renders
// (runtime/launch/testdata/golden/pef.args, pinned through the config path
// by TestGoldenQEMU). There is no KVM for POWER here, so the accelerator is
// TCG and the vCPU model POWER9 instead of host; everything else is as
// rendered. QEMU parses the pseries machine, the devices and the pef-guest
// object and stops where only PEF hardware can go on: "PEF requires KVM".
// Without the pef-guest part it goes as far as loading the kernel.
func TestPEFGoldenArgsQEMU(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(harness.Repo(), "runtime", "launch", "testdata", "golden", "pef.args"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if lines[0] != "qemu-system-ppc64" {
		t.Fatalf("pef.args runs %q", lines[0])
	}
	var args, plain []string
	for i, a := range lines[1:] {
		a = strings.ReplaceAll(a, "/run/raksh/default/pod", dir)
		a = strings.Replace(a, "accel=kvm", "accel=tcg", 1)
		if a == "host" && lines[i] == "-cpu" {
			a = "POWER9"
		}
		args = append(args, a)
	}
	for i := 0; i < len(args); i++ {
		if args[i] == "-object" && strings.HasPrefix(args[i+1], "pef-guest,") {
			i++
			continue
		}
		plain = append(plain, strings.Replace(args[i], ",confidential-guest-support=tee0", "", 1))
	}
	run := func(args []string) string {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "qemu-system-ppc64", args...)
		cmd.Dir = filepath.Join(harness.Repo(), "runtime", "launch")
		out, err := cmd.CombinedOutput()
		if err == nil {
			t.Fatalf("qemu-system-ppc64 ran: %s", out)
		}
		return strings.TrimSpace(string(out))
	}
	if out := run(args); out != "qemu-system-ppc64: PEF requires KVM" {
		t.Fatalf("qemu-system-ppc64 on the rendered PEF line: %q, want it to stop at the KVM requirement", out)
	}
	// testdata/vmlinuz is a placeholder, not a POWER kernel.
	if out := run(plain); !strings.Contains(out, "error loading testdata/vmlinuz") {
		t.Fatalf("qemu-system-ppc64 without pef-guest: %q, want it to reach the kernel", out)
	}
}
