// Package kbssession is the guest's one attested session with the key
// broker: sealed container specs and image decryption keys share it (one
// attestation, one cached token).
package kbssession

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"

	"github.com/containerd/errdefs"

	"github.com/raksh-project/raksh/agent"
	"github.com/raksh-project/raksh/agent/unseal"
	"github.com/raksh-project/raksh/kbs/client"
	"github.com/raksh-project/raksh/tee"
	"github.com/raksh-project/raksh/tee/detect"
	"github.com/raksh-project/raksh/tee/sim"
)

// kbsTarget is the proxy target the shim forwards to the key broker
// ([proxy] kbs = "host:port" in the runtime config).
const kbsTarget = "kbs"

// kbsURL is the broker's URL as the guest sees it. The guest has no network:
// every connection is a proxy stream the shim forwards to the allow-listed
// address, so the host part only names the target. The broker is spoken to
// in plain HTTP over that stream: the resources it returns are JWEs
// encrypted to the guest's ephemeral TEE key, bound into the evidence.
const kbsURL = "http://" + kbsTarget

// cmdlinePath is the kernel command line the sim attester reads its launch
// measurement and init-data digest from (the shim's sim launcher puts them
// there).
const cmdlinePath = "/proc/cmdline"

// Session is the agent's one attested KBS client, reached through the
// shim's "kbs" proxy stream and attesting with the TEE the guest runs in
// (the simulated TEE when no hardware TEE is found). Sealed specs and image
// keys share it (one attestation, one cached token). It is built on first
// use and kept; a failure is retried on the next use.
type Session struct {
	dial Dialer

	mu sync.Mutex
	c  *client.Client
}

// Dialer opens a stream to a proxy target of the shim.
type Dialer func(ctx context.Context, target string) (net.Conn, error)

// New returns a session reaching the broker through dial (the shim's "kbs"
// proxy target).
func New(dial Dialer) *Session {
	return &Session{dial: dial}
}

// Client returns the session's KBS client, building it on first use.
func (s *Session) Client(ctx context.Context) (*client.Client, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.c != nil {
		return s.c, nil
	}
	a, err := detect.NewAttester(ctx, detect.WithFallback(simAttester))
	if err != nil {
		return nil, err
	}
	c, err := client.New(kbsURL, a, client.WithDialer(func(ctx context.Context, _, _ string) (net.Conn, error) {
		return s.dial(ctx, kbsTarget)
	}))
	if err != nil {
		return nil, err
	}
	s.c = c
	return c, nil
}

// Resources returns the session as the resource getter of image keys.
func (s *Session) Resources(ctx context.Context) (unseal.ResourceGetter, error) {
	return s.Client(ctx)
}

// KeySource returns the agent's source of workload keys for sealed
// containers: the session's KBS client (which caches its token and the
// keys).
func (s *Session) KeySource() agent.KeySourceFunc {
	var (
		mu   sync.Mutex
		keys unseal.KeySource
	)
	return func(ctx context.Context) (unseal.KeySource, error) {
		mu.Lock()
		defer mu.Unlock()
		if keys != nil {
			return keys, nil
		}
		c, err := s.Client(ctx)
		if err != nil {
			return nil, err
		}
		keys = unseal.NewKBSKeys(c)
		return keys, nil
	}
}

// simAttester returns the simulated TEE's attester: the platform key baked
// into the initrd and the measurement the shim put on the command line.
func simAttester() (tee.Attester, error) {
	b, err := os.ReadFile(cmdlinePath)
	if err != nil {
		return nil, fmt.Errorf("read kernel command line: %w", err)
	}
	if !strings.Contains(string(b), sim.KernelParamMeasurement+"=") {
		return nil, fmt.Errorf("no TEE: this VM was launched without one (set tee = \"sim\" in the runtime config for the simulated TEE): %w", errdefs.ErrFailedPrecondition)
	}
	if _, err := os.Stat(sim.DefaultKeyPath); err != nil {
		return nil, fmt.Errorf("simulated TEE: the initrd carries no platform key at %s (rebuild it with hack/build-guest.sh): %w", sim.DefaultKeyPath, errdefs.ErrFailedPrecondition)
	}
	return sim.NewAttesterFromFiles(sim.DefaultKeyPath, cmdlinePath)
}
