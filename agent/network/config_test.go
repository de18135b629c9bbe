package network

import (
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

func good() Config {
	return Config{
		Interfaces: []Interface{{Name: "eth0", MAC: "02:42:0a:c7:26:05", MTU: 1500, Addrs: []string{"10.199.38.5/24", "fd00:38::5/64"}}},
		Routes: []Route{
			{Gw: "10.199.38.1", Device: "eth0"},
			{Dst: "10.200.0.0/16", Device: "eth0", Scope: 253},
			{Dst: "fd00:39::/64", Gw: "fd00:38::1", Device: "eth0"},
		},
		Neighbors: []Neighbor{{IP: "10.199.38.1", MAC: "02:42:0a:c7:26:01", Device: "eth0"}},
	}
}

func TestValidate(t *testing.T) {
	ok := good()
	if err := ok.Validate(); err != nil {
		t.Fatalf("valid config refused: %v", err)
	}
	for _, tc := range []struct {
		name, want string
		mut        func(*Config)
	}{
		{"empty name", "interface name", func(c *Config) { c.Interfaces[0].Name = "" }},
		{"long name", "1-15 bytes", func(c *Config) { c.Interfaces[0].Name = "eth0123456789012" }},
		{"lo", "reserved", func(c *Config) { c.Interfaces[0].Name = "lo" }},
		{"slash", "character", func(c *Config) { c.Interfaces[0].Name = "../x" }},
		{"space", "character", func(c *Config) { c.Interfaces[0].Name = "eth 0" }},
		{"dup name", "twice", func(c *Config) {
			c.Interfaces = append(c.Interfaces, Interface{Name: "eth0", MAC: "02:42:0a:c7:26:06", MTU: 1500})
		}},
		{"dup mac", "twice", func(c *Config) {
			c.Interfaces = append(c.Interfaces, Interface{Name: "eth1", MAC: "02:42:0A:C7:26:05", MTU: 1500})
		}},
		{"bad mac", "not an Ethernet MAC", func(c *Config) { c.Interfaces[0].MAC = "02:42:0a:c7:26" }},
		{"multicast mac", "unicast", func(c *Config) { c.Interfaces[0].MAC = "01:00:5e:00:00:01" }},
		{"zero mac", "unicast", func(c *Config) { c.Interfaces[0].MAC = "00:00:00:00:00:00" }},
		{"mtu 0", "MTU 0", func(c *Config) { c.Interfaces[0].MTU = 0 }},
		{"mtu huge", "MTU 70000", func(c *Config) { c.Interfaces[0].MTU = 70000 }},
		{"no prefix", "address/prefix-length", func(c *Config) { c.Interfaces[0].Addrs = []string{"10.199.38.5"} }},
		{"prefix 33", "address/prefix-length", func(c *Config) { c.Interfaces[0].Addrs = []string{"10.199.38.5/33"} }},
		{"prefix 129", "address/prefix-length", func(c *Config) { c.Interfaces[0].Addrs = []string{"fd00::5/129"} }},
		{"loopback addr", "loopback", func(c *Config) { c.Interfaces[0].Addrs = []string{"127.0.0.2/8"} }},
		{"unspecified addr", "unspecified", func(c *Config) { c.Interfaces[0].Addrs = []string{"0.0.0.0/0"} }},
		{"multicast addr", "unicast", func(c *Config) { c.Interfaces[0].Addrs = []string{"224.0.0.1/24"} }},
		{"link-local v6", "link-local", func(c *Config) { c.Interfaces[0].Addrs = []string{"fe80::1/64"} }},
		{"route via lo", "not one of the pod's interfaces", func(c *Config) { c.Routes[0].Device = "lo" }},
		{"route unknown dev", "not one of the pod's interfaces", func(c *Config) { c.Routes[0].Device = "eth9" }},
		{"route bad gw", "gateway", func(c *Config) { c.Routes[0].Gw = "10.199.38" }},
		{"route loopback gw", "loopback", func(c *Config) { c.Routes[0].Gw = "127.0.0.1" }},
		{"route loopback dst", "loopback", func(c *Config) { c.Routes[1].Dst = "127.0.0.0/8" }},
		{"route mixed families", "mixes", func(c *Config) { c.Routes[0].Gw = "fd00:38::1"; c.Routes[0].Dst = "10.0.0.0/8" }},
		{"default without gw", "no gateway", func(c *Config) { c.Routes[0].Gw = "" }},
		{"route host scope", "scope", func(c *Config) { c.Routes[1].Scope = 254 }},
		{"neighbour unknown dev", "not one of the pod's interfaces", func(c *Config) { c.Neighbors[0].Device = "lo" }},
		{"neighbour bad mac", "MAC", func(c *Config) { c.Neighbors[0].MAC = "zz" }},
		{"too many interfaces", "at most", func(c *Config) {
			for i := 0; i < MaxInterfaces; i++ {
				c.Interfaces = append(c.Interfaces, c.Interfaces[0])
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := good()
			c.Interfaces[0].Addrs = append([]string(nil), c.Interfaces[0].Addrs...)
			tc.mut(&c)
			err := c.Validate()
			if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an invalid-argument error containing %q", err, tc.want)
			}
		})
	}
}

func TestParseProcNetTCP(t *testing.T) {
	const tcp = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 100 0 0 10 0
   2: 0526C70A:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 100 0 0 10 0
   3: 0526C70A:0050 0126C70A:D431 01 00000000:00000000 00:00000000 00000000     0        0 4 1 0000000000000000 100 0 0 10 0
`
	const tcp6 = `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:01BB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 6 1 0000000000000000 100 0 0 10 0
`
	seen := map[uint32]bool{}
	if err := parseProcNetTCP(strings.NewReader(tcp), seen); err != nil {
		t.Fatal(err)
	}
	if err := parseProcNetTCP(strings.NewReader(tcp6), seen); err != nil {
		t.Fatal(err)
	}
	// 80 (any), 8080 (127.0.0.1), 443 (::), 22 (::1); not 8081 (pod IP
	// only) nor the established connection.
	want := map[uint32]bool{80: true, 8080: true, 443: true, 22: true}
	if len(seen) != len(want) {
		t.Fatalf("got %v, want %v", seen, want)
	}
	for p := range want {
		if !seen[p] {
			t.Fatalf("got %v, want %v", seen, want)
		}
	}
}

func TestSetSysctlRefuses(t *testing.T) {
	for _, tc := range [][2]string{
		{"kernel.hostname", "x"},
		{"net", "1"},
		{"net..ipv4", "1"},
		{"net.ipv4/../../kernel/x", "1"},
		{"net.ipv4.ip_forward", "1\n"},
		{"net.ipv4.ip_forward", strings.Repeat("1", 5000)},
	} {
		if err := SetSysctl(tc[0], tc[1]); !errdefs.IsInvalidArgument(err) {
			t.Errorf("SetSysctl(%q, %q): %v, want invalid argument", tc[0], tc[1], err)
		}
	}
}
