package launch

import (
	"strings"
	"testing"
)

func TestSharedFSConfig(t *testing.T) {
	cfg, err := LoadConfig(writeConfig(t, "kernel = \"/k\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if SharesFS(cfg) || cfg.VirtioFSDPath != DefaultVirtioFSD {
		t.Fatalf("default config shares the node's files or lost virtiofsd's path: %q %q", cfg.SharedFS, cfg.VirtioFSDPath)
	}
	cfg, err = LoadConfig(writeConfig(t, "shared_fs = \"virtio-fs\"\nvirtiofsd_path = \"/opt/virtiofsd\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !SharesFS(cfg) || cfg.VirtioFSDPath != "/opt/virtiofsd" {
		t.Fatalf("shared_fs not read: %q %q", cfg.SharedFS, cfg.VirtioFSDPath)
	}
	if cfg, err := LoadConfig(writeConfig(t, "shared_fs = \"none\"\n")); err != nil || SharesFS(cfg) {
		t.Fatalf("shared_fs = none: %v %v", SharesFS(cfg), err)
	}
	for name, tc := range map[string]struct{ body, want string }{
		"unknown value": {"shared_fs = \"9p\"\n", `shared_fs "9p" is neither "none" nor "virtio-fs"`},
		"no virtiofsd":  {"shared_fs = \"virtio-fs\"\nvirtiofsd_path = \"\"\n", "needs virtiofsd_path"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := LoadConfig(writeConfig(t, tc.body))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to mention %q", err, tc.want)
			}
		})
	}
	for _, tee := range []string{TEESNP, TEETDX, TEEPEF} {
		c := DefaultConfig()
		c.SharedFS, c.TEE = SharedFSVirtioFS, tee
		if err := validSharedFS(c); err == nil || !strings.Contains(err.Error(), "not supported with tee") {
			t.Fatalf("tee %s with virtio-fs: %v", tee, err)
		}
	}
	c := DefaultConfig()
	c.SharedFS, c.TEE = SharedFSVirtioFS, TEESim
	if err := validSharedFS(c); err != nil {
		t.Fatalf("sim TEE with virtio-fs: %v", err)
	}
}
