// Package nri is Raksh's NRI plugin: for the containers of raksh pods it
// seals on the node what a container still carries in clear (args,
// environment, secret volume files, image reference) into an envelope, or
// checks an envelope its owner sealed with rakshctl, strips the cleartext
// from the container (SetArgs and env values to the placeholder, RemoveMount) and
// attaches the envelope as the io.raksh.envelope container annotation.
//
// Node-side sealing protects everything downstream of containerd (the shim,
// the VMM, the VM's disk, logs and crash dumps); containerd and the kubelet
// have seen the values already. Only owner sealing protects against the node.
// NRI adjustments can be dropped, so the shim re-checks every raksh
// container's final spec with package guard.
package nri

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/containerd/nri/pkg/api"
	"github.com/containerd/nri/pkg/stub"
)

// Default plugin identity, matching /opt/nri/plugins/10-raksh.
const (
	// PluginName is the plugin's NRI name; it is also what
	// default_validator.required_plugins names.
	PluginName = "raksh"
	// PluginIdx is the plugin's default NRI index.
	PluginIdx = "10"
)

// Plugin is the NRI plugin. Create it with New and run it with Run (or hand
// it to stub.New yourself).
type Plugin struct {
	state      atomic.Pointer[state]
	fileConfig []byte

	mu        sync.Mutex
	configErr error
}

var (
	_ stub.ConfigureInterface       = (*Plugin)(nil)
	_ stub.CreateContainerInterface = (*Plugin)(nil)
)

// Opt configures a Plugin.
type Opt func(*Plugin) error

// WithConfigFile reads the configuration used when NRI passes none (the
// plugin is external, connecting to the NRI socket).
func WithConfigFile(path string) Opt {
	return func(p *Plugin) error {
		data, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("failed to read raksh-nri configuration: %w", err)
		}
		p.fileConfig = data
		return nil
	}
}

// WithConfig sets the configuration used when NRI passes none.
func WithConfig(data []byte) Opt {
	return func(p *Plugin) error {
		p.fileConfig = data
		return nil
	}
}

// New returns an unconfigured plugin; it is configured when NRI calls
// Configure.
func New(opts ...Opt) (*Plugin, error) {
	p := &Plugin{}
	for _, o := range opts {
		if err := o(p); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// Configure parses the configuration NRI passes (or, when it passes none,
// the one given with WithConfigFile/WithConfig), loads the recipient keys
// and makes it current. An invalid configuration is an error: registration
// fails and the previous configuration, if any, stays in force.
func (p *Plugin) Configure(ctx context.Context, config, runtime, version string) (api.EventMask, error) {
	data := []byte(config)
	source := "NRI"
	if config == "" {
		data, source = p.fileConfig, "file"
	}
	st, err := p.configure(data)
	p.mu.Lock()
	p.configErr = err
	p.mu.Unlock()
	if err != nil {
		log.G(ctx).WithError(err).WithField("source", source).Error("raksh-nri configuration refused")
		return 0, err
	}
	p.state.Store(st)
	log.G(ctx).WithFields(log.Fields{
		"source":           source,
		"runtime":          runtime,
		"runtime_version":  version,
		"mode":             st.cfg.Mode,
		"runtime_handlers": st.cfg.RuntimeHandlers,
		"recipients":       len(st.recipients),
	}).Info("raksh-nri configured")
	return api.MustParseEventMask("CreateContainer"), nil
}

func (p *Plugin) configure(data []byte) (*state, error) {
	cfg, err := ParseConfig(data)
	if err != nil {
		return nil, err
	}
	return newState(cfg)
}

// ConfigError returns the error of the last Configure call, if it failed.
func (p *Plugin) ConfigError() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.configErr
}

// CreateContainer seals or checks the container of a raksh pod and returns
// the adjustment stripping its cleartext; containers of other pods are
// untouched. An error fails the container's creation.
func (p *Plugin) CreateContainer(ctx context.Context, pod *api.PodSandbox, ctr *api.Container) (*api.ContainerAdjustment, []*api.ContainerUpdate, error) {
	adj, err := p.Adjust(ctx, pod, ctr)
	if err != nil {
		log.G(ctx).WithError(err).WithField("container", ctr.GetName()).Warn("raksh-nri refused container")
		return nil, nil, err
	}
	return adj, nil, nil
}

// Adjust is CreateContainer's logic: the adjustment for ctr in pod, nil when
// the pod is not a raksh pod.
func (p *Plugin) Adjust(ctx context.Context, pod *api.PodSandbox, ctr *api.Container) (*api.ContainerAdjustment, error) {
	st := p.state.Load()
	if st == nil {
		return nil, fmt.Errorf("raksh-nri is not configured: %w", errdefs.ErrFailedPrecondition)
	}
	return st.adjust(ctx, pod, ctr)
}

// RunOpts tune Run.
type RunOpts struct {
	// StubOptions are passed to stub.New (name, index, socket path...).
	StubOptions []stub.Option
	// MinBackoff and MaxBackoff bound the wait between reconnection
	// attempts. Defaults 200ms and 5s.
	MinBackoff, MaxBackoff time.Duration
	// OnConnect, if set, is called each time the plugin is registered and
	// configured.
	OnConnect func()
}

// Run registers p with NRI and serves it until ctx is done. A plugin
// launched by NRI (pre-registered, NRI_PLUGIN_SOCKET set) returns when its
// connection closes: the runtime relaunches it. An external plugin
// reconnects when the runtime drops it (containerd restarting), retrying
// with backoff. A configuration error is returned at once: retrying would
// not fix it.
func Run(ctx context.Context, p *Plugin, o RunOpts) error {
	if o.MinBackoff <= 0 {
		o.MinBackoff = 200 * time.Millisecond
	}
	if o.MaxBackoff < o.MinBackoff {
		o.MaxBackoff = max(5*time.Second, o.MinBackoff)
	}
	preRegistered := os.Getenv(api.PluginSocketEnvVar) != ""
	var opts []stub.Option
	// A launched plugin takes its name and index from the runtime's
	// environment (the file name /opt/nri/plugins/NN-name).
	if os.Getenv(api.PluginNameEnvVar) == "" {
		opts = append(opts, stub.WithPluginName(PluginName))
	}
	if os.Getenv(api.PluginIdxEnvVar) == "" {
		opts = append(opts, stub.WithPluginIdx(PluginIdx))
	}
	opts = append(opts, o.StubOptions...)
	opts = append(opts, stub.WithFailurePolicy(&api.FailurePolicy{FailRequest: true}))

	backoff := o.MinBackoff
	for {
		closed := make(chan struct{})
		var once sync.Once
		s, err := stub.New(p, append(opts, stub.WithOnClose(func() { once.Do(func() { close(closed) }) }))...)
		if err != nil {
			return fmt.Errorf("failed to create NRI stub: %w", err)
		}
		err = s.Start(ctx)
		if err != nil && preRegistered && p.ConfigError() == nil {
			return fmt.Errorf("pre-registered plugin failed to start: %w", err)
		}
		if err == nil {
			backoff = o.MinBackoff
			if o.OnConnect != nil {
				o.OnConnect()
			}
			select {
			case <-closed:
				err = errors.New("connection to the runtime closed")
			case <-ctx.Done():
			}
			s.Stop()
		}
		if ctx.Err() != nil {
			return nil
		}
		if cerr := p.ConfigError(); cerr != nil {
			return cerr
		}
		if preRegistered {
			return fmt.Errorf("pre-registered plugin lost its runtime connection: %w", err)
		}
		log.G(ctx).WithError(err).WithField("retry_in", backoff).Warn("raksh-nri disconnected from NRI, reconnecting")
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, o.MaxBackoff)
	}
}
