package snapshotter

import (
	"fmt"
	"os"
	"regexp"

	"github.com/BurntSushi/toml"
)

// Defaults for Config.
const (
	DefaultRoot    = "/var/lib/raksh-snapshotter"
	DefaultAddress = "/run/raksh-snapshotter/snapshotter.sock"
)

// Config is the raksh-snapshotter daemon configuration (TOML, /etc/raksh/snapshotter.toml).
type Config struct {
	// Root holds metadata.db, snapshots/ and the ciphertext cache cache/.
	Root string `toml:"root"`
	// Address is the unix socket the gRPC snapshots (and diff) service listens on.
	Address string `toml:"address"`
	// ContainerdAddress is containerd's gRPC socket; the raksh differ reads
	// layer blobs (ciphertext) from containerd's content store through it.
	// Empty disables the differ's content access (it then refuses to apply).
	ContainerdAddress string `toml:"containerd_address"`
	// AsyncRemove defers removal of snapshot directories to Cleanup.
	AsyncRemove bool `toml:"async_remove"`
	// MountOptions are extra overlay mount options for ordinary snapshots.
	MountOptions []string `toml:"mount_options"`
	// GuestPull selects the images the guest pulls itself.
	GuestPull GuestPullConfig `toml:"guest_pull"`
	// LogLevel is the logrus level (debug, info, warn, error).
	LogLevel string `toml:"log_level"`
}

// GuestPullConfig selects guest-pulled ("raksh") images.
type GuestPullConfig struct {
	// Enable turns guest pull on. Guest pull only ever happens when containerd
	// passes the CRI image labels (containerd.io/snapshot/cri.*).
	Enable bool `toml:"enable"`
	// ImagePatterns are regular expressions matched against the whole image
	// reference (cri.image-ref label). Empty means every image that carries
	// the labels.
	ImagePatterns []string `toml:"image_patterns"`
}

// DefaultConfig returns the configuration used when no file is given.
func DefaultConfig() Config {
	return Config{
		Root:     DefaultRoot,
		Address:  DefaultAddress,
		LogLevel: "info",
	}
}

// LoadConfig reads a TOML config file over DefaultConfig. Unknown keys are an error.
func LoadConfig(path string) (Config, error) {
	cfg := DefaultConfig()
	b, err := os.ReadFile(path)
	if err != nil {
		return cfg, err
	}
	md, err := toml.Decode(string(b), &cfg)
	if err != nil {
		return cfg, fmt.Errorf("failed to parse %s: %w", path, err)
	}
	if undec := md.Undecoded(); len(undec) > 0 {
		return cfg, fmt.Errorf("unknown keys in %s: %v", path, undec)
	}
	return cfg, cfg.Validate()
}

// Validate checks the configuration.
func (c Config) Validate() error {
	if c.Root == "" {
		return fmt.Errorf("root must be set")
	}
	if c.Address == "" {
		return fmt.Errorf("address must be set")
	}
	for _, p := range c.GuestPull.ImagePatterns {
		if _, err := regexp.Compile("^(?:" + p + ")$"); err != nil {
			return fmt.Errorf("bad guest_pull.image_patterns entry %q: %w", p, err)
		}
	}
	return nil
}

// Opts converts the configuration into snapshotter options (the content
// provider for the differ is wired separately by the server).
func (c Config) Opts() []Opt {
	var opts []Opt
	if c.AsyncRemove {
		opts = append(opts, WithAsyncRemove())
	}
	if len(c.MountOptions) > 0 {
		opts = append(opts, WithMountOptions(c.MountOptions))
	}
	if c.GuestPull.Enable {
		opts = append(opts, WithGuestPull(c.GuestPull.ImagePatterns...))
	}
	return opts
}
