package nri

import (
	"bytes"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"

	"github.com/containerd/errdefs"
	"sigs.k8s.io/yaml"

	"github.com/raksh-project/raksh/envelope"
)

// Mode says what the plugin does with the containers of raksh pods.
type Mode string

// Modes.
const (
	// ModeSeal seals on the node whatever a container still carries in
	// clear (unmodified workloads), and adopts owner-sealed envelopes.
	ModeSeal Mode = "seal"
	// ModeRequireClientSealed accepts only containers whose owner sealed
	// them with rakshctl; any other container of a raksh pod is refused.
	ModeRequireClientSealed Mode = "require-client-sealed"
	// ModeOff leaves every container untouched (the shim's guard still
	// applies).
	ModeOff Mode = "off"
)

// Defaults.
const (
	// DefaultRuntimeHandler is the runtime handler of raksh pods when the
	// configuration names none.
	DefaultRuntimeHandler = "raksh"
	// DefaultKubeletPodsDir is where the kubelet keeps pod volumes; secret
	// files are only read from below it.
	DefaultKubeletPodsDir = "/var/lib/kubelet/pods"
	// DefaultMaxValueBytes limits one argument or environment entry.
	DefaultMaxValueBytes = 64 << 10
	// DefaultMaxFileBytes limits one sealed file.
	DefaultMaxFileBytes = 256 << 10
	// DefaultMaxEnvelopeBytes limits one serialized envelope.
	DefaultMaxEnvelopeBytes = 768 << 10
)

// Config is the plugin's YAML configuration, passed by NRI to Configure
// (from /etc/nri/conf.d/10-raksh.conf for a pre-registered plugin) or read
// from the -config file for an external one.
type Config struct {
	// Mode is seal (default), require-client-sealed or off.
	Mode Mode `json:"mode,omitempty"`
	// RuntimeHandlers are the CRI runtime handlers of raksh pods (the pod
	// sandbox's RuntimeHandler). Default: [raksh].
	RuntimeHandlers []string `json:"runtimeHandlers,omitempty"`
	// Namespaces, when set, restricts raksh pods to these namespaces
	// (path.Match patterns).
	Namespaces []string `json:"namespaces,omitempty"`
	// ExcludeNamespaces are namespaces (path.Match patterns) whose pods are
	// never touched.
	ExcludeNamespaces []string `json:"excludeNamespaces,omitempty"`
	// PodSelector, when set, restricts raksh pods to pods carrying all of
	// these labels with these values ("*" matches any value).
	PodSelector map[string]string `json:"podSelector,omitempty"`
	// Recipients are the public keys envelopes are sealed to. The first is
	// the default; a pod selects another with the io.raksh.recipient
	// annotation set to its keyID. Required in seal mode.
	Recipients []RecipientConfig `json:"recipients,omitempty"`
	// Seal says what to seal in seal mode. When the section is absent, the
	// default seals args, all env and secret volumes; when present, only
	// what it lists.
	Seal *SealConfig `json:"seal,omitempty"`
	// Limits bound what is sealed.
	Limits Limits `json:"limits"`
	// KubeletPodsDir is the kubelet's pods directory; secret files are read
	// only from volumes below it. Default /var/lib/kubelet/pods.
	KubeletPodsDir string `json:"kubeletPodsDir,omitempty"`
}

// RecipientConfig names one recipient public key.
type RecipientConfig struct {
	// KeyID is the KBS resource URI of the private key
	// (kbs:///<repo>/<type>/<tag>).
	KeyID string `json:"keyID"`
	// KeyFile is a PEM (PKIX public key or certificate) or JWK file.
	KeyFile string `json:"keyFile"`
}

// SealConfig says what is sealed on the node.
type SealConfig struct {
	// Args seals the process arguments.
	Args bool `json:"args"`
	// Env selects environment variables to seal.
	Env EnvSelector `json:"env"`
	// Files selects volumes whose files are sealed.
	Files FileSelector `json:"files"`
	// Image seals the image reference and digest, so the guest pulls and
	// verifies exactly that image.
	Image bool `json:"image"`
}

// EnvSelector selects environment variables by name.
type EnvSelector struct {
	// All seals every variable not excluded.
	All bool `json:"all"`
	// Names are sealed by exact name.
	Names []string `json:"names,omitempty"`
	// Patterns are path.Match patterns of names to seal ("*_PASSWORD").
	Patterns []string `json:"patterns,omitempty"`
	// Exclude are path.Match patterns of names never sealed.
	Exclude []string `json:"exclude,omitempty"`
}

// FileSelector selects Kubernetes volumes whose files are sealed; their
// mounts are removed from the container.
type FileSelector struct {
	// Secrets seals secret volumes (kubernetes.io~secret).
	Secrets bool `json:"secrets"`
	// Projected seals projected volumes (kubernetes.io~projected),
	// including service account tokens, which then no longer rotate inside
	// the container.
	Projected bool `json:"projected"`
}

// Limits bound the size of what is sealed. Zero means the default.
type Limits struct {
	// MaxValueBytes limits one argument or environment entry.
	MaxValueBytes int `json:"maxValueBytes,omitempty"`
	// MaxFileBytes limits one sealed file.
	MaxFileBytes int `json:"maxFileBytes,omitempty"`
	// MaxEnvelopeBytes limits the serialized envelope (owner-sealed or
	// node-sealed); at most envelope.MaxSize.
	MaxEnvelopeBytes int `json:"maxEnvelopeBytes,omitempty"`
}

// DefaultConfig returns the configuration used for fields left unset: seal
// mode on the raksh handler, sealing args, all env and secret volumes.
func DefaultConfig() *Config {
	return &Config{
		Mode:            ModeSeal,
		RuntimeHandlers: []string{DefaultRuntimeHandler},
		Seal:            DefaultSealConfig(),
		Limits: Limits{
			MaxValueBytes:    DefaultMaxValueBytes,
			MaxFileBytes:     DefaultMaxFileBytes,
			MaxEnvelopeBytes: DefaultMaxEnvelopeBytes,
		},
		KubeletPodsDir: DefaultKubeletPodsDir,
	}
}

// DefaultSealConfig seals args, all environment variables and secret
// volumes.
func DefaultSealConfig() *SealConfig {
	return &SealConfig{Args: true, Env: EnvSelector{All: true}, Files: FileSelector{Secrets: true}}
}

// ParseConfig decodes a YAML configuration strictly (unknown fields are
// errors) over DefaultConfig and validates it. It does not read key files.
func ParseConfig(data []byte) (*Config, error) {
	c := DefaultConfig()
	c.Seal = nil
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, fmt.Errorf("empty raksh-nri configuration: %w", errdefs.ErrInvalidArgument)
	}
	if err := yaml.UnmarshalStrict(data, c); err != nil {
		return nil, fmt.Errorf("malformed raksh-nri configuration: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	if c.Seal == nil {
		c.Seal = DefaultSealConfig()
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// Validate checks the configuration's shape.
func (c *Config) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("raksh-nri configuration: "+format+": %w", append(args, errdefs.ErrInvalidArgument)...)
	}
	switch c.Mode {
	case ModeSeal, ModeRequireClientSealed, ModeOff:
	default:
		return bad("mode %q (want %s, %s or %s)", c.Mode, ModeSeal, ModeRequireClientSealed, ModeOff)
	}
	if len(c.RuntimeHandlers) == 0 {
		return bad("runtimeHandlers is empty")
	}
	if c.Seal == nil {
		c.Seal = DefaultSealConfig()
	}
	for _, list := range [][]string{c.Namespaces, c.ExcludeNamespaces, c.Seal.Env.Patterns, c.Seal.Env.Exclude} {
		for _, p := range list {
			if _, err := path.Match(p, ""); err != nil {
				return bad("bad pattern %q", p)
			}
		}
	}
	if c.Mode == ModeSeal && len(c.Recipients) == 0 {
		return bad("mode %s needs at least one recipient", ModeSeal)
	}
	seen := map[string]bool{}
	for i, r := range c.Recipients {
		if _, err := envelope.ParseKeyID(r.KeyID); err != nil {
			return bad("recipients[%d]: %v", i, err)
		}
		if r.KeyFile == "" {
			return bad("recipients[%d] (%s): keyFile is empty", i, r.KeyID)
		}
		if seen[r.KeyID] {
			return bad("recipients[%d]: keyID %s listed twice", i, r.KeyID)
		}
		seen[r.KeyID] = true
	}
	l := &c.Limits
	if l.MaxValueBytes < 0 || l.MaxFileBytes < 0 || l.MaxEnvelopeBytes < 0 {
		return bad("negative limit")
	}
	if l.MaxEnvelopeBytes > envelope.MaxSize {
		return bad("maxEnvelopeBytes %d over the envelope format's %d", l.MaxEnvelopeBytes, envelope.MaxSize)
	}
	if l.MaxValueBytes == 0 {
		l.MaxValueBytes = DefaultMaxValueBytes
	}
	if l.MaxFileBytes == 0 {
		l.MaxFileBytes = DefaultMaxFileBytes
	}
	if l.MaxEnvelopeBytes == 0 {
		l.MaxEnvelopeBytes = DefaultMaxEnvelopeBytes
	}
	if c.KubeletPodsDir == "" || !filepath.IsAbs(c.KubeletPodsDir) {
		return bad("kubeletPodsDir %q must be an absolute path", c.KubeletPodsDir)
	}
	c.KubeletPodsDir = filepath.Clean(c.KubeletPodsDir)
	return nil
}

// loadRecipients reads the recipient key files.
func (c *Config) loadRecipients() ([]envelope.Recipient, error) {
	var out []envelope.Recipient
	for _, r := range c.Recipients {
		data, err := os.ReadFile(r.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("raksh-nri: recipient %s: failed to read key file: %w", r.KeyID, err)
		}
		key, err := envelope.ParsePublicKey(data)
		if err != nil {
			return nil, fmt.Errorf("raksh-nri: recipient %s: key file %s: %w", r.KeyID, r.KeyFile, err)
		}
		out = append(out, envelope.Recipient{KeyID: r.KeyID, Key: key})
	}
	return out, nil
}

// matchAny reports whether s matches one of the path.Match patterns.
func matchAny(patterns []string, s string) bool {
	return slices.ContainsFunc(patterns, func(p string) bool {
		ok, _ := path.Match(p, s)
		return ok
	})
}
