package runtime

import (
	"context"
	"fmt"

	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	agentapi "github.com/raksh-project/raksh/api/agent/v1"
	"github.com/raksh-project/raksh/runtime/network"
	"github.com/raksh-project/raksh/runtime/vm"
	"github.com/raksh-project/raksh/runtime/vm/qemu"
)

// podNetnsPath returns the network namespace path the spec joins: for a CRI
// pod the sandbox's (CNI set it up before the sandbox is created), for a
// lone container the one its creator prepared. "" means the container has
// no network namespace of its own to attach: the host's (hostNetwork; the
// VM gets no NIC) or a new, empty one.
func podNetnsPath(spec *specs.Spec) string {
	if spec == nil || spec.Linux == nil {
		return ""
	}
	for _, ns := range spec.Linux.Namespaces {
		if ns.Type == specs.NetworkNamespace {
			return ns.Path
		}
	}
	return ""
}

// attachNetwork connects the spec's network namespace to taps for the VM.
// It returns nil and no NIC when the spec names no network namespace.
func attachNetwork(ctx context.Context, spec *specs.Spec) (*network.Network, []qemu.NIC, error) {
	path := podNetnsPath(spec)
	if path == "" {
		return nil, nil, nil
	}
	n, err := network.Attach(ctx, path)
	if err != nil {
		return nil, nil, fmt.Errorf("pod network: %w", err)
	}
	var nics []qemu.NIC
	for _, ep := range n.Endpoints {
		nics = append(nics, qemu.NIC{Tap: ep.Tap, MAC: ep.MAC.String()})
		log.G(ctx).WithField("interface", ep.Name).WithField("tap", ep.TapName).WithField("mac", ep.MAC.String()).Info("pod interface attached to the VM")
	}
	return n, nics, nil
}

// detachNetwork removes the pod's taps and redirects.
func (s *Service) detachNetwork(ctx context.Context) {
	s.mu.Lock()
	n := s.net
	s.net = nil
	s.mu.Unlock()
	if err := n.Detach(context.WithoutCancel(ctx)); err != nil {
		log.G(ctx).WithError(err).Warn("detach pod network")
	}
}

// setupGuestNetwork has the agent configure the guest's NICs as the pod's
// netns has them, before any container is created.
func setupGuestNetwork(ctx context.Context, v vm.Instance, n *network.Network) error {
	if n == nil || len(n.Endpoints) == 0 {
		return nil
	}
	if _, err := agentapi.NewNetworkClient(v.Client()).SetupInterfaces(ctx, setupRequest(&n.Config)); err != nil {
		return fmt.Errorf("configure the guest network: %w", errgrpc.ToNative(err))
	}
	return nil
}

// setupRequest renders the pod netns' configuration for the agent.
func setupRequest(c *network.Config) *agentapi.SetupInterfacesRequest {
	r := &agentapi.SetupInterfacesRequest{}
	for _, i := range c.Interfaces {
		ifc := &agentapi.Interface{Name: i.Name, Mac: i.MAC.String(), Mtu: uint32(i.MTU)}
		for _, a := range i.Addrs {
			ifc.Addresses = append(ifc.Addresses, a.String())
		}
		r.Interfaces = append(r.Interfaces, ifc)
	}
	for _, rt := range c.Routes {
		pr := &agentapi.Route{Device: rt.Device, Scope: uint32(rt.Scope)}
		if rt.Dst != nil {
			if ones, _ := rt.Dst.Mask.Size(); ones > 0 || !rt.Dst.IP.IsUnspecified() {
				pr.Destination = rt.Dst.String()
			}
		}
		if rt.Gw != nil {
			pr.Gateway = rt.Gw.String()
		}
		if rt.Src != nil {
			pr.Source = rt.Src.String()
		}
		r.Routes = append(r.Routes, pr)
	}
	for _, nb := range c.Neighbors {
		r.Neighbors = append(r.Neighbors, &agentapi.Neighbor{Ip: nb.IP.String(), Mac: nb.MAC.String(), Device: nb.Device})
	}
	return r
}
