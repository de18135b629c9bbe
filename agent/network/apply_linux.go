package network

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sort"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// nicTimeout bounds the wait for a NIC to appear after boot.
const nicTimeout = 10 * time.Second

// Apply validates c and configures the current network namespace with it:
// lo up; each NIC, found by MAC, renamed, given its MTU and addresses and
// brought up; then the routes (on-link ones first) and static neighbours.
func Apply(ctx context.Context, c *Config) error {
	p, err := c.parse()
	if err != nil {
		return err
	}
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink: %w", err)
	}
	defer h.Close()
	if lo, err := h.LinkByName("lo"); err == nil {
		if err := h.LinkSetUp(lo); err != nil {
			return fmt.Errorf("bring up lo: %w", err)
		}
	}
	for _, ifc := range p.ifaces {
		if err := configure(ctx, h, ifc); err != nil {
			return err
		}
	}
	routes := append([]pRoute(nil), p.routes...)
	sort.SliceStable(routes, func(i, j int) bool { return routes[i].gw == nil && routes[j].gw != nil })
	for _, r := range routes {
		l, err := h.LinkByName(r.dev)
		if err != nil {
			return fmt.Errorf("route %s: %w", orDefault(r.original.Dst), err)
		}
		nr := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: r.dst, Gw: r.gw, Src: r.src, Scope: netlink.Scope(r.scope), Family: r.family}
		if err := h.RouteReplace(nr); err != nil {
			return fmt.Errorf("add route %s via %s dev %s: %w", orDefault(r.original.Dst), r.original.Gw, r.dev, err)
		}
	}
	for _, nb := range p.neighs {
		l, err := h.LinkByName(nb.dev)
		if err != nil {
			return fmt.Errorf("neighbour %s: %w", nb.ip, err)
		}
		n := &netlink.Neigh{LinkIndex: l.Attrs().Index, IP: nb.ip, HardwareAddr: nb.mac, State: netlink.NUD_PERMANENT, Family: family(nb.ip)}
		if err := h.NeighSet(n); err != nil {
			return fmt.Errorf("add neighbour %s lladdr %s dev %s: %w", nb.ip, nb.mac, nb.dev, err)
		}
	}
	log.G(ctx).WithField("network", c.String()).Info("guest network configured")
	return nil
}

// configure sets up the NIC with ifc's MAC.
func configure(ctx context.Context, h *netlink.Handle, ifc pIface) error {
	l, err := waitNIC(ctx, h, ifc.mac)
	if err != nil {
		return fmt.Errorf("interface %s (%s): %w", ifc.name, ifc.mac, err)
	}
	if l.Attrs().Name != ifc.name {
		if other, err := h.LinkByName(ifc.name); err == nil && other.Attrs().Index != l.Attrs().Index {
			return fmt.Errorf("interface %s: the name is taken by another guest link: %w", ifc.name, errdefs.ErrAlreadyExists)
		}
		if err := h.LinkSetDown(l); err != nil {
			return fmt.Errorf("interface %s: %w", ifc.name, err)
		}
		if err := h.LinkSetName(l, ifc.name); err != nil {
			return fmt.Errorf("rename %s to %s: %w", l.Attrs().Name, ifc.name, err)
		}
	}
	if err := h.LinkSetMTU(l, ifc.mtu); err != nil {
		return fmt.Errorf("interface %s: mtu %d: %w", ifc.name, ifc.mtu, err)
	}
	for _, a := range ifc.addrs {
		addr := &netlink.Addr{IPNet: a}
		if a.IP.To4() == nil {
			addr.Flags = unix.IFA_F_NODAD // the node's CNI did DAD already
		}
		if err := h.AddrReplace(l, addr); err != nil {
			return fmt.Errorf("interface %s: address %s: %w", ifc.name, a, err)
		}
	}
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("bring up %s: %w", ifc.name, err)
	}
	return nil
}

// waitNIC finds the link with mac, waiting for its driver to probe it.
func waitNIC(ctx context.Context, h *netlink.Handle, mac net.HardwareAddr) (netlink.Link, error) {
	deadline := time.Now().Add(nicTimeout)
	for {
		links, err := h.LinkList()
		if err != nil {
			return nil, err
		}
		for _, l := range links {
			if l.Attrs().HardwareAddr.String() == mac.String() && l.Type() == "device" {
				return l, nil
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%w after %s: %w", errNoNIC, nicTimeout, errdefs.ErrNotFound)
		}
		select {
		case <-ctx.Done():
			return nil, errors.Join(errNoNIC, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}
