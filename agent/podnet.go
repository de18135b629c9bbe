package agent

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/raksh-project/raksh/agent/network"
	"github.com/raksh-project/raksh/internal/transport"
)

// PortForwardPrefix prefixes the name of a stream the shim opens to reach a
// TCP port on the guest's loopback ("portfwd/8080"): CRI port-forward.
const PortForwardPrefix = "portfwd/"

// podNet is the guest's pod network state.
type podNet struct {
	mu         sync.Mutex
	configured bool
	// apply configures the guest; tests substitute it.
	apply func(ctx context.Context, c *network.Config) error
}

// SetupNetwork configures the guest's NICs (network.Apply) once, before any
// container exists: containers then share the VM's network namespace.
func (s *Service) SetupNetwork(ctx context.Context, c *network.Config) error {
	if err := c.Validate(); err != nil {
		return err
	}
	s.mu.Lock()
	n := len(s.containers)
	s.mu.Unlock()
	s.net.mu.Lock()
	defer s.net.mu.Unlock()
	if s.net.configured {
		return fmt.Errorf("the guest network is configured already: %w", errdefs.ErrFailedPrecondition)
	}
	if n > 0 {
		return fmt.Errorf("the guest network must be configured before any container is created (%d exist): %w", n, errdefs.ErrFailedPrecondition)
	}
	apply := s.net.apply
	if apply == nil {
		apply = network.Apply
	}
	if err := apply(ctx, c); err != nil {
		return err
	}
	s.net.configured = true
	return nil
}

// hasPodNetwork reports whether SetupNetwork configured the guest.
func (s *Service) hasPodNetwork() bool {
	s.net.mu.Lock()
	defer s.net.mu.Unlock()
	return s.net.configured
}

// shareVMNetwork removes the network namespace from a container's spec when
// the pod has a network: the pod's NICs are the VM's, so its containers use
// the VM's network namespace (as a pod's containers share the sandbox's).
// The spec's net.* sysctls are per network namespace, so they are the
// pod's: they are applied to the VM's namespace (runc refuses them in a
// namespace it did not create) and removed from the spec.
func (s *Service) shareVMNetwork(ctx context.Context, spec *specs.Spec) error {
	if spec.Linux == nil || !s.hasPodNetwork() {
		return nil
	}
	nss := spec.Linux.Namespaces[:0]
	for _, ns := range spec.Linux.Namespaces {
		if ns.Type != specs.NetworkNamespace {
			nss = append(nss, ns)
		}
	}
	spec.Linux.Namespaces = nss
	for k, v := range spec.Linux.Sysctl {
		if !strings.HasPrefix(k, "net.") {
			continue
		}
		if err := network.SetSysctl(k, v); err != nil {
			return err
		}
		log.G(ctx).WithField("sysctl", k).WithField("value", v).Debug("network sysctl applied to the pod's (the VM's) network namespace")
		delete(spec.Linux.Sysctl, k)
	}
	return nil
}

// portForward connects stream c, named PortForwardPrefix+port, to that TCP
// port on the guest's loopback.
func (s *Service) portForward(ctx context.Context, name string, c net.Conn) {
	defer c.Close()
	port, err := strconv.ParseUint(strings.TrimPrefix(name, PortForwardPrefix), 10, 16)
	if err != nil || port == 0 {
		log.G(ctx).WithField("stream", name).Warn("port-forward stream names no TCP port; closed")
		return
	}
	if !s.hasPodNetwork() {
		log.G(ctx).WithField("port", port).Warn("port-forward refused: the pod has no network")
		return
	}
	d := net.Dialer{Timeout: 5 * time.Second}
	addr := net.JoinHostPort("127.0.0.1", strconv.FormatUint(port, 10))
	up, err := d.DialContext(ctx, "tcp4", addr)
	if err != nil {
		up, err = d.DialContext(ctx, "tcp6", net.JoinHostPort("::1", strconv.FormatUint(port, 10)))
	}
	if err != nil {
		log.G(ctx).WithError(err).WithField("port", port).Debug("port-forward: nothing answers")
		return
	}
	defer up.Close()
	transport.Splice(c, up)
}

// logHostHooks logs the OCI hooks of a spec that the agent does not run:
// hooks name host programs (prestart, createRuntime, createContainer,
// startContainer, poststart, poststop) and never run in the guest; the
// spec adaptation removes them.
func logHostHooks(ctx context.Context, id string, spec *specs.Spec) {
	h := spec.Hooks
	if h == nil {
		return
	}
	counts := map[string]int{
		"prestart": len(h.Prestart), "createRuntime": len(h.CreateRuntime), "createContainer": len(h.CreateContainer),
		"startContainer": len(h.StartContainer), "poststart": len(h.Poststart), "poststop": len(h.Poststop),
	}
	var dropped []string
	for _, k := range []string{"prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"} {
		if counts[k] > 0 {
			dropped = append(dropped, fmt.Sprintf("%s(%d)", k, counts[k]))
		}
	}
	if len(dropped) > 0 {
		log.G(ctx).WithField("id", id).WithField("hooks", strings.Join(dropped, ",")).Warn("OCI hooks dropped: they name host programs and are not run in the guest")
	}
}
