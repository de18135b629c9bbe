// Package network connects a pod's network namespace, as CNI set it up, to
// the pod's VM (Kata Containers' "tcfilter" model, written with netlink):
// beside each CNI interface of the netns the shim creates a tap device and
// redirects every frame both ways between the two with a tc ingress qdisc,
// a match-all u32 filter and a mirred redirect. QEMU opens a virtio-net
// device on the tap; the guest configures its NIC with the CNI interface's
// MAC, addresses, MTU, routes and static neighbours (agent/network).
//
// The CNI interface keeps its addresses in the netns for CNI's own
// bookkeeping, but its ingress is redirected before the netns' IP stack
// sees it: the guest owns the addresses.
package network

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Interface is one NIC the guest must configure, as CNI configured it in the
// pod's netns.
type Interface struct {
	// Name is the interface's name in the pod netns (the guest NIC is found
	// by MAC and renamed to it).
	Name string
	// MAC is the CNI interface's hardware address, given to the guest NIC.
	MAC net.HardwareAddr
	// MTU is the CNI interface's MTU.
	MTU int
	// Addrs are its global addresses (IPv6 link-local ones are left to the
	// guest kernel, which derives the same from the MAC).
	Addrs []*net.IPNet
}

// Route is a route of the pod netns through one of its interfaces. Routes
// the kernel adds itself for an address (proto kernel) are not listed.
type Route struct {
	// Dst is the destination; nil is the default route.
	Dst *net.IPNet
	// Gw is the gateway; nil for a route on the link.
	Gw net.IP
	// Src is the preferred source address, if any.
	Src net.IP
	// Device names the interface (an Interface.Name).
	Device string
	// Scope is the route's scope (unix.RT_SCOPE_*).
	Scope uint8
	// Family is unix.AF_INET or unix.AF_INET6.
	Family int
}

// Neighbor is a static (permanent) neighbour entry of an interface.
type Neighbor struct {
	IP     net.IP
	MAC    net.HardwareAddr
	Device string
}

// Config is the pod's network as the guest must reproduce it.
type Config struct {
	Interfaces []Interface
	Routes     []Route
	Neighbors  []Neighbor
}

// Endpoint is one CNI interface connected to a tap.
type Endpoint struct {
	Interface
	// TapName is the tap's name in the pod netns.
	TapName string
	// Tap is the tap's queue; QEMU opens its virtio-net device on it.
	Tap *os.File
}

// Network is a pod netns connected to taps for its VM. Detach undoes it.
type Network struct {
	// NetnsPath is the pod's network namespace.
	NetnsPath string
	// Endpoints are the connected interfaces, in the netns' link order.
	Endpoints []Endpoint
	// Config is what the guest must configure.
	Config Config
}

// tapPrefix names the taps the shim creates ("rktap0", ...).
const tapPrefix = "rktap"

// Attach reads every interface CNI put in the network namespace at
// nsPath (all but lo), creates a tap beside each and redirects traffic both
// ways between them. An interface of a type it cannot attach (only veth
// pairs are supported) fails with errdefs.ErrInvalidArgument (not
// ErrNotImplemented: containerd takes a shim's Unimplemented for an older
// task API and retries), a namespace path that does not exist with
// errdefs.ErrNotFound; either names the culprit and leaves nothing behind. A netns with no interface
// but lo gives a Network without endpoints.
func Attach(ctx context.Context, nsPath string) (_ *Network, retErr error) {
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("pod network namespace %s does not exist: %w", nsPath, errdefs.ErrNotFound)
		}
		return nil, fmt.Errorf("open pod network namespace %s: %w", nsPath, err)
	}
	defer ns.Close()
	n := &Network{NetnsPath: nsPath}
	err = inNetns(ns, func(h *netlink.Handle) error {
		links, err := h.LinkList()
		if err != nil {
			return fmt.Errorf("list links: %w", err)
		}
		var cni []netlink.Link
		for _, l := range links {
			a := l.Attrs()
			if a.Flags&net.FlagLoopback != 0 {
				continue
			}
			if t, ok := l.(*netlink.Tuntap); ok && len(a.Name) > len(tapPrefix) && a.Name[:len(tapPrefix)] == tapPrefix {
				return fmt.Errorf("interface %s (%s) is a raksh tap already: the netns is attached to another VM: %w", a.Name, t.Type(), errdefs.ErrAlreadyExists)
			}
			if l.Type() != "veth" {
				return fmt.Errorf("interface %s in %s is of type %q; the raksh runtime attaches only veth interfaces: %w", a.Name, nsPath, l.Type(), errdefs.ErrInvalidArgument)
			}
			cni = append(cni, l)
		}
		defer func() {
			if retErr != nil {
				n.detach(ctx, h)
			}
		}()
		for i, l := range cni {
			ep, err := attach(h, l, fmt.Sprintf("%s%d", tapPrefix, i))
			if ep != nil {
				n.Endpoints = append(n.Endpoints, *ep)
			}
			if err != nil {
				return err
			}
			n.Config.Interfaces = append(n.Config.Interfaces, ep.Interface)
			routes, neighs, err := readRoutes(h, l)
			if err != nil {
				return err
			}
			n.Config.Routes = append(n.Config.Routes, routes...)
			n.Config.Neighbors = append(n.Config.Neighbors, neighs...)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return n, nil
}

// attach reads l, creates the tap called tapName and sets up the redirects.
// On error the returned endpoint (if any) names what must be undone.
func attach(h *netlink.Handle, l netlink.Link, tapName string) (*Endpoint, error) {
	a := l.Attrs()
	addrs, err := h.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("addresses of %s: %w", a.Name, err)
	}
	ifc := Interface{Name: a.Name, MAC: append(net.HardwareAddr(nil), a.HardwareAddr...), MTU: a.MTU}
	if len(ifc.MAC) != 6 {
		return nil, fmt.Errorf("interface %s has no Ethernet MAC address (%q): %w", a.Name, a.HardwareAddr, errdefs.ErrInvalidArgument)
	}
	for _, ad := range addrs {
		if ad.IP.IsLinkLocalUnicast() && ad.IP.To4() == nil {
			continue
		}
		ifc.Addrs = append(ifc.Addrs, &net.IPNet{IP: ad.IP, Mask: ad.Mask})
	}
	tap := &netlink.Tuntap{
		LinkAttrs:  netlink.LinkAttrs{Name: tapName, MTU: a.MTU},
		Mode:       netlink.TUNTAP_MODE_TAP,
		Flags:      netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR,
		Queues:     1,
		NonPersist: true, // gone once the shim and QEMU close it
	}
	if err := h.LinkAdd(tap); err != nil {
		return nil, fmt.Errorf("create tap %s beside %s: %w", tapName, a.Name, err)
	}
	ep := &Endpoint{Interface: ifc, TapName: tapName, Tap: tap.Fds[0]}
	tl, err := h.LinkByName(tapName)
	if err != nil {
		return ep, fmt.Errorf("find tap %s: %w", tapName, err)
	}
	if err := h.LinkSetMTU(tl, a.MTU); err != nil {
		return ep, fmt.Errorf("set mtu of %s: %w", tapName, err)
	}
	if err := h.LinkSetUp(tl); err != nil {
		return ep, fmt.Errorf("bring up %s: %w", tapName, err)
	}
	for _, pair := range [][2]netlink.Link{{l, tl}, {tl, l}} {
		if err := redirect(h, pair[0], pair[1]); err != nil {
			return ep, err
		}
	}
	return ep, nil
}

// ingressHandle is the handle of the ingress qdisc (ffff:).
var ingressHandle = netlink.MakeHandle(0xffff, 0)

// redirect sends every frame arriving on from out of to: an ingress qdisc
// on from, a match-all u32 filter, a mirred egress redirect.
func redirect(h *netlink.Handle, from, to netlink.Link) error {
	q := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: from.Attrs().Index, Parent: netlink.HANDLE_INGRESS, Handle: ingressHandle}}
	if err := h.QdiscAdd(q); err != nil {
		return fmt.Errorf("add ingress qdisc to %s: %w", from.Attrs().Name, err)
	}
	f := &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{LinkIndex: from.Attrs().Index, Parent: ingressHandle, Priority: 1, Protocol: unix.ETH_P_ALL},
		Actions: []netlink.Action{&netlink.MirredAction{
			ActionAttrs:  netlink.ActionAttrs{Action: netlink.TC_ACT_STOLEN},
			MirredAction: netlink.TCA_EGRESS_REDIR,
			Ifindex:      to.Attrs().Index,
		}},
	}
	if err := h.FilterAdd(f); err != nil {
		return fmt.Errorf("redirect %s to %s: %w", from.Attrs().Name, to.Attrs().Name, err)
	}
	return nil
}

// readRoutes lists l's routes (main table, not the kernel's own) and its
// permanent neighbours.
func readRoutes(h *netlink.Handle, l netlink.Link) ([]Route, []Neighbor, error) {
	a := l.Attrs()
	rs, err := h.RouteList(l, netlink.FAMILY_ALL)
	if err != nil {
		return nil, nil, fmt.Errorf("routes of %s: %w", a.Name, err)
	}
	var routes []Route
	for _, r := range rs {
		if r.Protocol == unix.RTPROT_KERNEL || r.Table != unix.RT_TABLE_MAIN && r.Table != 0 {
			continue
		}
		if r.Dst != nil && r.Dst.IP.IsLinkLocalUnicast() && r.Dst.IP.To4() == nil {
			continue // fe80::/64, the guest kernel's own
		}
		if len(r.MultiPath) > 0 {
			return nil, nil, fmt.Errorf("multipath route %s on %s: %w", r, a.Name, errdefs.ErrInvalidArgument)
		}
		routes = append(routes, Route{Dst: r.Dst, Gw: r.Gw, Src: r.Src, Device: a.Name, Scope: uint8(r.Scope), Family: r.Family})
	}
	ns, err := h.NeighList(a.Index, netlink.FAMILY_ALL)
	if err != nil {
		return nil, nil, fmt.Errorf("neighbours of %s: %w", a.Name, err)
	}
	var neighs []Neighbor
	for _, nb := range ns {
		if nb.State&netlink.NUD_PERMANENT == 0 || len(nb.HardwareAddr) != 6 || nb.IP == nil {
			continue
		}
		neighs = append(neighs, Neighbor{IP: nb.IP, MAC: nb.HardwareAddr, Device: a.Name})
	}
	return routes, neighs, nil
}

// Files returns the tap queues in endpoint order.
func (n *Network) Files() []*os.File {
	var fs []*os.File
	for _, ep := range n.Endpoints {
		fs = append(fs, ep.Tap)
	}
	return fs
}

// Detach removes the taps and the redirects and closes the shim's tap
// queues. A netns that is gone already (CNI tore it down) is not an error.
func (n *Network) Detach(ctx context.Context) error {
	if n == nil {
		return nil
	}
	ns, err := netns.GetFromPath(n.NetnsPath)
	if err != nil {
		for _, ep := range n.Endpoints {
			ep.Tap.Close() // non-persistent: the tap goes with its last fd
		}
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("open pod network namespace %s: %w", n.NetnsPath, err)
	}
	defer ns.Close()
	return inNetns(ns, func(h *netlink.Handle) error {
		n.detach(ctx, h)
		return nil
	})
}

func (n *Network) detach(ctx context.Context, h *netlink.Handle) {
	for _, ep := range n.Endpoints {
		if l, err := h.LinkByName(ep.Name); err == nil {
			q := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: l.Attrs().Index, Parent: netlink.HANDLE_INGRESS, Handle: ingressHandle}}
			if err := h.QdiscDel(q); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
				log.G(ctx).WithError(err).WithField("interface", ep.Name).Warn("remove ingress redirect")
			}
		}
		if l, err := h.LinkByName(ep.TapName); err == nil {
			if err := h.LinkDel(l); err != nil {
				log.G(ctx).WithError(err).WithField("tap", ep.TapName).Warn("remove tap")
			}
		}
		if ep.Tap != nil {
			ep.Tap.Close()
		}
	}
	n.Endpoints = nil
}

// inNetns runs fn on a thread in ns (the tap's /dev/net/tun must be opened
// there) with a netlink handle of ns.
func inNetns(ns netns.NsHandle, fn func(h *netlink.Handle) error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("current network namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter pod network namespace: %w", err)
			return
		}
		h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
		if err == nil {
			err = fn(h)
			h.Close()
		}
		if serr := netns.Set(orig); serr == nil {
			runtime.UnlockOSThread()
		} // else the locked thread ends with this goroutine
		errc <- err
	}()
	return <-errc
}

// Listen opens a TCP listener on addr ("127.0.0.1:8080") inside the
// network namespace at nsPath (the socket stays there).
func Listen(nsPath, network, addr string) (net.Listener, error) {
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		return nil, fmt.Errorf("open pod network namespace %s: %w", nsPath, err)
	}
	defer ns.Close()
	var l net.Listener
	err = inNetns(ns, func(*netlink.Handle) error {
		var err error
		l, err = net.Listen(network, addr)
		return err
	})
	return l, err
}
