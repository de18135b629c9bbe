package launch

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writeConfig(t *testing.T, body string) string {
	p := filepath.Join(t.TempDir(), "runtime.toml")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadConfig(t *testing.T) {
	p := writeConfig(t, "kernel = \"/k\"\nmemory_mib = 1024\nboot_timeout = \"45s\"\n[proxy]\nkbs = \"127.0.0.1:8080\"\n")
	cfg, err := LoadConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Kernel != "/k" || cfg.MemoryMiB != 1024 || cfg.BootTimeout != 45*time.Second || cfg.Proxy["kbs"] != "127.0.0.1:8080" {
		t.Fatalf("config %+v", cfg)
	}
	if cfg.Initrd != DefaultConfig().Initrd || cfg.Accel != "auto" {
		t.Fatalf("defaults not kept: %+v", cfg)
	}
}

func TestLoadConfigErrors(t *testing.T) {
	for name, tc := range map[string]struct{ body, want string }{
		"unknown key":   {"kernal = \"/k\"\n", "unknown keys"},
		"bad accel":     {"accel = \"hvf\"\n", "accel"},
		"bad transport": {"transport = \"tcp\"\n", "transport"},
		"bad duration":  {"boot_timeout = \"soon\"\n", "boot_timeout"},
		"not toml":      {"= = =\n", "runtime config"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := LoadConfig(writeConfig(t, tc.body))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

func TestLoadConfigSources(t *testing.T) {
	// An explicit path that does not exist is an error...
	if _, err := LoadConfig(filepath.Join(t.TempDir(), "missing.toml")); err == nil {
		t.Fatal("missing explicit config accepted")
	}
	// ...and so is a missing file named by the environment.
	t.Setenv(ConfigEnv, filepath.Join(t.TempDir(), "missing.toml"))
	if _, err := LoadConfig(""); err == nil {
		t.Fatal("missing config from the environment accepted")
	}
	t.Setenv(ConfigEnv, writeConfig(t, "vcpus = 3\n"))
	cfg, err := LoadConfig("")
	if err != nil || cfg.VCPUs != 3 {
		t.Fatalf("config from the environment: %v %+v", err, cfg)
	}
}

// TestShippedConfigLoads: contrib/raksh/runtime.toml (durations as strings,
// decoded natively by the TOML library) loads.
func TestShippedConfigLoads(t *testing.T) {
	cfg, err := LoadConfig(filepath.Join("..", "..", "contrib", "raksh", "runtime.toml"))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.BootTimeout != 2*time.Minute || cfg.KVMProbeTimeout != 15*time.Second {
		t.Fatalf("durations %v %v", cfg.BootTimeout, cfg.KVMProbeTimeout)
	}
}
