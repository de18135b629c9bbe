package agent

import (
	"context"
	"fmt"
	"io"
	"net"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/raksh-project/raksh/policy/guard"
	"github.com/raksh-project/raksh/tee/initdata"
)

// InitData is the pod's init data as the agent holds it (agent/kbssession
// implements it): Deliver checks a document from the shim against the
// guest's TEE report; Document returns the verified document, nil when
// none was bound at launch, or an error when one was bound but not
// delivered.
type InitData interface {
	Deliver(ctx context.Context, doc []byte) error
	InitData(ctx context.Context) (*initdata.Document, error)
}

// WithInitData makes the agent enforce the policy of the pod's init data
// and accept its delivery on the initdata.Stream stream.
func WithInitData(d InitData) Opt { return func(s *Service) { s.initData = d } }

// podPolicy returns the pod's init-data policy, refusing the container
// when init data was bound at launch but not delivered, and a container
// without an envelope when the policy requires sealing.
func (s *Service) podPolicy(ctx context.Context, c *container) (initdata.Policy, error) {
	if s.initData == nil {
		return initdata.Policy{}, nil
	}
	d, err := s.initData.InitData(ctx)
	if err != nil {
		return initdata.Policy{}, fmt.Errorf("container %q: %w", c.id, err)
	}
	if d == nil {
		return initdata.Policy{}, nil
	}
	if d.Policy.RequireSealed {
		if err := guard.Check(c.spec, guard.Options{RequireEnvelope: true}); err != nil {
			return initdata.Policy{}, fmt.Errorf("the pod's init data requires sealed containers: %w", err)
		}
	}
	return d.Policy, nil
}

// ErrPodExecDenied is returned for an exec into a container of a pod
// whose init data denies exec.
var ErrPodExecDenied = fmt.Errorf("the pod's init data denies exec: %w", errdefs.ErrPermissionDenied)

// applyPodPolicy tightens c by the pod's policy after its envelope (if
// any) was opened: exec and logs denied pod-wide stay denied whatever the
// envelope allows.
func applyPodPolicy(c *container, p initdata.Policy) {
	c.pod = p
	c.noLogs = c.noLogs || p.DenyLogs
}

// receiveInitData reads the pod's init-data document from the shim's
// initdata.Stream (4-byte big-endian length, then the document), delivers
// it and answers "ok\n" or the refusal.
func (s *Service) receiveInitData(ctx context.Context, c net.Conn) {
	defer c.Close()
	answer := func(err error) {
		msg := "ok\n"
		if err != nil {
			log.G(ctx).WithError(err).Error("init data refused")
			msg = "error: " + err.Error() + "\n"
		}
		io.WriteString(c, msg)
	}
	var hdr [4]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		answer(fmt.Errorf("read init data: %w", err))
		return
	}
	n := uint32(hdr[0])<<24 | uint32(hdr[1])<<16 | uint32(hdr[2])<<8 | uint32(hdr[3])
	if n > initdata.MaxSize {
		answer(fmt.Errorf("init data is %d bytes, more than %d: %w", n, initdata.MaxSize, errdefs.ErrInvalidArgument))
		return
	}
	doc := make([]byte, n)
	if _, err := io.ReadFull(c, doc); err != nil {
		answer(fmt.Errorf("read init data: %w", err))
		return
	}
	if s.initData == nil {
		answer(fmt.Errorf("this agent does not take init data: %w", errdefs.ErrNotImplemented))
		return
	}
	answer(s.initData.Deliver(ctx, doc))
}
