package runtime

import "github.com/raksh-project/raksh/runtime/launch"

// The runtime config and what it launches live in runtime/launch, which
// rakshctl imports without linking the shim; these are the shim's names for
// them.
type (
	// Config is launch.Config.
	Config = launch.Config
)

// Names kept from before the move to runtime/launch.
const (
	DefaultConfigPath    = launch.DefaultConfigPath
	ConfigEnv            = launch.ConfigEnv
	TEENone              = launch.TEENone
	TEESim               = launch.TEESim
	KernelParamImageKeys = launch.KernelParamImageKeys
)

// LoadConfig is launch.LoadConfig.
func LoadConfig(path string) (Config, error) { return launch.LoadConfig(path) }

// DefaultConfig is launch.DefaultConfig.
func DefaultConfig() Config { return launch.DefaultConfig() }

// KernelParams is launch.KernelParams.
func KernelParams(cfg Config) []string { return launch.KernelParams(cfg) }

// LaunchMeasurement is launch.LaunchMeasurement.
func LaunchMeasurement(cfg Config) ([]byte, error) { return launch.LaunchMeasurement(cfg) }
