package agent

import (
	"context"

	"github.com/containerd/errdefs/pkg/errgrpc"

	"github.com/raksh-project/raksh/agent/network"
	agentapi "github.com/raksh-project/raksh/api/agent/v1"
)

// networkService is the agent's Network API (api/agent/v1/network.proto).
type networkService struct{ s *Service }

var _ agentapi.NetworkService = (*networkService)(nil)

// SetupInterfaces validates the node's description of the pod network and
// configures the guest with it.
func (n *networkService) SetupInterfaces(ctx context.Context, r *agentapi.SetupInterfacesRequest) (*agentapi.SetupInterfacesResponse, error) {
	if err := n.s.SetupNetwork(ctx, NetworkConfig(r)); err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &agentapi.SetupInterfacesResponse{}, nil
}

// ListListeners lists the guest's loopback-reachable TCP listening ports.
func (n *networkService) ListListeners(ctx context.Context, _ *agentapi.ListListenersRequest) (*agentapi.ListListenersResponse, error) {
	ports, err := network.Listeners()
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &agentapi.ListListenersResponse{Ports: ports}, nil
}

// NetworkConfig converts a SetupInterfaces request (not yet validated).
func NetworkConfig(r *agentapi.SetupInterfacesRequest) *network.Config {
	c := &network.Config{}
	for _, i := range r.GetInterfaces() {
		c.Interfaces = append(c.Interfaces, network.Interface{Name: i.GetName(), MAC: i.GetMac(), MTU: i.GetMtu(), Addrs: i.GetAddresses()})
	}
	for _, rt := range r.GetRoutes() {
		c.Routes = append(c.Routes, network.Route{Dst: rt.GetDestination(), Gw: rt.GetGateway(), Src: rt.GetSource(), Device: rt.GetDevice(), Scope: rt.GetScope()})
	}
	for _, nb := range r.GetNeighbors() {
		c.Neighbors = append(c.Neighbors, network.Neighbor{IP: nb.GetIp(), MAC: nb.GetMac(), Device: nb.GetDevice()})
	}
	return c
}
