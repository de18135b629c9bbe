package network

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
)

// tcpListen is the LISTEN state in /proc/net/tcp.
const tcpListen = "0A"

// Listeners returns the TCP ports something listens on in the current
// network namespace, on an address reachable at loopback (any address,
// 127.0.0.0/8 or ::1), sorted and without duplicates: what port-forward can
// reach by dialing localhost.
func Listeners() ([]uint32, error) {
	seen := map[uint32]bool{}
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		fh, err := os.Open(f)
		if err != nil {
			if os.IsNotExist(err) {
				continue // no IPv6
			}
			return nil, err
		}
		err = parseProcNetTCP(fh, seen)
		fh.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
	}
	ports := make([]uint32, 0, len(seen))
	for p := range seen {
		ports = append(ports, p)
	}
	sort.Slice(ports, func(i, j int) bool { return ports[i] < ports[j] })
	return ports, nil
}

// parseProcNetTCP adds the loopback-reachable listening ports of a
// /proc/net/tcp{,6} table to seen.
func parseProcNetTCP(r io.Reader, seen map[uint32]bool) error {
	sc := bufio.NewScanner(r)
	first := true
	for sc.Scan() {
		if first {
			first = false
			continue
		}
		f := strings.Fields(sc.Text())
		if len(f) < 4 || f[3] != tcpListen {
			continue
		}
		addr, portHex, ok := strings.Cut(f[1], ":")
		if !ok {
			return fmt.Errorf("bad local address %q", f[1])
		}
		port, err := strconv.ParseUint(portHex, 16, 16)
		if err != nil {
			return fmt.Errorf("bad port %q", portHex)
		}
		if loopbackReachable(addr) {
			seen[uint32(port)] = true
		}
	}
	return sc.Err()
}

// loopbackReachable reports whether a /proc/net/tcp address (hex, in host
// byte order per 32-bit word) is the any address or a loopback one.
func loopbackReachable(hex string) bool {
	switch hex {
	case "00000000", "00000000000000000000000000000000", // any
		"00000000000000000000000001000000", // ::1
		"0000000000000000FFFF00000100007F": // ::ffff:127.0.0.1
		return true
	}
	// 127.0.0.0/8: the low byte of the little-endian word is 0x7F.
	return len(hex) == 8 && strings.HasSuffix(hex, "7F")
}
