// Package network configures the guest's NICs as the pod's network
// namespace has them on the node: the shim attached each CNI interface to a
// virtio-net device with the interface's MAC (runtime/network); the agent
// finds each NIC by that MAC and gives it the interface's name, MTU,
// addresses, routes and static neighbours.
//
// Everything here comes from the node, which is untrusted: Validate checks
// every field before anything is applied.
package network

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// Limits on what the node may ask for.
const (
	MaxInterfaces = 8
	MaxAddrs      = 16
	MaxRoutes     = 64
	MaxNeighbors  = 64
	minMTU        = 68
	maxMTU        = 65535
)

// Interface is one NIC to configure.
type Interface struct {
	// Name is the name the NIC takes ("eth0").
	Name string
	// MAC identifies the NIC ("02:42:0a:c7:26:02").
	MAC string
	// MTU is the NIC's MTU.
	MTU uint32
	// Addrs are CIDR addresses ("10.199.38.5/24").
	Addrs []string
}

// Route is a route through one of the interfaces.
type Route struct {
	// Dst is a CIDR; "" is the default route.
	Dst string
	// Gw is the gateway; "" for a route on the link.
	Gw string
	// Src is the preferred source address, or "".
	Src string
	// Device names one of the interfaces.
	Device string
	// Scope is unix.RT_SCOPE_UNIVERSE or unix.RT_SCOPE_LINK.
	Scope uint32
}

// Neighbor is a static neighbour entry.
type Neighbor struct {
	IP, MAC, Device string
}

// Config is the guest network.
type Config struct {
	Interfaces []Interface
	Routes     []Route
	Neighbors  []Neighbor
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("network config: "+format+": %w", append(args, errdefs.ErrInvalidArgument)...)
}

// ValidName reports whether name can be a guest interface name: 1-15
// bytes of [A-Za-z0-9_.-], not "lo", ".", "..".
func ValidName(name string) error {
	if name == "" || len(name) >= unix.IFNAMSIZ {
		return invalid("interface name %q must be 1-%d bytes", name, unix.IFNAMSIZ-1)
	}
	if name == "." || name == ".." || name == "lo" {
		return invalid("interface name %q is reserved", name)
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return invalid("interface name %q has a character other than [A-Za-z0-9_.-]", name)
		}
	}
	return nil
}

// parseMAC accepts a unicast Ethernet address that is not all zero.
func parseMAC(s string) (net.HardwareAddr, error) {
	hw, err := net.ParseMAC(s)
	if err != nil || len(hw) != 6 {
		return nil, invalid("%q is not an Ethernet MAC address", s)
	}
	if hw[0]&1 != 0 || string(hw) == "\x00\x00\x00\x00\x00\x00" {
		return nil, invalid("MAC %s is not a unicast address", hw)
	}
	return hw, nil
}

// checkHostIP refuses addresses a pod NIC must not take or route through.
func checkHostIP(ip net.IP, what string) error {
	switch {
	case ip.IsUnspecified():
		return invalid("%s %s is unspecified", what, ip)
	case ip.IsLoopback():
		return invalid("%s %s is a loopback address", what, ip)
	case ip.IsMulticast() || ip.Equal(net.IPv4bcast):
		return invalid("%s %s is not a unicast address", what, ip)
	}
	return nil
}

func parseIP(s, what string) (net.IP, error) {
	ip := net.ParseIP(s)
	if ip == nil {
		return nil, invalid("%s %q is not an IP address", what, s)
	}
	if v4 := ip.To4(); v4 != nil {
		ip = v4
	}
	return ip, checkHostIP(ip, what)
}

// parseCIDR parses an address with its prefix length ("10.0.0.5/24").
func parseCIDR(s, what string) (*net.IPNet, error) {
	ip, n, err := net.ParseCIDR(s)
	if err != nil {
		return nil, invalid("%s %q is not an address/prefix-length", what, s)
	}
	if v4 := ip.To4(); v4 != nil {
		ip = v4
	}
	return &net.IPNet{IP: ip, Mask: n.Mask}, nil
}

// Validate checks every field of c; nothing is applied when it fails.
func (c *Config) Validate() error {
	_, err := c.parse()
	return err
}

// parsed is a validated Config.
type parsed struct {
	ifaces []pIface
	routes []pRoute
	neighs []pNeigh
}

type pIface struct {
	name  string
	mac   net.HardwareAddr
	mtu   int
	addrs []*net.IPNet
}

type pRoute struct {
	dst      *net.IPNet // nil: default
	gw, src  net.IP
	dev      string
	scope    uint8
	family   int
	original Route
}

type pNeigh struct {
	ip  net.IP
	mac net.HardwareAddr
	dev string
}

func family(ip net.IP) int {
	if ip.To4() != nil {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

func (c *Config) parse() (*parsed, error) {
	if len(c.Interfaces) > MaxInterfaces || len(c.Routes) > MaxRoutes || len(c.Neighbors) > MaxNeighbors {
		return nil, invalid("at most %d interfaces, %d routes and %d neighbours (got %d, %d, %d)",
			MaxInterfaces, MaxRoutes, MaxNeighbors, len(c.Interfaces), len(c.Routes), len(c.Neighbors))
	}
	p := &parsed{}
	names, macs := map[string]bool{}, map[string]bool{}
	for _, ifc := range c.Interfaces {
		if err := ValidName(ifc.Name); err != nil {
			return nil, err
		}
		if names[ifc.Name] {
			return nil, invalid("interface %s is listed twice", ifc.Name)
		}
		names[ifc.Name] = true
		mac, err := parseMAC(ifc.MAC)
		if err != nil {
			return nil, fmt.Errorf("interface %s: %w", ifc.Name, err)
		}
		if macs[mac.String()] {
			return nil, invalid("MAC %s is listed twice", mac)
		}
		macs[mac.String()] = true
		if ifc.MTU < minMTU || ifc.MTU > maxMTU {
			return nil, invalid("interface %s: MTU %d is outside %d-%d", ifc.Name, ifc.MTU, minMTU, maxMTU)
		}
		if len(ifc.Addrs) > MaxAddrs {
			return nil, invalid("interface %s: %d addresses, at most %d", ifc.Name, len(ifc.Addrs), MaxAddrs)
		}
		pi := pIface{name: ifc.Name, mac: mac, mtu: int(ifc.MTU)}
		for _, a := range ifc.Addrs {
			n, err := parseCIDR(a, "address")
			if err != nil {
				return nil, fmt.Errorf("interface %s: %w", ifc.Name, err)
			}
			if err := checkHostIP(n.IP, "address"); err != nil {
				return nil, fmt.Errorf("interface %s: %w", ifc.Name, err)
			}
			if n.IP.IsLinkLocalUnicast() && n.IP.To4() == nil {
				return nil, invalid("interface %s: link-local address %s is the guest kernel's own", ifc.Name, n)
			}
			pi.addrs = append(pi.addrs, n)
		}
		p.ifaces = append(p.ifaces, pi)
	}
	for _, r := range c.Routes {
		if !names[r.Device] {
			return nil, invalid("route %s via %q: the device is not one of the pod's interfaces", orDefault(r.Dst), r.Device)
		}
		pr := pRoute{dev: r.Device, original: r}
		switch r.Scope {
		case unix.RT_SCOPE_UNIVERSE, unix.RT_SCOPE_LINK:
			pr.scope = uint8(r.Scope)
		default:
			return nil, invalid("route %s: scope %d is neither universe nor link", orDefault(r.Dst), r.Scope)
		}
		var fams []int
		if r.Dst != "" {
			n, err := parseCIDR(r.Dst, "route destination")
			if err != nil {
				return nil, err
			}
			if n.IP.IsLoopback() || n.IP.IsMulticast() {
				return nil, invalid("route destination %s is loopback or multicast", n)
			}
			pr.dst = &net.IPNet{IP: n.IP.Mask(n.Mask), Mask: n.Mask}
			fams = append(fams, family(n.IP))
		}
		if r.Gw != "" {
			ip, err := parseIP(r.Gw, "gateway")
			if err != nil {
				return nil, err
			}
			pr.gw = ip
			fams = append(fams, family(ip))
		}
		if r.Src != "" {
			ip, err := parseIP(r.Src, "route source")
			if err != nil {
				return nil, err
			}
			pr.src = ip
			fams = append(fams, family(ip))
		}
		if len(fams) == 0 {
			return nil, invalid("default route on %s has no gateway", r.Device)
		}
		for _, f := range fams[1:] {
			if f != fams[0] {
				return nil, invalid("route %s mixes IPv4 and IPv6", orDefault(r.Dst))
			}
		}
		pr.family = fams[0]
		p.routes = append(p.routes, pr)
	}
	for _, nb := range c.Neighbors {
		if !names[nb.Device] {
			return nil, invalid("neighbour %s on %q: the device is not one of the pod's interfaces", nb.IP, nb.Device)
		}
		ip, err := parseIP(nb.IP, "neighbour")
		if err != nil {
			return nil, err
		}
		mac, err := parseMAC(nb.MAC)
		if err != nil {
			return nil, fmt.Errorf("neighbour %s: %w", ip, err)
		}
		p.neighs = append(p.neighs, pNeigh{ip: ip, mac: mac, dev: nb.Device})
	}
	return p, nil
}

func orDefault(dst string) string {
	if dst == "" {
		return "default"
	}
	return dst
}

// errNoNIC is returned when no NIC has an interface's MAC.
var errNoNIC = errors.New("no NIC with that MAC")

// String summarises c for logs (no secrets: addresses and names only).
func (c *Config) String() string {
	var b strings.Builder
	for _, i := range c.Interfaces {
		fmt.Fprintf(&b, "%s(%s mtu %d %v) ", i.Name, i.MAC, i.MTU, i.Addrs)
	}
	fmt.Fprintf(&b, "%d routes %d neighbours", len(c.Routes), len(c.Neighbors))
	return b.String()
}

// SetSysctl writes a net.* sysctl of the current network namespace. key
// and value come from the node: key must be net.<name>[.<name>...] of
// [A-Za-z0-9_-] parts, value printable ASCII without newlines.
func SetSysctl(key, value string) error {
	parts := strings.Split(key, ".")
	if len(parts) < 2 || parts[0] != "net" || len(key) > 256 {
		return invalid("sysctl %q is not a net.* sysctl", key)
	}
	for _, p := range parts {
		if p == "" {
			return invalid("sysctl %q has an empty part", key)
		}
		for _, r := range p {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-') {
				return invalid("sysctl %q has a character other than [A-Za-z0-9_-.]", key)
			}
		}
	}
	if len(value) > 4096 {
		return invalid("sysctl %s: value too long", key)
	}
	for _, r := range value {
		if r < 0x20 || r > 0x7e {
			return invalid("sysctl %s: value has a non-printable character", key)
		}
	}
	if err := os.WriteFile("/proc/sys/"+strings.Join(parts, "/"), []byte(value), 0); err != nil {
		return fmt.Errorf("sysctl %s: %w", key, err)
	}
	return nil
}
