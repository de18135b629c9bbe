package runtime

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"strings"
	"time"

	"github.com/containerd/errdefs"

	"github.com/raksh-project/raksh/runtime/vm"
	"github.com/raksh-project/raksh/tee/initdata"
)

// initDataTimeout bounds the agent's check of the init data (it reads its
// own TEE report).
const initDataTimeout = 30 * time.Second

// deliverInitData hands the pod's init-data document to the agent, which
// checks it against the digest its TEE report binds, and returns the
// agent's refusal if it refuses.
func deliverInitData(ctx context.Context, v vm.Instance, doc []byte) error {
	ctx, cancel := context.WithTimeout(ctx, initDataTimeout)
	defer cancel()
	c, err := v.StartStream(ctx, initdata.Stream)
	if err != nil {
		return fmt.Errorf("open the init-data stream: %w", err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	msg := binary.BigEndian.AppendUint32(nil, uint32(len(doc)))
	if _, err := c.Write(append(msg, doc...)); err != nil {
		return fmt.Errorf("send init data: %w", err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return fmt.Errorf("the agent did not answer the init data: %w", err)
	}
	line = strings.TrimSpace(line)
	if line == "ok" {
		return nil
	}
	return fmt.Errorf("the agent refused the init data: %s: %w", strings.TrimPrefix(line, "error: "), errdefs.ErrPermissionDenied)
}
