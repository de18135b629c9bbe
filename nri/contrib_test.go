package nri

import (
	"os"
	"slices"
	"testing"

	"github.com/BurntSushi/toml"
)

// The shipped examples must stay valid.
func TestContribExamples(t *testing.T) {
	data, err := os.ReadFile("../contrib/nri/10-raksh.conf")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := ParseConfig(data)
	if err != nil {
		t.Fatalf("contrib/nri/10-raksh.conf: %v", err)
	}
	if cfg.Mode != ModeSeal || !slices.Equal(cfg.RuntimeHandlers, []string{DefaultRuntimeHandler}) || len(cfg.Recipients) != 1 {
		t.Errorf("example config = %+v", cfg)
	}

	var dropIn struct {
		Version int `toml:"version"`
		Plugins map[string]struct {
			Disable          bool   `toml:"disable"`
			PluginPath       string `toml:"plugin_path"`
			PluginConfigPath string `toml:"plugin_config_path"`
			DefaultValidator struct {
				Enable          bool     `toml:"enable"`
				RequiredPlugins []string `toml:"required_plugins"`
			} `toml:"default_validator"`
		} `toml:"plugins"`
	}
	md, err := toml.DecodeFile("../contrib/nri/containerd-nri.toml", &dropIn)
	if err != nil {
		t.Fatal(err)
	}
	if len(md.Undecoded()) != 0 {
		t.Logf("keys not checked here: %v", md.Undecoded())
	}
	n, ok := dropIn.Plugins["io.containerd.nri.v1.nri"]
	if dropIn.Version != 3 || !ok || n.Disable {
		t.Fatalf("drop-in does not enable io.containerd.nri.v1.nri (version %d)", dropIn.Version)
	}
	if !n.DefaultValidator.Enable || !slices.Contains(n.DefaultValidator.RequiredPlugins, PluginName) {
		t.Errorf("drop-in does not require the %s plugin: %+v", PluginName, n.DefaultValidator)
	}
}
