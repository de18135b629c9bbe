//go:build integration

package network

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

func requiresRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("test requires root")
	}
}

// newNetns creates a named network namespace, removed at test end.
func newNetns(t *testing.T, name string) (string, *netlink.Handle) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.NewNamed(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := netns.Set(orig); err != nil {
		t.Fatal(err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		h.Close()
		ns.Close()
		netns.DeleteNamed(name)
	})
	return "/var/run/netns/" + name, h
}

var (
	podMAC = net.HardwareAddr{0x02, 0x42, 0x0a, 0xc7, 0x26, 0x63}
	gwMAC  = net.HardwareAddr{0x02, 0x42, 0x0a, 0xc7, 0x26, 0x01}
)

// podNetns is what CNI's bridge plugin leaves: a veth eth0 with an address,
// a default route and (here) a static neighbour; its peer sits in a second
// namespace standing for the host side.
func podNetns(t *testing.T, suffix string) (string, *netlink.Handle, *netlink.Handle) {
	pod, ph := newNetns(t, "rknet-pod-"+suffix)
	_, hh := newNetns(t, "rknet-host-"+suffix)
	hostNs, _ := netns.GetFromName("rknet-host-" + suffix)
	defer hostNs.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0", MTU: 1400, HardwareAddr: podMAC}, PeerName: "veth-rk", PeerNamespace: netlink.NsFd(hostNs)}
	if err := ph.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	l, _ := ph.LinkByName("eth0")
	must(t, ph.AddrAdd(l, mustAddr("10.199.38.99/24")))
	must(t, ph.LinkSetUp(l))
	lo, _ := ph.LinkByName("lo")
	must(t, ph.LinkSetUp(lo))
	must(t, ph.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.ParseIP("10.199.38.1")}))
	must(t, ph.NeighAdd(&netlink.Neigh{LinkIndex: l.Attrs().Index, IP: net.ParseIP("10.199.38.1"), HardwareAddr: gwMAC, State: netlink.NUD_PERMANENT, Family: unix.AF_INET}))
	peer, _ := hh.LinkByName("veth-rk")
	must(t, hh.AddrAdd(peer, mustAddr("10.199.38.1/24")))
	must(t, hh.LinkSetUp(peer))
	return pod, ph, hh
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func mustAddr(s string) *netlink.Addr {
	a, err := netlink.ParseAddr(s)
	if err != nil {
		panic(err)
	}
	return a
}

// TestAttachDetach attaches a veth netns: the tap exists beside eth0 with
// ingress redirects both ways, frames sent to the pod's IP from the peer
// namespace come out of the tap, the guest config is eth0's; Detach leaves
// no tap and no qdisc.
func TestAttachDetach(t *testing.T) {
	requiresRoot(t)
	ctx := context.Background()
	path, ph, hh := podNetns(t, fmt.Sprint(os.Getpid()))
	n, err := Attach(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Detach(ctx)
	if len(n.Endpoints) != 1 || len(n.Config.Interfaces) != 1 {
		t.Fatalf("endpoints %+v", n.Endpoints)
	}
	ifc := n.Config.Interfaces[0]
	if ifc.Name != "eth0" || ifc.MAC.String() != podMAC.String() || ifc.MTU != 1400 || len(ifc.Addrs) != 1 || ifc.Addrs[0].String() != "10.199.38.99/24" {
		t.Fatalf("interface %+v", ifc)
	}
	var def *Route
	for i, r := range n.Config.Routes {
		if r.Dst == nil || r.Dst.IP.IsUnspecified() {
			def = &n.Config.Routes[i]
		}
	}
	if def == nil || !def.Gw.Equal(net.ParseIP("10.199.38.1")) || def.Device != "eth0" {
		t.Fatalf("routes %+v: no default route via 10.199.38.1", n.Config.Routes)
	}
	if len(n.Config.Neighbors) != 1 || n.Config.Neighbors[0].MAC.String() != gwMAC.String() {
		t.Fatalf("neighbours %+v", n.Config.Neighbors)
	}
	tap, err := ph.LinkByName(n.Endpoints[0].TapName)
	if err != nil {
		t.Fatalf("tap: %v", err)
	}
	if tap.Attrs().MTU != 1400 || tap.Attrs().OperState == netlink.OperDown && tap.Attrs().Flags&net.FlagUp == 0 {
		t.Fatalf("tap %+v", tap.Attrs())
	}
	eth0, _ := ph.LinkByName("eth0")
	for _, l := range []netlink.Link{eth0, tap} {
		fs, err := ph.FilterList(l, ingressHandle)
		if err != nil || len(fs) != 1 {
			t.Fatalf("filters on %s: %v %v", l.Attrs().Name, fs, err)
		}
		u, ok := fs[0].(*netlink.U32)
		if !ok || len(u.Actions) != 1 {
			t.Fatalf("filter on %s: %#v", l.Attrs().Name, fs[0])
		}
		m, ok := u.Actions[0].(*netlink.MirredAction)
		other := tap
		if l == tap {
			other = eth0
		}
		if !ok || m.MirredAction != netlink.TCA_EGRESS_REDIR || m.Ifindex != other.Attrs().Index {
			t.Fatalf("action on %s: %#v", l.Attrs().Name, u.Actions[0])
		}
	}

	// Traffic: a datagram from the host side to the pod IP makes the host
	// ask for 10.199.38.99's MAC; that ARP request must come out of the tap.
	go sendFrom(t, "rknet-host-"+fmt.Sprint(os.Getpid()), "10.199.38.99:9")
	tapf := n.Endpoints[0].Tap
	buf := make([]byte, 2048)
	tapf.SetReadDeadline(time.Now().Add(5 * time.Second))
	got := false
	for !got {
		k, err := tapf.Read(buf)
		if err != nil {
			t.Fatalf("no frame from the tap: %v", err)
		}
		got = bytes.Contains(buf[:k], net.ParseIP("10.199.38.99").To4()) && bytes.Contains(buf[:k], []byte{0x08, 0x06})
	}
	_ = hh

	tapName := n.Endpoints[0].TapName
	if err := n.Detach(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := ph.LinkByName(tapName); err == nil {
		t.Fatalf("tap %s left after Detach", tapName)
	}
	qs, _ := ph.QdiscList(eth0)
	for _, q := range qs {
		if q.Type() == "ingress" {
			t.Fatalf("ingress qdisc left on eth0")
		}
	}
}

func sendFrom(t *testing.T, nsName, addr string) {
	runtime.LockOSThread()
	orig, _ := netns.Get()
	ns, err := netns.GetFromName(nsName)
	if err != nil {
		return
	}
	defer ns.Close()
	netns.Set(ns)
	for i := 0; i < 20; i++ {
		if c, err := net.Dial("udp4", addr); err == nil {
			c.Write([]byte("hello"))
			c.Close()
		}
		time.Sleep(200 * time.Millisecond)
	}
	if netns.Set(orig) == nil {
		runtime.UnlockOSThread()
	}
}

// TestAttachRefuses: an interface type other than veth, or a missing netns,
// is a clear error and nothing is left behind.
func TestAttachRefuses(t *testing.T) {
	requiresRoot(t)
	ctx := context.Background()
	path, ph, _ := podNetns(t, fmt.Sprint("x", os.Getpid()))
	vx := &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: "vxlan0"}, VxlanId: 42, Port: 4789}
	must(t, ph.LinkAdd(vx))
	_, err := Attach(ctx, path)
	if !errdefs.IsInvalidArgument(err) || !bytes.Contains([]byte(err.Error()), []byte(`vxlan0`)) || !bytes.Contains([]byte(err.Error()), []byte(`"vxlan"`)) {
		t.Fatalf("got %v, want an invalid-argument error naming vxlan0 and its type", err)
	}
	links, _ := ph.LinkList()
	for _, l := range links {
		if l.Type() == "tuntap" {
			t.Fatalf("tap %s left behind", l.Attrs().Name)
		}
	}
	eth0, _ := ph.LinkByName("eth0")
	qs, _ := ph.QdiscList(eth0)
	for _, q := range qs {
		if q.Type() == "ingress" {
			t.Fatalf("ingress qdisc left on eth0")
		}
	}
	_, err = Attach(ctx, "/var/run/netns/rknet-does-not-exist")
	if !errdefs.IsNotFound(err) || !errors.Is(err, errdefs.ErrNotFound) || !bytes.Contains([]byte(err.Error()), []byte("rknet-does-not-exist")) {
		t.Fatalf("missing netns: got %v", err)
	}
}
