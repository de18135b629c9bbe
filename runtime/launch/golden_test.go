package launch

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/raksh-project/raksh/tee/initdata"
)

var update = flag.Bool("update", false, "rewrite the golden QEMU command lines")

// TestGoldenQEMU renders each backend's QEMU command line the way the shim
// does (runtime.toml → LoadConfig → PodInitData → QEMUConfig, then the host
// sockets the VM layer adds) and compares it to testdata/golden/<tee>.args.
// The snp, tdx and pef lines follow QEMU's documentation of sev-snp-guest
// (9.1+), tdx-guest (10.1+) and pef-guest; they are rendered, not run (no
// TEE hardware here). pef-sim is PEF on the simulated ultravisor: a plain
// x86 VM with the kernel parameters of a secure one (the shim swaps the
// sealed initrd for what the simulated ultravisor releases, see
// TestSimulatedUltravisorBoot). Regenerate with go test -run
// TestGoldenQEMU -update.
func TestGoldenQEMU(t *testing.T) {
	doc, err := os.ReadFile("testdata/init-data.json")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"none", "sim", "snp", "tdx", "pef", "pef-sim"} {
		t.Run(name, func(t *testing.T) {
			cfg, err := LoadConfig(filepath.Join("testdata", "golden", name+".toml"))
			if err != nil {
				t.Fatal(err)
			}
			cfg.PodInitData, err = PodInitData(cfg, nil)
			if err != nil {
				t.Fatal(err)
			}
			if name != "none" && !bytes.Equal(cfg.PodInitData, doc) {
				t.Fatalf("the node's init data was not picked up")
			}
			qc, err := QEMUConfig(cfg, cfg.PodInitData)
			if err != nil {
				t.Fatal(err)
			}
			if qc.Accel == "auto" {
				qc.Accel = "tcg" // the VM layer's choice on a host without KVM
			}
			qc.Name = "raksh-pod"
			qc.AgentSocket, qc.QMPSocket = "/run/raksh/default/pod/agent.sock", "/run/raksh/default/pod/qmp.sock"
			qc.ConsoleLog, qc.PidFile = "/run/raksh/default/pod/console.log", "/run/raksh/default/pod/qemu.pid"
			if name == "snp" || name == "tdx" {
				qc.AgentSocket, qc.VsockCID = "", 42
			}
			args, err := qc.Args()
			if err != nil {
				t.Fatal(err)
			}
			got := strings.Join(append([]string{qc.Path}, args...), "\n") + "\n"
			golden := filepath.Join("testdata", "golden", name+".args")
			if *update {
				os.WriteFile(golden, []byte(got), 0o644)
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if got != string(want) {
				t.Errorf("QEMU command line differs from %s:\n%s", golden, got)
			}
			// The init-data digest is bound where the backend binds it.
			digest := initdata.Digest(doc)
			want64 := map[string]string{
				"snp":     "host-data=" + b64(digest),
				"tdx":     `"mrconfigid":"` + b64(append(bytes.Clone(digest), make([]byte, 16)...)) + `"`,
				"pef":     "raksh.init_data=" + hex.EncodeToString(digest),
				"pef-sim": "raksh.init_data=" + hex.EncodeToString(digest),
				"sim":     "raksh.sim.init_data=" + hex.EncodeToString(digest),
			}[name]
			if want64 != "" && !strings.Contains(got, want64) {
				t.Errorf("%s does not bind the init-data digest (%s)", name, want64)
			}
			// What rakshctl seals a PEF initrd for is what the shim
			// renders: the same kernel and -append.
			if strings.HasPrefix(name, "pef") {
				kernel, cmdline, err := PEFSealTarget(cfg)
				if err != nil {
					t.Fatal(err)
				}
				if kernel != qc.Kernel || !strings.Contains(got, "\n-append\n"+cmdline+"\n") {
					t.Errorf("sealed for kernel %q, command line %q; the shim renders:\n%s", kernel, cmdline, got)
				}
			}
		})
	}
}

func TestPodInitDataAnnotation(t *testing.T) {
	cfg, err := LoadConfig(filepath.Join("testdata", "golden", "sim.toml"))
	if err != nil {
		t.Fatal(err)
	}
	pod := `{"version":"raksh.initdata/v1","policy":{"deny_logs":true}}`
	doc, err := PodInitData(cfg, map[string]string{initdata.Annotation: pod})
	if err != nil || string(doc) != pod {
		t.Fatalf("annotation not preferred over the node's init data: %q, %v", doc, err)
	}
	args, err := TEEArgs(cfg, doc)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(args.KernelParams, " "), hex.EncodeToString(initdata.Digest([]byte(pod)))) {
		t.Fatalf("the pod's digest is not bound: %q", args.KernelParams)
	}
	for name, tc := range map[string]struct {
		cfg  string
		ann  string
		want string
	}{
		"bad document":          {"sim", `{"version":"raksh.initdata/v1","polcy":{}}`, "unknown field"},
		"wrong version":         {"sim", `{"version":"v0"}`, "version"},
		"plain http broker":     {"sim", `{"version":"raksh.initdata/v1","kbs":{"url":"http://kbs","ca":"x"}}`, "https"},
		"broker without CA":     {"sim", `{"version":"raksh.initdata/v1","kbs":{"url":"https://kbs"}}`, "ca or public_key"},
		"pef pod init data":     {"pef", `{"version":"raksh.initdata/v1"}`, "seals the node's init data"},
		"init data without tee": {"none", `{"version":"raksh.initdata/v1"}`, "binds none"},
	} {
		t.Run(name, func(t *testing.T) {
			cfg, err := LoadConfig(filepath.Join("testdata", "golden", tc.cfg+".toml"))
			if err != nil {
				t.Fatal(err)
			}
			_, err = PodInitData(cfg, map[string]string{initdata.Annotation: tc.ann})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one saying %q", err, tc.want)
			}
		})
	}
}

func TestLoadConfigHardwareTEE(t *testing.T) {
	for name, tc := range map[string]struct{ body, want string }{
		"snp without firmware":   {"tee = \"snp\"\n", "[snp] firmware"},
		"tdx without firmware":   {"tee = \"tdx\"\n", "[tdx] firmware"},
		"pef without initrd":     {"tee = \"pef\"\n", "[pef] sealed_initrd"},
		"pef-sim without initrd": {"tee = \"pef\"\n[pef]\nsimulated_ultravisor_key = \"/k\"\n", "[pef] sealed_initrd"},
		"pef-sim table for sim":  {"tee = \"sim\"\n[pef]\nsimulated_ultravisor_key = \"/k\"\n", `[pef] settings given, but tee = "sim"`},
		"snp on pc":              {"tee = \"snp\"\nmachine = \"pc\"\n[snp]\nfirmware = \"/f\"\n", `needs machine = "q35"`},
		"pef on q35":             {"tee = \"pef\"\nmachine = \"q35\"\n[pef]\nsealed_initrd = \"/i\"\n", `needs machine = "pseries"`},
		"pef with x86 qemu":      {"tee = \"pef\"\nqemu_path = \"/usr/bin/qemu-system-x86_64\"\n[pef]\nsealed_initrd = \"/i\"\n", "needs qemu-system-ppc64"},
		"snp under tcg":          {"tee = \"snp\"\naccel = \"tcg\"\n[snp]\nfirmware = \"/f\"\n", "needs KVM"},
		"snp debug policy":       {"tee = \"snp\"\n[snp]\nfirmware = \"/f\"\npolicy = 0xb0000\n", "allows debug"},
		"snp unknown cpu":        {"tee = \"snp\"\n[snp]\nfirmware = \"/f\"\ncpu_model = \"host\"\n", "cpu_model"},
		"snp bad memory":         {"tee = \"snp\"\n[snp]\nfirmware = \"/f\"\nmemory_backend = \"hugetlb\"\n", "memory_backend"},
		"snp table for tdx":      {"tee = \"tdx\"\n[tdx]\nfirmware = \"/f\"\n[snp]\nfirmware = \"/f\"\n", `[snp] settings given, but tee = "tdx"`},
		"sim table without tee":  {"[sim]\ninit_data_digest = \"00\"\n", `[sim] settings given`},
		"sim bad digest":         {"tee = \"sim\"\n[sim]\ninit_data_digest = \"00\"\n", "not a hex SHA-256"},
		"unknown snp key":        {"tee = \"snp\"\n[snp]\nfirmware = \"/f\"\ncbit = 51\n", "unknown keys"},
		"missing init data":      {"tee = \"sim\"\ninit_data = \"/nonexistent/init-data.json\"\n", "init_data"},
		"unknown tee":            {"tee = \"sev\"\n", "not one of none, sim, snp, tdx, pef"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := LoadConfig(writeConfig(t, tc.body))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one saying %q", err, tc.want)
			}
		})
	}
	// Defaults follow the TEE.
	cfg, err := LoadConfig(writeConfig(t, "tee = \"pef\"\n[pef]\nsealed_initrd = \"/i\"\n"))
	if err != nil || cfg.Machine != "pseries" || cfg.QEMUPath != "qemu-system-ppc64" {
		t.Fatalf("pef defaults: machine %q qemu %q, %v", cfg.Machine, cfg.QEMUPath, err)
	}
	cfg, err = LoadConfig(writeConfig(t, "tee = \"tdx\"\n[tdx]\nfirmware = \"/f\"\n"))
	if err != nil || cfg.Machine != "q35" || cfg.QEMUPath != "qemu-system-x86_64" {
		t.Fatalf("tdx defaults: machine %q qemu %q, %v", cfg.Machine, cfg.QEMUPath, err)
	}
}

// TestProbeRefusesHere runs the host probe against this machine's real
// /dev, /sys and /proc (no SEV-SNP, TDX or PEF here) and checks it refuses
// each hardware TEE, naming what is missing.
func TestProbeRefusesHere(t *testing.T) {
	for _, tc := range []struct {
		body string
		want []string
	}{
		{"tee = \"snp\"\n[snp]\nfirmware = \"/nonexistent/OVMF.amdsev.fd\"\n",
			[]string{"/dev/sev is missing", "sev_snp=1", "[snp] firmware /nonexistent/OVMF.amdsev.fd is not readable"}},
		{"tee = \"tdx\"\n[tdx]\nfirmware = \"/nonexistent/OVMF.tdx.fd\"\n", []string{"tdx=1", "[tdx] firmware"}},
		{"tee = \"pef\"\n[pef]\nsealed_initrd = \"/nonexistent/initrd\"\n", []string{"kvm_hv", "ultravisor"}},
	} {
		cfg, err := LoadConfig(writeConfig(t, tc.body))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat("/dev/sev"); err == nil && cfg.TEE == TEESNP {
			t.Fatalf("this host has /dev/sev: the probe test assumes a host without SEV")
		}
		err = Probe(context.Background(), cfg, "/")
		if !errdefs.IsFailedPrecondition(err) {
			t.Fatalf("tee %q: probe %v, want a failed precondition", cfg.TEE, err)
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("tee %q: probe error does not say %q:\n%v", cfg.TEE, w, err)
			}
		}
		t.Logf("%v", err)
	}
	// none and sim need nothing.
	if err := Probe(context.Background(), Config{TEE: TEESim}, "/"); err != nil {
		t.Fatal(err)
	}
}

// TestProbeAccepts gives the probe a host tree that has everything SNP
// needs and a QEMU new enough.
func TestProbeAccepts(t *testing.T) {
	root := t.TempDir()
	for p, v := range map[string]string{
		"dev/kvm": "", "dev/sev": "", "sys/module/kvm_amd/parameters/sev_snp": "Y\n", "fw.fd": "",
		"qemu": "#!/bin/sh\necho 'QEMU emulator version 9.2.0'\n",
	} {
		os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755)
		os.WriteFile(filepath.Join(root, p), []byte(v), 0o755)
	}
	cfg := Config{TEE: TEESNP, QEMUPath: filepath.Join(root, "qemu"), SNP: SNPConfig{Firmware: filepath.Join(root, "fw.fd")}}
	if err := Probe(context.Background(), cfg, root); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(cfg.QEMUPath, []byte("#!/bin/sh\necho 'QEMU emulator version 7.2.22 (Debian)'\n"), 0o755)
	if err := Probe(context.Background(), cfg, root); err == nil || !strings.Contains(err.Error(), "QEMU 7.2, older than 9.1") {
		t.Fatalf("old QEMU: %v", err)
	}
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
