package runtime

import (
	"context"
	"net"
	"strings"
	"time"

	"github.com/containerd/log"

	"github.com/raksh-project/raksh/internal/transport"
	"github.com/raksh-project/raksh/internal/wire"
	"github.com/raksh-project/raksh/runtime/vm"
)

// serveProxy forwards the streams the agent opens to the allow-listed
// host-side services of the runtime config, until the VM ends.
func serveProxy(ctx context.Context, v vm.Instance, targets map[string]string) {
	for {
		name, c, err := v.AcceptStream()
		if err != nil {
			return
		}
		target, ok := strings.CutPrefix(name, wire.ProxyPrefix)
		addr := targets[target]
		if !ok || addr == "" {
			log.G(ctx).WithField("stream", name).Warn("refusing guest connection to a target that is not allow-listed")
			c.Close()
			continue
		}
		go proxy(ctx, c, target, addr)
	}
}

func proxy(ctx context.Context, guest net.Conn, target, addr string) {
	defer guest.Close()
	d := net.Dialer{Timeout: 10 * time.Second}
	host, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		log.G(ctx).WithError(err).WithField("target", target).Warn("guest proxy: dial failed")
		return
	}
	defer host.Close()
	transport.Splice(guest, host)
}
