package qemu

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/raksh-project/raksh/tee"
)

var update = flag.Bool("update", false, "rewrite golden files")

func base() Config {
	return Config{
		Path: "/usr/bin/qemu-system-x86_64", Name: "raksh-pod1", Accel: AccelTCG,
		MemoryMiB: 512, VCPUs: 1,
		Kernel: "/k/vmlinuz", Initrd: "/k/initrd.img",
		KernelParams: []string{"console=ttyS0", "quiet", "panic=-1"},
		ConsoleLog:   "/run/raksh/pod1/console.log",
		AgentSocket:  "/run/raksh/pod1/agent.sock", AgentPort: "raksh.agent",
		QMPSocket: "/run/raksh/pod1/qmp.sock",
	}
}

func TestArgsGolden(t *testing.T) {
	kvm := base()
	kvm.Accel = AccelKVM
	kvm.VsockCID = 42
	kvm.AgentSocket = ""
	comma := base()
	comma.AgentSocket = "/run/a,b/agent.sock"
	teeCfg := base()
	teeCfg.TEE = tee.LaunchArgs{
		MachineOptions: []string{"confidential-guest-support=tee0"},
		Objects:        []string{"sev-snp-guest,id=tee0,cbitpos=51"},
		Extra:          []string{"-bios", "/usr/share/ovmf/OVMF.fd"},
		KernelParams:   []string{"raksh.tee=snp"},
	}
	nics := base()
	nics.NICs = []NIC{{Tap: os.Stdin, MAC: "02:42:0a:c7:26:02"}, {Tap: os.Stdin, MAC: "02:42:0a:c7:26:03", Vhost: true}}
	vfs := base()
	vfs.VirtioFS = &VirtioFS{Socket: "/run/raksh/pod1/vfs.sock", Tag: "raksh-shared"}
	for name, cfg := range map[string]Config{"tcg": base(), "kvm-vsock": kvm, "comma": comma, "tee": teeCfg, "nics": nics, "virtiofs": vfs} {
		t.Run(name, func(t *testing.T) {
			args, err := cfg.Args()
			if err != nil {
				t.Fatal(err)
			}
			got := strings.Join(args, "\n") + "\n"
			golden := filepath.Join("testdata", name+".golden")
			if *update {
				os.WriteFile(golden, []byte(got), 0o644)
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if got != string(want) {
				t.Fatalf("args differ from %s:\n%s", golden, got)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	for name, mut := range map[string]func(*Config){
		"no kernel":    func(c *Config) { c.Kernel = "" },
		"no initrd":    func(c *Config) { c.Initrd = "" },
		"bad accel":    func(c *Config) { c.Accel = "hvf" },
		"no transport": func(c *Config) { c.AgentSocket = "" },
		"tiny memory":  func(c *Config) { c.MemoryMiB = 16 },
		"no cpus":      func(c *Config) { c.VCPUs = 0 },
		"nic no tap":   func(c *Config) { c.NICs = []NIC{{MAC: "02:42:0a:c7:26:02"}} },
		"nic bad mac":  func(c *Config) { c.NICs = []NIC{{Tap: os.Stdin, MAC: "02:42:0a:c7:26"}} },
		"virtiofs tag": func(c *Config) { c.VirtioFS = &VirtioFS{Socket: "/s"} },
	} {
		t.Run(name, func(t *testing.T) {
			c := base()
			mut(&c)
			if _, err := c.Args(); err == nil {
				t.Fatal("invalid config rendered")
			}
		})
	}
}
