// Package vm is the shim's boundary to a Raksh VM: start it, reach the agent
// over ttrpc, open named streams, shut it down.
package vm

import (
	"context"
	"net"

	"github.com/containerd/ttrpc"
)

// Instance is one running VM with its agent.
type Instance interface {
	// Start boots the VM and returns once the agent answers; it fails with a
	// clear error when the VM cannot start or the agent never answers.
	Start(ctx context.Context) error
	// Client is the ttrpc client of the agent; valid after Start.
	Client() *ttrpc.Client
	// StartStream opens a named stream to the agent (stdio, rootfs, events).
	StartStream(ctx context.Context, name string) (net.Conn, error)
	// AcceptStream waits for a stream the agent opened (proxied outbound
	// connections) and returns it with its name.
	AcceptStream() (string, net.Conn, error)
	// Shutdown stops the VM; it is safe to call more than once.
	Shutdown(ctx context.Context) error
	// Done is closed when the VM or its connection to the agent has ended.
	Done() <-chan struct{}
	// Pid is the host process id of the VM (its QEMU).
	Pid() int
}
